"""Labelled data for taggers and classifiers: the task dataclasses and their tf.data batches.

``TaggingTask`` and ``ClassificationTask`` hold token id lists with tags / labels and their
vocabularies; ``tagging_dataset`` and ``classification_dataset`` batch them, right-padded with
0. The tasks themselves are built in ``keras_rnnlm.data.labelled`` (derived from any text) and
``keras_rnnlm.data.public_datasets`` (CoNLL-2003, IMDB); ``labelled`` re-exports every name.
"""

import collections
import dataclasses

import numpy as np
import tensorflow as tf

from keras_rnnlm.data.pipelines import pad_rows, prefetched
from keras_rnnlm.data.vocabulary import Vocabulary


class _Splits:
    """``split(name)`` for task dataclasses with ``train``/``valid``/``test`` fields."""

    def split(self, name: str) -> tuple:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


@dataclasses.dataclass
class TaggingTask(_Splits):
    """Token id lists and tag id lists (tag 0 = padding), with their vocabularies."""

    name: str
    vocabulary: Vocabulary
    tag_names: tuple
    train: tuple  # (inputs, tags): lists of int lists of equal lengths
    valid: tuple
    test: tuple

    @property
    def num_tags(self) -> int:
        return len(self.tag_names)


@dataclasses.dataclass
class ClassificationTask(_Splits):
    """Token id lists and integer labels ``0..num_classes-1``."""

    name: str
    vocabulary: Vocabulary
    class_names: tuple
    train: tuple  # (inputs, labels)
    valid: tuple
    test: tuple

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def majority_baseline(self, split: str = "test") -> float:
        """Accuracy of always predicting the train set's most frequent class on ``split``."""
        majority = np.bincount(self.train[1], minlength=self.num_classes).argmax()
        labels = np.asarray(self.split(split)[1])
        return float(np.mean(labels == majority)) if len(labels) else float("nan")


def truncate(ids: list, max_length: int | None) -> list:
    """The first ``max_length`` items of ``ids`` (all of them when ``max_length`` is None)."""
    return ids if max_length is None else ids[:max_length]


def classification_task(
    name: str, splits: dict, class_names: tuple, max_vocabulary: int | None, **vocabulary_kwargs
) -> ClassificationTask:
    """A ``ClassificationTask`` from ``{split: [(words, label), ...]}``; the vocabulary holds
    the ``max_vocabulary`` most frequent training words."""
    vocabulary = Vocabulary(
        most_frequent((w for words, _ in splits["train"] for w in words), max_vocabulary),
        level="word",
        **vocabulary_kwargs,
    )
    out = {}
    for split, examples in splits.items():
        inputs = [[vocabulary.token_to_id(w) for w in words] for words, _ in examples]
        out[split] = (inputs, np.array([label for _, label in examples], dtype=np.int32))
    return ClassificationTask(name, vocabulary, class_names, **out)


def most_frequent(tokens, max_size: int | None) -> list:
    """The distinct ``tokens``, most frequent first (ties alphabetically), keeping room for the
    4 special tokens within ``max_size`` (None: all)."""
    counts = collections.Counter(tokens)
    kept = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return kept if max_size is None else kept[: max(0, max_size - 4)]


def tagging_dataset(
    inputs, tags, batch_size=32, max_length=None, shuffle=True, seed=None
) -> tf.data.Dataset:
    """Batches of ``(token_ids, tag_ids)``, int32 ``(batch, max_length)``, right-padded with 0.

    Every batch has the same length (the longest example, or ``max_length``), so an
    XLA-compiled step compiles once.
    """
    length = max_length or max(len(x) for x in inputs)
    x, y = pad_rows(inputs, length), pad_rows(tags, length)
    keep = (x != 0).any(axis=1)
    dataset = tf.data.Dataset.from_tensor_slices((x[keep], y[keep]))
    if shuffle:
        dataset = dataset.shuffle(int(keep.sum()), seed=seed, reshuffle_each_iteration=True)
    return prefetched(dataset.batch(batch_size))


def classification_dataset(
    inputs, labels, batch_size=32, max_length=None, shuffle=True, seed=None
) -> tf.data.Dataset:
    """Batches of ``(token_ids, labels)``: int32 ``(batch, max_length)`` right-padded with 0,
    and int32 ``(batch,)``."""
    length = max_length or max(len(x) for x in inputs)
    x = pad_rows(inputs, length)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.asarray(labels, np.int32)))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return prefetched(dataset.batch(batch_size))
