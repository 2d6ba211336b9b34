"""The keras-rnnlm CLI end to end on tiny settings."""

import json
import subprocess
import sys

import pytest

from keras_rnnlm.cli import main

pytestmark = pytest.mark.filterwarnings("ignore")

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
