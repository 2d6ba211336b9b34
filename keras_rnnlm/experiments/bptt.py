"""Backpropagation through time, made visible; truncated BPTT on a stream vs sentence batches.

* ``bptt_contributions``: the gradient of the loss with respect to a SimpleRNN's shared
  ``W_h``, split into one term per time step, ``dJ/dW_h = sum_t h_{t-1}^T delta_t`` where
  ``delta_t = dJ/da_t`` is the gradient of step ``t``'s pre-activation. The terms sum to the
  autodiff gradient of the model's own loss (returned alongside, as the check).
* ``train_lm_on_budget``: trains a language model on sentence batches (state reset every
  sentence) or on a document stream with truncated BPTT (state carried from one window of
  ``num_steps`` tokens to the next, gradient cut at the window boundary), for the same number
  of predicted tokens (the stream's state zeroed at the start of every pass over the data),
  and measures the stream perplexity of held-out text.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_rnnlm.data import EOS_ID
from keras_rnnlm.data.pipelines import sentence_dataset, stream_dataset, token_stream
from keras_rnnlm.experiments.batch_loss import BatchLossRecorder
from keras_rnnlm.losses import MaskedLanguageModelLoss
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.training import (
    compile_language_model,
    evaluate_perplexity,
    evaluate_stream_perplexity,
)


def bptt_contributions(model: RNNLanguageModel, inputs, targets) -> dict:
    """Per-time-step terms of the gradient of the masked LM loss with respect to ``W_h``.

    The SimpleRNN ``h_t = tanh(W_x x_t + W_h h_{t-1} + b)`` uses the same ``W_h`` at every
    step; unrolled, each step has its own copy ``W_h^{(t)}`` and the gradient of the shared
    weight is the sum of the copies' gradients. This function unrolls the model's first
    layer by hand with one copy per step and returns each copy's gradient.

    Args:
        model: a one-layer ``RNNLanguageModel(cell="simple_rnn")`` (library layers, the
            default ``use_builtin_layers=False``).
        inputs: int ``(batch, time)`` token ids (0 = padding: the state is kept).
        targets: int ``(batch, time)`` next-token ids (0 = padding: not counted).

    Returns:
        A dict: ``contributions`` float64 ``(time, units, units)`` (step ``t``'s term),
        ``gradient`` (the autodiff gradient of ``MaskedLanguageModelLoss`` of ``model(inputs)``
        with respect to ``recurrent_kernel``, ``(units, units)``), ``norms`` (Frobenius norm
        of each term, ``(time,)``) and ``loss``.

    Raises:
        ValueError: the model is not a one-layer SimpleRNN language model.

    Example:

    >>> out = bptt_contributions(model, inputs, targets)
    >>> np.allclose(out["contributions"].sum(0), out["gradient"], atol=1e-6)
    True
    """
    if model.cell != "simple_rnn" or model.num_layers != 1 or model.use_builtin_layers:
        raise ValueError("bptt_contributions needs a one-layer library SimpleRNN language model.")
    inputs = ops.convert_to_tensor(np.asarray(inputs), "int32")
    targets = ops.convert_to_tensor(np.asarray(targets), "int32")
    loss_fn = MaskedLanguageModelLoss()
    cell = model.rnn.rnn_layers[0].cell
    with tf.GradientTape() as tape:
        loss = loss_fn(targets, model(inputs))
    gradient = tape.gradient(loss, cell.recurrent_kernel)

    time = inputs.shape[1]
    copies = [tf.convert_to_tensor(cell.recurrent_kernel) for _ in range(time)]
    with tf.GradientTape() as tape:
        tape.watch(copies)
        projected = cell.project_inputs(model.embedding(inputs))  # (batch, time, units)
        keep = ops.not_equal(inputs, 0)[..., None]
        h = ops.zeros((inputs.shape[0], cell.units))
        outputs = []
        for t in range(time):
            new = ops.tanh(projected[:, t] + ops.matmul(h, copies[t]))
            h = ops.where(keep[:, t], new, h)
            outputs.append(new)
        unrolled_loss = loss_fn(targets, model.logits_from_hidden(ops.stack(outputs, axis=1)))
    terms = tape.gradient(unrolled_loss, copies)
    contributions = np.stack([np.asarray(g, np.float64) for g in terms])
    return {
        "contributions": contributions,
        "gradient": np.asarray(gradient, np.float64),
        "norms": np.linalg.norm(contributions.reshape(time, -1), axis=1),
        "loss": float(loss),
    }


class _ResetStatesAtBatches(keras.callbacks.Callback):
    """Zero a stateful model's carried states before the training batches ``batches``
    (indices within the one epoch of ``train_lm_on_budget``: the starts of its passes)."""

    def __init__(self, batches: Sequence[int]):
        super().__init__()
        self.batches = set(batches)

    def on_train_batch_begin(self, batch, logs=None):
        if batch in self.batches:
            self.model.reset_states()


def train_lm_on_budget(
    train_sentences: Sequence[Sequence[int]],
    valid_sentences: Sequence[Sequence[int]],
    vocabulary_size: int,
    mode: str = "stream",
    num_steps: int = 20,
    batch_size: int = 16,
    token_budget: int = 50_000,
    cell: str = "simple_rnn",
    units: int = 64,
    embedding_dim: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> dict:
    """Train one language model for ``token_budget`` predicted tokens and measure it.

    Args:
        train_sentences: id lists without boundary tokens (``encode_corpus``).
        valid_sentences: held-out id lists, measured the same way for both modes: as one
            stream (``<eos>`` after each sentence, state carried, batch 1) and sentence by
            sentence (state reset, ``<eos> s`` predicting ``s <eos>``).
        vocabulary_size: ids of the vocabulary, padding included.
        mode: ``"sentences"`` (padded sentence batches, state reset at every sentence) or
            ``"stream"`` (the training sentences as one document stream cut into
            ``num_steps`` windows; the state is carried between windows, a stateful model,
            and the gradient is truncated at each window boundary: truncated BPTT). The
            state is zeroed at the start of every pass over the data, as at every epoch
            start of TBPTT training, so the model meets the zero state that evaluation
            starts from once per pass (carried through every pass, a SimpleRNN whose
            saturated state has two mirror-image attractors could be trained in one and
            evaluated, from zero, in the other).
        num_steps: the truncation length (stream mode).
        batch_size: rows per batch (sentences, or parallel stream rows).
        token_budget: predicted tokens to train on (whole batches; the data is repeated).
        cell, units, embedding_dim: the one-layer model.
        learning_rate: Adam's learning rate (global clipping at norm 5).
        seed: model initialisation and sentence shuffling.

    Returns:
        A dict: ``mode``, ``num_steps``, ``steps`` (updates), ``tokens`` (predicted
        tokens trained on), ``stream_perplexity`` and ``sentence_perplexity`` (validation),
        and ``final_train_perplexity``: exp of the token-weighted mean of the training
        batches' own losses over the last tenth of the updates (at least one), as measured
        during training (the weights changing, the state carried as trained), for comparing
        the validation numbers with what the run reached on its own data.

    Example:

    >>> train_lm_on_budget(train_ids, valid_ids, vocab.size, mode="stream", num_steps=35)
    """
    if mode not in ("sentences", "stream"):
        raise ValueError(f"mode must be 'sentences' or 'stream', got {mode!r}.")
    keras.utils.set_random_seed(seed)
    stateful = mode == "stream"
    model = RNNLanguageModel(
        vocabulary_size,
        cell=cell,
        num_layers=1,
        units=units,
        embedding_dim=embedding_dim,
        stateful=stateful,
    )
    if stateful:
        data = stream_dataset(train_sentences, batch_size=batch_size, num_steps=num_steps)
        model.build((batch_size, num_steps))
    else:
        # <eos> starts every sentence, as it precedes every sentence of the stream
        data = sentence_dataset(train_sentences, batch_size=batch_size, seed=seed, start_id=EOS_ID)
    batches, tokens, pass_starts = [], 0, []
    while tokens < token_budget:  # whole passes over the data (sentence batches reshuffled)
        pass_starts.append(len(batches))
        for x, y in data:
            if tokens >= token_budget:
                break
            batches.append((x.numpy(), y.numpy()))
            tokens += int(np.count_nonzero(batches[-1][1]))
    compile_language_model(
        model, optimizer="adam", learning_rate=learning_rate, clip_norm=5.0, jit_compile=False
    )
    spec = tf.TensorSpec((None, None), tf.int32)
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(batches), output_signature=(spec, spec)
    ).apply(tf.data.experimental.assert_cardinality(len(batches)))
    # stream: one epoch, in order, so row b of batch i + 1 continues row b of batch i; the
    # state is zeroed at the start of every pass over the data, as at every epoch start of
    # TBPTT training (a state carried through all passes would show the model the zero state
    # of evaluation's start only once, at its first batch)
    recorder = BatchLossRecorder()
    callbacks = [_ResetStatesAtBatches(pass_starts), recorder] if stateful else [recorder]
    model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
    last = max(1, len(recorder.losses) // 10)
    losses = np.asarray(recorder.losses[-last:])
    weights = np.asarray(recorder.tokens[-last:]) if recorder.tokens else np.ones_like(losses)
    final_train_perplexity = float(np.exp(np.sum(losses * weights) / np.sum(weights)))
    evaluator = model.clone_with(stateful=False) if stateful else model
    stream = evaluate_stream_perplexity(evaluator, token_stream(valid_sentences))
    sentences = evaluate_perplexity(
        evaluator,
        sentence_dataset(valid_sentences, batch_size=64, shuffle=False, start_id=EOS_ID),
    )
    return {
        "mode": mode,
        "num_steps": num_steps if stateful else None,
        "steps": len(batches),
        "tokens": tokens,
        "stream_perplexity": stream["perplexity"],
        "sentence_perplexity": sentences["perplexity"],
        "final_train_perplexity": final_train_perplexity,
    }
