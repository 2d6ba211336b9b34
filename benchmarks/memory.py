"""Peak resident memory of a small-preset training run, and a leak check across epochs.

Trains the PTB small configuration (stream mode, 2x200 LSTM, SGD, global clipping; compiled as
the preset is) for a few
short epochs through ``model.fit`` and records the process's resident set size (VmRSS) at the
end of every epoch, plus the peak (VmHWM). No leak: RSS after epoch 3 within 5% of after epoch 1.
Uses PTB from ../shared/data when present, else a random 10k-word stream of the same size.

    python benchmarks/memory.py [--epochs 4] [--steps-per-epoch 400]
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's keras_rnnlm

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_rnnlm.runs import TrainConfig, build_model, make_dataset  # noqa: E402
from keras_rnnlm.training import ResetStatesCallback, compile_language_model  # noqa: E402


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class RecordMemory(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rss_mib = []

    def on_epoch_end(self, epoch, logs=None):
        self.rss_mib.append(_status_kib("VmRSS") / 1024)
        print(f"  epoch {epoch + 1}: RSS {self.rss_mib[-1]:.0f} MiB")


def _sentences(config):
    try:
        from keras_rnnlm.data.corpora import load_corpus
        from keras_rnnlm.data.pipelines import encode_corpus
        from keras_rnnlm.runs import build_vocabulary

        corpus = load_corpus("ptb", data_dir=tempfile.mkdtemp())
        vocabulary = build_vocabulary(corpus, config)
        return encode_corpus(vocabulary, corpus.train), vocabulary.size, "PTB train"
    except Exception as error:  # no shared data: same-size random stream
        print(f"PTB unavailable ({error}); using a random stream")
        rng = np.random.default_rng(0)
        return [list(rng.integers(4, 10004, size=21)) for _ in range(42068)], 10004, "random stream"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=400)
    args = parser.parse_args()
    config = TrainConfig.from_preset(
        "small", epochs=args.epochs, steps_per_epoch=args.steps_per_epoch
    )
    sentences, vocabulary_size, source = _sentences(config)
    model = build_model(config, vocabulary_size)
    compile_language_model(
        model, "sgd", config.learning_rate, config.clip_norm, jit_compile=config.jit_compile
    )
    record = RecordMemory()
    print(
        f"training the small preset on {source}: {args.epochs} epochs x {args.steps_per_epoch} steps"
    )
    model.fit(
        make_dataset(sentences, config, training=True),
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        callbacks=[ResetStatesCallback(), record],
        verbose=0,
    )
    peak = _status_kib("VmHWM") / 1024
    growth = record.rss_mib[2] / record.rss_mib[0] - 1 if len(record.rss_mib) >= 3 else float("nan")
    print(f"peak resident memory (VmHWM): {peak:.0f} MiB")
    print(f"RSS after epoch 3 vs epoch 1: {growth:+.1%} (target within 5%)")


if __name__ == "__main__":
    main()
