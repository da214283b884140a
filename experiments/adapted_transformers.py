"""Users' Transformers, written without jaxmod, trained with MODA; writes JSON.

    python -m experiments.adapted_transformers --model=vit --workdir=runs/adapted/vit \
        --out=experiments/results/adapted_transformers/vit          # Fashion-MNIST
    python -m experiments.adapted_transformers --model=text --epochs=15 --train_limit=0 \
        --workdir=runs/adapted/text --out=experiments/results/adapted_transformers/text   # BBC News topics

The models are ``TinyViT`` (patch embedding, learned positions, two pre-norm blocks of 4-head attention and
a GELU MLP, mean pooling, dense head) and ``TinyTextTransformer`` (word embedding, the same block, mean
pooling) from tests/helpers/user_models.py, adapted with ``jaxmod.adapt``: the units are the MLP hidden
neurons (the residual stream, attention and embeddings are kept whole, as derived from the graph).
Standard training (cross-entropy) and MODA training share the optimiser (Adam, cosine schedule), data
and seed; modules come from MODA's rule on the training samples, its threshold tau chosen among
``--taus`` by the merged model's validation accuracy (never the test set), and all of them are composed back
by merging. The MLP weight fraction of a module counts the MLP kernels and biases its kept hidden units touch.
"""

import json
import os

import jax
import numpy as np
from absl import app, flags

import jaxmod
from experiments.common import write_text
from jaxmod import data, train
from jaxmod.approaches import create_approach
from jaxmod.data.text import load_sequence_dataset
from jaxmod.losses import cross_entropy_loss
from jaxmod.topology import parameter_masks, resolve_topology
from tests.helpers import user_models

flags.DEFINE_enum("model", "vit", ["vit", "text"], "vit: TinyViT on Fashion-MNIST; text: TinyTextTransformer "
                  "on BBC News topics.")
flags.DEFINE_string("workdir", "runs/adapted/vit", "Checkpoints (resumed when rerun).")
flags.DEFINE_string("out", "experiments/results/adapted_transformers/vit", "Where results.json goes.")
flags.DEFINE_integer("epochs", 6, "Training epochs.")
flags.DEFINE_integer("train_limit", 12000, "Training samples (0: all).")
flags.DEFINE_float("learning_rate", 2e-3, "Adam learning rate.")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_list("taus", ["0.9", "0.8", "0.7", "0.6", "0.5"], "MODA thresholds to choose from on validation.")
FLAGS = flags.FLAGS


def mlp_fraction(net, modules) -> list[float]:
    """Per module: the fraction of the MLP weights (the leaves the hidden groups index) it keeps."""
    topology = resolve_topology(net.model, modules.meta.input_shape)
    leaves = {la.path for g in topology.spec.groups for la in g.producers + g.consumers}
    out = []
    for c in range(modules.meta.num_classes):
        keep = {g: np.asarray(m[c]) for g, m in modules.units.items()}
        masks = parameter_masks(topology, keep, np.ones(topology.num_classes, bool))
        flat = jax.tree_util.tree_leaves_with_path(masks)
        kept = sum(int(np.sum(m)) for p, m in flat if tuple(k.key for k in p) in leaves)
        total = sum(int(np.size(m)) for p, m in flat if tuple(k.key for k in p) in leaves)
        out.append(kept / total)
    return out


def main(argv):
    del argv
    if FLAGS.model == "vit":
        dataset = data.load_dataset("fashion_mnist", train_limit=FLAGS.train_limit or None, seed=FLAGS.seed)
        model, dtype = user_models.TinyViT(), np.float32
    else:
        dataset = load_sequence_dataset("bbc_news", max_input_len=128, vocab_size=5000,
                                        limit=FLAGS.train_limit or None, seed=FLAGS.seed)
        model = user_models.TinyTextTransformer(num_classes=dataset.num_classes, vocab_size=len(dataset.input_vocab),
                                                max_len=128)
        dtype = np.int32
    variables = user_models.init_linen(model, (1, *dataset.train.x.shape[1:]), dtype, seed=FLAGS.seed)
    net = jaxmod.adapt(model, variables, dataset.train.x[:1])
    config = train.TrainConfig(epochs=FLAGS.epochs, optimizer="adam", learning_rate=FLAGS.learning_rate,
                               seed=FLAGS.seed, batch_size=128)
    moda = create_approach("moda")
    results = {"model": f"{type(model).__name__} (tests/helpers/user_models.py)", "dataset": dataset.name,
               "train_samples": int(len(dataset.train.x)), "epochs": FLAGS.epochs,
               "groups": {g: int(n) for g, n in net.graph.sizes.items()},
               "kept_whole": [w.name for w in net.graph.whole]}
    states = {}
    for name, loss in (("standard", cross_entropy_loss()), ("moda", moda.training_loss())):
        state, history = train.fit(net.model, dataset, loss, config, os.path.join(FLAGS.workdir, name),
                                   progress=True, description=name, run_info={"loss": name})
        states[name] = state.variables()
        results[f"{name}_test_accuracy"] = train.evaluate(net.model, states[name], dataset.test.x,
                                                          dataset.test.y)["top1"]
    trained = jaxmod.adapter.Net(net.model, states["moda"])
    everything = list(range(dataset.num_classes))
    val_by_tau = {}
    for tau in FLAGS.taus:  # MODA's threshold chosen on validation: the merged model's accuracy there
        candidate = jaxmod.decompose("moda", trained, dataset.train.x, dataset.train.y, tau=float(tau))
        val_by_tau[tau] = float(np.mean(jaxmod.recompose(trained, candidate, everything).predict(dataset.val.x)
                                        == dataset.val.y))
    tau = max(FLAGS.taus, key=lambda t: val_by_tau[t])  # the first (largest) tau on ties
    results["tau_validation_accuracy"] = val_by_tau
    results["tau"] = float(tau)
    modules = jaxmod.decompose("moda", trained, dataset.train.x, dataset.train.y, tau=float(tau))
    merged = jaxmod.recompose(trained, modules, everything)
    results["composed_all_test_accuracy"] = float(np.mean(merged.predict(dataset.test.x) == dataset.test.y))
    fractions = mlp_fraction(trained, modules)
    results["module_mlp_weight_fraction"] = fractions
    results["mean_module_mlp_weight_fraction"] = float(np.mean(fractions))
    results["modular_minus_standard_points"] = 100 * (results["moda_test_accuracy"]
                                                      - results["standard_test_accuracy"])
    results["composed_minus_modular_points"] = 100 * (results["composed_all_test_accuracy"]
                                                      - results["moda_test_accuracy"])
    os.makedirs(FLAGS.out, exist_ok=True)
    write_text(os.path.join(FLAGS.out, "results.json"), json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "module_mlp_weight_fraction"}, indent=2))


if __name__ == "__main__":
    app.run(main)
