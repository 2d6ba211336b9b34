"""Numerics of bfloat16 training (issue 17, item 1): loss curves bf16 against float32.

On PTB-small shapes (2x200 LSTM, vocabulary 10k, batch 20, 20 unrolled steps, stateful, SGD lr
20 + global clip 0.25 on the mean loss) and the first ``--steps`` batches of the real PTB
training stream, the same seed and the same batches for all four models:

  ours fp32        ``RNNLanguageModel(..., output_dtype="float32")``
  ours bf16        ``output_dtype="auto"`` (the library's default: bfloat16 output matmuls in
                   the training step on a CPU with AVX512-BF16/AMX, float32 in evaluation);
                   ``"bfloat16"`` on a CPU where "auto" would resolve to float32
  torch fp32       PyTorch ``nn.LSTM`` (``peer_runners.TorchRunner``)
  torch autocast   the same under ``torch.autocast("cpu", dtype=torch.bfloat16)``

Reported: each model's training loss averaged over windows of ``--window`` steps (ours: from
Keras's running mean, ``(b * mean_b - a * mean_a) / (b - a)`` for steps ``(a, b]``), the largest
window gap bf16 - fp32 per framework, and the validation loss/perplexity after training
(float32 evaluation, state carried, batch 20). Not a timing: it may run beside other jobs
(PyTorch on ``--torch-threads`` 1 by default for that reason).

    python benchmarks/bf16_numerics.py [--steps 1000] [--window 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's keras_rnnlm
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import peer_runners  # noqa: E402

PTB_DIR = Path("/work/shared/data/ptb")


def ptb_stream_batches(data_dir: Path, split: str, limit: int | None = None):
    """PTB ``split`` as TBPTT batches ``[(x, y), ...]`` of ``(20, 20)``, vocabulary of train.

    Args:
        data_dir: directory with ``ptb.{train,valid,test}.txt``.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        limit: keep the first ``limit`` batches.

    Returns:
        ``(vocabulary_size, batches)``.
    """
    from keras_rnnlm.data import Vocabulary, encode_corpus
    from keras_rnnlm.data.corpora import read_lines
    from keras_rnnlm.data.pipelines import stream_batches, token_stream

    for name in ("train", split):
        if not (data_dir / f"ptb.{name}.txt").is_file():
            raise FileNotFoundError(f"ptb.{name}.txt not found in {data_dir} (--data-dir)")
    train = read_lines(data_dir / "ptb.train.txt")
    vocabulary = Vocabulary.build(train, pretokenized=True)
    lines = train if split == "train" else read_lines(data_dir / f"ptb.{split}.txt")
    stream = token_stream(encode_corpus(vocabulary, lines))
    x, y = stream_batches(stream, peer_runners.PTB_BATCH, peer_runners.PTB_STEPS)
    batches = list(zip(x, y, strict=True))[:limit]
    return vocabulary.size, batches


def window_means_from_running_mean(running: list[float], window: int) -> list[float]:
    """Per-window means of the per-step values behind a running mean (equal-weight steps)."""
    means, previous = [], 0.0
    for end in range(window, len(running) + 1, window):
        total = end * running[end - 1]
        means.append((total - previous) / window)
        previous = total
    return means


def window_means(values: list[float], window: int) -> list[float]:
    """Means of consecutive whole windows of ``values``."""
    n = len(values) // window
    return [float(np.mean(values[i * window : (i + 1) * window])) for i in range(n)]


def train_ours(vocabulary_size, batches, valid, output_dtype, window):
    import keras

    class RunningLoss(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.values = []

        def on_train_batch_end(self, batch, logs=None):
            self.values.append(float(logs["loss"]))

    from keras_rnnlm import compile_language_model
    from keras_rnnlm.models import RNNLanguageModel

    keras.utils.set_random_seed(0)
    model = RNNLanguageModel(
        vocabulary_size, num_layers=peer_runners.LAYERS, units=peer_runners.UNITS,
        embedding_dim=peer_runners.UNITS, init_scale=peer_runners.INIT, stateful=True,
        output_dtype=output_dtype,
    )  # fmt: skip
    model.build((peer_runners.PTB_BATCH, None))
    compile_language_model(model, "sgd", peer_runners.SGD_LR, peer_runners.SGD_CLIP)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    callback = RunningLoss()
    model.fit(x, y, batch_size=peer_runners.PTB_BATCH, shuffle=False, epochs=1, verbose=0,
              callbacks=[callback])  # fmt: skip
    dtype = model.output_matmul_dtype(training=True)
    model.reset_states()
    vx = np.concatenate([b[0] for b in valid])
    vy = np.concatenate([b[1] for b in valid])
    logs = model.evaluate(vx, vy, batch_size=peer_runners.PTB_BATCH, verbose=0, return_dict=True)
    return dict(
        windows=window_means_from_running_mean(callback.values, window),
        valid_loss=float(logs["loss"]),
        training_output_matmuls=dtype,
    )


def train_torch(vocabulary_size, batches, valid, autocast, window, threads=1):
    import torch

    torch.set_num_threads(threads)
    runner = peer_runners.TorchRunner(
        "ptb", vocabulary_size, batches, autocast=autocast, warm_up=False
    )
    losses = []
    runner.run(losses)
    model = runner.model.eval()
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for x, y in valid:
            x = torch.tensor(np.asarray(x), dtype=torch.long)
            y = torch.tensor(np.asarray(y), dtype=torch.long)
            logits, state = model(x, state)
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, vocabulary_size), y.reshape(-1), reduction="sum"
                )
            )
            count += y.numel()
    return dict(
        windows=window_means(losses, window),
        valid_loss=total / count,
        training_output_matmuls="bfloat16" if autocast else "float32",
    )


def main(argv=None) -> dict:
    """Train the four models and print their windowed loss curves and the bf16 - fp32 gaps."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--data-dir", type=Path, default=PTB_DIR)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="PyTorch threads (1: OpenMP's spinning threads crawl on a shared machine)",
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.steps < args.window or args.window < 1:
        parser.error("need --steps >= --window >= 1")
    from keras_rnnlm.fast import bf16_matmul_is_fast

    vocabulary_size, batches = ptb_stream_batches(args.data_dir, "train", args.steps)
    _, valid = ptb_stream_batches(args.data_dir, "valid")
    if len(batches) < args.steps:
        parser.error(f"only {len(batches)} training batches")
    print(
        f"PTB train, first {args.steps} batches of 20x20 (vocabulary {vocabulary_size}); "
        f"valid: {len(valid)} batches; window {args.window} steps"
    )
    ours_bf16 = "auto" if bf16_matmul_is_fast() else "bfloat16"
    runs = {}
    plans = [
        ("ours fp32", lambda: train_ours(vocabulary_size, batches, valid, "float32", args.window)),
        ("ours bf16", lambda: train_ours(vocabulary_size, batches, valid, ours_bf16, args.window)),
    ]
    if not args.no_torch:
        plans += [
            (
                "torch fp32",
                lambda: train_torch(
                    vocabulary_size, batches, valid, False, args.window, args.torch_threads
                ),
            ),
            (
                "torch autocast-bf16",
                lambda: train_torch(
                    vocabulary_size, batches, valid, True, args.window, args.torch_threads
                ),
            ),
        ]
    for name, plan in plans:
        start = time.time()
        runs[name] = plan()
        runs[name]["seconds"] = time.time() - start
        print(
            f"{name:20s} (training output matmuls {runs[name]['training_output_matmuls']}, "
            f"{runs[name]['seconds']:.0f} s): windows "
            + " ".join(f"{v:.3f}" for v in runs[name]["windows"])
            + f"; valid loss {runs[name]['valid_loss']:.4f} "
            f"(perplexity {math.exp(runs[name]['valid_loss']):.1f})"
        )
    gaps = {}
    for framework in ("ours", "torch"):
        fp32, bf16 = (
            runs.get(f"{framework} fp32"),
            runs.get(f"{framework} {'bf16' if framework == 'ours' else 'autocast-bf16'}"),
        )
        if fp32 is None or bf16 is None:
            continue
        diffs = [b - a for a, b in zip(fp32["windows"], bf16["windows"], strict=True)]
        worst = max(range(len(diffs)), key=lambda i: abs(diffs[i]))
        gaps[framework] = dict(
            max_window_gap=diffs[worst],
            window=(worst * args.window + 1, (worst + 1) * args.window),
            last_window_gap=diffs[-1],
            valid_loss_gap=bf16["valid_loss"] - fp32["valid_loss"],
        )
        print(
            f"{framework}: bf16 - fp32 largest window gap {diffs[worst]:+.4f} nats "
            f"(steps {worst * args.window + 1}-{(worst + 1) * args.window}), last window "
            f"{diffs[-1]:+.4f}, valid loss {gaps[framework]['valid_loss_gap']:+.4f}"
        )
    results = {"steps": args.steps, "window": args.window, "runs": runs, "gaps": gaps}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
