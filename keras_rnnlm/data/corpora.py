"""Corpora, read the way a user would: TFDS builders with a manual directory, or text files.

* ``ptb``: Mikolov's Penn Treebank through the ``ptb`` TFDS builder defined here; it reads
  ``ptb.{train,valid,test}.txt`` from a manual directory and downloads them when online.
* ``tiny_shakespeare``: TFDS's own builder; give it the directory holding ``input.txt``.
* ``python_docs``: CPython's bundled documentation (``pydoc_data.topics``), always offline.
* text files: one sentence per line.
"""

import dataclasses
import os
import re
from pathlib import Path

DEFAULT_SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CORPORA = ("python_docs", "ptb", "tiny_shakespeare")


@dataclasses.dataclass
class Corpus:
    """Lines of text per split, and how to tokenise them."""

    name: str
    train: list[str]
    valid: list[str]
    test: list[str]
    level: str = "word"
    lowercase: bool = False
    pretokenized: bool = False
    closed_vocabulary: bool = False  # the corpus fixes its vocabulary (PTB: 10k words): keep it all

    def split(self, name: str) -> list[str]:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


def shared_data_dir() -> Path:
    """``$KERAS_RNNLM_DATA`` if set, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("KERAS_RNNLM_DATA", DEFAULT_SHARED_DATA))


def read_lines(path, errors: str = "strict") -> list[str]:
    """Lines of a UTF-8 text file.

    ``errors="strict"`` (default) rejects bytes that are not UTF-8 with a ``ValueError`` naming
    the file, line and byte; ``errors="replace"`` turns them into U+FFFD (then ``<unk>``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Text file not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8", errors=errors).splitlines()
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(
            f"{path} is not UTF-8: byte 0x{data[error.start]:02x} at line {line} "
            f"(offset {error.start}). Convert the file to UTF-8, or pass --encoding-errors "
            "replace to read such bytes as U+FFFD."
        ) from None


def python_docs_corpus(level: str = "word", documents: bool = False) -> Corpus:
    """CPython's bundled documentation, split 90/5/5 deterministically in blocks of 100 lines.

    Lines without a letter or digit (reStructuredText underlines) are dropped.

    Args:
        level: ``"word"`` or ``"char"``.
        documents: put a blank line wherever a new topic (one help page) starts inside a
            split, so that ``split_documents(lines, "blank")`` gives the topics as documents;
            the other lines (and the splits) are the same either way.
    """
    from pydoc_data.topics import topics

    lines, topic_of = [], []
    for index, name in enumerate(sorted(topics)):
        kept = [line.strip() for line in topics[name].splitlines()]
        kept = [line for line in kept if re.search(r"\w", line)]
        lines.extend(kept)
        topic_of.extend([index] * len(kept))
    splits = {"train": [], "valid": [], "test": []}
    for block_start in range(0, len(lines), 100):
        block = block_start // 100
        split = "valid" if block % 20 == 18 else "test" if block % 20 == 19 else "train"
        for i in range(block_start, min(block_start + 100, len(lines))):
            if documents and splits[split] and topic_of[i] != topic_of[i - 1]:
                splits[split].append("")
            splits[split].append(lines[i])
    return Corpus("python_docs", level=level, lowercase=(level == "word"), **splits)


#: ``split_documents`` boundary: blank (empty or all-space) lines separate documents.
BLANK_LINE = "blank"


def split_documents(lines: list[str], boundary: str = BLANK_LINE) -> list[list[str]]:
    """Group text lines into documents at boundary lines (which are dropped).

    Args:
        lines: text lines (``Corpus.train`` etc.: ``python_docs_corpus(documents=True)``,
            Tiny Shakespeare, whose blank lines separate speeches, or text files).
        boundary: ``"blank"``: blank lines separate documents (runs of them count once);
            any other string: a line that is exactly this token (after stripping spaces)
            separates documents, e.g. ``"<doc>"``.

    Returns:
        The documents, each a list of its (non-boundary) lines; empty documents are dropped.

    Example:

    >>> split_documents(["a b", "c", "", "d"])
    [['a b', 'c'], ['d']]
    """
    if not isinstance(boundary, str) or not boundary.strip():
        raise ValueError(f"boundary must be {BLANK_LINE!r} or a non-empty token, got {boundary!r}.")
    documents, current = [], []
    for line in lines:
        stripped = line.strip()
        if (not stripped) if boundary == BLANK_LINE else stripped == boundary.strip():
            if current:
                documents.append(current)
            current = []
        elif stripped or boundary != BLANK_LINE:
            current.append(line)
    if current:
        documents.append(current)
    return documents


def strip_document_boundaries(corpus: Corpus, boundary: str = BLANK_LINE) -> Corpus:
    """``corpus`` without its boundary lines (for building the vocabulary: a boundary token
    is not a word of the text). Blank lines carry no token, so ``"blank"`` changes nothing
    that ``encode_corpus`` or ``Vocabulary.build`` sees.

    Example:

    >>> strip_document_boundaries(corpus, "<doc>").train  # the lines of split_documents
    """
    lines = {
        name: [
            line for document in split_documents(corpus.split(name), boundary) for line in document
        ]
        for name in ("train", "valid", "test")
    }
    return dataclasses.replace(corpus, **lines)


def text_files_corpus(
    train_file, valid_file=None, test_file=None, level="word", lowercase=False, errors="strict"
) -> Corpus:
    """The user's own files, one sentence per line. Missing valid/test splits are empty.

    ``errors``: what to do with bytes that are not UTF-8 (``read_lines``).
    """
    return Corpus(
        name=Path(train_file).stem,
        train=read_lines(train_file, errors),
        valid=read_lines(valid_file, errors) if valid_file else [],
        test=read_lines(test_file, errors) if test_file else [],
        level=level,
        lowercase=lowercase,
    )


def _tfds_download_config(manual_dir):
    import tensorflow_datasets as tfds

    return tfds.download.DownloadConfig(manual_dir=str(manual_dir), try_download_gcs=False)


def _tfds_texts(name, data_dir, manual_dir, splits):
    import tensorflow_datasets as tfds

    from keras_rnnlm.data import ptb_builder  # noqa: F401  (registers the "ptb" builder)

    datasets = tfds.load(
        name,
        split=list(splits),
        data_dir=str(data_dir),
        download=True,
        download_and_prepare_kwargs={"download_config": _tfds_download_config(manual_dir)},
    )
    texts = []
    for ds in datasets:
        texts.append([ex["text"].decode("utf-8") for ex in tfds.as_numpy(ds)])
    return texts


def _default_tfds_data_dir() -> Path:
    return Path(os.environ.get("TFDS_DATA_DIR", Path.home() / "tensorflow_datasets"))


def ptb_corpus(manual_dir=None, data_dir=None) -> Corpus:
    """Penn Treebank (word level, already tokenised and lower-cased; ``<unk>`` is id 1)."""
    manual_dir = Path(manual_dir) if manual_dir else shared_data_dir() / "ptb"
    data_dir = data_dir or _default_tfds_data_dir()
    train, valid, test = _tfds_texts("ptb", data_dir, manual_dir, ["train", "validation", "test"])
    return Corpus(
        "ptb",
        train=train,
        valid=valid,
        test=test,
        level="word",
        pretokenized=True,
        closed_vocabulary=True,
    )


def tiny_shakespeare_corpus(manual_dir=None, data_dir=None, level="char") -> Corpus:
    """TFDS ``tiny_shakespeare`` (one text per split), cut into lines."""
    manual_dir = Path(manual_dir) if manual_dir else shared_data_dir() / "tiny_shakespeare"
    data_dir = data_dir or _default_tfds_data_dir()
    texts = _tfds_texts("tiny_shakespeare", data_dir, manual_dir, ["train", "validation", "test"])
    train, valid, test = ([line for t in split for line in t.splitlines()] for split in texts)
    return Corpus("tiny_shakespeare", train=train, valid=valid, test=test, level=level)


def load_corpus(
    name: str, manual_dir=None, data_dir=None, level: str | None = None, documents: bool = False
) -> Corpus:
    """Load a named corpus: ``python_docs``, ``ptb`` or ``tiny_shakespeare``.

    ``documents``: python_docs topics separated by blank lines (``python_docs_corpus``); Tiny
    Shakespeare's blank lines already separate its speeches, PTB has no document marks.
    """
    if name == "python_docs":
        return python_docs_corpus(level or "word", documents=documents)
    if name == "ptb":
        if level == "char":
            raise ValueError("The ptb corpus is word level; use --level word.")
        return ptb_corpus(manual_dir, data_dir)
    if name == "tiny_shakespeare":
        return tiny_shakespeare_corpus(manual_dir, data_dir, level or "char")
    raise ValueError(f"Unknown corpus {name!r}; expected one of {CORPORA} or text files.")
