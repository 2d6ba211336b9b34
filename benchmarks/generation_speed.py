"""Generation speed: stateful O(1)-per-token decoding vs re-feeding the prefix.

Prints, for a 2x200 LSTM language model over a 10k vocabulary (the default ``keras-rnnlm train``
size, random weights; speed does not depend on the weights):

1. tokens/second of greedy generation at batch 1 and batch 32;
2. time per token when generating 32 vs 512 tokens (target ratio <= 1.2: constant cost per
   token, the state carries the whole prefix);
3. the speed-up over the naive loop that re-runs ``model(prefix)`` for every new token, at
   256 generated tokens (quadratic in the length).

Every comparison alternates its two sides (A B A B ...) over ``--rounds`` rounds after a
warm-up, and reports medians, so a load change on the machine hits both sides alike. Generation
never stops early (``end_token_id=None``), so every call makes exactly the tokens asked for.

    python benchmarks/generation_speed.py              # graph mode (tf.function), ~1-2 min
    python benchmarks/generation_speed.py --jit-compile --rounds 7
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_rnnlm.models import RNNLanguageModel  # noqa: E402
from keras_rnnlm.samplers import GreedySampler, make_generate_fn  # noqa: E402


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _alternate(a, b, rounds):
    """Median seconds of ``a`` and ``b`` over alternating rounds (after one warm-up each)."""
    a(), b()
    times_a, times_b = [], []
    for _ in range(rounds):
        times_a.append(_timed(a))
        times_b.append(_timed(b))
    return statistics.median(times_a), statistics.median(times_b)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocabulary-size", type=int, default=10000)
    parser.add_argument("--units", type=int, default=200)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--prompt-length", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--refeed-length", type=int, default=256)
    parser.add_argument("--jit-compile", action="store_true", help="XLA-compile generation")
    args = parser.parse_args(argv)

    model = RNNLanguageModel(
        args.vocabulary_size,
        cell=args.cell,
        num_layers=args.num_layers,
        units=args.units,
        embedding_dim=args.units,
    )
    model.build((None, None))
    rng = np.random.default_rng(0)

    cached_prompts = {}

    def prompts(batch):  # one fixed random prompt batch per batch size
        if batch not in cached_prompts:
            ids = rng.integers(4, args.vocabulary_size, size=(batch, args.prompt_length))
            ids[:, 0] = 2
            cached_prompts[batch] = tf.constant(ids, dtype="int32")
        return cached_prompts[batch]

    seed = tf.constant([0, 0], dtype="int32")
    fns = {}

    def generator(batch, length):
        key = (batch, length)
        if key not in fns:
            fn = make_generate_fn(
                model, GreedySampler(), length, end_token_id=None, jit_compile=args.jit_compile
            )
            prompt = prompts(batch)
            fns[key] = lambda: fn(prompt, seed).numpy()
        return fns[key]

    mode = "XLA" if args.jit_compile else "graph (tf.function)"
    print(
        f"{args.num_layers}x{args.units} {args.cell}, vocabulary {args.vocabulary_size}, "
        f"prompt {args.prompt_length} tokens, {mode}, median of {args.rounds} alternating rounds"
    )

    # 1. Throughput at batch 1 and batch 32.
    length = 128
    t1, t32 = _alternate(generator(1, length), generator(32, length), args.rounds)
    print("\n1. Throughput (greedy, 128 new tokens)")
    print(f"   batch  1: {length / t1:10.0f} tokens/s   ({1e3 * t1 / length:.3f} ms per step)")
    print(
        f"   batch 32: {32 * length / t32:10.0f} tokens/s   ({1e3 * t32 / length:.3f} ms per step)"
    )
    print(f"   batch-32 / batch-1 throughput: {(32 * length / t32) / (length / t1):.1f}x")

    # 2. Constant cost per token: 32 vs 512 generated tokens.
    short, long_ = _alternate(generator(1, 32), generator(1, 512), args.rounds)
    per_short, per_long = short / 32, long_ / 512
    print("\n2. Time per token vs generated length (batch 1)")
    print(f"   32 tokens : {1e3 * per_short:.3f} ms/token")
    print(f"   512 tokens: {1e3 * per_long:.3f} ms/token")
    print(f"   ratio 512/32: {per_long / per_short:.2f}  (target <= 1.2)")

    # 3. Speed-up over re-feeding the whole prefix for every token.
    n = args.refeed_length
    sampler = GreedySampler()  # the same suppressed ids (<pad>, <unk>, <bos>) on both sides
    forward = tf.function(lambda ids: sampler.mask_logits(model(ids)[:, -1]), reduce_retracing=True)
    prompt = prompts(1)

    def refeed():
        ids = prompt
        for _ in range(n):
            next_id = tf.argmax(forward(ids), axis=-1, output_type="int32")
            ids = tf.concat([ids, next_id[:, None]], axis=1)
        return ids.numpy()

    incremental = generator(1, n)
    # Same greedy tokens (up to float ties): both decode the same model.
    agree = np.mean(refeed()[0, args.prompt_length :] == incremental()[0])
    t_inc, t_refeed = _alternate(incremental, refeed, max(3, args.rounds // 2))
    print(f"\n3. Stateful decoding vs re-feeding the prefix ({n} new tokens, batch 1)")
    print(f"   stateful : {1e3 * t_inc:9.1f} ms  ({n / t_inc:8.0f} tokens/s)")
    print(f"   re-feed  : {1e3 * t_refeed:9.1f} ms  ({n / t_refeed:8.0f} tokens/s)")
    print(f"   speed-up : {t_refeed / t_inc:.1f}x   (greedy tokens agree: {agree:.0%})")


if __name__ == "__main__":
    main()
