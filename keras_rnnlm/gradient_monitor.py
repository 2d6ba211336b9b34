"""``GradientNormMonitor``: every training step's gradient norm before clipping, and whether
the optimizer's clipping fired."""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from keras_rnnlm.compat import unwrap_apply_gradients, wrap_apply_gradients
from keras_rnnlm.distribute import ClipAfterCrossReplicaSum, global_clip_scale


def _dense(g):
    return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g


class GradientNormMonitor(keras.callbacks.Callback):
    """Logs every training step's global gradient norm *before* clipping, and whether the
    optimizer's clipping fired.

    Design: Keras 3 clips inside ``optimizer.apply_gradients``, after ``train_step`` has
    computed the gradients, and callbacks never see the gradients. At ``on_train_begin`` the
    monitor wraps the optimizer's ``apply_gradients`` (an instance attribute, so nothing else
    is affected) with a function that first stores the norms of the very gradients it receives,
    i.e. of the batch used for this update, in non-trainable ``tf.Variable`` s, then calls the
    original method. The train function is re-traced so that the wrapper is compiled in (it
    also works under ``jit_compile=True``). ``on_train_end`` removes the wrapper and drops the
    traced function again. Requires ``steps_per_execution=1`` (one update per logged step).
    With a mixed-precision ``LossScaleOptimizer`` the logged norms are those of the *scaled*
    gradients (the ones ``apply_gradients`` receives).

    Which norm the clipping compares depends on the optimizer. The library's optimizers
    (``make_optimizer``: ``keras_rnnlm.distribute.SGD``/``Adam``) sum an embedding's repeated
    rows before they clip, i.e. they clip the norm of the dense gradient; a stock Keras
    optimizer squares the rows of an ``tf.IndexedSlices`` gradient as they come. ``clipped``
    follows the optimizer in use (for the library's optimizers it calls the same
    ``keras_rnnlm.distribute.global_clip_scale`` they clip with).

    Logged per step (in ``self.history`` and in the batch ``logs``, so a ``TensorBoard``
    callback placed *after* the monitor with ``update_freq="batch"`` writes them; History
    receives the epoch mean/max):

    * ``grad_norm``: ``||g|| = sqrt(sum_v ||g_v||^2)`` of the dense gradients (equal to
      ``tf.linalg.global_norm`` of the gradients with ``tf.IndexedSlices`` densified): the
      norm the library's optimizers clip.
    * ``keras_grad_norm``: ``tf.linalg.global_norm`` of the gradients as they come, the norm a
      stock Keras optimizer's ``global_clipnorm`` compares. For an embedding whose rows repeat
      within a batch it differs from ``grad_norm``.
    * ``max_variable_norm``: the largest single-variable norm, as the optimizer's ``clipnorm``
      compares it (dense for the library's optimizers, as they come for stock Keras ones).
    * ``clipped``: 1.0 if clipping changed the update (the global norm above
      ``global_clipnorm``, or some variable's norm above ``clipnorm``), else 0.0.

    Args:
        log_dir: optional directory; if set, the per-step values are also written as
            TensorBoard scalars (``tf.summary``, needs the ``tensorboard`` package), step =
            optimizer iteration.

    Example:

    >>> monitor = GradientNormMonitor()
    >>> model.fit(dataset, epochs=1, callbacks=[monitor])
    >>> monitor.history["grad_norm"][:3]
    """

    KEYS = ("grad_norm", "keras_grad_norm", "max_variable_norm", "clipped")

    def __init__(self, log_dir: str | None = None):
        super().__init__()
        self.log_dir = log_dir
        self.history = {key: [] for key in self.KEYS}
        self._epoch_values = {key: [] for key in self.KEYS}
        self._writer = None
        self._optimizer = None

    def on_train_begin(self, logs=None):
        if getattr(self.model, "steps_per_execution", 1) not in (1, None):
            raise ValueError("GradientNormMonitor needs steps_per_execution=1.")
        self._values = {key: tf.Variable(0.0, trainable=False, name=key) for key in self.KEYS}
        self._optimizer = self.model.optimizer

        def apply_gradients(original, grads_and_vars):
            recorded = self._record([g for g, _ in grads_and_vars if g is not None])
            with tf.control_dependencies(recorded):
                return original(grads_and_vars)

        wrap_apply_gradients(self._optimizer, apply_gradients)
        self.model.make_train_function(force=True)
        if self.log_dir is not None:
            try:
                import tensorboard  # noqa: F401  (tf.summary.scalar needs it)
            except ImportError as error:
                raise ImportError(
                    "GradientNormMonitor(log_dir=...) writes TensorBoard scalars and needs the "
                    "`tensorboard` package (pip install tensorboard); or leave log_dir=None."
                ) from error
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def _record(self, grads):
        """Store this step's norms and clipping decision (runs inside the train function);
        returns the assignments, which the update waits for (run beside it, they changed the
        trained weights: ``tests/gradients_test.py``)."""
        optimizer = self._optimizer
        dense = [_dense(g) for g in grads]  # a dense gradient has no repeated rows
        exact = isinstance(optimizer, ClipAfterCrossReplicaSum)
        clipped_grads = dense if exact else grads  # what the optimizer's clipping compares
        keras_norm = tf.cast(tf.linalg.global_norm(grads), "float32")
        max_var = tf.cast(
            tf.reduce_max(tf.stack([tf.linalg.global_norm([g]) for g in clipped_grads])),
            "float32",
        )
        fired = tf.constant(False)
        if getattr(optimizer, "global_clipnorm", None):
            if exact:
                fired = global_clip_scale(dense, optimizer.global_clipnorm) < 1.0
            else:
                fired = keras_norm > optimizer.global_clipnorm
        elif getattr(optimizer, "clipnorm", None):
            fired = max_var > optimizer.clipnorm
        return [
            self._values["grad_norm"].assign(tf.cast(tf.linalg.global_norm(dense), "float32")),
            self._values["keras_grad_norm"].assign(keras_norm),
            self._values["max_variable_norm"].assign(max_var),
            self._values["clipped"].assign(tf.cast(fired, "float32")),
        ]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_values = {key: [] for key in self.KEYS}

    def on_train_batch_end(self, batch, logs=None):
        values = {key: float(variable.numpy()) for key, variable in self._values.items()}
        for key, value in values.items():
            self.history[key].append(value)
            self._epoch_values[key].append(value)
        if logs is not None:
            logs.update(values)
        if self._writer is not None:
            step = int(self._optimizer.iterations.numpy())
            with self._writer.as_default(step=step):
                for key, value in values.items():
                    tf.summary.scalar(f"gradients/{key}", value)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self._epoch_values["grad_norm"]:
            return
        norms = np.array(self._epoch_values["grad_norm"])
        finite = norms[np.isfinite(norms)]
        logs["grad_norm_mean"] = float(finite.mean()) if finite.size else math.nan
        logs["grad_norm_max"] = float(norms.max())
        logs["clipped_fraction"] = float(np.mean(self._epoch_values["clipped"]))

    def on_train_end(self, logs=None):
        if self._optimizer is not None:
            unwrap_apply_gradients(self._optimizer)
        self.model.train_function = None  # re-trace without the wrapper next time
        if self._writer is not None:
            self._writer.flush()
