"""Seeded experiments on exploding and vanishing gradients; each returns a table (list of dicts).

* ``scaled_orthogonal_gradients``: a SimpleRNN whose ``W_h = c * Q`` (``Q`` orthogonal): the
  measured ``||dJ/dh^(t-k)|| / ||dJ/dh^(t)||`` against the bound ``c^k``.
* ``gradient_ratio_table``: the same ratios at initialisation for SimpleRNN, GRU and LSTM
  (``h`` and the LSTM cell state ``c``) under several initialisations / forget-gate biases.
* ``long_range_accuracy``: accuracy on ``RecallTask`` (recall the first symbol after ``d``
  distractors) against ``d`` for the three cells at an equal parameter budget, across
  initialisation, forget-gate bias and optimiser settings.
* ``clipping_experiment``: a SimpleRNN language model trained with a large SGD learning rate
  without clipping, with global clipping and with per-variable clipping.

They are sized for a laptop CPU (seconds to a few minutes); every argument can scale them up.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_rnnlm.cells import get_cell
from keras_rnnlm.data.pipelines import prefetched, stream_batches, token_stream
from keras_rnnlm.gradients import GradientNormMonitor, gradient_norms_by_distance
from keras_rnnlm.layers import Recurrent
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.tasks import MarkovSource, RecallTask
from keras_rnnlm.training import compile_language_model

#: Initialisation settings compared by ``gradient_ratio_table`` and ``long_range_accuracy``:
#: ``recurrent_initializer`` of ``W_h`` and the LSTM forget-gate bias ``b_f``.
SETTINGS = {
    "orthogonal, b_f=1": {"recurrent_initializer": "orthogonal", "forget_bias": 1.0},
    "orthogonal, b_f=3": {"recurrent_initializer": "orthogonal", "forget_bias": 3.0},
    "uniform(0.1), b_f=1": {"recurrent_initializer": "uniform_0.1", "forget_bias": 1.0},
}


def _initializer(name: str, seed: int):
    if name == "uniform_0.1":
        return keras.initializers.RandomUniform(-0.1, 0.1, seed=seed)
    if name == "orthogonal":
        return keras.initializers.Orthogonal(seed=seed)
    return keras.initializers.get({"class_name": name, "config": {"seed": seed}})


def _set_forget_bias(cell, value: float) -> None:
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


def _single_layer_lm(
    cell: str,
    vocabulary_size: int,
    units: int,
    embedding_dim: int,
    seed: int,
    recurrent_initializer: str = "orthogonal",
    forget_bias: float = 1.0,
    dtype: str | None = None,
) -> RNNLanguageModel:
    keras.utils.set_random_seed(seed)
    kwargs = {"recurrent_initializer": _initializer(recurrent_initializer, seed)}
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
        _set_forget_bias(model.rnn.rnn_layers[0].cell, forget_bias)
    return model


def scaled_orthogonal_gradients(
    scales: Sequence[float] = (0.5, 0.9, 1.0, 1.1, 1.5),
    distances: Sequence[int] = (10, 30),
    units: int = 32,
    embedding_dim: int = 16,
    vocabulary_size: int = 20,
    batch_size: int = 16,
    seed: int = 0,
    dtype: str = "float64",
) -> list[dict]:
    """SimpleRNN with ``W_h = c * Q`` (``Q`` orthogonal): measured gradient ratios vs ``c^k``.

    Since ``dh^(s)/dh^(s-1) = diag(tanh') W_h^T`` and ``0 < tanh' <= 1``, every example's
    ``||dJ/dh^(t-k)|| <= c^k ||dJ/dh^(t)||`` (so also the batch-mean ratio). For ``c > 1`` the
    bound allows growth, but saturation (``tanh'`` near 0) may prevent it.

    Args:
        scales: the values of ``c``.
        distances: the ``k`` reported.
        units, embedding_dim, vocabulary_size: model size (one layer).
        batch_size: random token sequences of length ``max(distances) + 2``.
        seed: fixes ``Q``, the other weights and the tokens.
        dtype: computation dtype (float64 keeps tiny ratios exact).

    Returns:
        One row per ``(c, k)``: ``{"c", "k", "ratio", "bound", "within_bound",
        "mean_tanh_derivative"}``; the last is the mean ``1 - h^2`` over the sequence, which
        shows how saturated the units are.

    Example:

    >>> rows = scaled_orthogonal_gradients(scales=(0.9,), distances=(10,))
    >>> rows[0]["ratio"] <= rows[0]["bound"]
    True
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocabulary_size, size=(batch_size, max(distances) + 2))
    q = np.linalg.qr(rng.standard_normal((units, units)))[0]
    rows = []
    for c in scales:
        model = _single_layer_lm(
            "simple_rnn", vocabulary_size, units, embedding_dim, seed, dtype=dtype
        )
        cell = model.rnn.rnn_layers[0].cell
        cell.recurrent_kernel.assign(c * q)
        norms = gradient_norms_by_distance(model, ids, max_distance=max(distances))
        hidden = model.rnn.rnn_layers[0](model.embedding(ids[:, :-1]))[0]
        tanh_derivative = float(np.mean(1.0 - np.square(np.asarray(hidden))))
        for k in distances:
            ratio = float(norms["h_ratio"][0, k])
            rows.append(
                {
                    "c": float(c),
                    "k": int(k),
                    "ratio": ratio,
                    "bound": float(c) ** k,
                    "within_bound": bool(ratio <= float(c) ** k * (1 + 1e-9)),
                    "mean_tanh_derivative": tanh_derivative,
                }
            )
    return rows


def gradient_ratio_table(
    cells: Sequence[str] = ("simple_rnn", "gru", "lstm"),
    settings: dict | None = None,
    distances: Sequence[int] = (10, 30),
    units: int = 64,
    embedding_dim: int = 16,
    vocabulary_size: int = 20,
    batch_size: int = 16,
    seed: int = 0,
) -> list[dict]:
    """Gradient ratios ``||dJ/ds^(t-k)|| / ||dJ/ds^(t)||`` at initialisation, per cell/setting.

    Args:
        cells: cell types.
        settings: ``{name: {"recurrent_initializer": "orthogonal" | "uniform_0.1" | any Keras
            initializer name, "forget_bias": float}}`` (default ``SETTINGS``; the forget bias
            only matters for LSTMs).
        distances: the ``k`` reported.
        units, embedding_dim, vocabulary_size: one-layer language model.
        batch_size: random token sequences.
        seed: fixes weights and tokens.

    Returns:
        One row per ``(setting, cell, k)``: ``{"setting", "cell", "k", "h_ratio", "c_ratio"
        (NaN except LSTM), "input_ratio"}``.
    """
    settings = SETTINGS if settings is None else settings
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocabulary_size, size=(batch_size, max(distances) + 2))
    rows = []
    for name, setting in settings.items():
        for cell in cells:
            if cell != "lstm" and setting.get("forget_bias", 1.0) != 1.0:
                continue  # identical to the b_f=1 row for SimpleRNN and GRU
            model = _single_layer_lm(cell, vocabulary_size, units, embedding_dim, seed, **setting)
            norms = gradient_norms_by_distance(model, ids, max_distance=max(distances))
            for k in distances:
                rows.append(
                    {
                        "setting": name,
                        "cell": cell,
                        "k": int(k),
                        "h_ratio": float(norms["h_ratio"][0, k]),
                        "c_ratio": float(norms["c_ratio"][0, k]) if "c" in norms else math.nan,
                        "input_ratio": float(norms["input_ratio"][k]),
                    }
                )
    return rows


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
    rnn_cell = get_cell(
        cell, units, recurrent_initializer=_initializer(recurrent_initializer, seed)
    )
    x = Recurrent(rnn_cell)(x)
    outputs = keras.layers.Dense(task.num_symbols)(x)
    model = keras.Model(inputs, outputs)
    if cell == "lstm":
        _set_forget_bias(rnn_cell, forget_bias)
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
                cls = (
                    keras.optimizers.Adam
                    if setting["optimizer"] == "adam"
                    else (keras.optimizers.SGD)
                )
                model.compile(
                    optimizer=cls(setting["learning_rate"], global_clipnorm=clip_norm),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"],
                    jit_compile=True,
                )
                history = model.fit(
                    x_train,
                    y_train,
                    batch_size=batch_size,
                    epochs=epochs,
                    verbose=verbose,
                    shuffle=True,
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


class _StepLosses(keras.callbacks.Callback):
    """Per-step training loss, recovered from Keras's running epoch mean (equal batches)."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_epoch_begin(self, epoch, logs=None):
        self._previous_mean, self._count = 0.0, 0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        self._count += 1
        self.losses.append(self._count * mean - (self._count - 1) * self._previous_mean)
        self._previous_mean = mean


def clipping_experiment(
    learning_rates: Sequence[float] = (1.0, 2.0, 4.0),
    modes: Sequence[str] = ("none", "global", "per_variable"),
    clip_norm: float = 1.0,
    units: int = 64,
    embedding_dim: int = 32,
    num_sentences: int = 2000,
    batch_size: int = 16,
    num_steps: int = 20,
    epochs: int = 2,
    seed: int = 0,
    jit_compile: bool = False,
) -> tuple[list[dict], dict]:
    """One SimpleRNN language model trained with SGD at large learning rates, three ways.

    Data: a ``MarkovSource`` token stream (``stream_batches``, fixed shapes). Each run starts
    from the same weights; the per-step gradient norm before clipping comes from
    ``GradientNormMonitor``. A run *diverged* if a step's loss is NaN/infinite or above twice
    the first step's loss (a transient spike counts); it *converged* if its last step's loss
    is finite and below the first step's (both can be true: a spike, then recovery).

    Args:
        learning_rates: SGD rates tried.
        modes: ``"none"``, ``"global"`` (``global_clipnorm``) and/or ``"per_variable"``
            (``clipnorm``).
        clip_norm: the threshold of both clipping modes.
        units, embedding_dim: one-layer SimpleRNN LM.
        num_sentences, batch_size, num_steps, epochs: data and training budget.
        seed: fixes data and initial weights.
        jit_compile: compile the train step with XLA (slower to compile, faster per step).

    Returns:
        ``(rows, traces)``: one row per ``(learning_rate, mode)`` with ``{"learning_rate",
        "clipping", "initial_loss", "final_loss", "max_loss", "diverged", "diverged_at_step", "converged",
        "max_grad_norm", "median_grad_norm", "clipped_fraction", "source_entropy"}`` (the
        best achievable loss per token, for reference), and ``traces[(learning_rate,
        mode)] = {"loss": [...], "grad_norm": [...], "clipped": [...]}`` per step.
    """
    source = MarkovSource(num_symbols=10, end_probability=0.1, concentration=0.3, seed=seed)
    stream = token_stream(source.sample(num_sentences, seed=seed))
    inputs, targets = stream_batches(stream, batch_size, num_steps)
    dataset = prefetched(tf.data.Dataset.from_tensor_slices((inputs, targets)))
    keras.utils.set_random_seed(seed)
    base = RNNLanguageModel(
        source.vocabulary_size,
        cell="simple_rnn",
        num_layers=1,
        units=units,
        embedding_dim=embedding_dim,
    )
    base(inputs[0])
    initial_weights = base.get_weights()
    rows, traces = [], {}
    for lr in learning_rates:
        for mode in modes:
            keras.utils.set_random_seed(seed)
            model = RNNLanguageModel.from_config(base.get_config())
            model(inputs[0])
            model.set_weights(initial_weights)
            compile_language_model(
                model,
                "sgd",
                learning_rate=lr,
                clip_norm=clip_norm,
                clipping=mode,
                jit_compile=jit_compile,
            )
            monitor, step_losses = GradientNormMonitor(), _StepLosses()
            with np.errstate(all="ignore"):
                model.fit(
                    dataset,
                    epochs=epochs,
                    verbose=0,
                    shuffle=False,
                    callbacks=[monitor, step_losses],
                )
            losses = np.array(step_losses.losses)
            bad = ~np.isfinite(losses) | (losses > 2.0 * losses[0])
            norms = np.array(monitor.history["grad_norm"])
            finite_norms = norms[np.isfinite(norms)]
            rows.append(
                {
                    "learning_rate": float(lr),
                    "clipping": mode,
                    "initial_loss": float(losses[0]),
                    "final_loss": float(losses[-1]),
                    "max_loss": float(np.nanmax(np.where(np.isfinite(losses), losses, np.nan)))
                    if np.isfinite(losses).any()
                    else math.nan,
                    "diverged": bool(bad.any()),
                    "diverged_at_step": int(np.argmax(bad)) + 1 if bad.any() else None,
                    "converged": bool(np.isfinite(losses[-1]) and losses[-1] < losses[0]),
                    "max_grad_norm": float(norms.max()) if norms.size else math.nan,
                    "median_grad_norm": float(np.median(finite_norms))
                    if finite_norms.size
                    else math.nan,
                    "clipped_fraction": float(np.mean(monitor.history["clipped"])),
                    "source_entropy": source.entropy_per_token(),
                }
            )
            traces[(float(lr), mode)] = {
                "loss": losses.tolist(),
                "grad_norm": monitor.history["grad_norm"],
                "clipped": monitor.history["clipped"],
            }
            keras.backend.clear_session()
    return rows, traces


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of ``rows`` (floats with 4 significant digits)."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    body = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in body]
    return "\n".join(lines)
