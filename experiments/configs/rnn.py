"""Imtiaz et al.'s decomposition of recurrent models, with the authors' settings per input-output shape:

    --config=experiments/configs/rnn.py                     # many_to_one (Fortunes), LSTM, 1 layer
    --config=experiments/configs/rnn.py:many_to_many        # Brown tags; also one_to_one, one_to_many, encoder_decoder

Models train with Adam at a constant learning rate (0.01), as the paper's Keras models.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from experiments.configs import default
from experiments.configs.options import approach_options

DATASETS = {"one_to_one": "bbc_news_bow", "one_to_many": "cmudict", "many_to_one": "fortunes",
            "many_to_many": "brown_tags", "encoder_decoder": "translation"}


def get_config(shape: str = "many_to_one") -> ml_collections.ConfigDict:
    shape = shape or "many_to_one"
    if shape not in DATASETS:
        raise ValueError(f"rnn config: shape must be one of {sorted(DATASETS)}, got {shape!r}")
    config = default.get_config()
    config.approach = "rnn"
    config.dataset = DATASETS[shape]
    config.model = "rnn_lstm"
    config.train.epochs = 3
    config.train.batch_size = 64
    config.train.learning_rate = 0.01
    config.train.optimizer = "adam"
    config.train.schedule = "constant"
    config.eval_batch_size = 256
    config.reuse.num_subtasks = 10  # pairs of labels, voted together
    config.rnn = ml_collections.ConfigDict()
    config.rnn.shape = shape
    config.rnn.layers = 1
    config.rnn.units = 32
    config.rnn.activation = "tanh"  # tanh | relu (the ReLU variant)
    config.rnn.max_input_len = config_dict.placeholder(int)
    config.rnn.max_output_len = config_dict.placeholder(int)
    config.rnn.vocab_size = config_dict.placeholder(int)
    config.rnn.padding = "masked"  # masked | scored (the authors' Keras protocol, many-output token datasets)
    translation = shape == "encoder_decoder"
    config.options = approach_options("rnn", channel=not translation, encoder=not translation,
                                      num_positive=1000 if translation else 500)
    return config
