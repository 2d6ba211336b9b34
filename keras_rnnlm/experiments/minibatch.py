"""Minibatch gradients against the full-corpus gradient.

The loss of a language model on a corpus is ``J = (1/N) sum_i J_i`` over all ``N`` predicted
tokens; its gradient needs a pass over the whole corpus. SGD instead follows the gradient of
one minibatch of sentences, an estimate of the full gradient whose quality grows with the
batch. ``gradient_similarity_by_batch_size`` measures that estimate: the cosine similarity
between minibatch gradients and the full gradient, and the time each costs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_rnnlm.data import BOS_ID, EOS_ID
from keras_rnnlm.data.pipelines import pad_rows
from keras_rnnlm.losses import token_nll


def _examples(sentences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``<bos> w1 .. wn`` inputs and ``w1 .. wn <eos>`` targets, padded with 0."""
    inputs = pad_rows([[BOS_ID, *s] for s in sentences])
    targets = pad_rows([[*s, EOS_ID] for s in sentences])
    return inputs, targets


def loss_gradient(model, sentences: Sequence[Sequence[int]], chunk_size: int = 256) -> dict:
    """Gradient of the mean NLL per predicted token over ``sentences``, flattened.

    Args:
        model: a language model (ids ``(batch, time)`` -> logits).
        sentences: id lists without boundary tokens; each is read as ``<bos> s`` and
            predicts ``s <eos>``.
        chunk_size: sentences per forward/backward pass (the sums are added up, so the
            result does not depend on it).

    Returns:
        A dict: ``gradient`` (float64, all trainable weights concatenated), ``loss`` (mean
        NLL per token), ``tokens`` and ``seconds`` (wall time of the computation).

    Example:

    >>> full = loss_gradient(model, train_ids)["gradient"]
    """
    start = time.perf_counter()
    weights = model.trainable_weights
    total = [np.zeros(w.shape, np.float64) for w in weights]
    nll_sum = tokens = 0.0
    for i in range(0, len(sentences), chunk_size):
        inputs, targets = _examples(sentences[i : i + chunk_size])
        with tf.GradientTape() as tape:
            nll, mask = token_nll(targets, model(inputs))
            chunk_sum = tf.reduce_sum(nll)
        grads = tape.gradient(chunk_sum, weights)
        for acc, g in zip(total, grads, strict=True):
            acc += np.asarray(tf.convert_to_tensor(g), np.float64)
        nll_sum += float(chunk_sum)
        tokens += float(tf.reduce_sum(mask))
    flat = np.concatenate([g.ravel() for g in total]) / tokens
    return {
        "gradient": flat,
        "loss": nll_sum / tokens,
        "tokens": int(tokens),
        "seconds": time.perf_counter() - start,
    }


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (``a . b / (|a| |b|)``)."""
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def gradient_similarity_by_batch_size(
    model,
    sentences: Sequence[Sequence[int]],
    batch_sizes: Sequence[int] = (1, 4, 16, 64, 256),
    draws: int = 8,
    seed: int = 0,
) -> list[dict]:
    """Cosine similarity of minibatch gradients to the full-corpus gradient, by batch size.

    Args:
        model: a language model at the weights to measure (not changed).
        sentences: the whole (small) corpus, id lists without boundary tokens.
        batch_sizes: sentences per minibatch.
        draws: minibatches drawn (without replacement within a draw) per batch size.
        seed: the draws' random generator.

    Returns:
        One row per batch size: ``batch_size``, ``cosine_mean`` and ``cosine_std`` (over the
        draws), ``tokens`` (mean predicted tokens per minibatch), ``seconds`` (mean time of
        one minibatch gradient) and, in every row, ``full_seconds`` and ``full_tokens`` (the
        full gradient's cost).

    Example:

    >>> rows = gradient_similarity_by_batch_size(model, train_ids[:2000])
    >>> rows[-1]["cosine_mean"] > rows[0]["cosine_mean"]
    True
    """
    full = loss_gradient(model, sentences)
    rng = np.random.default_rng(seed)
    rows = []
    for batch_size in batch_sizes:
        cosines, tokens, seconds = [], [], []
        for _ in range(draws):
            picked = rng.choice(len(sentences), size=min(batch_size, len(sentences)), replace=False)
            mini = loss_gradient(model, [sentences[i] for i in picked])
            cosines.append(cosine(mini["gradient"], full["gradient"]))
            tokens.append(mini["tokens"])
            seconds.append(mini["seconds"])
        rows.append(
            {
                "batch_size": batch_size,
                "cosine_mean": float(np.mean(cosines)),
                "cosine_std": float(np.std(cosines)),
                "tokens": float(np.mean(tokens)),
                "seconds": float(np.mean(seconds)),
                "full_tokens": full["tokens"],
                "full_seconds": full["seconds"],
            }
        )
    return rows
