"""Long-distance number agreement: does a language model prefer "the keys to the cabinet are"?

A minimal pair is one prefix and two next words that differ only in number ("are" / "is"). The
model gets the pair right when ``log P(correct | prefix) > log P(wrong | prefix)``; across
pairs with the subject's head noun farther and farther from the verb, the accuracy shows how
far the model carries the subject's number (Linzen et al. 2016).
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from keras import ops

#: The committed pairs: PTB-vocabulary words, attractor nouns of the other number.
AGREEMENT_PAIRS_PATH = Path(__file__).with_name("agreement_pairs.tsv")


@dataclasses.dataclass(frozen=True)
class MinimalPair:
    """One agreement test: ``prefix`` followed by ``correct`` or by ``wrong``.

    Attributes:
        prefix: the words before the verb ("the director that the analysts hired").
        correct: the verb that agrees with the head noun ("is").
        wrong: the same verb in the other number ("are").
        distance: words between the head noun and the verb.
        construction: what separates them ("object relative clause, attractor").
    """

    prefix: str
    correct: str
    wrong: str
    distance: int
    construction: str = ""


def load_agreement_pairs(path: str | Path | None = None) -> list[MinimalPair]:
    """Read minimal pairs from a tab-separated file (``#`` lines are comments).

    Args:
        path: a TSV with the header ``prefix correct wrong distance construction``; None:
            the committed ``agreement_pairs.tsv`` (120 pairs, distances 0, 3, 4, 6, 7).

    Returns:
        The pairs, in file order.

    Example:

    >>> pairs = load_agreement_pairs()
    >>> pairs[0].prefix, pairs[0].correct, pairs[0].wrong
    ('the agencies', 'have', 'has')
    """
    path = Path(path) if path is not None else AGREEMENT_PAIRS_PATH
    with open(path, encoding="utf-8") as f:
        rows = csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t")
        return [
            MinimalPair(
                r["prefix"], r["correct"], r["wrong"], int(r["distance"]), r["construction"]
            )
            for r in rows
        ]


def score_minimal_pairs(
    model, vocabulary, pairs: Sequence[MinimalPair], batch_size: int = 64
) -> list[dict]:
    """Next-word log-probabilities of each pair's two verbs after ``<bos> prefix``.

    Args:
        model: a causal language model (``RNNLanguageModel``): ids ``(batch, time)`` ->
            logits ``(batch, time, vocabulary)``; padding (id 0) must not change the states.
        vocabulary: the model's ``Vocabulary``.
        pairs: the minimal pairs.
        batch_size: prefixes scored per model call.

    Returns:
        One dict per pair: the pair's fields, ``log_p_correct``, ``log_p_wrong`` and
        ``right`` (``log_p_correct > log_p_wrong``).

    Raises:
        ValueError: a verb or a prefix word is ``<unk>`` for ``vocabulary``.

    Example:

    >>> rows = score_minimal_pairs(model, vocab, load_agreement_pairs())
    >>> np.mean([r["right"] for r in rows])
    """
    unk = vocabulary.token_to_id("<unk>")
    encoded = []
    for pair in pairs:
        ids = vocabulary.encode(pair.prefix)
        verbs = [vocabulary.token_to_id(w) for w in (pair.correct, pair.wrong)]
        if unk in ids or unk in verbs:
            raise ValueError(f"Out-of-vocabulary word in the pair {pair}.")
        encoded.append(([vocabulary.start_id, *ids], verbs))
    rows = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        length = max(len(ids) for ids, _ in chunk)
        inputs = np.zeros((len(chunk), length), np.int32)
        for i, (ids, _) in enumerate(chunk):
            inputs[i, : len(ids)] = ids
        log_probs = np.asarray(ops.log_softmax(model(inputs), axis=-1), np.float64)
        for i, (ids, (correct, wrong)) in enumerate(chunk):
            last = log_probs[i, len(ids) - 1]  # the prediction after the last prefix word
            pair = pairs[start + i]
            rows.append(
                {
                    **dataclasses.asdict(pair),
                    "log_p_correct": float(last[correct]),
                    "log_p_wrong": float(last[wrong]),
                    "right": bool(last[correct] > last[wrong]),
                }
            )
    return rows


def accuracy_by_distance(rows: Sequence[dict]) -> list[dict]:
    """Group ``score_minimal_pairs`` rows by distance.

    Args:
        rows: the output of ``score_minimal_pairs``.

    Returns:
        One row per distance (ascending): ``distance``, ``pairs``, ``accuracy`` (fraction
        right) and ``stderr`` (its binomial standard error, ``sqrt(a (1 - a) / n)``).

    Example:

    >>> print(format_table(accuracy_by_distance(score_minimal_pairs(model, vocab, pairs))))
    """
    table = []
    for distance in sorted({r["distance"] for r in rows}):
        right = [r["right"] for r in rows if r["distance"] == distance]
        accuracy = float(np.mean(right))
        table.append(
            {
                "distance": distance,
                "pairs": len(right),
                "accuracy": accuracy,
                "stderr": float(np.sqrt(accuracy * (1 - accuracy) / len(right))),
            }
        )
    return table
