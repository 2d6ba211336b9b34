"""Sentence scoring: log-probabilities (total and per token) and the perplexity of a text.

A sentence is scored as in training: ``<bos> tokens <eos>`` is fed with teacher forcing, every
real token *and* the final ``<eos>`` is predicted, padding never counts (the per-token NLL and
the mask come from ``keras_rnnlm.losses.token_nll``, the loss used for training). Sentences are
scored whole (not split into training windows) in right-padded batches; the padding changes
nothing because padded steps leave the recurrent state untouched.

The ``<eos>`` convention: a sentence's score counts its final ``<eos>`` (``num_tokens`` = words
+ 1), here, in ``keras-rnnlm score`` and in the SavedModel's ``score_text`` signature alike.

The computation is the library's one exact-NLL loop (``keras_rnnlm.evaluation``), compiled once
per model and reused by later calls.
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_rnnlm.data.vocabulary import BOS_ID, EOS_ID
from keras_rnnlm.evaluation import perplexity_summary, sequence_nll_function
from keras_rnnlm.losses import token_nll


@dataclasses.dataclass
class SentenceScore:
    """The score of one sentence.

    Attributes:
        text: the sentence (None when scored from ids).
        tokens: the predicted tokens (the sentence's tokens, then ``<eos>``) as strings, or ids.
        token_log_probs: natural log-probability of each predicted token.
        log_prob: their sum, ``log P(sentence)``.
        num_tokens: number of predicted tokens (``<eos>`` included).
        perplexity: ``exp(-log_prob / num_tokens)``.
    """

    text: str | None
    tokens: list
    token_log_probs: list[float]
    log_prob: float
    num_tokens: int
    perplexity: float


def token_log_probs(model, inputs, targets) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-token log-probabilities of ``targets`` given ``inputs`` (teacher forcing), and the mask.

    Args:
        model: a language model returning logits ``(batch, time, vocabulary_size)``.
        inputs: int ``(batch, time)`` (``<bos> x_1 .. x_n``), right-padded with 0.
        targets: int ``(batch, time)`` (``x_1 .. x_n <eos>``), right-padded with 0.

    Returns:
        ``(log_probs, mask)``, both float ``(batch, time)``: ``log P(target_t | inputs_<=t)``
        (0 at padding) and 1 at real targets, 0 at padding.

    Example:

    >>> log_probs, mask = token_log_probs(model, [[2, 7, 9]], [[7, 9, 3]])
    >>> sentence_log_prob = ops.sum(log_probs, axis=1)
    """
    nll, mask = token_nll(targets, model(tf.convert_to_tensor(inputs), training=False))
    return -nll, mask


def _batches(sequences, batch_size):
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        width = max(len(s) for s in chunk)
        padded = np.zeros((len(chunk), width), dtype=np.int32)
        for row, seq in enumerate(chunk):
            padded[row, : len(seq)] = seq
        yield padded


def score_ids(
    model, sentences: Sequence[Sequence[int]], batch_size: int = 32, start_id: int = BOS_ID
) -> list[SentenceScore]:
    """Score id sentences (without boundary tokens) in right-padded batches.

    Args:
        model: an ``RNNLanguageModel`` (stateless).
        sentences: id lists, e.g. ``vocabulary.encode(text)``; ``<bos>``/``<eos>`` are added.
        batch_size: sentences per forward pass.
        start_id: the id the context starts from (``vocabulary.start_id``: ``<bos>``, or
            ``<eos>`` for stream-trained models).

    Returns:
        One ``SentenceScore`` per sentence (``tokens`` holds the predicted ids), in order.

    Example:

    >>> [s.log_prob for s in score_ids(model, [[7, 9], [5]])]
    """
    sequences = [[start_id, *map(int, ids), EOS_ID] for ids in sentences]
    compute = sequence_nll_function(model, per_token=True)
    results = []
    for batch in _batches(sequences, batch_size):
        sums = compute(batch[:, :-1], batch[:, 1:])
        log_probs = -np.asarray(sums["token_nll"], dtype=np.float64)
        lengths = sums["tokens"].numpy().astype(int)
        totals = -sums["nll"].numpy()
        for row in range(len(batch)):
            n = int(lengths[row])
            values = log_probs[row, :n].tolist()
            total = float(totals[row])
            results.append(
                SentenceScore(
                    text=None,
                    tokens=batch[row, 1 : n + 1].tolist(),
                    token_log_probs=values,
                    log_prob=total,
                    num_tokens=n,
                    perplexity=math.exp(-total / n),
                )
            )
    return results


def score_sentences(
    model, vocabulary, sentences: Sequence[str], batch_size: int = 32
) -> list[SentenceScore]:
    """Score text sentences: ``log P(<bos> sentence <eos>)``, per token and in total.

    Args:
        model: an ``RNNLanguageModel``.
        vocabulary: the ``Vocabulary`` the model was trained with (unknown words become
            ``<unk>`` and are scored as ``<unk>``, as in training).
        sentences: strings, one sentence each.
        batch_size: sentences per forward pass.

    Returns:
        One ``SentenceScore`` per sentence with ``tokens`` as strings (``"<eos>"`` last).

    Example:

    >>> score = score_sentences(model, vocab, ["the students opened their books"])[0]
    >>> score.log_prob, score.perplexity
    """
    scores = score_ids(
        model, vocabulary.encode_batch(list(sentences)), batch_size, vocabulary.start_id
    )
    for score, text in zip(scores, sentences, strict=True):
        score.text = text
        score.tokens = [vocabulary.tokens[i] for i in score.tokens]
    return scores


def text_perplexity(model, vocabulary, sentences: Sequence[str], batch_size: int = 32) -> dict:
    """Perplexity of a text (one sentence per item): ``exp(total NLL / total predicted tokens)``.

    Empty sentences are skipped (as ``encode_corpus`` does for training data); every sentence
    contributes its tokens and its ``<eos>``.

    Returns:
        ``{"perplexity", "log_prob", "nll_per_token", "bits_per_token", "tokens",
        "sentences"}``.

    Example:

    >>> text_perplexity(model, vocab, open("test.txt").read().splitlines())["perplexity"]
    """
    encoded = [ids for ids in vocabulary.encode_batch(list(sentences)) if ids]
    if not encoded:
        raise ValueError("The text holds no token.")
    scores = score_ids(model, encoded, batch_size, vocabulary.start_id)
    total = sum(s.log_prob for s in scores)
    tokens = sum(s.num_tokens for s in scores)
    return text_summary(total, tokens, len(scores))


def text_summary(log_prob: float, tokens: int, sentences: int) -> dict:
    """``text_perplexity``'s dict from the totals: ``perplexity_summary`` of the NLL plus
    ``log_prob`` and ``sentences``."""
    return {**perplexity_summary(-log_prob, tokens), "log_prob": log_prob, "sentences": sentences}
