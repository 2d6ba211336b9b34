"""Long-range recall (``RecallTask``) at an equal parameter budget per cell."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_rnnlm.cells import get_cell
from keras_rnnlm.experiments.common import SETTINGS, initializer, set_forget_bias
from keras_rnnlm.layers import Recurrent
from keras_rnnlm.tasks import RecallTask
from keras_rnnlm.training import make_optimizer


def cell_parameters(cell: str, units: int, input_dim: int) -> int:
    """Number of weights of one cell (GRU with ``reset_after=True``)."""
    if cell == "simple_rnn":
        return units * (input_dim + units + 1)
    if cell == "gru":
        return 3 * units * (input_dim + units + 2)
    if cell == "lstm":
        return 4 * units * (input_dim + units + 1)
    raise ValueError(f"Unknown cell {cell!r}.")


def units_for_budget(cell: str, budget: int, input_dim: int) -> int:
    """The largest ``units`` whose cell has at most ``budget`` weights."""
    units = 1
    while cell_parameters(cell, units + 1, input_dim) <= budget:
        units += 1
    return units


def recall_classifier(
    task: RecallTask,
    cell: str,
    units: int,
    embedding_dim: int = 16,
    recurrent_initializer: str = "orthogonal",
    forget_bias: float = 1.0,
    seed: int = 0,
) -> keras.Model:
    """``Embedding -> Recurrent(cell) -> Dense(num_symbols)`` logits for ``RecallTask``."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((task.distance + 1,), dtype="int32")
    x = keras.layers.Embedding(task.vocabulary_size, embedding_dim)(inputs)
    rnn_cell = get_cell(cell, units, recurrent_initializer=initializer(recurrent_initializer, seed))
    x = Recurrent(rnn_cell)(x)
    outputs = keras.layers.Dense(task.num_symbols)(x)
    model = keras.Model(inputs, outputs)
    if cell == "lstm":
        set_forget_bias(rnn_cell, forget_bias)
    return model


def compile_recall_classifier(
    model: keras.Model,
    optimizer: str = "adam",
    learning_rate: float = 3e-3,
    clip_norm: float | None = 1.0,
) -> keras.Model:
    """Compile a ``recall_classifier`` as ``long_range_accuracy`` trains it: cross-entropy on
    logits, accuracy, XLA, and ``make_optimizer(optimizer, learning_rate, clip_norm)`` (exact
    global-norm clipping).

    Args:
        model: from ``recall_classifier``.
        optimizer: ``"adam"`` or ``"sgd"``.
        learning_rate, clip_norm: of the optimizer (``clip_norm=None``: no clipping).

    Returns:
        ``model``, compiled.

    Example:

    >>> model = compile_recall_classifier(recall_classifier(RecallTask(5), "gru", 8), "sgd", 0.5)
    """
    model.compile(
        optimizer=make_optimizer(optimizer, learning_rate, clip_norm, "global"),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=True,
    )
    return model


#: Training settings of ``long_range_accuracy``: initialisation (see ``SETTINGS``) + optimiser.
TRAINING_SETTINGS = {
    "adam, orthogonal, b_f=1": {
        "init": "orthogonal, b_f=1",
        "optimizer": "adam",
        "learning_rate": 3e-3,
    },
    "adam, orthogonal, b_f=3": {
        "init": "orthogonal, b_f=3",
        "optimizer": "adam",
        "learning_rate": 3e-3,
    },
    "adam, uniform(0.1), b_f=1": {
        "init": "uniform(0.1), b_f=1",
        "optimizer": "adam",
        "learning_rate": 3e-3,
    },
    "sgd, orthogonal, b_f=1": {
        "init": "orthogonal, b_f=1",
        "optimizer": "sgd",
        "learning_rate": 0.5,
    },
}


def long_range_accuracy(
    distances: Sequence[int] = (20, 50, 100),
    cells: Sequence[str] = ("simple_rnn", "gru", "lstm"),
    settings: dict | None = None,
    budget: int | None = None,
    embedding_dim: int = 16,
    lstm_units: int = 32,
    train_size: int = 2048,
    test_size: int = 1024,
    epochs: int = 6,
    batch_size: int = 32,
    clip_norm: float = 1.0,
    seed: int = 0,
    verbose: int = 0,
) -> list[dict]:
    """Test accuracy on ``RecallTask`` vs distance for each cell and training setting.

    All cells get (about) the same number of recurrent weights: ``budget`` (default: an LSTM
    with ``lstm_units``), matched by ``units_for_budget``. Training is ``model.fit`` on
    ``train_size`` fresh examples for ``epochs`` epochs with global clipping at ``clip_norm``;
    the test set is ``test_size`` other examples.

    Args:
        distances: the ``d`` of ``RecallTask``.
        cells: cell types.
        settings: ``{name: {"init": key of SETTINGS, "optimizer": "adam" | "sgd",
            "learning_rate": float}}`` (default ``TRAINING_SETTINGS``). Settings whose
            forget bias is not 1 are only run for LSTMs.
        budget, embedding_dim, lstm_units: the model size.
        train_size, test_size, epochs, batch_size, clip_norm: the training budget.
        seed: fixes data and weights (same data for every cell).
        verbose: passed to ``fit``.

    Returns:
        One row per ``(setting, cell, d)``: ``{"setting", "cell", "units", "parameters",
        "distance", "accuracy", "chance", "final_train_loss"}``.
    """
    settings = TRAINING_SETTINGS if settings is None else settings
    budget = budget or cell_parameters("lstm", lstm_units, embedding_dim)
    rows = []
    for distance in distances:
        task = RecallTask(distance)
        x_train, y_train = task.sample(train_size, seed=seed)
        x_test, y_test = task.sample(test_size, seed=seed + 1)
        for name, setting in settings.items():
            init = SETTINGS[setting["init"]]
            for cell in cells:
                if cell != "lstm" and init["forget_bias"] != 1.0:
                    continue
                units = units_for_budget(cell, budget, embedding_dim)
                model = recall_classifier(task, cell, units, embedding_dim, seed=seed, **init)
                compile_recall_classifier(
                    model, setting["optimizer"], setting["learning_rate"], clip_norm
                )
                history = model.fit(
                    x_train,
                    y_train,
                    batch_size=batch_size,
                    epochs=epochs,
                    verbose=verbose,
                    shuffle=True,  # NumPy arrays: a fresh order every epoch
                )
                _, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
                rows.append(
                    {
                        "setting": name,
                        "cell": cell,
                        "units": units,
                        "parameters": cell_parameters(cell, units, embedding_dim),
                        "distance": int(distance),
                        "accuracy": float(accuracy),
                        "chance": task.chance_accuracy,
                        "final_train_loss": float(history.history["loss"][-1]),
                    }
                )
                keras.backend.clear_session()
    return rows
