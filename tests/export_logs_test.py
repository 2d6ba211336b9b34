"""``keras-rnnlm export --format litert|onnx`` prints no TensorFlow C++ (absl) log line, and
the library's SavedModel exports log no ``INFO:tensorflow:Assets written to`` line in an
interactive session (TensorFlow's Python logger at INFO, as TensorFlow sets it in Jupyter).

The converters load shared libraries of their own (the LiteRT converter's absl logging starts
again, tf2onnx runs TensorFlow's graph optimiser); ``keras_rnnlm.tf_logging`` silences them
before TensorFlow is imported, and ``--tf-logs`` brings them back. Each export runs in a fresh
process without ``TF_CPP_MIN_LOG_LEVEL`` (``conftest.py`` sets it for the test process).
"""

import contextlib
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from deploy_helpers import require, tiny_trained_model

from keras_rnnlm.export import export_saved_model
from keras_rnnlm.task_models import SequenceTagger, export_task_model
from keras_rnnlm.tf_logging import TF_LOG_LINE, tensorflow_info_dropped

ABSL_PREAMBLE = "absl::InitializeLog"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model, vocab = tiny_trained_model("lstm", seed=3)
    out = tmp_path_factory.mktemp("export_logs") / "saved"
    export_saved_model(model, vocab, out, allow_untrained=True)
    return out


def _export(source, out, fmt, *extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    args = ["export", str(source), str(out), "--format", fmt, "--sequence-length", "4", *extra]
    proc = subprocess.run(
        [sys.executable, "-m", "keras_rnnlm.cli", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{fmt} model written" in proc.stdout
    return proc.stderr


def _log_lines(stderr):
    return [
        line for line in stderr.splitlines() if TF_LOG_LINE.match(line) or ABSL_PREAMBLE in line
    ]


def test_litert_export_is_quiet_and_tf_logs_brings_the_converter_lines_back(saved, tmp_path):
    require("ai_edge_litert")
    quiet = _export(saved, tmp_path / "quiet", "litert", "--quantize")
    assert _log_lines(quiet) == [], quiet
    loud = _export(saved, tmp_path / "loud", "litert", "--tf-logs")
    # the converter's own lines (e.g. "W0000 ... tf_tfl_flatbuffer_helpers.cc ... Ignored
    # output_format"), not only TensorFlow's start-up ones: the switch reaches the converter
    assert any("flatbuffer" in line for line in _log_lines(loud)), loud


def test_onnx_export_is_quiet(saved, tmp_path):
    require("tf2onnx")
    stderr = _export(saved, tmp_path / "onnx", "onnx")
    assert _log_lines(stderr) == [], stderr


@contextlib.contextmanager
def _interactive_tensorflow_logger():
    """TensorFlow's Python logger as TensorFlow sets it in IPython/Jupyter (level INFO, a
    handler), with every record it would print collected as ``"LEVEL:message"``."""
    logger = tf.get_logger()
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(f"{record.levelname}:{record.getMessage()}")

    handler, level = Collect(level=logging.DEBUG), logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_exports_log_no_tensorflow_info_line(tmp_path):
    model, vocab = tiny_trained_model("lstm", seed=3)
    tagger = SequenceTagger(12, num_tags=3, embedding_dim=4, units=5)
    tagger(np.ones((2, 3), np.int32))
    with _interactive_tensorflow_logger() as records:
        # the capture sees what a plain TensorFlow save prints in a notebook ...
        tf.saved_model.save(tf.Module(), str(tmp_path / "plain"))
        assert any(r.startswith("INFO:Assets written to") for r in records), records
        records.clear()
        # ... and the library's exports print none of it
        export_saved_model(model, vocab, tmp_path / "lm", allow_untrained=True)
        export_task_model(tagger, tmp_path / "tagger")
    assert [r for r in records if r.startswith(("INFO", "DEBUG"))] == []
    assert (tmp_path / "lm" / "saved_model.pb").exists()
    assert (tmp_path / "tagger" / "saved_model.pb").exists()


def test_tensorflow_info_dropped_keeps_warnings_and_removes_itself():
    logger = tf.get_logger()
    filters = list(logger.filters)
    with _interactive_tensorflow_logger() as records:
        with tensorflow_info_dropped():
            logger.info("progress inside")
            logger.warning("warning inside")
        logger.info("progress after")
    assert records == ["WARNING:warning inside", "INFO:progress after"]
    assert logger.filters == filters
