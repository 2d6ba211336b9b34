"""Bad input gets a clear error naming the problem, a non-zero exit code from the CLI, and
nothing already written is lost. (More cases: tests/export_test.py::test_bad_ids_are_refused,
tests/cli_test.py::test_nan_loss_stops_with_advice, tests/resume_test.py.)"""

import json

import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm.cells import GRUCell, LSTMCell, SimpleRNNCell
from keras_rnnlm.cli import main
from keras_rnnlm.data.corpora import read_lines
from keras_rnnlm.data.pipelines import sentence_dataset
from keras_rnnlm.layers import Recurrent, StackedRecurrent
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.runs import TrainConfig, train

# keras_rnnlm.runs.train calls model.fit on a tf.data.Dataset without shuffle=False, so Keras
# warns that shuffle=True is ignored (the data order is the pipeline's own, by design)
pytestmark = pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")

TINY = ["--units", "8", "--embedding-dim", "8", "--num-layers", "1", "--batch-size", "4",
        "--epochs", "1", "--verbose", "0", "--no-jit-compile"]  # fmt: skip
LINES = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog"] * 5


def _train_args(train_file, output):
    return ["train", "--train-file", str(train_file), "--output", str(output), *TINY]


def _fails(capsys, args, *fragments, code=2):
    assert main(args) == code
    err = capsys.readouterr().err
    assert "error:" in err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "train.txt").write_text("\n".join(LINES) + "\n")
    assert main(_train_args(root / "train.txt", root / "run")) == 0
    return root / "run"


def test_empty_corpus_file(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    _fails(capsys, _train_args(tmp_path / "empty.txt", tmp_path / "out"), "holds no text")
    assert not (tmp_path / "out").exists()


def test_corpus_of_blank_lines_only(tmp_path, capsys):
    (tmp_path / "blank.txt").write_text("\n  \n\t\n\n")
    _fails(capsys, _train_args(tmp_path / "blank.txt", tmp_path / "out"), "holds no text")
    assert not (tmp_path / "out").exists()


def test_missing_corpus_file(tmp_path, capsys):
    _fails(capsys, _train_args(tmp_path / "nope.txt", tmp_path / "out"), "nope.txt", "not found")


def test_non_utf8_bytes_fail_by_default_and_can_be_replaced(tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes("the cat\nthe caf\xe9 sat\n".encode("latin-1"))
    _fails(capsys, _train_args(path, tmp_path / "out"), "not UTF-8", "line 2", "0xe9")
    assert read_lines(path, errors="replace") == ["the cat", "the caf\ufffd sat"]


def test_vocabulary_model_mismatch_when_evaluating(run_dir, tmp_path, capsys):
    vocabulary = json.loads((run_dir / "vocabulary.json").read_text())
    saved = (run_dir / "vocabulary.json").read_text()
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "model.keras").write_bytes((run_dir / "model.keras").read_bytes())
    vocabulary["tokens"] = vocabulary["tokens"][:-2]
    (other / "vocabulary.json").write_text(json.dumps(vocabulary))
    (tmp_path / "t.txt").write_text("the cat sat\n")
    _fails(capsys, ["evaluate", str(other), "--test-file", str(tmp_path / "t.txt")],
           "different runs")  # fmt: skip
    assert (run_dir / "vocabulary.json").read_text() == saved


def test_token_ids_out_of_range():
    model = RNNLanguageModel(10, units=4, embedding_dim=4, num_layers=1)
    with pytest.raises(ValueError, match="Token id 10 is outside the vocabulary"):
        model(np.array([[2, 10]], np.int32))
    with pytest.raises(ValueError, match="Token id -1"):
        model.step(np.array([-1], np.int32), model.get_initial_state(1))


def test_wrong_dtype_or_rank_to_the_model():
    model = RNNLanguageModel(10, units=4, embedding_dim=4, num_layers=1)
    with pytest.raises(TypeError, match="integers.*float32"):
        model(tf.constant([[2.0, 3.7]]))
    with pytest.raises(ValueError, match="rank 2"):
        model(np.array([2, 3], np.int32))
    with pytest.raises(ValueError, match="rank 2"):
        model(np.ones((1, 2, 3), np.int32))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", 0, "batch_size must be a positive integer"),
        ("batch_size", -4, "batch_size must be a positive integer"),
        ("units", 0, "units must be a positive integer"),
        ("num_layers", -1, "num_layers must be a positive integer"),
        ("dropout", 1.0, "dropout must be in [0, 1)"),
        ("strategy", "nccl", "strategy must be one of"),
    ],
)
def test_bad_settings(tmp_path, field, value, message):
    (tmp_path / "t.txt").write_text("\n".join(LINES))
    config = TrainConfig(train_file=str(tmp_path / "t.txt"), output=str(tmp_path / "out"))
    setattr(config, field, value)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        train(config)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("units", [0, -3, 2.5, True, None])
def test_units_that_are_not_a_positive_integer(units):
    message = f"`units` must be a positive integer, got {units!r}"
    for cell in (SimpleRNNCell, LSTMCell, GRUCell):
        with pytest.raises(ValueError, match=message.replace(".", r"\.")):
            cell(units)
    with pytest.raises(ValueError, match="`units` must be a positive integer, got 0"):
        StackedRecurrent("gru", units=[8, 0])  # the second layer's
    with pytest.raises(ValueError, match="`units` must be a positive integer, got 0"):
        RNNLanguageModel(10, units=0)
    Recurrent(LSTMCell(2))  # a valid cell is accepted: the checks above are about units


def test_cli_zero_batch_size(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("\n".join(LINES))
    args = _train_args(tmp_path / "t.txt", tmp_path / "out") + ["--batch-size", "0"]
    _fails(capsys, args, "batch_size must be a positive integer")


def test_output_pointing_at_a_file(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("\n".join(LINES))
    target = tmp_path / "results.txt"
    target.write_text("precious")
    _fails(capsys, _train_args(tmp_path / "t.txt", target), "not a directory")
    assert target.read_text() == "precious"


def test_sequence_longer_than_any_bucket():
    with pytest.raises(ValueError, match="more than the last bucket boundary"):
        sentence_dataset([[5] * 30, [6] * 3], batch_size=2, max_length=None,
                         bucket_boundaries=[5, 10])  # fmt: skip
    # with max_length the long sentence is split into windows that fit
    batches = list(sentence_dataset([[5] * 30], batch_size=2, max_length=8,
                                    bucket_boundaries=[5, 10], shuffle=False))  # fmt: skip
    assert sum(int(np.sum(y.numpy() > 0)) for _, y in batches) == 31


def test_empty_prompt_for_generation(run_dir, capsys):
    _fails(capsys, ["generate", str(run_dir), "--prompt", ""], "--prompt is empty")
    _fails(capsys, ["generate", str(run_dir), "--prompt", "   "], "--prompt is empty")
    from keras_rnnlm.samplers import pad_prompts

    with pytest.raises(ValueError, match="at least one token"):
        pad_prompts([[2, 5], []])


def test_empty_text_to_score(run_dir, capsys):
    _fails(capsys, ["score", str(run_dir), "--text", "   "], "holds no token")


def test_evaluate_a_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("the cat\n")
    _fails(capsys, ["evaluate", str(tmp_path), "--test-file", str(tmp_path / "t.txt")],
           "not a keras-rnnlm run", "model.keras")  # fmt: skip
