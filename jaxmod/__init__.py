"""jaxmod: decompose trained classifiers into per-class modules and recompose them, in JAX.

The short way, for any Flax model::

    import jaxmod
    net = jaxmod.adapt(model, variables, x_train[:1])         # linen (+ variables) or an nnx module
    modules = jaxmod.decompose("moda", net, x_train, y_train)  # one module per class
    small = jaxmod.recompose(net, modules, classes=[3, 5])    # small(x) -> logits of classes 3 and 5

(``recompose``, not ``compose``: ``jaxmod.compose`` is the composition module these functions use.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # imported on first use: `import jaxmod` stays light
    from jaxmod.adapter import Net
    from jaxmod.modules import ModuleSet


def adapt(model: Any, variables: Any = None, sample_x: Any = None) -> Net:
    """A Flax model (linen with its variables, or nnx) as a jaxmod :class:`~jaxmod.adapter.Net`; see
    :func:`jaxmod.adapter.adapt`."""
    from jaxmod.adapter import adapt as _adapt

    return _adapt(model, variables, sample_x)


def decompose(approach: str, net: Net, x: Any, y: Any, **options: Any) -> ModuleSet:
    """One module per class of ``net`` by ``approach`` (``"moda"``, ``"concern"``, ``"supermask"``, ...) from
    the training samples ``x``, ``y``; ``options`` configure the approach (e.g. ``tau=0.8``; the random control
    takes ``reference=`` the modules whose sizes it draws)."""
    import numpy as np

    from jaxmod.adapter import Net as _Net
    from jaxmod.approaches import create_approach

    if not isinstance(net, _Net):
        raise TypeError(f"decompose takes a jaxmod.adapt(...) Net, got {type(net).__name__}")
    from jaxmod.modules import ModuleSet as _ModuleSet

    extra = {}
    if isinstance(options.get("reference"), _ModuleSet):  # the random control: modules the size of these
        extra["reference"] = options["reference"]
        options["reference"] = extra["reference"].meta.approach
    method = create_approach(approach, **options)
    return method.decompose(net.model, net.variables, np.asarray(x), np.asarray(y), net.model.num_classes,
                            **extra).modules


def recompose(net: Net, modules: ModuleSet, classes: Sequence[int], how: str | None = None) -> Any:
    """A model for ``classes`` from ``modules`` of ``net``: physically smaller when the modules merge (unit
    masks); otherwise a vote of the modules (node masks: on the network without the units none of them uses).
    ``small(x)`` gives the classes' scores in order."""
    from jaxmod.adapter import Net as _Net
    from jaxmod.compose import compose as _compose

    if not isinstance(net, _Net):
        raise TypeError(f"recompose takes a jaxmod.adapt(...) Net, got {type(net).__name__}")
    return _compose(modules, net.variables, classes, how=how, model=net.model)


__all__ = ["adapt", "decompose", "recompose"]
