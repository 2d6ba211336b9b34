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

Loaders: ``load_conll2003`` and ``load_imdb_reviews``. Online, they call ``tfds.load``. Neither
TFDS builder can read a manual directory (``conll2003`` has no registered checksum, so the
download manager never looks in the manual directory, and ``imdb_reviews`` checks the archive's
SHA-256), so with ``manual_dir`` these loaders read the raw files directly, in the format the
TFDS builders parse: CoNLL-2003 ``train.txt``/``valid.txt``/``test.txt`` (``token POS chunk NER``
per line, blank lines and ``-DOCSTART-`` between sentences), and IMDB's extracted
``aclImdb/{train,test}/{pos,neg}/*.txt`` (or the ``aclImdb_v1.tar.gz`` archive).
"""

import dataclasses
import random
import re
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_rnnlm.data.pipelines import prefetched
from keras_rnnlm.data.vocabulary import Vocabulary, tokenize

SEGMENTATION_TAGS = ("<pad>", "IN", "END")
CASE_TAGS = ("<pad>", "lower", "Title", "UPPER", "miXed")
CONLL2003_NER_TAGS = (
    "O",
    "B-PER",
    "I-PER",
    "B-ORG",
    "I-ORG",
    "B-LOC",
    "I-LOC",
    "B-MISC",
    "I-MISC",
)
IMDB_LABELS = ("neg", "pos")


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


def _truncate(ids, max_length):
    return ids if max_length is None else ids[:max_length]


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
        tags = [_truncate(t, max_length) for _, t in pairs]
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
        words = [tokenize(line, "word") for line in _limit(corpus.split(split), max_lines)]
        splits[split] = [_truncate(w, max_length) for w in words if w]
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
        for line in _limit(corpus.split(split), max_lines):
            words = tokenize(line, "word", lowercase=corpus.lowercase, pretokenized=pretokenized)
            words = _truncate(words, max_length)
            if len(words) < min_words:
                continue
            label = rng.random() < 0.5
            swapped = swap_two_words(words, rng, adjacent) if label else None
            examples.append((swapped, 1) if swapped is not None else (words, 0))
        splits[split] = examples
    return _classification_task(
        "swapped_words", splits, ("original", "swapped"), max_vocabulary, pretokenized=True
    )


def _classification_task(name, splits, class_names, max_vocabulary, **vocabulary_kwargs):
    """A ``ClassificationTask`` from ``{split: [(words, label), ...]}``; the vocabulary holds
    the ``max_vocabulary`` most frequent training words."""
    vocabulary = Vocabulary(
        _most_frequent((w for words, _ in splits["train"] for w in words), max_vocabulary),
        level="word",
        **vocabulary_kwargs,
    )
    out = {}
    for split, examples in splits.items():
        inputs = [[vocabulary.token_to_id(w) for w in words] for words, _ in examples]
        out[split] = (inputs, np.array([label for _, label in examples], dtype=np.int32))
    return ClassificationTask(name, vocabulary, class_names, **out)


def _most_frequent(tokens, max_size):
    import collections

    counts = collections.Counter(tokens)
    kept = [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return kept if max_size is None else kept[: max(0, max_size - 4)]


# --- tf.data ---------------------------------------------------------------------------------


def _pad(rows, length):
    out = np.zeros((len(rows), length), dtype=np.int32)
    for i, row in enumerate(rows):
        row = list(row)[:length]
        out[i, : len(row)] = row
    return out


def tagging_dataset(
    inputs, tags, batch_size=32, max_length=None, shuffle=True, seed=None
) -> tf.data.Dataset:
    """Batches of ``(token_ids, tag_ids)``, int32 ``(batch, max_length)``, right-padded with 0.

    Every batch has the same length (the longest example, or ``max_length``), so an
    XLA-compiled step compiles once.
    """
    length = max_length or max(len(x) for x in inputs)
    x, y = _pad(inputs, length), _pad(tags, length)
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
    x = _pad(inputs, length)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.asarray(labels, np.int32)))
    if shuffle:
        dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return prefetched(dataset.batch(batch_size))


# --- CoNLL-2003 and IMDB ----------------------------------------------------------------------

CONLL2003_FILES = {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}
_CONLL_TFDS_SPLITS = {"train": "train", "valid": "dev", "test": "test"}


def read_conll(path) -> list[tuple[list[str], list[str]]]:
    """``(tokens, ner_tags)`` per sentence of a CoNLL-2003 file (``token POS chunk NER``)."""
    sentences, tokens, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("-DOCSTART-") or not line.strip():
                if tokens:
                    sentences.append((tokens, tags))
                    tokens, tags = [], []
                continue
            columns = line.split(" ")
            if len(columns) != 4:
                raise ValueError(f"{path}: expected 4 space-separated columns, got {line!r}")
            tokens.append(columns[0])
            tags.append(columns[3].rstrip())
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def load_conll2003(
    manual_dir=None, data_dir=None, max_vocabulary: int | None = 20000
) -> TaggingTask:
    """CoNLL-2003 named entities as a ``TaggingTask`` (tags: 0 padding, then ``O``, ``B-PER``...).

    With ``manual_dir`` (holding ``train.txt``, ``valid.txt``, ``test.txt``) the files are read
    directly; otherwise ``tfds.load("conll2003")`` downloads the data (needs internet).
    """
    if manual_dir is not None:
        splits = {}
        for split, name in CONLL2003_FILES.items():
            path = Path(manual_dir) / name
            if not path.is_file():
                raise FileNotFoundError(f"CoNLL-2003 manual directory lacks {path}")
            splits[split] = read_conll(path)
    else:  # pragma: no cover - needs the network
        import tensorflow_datasets as tfds

        splits = {}
        for split, tfds_split in _CONLL_TFDS_SPLITS.items():
            ds = tfds.load("conll2003", split=tfds_split, data_dir=data_dir)
            splits[split] = [
                (
                    [t.decode("utf-8") for t in ex["tokens"]],
                    [CONLL2003_NER_TAGS[i] for i in ex["ner"]],
                )
                for ex in tfds.as_numpy(ds)
            ]
    vocabulary = Vocabulary(
        _most_frequent((t for tokens, _ in splits["train"] for t in tokens), max_vocabulary),
        level="word",
        pretokenized=True,
    )
    tag_ids = {name: i + 1 for i, name in enumerate(CONLL2003_NER_TAGS)}
    out = {}
    for split, sentences in splits.items():
        inputs = [[vocabulary.token_to_id(t) for t in tokens] for tokens, _ in sentences]
        tags = [[tag_ids[t] for t in sentence_tags] for _, sentence_tags in sentences]
        out[split] = (inputs, tags)
    return TaggingTask("conll2003", vocabulary, ("<pad>", *CONLL2003_NER_TAGS), **out)


_IMDB_PATH = re.compile(r"^aclImdb/(train|test)/(neg|pos)/[^/]+\.txt$")


def _imdb_raw(manual_dir) -> dict[str, list[tuple[str, int]]]:
    manual_dir = Path(manual_dir)
    splits = {"train": [], "test": []}
    extracted = manual_dir / "aclImdb"
    if extracted.is_dir():
        for path in sorted(extracted.glob("*/*/*.txt")):
            match = _IMDB_PATH.match(path.relative_to(manual_dir).as_posix())
            if match:
                text = path.read_text(encoding="utf-8").strip()
                splits[match[1]].append((text, IMDB_LABELS.index(match[2])))
        return splits
    archive = manual_dir / "aclImdb_v1.tar.gz"
    if not archive.is_file():
        raise FileNotFoundError(f"{manual_dir} holds neither aclImdb/ nor aclImdb_v1.tar.gz")
    with tarfile.open(archive) as tar:
        for member in tar:
            match = _IMDB_PATH.match(member.name)
            if match and member.isfile():
                text = tar.extractfile(member).read().decode("utf-8").strip()
                splits[match[1]].append((text, IMDB_LABELS.index(match[2])))
    return splits


def load_imdb_reviews(
    manual_dir=None,
    data_dir=None,
    max_vocabulary: int | None = 20000,
    max_length: int | None = 400,
    valid_fraction: float = 0.1,
    seed: int = 0,
) -> ClassificationTask:
    """IMDB movie-review sentiment (0 neg, 1 pos) as a ``ClassificationTask``.

    With ``manual_dir`` (holding the extracted ``aclImdb/`` tree or ``aclImdb_v1.tar.gz``) the
    files are read directly; otherwise ``tfds.load("imdb_reviews")`` downloads them (needs
    internet). A seeded ``valid_fraction`` of train becomes the validation split. Reviews are
    lower-cased, ``<br />`` removed, tokenised into words and cut to ``max_length`` words.
    """
    if manual_dir is not None:
        raw = _imdb_raw(manual_dir)
    else:  # pragma: no cover - needs the network
        import tensorflow_datasets as tfds

        raw = {}
        for split in ("train", "test"):
            ds = tfds.load("imdb_reviews", split=split, data_dir=data_dir)
            raw[split] = [
                (ex["text"].decode("utf-8"), int(ex["label"])) for ex in tfds.as_numpy(ds)
            ]
    rng = random.Random(seed)
    train = list(raw["train"])
    rng.shuffle(train)
    n_valid = int(round(len(train) * valid_fraction))
    splits = {"train": train[n_valid:], "valid": train[:n_valid], "test": raw["test"]}

    def words(text):
        return _truncate(tokenize(text.replace("<br />", " "), "word", lowercase=True), max_length)

    tokenized = {split: [(words(t), y) for t, y in examples] for split, examples in splits.items()}
    return _classification_task(
        "imdb_reviews", tokenized, IMDB_LABELS, max_vocabulary, lowercase=True
    )
