"""The keras-rnnlm CLI end to end on tiny settings."""

import json
import os
import re
import stat
import subprocess
import sys

import pytest

from keras_rnnlm import cli, constants
from keras_rnnlm.cli import main

# keras_rnnlm.runs.train calls model.fit on a tf.data.Dataset without shuffle=False, so Keras
# warns that shuffle=True is ignored (the data order is the pipeline's own, by design)
pytestmark = pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")

TF_LOG_LINE = re.compile(r"^[IWE]\d{4} ", re.MULTILINE)

TINY = [
    "--units",
    "16",
    "--embedding-dim",
    "16",
    "--num-layers",
    "1",
    "--batch-size",
    "8",
    "--verbose",
    "0",
    "--no-jit-compile",
]


def _write(tmp_path):
    lines = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 20
    for name, n in (("train", 60), ("valid", 9), ("test", 9)):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines[:n]) + "\n")


def test_train_writes_model_vocabulary_and_metrics(tmp_path):
    _write(tmp_path)
    out = tmp_path / "run"
    args = [
        "train",
        "--train-file",
        str(tmp_path / "train.txt"),
        "--valid-file",
        str(tmp_path / "valid.txt"),
        "--test-file",
        str(tmp_path / "test.txt"),
        "--epochs",
        "10",
        "--learning-rate",
        "0.02",
        "--output",
        str(out),
        *TINY,
    ]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("train", "valid", "test"):
        assert metrics[split]["tokens"] > 0
    assert metrics["valid"]["perplexity"] < metrics["unigram_valid_perplexity"]
    assert (out / "model.keras").is_file() and (out / "vocabulary.json").is_file()

    # evaluate any text file with the run
    assert main(["evaluate", str(out), "--test-file", str(tmp_path / "test.txt")]) == 0
    result = json.loads((out / "evaluate_test.json").read_text())
    assert result["tokens"] == metrics["test"]["tokens"]
    assert abs(result["perplexity"] - metrics["test"]["perplexity"]) < 1e-3 * result["perplexity"]

    # an existing run is never overwritten without --overwrite
    before = (out / "model.keras").read_bytes()
    assert main(args) == 2
    assert (out / "model.keras").read_bytes() == before


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--train-file",
                str(tmp_path / "missing.txt"),
                "--output",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "missing.txt" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path), "--test-file", "x.txt"]) == 2
    assert "not a keras-rnnlm run" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_nan_loss_stops_with_advice(tmp_path):
    _write(tmp_path)
    args = [
        "train",
        "--train-file",
        str(tmp_path / "train.txt"),
        "--cell",
        "simple_rnn",
        "--optimizer",
        "sgd",
        "--learning-rate",
        "1e30",
        "--clip-norm",
        "0",
        "--epochs",
        "2",
        "--output",
        str(tmp_path / "nan"),
        *TINY,
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "keras_rnnlm.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Stopped: the loss became" in proc.stdout and "--clip-norm" in proc.stdout
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "keras-rnnlm train: error: Stopped" in proc.stderr
    # no model from NaN weights; the configuration and vocabulary are still there
    assert not (tmp_path / "nan" / "model.keras").exists()
    assert (tmp_path / "nan" / "vocabulary.json").is_file()


@pytest.mark.slow
def test_console_script_help():
    proc = subprocess.run(
        ["keras-rnnlm", "train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "--preset" in proc.stdout and "--clip-norm" in proc.stdout


def _without_tf_log_level():
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # conftest.py sets it for the test process
    return env


def test_train_prints_no_tensorflow_log_lines_and_files_follow_the_umask(tmp_path):
    # the default corpus (offline python_docs), a tiny model, one short epoch
    out = tmp_path / "run"
    args = ["train", "--epochs", "1", "--output", str(out), "--steps-per-epoch", "2", *TINY]
    proc = subprocess.run(
        [sys.executable, "-m", "keras_rnnlm.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=_without_tf_log_level(),
        preexec_fn=lambda: os.umask(0o022),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Run written to" in proc.stdout
    # the first train says what it does and ends with the commands to try next
    assert proc.stdout.startswith("Training a 1-layer LSTM language model on the python_docs")
    assert f"output: {out}/" in proc.stdout
    assert proc.stdout.rstrip().endswith(f"keras-rnnlm export {out} {out}_export")
    assert not TF_LOG_LINE.search(proc.stderr), proc.stderr
    assert "absl::InitializeLog" not in proc.stderr
    for name in ("model.keras", "checkpoint.keras", "config.json", "metrics.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_tf_logs_switch_and_the_users_log_level_bring_the_lines_back(tmp_path):
    # evaluate imports TensorFlow before it finds that the directory is not a run (exit 2)
    args = ["evaluate", str(tmp_path), "--test-file", str(tmp_path / "t.txt")]
    env = _without_tf_log_level()

    def stderr_of(*extra, env=env):
        command = [sys.executable, "-m", "keras_rnnlm.cli", *args, *extra]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 2 and "not a keras-rnnlm run" in proc.stderr, proc.stderr
        return proc.stderr

    assert not TF_LOG_LINE.search(stderr_of())
    assert TF_LOG_LINE.search(stderr_of("--tf-logs"))  # this machine has no GPU: cuInit etc.
    assert TF_LOG_LINE.search(stderr_of(env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"}))


def test_tensorflow_log_filter_keeps_other_lines():
    from keras_rnnlm.tf_logging import TF_LOG_LINE as LIBRARY_PATTERN

    assert LIBRARY_PATTERN.match("E0000 00:00:1796 cuda_platform.cc:52] failed call to cuInit")
    assert LIBRARY_PATTERN.match("I1201 02:10:00.1 cudart_stub.cc:31] Could not find cuda")
    assert not LIBRARY_PATTERN.match("Error: E1234 in a user message")
    assert not LIBRARY_PATTERN.match("UserWarning: E12 is not a log line")


def test_parser_does_not_import_tensorflow():
    code = (
        "import sys; from keras_rnnlm.cli import build_parser; "
        "build_parser().parse_args(['train', '--epochs', '1']); "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["False", "False"], proc.stderr


def test_unexpected_errors_exit_1_with_a_one_line_hint(monkeypatch, capsys):
    import keras_rnnlm.runs

    def crash(config):
        raise RuntimeError("worker 3 lost its connection\nsecond line")

    monkeypatch.setattr(keras_rnnlm.runs, "train", crash)
    assert main(["train", "--epochs", "1"]) == cli.EXIT_UNEXPECTED == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "keras-rnnlm train: unexpected error: RuntimeError: worker 3 lost its connection; "
        "rerun with --traceback for details"
    ]
    assert main(["train", "--epochs", "1", "--traceback"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in crash" in err
    assert "rerun with --traceback" not in err

    def bad(config):
        raise ValueError("units must be a positive integer, got 0.")

    monkeypatch.setattr(keras_rnnlm.runs, "train", bad)  # bad input keeps exit 2
    assert main(["train", "--epochs", "1"]) == cli.EXIT_BAD_INPUT == 2
    assert "error: units must be" in capsys.readouterr().err


def test_cli_choices_are_the_library_constants():
    from keras_rnnlm.cells import CELLS
    from keras_rnnlm.data.corpora import CORPORA
    from keras_rnnlm.data.vocabulary import LEVELS
    from keras_rnnlm.distribute import STRATEGIES
    from keras_rnnlm.models import JIT_RECURRENCE, OUTPUT_DTYPES
    from keras_rnnlm.runs import TrainConfig
    from keras_rnnlm.samplers import SAMPLERS
    from keras_rnnlm.training import CLIPPING, OPTIMIZERS, PRESETS

    assert set(constants.CELL_NAMES) == set(CELLS)
    assert tuple(constants.LEVELS) == tuple(LEVELS)
    assert tuple(constants.STRATEGIES) == tuple(STRATEGIES)
    assert tuple(constants.PRESET_NAMES) == tuple(PRESETS)
    assert tuple(constants.OUTPUT_DTYPES) == tuple(OUTPUT_DTYPES)
    assert constants.JIT_RECURRENCE == JIT_RECURRENCE
    assert tuple(constants.OPTIMIZERS) == tuple(OPTIMIZERS)
    assert tuple(constants.CLIPPING) == tuple(CLIPPING)
    assert tuple(constants.CORPORA) == tuple(CORPORA)
    assert set(constants.SAMPLER_NAMES) <= set(SAMPLERS)
    defaults = TrainConfig()
    assert (defaults.corpus, defaults.output) == (
        constants.DEFAULT_CORPUS,
        constants.DEFAULT_OUTPUT,
    )
    parser = cli.build_parser()
    for flag, names in (
        ("--cell", constants.CELL_NAMES),
        ("--preset", constants.PRESET_NAMES),
        ("--strategy", constants.STRATEGIES),
        ("--level", constants.LEVELS),
        ("--output-dtype", constants.OUTPUT_DTYPES),
    ):
        for name in names:
            parser.parse_args(["train", flag, name])
        with pytest.raises(SystemExit):  # argparse: invalid choice
            parser.parse_args(["train", flag, "no_such_choice"])


def test_package_import_is_lazy_and_every_public_name_resolves():
    code = (
        "import sys, keras_rnnlm; lazy = 'tensorflow' not in sys.modules; "
        "names = {n: getattr(keras_rnnlm, n) for n in keras_rnnlm.__all__}; "
        "ns = {}; exec('from keras_rnnlm import *', ns); "
        "print(lazy, sorted(set(ns) - {'__builtins__'}) == sorted(names), "
        "keras_rnnlm.RNNLanguageModel.__module__, keras_rnnlm.training.__name__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == ["True", "True", "keras_rnnlm.models", "keras_rnnlm.training"], (
        proc.stderr[-2000:]
    )
    import keras_rnnlm

    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        keras_rnnlm.no_such_name  # noqa: B018


def test_crash_inside_training_exits_4_with_a_hint_and_the_same_command_resumes(
    tmp_path, monkeypatch, capsys
):
    import tensorflow as tf

    import keras_rnnlm.run_training

    _write(tmp_path)
    run = tmp_path / "run"
    args = ["train", "--train-file", str(tmp_path / "train.txt"), "--epochs", "2",
            "--output", str(run), *TINY]  # fmt: skip
    original = keras_rnnlm.run_training.SaveModelEachEpoch.on_epoch_end

    def peer_lost(self, epoch, logs=None):  # what a worker sees when its peer dies
        stack = "Detected at node Collective defined at (most recent call last):\n  File x\n"
        cause = "Collective ops is aborted by: task 1 heartbeat timeout\n\t [[{{node C}}]]"
        raise tf.errors.UnavailableError(None, None, f"Graph execution error:\n\n{stack}{cause}")

    monkeypatch.setattr(keras_rnnlm.run_training.SaveModelEachEpoch, "on_epoch_end", peer_lost)
    assert main(args) == cli.EXIT_CRASHED == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "keras-rnnlm train: training stopped after 1 completed epoch(s): "
        "UnavailableError: Graph execution error: Collective ops is aborted by: task 1 "
        "heartbeat timeout. The same command resumes"
    )
    assert (run / "backup").is_dir() and not (run / "model.keras").exists()
    monkeypatch.setattr(keras_rnnlm.run_training.SaveModelEachEpoch, "on_epoch_end", original)
    assert main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed_at_epoch"] == 1 and metrics["epochs_run"] == 2
    assert (metrics["replicas"], metrics["workers"]) == (1, 1)
