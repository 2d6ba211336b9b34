"""Sizes, PTB test perplexity and per-token latency of the LiteRT and ONNX exports.

Converts the shipped PTB model (``saved_models/ptb_word_lstm_small``) to LiteRT float32,
LiteRT dynamic-range quantised and ONNX, then for each runtime:

* perplexity: the PTB test split read as one stream through ``step`` (batch 1, states
  carried), the convention of the shipped model's card; the Keras model on the same tokens;
* latency: per-token time of one ``step`` call (warm-up, then the median of ``--steps`` calls).

Usage::

    python benchmarks/deploy_litert_onnx.py --out /tmp/deploy_measure [--sentences 500]
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_rnnlm.deploy import export_model  # noqa: E402
from keras_rnnlm.deploy.host import LiteRTStep, OnnxStep, stream_log_probs  # noqa: E402
from keras_rnnlm.inspection import load_language_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "saved_models" / "ptb_word_lstm_small"


def test_stream(vocab, path: Path, sentences: int | None) -> np.ndarray:
    lines = [line for line in path.read_text().splitlines() if line.strip()][:sentences]
    return np.array([i for line in lines for i in [*vocab.encode(line), 3]], np.int32)


def keras_perplexity(model, stream: np.ndarray, chunk: int = 2000) -> float:
    states, nll = None, 0.0
    for start in range(0, len(stream) - 1, chunk):
        x = stream[start : start + chunk + 1]
        logits, states = model.forward(tf.constant(x[None, :-1]), initial_state=states)
        log_probs = tf.nn.log_softmax(tf.cast(logits[0], tf.float64))
        nll -= float(tf.reduce_sum(tf.gather(log_probs, x[1:], batch_dims=1)))
    return float(np.exp(nll / (len(stream) - 1)))


def latency_us(step, steps: int, warmup: int = 200) -> float:
    states = step.initial_state(1)
    token = np.array([3], np.int32)
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        logits, states = step(token, states)
        times.append(time.perf_counter() - start)
        token = np.array([int(np.argmax(logits[0][4:])) + 4], np.int32)
    return statistics.median(times[warmup:]) * 1e6


class NoXnnpackStep(LiteRTStep):
    """``LiteRTStep`` on the builtin kernels only (the XNNPACK delegate not applied)."""

    def __init__(self, path, num_threads=None):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        super().__init__(path, num_threads)
        self.interpreter = Interpreter(
            model_path=str(path),
            num_threads=num_threads,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        self.runner = self.interpreter.get_signature_runner("step")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/deploy_measure")
    parser.add_argument("--sentences", type=int, default=None, help="first N test sentences")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--data", default="/work/shared/data/ptb/ptb.test.txt")
    args = parser.parse_args()
    out = Path(args.out)
    dirs = {
        "litert_fp32": export_model(SHIPPED, out / "litert_fp32", "litert", overwrite=True),
        "litert_dynamic_range": export_model(
            SHIPPED, out / "litert_dr", "litert", quantize=True, overwrite=True
        ),
        "onnx": export_model(SHIPPED, out / "onnx", "onnx", overwrite=True),
    }
    model, vocab = load_language_model(SHIPPED)
    stream = test_stream(vocab, Path(args.data), args.sentences)
    results = {"tokens_predicted": len(stream) - 1, "sentences": args.sentences or "all"}
    results["keras_perplexity"] = keras_perplexity(model, stream)
    for name, directory in dirs.items():
        files = {p.name: p.stat().st_size for p in directory.iterdir() if p.suffix != ".json"}
        results[name] = {"bytes": files}
    steps = {
        "litert_fp32": LiteRTStep(dirs["litert_fp32"] / "step.tflite", num_threads=1),
        "litert_dynamic_range": LiteRTStep(
            dirs["litert_dynamic_range"] / "step.tflite", num_threads=1
        ),
        "onnx": OnnxStep(dirs["onnx"] / "step.onnx", num_threads=1),
    }
    for name, step in steps.items():
        start = time.perf_counter()
        results[name]["perplexity"] = float(np.exp(-stream_log_probs(step, stream).mean()))
        results[name]["stream_seconds"] = time.perf_counter() - start
        results[name]["latency_us_1_thread"] = latency_us(step, args.steps)
    for name in ("litert_fp32", "litert_dynamic_range"):
        path = dirs[name] / "step.tflite"
        results[name]["latency_us_1_thread_no_xnnpack"] = latency_us(
            NoXnnpackStep(path, 1), args.steps
        )
        results[name]["latency_us_2_threads"] = latency_us(LiteRTStep(path, 2), args.steps)
    print(json.dumps(results, indent=2))
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
