"""The side-by-side benchmark's torch models and MODA terms equal jaxmod's (skipped without torch)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmarks import vs_pytorch as vp
from jaxmod.losses import moda_terms
from jaxmod.models import create_model

torch = pytest.importorskip("torch")

SMALL = {
    "lenet5": ({}, (28, 28, 1)),
    "vgg16": ({"stages": ((4,), (6,), (6, 6)), "classifier": (8, 8)}, (16, 16, 3)),
    "resnet18": ({"stage_sizes": (1, 1), "stage_widths": (4, 6), "stem_width": 4}, (8, 8, 3)),
    "mobilenet": ({"stem_width": 4, "blocks": ((6, 1), (8, 2), (8, 2))}, (8, 8, 3)),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_torch_model_has_the_same_function(name):
    config, shape = SMALL[name]
    model = create_model(name, 10, **config)
    x = np.random.default_rng(0).standard_normal((3, *shape), dtype=np.float32)
    variables = model.init(jax.random.key(0), jnp.asarray(x))
    tmodel = vp.torch_model(name, model, shape)
    vp.load_flax_variables(tmodel, variables)
    tmodel.eval()
    with torch.inference_mode():
        logits, acts = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(logits.numpy(), model.apply(variables, x), rtol=1e-4, atol=1e-4)
    _, state = model.apply(variables, x, mutable=["activations"])
    assert len(acts) == len(jax.tree.leaves(state["activations"]))


def test_torch_moda_terms_equal_jaxmod():
    rng = np.random.default_rng(0)
    acts = [np.maximum(rng.standard_normal((8, 3, 3, 5), dtype=np.float32), 0),
            np.maximum(rng.standard_normal((8, 7), dtype=np.float32), 0)]
    labels = np.array([0, 1, 0, 2, 1, 1, 3, 0])
    ours = moda_terms({"a": jnp.asarray(acts[0]), "b": jnp.asarray(acts[1])}, jnp.asarray(labels))
    theirs = vp.torch_moda_terms([torch.from_numpy(acts[0].transpose(0, 3, 1, 2).copy()), torch.from_numpy(acts[1])],
                                 torch.from_numpy(labels))
    for key, value in zip(("affinity", "dispersion", "compactness"), theirs, strict=True):
        np.testing.assert_allclose(float(value), float(ours[key]), rtol=1e-5)
