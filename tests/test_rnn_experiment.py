"""``experiments.modularize --approach=rnn`` end to end on a slice of the real Brown corpus."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from experiments.common import check_results
from experiments.runners import rnn as rnn_runner
from jaxmod import checkpoint
from jaxmod.approaches import rnn
from jaxmod.voting import voting_accuracy

FLAGS = ("--approach=rnn", "--shape=many_to_many", "--cell=gru", "--layers=1", "--mode=unrolled", "--epochs=1",
         "--train_limit=600", "--test_limit=200", "--num_subtasks=2", "--progress=false")


def _run(*flags):
    return subprocess.run([sys.executable, "-m", "experiments.modularize", *flags], capture_output=True, text=True)


def test_tagger_decomposes_composes_and_its_modules_restore(tmp_path):
    work = tmp_path / "run"
    proc = _run(*FLAGS, f"--workdir={work}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((work / "results.json").read_text())
    check_results(results)
    assert results["dataset"] == "brown_tags" and results["num_classes"] == 12
    std, composed = results["standard"]["test_accuracy"], results["composed"]["test_accuracy"]
    assert std > 0.3  # one epoch on 600 sentences learns the frequent tags
    assert abs(composed - std) < 0.1  # unrolled modules, voting per step
    assert 0 < results["modules"]["mean_jaccard"] < 1
    assert "decomposition cost" in proc.stdout  # the summary table

    # The saved modules, restored, vote per step like the run's composed model.
    modules, variables = checkpoint.restore_modules(work / "modules")
    assert modules.metadata.approach == "rnn" and len(modules.metadata.classes) == 12
    _, arrays = rnn_runner.load(rnn_runner.RnnRun(**results["config"]["run"]))
    test = arrays["test"]
    outputs, labels = rnn.composed_outputs([modules], [variables], test.x)
    acc = voting_accuracy(outputs, test.y, classes=labels, valid=test.valid)
    np.testing.assert_allclose(acc, composed, atol=1e-6)

    # Modules of a model that reads another vocabulary never compose with these.
    other = dataclasses.replace(modules.metadata, extra={**modules.metadata.extra, "input_vocab_hash": "0" * 16})
    with pytest.raises(ValueError, match="input vocabularies differ"):
        rnn.check_composable([modules.metadata, other])


@pytest.mark.parametrize("flag, message", [("--layers=5", "layers must be 1 to 4"),
                                           ("--max_remove=1.5", "max_remove"),
                                           ("--shape=many_to_one --padding=scored", "padding='scored' applies")])
def test_bad_rnn_flags_fail_before_writing(tmp_path, flag, message):
    work = tmp_path / "never"
    proc = _run(*FLAGS, *flag.split(), f"--workdir={work}")
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not work.exists()
