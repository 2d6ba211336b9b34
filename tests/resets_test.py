"""Per-row state resets: ``reset[b, t] = 1`` zeroes row ``b``'s states before step ``t``.

Truths: the same row run alone from zero states (outputs), exact zeros (gradients across a
reset), the reference loop (the fast loop's outputs and hand-written gradients).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm.backbone import make_backbone, run_backbone, split_reset_inputs
from keras_rnnlm.data.corpora import (
    Corpus,
    python_docs_corpus,
    read_lines,
    split_documents,
    strip_document_boundaries,
)
from keras_rnnlm.data.pipelines import (
    document_stream,
    document_stream_dataset,
    encode_corpus,
    encode_documents,
    stream_dataset,
    token_stream,
)
from keras_rnnlm.data.vocabulary import EOS_ID, Vocabulary
from keras_rnnlm.evaluation import evaluate_stream_perplexity, forward_with_reset
from keras_rnnlm.layers import Recurrent, StackedRecurrent
from keras_rnnlm.models import RNNLanguageModel

CELLS = ["lstm", "gru", "simple_rnn"]
IMPLEMENTATIONS = ["reference", "fast"]
BATCH, TIME, FEATURES = 3, 8, 5
X = np.random.default_rng(0).normal(size=(BATCH, TIME, FEATURES)).astype("float32")
RESET = np.zeros((BATCH, TIME), np.int32)
RESET[0, 3] = 1  # row 0: a new document at step 3
RESET[2, [0, 5]] = 1  # row 2: at the start (drops the initial state) and at step 5
MASK = np.ones((BATCH, TIME), bool)
MASK[1, 6:] = False  # row 1 (no reset) is right-padded


def make_stack(cell, implementation, num_layers=2):
    stack = StackedRecurrent(cell, units=4, num_layers=num_layers, implementation=implementation)
    stack.build(X.shape)
    return stack


def twin_stacks(cell):
    """A reference stack and a fast stack with the same weights."""
    reference = make_stack(cell, "reference")
    fast = make_stack(cell, "fast")
    fast.set_weights(reference.get_weights())
    return reference, fast


def random_states(stack, seed=1):
    rng = np.random.default_rng(seed)
    return [
        [tf.constant(rng.normal(size=(BATCH, size)).astype("float32")) for size in sizes]
        for sizes in stack.state_sizes
    ]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("cell", CELLS)
def test_row_after_reset_equals_row_started_alone(cell, implementation):
    stack = make_stack(cell, implementation)
    initial = random_states(stack)
    with_reset, states = stack(X, mask=MASK, initial_state=initial, reset=RESET)
    without, plain_states = stack(X, mask=MASK, initial_state=initial)
    with_reset, without = np.asarray(with_reset), np.asarray(without)
    # before its reset, row 0 is unchanged; from it on, it is row 0 started alone at step 3
    np.testing.assert_allclose(with_reset[0, :3], without[0, :3], atol=1e-6)
    alone, alone_states = stack(X[:1, 3:])
    np.testing.assert_allclose(with_reset[0, 3:], np.asarray(alone)[0], atol=1e-5)
    # the other rows keep their states: row 1 (never reset) is untouched
    np.testing.assert_allclose(with_reset[1], without[1], atol=1e-6)
    # row 2: reset at 0 ignores the initial state; reset at 5 restarts again
    first, _ = stack(X[2:3, :5])
    second, _ = stack(X[2:3, 5:])
    np.testing.assert_allclose(with_reset[2, :5], np.asarray(first)[0], atol=1e-5)
    np.testing.assert_allclose(with_reset[2, 5:], np.asarray(second)[0], atol=1e-5)
    assert not np.allclose(with_reset[0, 3:], without[0, 3:], atol=1e-3)  # the reset acted
    # final states: row 0's are those of the row alone, row 1's those without resets
    for layer, layer_alone, layer_plain in zip(states, alone_states, plain_states):
        for s, s_alone, s_plain in zip(layer, layer_alone, layer_plain):
            np.testing.assert_allclose(np.asarray(s)[0], np.asarray(s_alone)[0], atol=1e-5)
            np.testing.assert_allclose(np.asarray(s)[1], np.asarray(s_plain)[1], atol=1e-6)


def _loss_after_reset(stack, x, initial, reset):
    """A weighted sum of row 0's outputs from its reset (step 3) on."""
    outputs, _ = stack(x, initial_state=initial, reset=reset)
    weights = tf.constant(np.linspace(-1.0, 2.0, outputs.shape[-1]), tf.float32)
    return tf.reduce_sum(outputs[0, 3:] * weights)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("cell", CELLS)
def test_loss_after_reset_has_exactly_zero_gradient_before_it(cell, implementation):
    stack = make_stack(cell, implementation)
    x = tf.constant(X)
    initial = random_states(stack)
    with tf.GradientTape() as tape:
        tape.watch([x, initial])
        loss = _loss_after_reset(stack, x, initial, RESET)
    d_x, d_initial = tape.gradient(
        loss, [x, initial], unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    d_x = np.asarray(d_x)
    assert np.all(d_x[0, :3] == 0.0)  # exactly: nothing before the reset reaches the loss
    assert np.all(d_x[1:] == 0.0)  # other rows never reach row 0's loss
    assert np.all(np.abs(d_x[0, 3:]).sum(axis=-1) > 0)  # every step after it does
    for layer in d_initial:
        for d_state in layer:
            assert np.all(np.asarray(d_state)[0] == 0.0)
    # without the reset, the earlier inputs do matter (the test can fail)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = _loss_after_reset(stack, x, initial, np.zeros_like(RESET))
    assert np.abs(np.asarray(tape.gradient(loss, x))[0, :3]).sum() > 1e-4


@pytest.mark.parametrize("cell", CELLS)
def test_fast_equals_reference_with_resets(cell):
    reference, fast = twin_stacks(cell)
    initial = random_states(reference)
    x = tf.constant(X)
    upstream = tf.constant(np.random.default_rng(2).normal(size=(BATCH, TIME, 4)), tf.float32)
    results = {}
    for name, stack in (("reference", reference), ("fast", fast)):
        with tf.GradientTape() as tape:
            tape.watch([x, initial])
            outputs, states = stack(x, mask=MASK, initial_state=initial, reset=RESET)
            loss = tf.reduce_sum(outputs * upstream) + sum(
                tf.reduce_sum(s * s) for layer in states for s in layer
            )
        gradients = tape.gradient(loss, [x, initial, stack.trainable_weights])
        results[name] = (outputs, states, gradients)
    for got, want in zip(
        tf.nest.flatten(results["fast"]), tf.nest.flatten(results["reference"]), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert all(layer.uses_fast_time_loop for layer in fast.rnn_layers)


def test_stateful_layer_carries_reset_states_into_the_next_batch():
    layer = Recurrent(_lstm_cell(), return_sequences=True, stateful=True)
    layer.build(X.shape)
    reset = np.zeros((BATCH, TIME), np.int32)
    reset[:, 0] = 1
    layer(X, reset=reset)  # every row restarts at step 0: the carried states are the ones
    after_reset = [np.asarray(v) for v in layer.state_variables]
    fresh = Recurrent(_lstm_cell(), return_sequences=True, return_state=True)
    fresh.build(X.shape)
    fresh.cell.set_weights(layer.cell.get_weights())
    _, *alone = fresh(X)
    for carried, want in zip(after_reset, alone):
        np.testing.assert_allclose(carried, np.asarray(want), atol=1e-5)


def _lstm_cell():
    from keras_rnnlm.cells import LSTMCell

    return LSTMCell(4)


@pytest.mark.parametrize(
    ("reset", "error"),
    [
        (np.zeros((BATCH, TIME, 1)), "rank 2"),
        (np.array([["a"] * TIME] * BATCH), "bool or 0/1"),
    ],
)
def test_bad_reset_is_refused(reset, error):
    stack = make_stack("lstm", "reference")
    with pytest.raises((ValueError, TypeError), match=error):
        stack(X, reset=reset)


def test_reset_needs_forward_from_scratch_layers():
    backwards = Recurrent(_lstm_cell(), go_backwards=True)
    with pytest.raises(ValueError, match="go_backwards"):
        backwards(X, reset=RESET)
    builtin = StackedRecurrent("lstm", units=4, num_layers=1, use_builtin_layers=True)
    with pytest.raises(ValueError, match="use_builtin_layers=False"):
        builtin(X, reset=RESET)


# --- documents: data, stream evaluation ------------------------------------------------------

LINES = ["the cat sat", "on the mat", "", "", "a dog ran", "   ", "the end", "a cat"]


def test_split_documents_at_blank_lines_and_at_a_token():
    assert split_documents(LINES) == [
        ["the cat sat", "on the mat"],
        ["a dog ran"],
        ["the end", "a cat"],
    ]
    token_lines = ["a b", "<doc>", "c", " <doc> ", "<doc>", "d e", ""]
    assert split_documents(token_lines, "<doc>") == [["a b"], ["c"], ["d e", ""]]
    with pytest.raises(ValueError, match="boundary"):
        split_documents(LINES, "  ")
    corpus = Corpus("toy", train=token_lines, valid=[], test=LINES)
    stripped = strip_document_boundaries(corpus, "<doc>")
    assert stripped.train == ["a b", "c", "d e", ""] and stripped.test == LINES


def test_document_stream_keeps_the_stream_and_marks_each_documents_start():
    vocabulary = Vocabulary.build(LINES, sentence_start="<eos>")
    documents = encode_documents(vocabulary, LINES)
    assert len(documents) == 3 and [len(d) for d in documents] == [2, 1, 2]
    stream, reset = document_stream(documents)
    # the same tokens as the plain stream of the non-blank lines (blank lines survive only
    # as boundaries)
    np.testing.assert_array_equal(stream, token_stream(encode_corpus(vocabulary, LINES)))
    starts = np.flatnonzero(reset)
    np.testing.assert_array_equal(starts, [0, 7, 11])  # "the cat sat <eos> on the mat <eos>"
    assert all(stream[p] == EOS_ID for p in starts[1:])
    for p, document in zip(starts[1:], documents[1:]):
        assert stream[p + 1] == document[0][0]  # the next token opens the document


def test_document_stream_dataset_is_stream_dataset_with_resets():
    rng = np.random.default_rng(3)
    documents = [
        [list(rng.integers(4, 20, size=rng.integers(1, 6))) for _ in range(rng.integers(1, 4))]
        for _ in range(12)
    ]
    sentences = [ids for document in documents for ids in document]
    plain = list(stream_dataset(sentences, batch_size=3, num_steps=5))
    with_docs = list(document_stream_dataset(documents, batch_size=3, num_steps=5))
    assert len(plain) == len(with_docs) > 2
    _, reset = document_stream(documents)
    all_resets = []
    for (x, y), (features, targets) in zip(plain, with_docs):
        assert set(features) == {"token_ids", "reset"}
        np.testing.assert_array_equal(features["token_ids"], x)
        np.testing.assert_array_equal(targets, y)
        all_resets.append(np.asarray(features["reset"]))
    # row b of the batches is the stream's b-th slice: its resets are the stream's there
    row_length = len(reset) // 3
    rows = np.concatenate(all_resets, axis=1)  # (3, batches * num_steps)
    for b in range(3):
        np.testing.assert_array_equal(
            rows[b], reset[b * row_length : b * row_length + rows.shape[1]]
        )


def test_python_docs_topics_and_shakespeare_speeches_are_documents(shakespeare_dir):
    plain, with_topics = python_docs_corpus(), python_docs_corpus(documents=True)
    assert [line for line in with_topics.train if line] == plain.train  # same text, same splits
    topics = split_documents(with_topics.train)
    assert len(topics) > 50 and split_documents(plain.train) == [plain.train]
    speeches = split_documents(read_lines(shakespeare_dir / "input.txt"))
    assert len(speeches) > 5000
    assert all(speech[0].rstrip().endswith(":") for speech in speeches)  # "ROMEO:" opens each


def tiny_model():
    model = RNNLanguageModel(vocabulary_size=12, num_layers=2, units=6, embedding_dim=5)
    model.build((None, None))
    return model


def test_stream_nll_with_resets_equals_each_document_scored_alone():
    rng = np.random.default_rng(4)
    documents = [
        [list(rng.integers(4, 12, size=rng.integers(1, 5))) for _ in range(rng.integers(1, 4))]
        for _ in range(5)
    ]
    stream, reset = document_stream(documents)
    model = tiny_model()
    result = evaluate_stream_perplexity(model, stream, window=7, reset=reset, return_units=True)
    # truth: each document alone from zero states, <eos> first (the first document has no
    # token before it: its first token is not predicted, as in the plain stream)
    total, tokens = 0.0, 0
    for k, document in enumerate(documents):
        sequence = token_stream(document)
        sequence = sequence if k == 0 else np.concatenate([[EOS_ID], sequence])
        logits = np.asarray(model(sequence[None, :-1]), np.float64)[0]
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        total -= log_probs[np.arange(len(sequence) - 1), sequence[1:]].sum()
        tokens += len(sequence) - 1
    assert result["tokens"] == tokens == len(stream) - 1
    np.testing.assert_allclose(result["units"]["nll"].sum(), total, rtol=1e-5)
    carried = evaluate_stream_perplexity(model, stream, window=7)
    assert carried["tokens"] == tokens
    assert abs(carried["nll_per_token"] * tokens - total) > 1e-3  # the resets change the NLL
    with pytest.raises(ValueError, match="aligned"):
        evaluate_stream_perplexity(model, stream, reset=reset[:-1])


def test_model_fit_on_document_stream_batches():
    class DocumentLM(keras.Model):
        def __init__(self):
            super().__init__()
            self.embedding, (self.rnn,) = make_backbone(12, 6, units=6, stateful=True)
            self.logits = keras.layers.Dense(12)

        def call(self, inputs, training=False):
            token_ids, reset = split_reset_inputs(inputs)
            hidden, _ = run_backbone(self.embedding, self.rnn, token_ids, None, training, reset)
            return self.logits(hidden)

    rng = np.random.default_rng(5)
    documents = [[list(rng.integers(4, 12, size=4))] for _ in range(40)]
    dataset = document_stream_dataset(documents, batch_size=4, num_steps=6)
    model = DocumentLM()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(dataset, epochs=3, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def _model_reads_resets():
    import inspect

    return "reset" in inspect.signature(RNNLanguageModel.forward).parameters


@pytest.mark.skipif(
    not _model_reads_resets(), reason="RNNLanguageModel.forward has no `reset` yet (models.py)"
)
@pytest.mark.parametrize("jit_compile", [False, "auto"])  # reference path, fast path
def test_language_model_trains_on_document_batches(jit_compile):
    from keras_rnnlm.training import compile_language_model

    rng = np.random.default_rng(6)
    documents = [[list(rng.integers(4, 12, size=4))] for _ in range(40)]
    dataset = document_stream_dataset(documents, batch_size=4, num_steps=6)
    model = RNNLanguageModel(12, num_layers=1, units=6, embedding_dim=6, stateful=True)
    model.build((4, None))
    compile_language_model(model, "adam", 0.01, jit_compile=jit_compile)
    features, _ = next(iter(dataset))
    # the dict input is the reset-aware forward; the ids alone are the plain one
    np.testing.assert_allclose(
        np.asarray(model(features)),
        np.asarray(
            forward_with_reset(
                model, features["token_ids"], model.get_initial_state(4), features["reset"]
            )[0]
        ),
        atol=1e-6,
    )
    model.reset_states()
    history = model.fit(dataset, epochs=2, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.slow
def test_train_with_document_boundary_evaluates_with_resets(tmp_path):
    """``TrainConfig(document_boundary="blank")``: stream training on document batches, and the
    valid figure is the stream scored with resets at every document start (not carried)."""
    from keras_rnnlm.run_config import stateless_copy
    from keras_rnnlm.runs import TrainConfig, train

    rng = np.random.default_rng(0)
    words = "the cat sat on a mat dog log near far".split()

    def text(documents):
        return "\n\n".join(
            "\n".join(" ".join(rng.choice(words, 6)) for _ in range(rng.integers(1, 4)))
            for _ in range(documents)
        )

    (tmp_path / "train.txt").write_text(text(40) + "\n")
    (tmp_path / "valid.txt").write_text(text(6) + "\n")
    config = TrainConfig(
        train_file=str(tmp_path / "train.txt"), valid_file=str(tmp_path / "valid.txt"),
        mode="stream", document_boundary="blank", units=8, embedding_dim=8, num_layers=1,
        batch_size=4, num_steps=5, epochs=1, verbose=0, output=str(tmp_path / "run"),
    )  # fmt: skip
    metrics = train(config)
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    vocabulary = Vocabulary.load(tmp_path / "run" / "vocabulary.json")
    documents = encode_documents(vocabulary, (tmp_path / "valid.txt").read_text().splitlines())
    assert len(documents) == 6
    stream, reset = document_stream(documents)
    with_resets = evaluate_stream_perplexity(stateless_copy(model), stream, reset=reset)
    carried = evaluate_stream_perplexity(stateless_copy(model), stream)
    assert metrics["valid"]["perplexity"] == pytest.approx(with_resets["perplexity"], rel=1e-6)
    assert with_resets["perplexity"] != pytest.approx(carried["perplexity"], rel=1e-6)
    with pytest.raises(ValueError, match="document_boundary needs mode='stream'"):
        TrainConfig(train_file="x", document_boundary="blank").validate()
