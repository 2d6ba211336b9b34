"""End-of-epoch stalls from tf.data's autotuner, with and without ``pipelines.prefetched``.

tf.data's autotuner thread wakes after 10, 20, 40, ... ms (the period doubles up to 60 s),
and deleting an iterator, which ``model.fit`` does at the end of every epoch, sometimes
blocks until that thread's next wake-up. Short ``fit`` epochs on the same stream batches,
alternating A/B:

  A  autotune   ``Dataset.from_tensor_slices(...).prefetch(tf.data.AUTOTUNE)`` (TF's default
                options: the autotuner runs)
  B  ours       ``keras_rnnlm.data.pipelines.stream_dataset`` (``prefetched``: prefetch 2,
                autotuner off)

For each epoch it prints the wall time and the time spent after the last batch ended (the
stall); a stalled epoch ends near 10 * (2**k - 1) ms after the iterator was created.

    python benchmarks/data_pipeline_stall.py [--rounds 10] [--steps 50]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's keras_rnnlm

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_rnnlm import RNNLanguageModel, compile_language_model  # noqa: E402
from keras_rnnlm.data.pipelines import stream_batches, stream_dataset  # noqa: E402

VOCAB = 2000  # a small model: about 30 ms per step here
BATCH, STEPS = 20, 20


class _LastBatchEnd(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        self.time = time.perf_counter()


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50, help="batches per epoch")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    sentences = [list(rng.integers(4, VOCAB, size=19)) for _ in range(args.steps * BATCH + BATCH)]
    inputs, targets = stream_batches(
        np.concatenate([[*s, 2] for s in sentences]).astype("int32"), BATCH, STEPS
    )
    inputs, targets = inputs[: args.steps], targets[: args.steps]
    datasets = {
        "autotune": tf.data.Dataset.from_tensor_slices((inputs, targets)).prefetch(
            tf.data.AUTOTUNE
        ),
        "ours": stream_dataset(sentences, BATCH, STEPS).take(args.steps),
    }
    keras.utils.set_random_seed(0)
    model = RNNLanguageModel(VOCAB, cell="lstm", units=200, num_layers=2)
    compile_language_model(model, "sgd", learning_rate=1.0, clip_norm=0.25, jit_compile=True)
    model.fit(datasets["ours"], epochs=1, verbose=0)  # compile

    stalls = {name: [] for name in datasets}
    walls = {name: [] for name in datasets}
    for r in range(args.rounds):
        line = []
        for name, dataset in datasets.items():
            marker = _LastBatchEnd()
            start = time.perf_counter()
            model.fit(dataset, epochs=1, verbose=0, callbacks=[marker])
            end = time.perf_counter()
            walls[name].append(end - start)
            stalls[name].append(end - marker.time)
            line.append(f"{name} {end - start:6.2f} s (stall {1e3 * (end - marker.time):5.0f} ms)")
        print(f"round {r + 1:2d}: " + ", ".join(line), flush=True)
    print()
    for name in datasets:
        stalled = sum(s > 0.1 for s in stalls[name])
        print(
            f"{name:9s} epochs stalled > 100 ms: {stalled}/{args.rounds}; "
            f"total stall {sum(stalls[name]):6.2f} s; median epoch {statistics.median(walls[name]):.2f} s"
        )


if __name__ == "__main__":
    main()
