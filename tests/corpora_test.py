"""Corpora: the embedded python_docs split, and the shared corpora through TFDS manual dirs."""

import hashlib

import pytest

from keras_rnnlm.data.corpora import load_corpus, python_docs_corpus, text_files_corpus


def test_python_docs_split_is_deterministic_and_disjoint():
    a, b = python_docs_corpus(), python_docs_corpus()
    assert a.train == b.train and a.valid == b.valid and a.test == b.test
    assert len(a.valid) > 200 and len(a.test) > 200 and len(a.train) > 10 * len(a.valid)
    assert all(line.strip() for line in a.train)


def test_text_files_and_missing_file(tmp_path):
    (tmp_path / "t.txt").write_text("a b\n\nc d e\n")
    corpus = text_files_corpus(tmp_path / "t.txt")
    assert corpus.train == ["a b", "", "c d e"] and corpus.valid == []
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        text_files_corpus(tmp_path / "nope.txt")


def test_unknown_corpus():
    with pytest.raises(ValueError, match="Unknown corpus"):
        load_corpus("wikitext")


@pytest.mark.shared_data
def test_ptb_through_tfds_manual_dir(ptb_dir, tmp_path):
    corpus = load_corpus("ptb", manual_dir=ptb_dir, data_dir=tmp_path)
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (42068, 3370, 3761)
    assert sum(len(line.split()) for line in corpus.train) == 887521
    # file order is kept (stream training reads the corpus as one text)
    first = (ptb_dir / "ptb.train.txt").read_text().splitlines()[0].strip()
    assert corpus.train[0] == first


@pytest.mark.shared_data
def test_tiny_shakespeare_through_tfds_manual_dir(shakespeare_dir, tmp_path):
    digest = hashlib.sha256((shakespeare_dir / "input.txt").read_bytes()).hexdigest()
    assert digest.startswith("86c4e6aa")
    corpus = load_corpus("tiny_shakespeare", manual_dir=shakespeare_dir, data_dir=tmp_path)
    assert corpus.level == "char"
    assert corpus.train[0] == "First Citizen:"
    chars = sum(
        len(line) + 1 for split in (corpus.train, corpus.valid, corpus.test) for line in split
    )
    assert abs(chars - 1115394) < 10  # every character, newlines included
