"""Replacement: a weak model's answer for one class taken from a strong model's module for that class.

MODA (Ngo et al., RQ1 and Fig. 2): the weak model W and the strong model S are frozen; for each input, W's logits
with the target class's logit replaced by the one S's module for that class gives (the module composed alone: a
sliced sub-network with one logit). Because W and S may produce logits of different scales, a calibration
layer, Dense(n -> n) initialised N(0, 0.01), is trained a few epochs on W's training data and maps the replaced
logits to calibrated ones. The CNNSplitter-style baseline (Qi et al. 2022) substitutes the logit with no
calibration. Methods whose modules vote (Pan and Rajan, Imtiaz et al., supermasks) replace a module in the vote.

Only the calibration layer trains, so the weak and strong logits of the training data are computed once and the
calibration runs as one jitted ``lax.scan`` over epochs and batches of logits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmod.activations import predict_logits
from jaxmod.checks import check_finite
from jaxmod.compose import compose
from jaxmod.modules import ModuleSet
from jaxmod.reuse import cross_model_confidences

CALIBRATION_INIT_STD = 0.01  # MODA: the calibration layer's weights start from N(0, 0.01)


def check_replacement(weak_model: nn.Module, weak_variables: Mapping[str, Any], strong_modules: ModuleSet,
                      target: int, input_shape: tuple[int, ...]) -> int:
    """``ValueError`` before any work for a strong module set that cannot answer for the weak model's class."""
    if not isinstance(strong_modules, ModuleSet):
        raise TypeError(f"strong_modules must be a ModuleSet, got {type(strong_modules).__name__}")
    meta = strong_modules.meta
    num_classes = int(getattr(weak_model, "num_classes", -1))
    if meta.num_classes != num_classes:
        raise ValueError(f"the strong modules come from a model of {meta.num_classes} classes, the weak model has "
                         f"{num_classes}: a replacement needs the same classes")
    if tuple(meta.input_shape) != tuple(input_shape):
        raise ValueError(f"the strong modules read inputs of shape {tuple(meta.input_shape)}, the weak model's data "
                         f"has shape {tuple(input_shape)}")
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= int(target) < num_classes:
        raise ValueError(f"the target class must be one of the model's classes 0..{num_classes - 1}, got {target!r}")
    if int(target) not in meta.classes:
        raise ValueError(f"the strong module set has no module for class {int(target)} (it has {list(meta.classes)})")
    if "params" not in weak_variables:
        raise ValueError("the weak model's variables have no 'params'")
    return int(target)


def replaced_logits(weak_model: nn.Module, weak_variables: Mapping[str, Any], strong_modules: ModuleSet,
                    strong_variables: Mapping[str, Any], target: int, x: np.ndarray,
                    batch_size: int = 512) -> np.ndarray:
    """The weak model's logits ``[N, n]`` with column ``target`` from the strong model's module for ``target``
    (the module composed alone, merged and sliced: its single logit)."""
    x = np.asarray(x)
    target = check_replacement(weak_model, weak_variables, strong_modules, target, x.shape[1:])
    strong = compose(strong_modules, strong_variables, [target], how="merge")
    check_finite(x, "the input samples")
    weak = predict_logits(weak_model, weak_variables, x, batch_size)
    module_logit = predict_logits(strong.model, strong.variables, x, batch_size)[:, 0]
    out = np.array(weak, copy=True)
    out[:, target] = module_logit
    return out


def init_calibration(num_classes: int, seed: int = 0) -> dict[str, jax.Array]:
    """The calibration layer, Dense(n -> n): kernel N(0, 0.01), bias zero."""
    kernel = CALIBRATION_INIT_STD * jax.random.normal(jax.random.key(seed), (num_classes, num_classes), jnp.float32)
    return {"kernel": kernel, "bias": jnp.zeros((num_classes,), jnp.float32)}


def calibrate(params: Mapping[str, jax.Array], logits: jax.Array) -> jax.Array:
    """Calibrated logits: ``logits @ kernel + bias``."""
    return logits @ params["kernel"] + params["bias"]


def fit_calibration(logits: np.ndarray, labels: np.ndarray, *, epochs: int = 5, batch_size: int = 128,
                    learning_rate: float = 1e-2, seed: int = 0) -> dict[str, jax.Array]:
    """Train the calibration layer on replaced logits of the weak model's training data (cross-entropy, Adam),
    reshuffled every epoch; one jitted scan over all epochs and batches."""
    logits, labels = np.asarray(logits, np.float32), np.asarray(labels)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"the calibration needs training logits [N, n] with N >= 1, got shape {logits.shape}")
    if labels.shape != (len(logits),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"the calibration needs one integer label per sample, got shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be in 0..{logits.shape[1] - 1}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not np.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    check_finite(logits, "the training logits")
    batch_size = min(batch_size, len(logits))
    steps = len(logits) // batch_size
    optimizer = optax.adam(learning_rate)
    params = init_calibration(logits.shape[1], seed)
    return _fit(optimizer, params, jnp.asarray(logits), jnp.asarray(labels, jnp.int32), jax.random.key(seed + 1),
                epochs, steps, batch_size)


def _fit(optimizer: optax.GradientTransformation, params: dict, logits: jax.Array, labels: jax.Array, key: jax.Array,
         epochs: int, steps: int, batch_size: int) -> dict:
    @jax.jit
    def run(params, key):
        def loss(p, xb, yb):
            return optax.softmax_cross_entropy_with_integer_labels(calibrate(p, xb), yb).mean()

        def epoch(carry, epoch_key):
            order = jax.random.permutation(epoch_key, len(labels))[: steps * batch_size].reshape(steps, batch_size)

            def step(carry, index):
                p, state = carry
                grads = jax.grad(loss)(p, logits[index], labels[index])
                updates, state = optimizer.update(grads, state, p)
                return (optax.apply_updates(p, updates), state), None

            return jax.lax.scan(step, carry, order)[0], None

        carry, _ = jax.lax.scan(epoch, (params, optimizer.init(params)), jax.random.split(key, epochs))
        return carry[0]

    return run(params, key)


@dataclasses.dataclass(frozen=True)
class Replacement:
    """A weak model whose class ``target`` is answered by a strong module; ``calibration`` None is the
    substitution baseline. ``logits(x)`` gives the (calibrated) logits over all classes."""

    weak_model: nn.Module
    weak_variables: Mapping[str, Any]
    strong_modules: ModuleSet
    strong_variables: Mapping[str, Any]
    target: int
    calibration: Mapping[str, jax.Array] | None = None

    def logits(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        out = replaced_logits(self.weak_model, self.weak_variables, self.strong_modules, self.strong_variables,
                              self.target, x, batch_size)
        return out if self.calibration is None else np.asarray(calibrate(self.calibration, jnp.asarray(out)))

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> dict[str, float]:
        return replacement_accuracy(self.logits(x, batch_size), y, self.target)


def replace_class(weak_model: nn.Module, weak_variables: Mapping[str, Any], strong_modules: ModuleSet,
                  strong_variables: Mapping[str, Any], target: int, *, calibrate_on: tuple[np.ndarray, np.ndarray]
                  | None = None, epochs: int = 5, batch_size: int = 128, learning_rate: float = 1e-2,
                  seed: int = 0) -> Replacement:
    """Replace the weak model's class ``target`` by the strong model's module for it. With ``calibrate_on=(x, y)``
    (the weak model's training data) the MODA calibration layer is trained; without, the logit is substituted."""
    if calibrate_on is not None:
        x, y = (np.asarray(a) for a in calibrate_on)
        if len(x) == 0 or len(y) != len(x):
            raise ValueError(f"the calibration needs training samples and as many labels, got {len(x)} samples and "
                             f"{len(y)} labels")
        check_replacement(weak_model, weak_variables, strong_modules, target, x.shape[1:])
        logits = replaced_logits(weak_model, weak_variables, strong_modules, strong_variables, target, x)
        params = fit_calibration(logits, y, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                                 seed=seed)
        return Replacement(weak_model, weak_variables, strong_modules, strong_variables, int(target), params)
    check_replacement(weak_model, weak_variables, strong_modules, target, strong_modules.meta.input_shape)
    return Replacement(weak_model, weak_variables, strong_modules, strong_variables, int(target))


def replacement_accuracy(logits: np.ndarray, y: np.ndarray, target: int) -> dict[str, float]:
    """Overall accuracy, accuracy on the target class (TC) and on the other classes (non-TC)."""
    y = np.asarray(y)
    hits = np.argmax(np.asarray(logits), axis=-1) == y
    tc = y == target
    if not tc.any() or tc.all():
        raise ValueError(f"the evaluation samples need samples of class {target} and of other classes")
    return {"overall": float(hits.mean()), "target": float(hits[tc].mean()), "others": float(hits[~tc].mean())}


def replace_in_vote(weak_modules: ModuleSet, weak_variables: Mapping[str, Any], strong_modules: ModuleSet,
                    strong_variables: Mapping[str, Any], target: int, x: np.ndarray,
                    batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Voting methods: the weak modules vote with class ``target``'s module taken from the strong set. Returns the
    confidences ``[M, N, ...]`` and each row's class, ready for :mod:`jaxmod.voting`."""
    if not (isinstance(weak_modules, ModuleSet) and isinstance(strong_modules, ModuleSet)):
        raise TypeError("replace_in_vote takes two ModuleSets")
    if weak_modules.meta.num_classes != strong_modules.meta.num_classes:
        raise ValueError(f"the strong modules come from a model of {strong_modules.meta.num_classes} classes, the "
                         f"weak ones from {weak_modules.meta.num_classes}")
    if target not in weak_modules.meta.classes or target not in strong_modules.meta.classes:
        raise ValueError(f"class {target!r} must have a module in both sets")
    kept = [c for c in weak_modules.meta.classes if c != target]
    sets = [weak_modules.select(kept), strong_modules.select([target])] if kept else [strong_modules.select([target])]
    variables = [weak_variables, strong_variables] if kept else [strong_variables]
    return cross_model_confidences(sets, variables, x, batch_size=batch_size)


__all__ = ["Replacement", "calibrate", "check_replacement", "fit_calibration", "init_calibration",
           "replace_class", "replace_in_vote", "replaced_logits", "replacement_accuracy"]
