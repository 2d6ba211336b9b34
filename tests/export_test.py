"""SavedModel export: signatures, a TF-only consumer process, no cuDNN, clear errors."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm.data.vocabulary import Vocabulary
from keras_rnnlm.export import (
    export_run,
    export_saved_model,
    reexport_saved_model,
    saved_model_op_types,
)
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.training import compile_language_model

SENTENCES = ["the cat sat on the mat .", "a dog sat on a log !", "the dog and the cat"]
RNG = np.random.default_rng(0)


def _trained(cell="lstm", num_layers=2, use_builtin_layers=False):
    vocab = Vocabulary.build(SENTENCES, lowercase=True)
    model = RNNLanguageModel(vocab.size, cell=cell, num_layers=num_layers, units=8, embedding_dim=8,
                             use_builtin_layers=use_builtin_layers)  # fmt: skip
    compile_language_model(model, "adam", 0.01, jit_compile=False)
    x = RNG.integers(2, vocab.size, size=(8, 6)).astype("int32")
    model.fit(x[:, :-1], x[:, 1:], epochs=1, verbose=0)
    return model, vocab


def _ids(batch, vocab_size, time=7):
    ids = RNG.integers(4, vocab_size, size=(batch, time)).astype("int32")
    ids[:, 0] = 2
    lengths = RNG.integers(2, time + 1, size=batch)
    ids[np.arange(time)[None, :] >= lengths[:, None]] = 0
    return ids


def _greedy_reference(model, prompt, steps):
    """Greedy decoding by re-feeding the whole prefix (an independent, slow truth)."""
    seq = [int(t) for t in prompt if t != 0]
    out = []
    for _ in range(steps):
        logits = np.array(model(np.array([seq])))[0, -1]
        logits[[0, 1, 2]] = -np.inf
        token = int(np.argmax(logits))
        out.append(token)
        if token == 3:
            break
        seq.append(token)
    return out + [0] * (steps - len(out))


CONSUMER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    export_dir, inputs_path, outputs_path = sys.argv[1:4]
    loaded = tf.saved_model.load(export_dir)
    card = json.load(open(export_dir + "/model_card.json"))
    inputs = np.load(inputs_path)
    results = {}
    for batch in (1, 3, 17):
        ids = tf.constant(inputs[f"ids_{batch}"])
        scored = loaded.signatures["serving_default"](token_ids=ids)
        results[f"log_probs_{batch}"] = scored["log_probs"].numpy()
        results[f"token_log_probs_{batch}"] = scored["token_log_probs"].numpy()
        assert np.allclose(loaded.signatures["score"](token_ids=ids)["log_probs"].numpy(), scored["log_probs"].numpy())
        state = loaded.signatures["initial_state"](batch_size=tf.constant(batch))
        assert sorted(state) == sorted(card["state_names"])
        steps = []
        for t in range(ids.shape[1]):
            out = loaded.signatures["step"](token=ids[:, t], **state)
            steps.append(tf.nn.log_softmax(out.pop("logits")).numpy())
            state = out
        results[f"step_log_probs_{batch}"] = np.stack(steps, axis=1)
        generated = loaded.signatures["generate"](
            prompt_ids=ids, max_new_tokens=tf.constant(6), temperature=tf.constant(0.0),
            top_k=tf.constant(0), seed=tf.constant(0))
        results[f"generated_{batch}"] = generated["generated_ids"].numpy()
    text = loaded.signatures["detokenize"](**loaded.signatures["tokenize"](text=tf.constant(["The cat sat .", "a zebra"])))
    results["roundtrip"] = np.array([t.decode() for t in text["text"].numpy()])
    results["tokenized"] = loaded.signatures["tokenize"](text=tf.constant(["The cat sat ."]))["token_ids"].numpy()
    assert not any(m.split(".")[0] == "keras_rnnlm" for m in sys.modules), "keras_rnnlm was imported"
    np.savez(outputs_path, **results)
    print("consumer ok")
    """
)


def _run_consumer(tmp_path, script, export_dir, inputs):
    """Run ``script`` (a TF-only consumer) on ``export_dir`` and ``inputs``; its outputs."""
    np.savez(tmp_path / "inputs.npz", **inputs)
    (tmp_path / "consumer.py").write_text(script)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "consumer.py"), str(export_dir), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0 and "consumer ok" in proc.stdout, proc.stderr[-3000:]
    return np.load(tmp_path / "out.npz")


@pytest.mark.parametrize("cell,use_builtin_layers", [("lstm", False), ("gru", True)])
def test_tf_only_process_serves_every_signature(tmp_path, cell, use_builtin_layers):
    model, vocab = _trained(cell, use_builtin_layers=use_builtin_layers)
    export_dir = export_saved_model(model, vocab, tmp_path / "export", model_card={"corpus": "toy"})
    assert not any("cudnn" in op.lower() for op in saved_model_op_types(export_dir))
    card = json.loads((export_dir / "model_card.json").read_text())
    assert card["corpus"] == "toy" and card["tensorflow_version"] == tf.__version__
    assert Vocabulary.load(export_dir / "vocabulary.json") == vocab

    inputs = {f"ids_{b}": _ids(b, vocab.size) for b in (1, 3, 17)}
    out = _run_consumer(tmp_path, CONSUMER, export_dir, inputs)
    for b in (1, 3, 17):
        ids = inputs[f"ids_{b}"]
        real = ids != 0
        expected = np.asarray(keras.ops.log_softmax(model(ids), axis=-1))
        np.testing.assert_allclose(out[f"log_probs_{b}"][real], expected[real], atol=1e-5)
        np.testing.assert_allclose(
            out[f"step_log_probs_{b}"][real], out[f"log_probs_{b}"][real], atol=1e-5
        )
        next_ids = np.concatenate([ids[:, 1:], np.zeros((b, 1), ids.dtype)], axis=1)
        picked = np.take_along_axis(expected, next_ids[..., None], axis=-1)[..., 0] * (
            next_ids != 0
        )
        np.testing.assert_allclose(out[f"token_log_probs_{b}"], picked, atol=1e-5)
        for row in range(min(b, 3)):
            assert list(out[f"generated_{b}"][row]) == _greedy_reference(model, ids[row], 6)
    assert list(out["roundtrip"]) == ["the cat sat .", "a <unk>"]
    assert list(out["tokenized"][0]) == [2, *vocab.encode("The cat sat .")]

    shown = subprocess.run(
        ["saved_model_cli", "show", "--dir", str(export_dir), "--all"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    for name in (
        "serving_default",
        "score",
        "step",
        "step_with_reset",
        "initial_state",
        "generate",
        "generate_top_p",
        "tokenize",
        "score_text",
        "detokenize",
    ):
        assert f"signature_def['{name}']" in shown.stdout


def _assert_serves_log_softmax_of(model, export_dir, vocab, atol):
    """The export's ``serving_default`` log-probabilities equal ``log_softmax(model(ids))``."""
    ids = _ids(3, vocab.size)
    served = tf.saved_model.load(str(export_dir)).signatures["serving_default"](
        token_ids=tf.constant(ids)
    )
    expected = np.asarray(keras.ops.log_softmax(model(ids), axis=-1))
    np.testing.assert_allclose(served["log_probs"].numpy()[ids != 0], expected[ids != 0], atol=atol)


def test_keras_file_and_export_agree(tmp_path):
    model, vocab = _trained("simple_rnn", num_layers=1)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    export_dir = export_saved_model(model, vocab, tmp_path / "export")
    _assert_serves_log_softmax_of(reloaded, export_dir, vocab, atol=1e-5)


def test_bad_ids_are_refused(tmp_path):
    model, vocab = _trained("gru", num_layers=1)
    served = tf.saved_model.load(str(export_saved_model(model, vocab, tmp_path / "e"))).signatures[
        "serving_default"
    ]
    with pytest.raises(tf.errors.InvalidArgumentError, match="vocabulary_size"):
        served(token_ids=tf.constant([[2, vocab.size]], tf.int32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=">= 0"):
        served(token_ids=tf.constant([[2, -1]], tf.int32))
    for dtype in (tf.int64, tf.float32):
        with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="int32"):
            served(token_ids=tf.constant([[2, 3]], dtype))
    for wrong_rank in ([2, 3], [[[2, 3]]]):  # (time,) and (batch, time, 1) instead of (batch, time)
        with pytest.raises(
            (TypeError, ValueError, tf.errors.InvalidArgumentError), match="rank|shape"
        ):
            served(token_ids=tf.constant(wrong_rank, tf.int32))
    generate = tf.saved_model.load(str(tmp_path / "e")).signatures["generate"]
    empty_prompt = dict(max_new_tokens=tf.constant(3), temperature=tf.constant(1.0),
                        top_k=tf.constant(0), seed=tf.constant(0))  # fmt: skip
    with pytest.raises(tf.errors.InvalidArgumentError, match="prompt needs"):
        generate(prompt_ids=tf.constant([[2, 5], [0, 0]], tf.int32), **empty_prompt)


def test_untrained_or_unbuilt_export_is_a_clear_error(tmp_path):
    vocab = Vocabulary.build(SENTENCES)
    model = RNNLanguageModel(vocab.size, units=4, embedding_dim=4)
    with pytest.raises(ValueError, match="not built"):
        export_saved_model(model, vocab, tmp_path / "a")
    model.build((None, None))
    with pytest.raises(ValueError, match="not been trained"):
        export_saved_model(model, vocab, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    export_saved_model(model, vocab, tmp_path / "c", allow_untrained=True)
    with pytest.raises(FileExistsError):
        export_saved_model(model, vocab, tmp_path / "c", allow_untrained=True)


# `keras-rnnlm train` fits on a tf.data.Dataset with shuffle=True and a one-pass dataset: Keras
# warns about both (issue 14, item 7: the CLI's fit call is being fixed); nothing else is ignored.
IGNORE_SHUFFLE_WARNING = pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")
IGNORE_RAN_OUT_WARNING = pytest.mark.filterwarnings("ignore:Your input ran out of data:UserWarning")


def _train_and_export_with_the_cli(tmp_path):
    """``keras-rnnlm train`` a tiny run into ``tmp_path/run``, ``export`` it to ``tmp_path/export``."""
    from keras_rnnlm.cli import main

    (tmp_path / "t.txt").write_text("\n".join(SENTENCES * 5))
    run = tmp_path / "run"
    args = ["train", "--train-file", str(tmp_path / "t.txt"), "--valid-file", str(tmp_path / "t.txt"), "--epochs", "1",
            "--units", "8", "--embedding-dim", "8", "--num-layers", "1", "--no-jit-compile", "--verbose", "0", "--output", str(run)]  # fmt: skip
    assert main(args) == 0
    assert main(["export", str(run), str(tmp_path / "export")]) == 0
    return run


@IGNORE_SHUFFLE_WARNING
@IGNORE_RAN_OUT_WARNING
def test_export_run_directory(tmp_path):
    run = _train_and_export_with_the_cli(tmp_path)
    card = json.loads((tmp_path / "export" / "model_card.json").read_text())
    assert card["perplexity"]["valid"]["tokens"] > 0
    # the library call behind the CLI refuses to overwrite an export
    with pytest.raises(FileExistsError):
        export_run(run, tmp_path / "export")


def test_hybrid_compiled_bfloat16_model_exports(tmp_path):
    vocab = Vocabulary.build(SENTENCES, lowercase=True)
    model = RNNLanguageModel(vocab.size, units=8, embedding_dim=8, output_dtype="bfloat16")
    compile_language_model(model, "adam", 0.01, jit_compile="recurrence")
    x = RNG.integers(2, vocab.size, size=(8, 6)).astype("int32")
    model.fit(x[:, :-1], x[:, 1:], epochs=1, verbose=0)
    export_dir = export_saved_model(model, vocab, tmp_path / "export")
    # bf16 output matmuls round the logits (|logit| < 0.1 here) to 2**-8 relative, and XLA (the
    # export) and the eager kernel accumulate in different orders: 1.1e-4 was seen, 5e-4 bounds it
    _assert_serves_log_softmax_of(model, export_dir, vocab, atol=5e-4)


GENERATE_CONSUMER = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    export_dir, requests_path, out_path = sys.argv[1:4]
    loaded = tf.saved_model.load(export_dir)
    out = []
    for request in json.load(open(requests_path)):
        name = request.pop("signature")
        inputs = {k: tf.constant(v, dtype=tf.float32 if k in ("temperature", "top_p") else tf.int32)
                  for k, v in request.items()}
        ids = loaded.signatures[name](**inputs)["generated_ids"].numpy()
        out.append(ids.tolist())
    assert not any(m.split(".")[0] == "keras_rnnlm" for m in sys.modules), "keras_rnnlm imported"
    json.dump(out, open(out_path, "w"))
    print("consumer ok")
    """
)


@IGNORE_SHUFFLE_WARNING
@IGNORE_RAN_OUT_WARNING
def test_library_cli_and_tf_only_export_generate_the_same_tokens(tmp_path, capsys):
    from keras_rnnlm.cli import main
    from keras_rnnlm.runs import load_run
    from keras_rnnlm.samplers import (
        GreedySampler,
        RandomSampler,
        TopKSampler,
        TopPSampler,
        generate,
    )

    run = _train_and_export_with_the_cli(tmp_path)
    model, vocab = load_run(run)
    prompt_text, steps, seed = "the cat", 12, 7
    prompt = [vocab.start_id, *vocab.encode(prompt_text)]
    cases = [  # (CLI strategy options, library sampler, export signature inputs)
        (["--strategy", "greedy"], GreedySampler(),
         {"signature": "generate", "temperature": 0.0, "top_k": 0}),
        (["--strategy", "sample", "--temperature", "0.8"], RandomSampler(temperature=0.8, seed=seed),
         {"signature": "generate", "temperature": 0.8, "top_k": 0}),
        (["--strategy", "top_k", "--top-k", "5"], TopKSampler(k=5, seed=seed),
         {"signature": "generate", "temperature": 1.0, "top_k": 5}),
        (["--strategy", "top_p", "--top-p", "0.8"], TopPSampler(p=0.8, seed=seed),
         {"signature": "generate_top_p", "temperature": 1.0, "top_p": 0.8}),
    ]  # fmt: skip
    requests = [
        {**inputs, "prompt_ids": [prompt] * 4, "max_new_tokens": steps, "seed": seed}
        for _, _, inputs in cases
    ]
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    (tmp_path / "consumer.py").write_text(GENERATE_CONSUMER)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "consumer.py"), str(tmp_path / "export"),
         str(tmp_path / "requests.json"), str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0 and "consumer ok" in proc.stdout, proc.stderr[-3000:]
    served = json.loads((tmp_path / "out.json").read_text())
    sampled = set()
    for (cli_options, sampler, _), served_ids in zip(cases, served, strict=True):
        library = generate(model, [prompt] * 4, sampler, max_new_tokens=steps)
        assert np.array(served_ids).tolist() == library.tolist(), cli_options
        sampled.update(library.ravel().tolist())
        capsys.readouterr()
        # the CLI's --max-length counts the prompt and its start token (keras-hub's convention)
        cli = [
            "generate",
            str(run),
            "--prompt",
            prompt_text,
            "--max-length",
            str(len(prompt) + steps),
        ]
        assert main([*cli, *cli_options, "--seed", str(seed)]) == 0
        printed = capsys.readouterr().out.strip()
        assert printed == f"{prompt_text} {vocab.decode(library[0])}".strip(), cli_options
    assert len(sampled) > 4  # the random strategies did sample different tokens


def test_reexport_keeps_the_weights_and_the_card(tmp_path):
    model, vocab = _trained("lstm", num_layers=1)
    first = export_saved_model(model, vocab, tmp_path / "first", model_card={"corpus": "toy"})
    again = reexport_saved_model(first, tmp_path / "again")
    old = tf.train.load_checkpoint(str(first / "variables" / "variables"))
    new = tf.train.load_checkpoint(str(again / "variables" / "variables"))
    keys = [k for k in old.get_variable_to_shape_map() if k.startswith("model/")]
    assert len(keys) >= 5
    for key in keys:
        np.testing.assert_array_equal(new.get_tensor(key), old.get_tensor(key))
    card = json.loads((again / "model_card.json").read_text())
    first_card = json.loads((first / "model_card.json").read_text())
    assert card["corpus"] == "toy" and card["config"] == first_card["config"]
    _assert_serves_log_softmax_of(model, again, vocab, atol=1e-5)


STEP_WITH_RESET_CONSUMER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    export_dir, inputs_path, outputs_path = sys.argv[1:4]
    loaded = tf.saved_model.load(export_dir)
    ids = np.load(inputs_path)["ids"]  # (3, time): rows read in step, then one more token
    step, step_with_reset = loaded.signatures["step"], loaded.signatures["step_with_reset"]
    state = loaded.signatures["initial_state"](batch_size=tf.constant(3))
    for t in range(ids.shape[1] - 1):
        state = {k: v for k, v in step(token=tf.constant(ids[:, t]), **state).items() if k != "logits"}
    last = tf.constant(ids[:, -1])
    reset = step_with_reset(token=last, reset=tf.constant([0, 1, 0]), **state)
    no_reset = step_with_reset(token=last, reset=tf.constant([0, 0, 0]), **state)
    plain = step(token=last, **state)
    refused = ""
    try:
        step_with_reset(token=last, reset=tf.constant([0, 1]), **state)
    except tf.errors.InvalidArgumentError as error:
        refused = error.message
    assert not any(m.split(".")[0] == "keras_rnnlm" for m in sys.modules), "keras_rnnlm imported"
    np.savez(outputs_path, reset=reset["logits"].numpy(), no_reset=no_reset["logits"].numpy(),
             plain=plain["logits"].numpy(), refused=np.array(refused),
             reset_h0=reset["h_0"].numpy(), plain_h0=plain["h_0"].numpy())
    print("consumer ok")
    """
)


def test_step_with_reset_restarts_one_row_and_keeps_the_others(tmp_path):
    model, vocab = _trained("lstm")
    export_dir = export_saved_model(model, vocab, tmp_path / "export")
    assert {"step", "step_with_reset"} <= set(
        json.loads((export_dir / "model_card.json").read_text())["signatures"]
    )
    ids = RNG.integers(4, vocab.size, size=(3, 5)).astype("int32")
    ids[:, 0] = 2
    out = _run_consumer(tmp_path, STEP_WITH_RESET_CONSUMER, export_dir, {"ids": ids})
    # truth: the Keras model on whole sequences; row 1 reads only its last token, from zero
    whole = np.asarray(model(ids))[:, -1]
    alone = np.asarray(model(ids[1:2, -1:]))[0, -1]
    np.testing.assert_allclose(out["reset"][[0, 2]], whole[[0, 2]], atol=1e-5)
    np.testing.assert_allclose(out["reset"][1], alone, atol=1e-5)
    assert not np.allclose(out["reset"][1], whole[1], atol=1e-3)  # the reset acted
    np.testing.assert_allclose(out["no_reset"], out["plain"], atol=1e-6)  # reset 0 = step
    np.testing.assert_allclose(out["reset_h0"][[0, 2]], out["plain_h0"][[0, 2]], atol=1e-6)
    assert "one value per token" in str(out["refused"])
