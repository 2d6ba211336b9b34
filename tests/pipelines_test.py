"""tf.data pipelines: shifting, padding, bucketing, splitting, TBPTT streams."""

import collections

import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm.data.pipelines import (
    sentence_dataset,
    sentence_windows,
    stream_batches,
    stream_dataset,
    token_stream,
)
from keras_rnnlm.data.vocabulary import BOS_ID, EOS_ID, Vocabulary

RNG = np.random.default_rng(0)
SENTENCES = [list(RNG.integers(4, 50, size=n)) for n in RNG.integers(1, 40, size=300)]


def _collect(dataset):
    pairs = []
    for x, y in dataset:
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape and x.dtype == np.int32
        np.testing.assert_array_equal(x == 0, y == 0)  # inputs and targets padded alike
        for xr, yr in zip(x, y):
            n = int((yr != 0).sum())
            assert np.all(yr[n:] == 0) and np.all(yr[:n] != 0)  # right padding only
            pairs.append((tuple(xr[:n]), tuple(yr[:n])))
    return pairs


def test_bucketing_keeps_every_real_token_exactly_once():
    pairs = _collect(sentence_dataset(SENTENCES, batch_size=16, max_length=None, seed=0))
    expected = collections.Counter((BOS_ID, *s) for s in SENTENCES)
    assert collections.Counter(x for x, _ in pairs) == expected
    for x, y in pairs:  # targets are inputs shifted by one, ending with <eos>
        assert y[:-1] == x[1:] and y[-1] == EOS_ID
    total_targets = sum(len(y) for _, y in pairs)
    assert total_targets == sum(len(s) + 1 for s in SENTENCES)


def test_batches_have_few_distinct_lengths():
    lengths = {
        np.asarray(x).shape[1]
        for x, _ in sentence_dataset(SENTENCES, batch_size=8, max_length=None)
    }
    assert len(lengths) <= 8


def test_long_sentences_are_split_not_truncated():
    long = [list(range(4, 29))]  # 25 tokens -> 26 predictions
    windows = sentence_windows(long, max_length=10)
    assert [len(w) - 1 for w in windows] == [10, 10, 6]
    # each window starts where the previous one ended: its first id is the previous window's
    # last target, so the targets are every token once, in order, then <eos>
    assert windows[0][0] == BOS_ID
    assert [w[0] for w in windows[1:]] == [w[-1] for w in windows[:-1]]
    targets = [t for w in windows for t in w[1:]]
    assert targets == [*range(4, 29), EOS_ID]
    pairs = _collect(sentence_dataset(long, batch_size=4, max_length=10))
    assert sorted(t for _, y in pairs for t in y) == sorted([*range(4, 29), EOS_ID])


def test_nothing_to_predict_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        sentence_dataset([], batch_size=2)


def test_stream_every_token_once_in_order():
    stream = token_stream(SENTENCES)
    inputs, targets = stream_batches(stream, batch_size=4, num_steps=5)
    row_length = len(stream) // 4
    for b in range(4):
        row_in = inputs[:, b, :].reshape(-1)  # batches in order, this row's windows
        row_tg = targets[:, b, :].reshape(-1)
        start = b * row_length
        np.testing.assert_array_equal(row_in, stream[start : start + len(row_in)])
        np.testing.assert_array_equal(row_tg, stream[start + 1 : start + 1 + len(row_tg)])
    assert inputs.size >= len(stream) - 4 * (5 + 1)  # only a tail shorter than a window is dropped
    ds = list(stream_dataset(SENTENCES, batch_size=4, num_steps=5))
    assert len(ds) == inputs.shape[0]
    np.testing.assert_array_equal(np.asarray(ds[1][0]), inputs[1])
    assert stream[len(SENTENCES[0])] == EOS_ID


def test_vocabulary_ids_and_round_trip(tmp_path):
    vocab = Vocabulary.build(["the cat sat .", "the dog"], level="word")
    assert vocab.tokens[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert vocab.encode("the cat zebra") == [4, vocab.token_to_id("cat"), 1]
    assert vocab.decode(vocab.encode("the cat")) == "the cat"
    lookup = vocab.lookup_layer()
    np.testing.assert_array_equal(
        np.asarray(lookup(["the", "cat", "zebra", "<eos>"])), [4, vocab.token_to_id("cat"), 1, 3]
    )
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json") == vocab
    chars = Vocabulary.build(["ab\n c"], level="char")
    chars.save(tmp_path / "c.json")
    assert Vocabulary.load(tmp_path / "c.json").decode(chars.encode("a \nc")) == "a \nc"


def test_stream_vocabulary_starts_sentences_with_eos(tmp_path):
    vocab = Vocabulary.build(["a b", "b c"], sentence_start="<eos>")
    assert vocab.start_id == EOS_ID and vocab.separates_with_eos
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json").start_id == EOS_ID
    assert vocab.decode([vocab.token_to_id("a"), EOS_ID, vocab.token_to_id("b")]) == "a\nb"
    windows = sentence_windows([[5, 6]], start_id=vocab.start_id)
    assert windows[0].tolist() == [EOS_ID, 5, 6, EOS_ID]
    with pytest.raises(ValueError, match="sentence_start"):
        Vocabulary(["a"], sentence_start="<s>")


def test_pipelines_switch_the_tf_data_autotuner_off():
    # with the autotuner on, deleting an iterator at the end of a fit() epoch can stall until
    # its thread's next wake-up (benchmarks/data_pipeline_stall.py); every pipeline opts out
    from keras_rnnlm.data.labelled import classification_dataset, tagging_dataset
    from keras_rnnlm.data.pipelines import PREFETCH_BATCHES, sentence_epochs

    assert tf.data.Dataset.range(3).prefetch(1).options().autotune.enabled is not False
    rows = [[5, 6, 7], [8, 9]]
    datasets = [
        sentence_dataset(SENTENCES, batch_size=8),
        sentence_epochs(SENTENCES, batch_size=8)[0],
        stream_dataset(SENTENCES, batch_size=4, num_steps=5),
        tagging_dataset(rows, [[1, 2, 1], [2, 1]], batch_size=2),
        classification_dataset(rows, [0, 1], batch_size=2),
    ]
    for dataset in datasets:
        assert dataset.options().autotune.enabled is False
        assert next(iter(dataset))[0].shape[0] > 0  # still yields batches
    assert PREFETCH_BATCHES >= 1
