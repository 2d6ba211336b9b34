"""Progress on stderr only on a terminal, --quiet, clean stdout; --help examples; what train
says before and after."""

import io
import json
import sys

import pytest

from keras_rnnlm import cli_help
from keras_rnnlm.cli import build_parser, main
from keras_rnnlm.progress import Progress, chunks, score_file_with_progress

SENTENCES = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 7


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_only_on_a_terminal_and_not_when_quiet():
    terminal, pipe, quiet = _Terminal(), io.StringIO(), _Terminal()
    for stream, is_quiet in ((terminal, False), (pipe, False), (quiet, True)):
        with Progress(4, "score", "batches", quiet=is_quiet, stream=stream) as progress:
            assert list(progress.iterate("abcd")) == list("abcd")
        assert progress.done == 4
    assert pipe.getvalue() == "" and quiet.getvalue() == ""
    text = terminal.getvalue()
    assert text.endswith("\n") and "\r" in text
    assert "score: 0/4 batches (0%)" in text  # drawn on entering
    assert "score: 4/4 batches (100%)" in text.rsplit("\r", 1)[-1]


def test_progress_with_an_unknown_total_counts():
    terminal = _Terminal()
    with Progress(None, "evaluate", "batches", stream=terminal, min_interval=0) as progress:
        progress.update(3)
    assert "evaluate: 3 batches" in terminal.getvalue()


def test_chunks():
    assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]
    with pytest.raises(ValueError):
        chunks([1], 0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from keras_rnnlm.runs import TrainConfig, train

    tmp = tmp_path_factory.mktemp("progress")
    (tmp / "train.txt").write_text("\n".join(SENTENCES) + "\n")
    config = TrainConfig(
        train_file=str(tmp / "train.txt"),
        num_layers=1,
        units=8,
        embedding_dim=8,
        epochs=1,
        min_count=1,
        jit_compile=False,
        verbose=0,
        output=str(tmp / "run"),
    )
    train(config)
    return tmp / "run"


def test_score_file_in_chunks_equals_one_pass_and_progress_goes_to_stderr(run_dir, capsys):
    from keras_rnnlm.runs import load_run
    from keras_rnnlm.scoring import text_perplexity

    model, vocabulary = load_run(run_dir)
    monkey_terminal = _Terminal()
    sys_stderr = sys.stderr
    sys.stderr = monkey_terminal
    try:  # batch 2: chunks of 16 sentences, two chunks for 21 sentences (+ one blank skipped)
        result = score_file_with_progress(model, vocabulary, [*SENTENCES, "  "], batch_size=2)
    finally:
        sys.stderr = sys_stderr
    whole = text_perplexity(model, vocabulary, SENTENCES, batch_size=2)
    assert result.keys() == whole.keys()
    assert result["tokens"] == whole["tokens"] and result["sentences"] == len(SENTENCES)
    assert result["perplexity"] == pytest.approx(whole["perplexity"], rel=1e-6)
    assert "score: 21/21 sentences (100%)" in monkey_terminal.getvalue()
    assert capsys.readouterr().out == ""  # nothing on stdout


def test_a_progress_wrapped_dataset_evaluates_the_same(run_dir):
    # the contract evaluate's progress relies on: evaluate_perplexity only iterates the dataset
    from keras_rnnlm.data.pipelines import encode_corpus, sentence_dataset
    from keras_rnnlm.runs import load_run
    from keras_rnnlm.training import evaluate_perplexity

    model, vocabulary = load_run(run_dir)
    dataset = sentence_dataset(encode_corpus(vocabulary, SENTENCES), 4, shuffle=False)
    terminal = _Terminal()
    with Progress(None, "evaluate", "batches", stream=terminal) as progress:
        wrapped = evaluate_perplexity(model, progress.iterate(dataset))
    assert wrapped == evaluate_perplexity(model, dataset)
    assert progress.done == len(list(dataset)) > 1
    assert f"evaluate: {progress.done} batches" in terminal.getvalue()


@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_score_file_stdout_is_json_with_progress_on(run_dir, tmp_path, capsys, quiet):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(SENTENCES) + "\n")
    capsys.readouterr()
    sys.stderr.isatty = lambda: True  # capsys's stderr: a fake terminal for this test
    try:
        assert main(["score", str(run_dir), "--file", str(text), *quiet]) == 0
    finally:
        del sys.stderr.isatty
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # the whole stdout is one JSON document
    assert result["sentences"] == len(SENTENCES) and result["file"] == str(text)
    if quiet:
        assert captured.err == ""


def test_every_command_help_has_an_example():
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.choices and "train" in a.choices]
    assert set(subparsers.choices) == set(cli_help.EXAMPLES)
    for name, command in subparsers.choices.items():
        text = command.format_help()
        assert "Example:\n  keras-rnnlm " + name in text, name
    for name in ("evaluate", "score", "generate"):
        assert "--quiet" in subparsers.choices[name].format_help()
    generate_help = subparsers.choices["generate"].format_help()
    assert "counts the prompt" in generate_help and "--max-new-tokens" in generate_help


def test_train_says_what_it_does_and_what_to_try_next(tmp_path):
    from keras_rnnlm.run_config import BACKUP_DIR, TrainConfig

    assert cli_help.BACKUP_DIR == BACKUP_DIR
    config = TrainConfig(output=str(tmp_path / "run"), tensorboard="tb")
    intro = cli_help.train_intro(config)
    assert intro.startswith("Training a 2-layer LSTM language model on the python_docs corpus")
    assert "200 units" in intro and f"output: {tmp_path / 'run'}/" in intro
    assert "tensorboard --logdir tb" in intro
    (tmp_path / "run" / BACKUP_DIR).mkdir(parents=True)
    assert cli_help.train_intro(config).startswith("Resuming")
    commands = cli_help.next_commands(config)
    for command in ("generate", "score", "evaluate", "export"):
        assert f"keras-rnnlm {command} {tmp_path / 'run'}" in commands
