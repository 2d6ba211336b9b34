"""Labelled tasks for taggers and classifiers, derived offline from real text, plus loaders for
two public labelled data sets (CoNLL-2003 NER and IMDB reviews) for users who are online.

Derived tasks (labels come from the text itself, so any corpus works, nothing is downloaded):

* ``segmentation_task``: character-level word segmentation. Spaces are removed; each character
  is tagged ``END`` if a word ends after it (a space followed it, or the line ends), else
  ``IN``. Whether a word ends after ``c_t`` depends on ``c_{t+1}..``: the right context matters.
* ``truecasing_task``: word-level true-casing. Words are lower-cased; each is tagged with its
  original case class (``lower``, ``Title``, ``UPPER``, ``miXed``; digits and punctuation are
  ``lower``).
* ``swapped_words_task``: sentence classification. Half of the sentences (chosen at random)
  have two of their words (two different tokens) swapped; label 1 = swapped, 0 = original. Each
  sentence appears once, in one version only.

Loaders ``load_conll2003`` and ``load_imdb_reviews`` (``keras_rnnlm.data.public_datasets``),
the task dataclasses and ``tagging_dataset``/``classification_dataset``
(``keras_rnnlm.data.task_data``) are re-exported here: every name stays importable from
``keras_rnnlm.data.labelled``.
"""

import random
from collections.abc import Sequence

from keras_rnnlm.data.public_datasets import (
    CONLL2003_FILES,
    CONLL2003_NER_TAGS,
    IMDB_LABELS,
    load_conll2003,
    load_imdb_reviews,
    read_conll,
)
from keras_rnnlm.data.task_data import (
    ClassificationTask,
    TaggingTask,
    classification_dataset,
    classification_task,
    tagging_dataset,
    truncate,
)
from keras_rnnlm.data.tokenizer import tokenize_lines
from keras_rnnlm.data.vocabulary import Vocabulary

__all__ = [
    "CASE_TAGS",
    "CONLL2003_FILES",
    "CONLL2003_NER_TAGS",
    "IMDB_LABELS",
    "SEGMENTATION_TAGS",
    "ClassificationTask",
    "TaggingTask",
    "case_class",
    "classification_dataset",
    "load_conll2003",
    "load_imdb_reviews",
    "read_conll",
    "segment_labels",
    "segmentation_task",
    "swap_two_words",
    "swapped_words_task",
    "tagging_dataset",
    "truecasing_task",
    "unsegment",
]

SEGMENTATION_TAGS = ("<pad>", "IN", "END")
CASE_TAGS = ("<pad>", "lower", "Title", "UPPER", "miXed")


# --- word segmentation ----------------------------------------------------------------------


def segment_labels(line: str) -> tuple[str, list[int]]:
    """``(characters without spaces, tags)``: tag 2 (``END``) when a word ends after the
    character, else 1 (``IN``)."""
    chars, tags = [], []
    for word in line.split():
        chars.extend(word)
        tags.extend([1] * (len(word) - 1) + [2])
    return "".join(chars), tags


def unsegment(chars: str, tags: Sequence[int]) -> str:
    """Inverse of ``segment_labels``: put a space after every ``END`` character."""
    words, current = [], []
    for char, tag in zip(chars, tags):
        current.append(char)
        if int(tag) == 2:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return " ".join(words)


def _limit(lines, max_lines):
    lines = [line for line in lines if line.split()]
    return lines if max_lines is None else lines[:max_lines]


def segmentation_task(
    corpus, max_lines: int | None = None, max_length: int | None = 128
) -> TaggingTask:
    """Character-level word segmentation of ``corpus``'s lines (a ``Corpus``), spaces removed.

    Args:
        corpus: a ``keras_rnnlm.data.Corpus`` (e.g. ``load_corpus("tiny_shakespeare")``).
        max_lines: use at most this many non-empty lines per split (a stated subset).
        max_length: truncate each line to this many characters.
    """
    splits = {}
    for split in ("train", "valid", "test"):
        pairs = [segment_labels(line) for line in _limit(corpus.split(split), max_lines)]
        splits[split] = [(c[:max_length] if max_length else c, t) for c, t in pairs]
    vocabulary = Vocabulary.build((c for c, _ in splits["train"]), level="char")
    out = {}
    for split, pairs in splits.items():
        inputs = [vocabulary.encode(c) for c, _ in pairs]
        tags = [truncate(t, max_length) for _, t in pairs]
        out[split] = (inputs, tags)
    return TaggingTask("segmentation", vocabulary, SEGMENTATION_TAGS, **out)


# --- true-casing ----------------------------------------------------------------------------


def case_class(word: str) -> int:
    """1 lower (or no letters), 2 Title, 3 UPPER (more than one letter), 4 mixed."""
    letters = [c for c in word if c.isalpha()]
    if not letters or all(c.islower() for c in letters):
        return 1
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return 3
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return 2
    if len(letters) == 1:  # a single capital letter ("I", "A")
        return 2
    return 4


def truecasing_task(
    corpus, max_lines: int | None = None, max_length: int | None = 64, max_vocabulary: int = 10000
) -> TaggingTask:
    """Word-level true-casing: inputs are lower-cased words, tags their original case class."""
    splits = {}
    for split in ("train", "valid", "test"):
        words = tokenize_lines(list(_limit(corpus.split(split), max_lines)), "word")
        splits[split] = [truncate(w, max_length) for w in words if w]
    vocabulary = Vocabulary.build(
        (" ".join(w) for w in splits["train"]),
        level="word",
        lowercase=True,
        max_size=max_vocabulary,
    )
    out = {}
    for split, lines in splits.items():
        inputs = [[vocabulary.token_to_id(w.lower()) for w in words] for words in lines]
        tags = [[case_class(w) for w in words] for words in lines]
        out[split] = (inputs, tags)
    return TaggingTask("truecasing", vocabulary, CASE_TAGS, **out)


# --- swapped-word detection -----------------------------------------------------------------


def swap_two_words(words: Sequence[str], rng: random.Random, adjacent: bool = False) -> list:
    """A copy of ``words`` with two positions holding different words swapped (or ``None``
    when every word is the same)."""
    words = list(words)
    if adjacent:
        candidates = [i for i in range(len(words) - 1) if words[i] != words[i + 1]]
        if not candidates:
            return None
        i = rng.choice(candidates)
        j = i + 1
    else:
        if len(set(words)) < 2:
            return None
        while True:
            i, j = rng.sample(range(len(words)), 2)
            if words[i] != words[j]:
                break
    words[i], words[j] = words[j], words[i]
    return words


def swapped_words_task(
    corpus,
    max_lines: int | None = None,
    min_words: int = 4,
    max_length: int | None = 64,
    adjacent: bool = False,
    seed: int = 0,
    max_vocabulary: int | None = None,
) -> ClassificationTask:
    """Detect a sentence in which two words were swapped (label 1) among originals (label 0).

    Each sentence of at least ``min_words`` words is used once: with probability 1/2 (seeded)
    two words holding different tokens are swapped (``adjacent=True``: two neighbours). The
    classes are balanced, so the majority baseline is about 50%.
    """
    rng = random.Random(seed)
    pretokenized = getattr(corpus, "pretokenized", False)
    splits = {}
    for split in ("train", "valid", "test"):
        examples = []
        lines = list(_limit(corpus.split(split), max_lines))
        tokenized = tokenize_lines(lines, "word", corpus.lowercase, pretokenized)
        for words in tokenized:
            words = truncate(words, max_length)
            if len(words) < min_words:
                continue
            label = rng.random() < 0.5
            swapped = swap_two_words(words, rng, adjacent) if label else None
            examples.append((swapped, 1) if swapped is not None else (words, 0))
        splits[split] = examples
    return classification_task(
        "swapped_words", splits, ("original", "swapped"), max_vocabulary, pretokenized=True
    )
