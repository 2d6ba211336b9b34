"""tf.data pipelines: sentence batches (teacher forcing, padded, bucketed) and TBPTT streams.

Sentence mode (the lecture's "SGD on batches of sentences")::

    <bos> the cat sat <eos>  ->  inputs  <bos> the cat sat      targets  the cat sat <eos>

Each sentence becomes one example, right-padded with 0 inside its batch; batches group
sentences of similar length (``bucket_by_sequence_length``) so little compute is spent on
padding. Sentences longer than ``max_length`` predictions are split into consecutive windows
that overlap by one token, so every target is still predicted exactly once.

Stream mode (truncated back-propagation through time, Zaremba et al. 2014): the corpus is one
token stream (``<eos>`` after every sentence), cut into ``batch_size`` parallel rows and then
into ``num_steps`` windows; window ``i + 1`` of a row continues window ``i``, so a stateful
model can carry its state across batches.

Document streams (stream mode with ``--document-boundary``): the same stream, plus a per-token
``reset`` (``document_stream``) that is 1 at the ``<eos>`` just before each document's first
token, where the model's states are zeroed: that ``<eos>`` then starts the document like the
start token of a stream-trained model, and nothing of the previous document reaches it.
Batches are ``({"token_ids": inputs, "reset": resets}, targets)`` (``document_stream_dataset``).
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_rnnlm.backbone import RESET_KEY, TOKEN_IDS_KEY
from keras_rnnlm.data.corpora import BLANK_LINE, split_documents
from keras_rnnlm.data.fit_inputs import without_autotuner
from keras_rnnlm.data.vocabulary import BOS_ID, EOS_ID

PREFETCH_BATCHES = 2  # batches prepared ahead of the model (the pipelines are cheap)


def prefetched(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset.prefetch(PREFETCH_BATCHES)`` with tf.data's autotuner switched off.

    Why off: the autotuner's thread wakes after 10, 20, 40, ... ms (period capped at 60 s), and
    deleting an iterator, which ``model.fit`` does after every epoch and every validation
    pass, can block until that thread's next wake-up. Measured here
    (``python benchmarks/data_pipeline_stall.py``, 50-batch epochs of about 1.4 s): with the
    autotuner 5 of 10 epochs stalled about 1.1 s, ending at 2.55 s = 10 x (2**8 - 1) ms after
    the iterator was created; with these options 0 of 10. A stall can reach the 60 s period on
    long epochs. These pipelines (slices of in-memory arrays, padding) have nothing to tune.
    """
    return without_autotuner(dataset.prefetch(PREFETCH_BATCHES))


def encode_corpus(vocabulary, sentences: Sequence[str]) -> list[list[int]]:
    """Encode text lines into id lists; empty lines are dropped."""
    return [ids for ids in vocabulary.encode_batch(list(sentences)) if ids]


def encode_documents(
    vocabulary, lines: Sequence[str], boundary: str = BLANK_LINE
) -> list[list[list[int]]]:
    """Encode text lines into documents of sentences (id lists), split at ``boundary``.

    Args:
        vocabulary: a ``Vocabulary``.
        lines: text lines, documents separated by boundary lines (``split_documents``).
        boundary: ``"blank"`` (blank lines separate documents) or a token: a line that is
            exactly that token (after stripping spaces) separates documents.

    Returns:
        One list of sentence id lists per document; empty sentences and documents dropped.

    Example:

    >>> encode_documents(vocab, ["the cat", "", "a dog"])  # [[[4, 5]], [[6, 7]]]
    """
    documents = [encode_corpus(vocabulary, lines) for lines in split_documents(lines, boundary)]
    return [document for document in documents if document]


def sentence_windows(
    sentences: Sequence[Sequence[int]], max_length: int | None = None, start_id: int = BOS_ID
) -> list[np.ndarray]:
    """``<bos> ids <eos>`` per sentence, split into windows of at most ``max_length + 1`` ids.

    ``start_id`` replaces ``<bos>`` (``<eos>`` for a stream-trained model, see
    ``Vocabulary.sentence_start``).

    A window of ``n`` ids gives ``n - 1`` predictions; consecutive windows share one id so
    that no target is lost or repeated. Windows with fewer than 2 ids predict nothing and are
    dropped.
    """
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}.")
    windows = []
    for ids in sentences:
        seq = np.asarray([start_id, *ids, EOS_ID], dtype=np.int32)
        if max_length is None or len(seq) <= max_length + 1:
            windows.append(seq)
            continue
        for start in range(0, len(seq) - 1, max_length):
            window = seq[start : start + max_length + 1]
            if len(window) >= 2:
                windows.append(window)
    return windows


def default_bucket_boundaries(lengths: Sequence[int], num_buckets: int = 8) -> list[int]:
    """Bucket boundaries at quantiles of the example lengths, the last one above the longest.

    Batches are padded to their bucket's boundary, so a dataset has at most ``num_buckets``
    distinct time lengths: an XLA-compiled ``train_step`` compiles once per length instead of
    once per batch.
    """
    if len(lengths) == 0:
        return [2]
    lengths = np.asarray(lengths)
    quantiles = np.quantile(lengths, np.linspace(0, 1, num_buckets + 1)[1:-1])
    return sorted({int(q) + 1 for q in quantiles} | {int(lengths.max()) + 1})


def sentence_dataset(
    sentences: Sequence[Sequence[int]],
    batch_size: int = 32,
    max_length: int | None = 100,
    shuffle: bool = True,
    seed: int | None = None,
    bucket_boundaries: Sequence[int] | None = None,
    drop_remainder: bool = False,
    start_id: int = BOS_ID,
) -> tf.data.Dataset:
    """Batches of ``(inputs, targets)``, int32 ``(batch, time)``, right-padded with 0.

    Args:
        sentences: id lists without boundary tokens (from ``encode_corpus``).
        batch_size: sentences per batch.
        max_length: longest number of predictions per example; longer sentences are split.
        shuffle: shuffle examples (before bucketing) each epoch.
        seed: makes the shuffle order reproducible.
        bucket_boundaries: example-length boundaries, the last one above the longest
            example; batches are padded to their bucket's boundary minus one. Default:
            ``default_bucket_boundaries`` of the data.
        drop_remainder: drop incomplete batches (needed for fixed shapes, e.g. TPU).
        start_id: first id of every sentence (``vocabulary.start_id``).
    """
    windows, lengths = _windows_and_lengths(sentences, batch_size, max_length, start_id)
    ragged = tf.RaggedTensor.from_row_lengths(np.concatenate(windows), lengths + 1)
    dataset = tf.data.Dataset.from_tensor_slices(ragged)
    if shuffle:
        dataset = dataset.shuffle(len(windows), seed=seed, reshuffle_each_iteration=True)
    if bucket_boundaries is None:
        bucket_boundaries = default_bucket_boundaries(lengths)
    elif lengths.max() >= max(bucket_boundaries):
        raise ValueError(
            f"An example has {lengths.max()} predictions, more than the last bucket boundary "
            f"({max(bucket_boundaries)}) allows: give a last boundary above {lengths.max()} or a "
            f"smaller max_length (longer sentences are then split)."
        )
    dataset = _pad_in_buckets(dataset, batch_size, bucket_boundaries, drop_remainder)
    # bucketing hides the number of batches from tf.data; stating it lets Keras size an epoch
    # (without it ``fit`` warns "Your input ran out of data" at the end of the first epoch)
    num_batches = _num_batches(lengths, bucket_boundaries, batch_size, drop_remainder)
    return prefetched(dataset.apply(tf.data.experimental.assert_cardinality(num_batches)))


def sentence_epochs(
    sentences: Sequence[Sequence[int]],
    batch_size: int = 32,
    max_length: int | None = 100,
    seed: int = 0,
    first_epoch: int = 0,
    steps_per_epoch: int | None = None,
    start_id: int = BOS_ID,
) -> tuple[tf.data.Dataset, int]:
    """Shuffled sentence batches for ``model.fit`` whose order is a function of the epoch.

    Epoch ``e`` is shuffled with the seed ``(seed, e)``, so a run resumed at ``first_epoch``
    (``keras_rnnlm.checkpoints``) sees exactly the batches an uninterrupted run sees. Batches
    are as in ``sentence_dataset`` (padded, bucketed).

    Returns:
        ``(dataset, steps_per_epoch)``: an endless dataset starting at ``first_epoch``, and
        the number of batches to pass to ``fit(steps_per_epoch=...)`` (one pass over the data,
        unless ``steps_per_epoch`` is given: then epochs are slices of that many batches of
        the endless sequence of shuffled passes).
    """
    windows, lengths = _windows_and_lengths(sentences, batch_size, max_length, start_id)
    ragged = tf.RaggedTensor.from_row_lengths(np.concatenate(windows), lengths + 1)
    boundaries = default_bucket_boundaries(lengths)
    batches_per_pass = _num_batches(lengths, boundaries, batch_size, drop_remainder=False)
    seed = tf.constant(seed, tf.int64)

    def one_pass(index):  # pass ``index`` over the data, shuffled with the seed (seed, index)
        keys = tf.random.stateless_uniform([len(windows)], seed=tf.stack([seed, index]))
        order = tf.data.Dataset.from_tensor_slices(tf.argsort(keys))
        dataset = order.map(lambda i: ragged[i])
        return _pad_in_buckets(dataset, batch_size, boundaries, drop_remainder=False)

    steps = steps_per_epoch or batches_per_pass
    first_batch = first_epoch * steps
    first_pass, skip = divmod(first_batch, batches_per_pass)
    dataset = tf.data.Dataset.range(first_pass, 2**62).flat_map(one_pass).skip(skip)
    return prefetched(dataset), steps


def _windows_and_lengths(sentences, batch_size, max_length, start_id):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    windows = sentence_windows(sentences, max_length, start_id)
    if not windows:
        raise ValueError("No sentence has anything to predict: the corpus is empty.")
    lengths = np.array([len(w) - 1 for w in windows], dtype=np.int64)  # predictions per example
    return windows, lengths


def _num_batches(lengths, bucket_boundaries, batch_size, drop_remainder) -> int:
    """Batches ``_pad_in_buckets`` makes of examples with ``lengths`` predictions."""
    buckets = np.bincount(np.searchsorted(list(bucket_boundaries), lengths, side="right"))
    if drop_remainder:
        return int(sum(count // batch_size for count in buckets))
    return int(sum(-(-count // batch_size) for count in buckets))


def _pad_in_buckets(dataset, batch_size, bucket_boundaries, drop_remainder):
    """``seq -> (seq[:-1], seq[1:])``, batched by length bucket, padded to the boundary."""
    dataset = dataset.map(lambda seq: (seq[:-1], seq[1:]))
    bucket_boundaries = list(bucket_boundaries)
    return dataset.bucket_by_sequence_length(
        element_length_func=lambda x, y: tf.shape(x)[0],
        bucket_boundaries=bucket_boundaries,
        bucket_batch_sizes=[batch_size] * (len(bucket_boundaries) + 1),
        padded_shapes=([None], [None]),
        padding_values=(0, 0),
        pad_to_bucket_boundary=True,
        drop_remainder=drop_remainder,
    )


def token_stream(sentences: Sequence[Sequence[int]]) -> np.ndarray:
    """The corpus as one stream: every sentence followed by ``<eos>`` (Mikolov/Zaremba)."""
    parts = [np.asarray([*ids, EOS_ID], dtype=np.int32) for ids in sentences]
    return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


def document_stream(documents: Sequence[Sequence[Sequence[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """The documents as one token stream and its per-token resets.

    Args:
        documents: lists of sentence id lists (``encode_documents``).

    Returns:
        ``(stream, reset)``: ``stream`` is ``token_stream`` of all the sentences in order (the
        same tokens and targets as without documents); ``reset`` int32, same length, is 1 at
        position 0 and at the ``<eos>`` before each later document's first token (a model reads
        that ``<eos>`` from zero states, so document ``k`` is scored as ``<eos> document``
        alone), 0 elsewhere.

    Example:

    >>> document_stream([[[5, 6]], [[7]]])
    (array([5, 6, 3, 7, 3], dtype=int32), array([1, 0, 1, 0, 0], dtype=int32))
    """
    lengths = [sum(len(ids) + 1 for ids in document) for document in documents]
    stream = token_stream([ids for document in documents for ids in document])
    reset = np.zeros(len(stream), np.int32)
    if len(stream):
        reset[0] = 1
        reset[np.cumsum(lengths)[:-1] - 1] = 1  # each later document's preceding <eos>
    return stream, reset


def encode_stream(
    vocabulary, lines: Sequence[str], document_boundary: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Text lines as one token stream, split into documents when a boundary is given.

    The one reader of a text as a stream for evaluation (``keras_rnnlm.runs.score_text_units``,
    ``keras_rnnlm.dynamic_evaluation``): the same semantics as training's
    ``--document-boundary`` (``split_documents``, ``encode_documents``, ``document_stream``).

    Args:
        vocabulary: a ``Vocabulary``.
        lines: text lines, one sentence per line.
        document_boundary: None: no documents (``token_stream`` of the non-empty lines, no
            resets); ``"blank"``: blank lines separate documents; any other string: lines
            holding exactly that token separate documents (and are not part of the text).

    Returns:
        ``(stream, reset)``: int32 ids, and the per-token resets of ``document_stream``
        (1 at the ``<eos>`` before each document's first token) or None without a boundary.

    Example:

    >>> stream, reset = encode_stream(vocab, ["the cat", "", "a dog"], "blank")
    >>> reset  # array([1, 0, 1, 0, 0, 0], dtype=int32): the <eos> before "a" is a reset
    """
    if document_boundary is None:
        return token_stream(encode_corpus(vocabulary, lines)), None
    return document_stream(encode_documents(vocabulary, lines, document_boundary))


def stream_batches(
    stream: np.ndarray, batch_size: int, num_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)`` arrays of shape ``(num_batches, batch_size, num_steps)``.

    Row ``b`` of batch ``i + 1`` continues row ``b`` of batch ``i``; targets are inputs shifted
    by one. Tokens that do not fill a whole ``batch_size`` x ``num_steps`` window are dropped
    (fewer than ``batch_size * (num_steps + 1)`` of them).
    """
    return _cut_rows(stream, batch_size, num_steps, 0), _cut_rows(stream, batch_size, num_steps, 1)


def _cut_rows(values, batch_size: int, num_steps: int, shift: int) -> np.ndarray:
    """``values`` (aligned with a stream) cut as ``stream_batches`` cuts its inputs
    (``shift=0``) or targets (``shift=1``): int32 ``(num_batches, batch_size, num_steps)``."""
    if batch_size < 1 or num_steps < 1:
        raise ValueError("batch_size and num_steps must be >= 1.")
    row_length = len(values) // batch_size
    num_batches = (row_length - 1) // num_steps
    if num_batches < 1:
        raise ValueError(
            f"A stream of {len(values)} tokens is too short for batch_size={batch_size} and "
            f"num_steps={num_steps}."
        )
    rows = np.asarray(values[: batch_size * row_length], np.int32).reshape(batch_size, row_length)
    span = num_batches * num_steps
    cut = rows[:, shift : span + shift].reshape(batch_size, num_batches, num_steps)
    return np.ascontiguousarray(cut.transpose(1, 0, 2))


def stream_dataset(
    sentences: Sequence[Sequence[int]], batch_size: int = 20, num_steps: int = 20
) -> tf.data.Dataset:
    """TBPTT batches in order (never shuffled), static shape ``(batch_size, num_steps)``."""
    inputs, targets = stream_batches(token_stream(sentences), batch_size, num_steps)
    return prefetched(tf.data.Dataset.from_tensor_slices((inputs, targets)))


def document_stream_dataset(
    documents: Sequence[Sequence[Sequence[int]]], batch_size: int = 20, num_steps: int = 20
) -> tf.data.Dataset:
    """TBPTT batches of a document stream, in order: ``({"token_ids", "reset"}, targets)``.

    The batches are those of ``stream_dataset`` on the same sentences, with the inputs in a
    dict beside their per-token ``reset`` (``document_stream``), all int32 ``(batch_size,
    num_steps)``. A model reading the dict (``keras_rnnlm.backbone.split_reset_inputs``)
    zeroes a row's states where ``reset`` is 1, so no context crosses a document boundary.

    Example:

    >>> documents = encode_documents(vocab, lines, boundary="blank")
    >>> x, y = next(iter(document_stream_dataset(documents, 20, 35)))  # x["reset"]: (20, 35)
    """
    stream, reset = document_stream(documents)
    inputs, targets = stream_batches(stream, batch_size, num_steps)
    features = {TOKEN_IDS_KEY: inputs, RESET_KEY: _cut_rows(reset, batch_size, num_steps, 0)}
    return prefetched(tf.data.Dataset.from_tensor_slices((features, targets)))


def pad_rows(rows: Sequence[Sequence[int]], length: int | None = None) -> np.ndarray:
    """Int id rows right-padded with 0 (and cut) to ``length``: int32 ``(len(rows), length)``.

    Args:
        rows: id lists of any lengths.
        length: columns of the result (default: the longest row).

    Returns:
        The padded array; row ``i`` starts with ``rows[i][:length]``.

    Example:

    >>> pad_rows([[5, 6, 7], [8]])
    array([[5, 6, 7],
           [8, 0, 0]], dtype=int32)
    """
    rows = [list(row) for row in rows]
    if length is None:
        length = max((len(row) for row in rows), default=0)
    out = np.zeros((len(rows), length), dtype=np.int32)
    for i, row in enumerate(rows):
        row = row[:length]
        out[i, : len(row)] = row
    return out
