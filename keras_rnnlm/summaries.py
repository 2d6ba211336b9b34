"""TensorBoard scalars of a training run (``keras-rnnlm train --tensorboard DIR``).

``TrainingSummaries`` writes, after every optimizer update, at step ``optimizer.iterations``
(so a resumed run continues the curves where the interrupted one stopped):

* ``loss``: this step's training loss (mean NLL per token of the batch, plus any layer
  losses), recovered exactly from Keras's epoch-to-date mean (float32 totals:
  ``(total_k - total_{k-1}) / (count_k - count_{k-1})``);
* ``perplexity``: the epoch-to-date *exact* perplexity, ``exp(sum NLL / sum tokens)`` of the
  epoch so far (``keras_rnnlm.metrics.Perplexity``; what ``metrics.json``'s history holds at
  the end of each epoch);
* ``learning_rate``: the optimizer's learning rate for this step (after any schedule);
* ``grad_norm``: the global gradient norm *before* clipping, the norm the library's optimizers
  clip (``keras_rnnlm.gradient_monitor.GradientNormMonitor``, which calls the optimizer's own
  ``keras_rnnlm.distribute.global_clip_scale`` for the clipping decision), and ``clipped``
  (1.0 when clipping changed the update).

and, at the end of each epoch, every epoch log (``epoch/loss``, ``epoch/val_perplexity``, ...).
The files go to ``DIR/train`` (``tensorboard --logdir DIR``).
"""

import math
from pathlib import Path

import keras
import tensorflow as tf

from keras_rnnlm.gradient_monitor import GradientNormMonitor

#: the per-step scalars ``TrainingSummaries`` writes
STEP_TAGS = ("loss", "perplexity", "learning_rate", "grad_norm", "clipped")


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401  (tf.summary writes nothing useful without it)
    except ImportError as error:
        raise ImportError(
            "--tensorboard needs the `tensorboard` package: pip install tensorboard"
        ) from error


class TrainingSummaries(keras.callbacks.Callback):
    """Per-step TensorBoard scalars: loss, epoch-to-date perplexity, learning rate, gradient
    norm before clipping (see the module docstring for their exact meaning).

    Put ``summaries.callbacks()`` (a ``GradientNormMonitor`` followed by this callback) in
    ``fit``'s callbacks; the monitor measures the norm, this callback writes it.

    Args:
        log_dir: TensorBoard directory; the event files go to ``log_dir/train``.

    Example:

    >>> summaries = TrainingSummaries("/tmp/tb")
    >>> model.fit(dataset, epochs=2, callbacks=summaries.callbacks())
    """

    def __init__(self, log_dir):
        super().__init__()
        _require_tensorboard()
        self.log_dir = Path(log_dir)
        self.monitor = GradientNormMonitor()
        self._writer = None
        self._loss_metric = None
        self._previous = (0.0, 0.0)

    def callbacks(self) -> list:
        """``[GradientNormMonitor, self]``, in the order ``fit`` must call them."""
        return [self.monitor, self]

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(str(self.log_dir / "train"))
        losses = [m for m in self.model.metrics if m.name == "loss"]
        self._loss_metric = losses[0] if losses else None

    def on_epoch_begin(self, epoch, logs=None):
        self._previous = (0.0, 0.0)  # fit resets the metrics at every epoch

    def _step_loss(self, logs) -> float:
        metric = self._loss_metric
        if metric is None or not hasattr(metric, "total"):
            return float(logs.get("loss", math.nan))
        total, count = float(metric.total.numpy()), float(metric.count.numpy())
        previous_total, previous_count = self._previous
        self._previous = (total, count)
        if count <= previous_count:
            return math.nan
        return (total - previous_total) / (count - previous_count)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        optimizer = self.model.optimizer
        values = {
            "loss": self._step_loss(logs),
            "perplexity": float(logs.get("perplexity", math.nan)),
            "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate)),
            "grad_norm": self.monitor.history["grad_norm"][-1],
            "clipped": self.monitor.history["clipped"][-1],
        }
        with self._writer.as_default(step=int(optimizer.iterations.numpy())):
            for tag, value in values.items():
                tf.summary.scalar(tag, value)

    def on_epoch_end(self, epoch, logs=None):
        with self._writer.as_default(step=int(self.model.optimizer.iterations.numpy())):
            for key, value in (logs or {}).items():
                tf.summary.scalar(f"epoch/{key}", float(value))
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()


def read_scalars(log_dir) -> dict[str, list[tuple[int, float, float]]]:
    """Every scalar under ``log_dir`` (recursively), as ``{tag: [(step, value, wall_time)]}``.

    Args:
        log_dir: a TensorBoard directory (e.g. ``keras-rnnlm train --tensorboard DIR``'s DIR).

    Returns:
        For each tag, its events sorted by wall time (a resumed run's rewrites come last).

    Example:

    >>> read_scalars("/tmp/tb")["perplexity"][-1]
    (120, 310.2, 1764551234.1)
    """
    scalars: dict[str, list[tuple[int, float, float]]] = {}
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(str(path)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, []).append((event.step, number, event.wall_time))
    return {tag: sorted(events, key=lambda e: e[2]) for tag, events in scalars.items()}
