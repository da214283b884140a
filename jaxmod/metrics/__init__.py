"""Measuring models and modules the way the papers do: accuracy, FLOPs, module sizes and Jaccard indices,
MwT's kernel metrics, BLEU and CO2e. Plots and tables are in :mod:`jaxmod.report` (no plotting library here).
"""

from jaxmod.metrics.accuracy import accuracy_counts, top_k_accuracy, top_k_hits
from jaxmod.metrics.energy import co2e
from jaxmod.metrics.flops import count_flops, count_macs, forward_flops, jaxpr_flops
from jaxmod.metrics.kernels import kernel_cohesion, kernel_coupling, kernel_retention_rate, mean_pairwise_jaccard
from jaxmod.metrics.latency import interleaved_latency, latency_comparison
from jaxmod.metrics.modules import (
    element_statistics,
    module_model_jaccard,
    module_statistics,
    summarize,
    union_size,
    unit_statistics,
    weight_statistics,
)
from jaxmod.metrics.text import bleu_by_group, bleu_points, bleu_statistics, corpus_bleu, token_lists

__all__ = [
    "accuracy_counts",
    "bleu_by_group",
    "bleu_points",
    "bleu_statistics",
    "co2e",
    "corpus_bleu",
    "count_flops",
    "count_macs",
    "forward_flops",
    "jaxpr_flops",
    "kernel_cohesion",
    "kernel_coupling",
    "interleaved_latency",
    "kernel_retention_rate",
    "latency_comparison",
    "mean_pairwise_jaccard",
    "element_statistics",
    "module_model_jaccard",
    "module_statistics",
    "summarize",
    "union_size",
    "unit_statistics",
    "weight_statistics",
    "token_lists",
    "top_k_accuracy",
    "top_k_hits",
]
