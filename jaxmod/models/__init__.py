"""The model zoo: the papers' classifiers as plain Flax linen modules, run through :mod:`jaxmod.adapter`.

A zoo model is written as any user would write it (it only sows its hidden activations, which names its
unit groups); :func:`create_model` returns it adapted (:class:`jaxmod.adapter.Adapted`), so its topology
is derived from the traced program and its sliced form is the same program on smaller variables. Called
as ``model.apply(variables, x, train=...)`` on NHWC images, or on sequences for the recurrent models (whose
``lax.scan`` the derivation follows, and inside which the adapter masks and slices units).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmod.adapter import Adapted, linen_source
from jaxmod.checks import check_finite, check_finite_tree
from jaxmod.models.dense import MLP
from jaxmod.models.lenet import LeNet5
from jaxmod.models.mobilenet import MobileNet
from jaxmod.models.recurrent import RecurrentClassifier
from jaxmod.models.resnet import ResNet
from jaxmod.models.vgg import VGG, VGG16_STAGES, VGG_NARROW_STAGES
from jaxmod.taps import ACTIVATIONS, INDEX_MAPS, UNIT_MASKS
from jaxmod.topology import model_label

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "fc1": functools.partial(MLP, num_hidden=1),
    "fc2": functools.partial(MLP, num_hidden=2),
    "fc3": functools.partial(MLP, num_hidden=3),
    "fc4": functools.partial(MLP, num_hidden=4),
    "lenet5": LeNet5,
    "vgg16": functools.partial(VGG, stages=VGG16_STAGES, classifier=(512, 512), dropout=0.5),
    "vgg_narrow": functools.partial(VGG, stages=VGG_NARROW_STAGES, classifier=(128,), dropout=0.0),
    "resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), stage_widths=(64, 128, 256, 512), stem_width=64),
    "resnet20": functools.partial(ResNet, stage_sizes=(3, 3, 3), stage_widths=(16, 32, 64), stem_width=16),
    "resnet32": functools.partial(ResNet, stage_sizes=(5, 5, 5), stage_widths=(16, 32, 64), stem_width=16),
    "resnet56": functools.partial(ResNet, stage_sizes=(9, 9, 9), stage_widths=(16, 32, 64), stem_width=16),
    "mobilenet": MobileNet,
    "rnn_vanilla": functools.partial(RecurrentClassifier, cell="vanilla"),
    "rnn_lstm": functools.partial(RecurrentClassifier, cell="lstm"),
    "rnn_gru": functools.partial(RecurrentClassifier, cell="gru"),
}


# the zoo's models that MwT's mask generators apply to (and whose configuration records the option)
_GATED = (LeNet5, VGG, ResNet, MobileNet)


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Make ``factory(num_classes=..., **config)`` available as ``create_model(name, ...)``."""
    _REGISTRY[name] = factory


def zoo_model(module: nn.Module, *, widths: tuple[tuple[str, int], ...] = (), mask_generators: bool = False) -> Adapted:
    """A plain linen classifier as a jaxmod model, initialised and dropped out with the caller's keys exactly as
    the module itself is (so its weights are the module's own ``init``'s)."""
    return Adapted(linen_source(module), num_classes=int(module.num_classes), widths=tuple(widths),
                   mask_generators=bool(mask_generators), own_keys=True)


def can_gate(model: Any) -> bool:
    """Whether MwT's mask generators may be switched on: a zoo CNN or a user's model (whose gates the derivation
    finds, if any), not a zoo MLP or recurrent model."""
    if model_name(model) is not None and isinstance(model, Adapted):
        return isinstance(zoo_module(model), _GATED)
    return isinstance(model, Adapted) or any(f.name == "mask_generators" for f in dataclasses.fields(model))


def zoo_module(model: Any) -> nn.Module:
    """The plain module behind a zoo model (the model itself for a tapped one)."""
    return model.source.module if isinstance(model, Adapted) and model.source.module is not None else model


def available_models() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def create_model(name: str, num_classes: int, **config: Any) -> nn.Module:
    """Build a zoo model by name; ``ValueError`` for an unknown name or a bad configuration."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())} (a model of your own: "
                         "'package.module:ClassName' where an experiment program takes a model name)")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    adapted = {k: config.pop(k) for k in ("widths", "mask_generators") if k in config}
    try:
        module = _REGISTRY[name](num_classes=num_classes, **config)
    except TypeError as err:
        raise ValueError(f"bad configuration {config} for model {name!r}: {err}") from err
    if adapted.get("mask_generators") and not isinstance(module, _GATED):
        raise ValueError(f"{type(module).__name__} has no conv layer MwT can mask (no mask_generators option)")
    return zoo_model(module, **adapted)


def model_name(model: nn.Module) -> str | None:
    """The zoo name that rebuilds ``model`` with ``create_model(name, num_classes, **model_config(model))``:
    the first registered factory of the model's class whose fixed settings the model has (any of that class
    rebuilds it, since the configuration sets every field); ``None`` for a model the zoo does not build."""
    fallback = None
    model = zoo_module(model)
    for name, factory in _REGISTRY.items():
        cls = factory.func if isinstance(factory, functools.partial) else factory
        if type(model) is not cls:
            continue
        keywords = factory.keywords if isinstance(factory, functools.partial) else {}
        if all(getattr(model, k, None) == v for k, v in keywords.items()):
            return name
        fallback = fallback or name
    return fallback


def model_config(model: nn.Module) -> dict[str, Any]:
    """The model's configuration fields (JSON-able), without its sliced widths and class count; an adapted
    user model (:mod:`jaxmod.adapt`) describes itself (its class, input and derived topology's digest)."""
    module = zoo_module(model)
    if model_name(model) is None and hasattr(model, "jaxmod_config"):
        return model.jaxmod_config()
    skip = {"parent", "name", "widths", "num_classes"}
    config = {f.name: getattr(module, f.name) for f in dataclasses.fields(module) if f.name not in skip}
    if isinstance(module, _GATED):
        config["mask_generators"] = bool(getattr(model, "mask_generators", False))
    return config


def check_input_shape(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """``ValueError`` naming the problem when ``model`` cannot take inputs of ``input_shape``."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input shape must be (height, width, channels), got {input_shape}")
    try:
        out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, *shape)))[0])
    except Exception as err:  # noqa: BLE001 - any failure to trace means the shape is not taken
        raise ValueError(f"{model_label(model)} does not take inputs of shape {shape}: {err}") from err
    if out.shape != (1, model.num_classes):
        raise ValueError(f"{model_label(model)} maps inputs of shape {shape} to {out.shape}, not logits")


def check_inputs(model: nn.Module, variables: Any, x: Any) -> None:
    """``ValueError`` naming the problem when the batch ``x`` does not fit ``model`` and ``variables``.

    Unlike :func:`check_input_shape` this also catches inputs that the trained weights do not take
    (e.g. 32x32 images for an MLP trained on 28x28), by tracing one sample abstractly.
    """
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) < 2 or shape[0] == 0:
        raise ValueError(f"expected a non-empty batch of samples, got an array of shape {shape}")
    check_finite(x, "the input samples")
    check_finite_tree(variables, "the variables")
    dtype = getattr(x, "dtype", np.float32)
    sample = jax.ShapeDtypeStruct((1, *shape[1:]), dtype if np.issubdtype(dtype, np.integer) else jnp.float32)
    try:
        out = jax.eval_shape(lambda v, xb: model.apply(v, xb), variables, sample)
    except Exception as err:  # noqa: BLE001 - any failure to trace means the input does not fit
        raise ValueError(f"{model_label(model)} with these variables does not take samples of shape "
                         f"{shape[1:]}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    out_shape = getattr(out, "shape", ())
    if len(out_shape) < 2 or out_shape[0] != 1 or out_shape[-1] != model.num_classes:
        raise ValueError(f"{model_label(model)} maps samples of shape {shape[1:]} to {getattr(out, 'shape', out)}")


__all__ = [
    "ACTIVATIONS",
    "INDEX_MAPS",
    "UNIT_MASKS",
    "LeNet5",
    "MLP",
    "MobileNet",
    "RecurrentClassifier",
    "ResNet",
    "VGG",
    "available_models",
    "can_gate",
    "check_input_shape",
    "check_inputs",
    "create_model",
    "model_config",
    "model_name",
    "register_model",
    "zoo_model",
    "zoo_module",
]
