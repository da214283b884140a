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


def test_summary_reports_every_cap_mode_separately():
    """Rows of an extra cap (``--table_max_remove``) get their own summary lines, never mixed into the defaults."""
    rows = [{"shape": "encoder_decoder", "dataset": "translation", "cell": "lstm", "layers": 1, "mode": mode,
             "standard_accuracy": 0.40, "composed_accuracy": 0.40 + acc, "cost_points": bleu, "jaccard": 0.8,
             "bleu2_standard": 15.0, "bleu2_composed": 15.0 + bleu}
            for mode, bleu, acc in [("rolled", -2.0, -0.01), ("unrolled", -3.0, -0.02),
                                    ("rolled@0.05", -0.5, 0.0), ("unrolled@0.05", -0.25, -0.005)]]
    code = ("import json, sys; from experiments import rnn_table as t; "
            "print(json.dumps(t.summary_lines(json.loads(sys.stdin.read()))))")
    proc = subprocess.run([sys.executable, "-c", code], input=json.dumps(rows), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "- translation BLEU (encoder_decoder), unrolled: mean -3.00, median -3.00 points over 1 models" in lines
    assert "- translation BLEU (encoder_decoder), unrolled@0.05: mean -0.25, median -0.25 points over 1 models" in lines
    starts = ("- encoder_decoder (translation), rolled@0.05: accuracy cost mean +0.00",
              "- translation BLEU-2 (encoder_decoder), unrolled@0.05: mean -0.25")
    for start in starts:
        assert any(line.startswith(start) for line in lines), start


def test_cost_against_size_plot_is_a_png(tmp_path):
    rows = [{"shape": "many_to_many", "mode": mode, "jaccard": ji, "cost_points": cost}
            for mode, ji, cost in [("rolled", 0.65, -1.7), ("unrolled", 0.66, -1.5), ("rolled@0.05", 0.88, -0.2)]]
    out = tmp_path / "cost_vs_size.png"
    code = ("import json, sys; from experiments import rnn_table as t; "
            "t.plot_cost_vs_size(json.loads(sys.stdin.read()), sys.argv[1])")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], input=json.dumps(rows), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
