"""Dynamic evaluation (Krause et al. 2018, "Dynamic Evaluation of Neural Sequence Models").

The test text is read as one stream (batch 1, the recurrent state carried) in segments of
``segment_length`` tokens. Segment ``i`` is **scored first** (its NLL under the current weights
counts), **then** the weights are updated on it, so every token is predicted only from the
text before it. The update is Krause et al.'s "RMS with a global prior" rule, per weight
tensor ``theta`` (trained value ``theta_0``):

    delta = -lr * g / (rms + epsilon) + min(decay * rms / sum_rms, 1) * (theta_0 - theta)

* ``g``: gradient of the segment's mean NLL per real token (truncated BPTT: the state carried
  in is a constant);
* ``rms``: the root-mean-square of such gradients over the **training** text
  (``gradient_rms``: batches of ``rows`` parallel streams in segments of ``segment_length``,
  the state carried, every segment counted; how many tokens and segments is returned);
* ``sum_rms``: the sum over weight tensors of ``mean(rms)``, so ``decay * rms / sum_rms`` is
  the paper's RMS-scaled decay rate (clipped at 1 so a step never overshoots ``theta_0``).

The state carried into segment ``i + 1`` comes from the scoring pass of segment ``i`` (before
the update), as in the paper's code. The model given is never modified: the updates go to a
copy (``RNNLanguageModel.clone_with``), and nothing is written to disk.

With ``lr = 0`` and ``decay = 0`` the weights never move and the segment NLLs are the static
stream NLLs of ``keras_rnnlm.evaluation.evaluate_stream_perplexity`` with
``window=segment_length``, the same per-token NLL function (``evaluation.nll_sums``).
"""

import time

import numpy as np
import tensorflow as tf

from keras_rnnlm.evaluation import nll_sums, perplexity_summary, stream_windows

#: Krause et al.'s epsilon of the RMS-normalised step (their PTB code's default)
DEFAULT_EPSILON = 2e-5


def _segment_step(model, variables):
    """A compiled ``fn(inputs, targets, states, lr, decay_rates...)``: score, then update."""

    def fn(inputs, targets, states, lr, rms, theta_0, decay_rates):
        with tf.GradientTape() as tape:
            logits, new_states = model.forward(inputs, initial_state=states)
            sums = nll_sums(targets, logits, per_token=True)
            tokens = tf.cast(tf.reduce_sum(sums["tokens"]), tf.float32)
            loss = tf.reduce_sum(sums["token_nll"]) / tf.maximum(tokens, 1.0)
        gradients = tape.gradient(loss, variables)
        for variable, gradient, r, t0, d in zip(variables, gradients, rms, theta_0, decay_rates):
            gradient = tf.convert_to_tensor(gradient)  # embedding: IndexedSlices -> dense
            value = tf.convert_to_tensor(variable)
            variable.assign(value - lr * gradient / (r + DEFAULT_EPSILON) + d * (t0 - value))
        return {"nll": sums["nll"], "tokens": sums["tokens"], "states": new_states}

    return tf.function(fn)


def _gradient_square_step(model, variables):
    def fn(inputs, targets, states, squares):
        with tf.GradientTape() as tape:
            logits, new_states = model.forward(inputs, initial_state=states)
            sums = nll_sums(targets, logits, per_token=True)
            tokens = tf.cast(tf.reduce_sum(sums["tokens"]), tf.float32)
            loss = tf.reduce_sum(sums["token_nll"]) / tf.maximum(tokens, 1.0)
        gradients = tape.gradient(loss, variables)
        for square, gradient in zip(squares, gradients):
            square.assign_add(tf.square(tf.convert_to_tensor(gradient)))
        return new_states

    return tf.function(fn)


def gradient_rms(
    model, stream, segment_length: int = 20, rows: int = 64, max_tokens: int | None = None
) -> tuple[list[np.ndarray], dict]:
    """Root-mean-square of the segment gradients of ``model`` over a (training) token stream.

    The stream is cut into ``rows`` parallel streams read in segments of ``segment_length``
    tokens with the state carried (``keras_rnnlm.data.pipelines.stream_batches``); the
    gradient of each segment batch's mean NLL is squared and averaged over segments.

    Args:
        model: a stateless ``RNNLanguageModel`` (not modified).
        stream: 1-D int token ids of the training text.
        segment_length: tokens per segment.
        rows: parallel streams per gradient.
        max_tokens: use only the first ``max_tokens`` tokens (None: all).

    Returns:
        ``(rms, info)``: one float32 array per ``model.trainable_variables`` entry, and
        ``{"tokens", "segments", "rows", "segment_length"}`` saying how much text was used.

    Example:

    >>> rms, info = gradient_rms(model, token_stream(train_sentences), segment_length=20)
    """
    from keras_rnnlm.data.pipelines import stream_batches

    if segment_length < 1 or rows < 1:
        raise ValueError(f"segment_length and rows must be >= 1, got {segment_length}, {rows}.")
    stream = np.asarray(stream, np.int32)[:max_tokens]
    inputs, targets = stream_batches(stream, rows, segment_length)
    variables = model.trainable_variables
    squares = [tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in variables]
    step = _gradient_square_step(model, variables)
    states = model.get_initial_state(rows)
    for x, y in zip(inputs, targets, strict=True):
        states = step(x, y, states, squares)
    rms = [np.sqrt(s.numpy() / len(inputs)) for s in squares]
    info = {
        "tokens": int(inputs.size),
        "segments": int(len(inputs)),
        "rows": rows,
        "segment_length": segment_length,
    }
    return rms, info


def dynamic_stream_units(
    model,
    stream,
    rms: list[np.ndarray],
    lr: float,
    decay: float,
    segment_length: int = 20,
    progress=None,
) -> dict:
    """Dynamic-evaluation NLL of a token stream: score each segment, then update on it.

    Args:
        model: a stateless ``RNNLanguageModel``; never modified (a copy is updated).
        stream: 1-D int token ids (at least 2).
        rms: ``gradient_rms`` of the model, one array per trainable variable.
        lr: learning rate of the RMS-normalised step (0: no gradient step).
        decay: ``lambda`` of the decay toward the trained weights (0: none).
        segment_length: tokens scored before each update.
        progress: a ``keras_rnnlm.progress.Progress`` counting segments, or None.

    Returns:
        ``perplexity_summary`` keys plus ``"units": {"nll", "tokens"}`` (one entry per segment,
        pre-update NLL sums) and ``"seconds"`` (wall time of the loop).

    Example:

    >>> dynamic_stream_units(model, test_ids, rms, lr=1e-4, decay=1e-3)["perplexity"]
    """
    if lr < 0 or decay < 0:
        raise ValueError(f"lr and decay must be >= 0, got lr={lr}, decay={decay}.")
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}.")
    if len(np.asarray(stream)) < 2:
        raise ValueError("A stream needs at least 2 tokens.")
    work = model.clone_with()  # the updates go to this copy
    variables = work.trainable_variables
    if len(rms) != len(variables) or any(
        tuple(r.shape) != tuple(v.shape) for r, v in zip(rms, variables)
    ):
        raise ValueError("rms does not match the model's trainable variables (gradient_rms).")
    sum_rms = float(sum(np.mean(r) for r in rms))
    if sum_rms <= 0:
        raise ValueError("rms is all zero: the gradient statistics saw no real token.")
    rms_t = [tf.constant(r, tf.float32) for r in rms]
    theta_0 = [tf.constant(v.numpy()) for v in variables]
    rates = [tf.constant(np.minimum(decay * r / sum_rms, 1.0), tf.float32) for r in rms]
    step = _segment_step(work, variables)
    lr_t = tf.constant(lr, tf.float32)
    states = work.get_initial_state(1)
    units_nll, units_tokens = [], []
    start = time.perf_counter()
    for inputs, targets in stream_windows(stream, segment_length):
        out = step(inputs, targets, states, lr_t, rms_t, theta_0, rates)
        states = out["states"]
        units_nll.append(out["nll"].numpy())
        units_tokens.append(out["tokens"].numpy())
        if progress is not None:
            progress.update()
    nll, tokens = np.concatenate(units_nll), np.concatenate(units_tokens)
    result = perplexity_summary(float(nll.sum()), float(tokens.sum()))
    result["units"] = {"nll": nll, "tokens": tokens}
    result["seconds"] = time.perf_counter() - start
    return result
