"""keras-hub style presets: save_to_preset / load_preset round trip, shipped models by name,
greedy generation equal to the SavedModel export's own ``generate`` signature."""

import json

import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm.data.vocabulary import Vocabulary
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.presets import (
    METADATA_FILE,
    SAVED_MODELS_DIR,
    load_preset,
    max_new_tokens,
    resolve_preset,
    save_to_preset,
)
from keras_rnnlm.samplers import DEFAULT_SUPPRESSED_IDS, GreedySampler, generate

SENTENCES = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"]


def _model_and_vocabulary(**config):
    vocabulary = Vocabulary.build(SENTENCES, level="word", min_count=1)
    model = RNNLanguageModel(
        vocabulary.size, **{"num_layers": 2, "units": 8, "embedding_dim": 6, **config}
    )
    model.build((3 if model.stateful else None, None))
    return model, vocabulary


def _ids(vocabulary):
    rows = [[vocabulary.start_id, *vocabulary.encode(s)] for s in SENTENCES]
    out = np.zeros((len(rows), max(map(len, rows))), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


@pytest.mark.parametrize(
    "config", [{}, {"cell": "gru", "tie_embeddings": True, "embedding_dim": 8}]
)
def test_save_to_preset_round_trip_gives_equal_logits_and_vocabulary(tmp_path, config):
    model, vocabulary = _model_and_vocabulary(**config)
    path = save_to_preset(model, tmp_path / "preset", vocabulary, metadata={"corpus": "toy"})
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "metadata.json",
        "model.weights.h5",
        "vocabulary.json",
    ]
    facts = json.loads((path / METADATA_FILE).read_text())
    assert facts["format"] == "keras_rnnlm_preset" and facts["corpus"] == "toy"
    assert facts["vocabulary_size"] == vocabulary.size
    loaded = load_preset(str(path))
    assert loaded.vocabulary == vocabulary
    assert loaded.get_config() == model.get_config()
    ids = _ids(vocabulary)
    np.testing.assert_array_equal(loaded.forward(ids)[0].numpy(), model.forward(ids)[0].numpy())


def test_stateful_model_is_saved_stateless_and_sizes_must_agree(tmp_path):
    model, vocabulary = _model_and_vocabulary(stateful=True)
    loaded = load_preset(save_to_preset(model, tmp_path / "p", vocabulary))
    assert not loaded.stateful
    ids = _ids(vocabulary)
    model.reset_states()
    np.testing.assert_allclose(loaded.forward(ids)[0], model.forward(ids)[0], atol=1e-6)
    other = Vocabulary.build(SENTENCES[:1], level="word", min_count=1)
    with pytest.raises(ValueError, match="tokens but the model predicts"):
        save_to_preset(model, tmp_path / "q", other)


def test_unknown_preset_and_foreign_metadata_are_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="No preset 'no_such_model'"):
        load_preset("no_such_model")
    (tmp_path / METADATA_FILE).write_text(json.dumps({"format": "something_else"}))
    with pytest.raises(ValueError, match="not a keras_rnnlm preset"):
        load_preset(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        load_preset(tmp_path / "..")  # an existing directory of another kind


def test_max_length_counts_the_prompt():
    assert max_new_tokens(10, 4) == 6
    with pytest.raises(ValueError, match="counts the prompt"):
        max_new_tokens(4, 4)


def test_shipped_names_resolve_relative_to_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository: found through the package's location
    for name in ("ptb_word_lstm_small", "saved_models/ptb_word_lstm_small"):
        assert resolve_preset(name).resolve() == SAVED_MODELS_DIR / "ptb_word_lstm_small"
    assert resolve_preset(str(tmp_path)) == tmp_path  # a path is taken as it is


def test_shipped_preset_greedy_generation_equals_the_export_generate_signature():
    export_dir = SAVED_MODELS_DIR / "ptb_word_lstm_small"
    if not (export_dir / "saved_model.pb").is_file():
        pytest.skip(f"{export_dir} is absent")
    model = load_preset("saved_models/ptb_word_lstm_small")
    vocabulary = model.vocabulary
    assert vocabulary.size == model.vocabulary_size == 10002
    prompt = "the company said"
    served = tf.saved_model.load(str(export_dir))
    prompt_ids = served.signatures["tokenize"](text=tf.constant([prompt]))["token_ids"]
    np.testing.assert_array_equal(
        prompt_ids.numpy()[0], [vocabulary.start_id, *vocabulary.encode(prompt)]
    )
    max_length = 16  # keras-hub: the total length, prompt (start token included) counted
    new = max_new_tokens(max_length, prompt_ids.shape[1])
    exported = served.signatures["generate"](
        prompt_ids=prompt_ids,
        max_new_tokens=tf.constant(new),
        temperature=tf.constant(0.0),
        top_k=tf.constant(0),
        seed=tf.constant(0),
    )["generated_ids"].numpy()[0]
    ours = generate(
        model, prompt_ids.numpy(), GreedySampler(), max_new_tokens=new, end_token_id=None
    )
    np.testing.assert_array_equal(ours[0], exported)
    assert len(exported) + prompt_ids.shape[1] == max_length
    # no near-tie along the greedy path, so the equality cannot flake on rounding
    sequence = np.concatenate([prompt_ids.numpy()[0], exported])[None, :-1]
    logits = model.forward(sequence)[0].numpy()[0, prompt_ids.shape[1] - 1 :]
    logits[:, list(DEFAULT_SUPPRESSED_IDS)] = -np.inf  # never emitted by either side
    logits = np.sort(logits, axis=-1)
    assert np.min(logits[:, -1] - logits[:, -2]) > 1e-3
