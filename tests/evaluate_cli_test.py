"""``keras-rnnlm evaluate`` / ``score --jsonl`` / ``compare`` on tiny runs and their exports."""

import json
import shutil

import numpy as np
import pytest

from keras_rnnlm import cli

WORDS = "the cat sat on the mat . a dog ran to the park . the bird sang in the tree ."


def _write_corpus(directory):
    rng = np.random.default_rng(0)
    sentences = [s.strip() + " ." for s in WORDS.split(".") if s.strip()]
    lines = [sentences[i] for i in rng.integers(0, len(sentences), size=240)]
    (directory / "train.txt").write_text("\n".join(lines[:200]) + "\n")
    (directory / "valid.txt").write_text("\n".join(lines[200:220]) + "\n")
    (directory / "test.txt").write_text("\n".join(lines[220:]) + "\n\n")  # a blank line too


@pytest.fixture(scope="module")
def stream_run(tmp_path_factory):
    """A tiny stream-trained run (its metrics.json holds the trainer's stream test figure)."""
    from keras_rnnlm.runs import TrainConfig, train

    root = tmp_path_factory.mktemp("evaluate_cli")
    _write_corpus(root)
    config = TrainConfig(
        train_file=str(root / "train.txt"),
        valid_file=str(root / "valid.txt"),
        test_file=str(root / "test.txt"),
        mode="stream",
        num_layers=1,
        units=16,
        embedding_dim=16,
        batch_size=4,
        num_steps=10,
        epochs=4,
        learning_rate=0.01,
        verbose=0,
        output=str(root / "run"),
    )
    metrics = train(config)
    return root, metrics


def _run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_reads_a_stream_run_as_a_stream_with_an_interval(stream_run, capsys):
    root, metrics = stream_run
    code, out, _ = _run_cli(
        capsys, "evaluate", str(root / "run"), "--test-file", str(root / "test.txt")
    )
    assert code == 0
    result = json.loads(out)
    assert result["mode"] == "stream"
    # the trainer's own stream evaluation (batch 1, state carried) of the same test split
    assert result["perplexity"] == pytest.approx(metrics["test"]["perplexity"], rel=1e-5)
    assert result["tokens"] == metrics["test"]["tokens"]
    low, high = result["perplexity_ci95"]
    assert low <= result["perplexity"] <= high
    assert result["bootstrap"]["unit"] == "block" and result["bootstrap"]["B"] == 1000
    assert result["bootstrap"]["seed"] == 0
    # read per sentence instead, from zero states: other units and another figure
    code, out, _ = _run_cli(
        capsys,
        "evaluate",
        str(root / "run"),
        "--test-file",
        str(root / "test.txt"),
        "--mode",
        "sentence",
    )
    sentence = json.loads(out)
    assert sentence["bootstrap"]["unit"] == "sentence"
    assert sentence["perplexity"] != pytest.approx(result["perplexity"], rel=1e-4)


def test_evaluate_and_score_an_export_without_writing_into_it(stream_run, capsys, tmp_path):
    from keras_rnnlm.export import export_run

    root, metrics = stream_run
    export = export_run(root / "run", tmp_path / "export")

    def listing():
        return sorted((str(p.relative_to(export)), p.stat().st_mtime_ns) for p in export.rglob("*"))

    before = listing()
    code, out, _ = _run_cli(capsys, "evaluate", str(export), "--test-file", str(root / "test.txt"))
    assert code == 0
    result = json.loads(out)
    assert result["mode"] == "stream"
    assert result["perplexity"] == pytest.approx(metrics["test"]["perplexity"], rel=1e-4)
    code, out, _ = _run_cli(
        capsys, "score", str(export), "--file", str(root / "test.txt"), "--jsonl"
    )
    assert code == 0
    assert listing() == before


def test_score_jsonl_prints_one_object_per_sentence(stream_run, capsys):
    from keras_rnnlm.runs import load_run
    from keras_rnnlm.scoring import text_perplexity

    root, _ = stream_run
    test_file = root / "test.txt"
    code, out, _ = _run_cli(capsys, "score", str(root / "run"), "--file", str(test_file), "--jsonl")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]  # stdout holds only JSON lines
    texts = [line for line in test_file.read_text().splitlines() if line.strip()]
    assert len(records) == len(texts)
    assert [r["tokens"] for r in records] == [len(t.split()) + 1 for t in texts]  # + <eos>
    model, vocabulary = load_run(root / "run")
    reference = text_perplexity(model, vocabulary, texts)
    nll = sum(r["nll"] for r in records) / sum(r["tokens"] for r in records)
    assert np.exp(nll) == pytest.approx(reference["perplexity"], rel=1e-5)


def _untrained_copy(run, target):
    """The run with freshly initialised weights (same config, vocabulary and mode)."""
    from keras_rnnlm.models import RNNLanguageModel
    from keras_rnnlm.runs import load_run

    shutil.copytree(run, target)
    model, _ = load_run(run)
    fresh = RNNLanguageModel.from_config(model.get_config())
    fresh.build((None, None))
    (target / "model.keras").unlink()
    fresh.save(target / "model.keras")
    return target


def test_compare_finds_the_untrained_copy_worse(stream_run, capsys, tmp_path):
    root, _ = stream_run
    untrained = _untrained_copy(root / "run", tmp_path / "untrained")
    test_file = str(root / "test.txt")
    code, out, _ = _run_cli(
        capsys, "compare", str(root / "run"), str(untrained), "--test-file", test_file
    )
    assert code == 0
    result = json.loads(out)
    low, high = result["log_ppl_difference_ci95"]
    assert 0.0 < low <= result["log_ppl_difference"] <= high  # B (untrained) is worse
    assert result["log_ppl_difference"] == pytest.approx(
        np.log(result["perplexity_b"]) - np.log(result["perplexity_a"])
    )
    code, out, _ = _run_cli(
        capsys, "compare", str(untrained), str(root / "run"), "--test-file", test_file
    )
    assert json.loads(out)["log_ppl_difference_ci95"][1] < 0.0


@pytest.mark.parametrize("change", ["lowercase", "tokens"])
def test_compare_refuses_models_that_tokenize_differently(stream_run, capsys, tmp_path, change):
    root, _ = stream_run
    other = tmp_path / "other"
    shutil.copytree(root / "run", other)
    vocabulary = json.loads((other / "vocabulary.json").read_text())
    if change == "lowercase":
        vocabulary["lowercase"] = True
    else:
        vocabulary["tokens"][0], vocabulary["tokens"][1] = (
            vocabulary["tokens"][1],
            vocabulary["tokens"][0],
        )
    (other / "vocabulary.json").write_text(json.dumps(vocabulary))
    code, out, err = _run_cli(
        capsys, "compare", str(root / "run"), str(other), "--test-file", str(root / "test.txt")
    )
    assert code == 2 and out == ""
    assert ("lowercase" if change == "lowercase" else "different vocabularies") in err


def test_shipped_char_model_is_read_as_a_stream_and_left_untouched(
    shakespeare_dir, capsys, tmp_path
):
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "saved_models" / "shakespeare_char_lstm"
    lines = (shakespeare_dir / "input.txt").read_text().splitlines()[:60]
    text = tmp_path / "scene.txt"
    text.write_text("\n".join(lines) + "\n")
    before = sorted((str(p), p.stat().st_mtime_ns) for p in shipped.rglob("*"))
    code, out, _ = _run_cli(
        capsys, "evaluate", str(shipped), "--test-file", str(text), "--window", "64"
    )
    assert code == 0
    result = json.loads(out)
    assert result["mode"] == "stream" and result["bootstrap"]["unit"] == "block"
    # characters of the training text: far better than a uniform guess over the vocabulary
    vocabulary_size = len(json.loads((shipped / "vocabulary.json").read_text())["tokens"])
    assert result["perplexity_ci95"][1] < vocabulary_size / 4
    assert sorted((str(p), p.stat().st_mtime_ns) for p in shipped.rglob("*")) == before


def _fingerprint(directory):
    import hashlib

    return sorted(
        (str(p.relative_to(directory)), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in directory.rglob("*")
        if p.is_file() and not p.name.startswith("evaluate_")  # evaluate's own JSON
    )


def test_evaluate_dynamic_scores_first_and_leaves_the_run_untouched(stream_run, capsys):
    import sys

    root, metrics = stream_run
    before = _fingerprint(root / "run")
    argv = ["evaluate", str(root / "run"), "--test-file", str(root / "test.txt"), "--dynamic"]
    argv += ["--dynamic-train-file", str(root / "train.txt"), "--segment-length", "8"]
    capsys.readouterr()
    sys.stderr.isatty = lambda: True  # capsys's stderr: a fake terminal, progress drawn
    try:
        code, out, err = _run_cli(capsys, *argv, "--dynamic-lr", "0", "--dynamic-decay", "0")
    finally:
        del sys.stderr.isatty
    assert code == 0
    frozen = json.loads(out)  # stdout is one JSON document; progress went to stderr
    assert "dynamic evaluation:" in err and "segments (100%)" in err
    # lr 0: the weights never move, dynamic = static stream = the trainer's own test figure
    assert frozen["dynamic_perplexity"] == pytest.approx(frozen["perplexity"], rel=1e-6)
    assert frozen["perplexity"] == pytest.approx(metrics["test"]["perplexity"], rel=1e-5)
    assert frozen["tokens"] == metrics["test"]["tokens"]
    assert frozen["dynamic_gain"]["log_ppl_difference"] == pytest.approx(0.0, abs=1e-6)
    code, out, err = _run_cli(capsys, *argv, "--dynamic-lr", "0.01", "--quiet")
    assert code == 0 and err == ""
    result = json.loads(out)
    for key in ("perplexity", "perplexity_ci95", "tokens", "dynamic_perplexity"):
        assert key in result
    low, high = result["dynamic_perplexity_ci95"]
    assert low <= result["dynamic_perplexity"] <= high
    assert result["dynamic_perplexity"] != pytest.approx(result["perplexity"], rel=1e-4)
    assert result["perplexity"] == frozen["perplexity"]
    statistics = result["dynamic"]["gradient_statistics"]
    assert statistics["tokens"] > 0 and statistics["file"] == str(root / "train.txt")
    assert _fingerprint(root / "run") == before  # saved weights and files unchanged


def test_evaluate_dynamic_without_training_text_is_refused(stream_run, capsys):
    root, _ = stream_run
    code, out, err = _run_cli(
        capsys, "evaluate", str(root / "run"), "--test-file", str(root / "test.txt"), "--dynamic"
    )
    assert code == 2 and out == ""
    assert "--dynamic-train-file" in err


@pytest.mark.parametrize("quiet", [False, True])
def test_evaluate_progress_on_a_terminal_only_and_stdout_stays_json(stream_run, capsys, quiet):
    import sys

    root, _ = stream_run
    capsys.readouterr()
    sys.stderr.isatty = lambda: True
    try:
        code, out, err = _run_cli(
            capsys,
            "evaluate",
            str(root / "run"),
            "--test-file",
            str(root / "test.txt"),
            *(["--quiet"] if quiet else []),
        )
    finally:
        del sys.stderr.isatty
    assert code == 0
    assert json.loads(out)["tokens"] > 0
    assert err == "" if quiet else "evaluate: " in err
    if quiet:
        return
    code, out, err = _run_cli(
        capsys, "evaluate", str(root / "run"), "--test-file", str(root / "test.txt")
    )
    assert err == ""  # not a terminal (capsys): nothing drawn


def test_evaluate_document_boundary_reaches_static_and_dynamic_evaluation(
    stream_run, capsys, tmp_path
):
    """``--document-boundary`` overrides the run's own boundary (``config.json``) in static
    and ``--dynamic`` evaluation; truths: ``evaluate_stream_perplexity`` with and without the
    resets of ``encode_stream`` on the same file."""
    from keras_rnnlm.data.pipelines import encode_stream
    from keras_rnnlm.evaluation import evaluate_stream_perplexity
    from keras_rnnlm.runs import load_any_model

    root, _ = stream_run
    train_lines = (root / "train.txt").read_text().splitlines()
    lines = []
    for k in range(6):  # six documents of 3 sentences, separated by blank lines
        lines += train_lines[3 * k : 3 * k + 3] + [""]
    text = tmp_path / "documents.txt"
    text.write_text("\n".join(lines) + "\n")
    model, vocabulary, _ = load_any_model(root / "run")
    stream, reset = encode_stream(vocabulary, lines, "blank")
    assert int(reset.sum()) == 6

    def truth(window, resets):
        return evaluate_stream_perplexity(model, stream, window=window, reset=resets)["perplexity"]

    def evaluate(run, *options):
        code, out, err = _run_cli(capsys, "evaluate", str(run), "--test-file", str(text), *options)
        assert code == 0, err
        return json.loads(out)

    carried, with_resets = truth(256, None), truth(256, reset)
    assert with_resets != pytest.approx(carried, rel=1e-4)
    # the run was trained without documents: carried by default, reset when asked
    default = evaluate(root / "run", "--quiet")
    assert default["document_boundary"] is None
    assert default["perplexity"] == pytest.approx(carried, rel=1e-6)
    asked = evaluate(root / "run", "--quiet", "--document-boundary", "blank")
    assert asked["document_boundary"] == "blank"
    assert asked["perplexity"] == pytest.approx(with_resets, rel=1e-6)
    # a run trained with --document-boundary blank (its config says so): reset by default,
    # carried with "none"
    documents_run = tmp_path / "documents_run"
    shutil.copytree(root / "run", documents_run)
    config = json.loads((documents_run / "config.json").read_text())
    (documents_run / "config.json").write_text(json.dumps({**config, "document_boundary": "blank"}))
    own = evaluate(documents_run, "--quiet")
    assert own["document_boundary"] == "blank"
    assert own["perplexity"] == pytest.approx(with_resets, rel=1e-6)
    none = evaluate(documents_run, "--quiet", "--document-boundary", "none")
    assert none["document_boundary"] is None
    assert none["perplexity"] == pytest.approx(carried, rel=1e-6)
    # --dynamic: the same resets in the static and the dynamic pass (lr 0: equal figures)
    dynamic = ["--dynamic", "--dynamic-train-file", str(root / "train.txt")]
    dynamic += ["--segment-length", "8", "--dynamic-lr", "0", "--dynamic-decay", "0", "--quiet"]
    frozen = evaluate(documents_run, *dynamic)
    assert frozen["document_boundary"] == "blank"
    assert frozen["perplexity"] == pytest.approx(truth(8, reset), rel=1e-6)
    assert frozen["dynamic_perplexity"] == pytest.approx(truth(8, reset), rel=1e-5)
    frozen_none = evaluate(documents_run, *dynamic, "--document-boundary", "none")
    assert frozen_none["document_boundary"] is None
    assert frozen_none["dynamic_perplexity"] == pytest.approx(truth(8, None), rel=1e-5)
    # a boundary needs a stream
    code, out, err = _run_cli(
        capsys, "evaluate", str(root / "run"), "--test-file", str(text), "--quiet",
        "--mode", "sentence", "--document-boundary", "blank",
    )  # fmt: skip
    assert code == 2 and out == "" and "needs stream mode" in err
