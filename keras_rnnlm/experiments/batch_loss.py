"""The training loss by hand, and each batch's own loss during ``fit``.

Keras logs ``loss`` as a running mean over the epoch's batches, each batch weighted by its
number of sentences; the ``perplexity`` metric of ``keras_rnnlm`` is exact (total NLL over
total real tokens). ``BatchLossRecorder`` recovers every batch's own loss from the running
mean, and ``loss_by_hand`` recomputes one batch's loss from the model's softmax outputs.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_rnnlm.losses import MaskedLanguageModelLoss


def loss_by_hand(model, inputs, targets) -> dict:
    """``J = (1/T) sum_t -log y_hat_t[x_{t+1}]`` of one batch, from the model's probabilities.

    Args:
        model: a language model: ids ``(batch, time)`` -> logits ``(batch, time, vocab)``.
        inputs: int ``(batch, time)`` token ids.
        targets: int ``(batch, time)`` next-token ids; 0 is padding and is not counted.

    Returns:
        A dict: ``loss`` (``J``, computed in float64 with NumPy from the softmax of the
        logits), ``tokens`` (``T``, the real target tokens), ``perplexity`` (``exp(J)``) and
        ``library_loss`` (``MaskedLanguageModelLoss`` on the same logits).

    Example:

    >>> inputs, targets = next(iter(train))
    >>> out = loss_by_hand(model, inputs, targets)
    >>> abs(out["loss"] - out["library_loss"]) < 1e-4
    True
    """
    targets = np.asarray(targets)
    logits = model(np.asarray(inputs))
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    y_hat = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)  # the softmax outputs
    picked = np.take_along_axis(y_hat, targets[..., None], axis=-1)[..., 0]
    real = targets != 0
    loss = float(np.mean(-np.log(picked[real])))
    return {
        "loss": loss,
        "tokens": int(real.sum()),
        "perplexity": float(np.exp(loss)),
        "library_loss": float(MaskedLanguageModelLoss()(targets, logits)),
    }


class BatchLossRecorder(keras.callbacks.Callback):
    """Records each training batch's own loss (``losses``) next to Keras's running mean.

    Keras's ``logs["loss"]`` at the end of batch ``k`` is the mean of batches ``1..k`` of the
    epoch. This callback reads the ``loss`` metric's ``total`` and ``count`` after every batch
    and keeps the difference, ``(total_k - total_{k-1}) / (count_k - count_{k-1})``: the
    loss of batch ``k`` alone, whatever weighting Keras applies.

    Attributes:
        losses: every batch's own loss, over all epochs.
        running: Keras's logged running mean after every batch.
        sizes: every batch's weight in that running mean (its number of sentences).
        tokens: every batch's number of real target tokens, read from the compiled
            ``Perplexity`` metric (empty without one): ``sum(losses * tokens) / sum(tokens)``
            over an epoch is the log of its exact perplexity.

    Example:

    >>> recorder = BatchLossRecorder()
    >>> model.fit(train, epochs=2, callbacks=[recorder], shuffle=False)
    >>> plt.plot(recorder.losses)
    """

    def __init__(self):
        super().__init__()
        self.losses: list[float] = []
        self.running: list[float] = []
        self.sizes: list[float] = []
        self.tokens: list[float] = []
        self._previous = (0.0, 0.0, 0.0)

    def _metric(self, name):
        for metric in self.model.metrics:  # the compiled metrics are nested one level down
            for m in [metric, *getattr(metric, "metrics", [])]:
                if m.name == name:
                    return m
        return None

    def on_epoch_begin(self, epoch, logs=None):
        self._previous = (0.0, 0.0, 0.0)  # Keras resets its metrics at every epoch

    def on_train_batch_end(self, batch, logs=None):
        tracker, perplexity = self._metric("loss"), self._metric("perplexity")
        total, count = float(tracker.total.numpy()), float(tracker.count.numpy())
        tokens = float(perplexity.total_tokens) if perplexity is not None else 0.0
        previous_total, previous_count, previous_tokens = self._previous
        self.losses.append((total - previous_total) / (count - previous_count))
        self.sizes.append(count - previous_count)
        if perplexity is not None:
            self.tokens.append(tokens - previous_tokens)
        self.running.append(float(logs["loss"]))
        self._previous = (total, count, tokens)
