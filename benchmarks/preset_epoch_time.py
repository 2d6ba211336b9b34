"""Expected time per PTB epoch of each Zaremba preset on this machine, from 50 timed steps.

Builds and compiles the preset's model exactly as ``keras-rnnlm train --preset NAME`` does
(stateful, the preset's compilation mode, SGD with global clipping, dropout), times ``--steps``
training steps on random ids after one warm-up call, and extrapolates to one epoch of the PTB
training stream (929,589 tokens).

    python benchmarks/preset_epoch_time.py [--presets small medium large] [--steps 50]
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's keras_rnnlm

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_rnnlm.data.pipelines import prefetched  # noqa: E402
from keras_rnnlm.runs import TrainConfig, build_model  # noqa: E402
from keras_rnnlm.training import compile_language_model  # noqa: E402

PTB_TRAIN_TOKENS = 929_589  # words + one <eos> per sentence
VOCAB = 10_004  # PTB's 10k words (with <unk>) + <pad>, <bos>, <eos>


def seconds_per_step(name: str, steps: int) -> float:
    config = TrainConfig.from_preset(name)
    model = build_model(config, VOCAB)
    compile_language_model(
        model, "sgd", config.learning_rate, config.clip_norm, jit_compile=config.jit_compile
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(4, VOCAB, size=(steps + 1, config.batch_size, config.num_steps + 1)).astype(
        "int32"
    )
    # prefetched: tf.data's autotuner off (it can stall the end of fit(); see pipelines)
    warmup = prefetched(tf.data.Dataset.from_tensor_slices((ids[:1, :, :-1], ids[:1, :, 1:])))
    model.fit(warmup, epochs=1, verbose=0)  # XLA compilation
    timed = prefetched(tf.data.Dataset.from_tensor_slices((ids[1:, :, :-1], ids[1:, :, 1:])))
    start = time.perf_counter()
    model.fit(timed, epochs=1, verbose=0)
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", nargs="+", default=["small", "medium", "large"])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    print(
        f"{'preset':8s} {'s/step':>8s} {'steps/epoch':>12s} {'min/epoch':>10s} {'epochs':>7s} {'hours total':>12s}"
    )
    for name in args.presets:
        config = TrainConfig.from_preset(name)
        per_step = seconds_per_step(name, args.steps)
        steps_per_epoch = (PTB_TRAIN_TOKENS // config.batch_size - 1) // config.num_steps
        minutes = per_step * steps_per_epoch / 60
        print(
            f"{name:8s} {per_step:8.3f} {steps_per_epoch:12d} {minutes:10.1f} {config.epochs:7d} {minutes * config.epochs / 60:12.1f}"
        )


if __name__ == "__main__":
    main()
