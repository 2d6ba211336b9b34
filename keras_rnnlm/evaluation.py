"""The one exact-NLL evaluation loop, and compiled functions cached on the model.

Every exact measurement of the library goes through ``nll_sums``: the per-token negative
log-likelihood of the targets (``keras_rnnlm.losses.token_nll``, the training loss; padding,
target id 0, never counts), summed per row in float64, with the per-row count of real targets.

* static evaluation (``evaluate_perplexity``): one row per sentence (or window) of a dataset;
* stream evaluation (``evaluate_stream_perplexity``): one row, one window at a time, the
  recurrent state carried from window to window (and zeroed at document boundaries when given
  per-token resets, ``keras_rnnlm.data.pipelines.document_stream``);
* scoring (``keras_rnnlm.scoring.score_ids``, ``score_sentences``, ``text_perplexity``):
  one row per sentence, with the per-token NLLs.

Every function returns, besides the totals, the per-unit (sentence / window) NLL sums and
token counts when asked (``return_units=True``), the input of confidence intervals or dynamic
evaluation.

The compiled functions are built once per model and kept on it (``cached_function``): a dict
attribute set with ``object.__setattr__``, so Keras neither tracks nor saves it. A second call
with the same input shapes reuses the traced graph (no retrace, no XLA recompilation);
``trace_count`` tells how many times a cached function was traced.
"""

import collections
import inspect
import math
from collections.abc import Callable, Hashable

import keras
import numpy as np
import tensorflow as tf

from keras_rnnlm.losses import token_nll

_CACHE_ATTRIBUTE = "_rnnlm_function_cache"
_TRACES = "__traces__"


def model_cache(model) -> dict:
    """The dict of compiled functions kept on ``model`` (created on first use, never saved)."""
    cache = getattr(model, _CACHE_ATTRIBUTE, None)
    if cache is None:
        cache = {_TRACES: collections.Counter()}
        object.__setattr__(model, _CACHE_ATTRIBUTE, cache)  # bypass Keras's attribute tracking
    return cache


def cached_function(model, key: Hashable, build: Callable[[], Callable], **function_kwargs):
    """A ``tf.function`` of ``build()``, made once per ``model`` and ``key`` and then reused.

    Args:
        model: the object the function is stored on (normally the Keras model it calls).
        key: hashable description of everything the traced function depends on besides its
            tensor arguments (kind, options); ``function_kwargs`` are added to it.
        build: returns the Python function to trace.
        **function_kwargs: ``tf.function`` options (``jit_compile``, ``reduce_retracing``...).

    Returns:
        The cached ``tf.function``.

    Example:

    >>> fn = cached_function(model, "logits", lambda: lambda x: model(x), reduce_retracing=True)
    >>> fn(ids) is not None and cached_function(model, "logits", ...) is fn
    True
    """
    cache = model_cache(model)
    key = (key, tuple(sorted(function_kwargs.items())))
    if key not in cache:
        cache[key] = tf.function(_TracedFunction(build(), cache[_TRACES], key), **function_kwargs)
    return cache[key]


class _TracedFunction:
    """``build()``'s function, counting its traces. A callable object, not a closure:
    TensorFlow keys its retracing statistics by the code object, which closures made here
    would all share (one "function" seemingly retraced for every model and setting)."""

    def __init__(self, python_function, traces, key):
        self.python_function, self.traces, self.key = python_function, traces, key

    def __call__(self, *args):
        self.traces[self.key] += 1  # a Python side effect: runs only while tracing
        return self.python_function(*args)


def trace_count(model, key: Hashable | None = None) -> int:
    """How many times the functions cached on ``model`` were traced.

    Args:
        model: the model the functions are cached on.
        key: count only the functions whose key is ``key`` or a tuple starting with ``key``
            (e.g. ``"generate"``, ``"stream"``, ``("sequence", True)``); None counts all.

    Returns:
        The number of traces (a Python side effect of tracing, so graph reuse adds nothing).
    """

    def matches(k):
        return key is None or k == key or (isinstance(k, tuple) and bool(k) and k[0] == key)

    traces = model_cache(model)[_TRACES]
    return sum(n for (k, _), n in traces.items() if matches(k))


def nll_sums(targets, logits, per_token: bool = False) -> dict:
    """Per-row NLL sums and real-target counts of ``logits`` for ``targets``: the one loop body.

    Args:
        targets: int ``(batch, time)``, 0 = padding.
        logits: ``(batch, time, vocabulary_size)``.
        per_token: also return the per-token NLLs.

    Returns:
        ``{"nll": float64 (batch,), "tokens": float64 (batch,)}`` and, with ``per_token``,
        ``"token_nll"``: float32 ``(batch, time)`` (0 at padding).

    Example:

    >>> nll_sums(targets, model(inputs))["nll"]  # one NLL sum per sentence
    """
    nll, mask = token_nll(targets, logits)
    out = {
        "nll": tf.reduce_sum(tf.cast(nll, tf.float64), axis=1),
        "tokens": tf.reduce_sum(tf.cast(mask, tf.float64), axis=1),
    }
    if per_token:
        out["token_nll"] = tf.cast(nll, tf.float32)
    return out


def sequence_nll_function(model, per_token: bool = False) -> Callable:
    """The cached ``fn(inputs, targets) -> nll_sums(targets, model(inputs))`` of ``model``.

    Graph mode with relaxed shapes (``reduce_retracing``): bucketed batches come in many lengths,
    and one XLA compilation per length would cost more than it saves on a single pass.
    """

    def build():
        def fn(inputs, targets):
            return nll_sums(targets, model(inputs, training=False), per_token)

        return fn

    return cached_function(model, ("sequence", per_token), build, reduce_retracing=True)


def forward_with_reset(model, inputs, states, reset=None, training: bool = False):
    """``model.forward(inputs, initial_state=states)``, a row's states zeroed before the
    tokens where ``reset`` ``(batch, time)`` is true (``keras_rnnlm.layers.Recurrent``).

    Args:
        model: an ``RNNLanguageModel`` (from-scratch layers).
        inputs: int ``(batch, time)`` ids.
        states: per-layer lists of states.
        reset: None (plain ``forward``) or per-row resets.
        training: enables dropout.

    Returns:
        ``(logits, final_states)`` as ``model.forward``.

    Example:

    >>> logits, states = forward_with_reset(model, ids, model.get_initial_state(1), resets)
    """
    if reset is None:
        return model.forward(inputs, initial_state=states, training=training)
    if "reset" in inspect.signature(model.forward).parameters:
        return model.forward(inputs, initial_state=states, training=training, reset=reset)
    from keras_rnnlm.backbone import run_backbone

    hidden, states = run_backbone(model.embedding, model.rnn, inputs, states, training, reset)
    return model.logits_from_hidden(hidden, training), states


def stream_nll_function(model, with_reset: bool = False) -> Callable:
    """The cached XLA ``fn(inputs, targets, states[, reset]) -> nll_sums + {"states"}`` of
    ``model`` (``with_reset``: a per-token reset ``(batch, time)`` as 4th argument)."""

    def build():
        def fn(inputs, targets, states, reset=None):
            logits, states = forward_with_reset(model, inputs, states, reset)
            return {**nll_sums(targets, logits), "states": states}

        return fn

    key = ("stream", "reset") if with_reset else "stream"
    return cached_function(model, key, build, jit_compile=True)


def perplexity_summary(total_nll: float, total_tokens: float) -> dict:
    """``{"perplexity", "nll_per_token", "bits_per_token", "tokens"}`` of NLL and token totals."""
    if total_tokens == 0:
        raise ValueError("The data holds no real target token.")
    mean = total_nll / total_tokens
    return {
        "perplexity": float(np.exp(mean)),
        "nll_per_token": mean,
        "bits_per_token": mean / math.log(2.0),
        "tokens": int(total_tokens),
    }


def _summary(units_nll, units_tokens, return_units):
    units_nll = np.concatenate(units_nll) if units_nll else np.zeros(0)
    units_tokens = np.concatenate(units_tokens) if units_tokens else np.zeros(0)
    result = perplexity_summary(float(units_nll.sum()), float(units_tokens.sum()))
    if return_units:
        result["units"] = {"nll": units_nll, "tokens": units_tokens}
    return result


def evaluate_perplexity(
    model: keras.Model, dataset: tf.data.Dataset, return_units: bool = False
) -> dict:
    """Exact corpus perplexity: ``exp(total NLL / total real tokens)`` over ``dataset``.

    Stateful models are reset first and carry their state through the dataset in order.

    Args:
        model: a language model returning logits ``(batch, time, vocabulary_size)``.
        dataset: batches ``(inputs, targets[, ...])`` of int ``(batch, time)``, 0 = padding.
        return_units: also return ``"units"``: ``{"nll", "tokens"}`` float64 arrays with one
            entry per dataset row (a sentence, or a window of one), in order.

    Returns:
        ``{"perplexity", "nll_per_token", "bits_per_token", "tokens"}`` (+ ``"units"``).

    Example:

    >>> evaluate_perplexity(model, sentence_dataset(valid, 64, shuffle=False))["perplexity"]
    """
    if hasattr(model, "reset_states"):
        model.reset_states()
    fn = sequence_nll_function(model)
    units_nll, units_tokens = [], []
    for batch in dataset:
        sums = fn(batch[0], batch[1])
        units_nll.append(sums["nll"].numpy())
        units_tokens.append(sums["tokens"].numpy())
    if hasattr(model, "reset_states"):
        model.reset_states()
    return _summary(units_nll, units_tokens, return_units)


def stream_windows(stream, window: int):
    """``(inputs, targets)`` int32 ``(1, window)`` pairs covering ``stream``, the last 0-padded."""
    stream = np.asarray(stream, np.int32)
    for start in range(0, len(stream) - 1, window):
        targets = stream[start + 1 : start + 1 + window]
        inputs = stream[start : start + len(targets)]
        pad = window - len(targets)
        yield np.pad(inputs, (0, pad))[None, :], np.pad(targets, (0, pad))[None, :]


def evaluate_stream_perplexity(
    model: keras.Model,
    stream: np.ndarray,
    window: int = 256,
    return_units: bool = False,
    reset: np.ndarray | None = None,
    progress=None,
) -> dict:
    """Exact perplexity of a token stream read as one sequence (batch 1), as Zaremba et al.
    evaluate: every token after the first is predicted from the whole stream before it.

    Args:
        model: a stateless ``RNNLanguageModel`` (``keras_rnnlm.runs.stateless_copy``); the state
            is carried from one ``window`` of tokens to the next, so memory stays bounded.
        stream: 1-D int ids.
        window: tokens per compiled step (one XLA compilation per window size).
        return_units: also return ``"units"``: per-window ``{"nll", "tokens"}`` arrays.
        reset: optional per-token resets aligned with ``stream`` (``document_stream``): the
            state is zeroed before the tokens where it is 1, so each document is scored as if
            alone (``<eos> document`` from zero states). Same targets as without it.
        progress: optional ``keras_rnnlm.progress.Progress``, advanced once per window.

    Returns:
        ``{"perplexity", "nll_per_token", "bits_per_token", "tokens"}`` (+ ``"units"``).

    Example:

    >>> evaluate_stream_perplexity(model, test_ids, window=256)["perplexity"]
    >>> stream, reset = document_stream(encode_documents(vocabulary, lines))
    >>> evaluate_stream_perplexity(model, stream, reset=reset)["perplexity"]
    """
    if len(np.asarray(stream)) < 2:
        raise ValueError("A stream needs at least 2 tokens.")
    if reset is not None and np.shape(reset) != np.shape(stream):
        raise ValueError(
            f"reset must be aligned with the stream: shape {np.shape(reset)} != {np.shape(stream)}."
        )
    fn = stream_nll_function(model, with_reset=reset is not None)
    states = model.get_initial_state(1)
    units_nll, units_tokens = [], []
    resets = stream_windows(reset, window) if reset is not None else None
    for inputs, targets in stream_windows(stream, window):
        if resets is None:
            sums = fn(inputs, targets, states)
        else:
            sums = fn(inputs, targets, states, next(resets)[0] != 0)
        states = sums["states"]
        units_nll.append(sums["nll"].numpy())
        units_tokens.append(sums["tokens"].numpy())
        if progress is not None:
            progress.update()
    return _summary(units_nll, units_tokens, return_units)
