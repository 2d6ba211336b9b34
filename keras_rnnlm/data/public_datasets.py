"""Loaders for two public labelled data sets: CoNLL-2003 NER and IMDB reviews.

Online, they call ``tfds.load``. Neither TFDS builder can read a manual directory
(``conll2003`` has no registered checksum, so the download manager never looks in the manual
directory, and ``imdb_reviews`` checks the archive's SHA-256), so with ``manual_dir`` these
loaders read the raw files directly, in the format the TFDS builders parse: CoNLL-2003
``train.txt``/``valid.txt``/``test.txt`` (``token POS chunk NER`` per line, blank lines and
``-DOCSTART-`` between sentences), and IMDB's extracted ``aclImdb/{train,test}/{pos,neg}/*.txt``
(or the ``aclImdb_v1.tar.gz`` archive). ``keras_rnnlm.data.labelled`` re-exports every name.
"""

import random
import re
import tarfile
from pathlib import Path

from keras_rnnlm.data.task_data import (
    ClassificationTask,
    TaggingTask,
    classification_task,
    most_frequent,
    truncate,
)
from keras_rnnlm.data.vocabulary import Vocabulary, tokenize

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
        most_frequent((t for tokens, _ in splits["train"] for t in tokens), max_vocabulary),
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
        return truncate(tokenize(text.replace("<br />", " "), "word", lowercase=True), max_length)

    tokenized = {split: [(words(t), y) for t, y in examples] for split, examples in splits.items()}
    return classification_task(
        "imdb_reviews", tokenized, IMDB_LABELS, max_vocabulary, lowercase=True
    )
