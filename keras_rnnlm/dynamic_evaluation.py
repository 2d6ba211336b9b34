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

**Documents.** Every function takes an optional per-token ``reset`` aligned with the stream
(``keras_rnnlm.data.pipelines.document_stream``, the resets of training's
``--document-boundary``): a row's recurrent state is zeroed before the tokens where it is 1,
through the same reset-aware forward as static stream evaluation
(``keras_rnnlm.evaluation.forward_with_reset``), so no context crosses a document boundary in
the scores, nor in the truncated-BPTT gradients (the gradient statistics on the training text
included). **Only the state resets: the adapted weights carry over** from one document to the
next (and the decay keeps pulling them toward the trained ones), as in Krause et al.'s
evaluation of a corpus of articles read in order: what was learnt of the corpus (style,
vocabulary) stays; what was said in the previous document is not context. With ``lr = 0`` a
document is therefore scored exactly as a fresh stream started at it.
"""

import time

import numpy as np
import tensorflow as tf

from keras_rnnlm.evaluation import (
    forward_with_reset,
    nll_sums,
    perplexity_summary,
    stream_windows,
)

#: Krause et al.'s epsilon of the RMS-normalised step (their PTB code's default)
DEFAULT_EPSILON = 2e-5


def _segment_gradients(model, variables, inputs, targets, states, reset=None):
    """``nll_sums`` of one segment, the states after it, and the (dense) gradients of its mean
    NLL per real token (``reset``: None or a bool ``(batch, time)`` of state resets)."""
    with tf.GradientTape() as tape:
        logits, new_states = forward_with_reset(model, inputs, states, reset)
        sums = nll_sums(targets, logits, per_token=True)
        tokens = tf.cast(tf.reduce_sum(sums["tokens"]), tf.float32)
        loss = tf.reduce_sum(sums["token_nll"]) / tf.maximum(tokens, 1.0)
    gradients = tape.gradient(loss, variables)
    return sums, new_states, [tf.convert_to_tensor(g) for g in gradients]  # IndexedSlices: dense


def _segment_step(model, variables):
    """A graph ``fn(inputs, targets, states, lr, rms, theta_0, decay_rates[, reset])``: score,
    then update."""

    def fn(inputs, targets, states, lr, rms, theta_0, decay_rates, reset=None):
        sums, new_states, gradients = _segment_gradients(
            model, variables, inputs, targets, states, reset
        )
        for variable, gradient, r, t0, d in zip(variables, gradients, rms, theta_0, decay_rates):
            value = tf.convert_to_tensor(variable)
            variable.assign(value - lr * gradient / (r + DEFAULT_EPSILON) + d * (t0 - value))
        return {"nll": sums["nll"], "tokens": sums["tokens"], "states": new_states}

    return tf.function(fn)


def _gradient_square_step(model, variables):
    """A graph ``fn(inputs, targets, states, squares[, reset])`` adding the squared gradients."""

    def fn(inputs, targets, states, squares, reset=None):
        _, new_states, gradients = _segment_gradients(
            model, variables, inputs, targets, states, reset
        )
        for square, gradient in zip(squares, gradients):
            square.assign_add(tf.square(gradient))
        return new_states

    return tf.function(fn)


def _check_reset(reset, stream) -> np.ndarray | None:
    """``reset`` as an array aligned with ``stream``, or a clear error."""
    if reset is None:
        return None
    reset = np.asarray(reset)
    if reset.shape != np.shape(stream):
        raise ValueError(
            f"reset must be aligned with the stream: shape {reset.shape} != {np.shape(stream)}."
        )
    return reset


def gradient_rms(
    model,
    stream,
    segment_length: int = 20,
    rows: int = 64,
    max_tokens: int | None = None,
    reset=None,
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
        reset: optional per-token resets aligned with ``stream`` (``document_stream``): each
            row's state is zeroed at its documents' starts, so no gradient crosses a document.

    Returns:
        ``(rms, info)``: one float32 array per ``model.trainable_variables`` entry, and
        ``{"tokens", "segments", "rows", "segment_length"}`` saying how much text was used
        (+ ``"resets"``: document starts inside the batches, when ``reset`` is given).

    Example:

    >>> rms, info = gradient_rms(model, token_stream(train_sentences), segment_length=20)
    """
    from keras_rnnlm.data.pipelines import _cut_rows, stream_batches

    if segment_length < 1 or rows < 1:
        raise ValueError(f"segment_length and rows must be >= 1, got {segment_length}, {rows}.")
    reset = _check_reset(reset, stream)
    stream = np.asarray(stream, np.int32)[:max_tokens]
    inputs, targets = stream_batches(stream, rows, segment_length)
    resets = None if reset is None else _cut_rows(reset[:max_tokens], rows, segment_length, 0)
    variables = model.trainable_variables
    squares = [tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in variables]
    step = _gradient_square_step(model, variables)
    states = model.get_initial_state(rows)
    for i, (x, y) in enumerate(zip(inputs, targets, strict=True)):
        if resets is None:
            states = step(x, y, states, squares)
        else:
            states = step(x, y, states, squares, resets[i] != 0)
    rms = [np.sqrt(s.numpy() / len(inputs)) for s in squares]
    info = {
        "tokens": int(inputs.size),
        "segments": int(len(inputs)),
        "rows": rows,
        "segment_length": segment_length,
    }
    if resets is not None:
        info["resets"] = int(np.count_nonzero(resets))
    return rms, info


def dynamic_stream_units(
    model,
    stream,
    rms: list[np.ndarray],
    lr: float,
    decay: float,
    segment_length: int = 20,
    progress=None,
    reset=None,
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
        reset: optional per-token resets aligned with ``stream`` (``document_stream``): the
            state is zeroed before the tokens where it is 1; the weights carry on adapting
            across documents (see the module's docstring).

    Returns:
        ``perplexity_summary`` keys plus ``"units": {"nll", "tokens"}`` (one entry per segment,
        pre-update NLL sums) and ``"seconds"`` (wall time of the loop).

    Example:

    >>> dynamic_stream_units(model, test_ids, rms, lr=1e-4, decay=1e-3)["perplexity"]
    >>> stream, reset = encode_stream(vocabulary, lines, "blank")
    >>> dynamic_stream_units(model, stream, rms, 1e-4, 0.02, reset=reset)["perplexity"]
    """
    if lr < 0 or decay < 0:
        raise ValueError(f"lr and decay must be >= 0, got lr={lr}, decay={decay}.")
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}.")
    if len(np.asarray(stream)) < 2:
        raise ValueError("A stream needs at least 2 tokens.")
    reset = _check_reset(reset, stream)
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
    resets = None if reset is None else stream_windows(reset, segment_length)
    for inputs, targets in stream_windows(stream, segment_length):
        if resets is None:
            out = step(inputs, targets, states, lr_t, rms_t, theta_0, rates)
        else:
            out = step(inputs, targets, states, lr_t, rms_t, theta_0, rates, next(resets)[0] != 0)
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


def static_and_dynamic(
    model,
    stream,
    rms: list[np.ndarray],
    lr: float,
    decay: float,
    segment_length: int = 20,
    B: int = 1000,
    seed: int = 0,
    block_tokens: int = 512,
    progress=None,
    reset=None,
) -> dict:
    """Static and dynamic perplexity of one stream on the same segments, with intervals.

    The static pass is ``evaluate_stream_perplexity`` with ``window=segment_length``, so both
    passes score the same segments. Intervals resample contiguous blocks of about
    ``block_tokens`` tokens (``keras_rnnlm.intervals``); the gain is the paired bootstrap of
    ``log ppl(dynamic) - log ppl(static)`` (negative: dynamic evaluation helps).

    Args:
        model: a stateless ``RNNLanguageModel`` (not modified).
        stream: 1-D int token ids.
        rms: ``gradient_rms`` of the model.
        lr: learning rate of the RMS-normalised step.
        decay: ``lambda`` of the decay toward the trained weights.
        segment_length: tokens scored before each update.
        B: bootstrap replicates.
        seed: seed of the resampling.
        block_tokens: tokens per resampled block (rounded to whole segments).
        progress: a ``keras_rnnlm.progress.Progress`` counting dynamic segments, or None.
        reset: optional per-token resets aligned with ``stream`` (``document_stream``), the
            same for both passes: the static and the dynamic state zeroed at document starts.

    Returns:
        ``{"perplexity", "perplexity_ci95", "tokens", "bits_per_token", "dynamic_perplexity",
        "dynamic_perplexity_ci95", "dynamic_bits_per_token", "dynamic_gain": {
        "log_ppl_difference", "log_ppl_difference_ci95"}, "bootstrap", "seconds"}``.

    Example:

    >>> static_and_dynamic(model, test_ids, rms, lr=1e-4, decay=0.02)["dynamic_gain"]
    """
    from keras_rnnlm.evaluation import evaluate_stream_perplexity
    from keras_rnnlm.intervals import block_units, bootstrap_perplexity, paired_bootstrap_difference

    start = time.perf_counter()
    static = evaluate_stream_perplexity(
        model, stream, segment_length, return_units=True, reset=reset
    )
    static_seconds = time.perf_counter() - start
    dynamic = dynamic_stream_units(
        model, stream, rms, lr, decay, segment_length, progress, reset=reset
    )
    block = max(1, round(block_tokens / segment_length))
    s_nll, s_tok = block_units(static["units"]["nll"], static["units"]["tokens"], block)
    d_nll, d_tok = block_units(dynamic["units"]["nll"], dynamic["units"]["tokens"], block)
    return {
        "perplexity": static["perplexity"],
        "perplexity_ci95": bootstrap_perplexity(s_nll, s_tok, B=B, seed=seed),
        "tokens": static["tokens"],
        "bits_per_token": static["bits_per_token"],
        "dynamic_perplexity": dynamic["perplexity"],
        "dynamic_perplexity_ci95": bootstrap_perplexity(d_nll, d_tok, B=B, seed=seed),
        "dynamic_bits_per_token": dynamic["bits_per_token"],
        "dynamic_gain": paired_bootstrap_difference(s_nll, s_tok, d_nll, d_tok, B=B, seed=seed),
        "bootstrap": {
            "B": B,
            "seed": seed,
            "unit": "block",
            "segments_per_block": block,
            "units": len(s_nll),
        },
        "seconds": {"static": round(static_seconds, 2), "dynamic": round(dynamic["seconds"], 2)},
    }
