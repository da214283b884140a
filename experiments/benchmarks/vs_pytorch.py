"""jaxmod against PyTorch on the same CPU, side by side, on the papers' zoo models; writes JSON.

    PYTHONPATH=. python -m experiments.benchmarks.vs_pytorch --out=experiments/results/speed/vs_pytorch.json

For each model (LeNet-5 on 28x28x1, VGG16 with the MODA authors' 4096-4096 classifier, ResNet18,
ResNet20, MobileNet on 32x32x3; batch 128) it times the eval forward pass, a standard train step (SGD
Nesterov, cross-entropy) and a MODA train step (cross-entropy + affinity, dispersion, compactness on
every hidden activation) in jaxmod (its own ``make_train_step``) and in a PyTorch model of the same
shapes written here, started from the same weights (the Flax parameters copied into torch) and fed
the same batch. jax and torch rounds alternate; medians are reported with the load average. Also:
the MODA decomposition of 2,000 samples (VGG16), and a per-layer profile (every distinct conv and
dense layer alone at its real input shape: jaxmod's fast path, plain lax, torch; forward and
forward + backward). Needs the optional ``bench`` extra (torch).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from jaxmod import fastconv
from jaxmod.approaches import create_approach, threshold_with_floor
from jaxmod.losses import cross_entropy_loss, moda_loss
from jaxmod.models import create_model
from jaxmod.train import TrainState, make_train_step

MODELS = {
    "lenet5": ("lenet5", {}, (28, 28, 1)),
    "vgg16": ("vgg16", {"classifier": (4096, 4096)}, (32, 32, 3)),  # the MODA authors' classifier
    "resnet18": ("resnet18", {}, (32, 32, 3)),
    "resnet20": ("resnet20", {}, (32, 32, 3)),
    "mobilenet": ("mobilenet", {}, (32, 32, 3)),
}

flags.DEFINE_string("out", "experiments/results/speed/vs_pytorch.json", "Where to write the figures.")
flags.DEFINE_list("models", list(MODELS), "Models to time.")
flags.DEFINE_integer("batch", 128, "Batch size.")
flags.DEFINE_integer("rounds", 5, "Interleaved jax/torch rounds per figure (medians over them).")
flags.DEFINE_integer("decompose_samples", 2000, "Samples for the VGG16 MODA decomposition (0: skip).")
flags.DEFINE_integer("decompose_rounds", 3, "Rounds of the decomposition timing.")
flags.DEFINE_bool("profile", True, "Time every distinct conv/dense layer alone.")
flags.DEFINE_integer("profile_rounds", 3, "Rounds per layer in the profile.")
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: torch's default).")
flags.DEFINE_string("omp_wait_policy", "PASSIVE",
                    "OMP_WAIT_POLICY for torch's OpenMP threads, unless already set in the environment. PASSIVE "
                    "keeps torch fast when other jobs share the cores (ACTIVE barriers spin: 10x slower at load 3 on "
                    "2 cores); empty: leave the OpenMP default.")

LEARNING_RATE, MOMENTUM = 0.05, 0.9
MODA_WEIGHTS = (1.0, 1.0, 0.3)  # alpha, beta, gamma: the paper's and jaxmod's defaults


# ---------------------------------------------------------------------------------------------
# PyTorch models of the zoo's shapes, with the zoo's layer names so that Flax parameters copy by name.

def torch_model(name: str, model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """A torch ``nn.Module`` with ``model``'s architecture; ``forward`` returns (logits, hidden activations)."""
    import torch
    from torch import nn as tnn
    from torch.nn import functional as F  # noqa: N812

    def conv_bn(cin, cout, k, stride, pad, groups=1, bias=False):
        return tnn.Conv2d(cin, cout, k, stride, pad, groups=groups, bias=bias), tnn.BatchNorm2d(cout, 1e-5, 0.1)

    def nhwc_flatten(h):  # Flax flattens (H, W, C)
        return h.permute(0, 2, 3, 1).flatten(1)

    class LeNet5(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(input_shape[-1], 6, 5, padding=2)
            self.conv2 = tnn.Conv2d(6, 16, 5)
            side = (input_shape[0] // 2 - 4) // 2
            self.fc1, self.fc2 = tnn.Linear(16 * side * side, 120), tnn.Linear(120, 84)
            self.logits = tnn.Linear(84, model.num_classes)

        def forward(self, x):
            acts = [F.relu(self.conv1(x))]
            acts.append(F.relu(self.conv2(F.max_pool2d(acts[-1], 2))))
            h = nhwc_flatten(F.max_pool2d(acts[-1], 2))
            acts.append(F.relu(self.fc1(h)))
            acts.append(F.relu(self.fc2(acts[-1])))
            return self.logits(acts[-1]), acts

    class VGG(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stages, cin, i = [], input_shape[-1], 0
            for stage in model.stages:
                self.stages.append(len(stage))
                for width in stage:
                    i += 1
                    conv, bn = conv_bn(cin, width, 3, 1, 1, bias=not model.use_bn)
                    setattr(self, f"conv{i}", conv)
                    if model.use_bn:
                        setattr(self, f"bn{i}", bn)
                    cin = width
            side = input_shape[0] // 2 ** len(model.stages)
            widths = [cin * side * side, *model.classifier]
            for j in range(1, len(model.classifier) + 1):
                setattr(self, f"fc{j}", tnn.Linear(widths[j - 1], widths[j]))
            self.logits = tnn.Linear(widths[-1], model.num_classes)
            self.drop = tnn.Dropout(model.dropout)

        def forward(self, x):
            acts, i = [], 0
            for n in self.stages:
                for _ in range(n):
                    i += 1
                    h = getattr(self, f"conv{i}")(x)
                    x = F.relu(getattr(self, f"bn{i}")(h) if model.use_bn else h)
                    acts.append(x)
                x = F.max_pool2d(x, 2)
            x = nhwc_flatten(x)
            for j in range(1, len(model.classifier) + 1):
                x = F.relu(getattr(self, f"fc{j}")(x))
                acts.append(x)
                x = self.drop(x) if model.dropout > 0 else x
            return self.logits(x), acts

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride, 1)
            self.conv2, self.bn2 = conv_bn(cout, cout, 3, 1, 1)
            self.project = stride != 1 or cin != cout
            if self.project:
                self.proj_conv, self.proj_bn = conv_bn(cin, cout, 1, stride, 0)

        def forward(self, x, acts):
            h = F.relu(self.bn1(self.conv1(x)))
            acts.append(h)
            short = self.proj_bn(self.proj_conv(x)) if self.project else x
            out = F.relu(self.bn2(self.conv2(h)) + short)
            acts.append(out)
            return out

    class ResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem_conv, self.stem_bn = conv_bn(input_shape[-1], model.stem_width, 3, 1, 1)
            self.names, cin = [], model.stem_width
            for s, (n, width) in enumerate(zip(model.stage_sizes, model.stage_widths, strict=True), start=1):
                for b in range(n):
                    self.names.append(f"stage{s}_block{b}")
                    setattr(self, self.names[-1], Block(cin, width, 2 if (b == 0 and s > 1) else 1))
                    cin = width
            self.logits = tnn.Linear(cin, model.num_classes)

        def forward(self, x):
            acts = [F.relu(self.stem_bn(self.stem_conv(x)))]
            x = acts[-1]
            for name in self.names:
                x = getattr(self, name)(x, acts)
            return self.logits(x.mean(dim=(2, 3))), acts

    class Separable(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.dw_conv, self.dw_bn = conv_bn(cin, cin, 3, stride, 1, groups=cin)
            self.pw_conv, self.pw_bn = conv_bn(cin, cout, 1, 1, 0)

        def forward(self, x, acts):
            acts.append(F.relu(self.dw_bn(self.dw_conv(x))))
            acts.append(F.relu(self.pw_bn(self.pw_conv(acts[-1]))))
            return acts[-1]

    class MobileNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.stem_conv, self.stem_bn = conv_bn(input_shape[-1], model.stem_width, 3, 1, 1)
            cin = model.stem_width
            self.n = len(model.blocks)
            for i, (width, stride) in enumerate(model.blocks, start=1):
                setattr(self, f"block{i}", Separable(cin, width, stride))
                cin = width
            self.logits = tnn.Linear(cin, model.num_classes)

        def forward(self, x):
            acts = [F.relu(self.stem_bn(self.stem_conv(x)))]
            x = acts[-1]
            for i in range(1, self.n + 1):
                x = getattr(self, f"block{i}")(x, acts)
            return self.logits(x.mean(dim=(2, 3))), acts

    classes = {"lenet5": LeNet5, "vgg16": VGG, "resnet18": ResNet, "resnet20": ResNet, "mobilenet": MobileNet}
    if name not in classes:
        raise ValueError(f"no torch counterpart for {name!r}; have {sorted(classes)}")
    torch.manual_seed(0)
    return classes[name]()


def load_flax_variables(tmodel: Any, variables: dict[str, Any]) -> None:
    """Copy Flax params (and batch stats) into the torch model by layer name; every torch tensor is set."""
    import torch

    covered = set()
    wanted = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    flat = jax.tree_util.tree_flatten_with_path(wanted)[0]
    for path, leaf in flat:
        keys = [p.key for p in path]
        collection, layer, kind = keys[0], ".".join(keys[1:-1]), keys[-1]
        module = tmodel.get_submodule(layer)
        value = torch.from_numpy(np.array(leaf, np.float32))
        if isinstance(module, torch.nn.Conv2d) and kind == "kernel":
            target, value = "weight", value.permute(3, 2, 0, 1)  # HWIO -> OIHW
        elif isinstance(module, torch.nn.Linear) and kind == "kernel":
            target, value = "weight", value.T
        elif collection == "batch_stats":
            target = {"mean": "running_mean", "var": "running_var"}[kind]
        else:
            target = {"scale": "weight", "bias": "bias"}[kind]
        tensor = getattr(module, target)
        if tuple(tensor.shape) != tuple(value.shape):
            raise ValueError(f"{layer}.{target}: torch {tuple(tensor.shape)} vs flax {tuple(value.shape)}")
        with torch.no_grad():
            tensor.copy_(value)
        covered.add(f"{layer}.{target}" if layer else target)
    expected = {k for k, _ in tmodel.named_parameters()} | {
        k for k, _ in tmodel.named_buffers() if not k.endswith("num_batches_tracked")}
    if expected - covered:
        raise ValueError(f"torch tensors without a Flax value: {sorted(expected - covered)}")


def torch_unit_values(a: Any) -> Any:
    """MODA's per-unit values: mean |a| over space for conv maps (NCHW), the activation itself for dense."""
    return a.abs().mean(dim=(2, 3)) if a.dim() == 4 else a


def torch_moda_terms(acts: list, labels: Any) -> tuple[Any, Any, Any]:
    """Affinity, dispersion, compactness averaged over layers, as jaxmod.losses.moda_terms defines them."""
    import torch

    n = labels.shape[0]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    same = labels[:, None] == labels[None, :]
    same_mask, diff_mask = (upper & same).float(), (upper & ~same).float()
    aff, dis, com = [], [], []
    for a in acts:
        v = torch_unit_values(a)
        unit = v / torch.sqrt(torch.clamp((v * v).sum(-1, keepdim=True), min=1e-16))
        sim = unit @ unit.T
        aff.append(((1 - sim) * same_mask).sum() / torch.clamp(same_mask.sum(), min=1.0))
        dis.append((sim * diff_mask).sum() / torch.clamp(diff_mask.sum(), min=1.0))
        com.append(v.abs().mean())
    return torch.stack(aff).mean(), torch.stack(dis).mean(), torch.stack(com).mean()


def torch_step_fn(tmodel: Any, moda: bool) -> Callable[[Any, Any], Any]:
    """One SGD (Nesterov) step on cross-entropy, plus MODA's terms when ``moda``."""
    import torch

    opt = torch.optim.SGD(tmodel.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, nesterov=True)
    alpha, beta, gamma = MODA_WEIGHTS

    def step(x, y):
        tmodel.train()
        opt.zero_grad(set_to_none=True)
        logits, acts = tmodel(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        if moda:
            aff, dis, com = torch_moda_terms(acts, y)
            loss = loss + alpha * aff + beta * dis + gamma * com
        loss.backward()
        opt.step()
        return loss.item()

    return step


def torch_class_counts(tmodel: Any, x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int) -> list:
    """Per layer, ``(C, U)`` counts of samples of each class on which each unit is active (value != 0)."""
    import torch

    tmodel.eval()
    counts = None
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[start:start + batch_size])
            labels = torch.from_numpy(y[start:start + batch_size].astype(np.int64))
            onehot = torch.nn.functional.one_hot(labels, num_classes).float()
            _, acts = tmodel(xb)
            batch = [onehot.T @ (torch_unit_values(a) != 0).float() for a in acts]
            counts = batch if counts is None else [c + b for c, b in zip(counts, batch, strict=True)]
    return [c.round().long().numpy() for c in counts]


def torch_decompose(tmodel: Any, x: np.ndarray, y: np.ndarray, num_classes: int, tau: float = 0.9,
                    batch_size: int = 512) -> list:
    """MODA's masks from torch activation counts (the same rates and threshold rule as jaxmod's)."""
    totals = np.bincount(y, minlength=num_classes)
    return [threshold_with_floor(c / np.maximum(totals, 1)[:, None], tau)
            for c in torch_class_counts(tmodel, x, y, num_classes, batch_size)]


# ---------------------------------------------------------------------------------------------
# Timing

def _sync(out: Any) -> Any:
    return jax.block_until_ready(out)


def interleaved(jax_fn: Callable[[], Any], torch_fn: Callable[[], Any], rounds: int) -> dict[str, Any]:
    """Medians (ms) of alternating jax and torch calls (each warmed up once), with the load average."""
    _sync(jax_fn())
    torch_fn()
    jt, tt, loads = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        _sync(jax_fn())
        jt.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        torch_fn()
        tt.append((time.perf_counter() - start) * 1e3)
        loads.append(os.getloadavg()[0])
    j, t = statistics.median(jt), statistics.median(tt)
    return {"jax_ms": round(j, 2), "torch_ms": round(t, 2), "ratio": round(j / t, 3),
            "load_avg_1min": round(statistics.median(loads), 2), "jax_all_ms": [round(v, 1) for v in jt],
            "torch_all_ms": [round(v, 1) for v in tt]}


def _time_all(fns: list[Callable[[], Any]], rounds: int) -> list[float]:
    """Median ms of each function, the functions alternating within every round."""
    for fn in fns:
        _sync(fn())
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, ts in zip(fns, times, strict=True):
            start = time.perf_counter()
            _sync(fn())
            ts.append((time.perf_counter() - start) * 1e3)
    return [round(statistics.median(ts), 2) for ts in times]


# ---------------------------------------------------------------------------------------------
# Per-layer profile

def layer_calls(model: nn.Module, variables: Any, x_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Every conv and dense call of the eval forward pass: module path, its settings and input shape."""
    calls = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, (nn.Conv, nn.Dense)):
            calls.append({"layer": "/".join(module.path), "module": module, "input_shape": tuple(args[0].shape)})
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros(x_shape)), variables)
    return calls


def _layer_key(call: dict[str, Any]) -> tuple:
    m = call["module"]
    if isinstance(m, nn.Dense):
        return ("dense", call["input_shape"], m.features)
    return ("conv", call["input_shape"], m.features, tuple(m.kernel_size), m.strides, m.padding,
            m.feature_group_count)


def _torch_layer(call: dict[str, Any]) -> Any:
    import torch

    m, shape = call["module"], call["input_shape"]
    if isinstance(m, nn.Dense):
        return torch.nn.Linear(shape[-1], m.features, bias=m.use_bias)
    strides = m.strides if isinstance(m.strides, int) or m.strides is None else m.strides[0]
    pads = fastconv.explicit_padding(nn.linear.canonicalize_padding(m.padding, 2), shape[1:3], m.kernel_size,
                                     (strides or 1,) * 2)
    if pads[0][0] != pads[0][1]:  # torch pads symmetrically; pre-pad asymmetric cases
        raise ValueError(f"asymmetric padding {pads} is not profiled")
    return torch.nn.Conv2d(shape[-1], m.features, tuple(m.kernel_size), strides or 1, pads[0][0],
                           groups=m.feature_group_count, bias=m.use_bias)


def profile_layer(call: dict[str, Any], rounds: int) -> dict[str, Any]:
    """One conv/dense layer alone at its input shape: jaxmod (fast path) vs plain lax vs torch."""
    import torch

    m, shape = call["module"], call["input_shape"]
    layer = m.clone(parent=None, name=None)
    x = jax.random.normal(jax.random.key(0), shape)
    params = layer.init(jax.random.key(1), x)

    def fwd(p, x):
        return layer.apply(p, x)

    def fwd_bwd(p, x):
        return jax.grad(lambda p, x: jnp.sum(layer.apply(p, x) ** 2), argnums=(0, 1))(p, x)

    jf, jg = jax.jit(fwd), jax.jit(fwd_bwd)
    with fastconv.reference_convs():
        lf, lg = jax.jit(lambda p, x: fwd(p, x)), jax.jit(lambda p, x: fwd_bwd(p, x))
        jax.block_until_ready((lf(params, x), lg(params, x)))  # traced here, with lax
    tl = _torch_layer(call)
    tx = torch.randn(shape[0], shape[-1], *shape[1:-1]) if len(shape) == 4 else torch.randn(*shape)
    tx.requires_grad_(True)

    def t_fwd():
        with torch.inference_mode():
            return tl(tx)

    def t_fwd_bwd():
        (tl(tx) ** 2).sum().backward()

    f = _time_all([lambda: jf(params, x), lambda: lf(params, x), t_fwd], rounds)
    g = _time_all([lambda: jg(params, x), lambda: lg(params, x), t_fwd_bwd], rounds)
    path = "dense"
    if not isinstance(m, nn.Dense):
        strides = (m.strides,) * 2 if isinstance(m.strides, int) else tuple(m.strides or (1, 1))
        kshape = (*m.kernel_size, shape[-1] // m.feature_group_count, m.features)
        pads = fastconv.explicit_padding(nn.linear.canonicalize_padding(m.padding, 2), shape[1:3], m.kernel_size,
                                         strides)
        path = fastconv.conv_path(shape, kshape, strides, pads, m.feature_group_count)
    return {"layer": call["layer"], "kind": "dense" if path == "dense" else "conv", "input_shape": list(shape),
            "features": m.features, "kernel": list(getattr(m, "kernel_size", ())),
            "strides": getattr(m, "strides", None), "groups": getattr(m, "feature_group_count", 1),
            "path": path, "fwd_jaxmod_ms": f[0], "fwd_lax_ms": f[1], "fwd_torch_ms": f[2],
            "fwd_bwd_jaxmod_ms": g[0], "fwd_bwd_lax_ms": g[1], "fwd_bwd_torch_ms": g[2],
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def profile_layers(model: nn.Module, variables: Any, x_shape: tuple[int, ...], rounds: int) -> list[dict[str, Any]]:
    """Each distinct conv/dense layer alone (see :func:`profile_layer`), with its count and the totals."""
    rows: dict[tuple, dict[str, Any]] = {}
    for call in layer_calls(model, variables, x_shape):
        key = _layer_key(call)
        if key in rows:
            rows[key]["count"] += 1
        else:
            rows[key] = {"count": 1, **profile_layer(call, rounds)}
    out = list(rows.values())
    totals = {key: round(sum(r[key] * r["count"] for r in out), 1)
              for key in ("fwd_jaxmod_ms", "fwd_lax_ms", "fwd_torch_ms", "fwd_bwd_jaxmod_ms", "fwd_bwd_lax_ms",
                          "fwd_bwd_torch_ms")}
    return out + [{"layer": "TOTAL (sum over layers x count)", **totals}]


# ---------------------------------------------------------------------------------------------

def bench_model(key: str, batch: int, rounds: int, profile: bool, profile_rounds: int) -> dict[str, Any]:
    import torch

    name, config, shape = MODELS[key]
    model = create_model(name, 10, **config)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
    tmodel = torch_model(name, model, shape)
    load_flax_variables(tmodel, variables)
    tx, ty = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y.astype(np.int64))
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    fwd = jax.jit(lambda v, x: model.apply(v, x))
    with fastconv.reference_convs():
        ref_logits = jax.jit(lambda v, x: model.apply(v, x))(variables, xj)
    logits = fwd(variables, xj)
    tmodel.eval()
    with torch.inference_mode():
        t_logits = tmodel(tx)[0].numpy()
    result: dict[str, Any] = {
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}, "input_shape": list(shape),
        "logits_max_abs_diff_vs_nn_conv": float(jnp.max(jnp.abs(logits - ref_logits))),
        "logits_bit_identical_to_nn_conv": bool(jnp.array_equal(logits, ref_logits)),
        "logits_max_abs_diff_vs_torch": float(np.max(np.abs(np.asarray(logits) - t_logits))),
        "logits_max_abs": float(jnp.max(jnp.abs(logits))),
    }

    def t_fwd():
        with torch.inference_mode():
            return tmodel(tx)[0]

    tmodel.eval()
    result["forward"] = interleaved(lambda: fwd(variables, xj), t_fwd, rounds)

    optimizer = optax.sgd(LEARNING_RATE, momentum=MOMENTUM, nesterov=True)
    for label, loss_fn, moda in (("standard_step", cross_entropy_loss(), False),
                                 ("moda_step", moda_loss(*MODA_WEIGHTS), True)):
        load_flax_variables(tmodel, variables)
        step = make_train_step(model, optimizer, loss_fn)
        params = jax.tree.map(jnp.copy, variables["params"])
        holder = [TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             batch_stats=jax.tree.map(jnp.copy, variables.get("batch_stats", {})),
                             opt_state=optimizer.init(params), key=jax.random.key_data(jax.random.key(0)))]

        def j_step(step=step, holder=holder):
            holder[0], out = step(holder[0], xj, yj)
            return out["loss"]

        result[label] = interleaved(j_step, lambda moda=moda: torch_step_fn(tmodel, moda)(tx, ty), rounds)
    if profile:
        result["profile"] = profile_layers(model, variables, (batch, *shape), profile_rounds)
    return result


def bench_decomposition(samples: int, rounds: int) -> dict[str, Any]:
    """VGG16 (4096 classifier) MODA decomposition of ``samples`` samples: jaxmod vs torch."""
    name, config, shape = MODELS["vgg16"]
    model = create_model(name, 10, **config)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
    tmodel = torch_model(name, model, shape)
    load_flax_variables(tmodel, variables)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((samples, *shape), dtype=np.float32)
    y = (np.arange(samples) % 10).astype(np.int32)
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    approach = create_approach("moda")
    start = time.perf_counter()
    masks = approach.decompose(model, variables, x, y, 10).modules.units
    first = (time.perf_counter() - start) * 1e3
    t_masks = torch_decompose(tmodel, x_nchw, y, 10)
    forward_order = [group.name for group in model.topology_spec(shape).groups]  # torch lists layers in this order
    same = all(np.array_equal(np.asarray(masks[k]), t) for k, t in zip(forward_order, t_masks, strict=True))
    timing = interleaved(lambda: approach.decompose(model, variables, x, y, 10).modules.units,
                         lambda: torch_decompose(tmodel, x_nchw, y, 10), rounds)
    return {"model": "vgg16", "config": {"classifier": [4096, 4096]}, "samples": samples,
            "jax_first_call_ms_with_compile": round(first, 1), **timing, "masks_equal_to_torch": bool(same),
            "note": "masks from random weights and inputs; equality depends only on activations being != 0"}


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.omp_wait_policy:
        os.environ.setdefault("OMP_WAIT_POLICY", f.omp_wait_policy)  # read when torch loads OpenMP
    import torch

    if f.torch_threads:
        torch.set_num_threads(f.torch_threads)
    unknown = [m for m in f.models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; available: {sorted(MODELS)}")
    result: dict[str, Any] = {"meta": {
        "jax": jax.__version__, "torch": torch.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "batch": f.batch, "rounds": f.rounds,
        "load_avg_start": [round(v, 2) for v in os.getloadavg()],
        "fastconv_max_matmul_positions": fastconv.MAX_MATMUL_POSITIONS,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, "models": {}}
    os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)

    def write() -> None:  # after every model, so that a late failure keeps the figures
        result["meta"]["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
        with open(f.out, "w") as fh:
            json.dump(result, fh, indent=1)

    if f.decompose_samples:
        print("== vgg16 decomposition", flush=True)
        result["decomposition"] = bench_decomposition(f.decompose_samples, f.decompose_rounds)
        print(json.dumps({k: v for k, v in result["decomposition"].items() if not k.endswith("_all_ms")}), flush=True)
        write()
    for key in f.models:
        print(f"== {key}", flush=True)
        result["models"][key] = bench_model(key, f.batch, f.rounds, f.profile, f.profile_rounds)
        summary = {k: result["models"][key][k] for k in ("forward", "standard_step", "moda_step")}
        print(json.dumps({k: {m: v[m] for m in ("jax_ms", "torch_ms", "ratio", "load_avg_1min")}
                          for k, v in summary.items()}), flush=True)
        write()
    print(f"wrote {f.out}")


if __name__ == "__main__":
    app.run(main)
