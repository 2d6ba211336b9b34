"""Compiling and training language models with ``model.fit``: clipping, schedules, callbacks,
exact evaluation, and the Zaremba et al. (2014) presets."""

import dataclasses
import math
import numbers

import keras

from keras_rnnlm.distribute import SGD, Adam, ClipAfterCrossReplicaSum
from keras_rnnlm.fast.train_step import JIT_RECURRENCE, uses_fast_path
from keras_rnnlm.losses import MaskedLanguageModelLoss
from keras_rnnlm.metrics import BitsPerCharacter, Perplexity
from keras_rnnlm.models import RNNLanguageModel

OPTIMIZERS = ("sgd", "adam")
CLIPPING = ("global", "per_variable", "none")


def make_optimizer(
    optimizer: str = "sgd",
    learning_rate: float = 1.0,
    clip_norm: float | None = 5.0,
    clipping: str = "global",
) -> keras.optimizers.Optimizer:
    """An SGD or Adam optimizer with gradient-norm clipping.

    ``clipping="global"`` (default, the lecture's clipping, Keras ``global_clipnorm``): if the
    norm of *all* gradients concatenated, ``||g|| = sqrt(sum_v ||g_v||^2)``, exceeds
    ``clip_norm``, every gradient is scaled by ``clip_norm / ||g||``; the update keeps its
    direction. ``clipping="per_variable"`` (Keras ``clipnorm``) clips each variable's
    gradient on its own, which changes the direction of the update and lets the total norm
    reach ``clip_norm * sqrt(number of variables)``. Keras's own optimizers, under
    ``tf.distribute`` strategies, clip each replica's gradients before the cross-replica sum,
    so the effective limit grows with the number of replicas; the optimizers returned here
    (``keras_rnnlm.distribute.SGD``/``Adam``) clip the summed gradient instead, exactly.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}.")
    if clipping not in CLIPPING:
        raise ValueError(f"clipping must be one of {CLIPPING}, got {clipping!r}.")
    if learning_rate < 0:
        raise ValueError(f"learning_rate must be >= 0, got {learning_rate}.")
    kwargs = {}
    if clip_norm is not None and clipping != "none":
        if clip_norm <= 0:
            raise ValueError(f"clip_norm must be > 0, got {clip_norm}.")
        kwargs["global_clipnorm" if clipping == "global" else "clipnorm"] = clip_norm
    cls = SGD if optimizer == "sgd" else Adam
    return cls(learning_rate=learning_rate, **kwargs)


def compile_language_model(
    model: keras.Model,
    optimizer: str | keras.optimizers.Optimizer = "sgd",
    learning_rate: float = 1.0,
    clip_norm: float | None = 5.0,
    clipping: str = "global",
    level: str = "word",
    jit_compile: bool | str = "auto",
    steps_per_execution: int = 1,
) -> keras.Model:
    """Compile ``model`` with the masked LM loss, ``Perplexity`` (and bits per character for
    ``level="char"``), and an optimizer from ``make_optimizer`` (or the one given).

    Args:
        model: the model (an ``RNNLanguageModel`` for the fast path).
        optimizer: ``"sgd"``, ``"adam"`` or an optimizer instance.
        learning_rate: for ``make_optimizer``.
        clip_norm: for ``make_optimizer``.
        clipping: for ``make_optimizer``.
        level: ``"word"`` or ``"char"`` (adds ``BitsPerCharacter``).
        jit_compile: ``"auto"`` (default): for an ``RNNLanguageModel``, the fastest supported
            implementation (``keras_rnnlm.fast``: graph-mode step, XLA time loops with a
            hand-written backward, output layer fused with the loss, bfloat16 output matmuls
            where the device runs them fast); Keras's ``"auto"`` for other models. ``True``:
            XLA-compile the whole train step (reference path). ``False``: a TensorFlow graph
            without XLA (reference path). ``"recurrence"``: the fast path (old spelling).
        steps_per_execution: training steps per call of the compiled train function (Keras's
            ``compile`` argument). The steps and their results are those of 1
            (``tests/training_test.py``: equal weights and logs on the fast path, stream and
            sentence batches; on a dataset of unknown cardinality Keras's one-step loop counts
            an extra optimizer iteration per epoch, which moves Adam's bias correction, and
            the multi-step loop does not); per-batch callbacks then run once per call, so
            ``GradientNormMonitor`` needs 1. Measured: 10 ran the PTB-small and the README's
            sentence training 1.09x and 1.08x faster (``benchmarks/RESULTS.md``, session 14).

    Returns:
        ``model``, compiled.

    Example:

    >>> compile_language_model(RNNLanguageModel(1000), "adam", 0.002)
    """
    is_lm = isinstance(model, RNNLanguageModel)
    if isinstance(steps_per_execution, bool) or not isinstance(
        steps_per_execution, numbers.Integral
    ):
        raise TypeError(f"steps_per_execution must be an int, got {steps_per_execution!r}.")
    if steps_per_execution < 1:
        raise ValueError(f"steps_per_execution must be >= 1, got {steps_per_execution}.")
    if jit_compile == JIT_RECURRENCE and not is_lm:
        raise ValueError('jit_compile="recurrence" needs an RNNLanguageModel.')
    if isinstance(optimizer, str):
        optimizer = make_optimizer(optimizer, learning_rate, clip_norm, clipping)
    if jit_compile is True and isinstance(optimizer, ClipAfterCrossReplicaSum):
        optimizer.static_shapes = True  # whole-step XLA (TPUs): no tf.unique dynamic shapes
    xla_loss = is_lm and uses_fast_path(model, jit_compile)  # XLA xent in a graph-mode step
    metrics = [Perplexity(jit_compile=xla_loss)]
    if level == "char":
        metrics.append(BitsPerCharacter(jit_compile=xla_loss))
    model.compile(
        optimizer=optimizer,
        loss=MaskedLanguageModelLoss(jit_compile=xla_loss),
        metrics=metrics,
        jit_compile=jit_compile,
        steps_per_execution=int(steps_per_execution),
    )
    return model


@keras.saving.register_keras_serializable(package="keras_rnnlm")
class EpochDecay:
    """Learning rate constant for ``decay_start_epoch`` epochs, then divided by
    ``decay_factor`` every epoch (Zaremba et al. 2014). Use with
    ``keras.callbacks.LearningRateScheduler``; epochs count from 0.

    Example:

    >>> EpochDecay(1.0, decay_start_epoch=4, decay_factor=2.0)(4)
    0.5
    """

    def __init__(self, learning_rate: float, decay_start_epoch: int, decay_factor: float):
        if decay_factor < 1.0:
            raise ValueError(f"decay_factor must be >= 1, got {decay_factor}.")
        self.learning_rate = learning_rate
        self.decay_start_epoch = decay_start_epoch
        self.decay_factor = decay_factor

    def __call__(self, epoch, lr=None):
        return float(
            self.learning_rate / self.decay_factor ** max(epoch + 1 - self.decay_start_epoch, 0)
        )

    def get_config(self):
        return dict(vars(self))


class ResetStatesCallback(keras.callbacks.Callback):
    """Zero a stateful model's carried states at the start of every epoch and evaluation."""

    def _reset(self, *args, **kwargs):
        if hasattr(self.model, "reset_states"):
            self.model.reset_states()

    on_epoch_begin = on_test_begin = on_predict_begin = _reset


class StopOnDivergence(keras.callbacks.Callback):
    """Stop training when the loss diverges, with a message saying what to do.

    Diverged means NaN/infinite, or above ``max_loss``: by default ten times the loss of a
    uniform guess over the vocabulary (``10 * ln V``), which no learning model comes near.
    """

    def __init__(self, max_loss: float | None = None):
        super().__init__()
        self.max_loss = max_loss
        self.stopped_at = None
        self.message = ""

    def on_train_begin(self, logs=None):
        self.stopped_at = None
        if self.max_loss is None:
            vocabulary_size = getattr(self.model, "vocabulary_size", None) or 2
            self.limit = 10.0 * math.log(max(vocabulary_size, 2))
        else:
            self.limit = self.max_loss

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(loss)
        if not math.isfinite(loss) or loss > self.limit:
            self.stopped_at = batch
            self.model.stop_training = True
            self.message = (
                f"Stopped: the loss became {loss:.4g} at batch {batch} (exploding gradients). "
                "Clip the global gradient norm (--clip-norm, e.g. 5, or 0.25 for SGD on the mean "
                "loss) or lower the learning rate (--learning-rate)."
            )
            print("\n" + self.message)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A training configuration from Zaremba, Sutskever & Vinyals (2014), Table 1 / Section 4.1.

    ``learning_rate`` and ``clip_norm`` are the paper's values, which apply to the loss
    *summed* over the ``num_steps`` unrolled steps (and averaged over the batch). Keras
    minimises the mean over tokens, whose gradient is ``num_steps`` times smaller, so the
    equivalent Keras settings are ``keras_learning_rate = learning_rate * num_steps`` and
    ``keras_clip_norm = clip_norm / num_steps`` (same updates, same clipping threshold).
    """

    name: str
    num_layers: int
    units: int
    num_steps: int
    batch_size: int
    init_scale: float
    dropout: float
    learning_rate: float
    decay_start_epoch: int  # epochs at the initial rate ("max_epoch")
    decay_factor: float  # divide the rate by this every epoch after that
    clip_norm: float  # global norm, on the summed loss
    epochs: int
    paper_valid_perplexity: float
    paper_test_perplexity: float

    @property
    def keras_learning_rate(self) -> float:
        return self.learning_rate * self.num_steps

    @property
    def keras_clip_norm(self) -> float:
        return self.clip_norm / self.num_steps

    def schedule(self) -> EpochDecay:
        return EpochDecay(self.keras_learning_rate, self.decay_start_epoch, self.decay_factor)


PRESETS = {
    "small": Preset("small", 2, 200, 20, 20, 0.1, 0.0, 1.0, 4, 2.0, 5.0, 13, 120.7, 114.5),
    "medium": Preset("medium", 2, 650, 35, 20, 0.05, 0.5, 1.0, 6, 1.2, 5.0, 39, 86.2, 82.7),
    "large": Preset("large", 2, 1500, 35, 20, 0.04, 0.65, 1.0, 14, 1.15, 10.0, 55, 82.2, 78.4),
}


# Exact evaluation lives in keras_rnnlm.evaluation (the one exact-NLL loop); re-exported here.
from keras_rnnlm.evaluation import evaluate_perplexity as evaluate_perplexity  # noqa: E402
from keras_rnnlm.evaluation import (  # noqa: E402
    evaluate_stream_perplexity as evaluate_stream_perplexity,
)
