"""LiteRT export: builtin ops only, parity in a process without TensorFlow, host generation."""

import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from deploy_helpers import SENTENCES, require, tiny_trained_model

from keras_rnnlm.data.vocabulary import Vocabulary
from keras_rnnlm.deploy import export_model
from keras_rnnlm.deploy.litert import export_litert, litert_op_names
from keras_rnnlm.samplers import GreedySampler, TopKSampler, generate, generate_text

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "litert_host.py"
SHIPPED_PTB = ROOT / "saved_models" / "ptb_word_lstm_small"
SEQUENCE_LENGTH = 12


require("ai_edge_litert")


@pytest.fixture(scope="module")
def tiny():
    return tiny_trained_model("lstm")


@pytest.fixture(scope="module")
def tiny_export(tiny, tmp_path_factory):
    model, vocab = tiny
    out = tmp_path_factory.mktemp("litert") / "tiny"
    return export_litert(model, vocab, out, sequence_length=SEQUENCE_LENGTH)


def _run_without_tensorflow(code: str) -> str:
    """Run ``code`` in a fresh interpreter; it fails if TensorFlow got imported."""
    check = "\nassert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
    result = subprocess.run(
        [sys.executable, "-c", "import sys\n" + textwrap.dedent(code) + check],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _litert_step_logits(model_dir, token_ids, tmp_path) -> np.ndarray:
    """Logits of ``step.tflite`` fed ``token_ids`` one by one, computed without TensorFlow."""
    ids_file, out_file = tmp_path / "ids.npy", tmp_path / "logits.npy"
    np.save(ids_file, np.asarray(token_ids, np.int32))
    _run_without_tensorflow(
        f"""
        import runpy
        import numpy as np
        example = runpy.run_path({str(EXAMPLE)!r})
        step = example["StepModel"]({str(Path(model_dir) / "step.tflite")!r})
        states, rows = step.initial_state(), []
        for token in np.load({str(ids_file)!r}):
            logits, states = step(int(token), states)
            rows.append(logits)
        np.save({str(out_file)!r}, np.stack(rows))
        """
    )
    return np.load(out_file)


def test_step_and_score_hold_builtin_ops_and_named_signatures(tiny_export):
    from ai_edge_litert.interpreter import Interpreter

    for name in ("step", "score"):
        ops = set(litert_op_names(tiny_export / f"{name}.tflite"))
        assert not {op for op in ops if op.startswith("Flex") or op == "CUSTOM"}, ops
        assert not ops & {"VAR_HANDLE", "READ_VARIABLE"}, ops  # the weights are constants
        assert {"FULLY_CONNECTED", "LOGISTIC", "TANH"} <= ops  # the loop body is listed too
    step = Interpreter(model_path=str(tiny_export / "step.tflite")).get_signature_list()
    names = ["c_0", "c_1", "h_0", "h_1"]
    assert step == {"step": {"inputs": names + ["token"], "outputs": names + ["logits"]}}
    score = Interpreter(model_path=str(tiny_export / "score.tflite")).get_signature_list()
    assert score == {"score": {"inputs": ["token_ids"], "outputs": ["token_log_probs"]}}


def test_fifty_steps_without_tensorflow_match_the_keras_forward_pass(tiny, tiny_export, tmp_path):
    model, vocab = tiny
    ids = np.random.default_rng(1).integers(3, vocab.size, size=50).astype("int32")
    expected = np.asarray(model(ids[None]))[0]  # the time-loop forward pass, not model.step
    got = _litert_step_logits(tiny_export, ids, tmp_path)
    assert got.shape == expected.shape == (50, vocab.size)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_score_matches_the_keras_log_probabilities_with_padding(tiny, tiny_export):
    from ai_edge_litert.interpreter import Interpreter

    model, vocab = tiny
    runner = Interpreter(model_path=str(tiny_export / "score.tflite")).get_signature_runner("score")
    rng = np.random.default_rng(2)
    for length in (SEQUENCE_LENGTH, 5):
        ids = np.zeros((1, SEQUENCE_LENGTH), np.int32)
        ids[0, :length] = [2, *rng.integers(4, vocab.size, size=length - 1)]
        got = runner(token_ids=ids)["token_log_probs"][0]
        log_probs = np.asarray(tf.nn.log_softmax(model(ids[:, :length])))[0]
        expected = np.zeros(SEQUENCE_LENGTH, np.float32)
        expected[: length - 1] = log_probs[np.arange(length - 1), ids[0, 1:length]]
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        assert np.all(got[length - 1 :] == 0)


def test_card_and_vocabulary_describe_the_files(tiny, tiny_export):
    model, vocab = tiny
    card = json.loads((tiny_export / "model_card.json").read_text())
    assert Vocabulary.load(tiny_export / "vocabulary.json") == vocab
    assert card["format"] == "litert" and card["score_sequence_length"] == SEQUENCE_LENGTH
    assert card["state_names"] == ["h_0", "c_0", "h_1", "c_1"] and card["state_sizes"] == [8] * 4
    assert card["vocabulary_size"] == vocab.size == model.vocabulary_size
    assert card["tokenization"]["start_id"] == vocab.start_id == 2
    for name in ("step.tflite", "score.tflite", "vocabulary.json"):
        assert card["file_bytes"][name] == (tiny_export / name).stat().st_size
    assert card["tensorflow_version"] == tf.__version__


def test_host_generation_through_litert_equals_the_library(tiny, tiny_export):
    from keras_rnnlm.deploy.host import KerasStep, LiteRTStep, generate_text_with_step

    model, vocab = tiny
    prompts = ["the cat", "a dog sat on"]
    step, keras_step = LiteRTStep(tiny_export / "step.tflite"), KerasStep(model)
    greedy = generate_text(model, vocab, prompts, GreedySampler(), max_new_tokens=8)
    assert greedy == [["sat on the mat"], ["a log !"]]  # it learnt (most of) its sentences
    for sampler in (GreedySampler(), TopKSampler(k=5, seed=3)):  # one sampler, any step
        reference = [r[0] for r in generate_text(model, vocab, prompts, sampler, max_new_tokens=8)]
        assert generate_text_with_step(step, vocab, prompts, sampler, 8) == reference
        assert generate_text_with_step(keras_step, vocab, prompts, sampler, 8) == reference


@pytest.mark.parametrize(
    "config, texts",
    [
        (dict(lowercase=True), ["The Cat, sat!", "dog's  mat\t.", "Über café ?"]),
        (dict(pretokenized=True), ["the cat 's mat", "a  <unk> dog"]),
        (dict(level="char"), ["the cat", "é\n!"]),
    ],
)
def test_example_tokenizer_follows_the_vocabulary(config, texts, tmp_path):
    vocab = Vocabulary.build(SENTENCES + ["über café dog's"], **config)
    vocab.save(tmp_path / "vocabulary.json")
    tokenizer = runpy.run_path(str(EXAMPLE))["Tokenizer"](tmp_path / "vocabulary.json")
    assert tokenizer.start_id == vocab.start_id
    for text in texts:
        assert tokenizer.encode(text) == vocab.encode(text), text
        ids = vocab.encode(text)
        assert tokenizer.decode(ids) == vocab.decode(ids)


def test_export_model_reads_an_export_directory(tiny, tmp_path):
    from keras_rnnlm.export import export_saved_model

    model, vocab = tiny
    export_saved_model(model, vocab, tmp_path / "saved", allow_untrained=True)
    out = export_model(tmp_path / "saved", tmp_path / "lite", "litert", sequence_length=4)
    card = json.loads((out / "model_card.json").read_text())
    assert card["config"]["units"] == 8 and card["score_sequence_length"] == 4
    with pytest.raises(FileExistsError, match="already exists"):
        export_model(tmp_path / "saved", out, "litert")
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(tmp_path / "saved", tmp_path / "x", "coreml")
    with pytest.raises(FileNotFoundError, match="neither a keras-rnnlm run"):
        export_model(tmp_path, tmp_path / "y", "litert")


def test_export_model_reads_a_run_directory_and_its_metrics(tiny, tmp_path):
    from keras_rnnlm.runs import METRICS_FILE, MODEL_FILE, VOCAB_FILE

    model, vocab = tiny
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / MODEL_FILE)
    vocab.save(run / VOCAB_FILE)
    metrics = {"corpus": "toy", "mode": "sentence", "test": {"perplexity": 5.5}}
    (run / METRICS_FILE).write_text(json.dumps(metrics))
    out = export_model(run, tmp_path / "lite", "litert", sequence_length=4)
    card = json.loads((out / "model_card.json").read_text())
    assert card["corpus"] == "toy" and card["perplexity"] == {"test": {"perplexity": 5.5}}
    ids = np.array([2, *vocab.encode("the cat sat")], np.int32)
    got = _litert_step_logits(out, ids, tmp_path)
    np.testing.assert_allclose(got, np.asarray(model(ids[None]))[0], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def ptb_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("litert") / "ptb"
    return export_model(SHIPPED_PTB, out, "litert", sequence_length=8)


@pytest.mark.slow
def test_shipped_ptb_model_steps_match_the_saved_model(ptb_export, tmp_path):
    vocab = Vocabulary.load(SHIPPED_PTB / "vocabulary.json")
    ids = np.array([3, *vocab.encode("the company said it expects the market to")] * 5)[:50]
    got = _litert_step_logits(ptb_export, ids, tmp_path)
    step = tf.saved_model.load(str(SHIPPED_PTB)).signatures["step"]
    states = {n: tf.zeros((1, 200)) for n in ("h_0", "c_0", "h_1", "c_1")}
    expected = []
    for token in ids:
        out = step(token=tf.constant([token], tf.int32), **states)
        expected.append(out["logits"].numpy()[0])
        states = {n: out[n] for n in states}
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_shipped_ptb_greedy_continuation_without_tensorflow_equals_the_library(ptb_export):
    from keras_rnnlm.inspection import load_language_model

    prompt, steps = "the company said", 20
    out = _run_without_tensorflow(
        f"""
        import runpy
        sys.argv = ["litert_host.py", {str(ptb_export)!r}, {prompt!r}, "--max-new-tokens", "{steps}"]
        runpy.run_path({str(EXAMPLE)!r}, run_name="__main__")
        """
    )
    result = json.loads(out.strip().splitlines()[-1])
    model, vocab = load_language_model(SHIPPED_PTB)
    expected = generate(
        model, [[vocab.start_id, *vocab.encode(prompt)]], GreedySampler(), steps, None
    )[0]
    assert result["ids"] == expected.tolist()
    assert result["min_top2_gap"] > 1e-3  # no near-tie along the path: equality is not luck
    assert result["text"] == vocab.decode(expected)


def test_cli_export_writes_litert_and_refuses_quantize_for_onnx(tiny, tmp_path, capsys):
    from keras_rnnlm.cli import main
    from keras_rnnlm.export import export_saved_model

    model, vocab = tiny
    export_saved_model(model, vocab, tmp_path / "saved", allow_untrained=True)
    args = ["export", str(tmp_path / "saved"), str(tmp_path / "lite"), "--format", "litert"]
    assert main([*args, "--sequence-length", "4"]) == 0
    assert "litert model written" in capsys.readouterr().out
    assert {"step.tflite", "score.tflite", "vocabulary.json"} <= {
        p.name for p in (tmp_path / "lite").iterdir()
    }
    assert not {"FlexDelegate", "CUSTOM"} & set(litert_op_names(tmp_path / "lite" / "step.tflite"))
    onnx = ["export", str(tmp_path / "saved"), str(tmp_path / "onnx"), "--format", "onnx"]
    assert main([*onnx, "--quantize"]) == 2  # bad input: --quantize is a LiteRT option
    assert not (tmp_path / "onnx").exists()
