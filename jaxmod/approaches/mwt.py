"""MwT (Qi et al., ICSE 2024): modularizing while training with mask generators.

* **Training**: the model is built with ``mask_generators=True`` (every conv but the first of a
  VGG-style model, every block conv and projection of a ResNet; :mod:`jaxmod.mask_generators`), and
  trained with CE + alpha cohesion + beta coupling on the generators' per-sample kernel masks
  (:func:`jaxmod.losses.mwt_loss`) through the same train step as every objective.
* **Modularizing**: per class, how often each kernel's mask is non-zero over the class's training
  samples; a module keeps the kernels with frequency >= tau, and a layer that would keep none
  lowers its threshold by 0.05 until one survives (reference code). Modules are unit masks over the
  model's groups (ungated groups are kept whole); in a ResNet the kernels of ``conv2`` and of the
  projection are groups of their own inside the residual sum, whose kept units are the union of
  what feeds it (:func:`jaxmod.topology.split_residual_producers`).
* **Reuse**: the mixed module of k classes (union of their kernels) is sliced without the
  generators; with a new head ``ReLU -> Dense(N -> k)`` the sub-model is fine-tuned a few epochs on
  the training samples of those classes, keeping the epoch that is best on the validation split.
  Without fine-tuning the mixed module's logits of the k classes are used directly.

Where the work runs: frequencies come from one jitted scan; the threshold rules (:func:`lowered_thresholds`,
:func:`module_kernels`, :func:`complete_masks`) run on the host over small per-layer tables (NumPy).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxmod import compose as compose_lib
from jaxmod import train
from jaxmod.activations import _stack_batches, class_activation_counts, forward
from jaxmod.data import Dataset, check_every_class_present, check_labels
from jaxmod.losses import LossFn, cross_entropy_loss, mwt_loss, unit_values
from jaxmod.models import can_gate
from jaxmod.modules import Decomposition, ModuleSet, check_class_list, module_set
from jaxmod.reuse import subtask_samples
from jaxmod.taps import INDEX_MAPS, gate_group, is_gate_name
from jaxmod.topology import SlicedModel, Topology, model_label, module_topology, residual_split_topology, slice_model

GENERATOR_SUFFIX = "_generator"


# ---------------------------------------------------------------------------------------------
# The model with and without its generators.


def with_generators(model: nn.Module, on: bool = True) -> nn.Module:
    """The same zoo model with MwT's mask generators on (or off); ``ValueError`` if it has none."""
    if not can_gate(model):
        raise ValueError(f"{model_label(model)} has no conv layer MwT can mask (no mask_generators option)")
    return model.clone(mask_generators=on)


@functools.lru_cache(maxsize=64)
def gate_names(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[str, ...]:
    """The flat names (``.../mask@group``) of the generator masks, in forward order.

    ``ValueError`` when the model has no conv layer to mask (e.g. an MLP, or one conv only).
    """
    gen = with_generators(model)
    x = jnp.zeros((1, *input_shape), jnp.float32)
    variables = jax.eval_shape(lambda: gen.init(jax.random.key(0), x))
    _, acts = jax.eval_shape(lambda v: forward(gen, v, x), variables)
    names = tuple(n for n in acts if is_gate_name(n))
    if not names:
        raise ValueError(f"{model_label(model)} has no conv layer for MwT to mask (every conv but the first)")
    return names


def strip_generators(variables: Mapping[str, Any]) -> dict[str, Any]:
    """The variables without the generators' parameters: the plain model's variables."""
    out = {}
    for col, tree in variables.items():
        flat = traverse_util.flatten_dict(dict(tree))
        kept = {k: v for k, v in flat.items() if not any(p.endswith(GENERATOR_SUFFIX) for p in k)}
        out[col] = traverse_util.unflatten_dict(kept) if kept else {}
    return out


def has_generator_params(variables: Mapping[str, Any]) -> bool:
    flat = traverse_util.flatten_dict(dict(variables.get("params", {})))
    return any(any(p.endswith(GENERATOR_SUFFIX) for p in k) for k in flat)


def mwt_topology(model: nn.Module, input_shape: Sequence[int]) -> Topology:
    """The plain model's unit topology, with the gated kernel sets inside residual sums split off."""
    plain = with_generators(model, False)
    shape = tuple(int(d) for d in input_shape)
    return residual_split_topology(plain, shape, [gate_group(n) for n in gate_names(plain, shape)])


# ---------------------------------------------------------------------------------------------
# Modularizing.


def lowered_thresholds(frequency: np.ndarray, tau: float, step: float = 0.05) -> np.ndarray:
    """Per class (row), the threshold that first keeps a kernel: tau, tau - step, ... (> 0).

    As the reference code, a layer whose kernels all fall below tau for a class lowers the threshold
    by ``step`` until one kernel reaches it. Below the smallest positive step the class's most
    frequent kernels are kept; a class whose masks are zero on every sample raises ``ValueError``.
    """
    f = np.asarray(frequency, np.float64)
    best = f.max(axis=1)
    if (best <= 0).any():
        raise ValueError(f"classes {np.flatnonzero(best <= 0).tolist()} have no kernel with a non-zero mask in "
                         "this layer; nothing can be kept")
    steps = np.round(tau - step * np.arange(int(np.ceil(tau / step)) + 1), 12)
    steps = steps[steps > 0]
    reached = steps[None, :] <= best[:, None] + 1e-12  # a frequency is a count over n: compare with a tolerance
    first = np.argmax(reached, axis=1)
    return np.where(reached.any(axis=1), steps[first], best)


def module_kernels(frequency: np.ndarray, tau: float, step: float = 0.05) -> np.ndarray:
    """``bool[classes, kernels]``: kernels with frequency >= the class's (lowered) threshold."""
    f = np.asarray(frequency, np.float64)
    return f >= lowered_thresholds(f, tau, step)[:, None] - 1e-12


def complete_masks(topology: Topology, gated: Mapping[str, np.ndarray], num_classes: int) -> dict[str, np.ndarray]:
    """Unit masks over every group: gated groups as given, other groups kept whole, and each
    residual sum the union of what feeds it (its split groups and its identity shortcut's source)."""
    masks = {g: np.asarray(m, bool) for g, m in gated.items()}
    unknown = sorted(set(masks) - set(topology.sizes))
    if unknown:
        raise ValueError(f"masks for unknown groups {unknown}")
    feeds: dict[str, list[str]] = {}
    for im in topology.spec.index_maps:
        feeds.setdefault(im.target, []).append(im.source)
    for group in topology.spec.groups:  # forward order: a sum's sources are settled before it
        name = group.name
        if name in masks:
            continue
        sources = feeds.get(name, [])
        if sources and all(s in masks for s in sources) and not group.producers:
            masks[name] = np.logical_or.reduce([masks[s] for s in sources])
        else:
            masks[name] = np.ones((num_classes, topology.sizes[name]), bool)
    return masks


def gated_kernels(masks: Mapping[str, np.ndarray], groups: Sequence[str]) -> np.ndarray:
    """The module masks of the gated groups side by side: ``bool[classes, kernels]``."""
    return np.concatenate([np.asarray(masks[g], bool) for g in groups], axis=1)


@functools.lru_cache(maxsize=64)
def _sets_fn(model: nn.Module, names: tuple[str, ...]):
    @jax.jit
    def run(variables, xs):
        def one(xb):
            _, acts = forward(model, variables, xb)
            return jnp.concatenate([unit_values(acts[n]) != 0 for n in names], axis=-1)

        return jax.lax.map(one, xs)

    return run


def sample_kernel_sets(model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, names: Sequence[str],
                       batch_size: int = 512) -> np.ndarray:
    """``bool[samples, kernels]``: the kernels relevant to each sample (a non-zero generator mask, or
    for a model without generators a non-zero activation), over the flat activation ``names``."""
    x = np.asarray(x)
    xs, _, _ = _stack_batches(x, np.zeros(len(x), np.int32), batch_size)
    out = np.asarray(_sets_fn(model, tuple(names))(variables, jnp.asarray(xs)))
    return out.reshape(-1, out.shape[-1])[: len(x)]


# ---------------------------------------------------------------------------------------------
# Reuse: the mixed module, its new head and fine-tuning.


def mixed_module(modules: ModuleSet, variables: Mapping[str, Any], classes: Sequence[int]) -> SlicedModel:
    """The mixed module of ``classes`` that MwT's new head reads: the union of their kernels, physically
    sliced, generators dropped, with every class's logit (without fine-tuning, the mixed module is
    ``jaxmod.compose.compose(modules, variables, classes)``, which keeps only the chosen logits)."""
    plain_vars = strip_generators(variables)
    full = compose_lib.source_model(modules, plain_vars)
    classes = check_class_list(classes, modules.meta.classes)
    topology = module_topology(full, modules)
    return slice_model(full, topology, plain_vars, modules.union(classes), tuple(range(modules.meta.num_classes)))


FINETUNE_LR = 0.01  # learning rate of reuse fine-tuning (see finetune_subtask)


class HeadedModel(nn.Module):
    """A mixed module (all N logits) with MwT's new output layer: ``Dense(N -> k)(ReLU(logits))``."""

    base: nn.Module
    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return nn.Dense(self.num_classes, name="head")(nn.relu(self.base(x, train)))


@dataclasses.dataclass(frozen=True)
class FineTuned:
    """A fine-tuned sub-model: the module to call, its variables, the classes (output order), history."""

    model: HeadedModel
    variables: dict
    classes: tuple[int, ...]
    history: list
    best_epoch: int


def headed_variables(sliced: SlicedModel, num_outputs: int, seed: int) -> dict[str, Any]:
    """The mixed module's variables under ``base`` and a freshly initialised head."""
    n = sliced.model.num_classes
    head = nn.Dense(num_outputs).init(jax.random.key(seed), jnp.zeros((1, n)))["params"]
    # copies: the train step donates its state, which must not delete the mixed module's arrays
    base = jax.tree.map(jnp.array, dict(sliced.variables))
    out = {"params": {"base": base["params"], "head": head}}
    for col, tree in base.items():
        if col != "params":
            out[col] = {"base": tree}
    return out


def finetune_subtask(sliced: SlicedModel, data_: Dataset, classes: Sequence[int], *, epochs: int = 5,
                     batch_size: int = 128, learning_rate: float = FINETUNE_LR, seed: int = 0) -> FineTuned:
    """Fine-tune the whole sub-model (mixed module + new head) on the training samples of ``classes``.

    As the reference code: SGD with Nesterov momentum and a cosine schedule whose period is twice
    the epochs (``CosineAnnealingLR(T_max=2 * epochs)``). The learning rate defaults to
    :data:`FINETUNE_LR` (0.01), not the reference's 0.05: without batch norm (LeNet-5) the new head
    stacked on the trained logits diverges at 0.05 within a few steps and the ReLU before the head
    dies (measured: loss 2.5 -> 279 -> chance). The variables of the epoch with the best validation
    accuracy are kept (the reference picks it on the test set).
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    classes = tuple(int(c) for c in classes)
    if sliced.model.num_classes != data_.num_classes:
        raise ValueError("fine-tuning needs the mixed module with every class's logit (all_logits=True)")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    tr_idx, tr_y = subtask_samples(data_.train.y, classes)
    va_idx, va_y = subtask_samples(data_.val.y, classes)
    batch_size = min(batch_size, len(tr_idx))
    model = HeadedModel(sliced.model, len(classes))
    variables = headed_variables(sliced, len(classes), seed)
    constants = {k: v for k, v in variables.items() if k == INDEX_MAPS}
    # the cosine period is twice the epochs trained (the reference's CosineAnnealingLR(T_max=2 * epochs))
    config = train.TrainConfig(epochs=2 * epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    optimizer = train.make_optimizer(config, len(tr_idx) // batch_size)
    task = train.ModelTask(model, cross_entropy_loss(), optimizer, data_.train.x[:1], seed, constants=constants,
                           variables=variables, split_key=False)
    state, history = train.fit_task(task, data_.train.x[tr_idx], tr_y, config, val=(data_.val.x[va_idx], va_y),
                                    progress=False, stop_after=epochs, select="best_val",
                                    order_seed=lambda epoch: seed * 1000 + epoch)
    best = {**state.variables(), **constants}
    best_epoch = 1 + int(np.argmax([entry["val_accuracy"] for entry in history]))
    return FineTuned(model, best, classes, history, best_epoch)


def save_finetuned(directory: str, tuned: FineTuned, modules: ModuleSet, *, overwrite: bool = False) -> None:
    """Save a fine-tuned sub-model (mixed module + head) with what rebuilds it, through orbax."""
    from jaxmod.checkpoint import save_tree

    meta = modules.meta
    metadata = {"kind": "mwt_finetuned", "model_name": meta.model_name, "model_config": dict(meta.model_config),
                "num_classes": meta.num_classes, "input_shape": list(meta.input_shape),
                "classes": list(tuned.classes), "widths": dict(tuned.model.base.widths),
                "best_epoch": tuned.best_epoch, "history": tuned.history}
    save_tree(directory, tuned.variables, metadata, overwrite=overwrite)


def restore_finetuned(directory: str) -> FineTuned:
    """A sub-model saved by :func:`save_finetuned`, rebuilt and ready to ``apply``."""
    from jaxmod.checkpoint import restore_tree
    from jaxmod.models import create_model
    from jaxmod.modules import as_hashable
    from jaxmod.taps import freeze_widths

    variables, meta = restore_tree(directory)
    if meta.get("kind") != "mwt_finetuned":
        raise ValueError(f"{directory} holds no MwT fine-tuned sub-model (kind {meta.get('kind')!r})")
    base = create_model(meta["model_name"], int(meta["num_classes"]), **as_hashable(dict(meta["model_config"])))
    base = base.clone(widths=freeze_widths(meta["widths"]))
    classes = tuple(int(c) for c in meta["classes"])
    return FineTuned(HeadedModel(base, len(classes)), variables, classes, list(meta["history"]),
                     int(meta["best_epoch"]))


# ---------------------------------------------------------------------------------------------
# The approach.


@dataclasses.dataclass(frozen=True)
class MwT:
    """MwT with the paper's defaults: alpha 0.5 (cohesion), beta 1.5 (coupling), tau 0.9.

    ``averaging`` picks the loss averaging (``"class"``: Eq. 4-5; ``"pair"``: the reference code),
    ``tau_step`` the threshold lowering, ``finetune_epochs`` and ``finetune_lr`` the reuse fine-tuning
    (paper: 5 epochs; the learning rate, see :func:`finetune_subtask`).
    """

    alpha: float = 0.5
    beta: float = 1.5
    tau: float = 0.9
    tau_step: float = 0.05
    averaging: str = "class"
    finetune_epochs: int = 5
    finetune_lr: float = FINETUNE_LR
    batch_size: int = 512
    name: str = dataclasses.field(default="mwt", init=False)

    def __post_init__(self) -> None:
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if not 0 < self.tau_step <= self.tau:
            raise ValueError(f"tau_step must be in (0, tau], got {self.tau_step}")
        for field in ("alpha", "beta"):
            if not getattr(self, field) >= 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}")
        if self.averaging not in ("class", "pair"):
            raise ValueError(f"averaging must be 'class' or 'pair', got {self.averaging!r}")
        if not (isinstance(self.finetune_epochs, int) and self.finetune_epochs >= 0):
            raise ValueError(f"finetune_epochs must be an integer >= 0, got {self.finetune_epochs!r}")
        if not self.finetune_lr > 0:
            raise ValueError(f"finetune_lr must be > 0, got {self.finetune_lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def training_loss(self) -> LossFn:
        return mwt_loss(self.alpha, self.beta, self.averaging)

    def training_model(self, model: nn.Module) -> nn.Module:
        """The model to train: ``model`` with its mask generators (``ValueError`` if it has none)."""
        return with_generators(model)

    def training_config(self) -> dict[str, Any]:
        """The settings that change the trained model (a resumed training run must share them)."""
        return {"alpha": self.alpha, "beta": self.beta, "averaging": self.averaging}

    def decompose(self, model: nn.Module, variables: Mapping[str, Any], x: np.ndarray, y: np.ndarray,
                  num_classes: int) -> Decomposition:
        """Per-class kernel masks from how often each generator mask is non-zero on the class's samples."""
        if num_classes != model.num_classes:
            raise ValueError(f"num_classes is {num_classes} but the model has {model.num_classes} classes")
        x, y = np.asarray(x), np.asarray(y)
        shape = tuple(x.shape[1:])
        names = gate_names(with_generators(model, False), shape)
        if not has_generator_params(variables):
            raise ValueError("the variables hold no mask-generator parameters: decompose a model trained with MwT")
        check_labels(y, num_classes)
        check_every_class_present(y, num_classes, "samples to decompose from")
        gen = with_generators(model)
        counts, totals = class_activation_counts(gen, variables, x, y, num_classes, self.batch_size)
        totals = np.asarray(totals)
        frequency = {gate_group(n): np.asarray(counts[n]) / totals[:, None] for n in names}
        gated = {g: module_kernels(f, self.tau, self.tau_step) for g, f in frequency.items()}
        masks = complete_masks(mwt_topology(model, shape), gated, num_classes)
        # the modules run on the plain model (generators dropped), so that is the model they describe
        modules = module_set(self, with_generators(model, False), strip_generators(variables), x, units=masks)
        return Decomposition(modules, statistics={"kernel_frequency": frequency, "gated_groups": tuple(frequency)})

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}


def kernel_metrics(model: nn.Module, variables: Mapping[str, Any], masks: Mapping[str, np.ndarray], x: np.ndarray,
                   y: np.ndarray, *, generators: bool = True, batch_size: int = 512) -> dict[str, Any]:
    """KRR, cohesion and coupling (Eq. 1-3) of unit modules over the model's MwT-gated kernels.

    With ``generators`` a sample's kernels are those whose generator mask is non-zero (MwT); without,
    those whose activation is non-zero anywhere (how the MwT paper reads a standard model, and how we
    read MODA's modules), over the same conv groups.
    """
    from jaxmod.metrics import kernel_cohesion, kernel_coupling, kernel_retention_rate

    shape = tuple(np.asarray(x).shape[1:])
    names = gate_names(with_generators(model, False), shape)
    groups = [gate_group(n) for n in names]
    if generators:
        src_model, read = with_generators(model), list(names)
    else:
        src_model, read = with_generators(model, False), groups
        missing = [g for g in groups if g not in masks]
        if missing:
            raise ValueError(f"groups {missing} are not tapped by {model_label(model)}; read them with generators")
    kernels = gated_kernels(masks, groups)
    sets = sample_kernel_sets(src_model, variables, x, read, batch_size)
    cohesion = kernel_cohesion(sets, y, kernels)
    return {"krr": kernel_retention_rate(kernels), "cohesion": float(np.mean(cohesion)),
            "coupling": kernel_coupling(kernels), "cohesion_per_module": cohesion.tolist(),
            "kernels": int(kernels.shape[1]), "gated_groups": groups}


__all__ = ["FineTuned", "HeadedModel", "MwT", "complete_masks", "finetune_subtask", "gate_names",
           "gated_kernels", "headed_variables", "kernel_metrics", "lowered_thresholds", "mixed_module",
           "module_kernels", "mwt_topology", "restore_finetuned", "sample_kernel_sets", "save_finetuned",
           "strip_generators", "with_generators"]
