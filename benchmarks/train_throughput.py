"""Training throughput: the library's defaults against the same model on keras.layers.LSTM.

Default mode (issue 14, item 2): for two workloads,

  ptb     PTB-small stream shapes: 2x200 LSTM, vocabulary 10k, batch 20, 20 unrolled steps,
          stateful (truncated BPTT), SGD lr 20 with global clipping 0.25, NumPy arrays into
          model.fit (batch_size=20, shuffle=False);
  readme  the README's own example: python_docs sentences, Vocabulary.build(lowercase=True,
          min_count=2), sentence_dataset(batch_size=32) bucketed batches, 2x200 LSTM, Adam
          2e-3 with global clipping 5 (the first --steps batches, cached);

and three ways of compiling, each against the same model with use_builtin_layers=True
(keras.layers.LSTM) compiled the same way:

  (a) library  compile_language_model(model, optimizer, lr, clip) with its defaults;
               target >= 1.2x
  (b) plain    model.compile(optimizer=keras SGD/Adam(global_clipnorm=...),
               loss=MaskedLanguageModelLoss(), metrics=[Perplexity()]); target >= 1.1x
  (c) stock    model.compile(optimizer=..., loss=keras.losses.SparseCategoricalCrossentropy(
               from_logits=True)); target >= 0.95x

All models run in alternating rounds in one process (ours, keras, ours, keras, ...); reported
are per-round tokens/s, the same-round ratios ours/keras and their median.

    python benchmarks/train_throughput.py [--rounds 7] [--steps 100] [--workloads ptb readme]

``--peers`` (issue 17) compares with PyTorch 2.13 ``nn.LSTM`` like with like (same model,
optimizer and batches), each framework in its own worker process, rounds alternating which goes
first (``peer_runners.py``; it imports neither framework in the coordinator, so this script
dispatches to it before importing TensorFlow): PTB-small stream shapes, ours fp32 fed NumPy
arrays and a plain ``tf.data`` pipeline and ours with the library's defaults (bf16 output matmuls
on a CPU with AVX512-BF16) against PyTorch fp32 and under ``torch.autocast("cpu",
dtype=torch.bfloat16)``; the README's bucketed sentence batches (Adam), the same four.
Targets: >= 1.2x, same-round medians. ``--in-process`` is the old mode (one process).

    python benchmarks/train_throughput.py --peers [--rounds 9] [--steps 100] [--in-process]

``--legacy`` runs the earlier comparison (compile-setting variants, PyTorch, peak FLOP/s).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's keras_rnnlm

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if __name__ == "__main__" and "--peers" in sys.argv[1:]:  # a coordinator without TF or torch
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peer_runners import main as peers_main

    peers_main(sys.argv[1:])
    sys.exit(0)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_rnnlm import compile_language_model  # noqa: E402
from keras_rnnlm.data.pipelines import prefetched  # noqa: E402
from keras_rnnlm.losses import MaskedLanguageModelLoss  # noqa: E402
from keras_rnnlm.metrics import Perplexity  # noqa: E402
from keras_rnnlm.models import RNNLanguageModel  # noqa: E402
from keras_rnnlm.runs import TrainConfig, build_model  # noqa: E402
from keras_rnnlm.training import PRESETS  # noqa: E402

VOCAB = 10000  # PTB vocabulary
P = PRESETS["small"]  # 2x200, batch 20, 20 steps, init 0.1, clip 5 on the summed loss


def train_flops_per_token(vocab=VOCAB, units=P.units, layers=P.num_layers, embed=P.units):
    """Matmul FLOPs per token of one training step: forward x 3 (backward ~ 2x forward)."""
    forward = 0
    inputs = embed
    for _ in range(layers):
        forward += 2 * inputs * 4 * units + 2 * units * 4 * units  # input + recurrent projections
        inputs = units
    forward += 2 * units * vocab  # output layer
    return 3 * forward


def matmul_peak_gflops(n=2048, repeats=10):
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    mm = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    mm()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mm().numpy()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def random_stream(num_batches, vocab=VOCAB, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(4, vocab, size=(num_batches, P.batch_size, P.num_steps + 1)).astype("int32")
    return data[..., :-1], data[..., 1:]


class KerasRunner:
    def __init__(self, builtin, vocab=VOCAB, steps=40, **overrides):
        config = TrainConfig.from_preset("small", use_builtin_layers=builtin, **overrides)
        model = build_model(config, vocab)  # exactly what `keras-rnnlm train --preset small` builds
        compile_language_model(
            model, "sgd", P.keras_learning_rate, P.keras_clip_norm, jit_compile=config.jit_compile
        )
        x, y = random_stream(steps, vocab)
        # prefetched: tf.data's autotuner off, or fit() stalls at the end of some rounds
        self.dataset = prefetched(tf.data.Dataset.from_tensor_slices((x, y)))
        self.model = model
        self.tokens = steps * P.batch_size * P.num_steps
        self.run()  # compile

    def run(self):
        start = time.perf_counter()
        self.model.fit(self.dataset, epochs=1, verbose=0)
        return self.tokens / (time.perf_counter() - start)


def torch_runner(steps=40):
    """PyTorch ``nn.LSTM`` on the same random PTB-shape stream (``peer_runners.TorchRunner``)."""
    from peer_runners import TorchRunner

    x, y = random_stream(steps)
    runner = TorchRunner("ptb", VOCAB, list(zip(x, y, strict=True)))

    class Legacy:  # run() -> tokens/s, as the other legacy runners
        def run(self):
            return runner.run()["tokens_per_s"]

    return Legacy()


def pipeline_tokens_per_second(steps=200):
    from keras_rnnlm.data.pipelines import stream_dataset

    rng = np.random.default_rng(0)
    sentences = [list(rng.integers(4, VOCAB, size=20)) for _ in range(steps * P.batch_size)]
    dataset = stream_dataset(sentences, P.batch_size, P.num_steps)
    start = time.perf_counter()
    count = sum(int(np.prod(x.shape)) for x, _ in dataset)
    return count / (time.perf_counter() - start)


def legacy_main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--steps",
        type=int,
        default=100,
        help="training steps per round and model (short rounds measure fit() overhead)",
    )
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument(
        "--no-variants", action="store_true", help="skip the rows of other compile settings"
    )
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)

    runners = {
        "ours": KerasRunner(False, steps=args.steps),
        "keras": KerasRunner(True, steps=args.steps, jit_compile=True, output_dtype="float32"),
    }
    variants = {
        "ours XLA fp32": dict(jit_compile=True, output_dtype="float32"),
        "ours graph fp32": dict(jit_compile=False, output_dtype="float32"),
        "ours hybrid fp32": dict(jit_compile="recurrence", output_dtype="float32"),
        "ours hybrid bf16-out": dict(jit_compile="recurrence", output_dtype="bfloat16"),
        "ours XLA bf16-out": dict(jit_compile=True, output_dtype="bfloat16"),
    }
    if not args.no_variants:
        for name, overrides in variants.items():
            runners[name] = KerasRunner(False, steps=args.steps, **overrides)
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            runners["torch"] = torch_runner(steps=args.steps)
        except ImportError:
            print("torch not importable: skipping the PyTorch baseline (pip install torch==2.13.0)")
    recurrence_only = KerasRunner(False, vocab=100, steps=args.steps)

    results = {name: [] for name in runners}
    results["ours, vocabulary 100 (recurrence only)"] = []
    peaks = []
    for r in range(args.rounds):
        for name, runner in runners.items():
            results[name].append(runner.run())
        results["ours, vocabulary 100 (recurrence only)"].append(recurrence_only.run())
        peaks.append(matmul_peak_gflops())
        print(
            f"round {r + 1}: "
            + ", ".join(
                f"{k.split(',')[0]} {v[-1]:,.0f}" for k, v in results.items() if "100" not in k
            )
        )

    median = {name: statistics.median(v) for name, v in results.items()}
    peak = statistics.median(peaks)
    flops = train_flops_per_token()
    print(
        f"\nmedian training tokens/s over {args.rounds} alternating rounds of {args.steps} steps:"
    )
    for name, value in median.items():
        print(f"  {name:40s} {value:10,.0f}")
    print(f"  {'input pipeline alone':40s} {pipeline_tokens_per_second():10,.0f}")
    for baseline, target in (("keras", 1.0), ("torch", 1.25)):
        if baseline not in median:
            continue
        per_round = [a / b for a, b in zip(results["ours"], results[baseline], strict=True)]
        print(
            f"\nratio ours / {baseline}: {median['ours'] / median[baseline]:.2f}x of medians, "
            f"{statistics.median(per_round):.2f}x median of same-round ratios "
            f"({', '.join(f'{r:.2f}' for r in per_round)}); target >= {target}"
        )
    achieved = median["ours"] * flops / 1e9
    print(
        f"\nmatmul FLOPs per training token: {flops / 1e6:.2f} M (output layer {3 * 2 * P.units * VOCAB / flops:.0%})"
    )
    print(
        f"achieved {achieved:.1f} GFLOP/s; measured fp32 matmul peak {peak:.1f} GFLOP/s -> {achieved / peak:.0%} of peak"
    )
    share = 1 - median["ours"] / median["ours, vocabulary 100 (recurrence only)"]
    print(
        f"time share of the 10k-way output layer + softmax (1 - full/vocab-100 speed): {share:.0%}"
    )


# ---- issue 14, item 2: defaults vs keras.layers.LSTM --------------------------------------

MODES = {"library": 1.2, "plain": 1.1, "stock": 0.95}  # compile mode -> target ratio


def _optimizer(workload):
    if workload == "ptb":
        return keras.optimizers.SGD(P.keras_learning_rate, global_clipnorm=P.keras_clip_norm)
    return keras.optimizers.Adam(2e-3, global_clipnorm=5.0)


def _compile(model, workload, mode):
    if mode == "library":
        if workload == "ptb":
            compile_language_model(model, "sgd", P.keras_learning_rate, P.keras_clip_norm)
        else:
            compile_language_model(model, optimizer="adam", learning_rate=2e-3, clip_norm=5.0)
    elif mode == "plain":
        model.compile(_optimizer(workload), MaskedLanguageModelLoss(), metrics=[Perplexity()])
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(_optimizer(workload), loss)


def _readme_data(steps):
    from keras_rnnlm.data import Vocabulary, encode_corpus, python_docs_corpus, sentence_dataset

    corpus = python_docs_corpus()
    vocab = Vocabulary.build(corpus.train, lowercase=True, min_count=2)
    train = sentence_dataset(encode_corpus(vocab, corpus.train), batch_size=32, seed=0)
    batches = list(train.take(steps).as_numpy_iterator())
    tokens = sum(int(np.count_nonzero(y)) for _, y in batches)
    return vocab.size, batches, tokens


class Runner:
    """One model of one workload and compile mode; ``run()`` trains one epoch, returns tokens/s."""

    def __init__(self, workload, mode, builtin, steps, readme=None):
        keras.utils.set_random_seed(0)
        if workload == "ptb":
            model = RNNLanguageModel(
                VOCAB, num_layers=2, units=200, embedding_dim=200, init_scale=P.init_scale,
                stateful=True, use_builtin_layers=builtin,
            )  # fmt: skip
            model.build((P.batch_size, None))
            x, y = random_stream(steps)
            self.fit_args = dict(
                x=x.reshape(-1, P.num_steps), y=y.reshape(-1, P.num_steps),
                batch_size=P.batch_size, shuffle=False,
            )  # fmt: skip
            self.tokens = steps * P.batch_size * P.num_steps
        else:
            vocabulary_size, batches, self.tokens = readme
            model = RNNLanguageModel(
                vocabulary_size, cell="lstm", num_layers=2, units=200, embedding_dim=200,
                use_builtin_layers=builtin,
            )  # fmt: skip
            dataset = tf.data.Dataset.from_generator(
                lambda: iter(batches),
                output_signature=(tf.TensorSpec((None, None), tf.int32),) * 2,
            ).apply(tf.data.experimental.assert_cardinality(len(batches)))
            self.fit_args = dict(x=prefetched(dataset), shuffle=False)  # shuffled once, seed 0
        _compile(model, workload, mode)
        self.model = model
        self.run()  # compile (the README workload: one compilation per bucket shape)

    def run(self):
        start = time.perf_counter()
        self.model.fit(**self.fit_args, epochs=1, verbose=0)
        return self.tokens / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=100, help="training steps per round")
    parser.add_argument("--workloads", nargs="+", default=["ptb", "readme"])
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--legacy", action="store_true", help="the earlier comparison")
    parser.add_argument(
        "--peers", action="store_true", help="against PyTorch (issue 17; peer_runners.py)"
    )
    args, rest = parser.parse_known_args(argv)
    if args.legacy:
        return legacy_main(rest)
    if args.peers:  # imported as a module: the dispatch at the top did not run
        from peer_runners import main as peers_main

        return peers_main(rest + [f"--rounds={args.rounds}", f"--steps={args.steps}"])
    readme = _readme_data(args.steps) if "readme" in args.workloads else None
    runners = {}
    for workload in args.workloads:
        for mode in args.modes:
            for side, builtin in (("ours", False), ("keras", True)):
                runners[workload, mode, side] = Runner(workload, mode, builtin, args.steps, readme)
    speeds = {key: [] for key in runners}
    for r in range(args.rounds):
        for key, runner in runners.items():  # alternating: ours, keras, ours, keras, ...
            speeds[key].append(runner.run())
        print(
            f"round {r + 1}: " + ", ".join(f"{'/'.join(k)} {v[-1]:,.0f}" for k, v in speeds.items())
        )
    print(f"\ntokens/s and same-round ratios, {args.rounds} rounds of {args.steps} steps:")
    for workload in args.workloads:
        for mode in args.modes:
            ours, theirs = speeds[workload, mode, "ours"], speeds[workload, mode, "keras"]
            ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
            print(
                f"  {workload:6s} ({mode:7s}) ours {statistics.median(ours):8,.0f}  keras "
                f"{statistics.median(theirs):8,.0f}  ratio median {statistics.median(ratios):.2f}x "
                f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}); target >= {MODES[mode]}x"
            )
    return speeds


if __name__ == "__main__":
    main()
