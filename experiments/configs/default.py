"""What every modularization run shares: model, data, training budget, reuse sub-tasks, measurement."""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.approach = "moda"
    config.model = "lenet5"
    config.model_config = "{}"  # JSON object of zoo-model settings, e.g. '{"use_bn": false}'
    config.dataset = "mnist"
    config.data_source = "auto"  # auto | offline | tfds
    config.data_dir = config_dict.placeholder(str)  # a prepared TFDS data_dir (CIFAR-10, SVHN, ...)
    config.train_limit = config_dict.placeholder(int)  # class-balanced subsets
    config.test_limit = config_dict.placeholder(int)
    config.val_fraction = 0.1
    config.seed = 0

    # the standard model (and the modular one, for approaches that train one) train with the same budget
    config.train = ml_collections.ConfigDict()
    config.train.epochs = 4
    config.train.batch_size = 128
    config.train.learning_rate = 0.05
    config.train.optimizer = "sgd"  # sgd (Nesterov, the papers') | adam
    config.train.schedule = "cosine"  # cosine | constant
    config.train.augment = "auto"  # auto: the dataset's (crop_flip for CIFAR/SVHN as the papers, none for digits)
    config.train.compute_dtype = "float32"  # float32 | bfloat16 (parameters and optimizer state stay float32)
    config.mesh = ""  # data parallelism, e.g. "data=4" or "data=2,module=2"; "": every local device on "data"

    # reuse: random sub-tasks of the dataset's classes, composed without retraining
    config.reuse = ml_collections.ConfigDict()
    config.reuse.num_subtasks = 30
    config.reuse.min_classes = 2
    config.reuse.max_classes = 9
    config.reuse.sizes = ""  # e.g. "2,5": num_subtasks sub-tasks of each listed size instead of min..max

    # the side-by-side benchmark (experiments/benchmark.py) sets these: one standard model shared by the runs of
    # one (model, dataset, seed) cell, and the random control drawn at each method's own sizes in the same run
    config.shared_standard_dir = config_dict.placeholder(str)
    config.random_control = False

    config.eval_batch_size = 512
    config.timing_repeats = 60  # train steps timed per loss, in 5 interleaved rounds (0: no step timing)
    config.latency_repeats = 20  # forward passes of the 2-class composed and the full model timed (0: none)
    config.progress = True

    config.options = ml_collections.ConfigDict()  # the approach's own settings (each approach's config)
    config.extras = ml_collections.ConfigDict()  # what the pipeline adds for the approach (each approach's config)
    return config
