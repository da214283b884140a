"""Markdown tables from the JSON that vs_pytorch.py writes.

    python -m experiments.benchmarks.speed_table experiments/results/speed/vs_pytorch.json
"""

from __future__ import annotations

import json
import sys
from typing import Any


def model_table(result: dict[str, Any]) -> str:
    """Per model and figure: jax ms, torch ms, ratio, load average; and the logits checks."""
    lines = ["| model | figure | jaxmod ms | torch ms | jax/torch | load avg (1 min) |",
             "|---|---|---:|---:|---:|---:|"]
    for name, r in result["models"].items():
        for fig in ("forward", "standard_step", "moda_step"):
            f = r[fig]
            lines.append(f"| {name} | {fig} | {f['jax_ms']:.1f} | {f['torch_ms']:.1f} | {f['ratio']:.2f} | "
                         f"{f['load_avg_1min']:.2f} |")
    lines += ["", "| model | logits vs nn.Conv: max abs diff | bit-identical | vs torch: max abs diff "
              "| max abs logit |", "|---|---:|---|---:|---:|"]
    for name, r in result["models"].items():
        lines.append(f"| {name} | {r['logits_max_abs_diff_vs_nn_conv']:.2e} | {r['logits_bit_identical_to_nn_conv']} | "
                     f"{r['logits_max_abs_diff_vs_torch']:.2e} | {r['logits_max_abs']:.2f} |")
    return "\n".join(lines)


def profile_table(name: str, rows: list[dict[str, Any]]) -> str:
    """One model's per-layer profile."""
    lines = [f"#### {name}", "", "| layer (first of its shape) | n | input | out | k | s | g | path | fwd jaxmod "
             "| fwd lax | fwd torch | fwd+bwd jaxmod | fwd+bwd lax | fwd+bwd torch |",
             "|---|---:|---|---:|---|---|---:|---|" + "---:|" * 6]
    for r in rows:
        if "count" not in r:
            lines.append(f"| **total (x n)** | | | | | | | | {r['fwd_jaxmod_ms']:.0f} | {r['fwd_lax_ms']:.0f} | "
                         f"{r['fwd_torch_ms']:.0f} | {r['fwd_bwd_jaxmod_ms']:.0f} | {r['fwd_bwd_lax_ms']:.0f} | "
                         f"{r['fwd_bwd_torch_ms']:.0f} |")
            continue
        shape = "x".join(str(d) for d in r["input_shape"][1:])
        k = "x".join(str(d) for d in r["kernel"]) or "-"
        lines.append(f"| {r['layer']} | {r['count']} | {shape} | {r['features']} | {k} | {r['strides'] or 1} | "
                     f"{r['groups']} | {r['path']} | {r['fwd_jaxmod_ms']:.1f} | {r['fwd_lax_ms']:.1f} | "
                     f"{r['fwd_torch_ms']:.1f} | {r['fwd_bwd_jaxmod_ms']:.1f} | {r['fwd_bwd_lax_ms']:.1f} | "
                     f"{r['fwd_bwd_torch_ms']:.1f} |")
    return "\n".join(lines)


def main(path: str) -> None:
    with open(path) as fh:
        result = json.load(fh)
    print(json.dumps(result["meta"]))
    print()
    print(model_table(result))
    if "decomposition" in result:
        d = result["decomposition"]
        print(f"\nVGG16 MODA decomposition of {d['samples']} samples: jaxmod {d['jax_ms']:.0f} ms, torch "
              f"{d['torch_ms']:.0f} ms, ratio {d['ratio']:.2f}, load {d['load_avg_1min']:.2f}; jaxmod first call "
              f"(with compile) {d['jax_first_call_ms_with_compile']:.0f} ms; masks equal: {d['masks_equal_to_torch']}")
    for name, r in result["models"].items():
        if "profile" in r:
            print()
            print(profile_table(name, r["profile"]))


if __name__ == "__main__":
    main(sys.argv[1])
