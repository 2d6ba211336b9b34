"""What the experiments share: initialisation settings, forget-gate bias, dtype, a one-layer LM."""

from __future__ import annotations

import contextlib

import keras
import numpy as np

from keras_rnnlm.models import RNNLanguageModel

#: Initialisation settings compared by ``gradient_ratio_table`` and ``long_range_accuracy``:
#: ``recurrent_initializer`` of ``W_h`` and the LSTM forget-gate bias ``b_f``.
SETTINGS = {
    "orthogonal, b_f=1": {"recurrent_initializer": "orthogonal", "forget_bias": 1.0},
    "orthogonal, b_f=3": {"recurrent_initializer": "orthogonal", "forget_bias": 3.0},
    "uniform(0.1), b_f=1": {"recurrent_initializer": "uniform_0.1", "forget_bias": 1.0},
}


def initializer(name: str, seed: int) -> keras.initializers.Initializer:
    """The seeded initializer called ``name``: ``"uniform_0.1"`` (``U(-0.1, 0.1)``),
    ``"orthogonal"`` or any Keras initializer class name taking a ``seed``."""
    if name == "uniform_0.1":
        return keras.initializers.RandomUniform(-0.1, 0.1, seed=seed)
    if name == "orthogonal":
        return keras.initializers.Orthogonal(seed=seed)
    return keras.initializers.get({"class_name": name, "config": {"seed": seed}})


def set_forget_bias(cell, value: float) -> None:
    """Set an LSTM cell's forget-gate bias block (Keras order ``i, f, c, o``) to ``value``."""
    bias = np.array(cell.bias.numpy())
    bias[cell.units : 2 * cell.units] = value
    cell.bias.assign(bias)


@contextlib.contextmanager
def floatx(dtype: str | None):
    """Temporarily set ``keras.config.floatx()`` and the global dtype policy (None: leave
    them); both are restored on exit. Layers take their dtype from the policy, which another
    piece of code may have pinned, so setting floatx alone is not enough."""
    previous, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    if dtype is not None:
        keras.config.set_floatx(dtype)
        keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous)
        keras.config.set_dtype_policy(previous_policy)


def single_layer_lm(
    cell: str,
    vocabulary_size: int,
    units: int,
    embedding_dim: int,
    seed: int,
    recurrent_initializer: str = "orthogonal",
    forget_bias: float = 1.0,
    dtype: str | None = None,
) -> RNNLanguageModel:
    """A built one-layer ``RNNLanguageModel`` seeded with ``seed``, whose ``W_h`` starts from
    ``initializer(recurrent_initializer)`` and (LSTM) whose forget-gate bias is
    ``forget_bias``, computed in ``dtype`` (None: the current floatx)."""
    keras.utils.set_random_seed(seed)
    kwargs = {"recurrent_initializer": initializer(recurrent_initializer, seed)}
    with floatx(dtype):
        model = RNNLanguageModel(
            vocabulary_size,
            cell=cell,
            num_layers=1,
            units=units,
            embedding_dim=embedding_dim,
            cell_kwargs=kwargs,
        )
        model(np.ones((1, 2), "int32"))
    if cell == "lstm":
        set_forget_bias(model.rnn.rnn_layers[0].cell, forget_bias)
    return model


def copy_with_weights(base: RNNLanguageModel, sample_inputs, weights) -> RNNLanguageModel:
    """A new model of ``base``'s config, built on ``sample_inputs``, set to ``weights``."""
    model = RNNLanguageModel.from_config(base.get_config())
    model(sample_inputs)
    model.set_weights(weights)
    return model
