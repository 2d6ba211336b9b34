"""Derived labelled tasks and the offline CoNLL-2003 / IMDB loaders (never the network)."""

import io
import random
import tarfile

import numpy as np
import pytest

from keras_rnnlm.data.corpora import Corpus, load_corpus
from keras_rnnlm.data.labelled import (
    CASE_TAGS,
    case_class,
    classification_dataset,
    load_conll2003,
    load_imdb_reviews,
    segment_labels,
    segmentation_task,
    swap_two_words,
    swapped_words_task,
    tagging_dataset,
    truecasing_task,
    unsegment,
)
from keras_rnnlm.data.pipelines import pad_rows

LINES = ["First Citizen:", "Before we proceed any further, hear me speak.", "All:", "Speak, speak."]
CORPUS = Corpus("toy", train=LINES * 3, valid=LINES[:2], test=LINES[2:])


def test_segment_labels_round_trip():
    chars, tags = segment_labels("hear me  speak.")
    assert chars == "hearmespeak."
    assert tags == [1, 1, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2]
    assert unsegment(chars, tags) == "hear me speak."


def test_segmentation_task_aligns_inputs_and_tags():
    task = segmentation_task(CORPUS, max_length=20)
    assert task.num_tags == 3 and task.tag_names[0] == "<pad>"
    for inputs, tags in zip(*task.train):
        assert len(inputs) == len(tags) <= 20 and 0 not in inputs and set(tags) <= {1, 2}
    text = task.vocabulary.decode(task.test[0][1])
    assert unsegment(text, task.test[1][1]) == "Speak, speak."


def test_case_classes_and_truecasing_task():
    assert [case_class(w) for w in ["the", "The", "THE", "McDonald", "I", "42", ","]] == [
        1,
        2,
        3,
        4,
        2,
        1,
        1,
    ]
    task = truecasing_task(CORPUS)
    assert task.tag_names == CASE_TAGS
    inputs, tags = task.train
    first = task.vocabulary.decode(inputs[0])
    assert first == "first citizen :" and tags[0] == [2, 2, 1]


def test_swap_two_words_changes_exactly_two_positions():
    rng = random.Random(0)
    words = "the cat sat on the mat".split()
    for adjacent in (False, True):
        swapped = swap_two_words(words, rng, adjacent)
        diff = [i for i, (a, b) in enumerate(zip(words, swapped)) if a != b]
        assert len(diff) == 2 and sorted(swapped) == sorted(words)
        assert not adjacent or diff[1] == diff[0] + 1
    assert swap_two_words(["a", "a", "a"], rng) is None


def test_swapped_words_task_is_balanced_and_labels_are_true():
    lines = [f"w{i} w{i + 1} w{i + 2} w{i + 3} w{i + 4}" for i in range(200)]
    corpus = Corpus("toy", train=lines, valid=lines[:50], test=lines[50:150], pretokenized=True)
    task = swapped_words_task(corpus, seed=1)
    inputs, labels = task.train
    assert 0.35 < labels.mean() < 0.65
    for ids, label in zip(inputs, labels):
        numbers = [int(task.vocabulary.tokens[i][1:]) for i in ids]
        assert (numbers != sorted(numbers)) == bool(label)
    assert 0.35 < task.majority_baseline("test") < 0.65


def test_datasets_pad_with_zero():
    task = segmentation_task(CORPUS)
    x, y = next(iter(tagging_dataset(*task.train, batch_size=4, max_length=50, shuffle=False)))
    assert x.shape == y.shape == (4, 50)
    assert np.all((x.numpy() == 0) == (y.numpy() == 0))
    ds = classification_dataset([[4, 5], [6]], [1, 0], batch_size=2, shuffle=False)
    x, y = next(iter(ds))
    np.testing.assert_array_equal(x, [[4, 5], [6, 0]])
    np.testing.assert_array_equal(y, [1, 0])


def test_pad_rows_right_pads_and_cuts():
    np.testing.assert_array_equal(pad_rows([[5, 6, 7], [8], []]), [[5, 6, 7], [8, 0, 0], [0, 0, 0]])
    cut = pad_rows([[5, 6, 7], (8,)], length=2)
    np.testing.assert_array_equal(cut, [[5, 6], [8, 0]])
    assert cut.dtype == np.int32
    assert pad_rows([]).shape == (0, 0)
    # a too-long tagging example is cut to max_length in inputs and tags alike
    x, y = next(iter(tagging_dataset([[4, 5, 6]], [[1, 2, 1]], max_length=2, shuffle=False)))
    np.testing.assert_array_equal(x, [[4, 5]])
    np.testing.assert_array_equal(y, [[1, 2]])


def test_segmentation_on_tiny_shakespeare(shakespeare_dir, tmp_path):
    corpus = load_corpus("tiny_shakespeare", manual_dir=shakespeare_dir, data_dir=tmp_path)
    task = segmentation_task(corpus, max_lines=200)
    assert len(task.train[0]) == 200 and len(task.test[0]) > 0
    assert " " not in task.vocabulary.tokens


def test_swapped_words_on_ptb(ptb_dir, tmp_path):
    corpus = load_corpus("ptb", manual_dir=ptb_dir, data_dir=tmp_path)
    task = swapped_words_task(corpus, max_lines=300)
    assert len(task.train[0]) > 200
    assert 0.35 < task.train[1].mean() < 0.65


# --- offline loaders: tiny manual directories in the builders' raw formats ------------------

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_load_conll2003_from_manual_dir(tmp_path):
    for name in ("train.txt", "valid.txt", "test.txt"):
        (tmp_path / name).write_text(CONLL, encoding="utf-8")
    task = load_conll2003(manual_dir=tmp_path)
    inputs, tags = task.train
    assert len(inputs) == 2
    assert task.vocabulary.decode(inputs[1]) == "Peter Blackburn"
    names = [[task.tag_names[t] for t in sentence] for sentence in tags]
    assert names == [["B-ORG", "O", "B-MISC", "O", "O"], ["B-PER", "I-PER"]]
    assert task.tag_names[0] == "<pad>" and task.num_tags == 10


def test_load_conll2003_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_conll2003(manual_dir=tmp_path)


REVIEWS = {
    "aclImdb/train/pos/0_9.txt": "A great film.<br />Loved it.",
    "aclImdb/train/pos/1_8.txt": "Wonderful acting.",
    "aclImdb/train/neg/2_1.txt": "Terrible plot, awful.",
    "aclImdb/train/neg/3_2.txt": "Boring.",
    "aclImdb/train/unsup/4_0.txt": "not labelled",
    "aclImdb/test/pos/5_10.txt": "Great great great.",
    "aclImdb/test/neg/6_1.txt": "Awful.",
}


@pytest.mark.parametrize("as_archive", [False, True])
def test_load_imdb_reviews_from_manual_dir(tmp_path, as_archive):
    if as_archive:
        with tarfile.open(tmp_path / "aclImdb_v1.tar.gz", "w:gz") as tar:
            for name, text in REVIEWS.items():
                data = text.encode("utf-8")
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        for name, text in REVIEWS.items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    task = load_imdb_reviews(manual_dir=tmp_path, valid_fraction=0.25)
    assert task.class_names == ("neg", "pos")
    assert len(task.train[0]) == 3 and len(task.valid[0]) == 1 and len(task.test[0]) == 2
    test_texts = sorted(
        ((task.vocabulary.decode(x), int(y)) for x, y in zip(task.test[0], task.test[1])),
        key=lambda pair: pair[1],
    )
    # words only in the review drawn for validation are out of vocabulary (<unk>)
    assert [y for _, y in test_texts] == [0, 1]
    assert [len(t.split()) for t, _ in test_texts] == [2, 4]
    full = load_imdb_reviews(manual_dir=tmp_path, valid_fraction=0.0)
    assert len(full.train[0]) == 4
    texts = sorted(full.vocabulary.decode(x) for x in full.test[0])
    assert texts == ["awful .", "great great great ."]
    all_train = [task.vocabulary.decode(x) for x in task.train[0] + task.valid[0]]
    assert not any("br" in t.split() for t in all_train)  # <br /> removed
