"""Tests for jaxmod.metrics and jaxmod.report: accuracy, analytic FLOPs, module statistics, PNG plots, tables."""

from __future__ import annotations

import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from jaxmod import report
from jaxmod.metrics import accuracy_counts, count_flops, count_macs, jaxpr_flops, top_k_accuracy
from jaxmod.report import activation_heatmap_png, line_plot_png, markdown_table, scatter_plot_png, summary_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------

# 4 rows, 6 classes.  Rankings (descending) written next to each row.
LOGITS = jnp.array(
    [
        [0.1, 0.9, 0.3, 0.2, 0.0, 0.5],  # order: 1, 5, 2, 3, 0, 4
        [2.0, 1.0, 0.0, -1.0, -2.0, -3.0],  # order: 0, 1, 2, 3, 4, 5
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # order: 5, then ties 0..4 by index
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # order: 0, 1, 2, 3, 4, 5
    ],
    dtype=jnp.float32,
)
LABELS = jnp.array([1, 2, 4, 5], dtype=jnp.int32)
# row 0: label 1 is rank 0 -> top1 yes, top5 yes
# row 1: label 2 is rank 2 -> top1 no,  top5 yes
# row 2: label 4 is rank 5 (class 5 wins, then tied 0,1,2,3 beat it by index) -> no, no
# row 3: label 5 is rank 5 -> no, no


def test_top1_and_top5_hand_computed():
    top1 = top_k_accuracy(LOGITS, LABELS, k=1)
    top5 = top_k_accuracy(LOGITS, LABELS, k=5)
    chex.assert_shape(top1, ())
    chex.assert_type(top1, jnp.float32)
    chex.assert_trees_all_close(top1, jnp.float32(1 / 4))
    chex.assert_trees_all_close(top5, jnp.float32(2 / 4))
    assert int(accuracy_counts(LOGITS, LABELS, k=1)) == 1
    assert int(accuracy_counts(LOGITS, LABELS, k=5)) == 2
    assert int(accuracy_counts(LOGITS, LABELS, k=6)) == 4
    chex.assert_type(accuracy_counts(LOGITS, LABELS, k=1), jnp.int32)


def test_ties_broken_towards_lower_index_like_argmax():
    # All logits tied: class 0 wins top-1; classes 0..k-1 are the top-k.
    logits = jnp.zeros((4, 5))
    labels = jnp.array([0, 1, 2, 4])
    assert float(top_k_accuracy(logits, labels, k=1)) == 0.25
    assert int(accuracy_counts(logits, labels, k=2)) == 2  # labels 0 and 1
    assert int(accuracy_counts(logits, labels, k=3)) == 3  # labels 0, 1, 2
    # Partial tie: [1, 3, 3, 0]; class 1 beats class 2 for top-1.
    logits = jnp.array([[1.0, 3.0, 3.0, 0.0]] * 2)
    labels = jnp.array([1, 2])
    assert int(accuracy_counts(logits, labels, k=1)) == 1
    assert int(accuracy_counts(logits, labels, k=2)) == 2
    top1_argmax = jnp.mean(jnp.argmax(LOGITS, -1) == LABELS)
    chex.assert_trees_all_close(top_k_accuracy(LOGITS, LABELS), top1_argmax)


def test_accuracy_is_jittable_with_static_k_and_batched_counts_sum():
    jitted = jax.jit(top_k_accuracy, static_argnames="k")
    chex.assert_trees_all_close(jitted(LOGITS, LABELS, k=5), jnp.float32(0.5))
    total = sum(int(accuracy_counts(LOGITS[i : i + 3], LABELS[i : i + 3], k=5)) for i in (0, 3))
    assert total == 2


def test_accuracy_leading_batch_dims_and_out_of_range_labels():
    logits = LOGITS.reshape(2, 2, 6)
    labels = LABELS.reshape(2, 2)
    chex.assert_trees_all_close(top_k_accuracy(logits, labels, k=5), jnp.float32(0.5))
    # Out-of-range labels are never counted as correct (callers should check range).
    assert int(accuracy_counts(jnp.zeros((2, 3)), jnp.array([-1, 3]), k=3)) == 0


@pytest.mark.parametrize("k", [0, -1, 7])
def test_accuracy_rejects_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        top_k_accuracy(LOGITS, LABELS, k=k)
    with pytest.raises(ValueError, match="k must be"):
        accuracy_counts(LOGITS, LABELS, k=k)


def test_accuracy_rejects_mismatched_shapes_and_float_labels():
    with pytest.raises(ValueError, match="leading dims"):
        top_k_accuracy(LOGITS, LABELS[:3])
    with pytest.raises(ValueError, match="integers"):
        top_k_accuracy(LOGITS, LABELS.astype(jnp.float32))
    with pytest.raises(ValueError, match="empty"):
        top_k_accuracy(jnp.zeros((0, 3)), jnp.zeros((0,), jnp.int32))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    st.lists(st.integers(0, 3), min_size=8 * 5, max_size=8 * 5),
    st.lists(st.integers(0, 4), min_size=8, max_size=8),
    st.integers(1, 5),
)
def test_accuracy_matches_stable_sort_reference(flat_logits, labels, k):
    # Small integer logits produce many ties; a stable descending sort breaks
    # them by index, which is the documented behaviour.
    logits = np.asarray(flat_logits, np.float32).reshape(8, 5)
    labels = np.asarray(labels, np.int32)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    expected = int(sum(labels[i] in order[i] for i in range(8)))
    assert int(accuracy_counts(jnp.asarray(logits), jnp.asarray(labels), k=k)) == expected


# ---------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------


def test_flops_dense_layer_784_to_49():
    dense = nn.Dense(49)
    x = jnp.ones((1, 784))
    params = dense.init(jax.random.key(0), x)
    assert count_flops(dense.apply, params, x) == 2 * 784 * 49
    assert count_macs(dense.apply, params, x) == 784 * 49
    # With elementwise ops the bias add adds one FLOP per output element.
    assert count_flops(dense.apply, params, x, include_elementwise=True) == 2 * 784 * 49 + 49


def test_flops_plain_matmul_with_batch_dims():
    # einsum with a batch dim: out (3, 2, 5), contraction 4.
    f = lambda a, b: jnp.einsum("bik,bkj->bij", a, b)  # noqa: E731
    assert count_flops(f, jnp.ones((3, 2, 4)), jnp.ones((3, 4, 5))) == 2 * (3 * 2 * 5) * 4


def test_flops_conv_with_stride_and_padding_nchw():
    # 9x9 input, 3x3 kernel, stride 2, padding 1: out = (9 + 2 - 3) // 2 + 1 = 5.
    # out elements 1*5*5*5 = 125; each sums 3 (in) * 3*3 (window) = 27 MACs.
    def f(x, k):
        return lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)))

    x, k = jnp.ones((1, 3, 9, 9)), jnp.ones((5, 3, 3, 3))  # NCHW / OIHW (defaults)
    assert f(x, k).shape == (1, 5, 5, 5)
    assert count_flops(f, x, k) == 2 * 125 * 27 == 6750


def test_flops_conv_nhwc_hwio_layout_same_padding():
    # Same conv expressed in NHWC/HWIO with an asymmetric kernel (3x2, 4 in, 7 out).
    def f(x, k):
        return lax.conv_general_dilated(x, k, (2, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    x, k = jnp.ones((2, 8, 6, 4)), jnp.ones((3, 2, 4, 7))
    assert f(x, k).shape == (2, 4, 6, 7)
    assert count_flops(f, x, k) == 2 * (2 * 4 * 6 * 7) * (3 * 2 * 4)


def test_flops_depthwise_conv():
    # feature_group_count = C = 4: kernel in-features per group = 1.
    def f(x, k):
        return lax.conv_general_dilated(
            x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=4
        )

    x, k = jnp.ones((1, 10, 10, 4)), jnp.ones((3, 3, 1, 4))
    assert f(x, k).shape == (1, 8, 8, 4)
    assert count_flops(f, x, k) == 2 * (8 * 8 * 4) * 9


def test_flops_batch_group_conv():
    # batch_group_count=2 (weight-gradient style): out batch 4/2 = 2, each output
    # element sums over the full 3 in-features x 3x3 window.
    def f(x, k):
        return lax.conv_general_dilated(
            x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"), batch_group_count=2
        )

    x, k = jnp.ones((4, 5, 5, 3)), jnp.ones((3, 3, 3, 6))
    assert f(x, k).shape == (2, 3, 3, 6)
    assert count_flops(f, x, k) == 2 * (2 * 3 * 3 * 6) * 27


class _ConvDense(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), strides=2, padding="SAME")(x)
        x = nn.relu(x)
        x = nn.Dropout(0.5, deterministic=not train)(x)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(10)(x)


def test_flops_flax_conv_dense_model_via_apply():
    model = _ConvDense()
    x = jnp.ones((2, 28, 28, 1))
    params = model.init(jax.random.key(0), x)
    conv_macs = 2 * 14 * 14 * 8 * (3 * 3 * 1)  # out elements x window x in-features
    dense_macs = 2 * 10 * (14 * 14 * 8)  # batch x out x in
    # Static Python kwarg (train=False) is bound, not traced.
    assert count_flops(model.apply, params, x, train=False) == 2 * (conv_macs + dense_macs)
    # Abstract inputs work too (no arrays needed).
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    assert count_macs(model.apply, params, spec) == conv_macs + dense_macs
    # Elementwise: conv bias add + relu max (each 2*14*14*8) + dense bias add (2*10).
    extra = 2 * (2 * 14 * 14 * 8) + 2 * 10
    got = count_flops(model.apply, params, x, include_elementwise=True)
    assert got == 2 * (conv_macs + dense_macs) + extra


def test_flops_scan_multiplies_by_length():
    def f(x, w):
        def body(c, _):
            return jnp.tanh(c @ w), None

        c, _ = lax.scan(body, x, None, length=5)
        return c

    x, w = jnp.ones((2, 4)), jnp.ones((4, 4))
    assert count_flops(f, x, w) == 5 * 2 * (2 * 4) * 4
    assert count_flops(f, x, w, include_elementwise=True) == 5 * (2 * 2 * 4 * 4 + 2 * 4)


def test_flops_nested_jit_and_custom_derivatives_and_remat():
    @jax.jit
    def inner(x, w):
        return jax.nn.relu(x @ w)

    @jax.jit
    def outer(x, w):
        return jax.checkpoint(inner)(inner(x, w), w)

    @jax.custom_vjp
    def cv(x, w):
        return x @ w

    cv.defvjp(lambda x, w: (x @ w, (x, w)), lambda r, g: (g @ r[1].T, r[0].T @ g))

    x, w = jnp.ones((3, 6)), jnp.ones((6, 6))
    one = 2 * 3 * 6 * 6
    assert count_flops(inner, x, w) == one
    assert count_flops(outer, x, w) == 2 * one
    assert count_flops(jax.jit(cv), x, w) == one  # primal only, bwd not counted


def test_flops_cond_takes_max_branch_and_while_counts_body_once():
    def f(p, x, w):
        return lax.cond(p, lambda z: (z @ w) @ w, lambda z: z @ w, x)

    def g(x, w):
        return lax.while_loop(lambda s: s[0] < 10, lambda s: (s[0] + 1, s[1] @ w), (0, x))[1]

    x, w = jnp.ones((2, 3)), jnp.ones((3, 3))
    one = 2 * 2 * 3 * 3
    assert count_flops(f, True, x, w) == 2 * one
    assert count_flops(g, x, w) == one


def test_jaxpr_flops_accepts_closed_and_open_jaxpr():
    closed = jax.make_jaxpr(lambda a, b: a @ b)(jnp.ones((2, 3)), jnp.ones((3, 4)))
    assert jaxpr_flops(closed) == jaxpr_flops(closed.jaxpr) == 2 * 2 * 4 * 3
    with pytest.raises(TypeError):
        jaxpr_flops("not a jaxpr")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------


def _assert_png(path) -> None:
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 0 and img.shape[1] > 0


def _rates(rng: np.random.Generator, classes: int, units: int) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=(classes, units))


def test_heatmap_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    rates = {"dense_0": _rates(rng, 10, 49), "dense_1": _rates(rng, 10, 20), "logits": np.eye(10)}
    path = tmp_path / "heat.png"
    activation_heatmap_png(rates, path, class_names=[f"c{i}" for i in range(10)], title="rates")
    _assert_png(path)
    assert os.listdir(tmp_path) == ["heat.png"]  # no temp files left behind


def test_heatmap_many_units_and_unsorted(tmp_path):
    rng = np.random.default_rng(1)
    rates = {"wide": _rates(rng, 10, 1024), "narrow": _rates(rng, 10, 8)}
    path = tmp_path / "wide.png"
    activation_heatmap_png(rates, str(path), sort_units=False)
    _assert_png(path)


def test_heatmap_sorting_groups_units_by_class():
    rates = np.array([[0.0, 0.9, 0.0, 0.2], [0.8, 0.0, 0.0, 0.3]])
    order = report._sort_units(rates)
    # class 0 group: unit 1; class 1 group by decreasing peak: units 0, 3; dead unit 2 last.
    np.testing.assert_array_equal(order, [1, 0, 3, 2])


@pytest.mark.parametrize(
    "rates, match",
    [
        ({}, "non-empty"),
        ({"a": np.zeros(5)}, "2-D"),
        ({"a": np.full((2, 3), 1.5)}, r"\[0, 1\]"),
        ({"a": np.full((2, 3), -0.1)}, r"\[0, 1\]"),
        ({"a": np.full((2, 3), np.nan)}, r"\[0, 1\]"),
        ({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))}, "same number of rows"),
    ],
)
def test_heatmap_rejects_bad_input_before_writing(tmp_path, rates, match):
    path = tmp_path / "bad.png"
    with pytest.raises(ValueError, match=match):
        activation_heatmap_png(rates, path)
    assert not path.exists()
    assert os.listdir(tmp_path) == []


def test_heatmap_rejects_wrong_class_names(tmp_path):
    with pytest.raises(ValueError, match="class_names"):
        activation_heatmap_png({"a": np.zeros((2, 3))}, tmp_path / "x.png", class_names=["only one"])
    assert os.listdir(tmp_path) == []


def test_failed_save_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report.Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        line_plot_png([0, 1], {"a": [1, 2]}, path, xlabel="x", ylabel="y")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["plot.png"]


def test_line_and_scatter_plots(tmp_path):
    line = tmp_path / "line.png"
    line_plot_png(
        [1, 2, 3], {"train": [0.5, 0.7, 0.9], "test": [0.4, 0.6, 0.8]}, line, xlabel="epoch", ylabel="acc", title="t"
    )
    _assert_png(line)
    scatter = tmp_path / "scatter.png"
    scatter_plot_png(
        {"modules": ([10, 20, 30], [0.9, 0.8, 0.95]), "model": ((100,), (0.97,))},
        scatter,
        xlabel="module size",
        ylabel="accuracy",
    )
    _assert_png(scatter)


@pytest.mark.parametrize(
    "xs, ys, match",
    [
        ([], {"a": []}, "xs must not be empty"),
        ([1, 2], {}, "non-empty mapping"),
        ([1, 2], {"a": [1]}, "has 1 values"),
        ([1, 2], {"a": [1, float("nan")]}, "finite"),
        ([[1, 2]], {"a": [1, 2]}, "1-D"),
    ],
)
def test_line_plot_validation(tmp_path, xs, ys, match):
    path = tmp_path / "l.png"
    with pytest.raises(ValueError, match=match):
        line_plot_png(xs, ys, path, xlabel="x", ylabel="y")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "points, match",
    [
        ({}, "non-empty mapping"),
        ({"a": ([1, 2], [1])}, "2 xs but 1 ys"),
        ({"a": ([1, 2],)}, "pair"),
        ({"a": ([], [])}, "must not be empty"),
        ({"a": (["x"], [1])}, "numbers"),
    ],
)
def test_scatter_plot_validation(tmp_path, points, match):
    path = tmp_path / "s.png"
    with pytest.raises(ValueError, match=match):
        scatter_plot_png(points, path, xlabel="x", ylabel="y")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------

ROWS = [
    {"model": "cnn", "acc": 0.91234, "params": 1200},
    {"model": "mlp_large", "acc": 0.5, "params": 35, "note": "a|b"},
]


def test_summary_table_exact():
    expected = (
        "model         acc  params  note\n"
        "---------  ------  ------  ----\n"
        "cnn        0.9123    1200\n"
        "mlp_large  0.5000      35  a|b"
    )
    assert summary_table(ROWS) == expected


def test_summary_table_column_subset_floatfmt_and_array_scalars():
    rows = [{"name": "x", "loss": np.float32(0.125), "n": jnp.int32(3)}, {"name": "longer", "loss": 2.0}]
    expected = "n   loss  name\n-  -----  ------\n3  0.125  x\n   2.000  longer"
    assert summary_table(rows, ["n", "loss", "name"], floatfmt=".3f") == expected


def test_markdown_table_exact():
    expected = (
        "| model     |    acc | params | note |\n"
        "| --------- | -----: | -----: | ---- |\n"
        "| cnn       | 0.9123 |   1200 |      |\n"
        "| mlp_large | 0.5000 |     35 | a\\|b |"
    )
    assert markdown_table(ROWS) == expected
    assert markdown_table([{"a": 1.0}], floatfmt=".1f") == "|   a |\n| --: |\n| 1.0 |"


@pytest.mark.parametrize("fn", [summary_table, markdown_table])
def test_tables_reject_bad_input(fn):
    with pytest.raises(ValueError, match="non-empty"):
        fn([])
    with pytest.raises(ValueError, match="unknown columns"):
        fn(ROWS, ["model", "missing"])
    with pytest.raises(ValueError, match="duplicate"):
        fn(ROWS, ["model", "model"])
    with pytest.raises(ValueError, match="floatfmt"):
        fn(ROWS, floatfmt="q")
