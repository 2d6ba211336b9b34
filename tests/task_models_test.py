"""Encoder, tagger, classifier and bidirectional LM: masking, no leakage, save/load, export."""

import io
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm import distribute
from keras_rnnlm.losses import MaskedLanguageModelLoss
from keras_rnnlm.metrics import MaskedAccuracy
from keras_rnnlm.task_models import (
    BidirectionalLanguageModel,
    RNNEncoder,
    SentenceClassifier,
    SequenceTagger,
    bidirectional_lm_dataset,
    bidirectional_lm_targets,
    compile_bidirectional_lm,
    compile_classifier,
    compile_tagger,
    evaluate_bidirectional_perplexity,
    export_task_model,
    pool,
    task_optimizer,
)

V = 20
LENGTHS = [7, 4, 1, 5]
IDS = np.zeros((4, 7), dtype=np.int32)
for _row, _n in enumerate(LENGTHS):
    IDS[_row, :_n] = np.random.default_rng(_row).integers(2, V, size=_n)
SMALL = dict(units=6, embedding_dim=5)
RECURRENTS = ("recurrent", "recurrent_1")  # the two layers of a 2-layer stack in a .keras file


def _alone(model_fn, row):
    return model_fn(IDS[row : row + 1, : LENGTHS[row]])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers,residual", [(1, False), (2, True)])
def test_bidirectional_encoder_padded_equals_each_sequence_alone(cell, num_layers, residual):
    encoder = RNNEncoder(V, cell=cell, num_layers=num_layers, residual=residual, **SMALL)
    states, vector = (np.asarray(t) for t in encoder(IDS))
    for row, n in enumerate(LENGTHS):
        alone_states, alone_vector = (np.asarray(t) for t in _alone(encoder, row))
        np.testing.assert_allclose(states[row, :n], alone_states[0], atol=1e-5)
        np.testing.assert_allclose(vector[row], alone_vector[0], atol=1e-5)
        assert np.all(states[row, n:] == 0)


def test_backward_half_starts_at_last_real_token():
    encoder = RNNEncoder(V, **SMALL)
    states = np.asarray(encoder(IDS)[0])
    for row, n in enumerate(LENGTHS):
        # backward half at the last real token has read only that token
        one = np.asarray(encoder(IDS[row : row + 1, n - 1 : n])[0])[0, 0]
        np.testing.assert_allclose(states[row, n - 1, 6:], one[6:], atol=1e-5)


def test_final_sentence_vector_is_forward_last_and_backward_first():
    encoder = RNNEncoder(V, pooling="final", **SMALL)
    states, vector = (np.asarray(t) for t in encoder(IDS))
    for row, n in enumerate(LENGTHS):
        np.testing.assert_allclose(vector[row, :6], states[row, n - 1, :6])
        np.testing.assert_allclose(vector[row, 6:], states[row, 0, 6:])


@pytest.mark.parametrize("pooling", ["mean", "max", "final"])
def test_pooling_ignores_padding(pooling):
    rng = np.random.default_rng(0)
    states = rng.normal(size=(4, 7, 3)).astype("float32")
    mask = IDS != 0
    loud = states.copy()
    loud[~mask] = 1e3  # padding that would dominate mean and max
    got = np.asarray(pool(loud, mask, pooling))
    for row, n in enumerate(LENGTHS):
        real = states[row, :n]
        expected = {"mean": real.mean(0), "max": real.max(0), "final": real[-1]}[pooling]
        np.testing.assert_allclose(got[row], expected, rtol=1e-5)
    assert np.all(np.asarray(pool(states, np.zeros_like(mask), pooling)) == 0)


@pytest.mark.parametrize("pooling", ["mean", "max", "final"])
def test_classifier_output_ignores_padding(pooling):
    classifier = SentenceClassifier(V, num_classes=3, pooling=pooling, **SMALL)
    logits = np.asarray(classifier(IDS))
    more_padding = np.pad(IDS, ((0, 0), (0, 5)))
    np.testing.assert_allclose(np.asarray(classifier(more_padding)), logits, atol=1e-5)
    for row in range(len(LENGTHS)):
        np.testing.assert_allclose(_alone(classifier, row)[0], logits[row], atol=1e-5)


def test_tagger_loss_and_accuracy_ignore_padding():
    tagger = SequenceTagger(V, num_tags=4, **SMALL)
    tags = np.where(IDS != 0, (IDS % 3) + 1, 0)
    logits = tagger(IDS)
    loss = float(MaskedLanguageModelLoss()(tags, logits))
    # the same loss computed by hand over real positions only
    log_probs = np.asarray(tf.nn.log_softmax(logits))
    mask = IDS != 0
    picked = np.take_along_axis(log_probs, tags[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(loss, -picked[mask].mean(), rtol=1e-5)
    # garbage logits at padded positions change neither loss nor accuracy
    noisy = np.asarray(logits).copy()
    noisy[~mask] = np.random.default_rng(1).normal(size=noisy[~mask].shape) * 100
    np.testing.assert_allclose(float(MaskedLanguageModelLoss()(tags, noisy)), loss, rtol=1e-6)
    acc, acc_noisy = MaskedAccuracy(), MaskedAccuracy()
    acc.update_state(tags, logits)
    acc_noisy.update_state(tags, noisy)
    hits = (np.asarray(logits).argmax(-1) == tags)[mask].mean()
    np.testing.assert_allclose(float(acc.result()), hits, rtol=1e-6)
    np.testing.assert_allclose(float(acc_noisy.result()), hits, rtol=1e-6)


def test_tagger_learns_a_right_context_task_when_bidirectional():
    # tag of token t = whether token t+1 is even: needs the right context
    rng = np.random.default_rng(0)
    x = rng.integers(2, V, size=(64, 8)).astype("int32")
    y = np.concatenate([(x[:, 1:] % 2) + 1, np.ones((64, 1), "int32")], axis=1)
    tagger = SequenceTagger(V, num_tags=3, units=16, embedding_dim=8)
    compile_tagger(tagger, learning_rate=1e-2)
    tagger.fit(x, y, epochs=40, batch_size=16, verbose=0)
    assert tagger.evaluate(x, y, verbose=0, return_dict=True)["masked_accuracy"] > 0.9
    tags = np.asarray(tagger.predict_tags(IDS))
    assert np.all(tags[IDS == 0] == 0) and np.all(tags[IDS != 0] > 0)


def test_bilm_targets():
    ids = np.array([[2, 5, 6, 3, 0], [2, 7, 3, 0, 0]])
    forward, backward = bidirectional_lm_targets(ids)
    np.testing.assert_array_equal(forward, [[5, 6, 3, 0, 0], [7, 3, 0, 0, 0]])
    np.testing.assert_array_equal(backward, [[0, 2, 5, 6, 0], [0, 2, 7, 0, 0]])


def test_bilm_dataset_rebuilds_full_sequence_from_sentence_dataset():
    inputs = tf.constant([[2, 5, 6], [2, 7, 0]])
    targets = tf.constant([[5, 6, 3], [7, 3, 0]])
    ds = bidirectional_lm_dataset(tf.data.Dataset.from_tensors((inputs, targets)))
    ids, (forward, backward) = next(iter(ds))
    np.testing.assert_array_equal(ids, [[2, 5, 6, 3], [2, 7, 3, 0]])
    np.testing.assert_array_equal(forward, [[5, 6, 3, 0], [7, 3, 0, 0]])
    np.testing.assert_array_equal(backward, [[0, 2, 5, 6], [0, 2, 7, 0]])


@pytest.mark.parametrize("num_layers,residual", [(1, False), (2, True)])
def test_bilm_never_sees_the_token_it_predicts(num_layers, residual):
    bilm = BidirectionalLanguageModel(V, num_layers=num_layers, residual=residual, **SMALL)
    ids = IDS[:1]  # length 7, no padding
    forward, backward = (np.asarray(t) for t in bilm(ids))
    time = ids.shape[1]
    for t in range(time):
        changed = ids.copy()
        changed[0, t] = 2 + (changed[0, t] - 1) % (V - 2)  # a different real token
        assert changed[0, t] != ids[0, t]
        f2, b2 = (np.asarray(v) for v in bilm(changed))
        # forward logits at positions < t predict tokens <= t: token t changes none of them,
        # in particular not the prediction of token t itself (made at position t - 1)
        np.testing.assert_array_equal(f2[0, :t], forward[0, :t])
        # backward logits at positions > t predict tokens >= t: unchanged likewise
        np.testing.assert_array_equal(b2[0, t + 1 :], backward[0, t + 1 :])
        # and the change is seen where it is allowed (the model is not trivially constant)
        assert not np.allclose(f2[0, t:], forward[0, t:])
        assert not np.allclose(b2[0, : t + 1], backward[0, : t + 1])


def test_bilm_padding_invariant_and_backward_starts_at_last_real_token():
    bilm = BidirectionalLanguageModel(V, **SMALL)
    forward, backward = (np.asarray(t) for t in bilm(IDS))
    for row, n in enumerate(LENGTHS):
        f1, b1 = (np.asarray(t)[0] for t in _alone(bilm, row))
        np.testing.assert_allclose(forward[row, :n], f1, atol=1e-5)
        np.testing.assert_allclose(backward[row, :n], b1, atol=1e-5)


def test_bilm_trains_and_reports_both_perplexities():
    rng = np.random.default_rng(0)
    # deterministic sequences: every token determines its neighbours
    starts = rng.integers(0, 8, size=(64, 1))
    ids = (2 + (starts + np.arange(6)[None, :]) % 8).astype("int32")
    bilm = compile_bidirectional_lm(BidirectionalLanguageModel(12, units=16, embedding_dim=8))
    data = tf.data.Dataset.from_tensor_slices(ids).batch(16)
    data = bidirectional_lm_dataset(data)
    before = evaluate_bidirectional_perplexity(bilm, data)
    history = bilm.fit(data, epochs=30, verbose=0, shuffle=False)
    after = evaluate_bidirectional_perplexity(bilm, data)
    assert {"forward_perplexity", "backward_perplexity"} <= set(before)
    assert after["tokens"] == 64 * 5
    assert after["forward_perplexity"] < before["forward_perplexity"] / 2
    assert after["backward_perplexity"] < before["backward_perplexity"] / 2
    assert any("backward_perplexity" in key for key in history.history)


def _models():
    return {
        "encoder": RNNEncoder(V, pooling="mean", num_layers=2, residual=True, **SMALL),
        "tagger": SequenceTagger(V, num_tags=4, bidirectional=False, **SMALL),
        "classifier": SentenceClassifier(V, num_classes=3, cell="gru", pooling="max", **SMALL),
        "bilm": BidirectionalLanguageModel(V, num_layers=2, **SMALL),
    }


def _outputs(model, ids):
    out = model(ids)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


@pytest.mark.parametrize("name", ["encoder", "tagger", "classifier", "bilm"])
def test_keras_round_trip_is_exact(name, tmp_path):
    model = _models()[name]
    expected = _outputs(model, IDS)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    assert restored.get_config() == model.get_config()
    for a, b in zip(_outputs(restored, IDS), expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["encoder", "tagger", "classifier", "bilm"])
def test_saved_model_export(name, tmp_path):
    model = _models()[name]
    model(IDS)
    expected = {k: np.asarray(v) for k, v in model.serving_outputs(IDS).items()}
    export_task_model(model, tmp_path / "export")
    serve = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"]
    got = serve(token_ids=tf.constant(IDS))
    assert set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key].numpy(), value, atol=1e-5)


def _one_full_batch_step(model, x, y):
    """Weights before, gradients of the compiled loss, weights after one ``fit`` step."""
    model(x)  # build
    before = [np.array(v) for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x=x, y=y, y_pred=model(x, training=True))
    grads = [
        tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, model.trainable_variables)
    ]
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return before, grads, [np.array(v) for v in model.trainable_variables]


@pytest.mark.parametrize("name", ["tagger", "classifier", "bilm"])
def test_compiled_models_take_one_exactly_clipped_sgd_step(name):
    """``compile_*`` use ``make_optimizer``'s SGD: one ``fit`` step is ``w - lr * g * c/||g||``
    with ``||g||`` the norm of the dense gradients (repeated embedding rows summed first)."""
    lr, clip_norm = 0.5, 0.05
    model, compile_fn, y = {
        "tagger": (_models()["tagger"], compile_tagger, np.where(IDS != 0, IDS % 3 + 1, 0)),
        "classifier": (_models()["classifier"], compile_classifier, np.array([0, 1, 2, 0])),
        "bilm": (_models()["bilm"], compile_bidirectional_lm, bidirectional_lm_targets(IDS)),
    }[name]
    compile_fn(model, "sgd", learning_rate=lr, clip_norm=clip_norm)
    assert isinstance(model.optimizer, distribute.SGD)
    assert model.optimizer.global_clipnorm == clip_norm
    before, grads, after = _one_full_batch_step(model, IDS, y)
    norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads))
    assert norm > 2 * clip_norm  # the clipping is active
    scale = clip_norm / norm
    # stock keras.optimizers.SGD(global_clipnorm) squares repeated embedding rows apart and
    # misses this by 8e-7 (bilm) to 1.5e-4 (classifier)
    for w0, g, w1 in zip(before, grads, after, strict=True):
        np.testing.assert_allclose(w1, w0 - lr * scale * g, rtol=0, atol=1e-7)


def test_compile_helpers_default_to_make_optimizers_adam():
    for name, compile_fn in (
        ("tagger", compile_tagger),
        ("classifier", compile_classifier),
        ("bilm", compile_bidirectional_lm),
    ):
        model = compile_fn(_models()[name], learning_rate=1e-2, clip_norm=2.0)
        assert type(model.optimizer) is distribute.Adam, name
        assert model.optimizer.global_clipnorm == 2.0
        assert float(model.optimizer.learning_rate) == pytest.approx(1e-2)
    own = keras.optimizers.RMSprop(1e-3)
    assert compile_tagger(_models()["tagger"], optimizer=own).optimizer is own
    assert task_optimizer("adam", clip_norm=None).global_clipnorm is None
    with pytest.raises(ValueError, match="optimizer must be one of"):
        task_optimizer("adagrad")


def _h5_weight_names(path):
    with (
        zipfile.ZipFile(path) as archive,
        h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as weights,
    ):
        names = []
        weights.visit(lambda n: names.append(n) if isinstance(weights[n], h5py.Dataset) else None)
    return names


#: The weight layout of ``.keras`` files written before ``keras_rnnlm.backbone`` existed.
LEGACY_H5_NAMES = {
    "tagger": [
        "encoder/embedding/vars/0",
        *(f"encoder/layers/stacked_recurrent/rnn_layers/recurrent/cell/vars/{i}" for i in range(3)),
        "layers/dense/vars/0",
        "layers/dense/vars/1",
    ],
    "bilm": [
        *(f"backward_rnn/rnn_layers/{r}/cell/vars/{i}" for r in RECURRENTS for i in range(3)),
        "embedding/vars/0",
        *(f"forward_rnn/rnn_layers/{r}/cell/vars/{i}" for r in RECURRENTS for i in range(3)),
        "layers/dense/vars/0",
        "layers/dense/vars/1",
    ],
}


@pytest.mark.parametrize("name", sorted(LEGACY_H5_NAMES))
def test_keras_file_weight_layout_is_unchanged(name, tmp_path):
    model = _models()[name]
    model(IDS)
    model.save(tmp_path / "m.keras")
    assert _h5_weight_names(tmp_path / "m.keras") == LEGACY_H5_NAMES[name]


def test_config_validation():
    with pytest.raises(ValueError, match="pooling must be one of"):
        RNNEncoder(V, pooling="sum")
    with pytest.raises(ValueError, match="num_tags must be an int >= 2"):
        SequenceTagger(V, num_tags=1)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        SentenceClassifier(V, num_classes=1)
    with pytest.raises(ValueError, match="Unknown cell 'transformer'"):
        BidirectionalLanguageModel(V, cell="transformer")
    with pytest.raises(ValueError, match="vocabulary_size must be an int >= 2"):
        SentenceClassifier(1, num_classes=2)
    with pytest.raises(ValueError, match="dropout must be in"):
        SequenceTagger(V, num_tags=3, dropout=1.5)
