"""``experiments.pipeline_rnn.run`` (what ``experiments.modularize --config=experiments/configs/rnn.py`` runs) end
to end on a slice of the real Brown corpus."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import pipeline_rnn
from experiments.configs import rnn as rnn_config
from experiments.pipeline import check_results, summary
from jaxmod import checkpoint, reuse
from jaxmod.approaches.rnn import vocab_fingerprint
from jaxmod.models import zoo_module
from jaxmod.voting import voting_accuracy

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The old command line: --shape=many_to_many --cell=gru --layers=1 --mode=unrolled --epochs=1 --train_limit=600
# --test_limit=200 --num_subtasks=2 --progress=false
OVERRIDES = {"model": "rnn_gru", "rnn.layers": 1, "options.mode": "unrolled", "train.epochs": 1, "train_limit": 600,
             "test_limit": 200, "reuse.num_subtasks": 2, "progress": False}


def make_config(shape="many_to_many", **changes):
    """The rnn config of ``shape`` with the test's overrides and ``changes`` (dotted paths with '__')."""
    config = rnn_config.get_config(shape)
    for path, value in {**OVERRIDES, **{k.replace("__", "."): v for k, v in changes.items()}}.items():
        *parents, name = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[name] = value
    return config


def test_tagger_decomposes_composes_and_its_modules_restore(tmp_path):
    work = tmp_path / "run"
    returned = pipeline_rnn.run(make_config(), str(work))
    results = json.loads((work / "results.json").read_text())
    check_results(results)
    assert results["dataset"] == "brown_tags" and results["num_classes"] == 12
    assert results["composed"] == returned["composed"] and results["standard"]["test_accuracy"] == (
        returned["standard"]["test_accuracy"])
    std, composed = results["standard"]["test_accuracy"], results["composed"]["test_accuracy"]
    assert std > 0.3  # one epoch on 600 sentences learns the frequent tags
    assert abs(composed - std) < 0.1  # unrolled modules, voting per step
    assert 0 < results["modules"]["mean_jaccard"] < 1
    assert "decomposition cost" in summary(results)  # the summary table experiments.modularize prints

    # The saved modules, restored, vote per step like the run's composed model.
    modules, variables = checkpoint.restore_modules(work / "modules")
    assert modules.meta.approach == "rnn" and len(modules.meta.classes) == 12
    run = pipeline_rnn.RnnRun(**results["config"]["run"])
    data = pipeline_rnn.load(run)
    test = data.test
    outputs, labels = reuse.cross_model_confidences([modules], [variables], test.x)
    acc = voting_accuracy(outputs, test.y, classes=labels, valid=test.y_valid)
    np.testing.assert_allclose(acc, composed, atol=1e-6)

    # Modules of a model that reads another vocabulary never compose with these.
    model = pipeline_rnn.build_model(run, data.dataset, data.train.x)
    assert modules.meta.input_vocab == vocab_fingerprint(data.dataset.input_vocab, zoo_module(model).vocab_size) != ""
    other = modules.meta.replace(input_vocab="0" * 16)
    with pytest.raises(ValueError, match="input_vocab"):
        reuse.check_same_inputs([modules.meta, other])


@pytest.mark.parametrize("shape, changes, message", [
    ("many_to_many", {"rnn__layers": 5}, "layers must be 1 to 4"),
    ("many_to_many", {"options__max_remove": 1.5}, "max_remove"),
    ("many_to_one", {"rnn__padding": "scored"}, "padding='scored' applies"),
])
def test_bad_rnn_settings_fail_before_writing(tmp_path, shape, changes, message):
    work = tmp_path / "never"
    with pytest.raises(ValueError, match=message):
        pipeline_rnn.run(make_config(shape, **changes), str(work))
    assert not work.exists()


def test_bad_rnn_setting_on_the_command_line_fails_before_writing(tmp_path):
    work = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "experiments.modularize",
                           "--config=experiments/configs/rnn.py:many_to_many", "--config.rnn.layers=5",
                           "--config.progress=false", f"--workdir={work}"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert "layers must be 1 to 4" in proc.stderr
    assert not work.exists()
