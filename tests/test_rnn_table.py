"""``experiments/rnn_table.py`` refuses bad overrides before anything is trained or written. Run in
subprocesses: the table defines generic flags (``seed``, ``output_dir``) that other experiment modules define too,
so it is never imported into the test process."""

import json
import subprocess
import sys

import pytest


@pytest.mark.parametrize("flag, message", [('--table_settings={"many_to_many": {"epochs": 2, "bogus": 1}}',
                                            "RnnRun fields"),
                                           ("--table_max_remove=0.05,2", "in [0, 1]")])
def test_bad_table_flags_fail_before_writing(tmp_path, flag, message):
    out = tmp_path / "never"
    proc = subprocess.run([sys.executable, "-m", "experiments.rnn_table", flag, f"--output_dir={out}",
                           "--progress=false"], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not out.exists()


def test_overrides_apply_to_their_shape_only():
    code = ("import json; from absl import flags; from experiments import rnn_table as t; "
            "flags.FLAGS(['x', '--table_settings={\"many_to_many\": {\"epochs\": 5, \"train_limit\": 8000}}', "
            "'--table_max_remove=0.05']); print(json.dumps({'s': t.settings(), 'base': t.SETTINGS, 'caps': t.caps()}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["s"]["many_to_many"] == {**out["base"]["many_to_many"], "epochs": 5, "train_limit": 8000}
    assert out["s"]["many_to_one"] == out["base"]["many_to_one"]
    assert out["caps"] == [0.05]
