"""Training throughput (tokens/second) for the PTB small configuration.

Models, all 2x200 LSTM, vocabulary 10k, batch 20, 20 unrolled steps, SGD with global norm
clipping, state carried across batches (truncated BPTT):

  ours     keras_rnnlm.RNNLanguageModel (from-scratch cells, hoisted input projection), as
           `keras-rnnlm train --preset small` compiles it
  ours ... the same model with other compile settings: whole step XLA (jit_compile=True),
           graph (jit_compile=False), hybrid (jit_compile="recurrence": graph step, XLA time
           loops and softmax cross-entropy), with a bfloat16 output layer or not
  keras    the same model on keras.layers.LSTM (use_builtin_layers=True), same compile settings
  torch    an equivalent PyTorch nn.LSTM model (only when torch is importable)

The machine is noisy, so the models run in alternating rounds (A, B, C, A, B, C, ...) in one
process and only medians and ratios are reported. Also reported: achieved GFLOP/s (matmul
FLOPs of forward + backward) as a fraction of a measured fp32 matmul peak, and a breakdown of
where the time goes (full step vs a tiny-vocabulary step = recurrence only vs input pipeline).

    python benchmarks/train_throughput.py [--rounds 5] [--steps 100]
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

from keras_rnnlm import compile_language_model  # noqa: E402
from keras_rnnlm.data.pipelines import prefetched  # noqa: E402
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


class TorchRunner:
    def __init__(self, steps=40):
        import torch
        from torch import nn

        torch.manual_seed(0)

        class LM(nn.Module):
            def __init__(self):
                super().__init__()
                self.embedding = nn.Embedding(VOCAB, P.units)
                self.lstm = nn.LSTM(P.units, P.units, num_layers=P.num_layers, batch_first=True)
                self.output = nn.Linear(P.units, VOCAB)
                for p in self.parameters():
                    nn.init.uniform_(p, -P.init_scale, P.init_scale)

            def forward(self, x, state):
                h, state = self.lstm(self.embedding(x), state)
                return self.output(h), state

        self.torch = torch
        self.model = LM()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=P.keras_learning_rate)
        self.loss = nn.CrossEntropyLoss()
        x, y = random_stream(steps)
        self.batches = [
            (torch.from_numpy(a).long(), torch.from_numpy(b).long()) for a, b in zip(x, y)
        ]
        self.tokens = steps * P.batch_size * P.num_steps
        self.run()

    def run(self):
        torch = self.torch
        start = time.perf_counter()
        state = None
        for x, y in self.batches:
            logits, state = self.model(x, state)
            state = tuple(s.detach() for s in state)
            loss = self.loss(logits.reshape(-1, VOCAB), y.reshape(-1))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), P.keras_clip_norm)
            self.optimizer.step()
        return self.tokens / (time.perf_counter() - start)


def pipeline_tokens_per_second(steps=200):
    from keras_rnnlm.data.pipelines import stream_dataset

    rng = np.random.default_rng(0)
    sentences = [list(rng.integers(4, VOCAB, size=20)) for _ in range(steps * P.batch_size)]
    dataset = stream_dataset(sentences, P.batch_size, P.num_steps)
    start = time.perf_counter()
    count = sum(int(np.prod(x.shape)) for x, _ in dataset)
    return count / (time.perf_counter() - start)


def main():
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
    args = parser.parse_args()
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
            runners["torch"] = TorchRunner(steps=args.steps)
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


if __name__ == "__main__":
    main()
