"""Static vs dynamic evaluation of a shipped model: grid on valid, test scored once.

Offline, not in CI (minutes to an hour on a CPU). Every grid setting is one line of
``--log`` (JSON lines; settings already logged are skipped, so a rerun resumes); the chosen
setting (lowest valid perplexity) is then scored once on the whole test split, static and
dynamic on the same segments, with the paired-bootstrap difference in log-perplexity.

Example (from the repository root):

    python benchmarks/dynamic_eval.py --model saved_models/ptb_word_lstm_small --corpus ptb \
        --log benchmarks/dynamic_eval_grid.jsonl --out /tmp/dynamic_ptb.json
"""

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np


def _streams(vocabulary, corpus):
    from keras_rnnlm.data.pipelines import token_stream

    def stream(lines):
        return token_stream([ids for ids in vocabulary.encode_batch(lines) if ids])

    return stream(corpus.train), stream(corpus.valid), stream(corpus.test)


def _logged(log: Path, corpus: str) -> dict:
    if not log.is_file():
        return {}
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {(r["lr"], r["decay"]): r for r in rows if r["corpus"] == corpus}


def main(argv=None) -> dict:
    """Run the grid and the test pass; returns (and writes to ``--out``) the summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--corpus", required=True, choices=["ptb", "tiny_shakespeare"])
    p.add_argument("--segment-length", type=int, default=20)
    p.add_argument("--lr", type=float, nargs="+", default=[3e-5, 1e-4, 3e-4])
    p.add_argument("--decay", type=float, nargs="+", default=[0.0, 0.02, 0.2])
    p.add_argument("--valid-tokens", type=int, default=8000, help="prefix of valid for the grid")
    p.add_argument("--stat-tokens", type=int, default=200_000, help="training tokens for rms")
    p.add_argument("--rows", type=int, default=128, help="parallel streams for the rms")
    p.add_argument("--block-tokens", type=int, default=512, help="tokens per bootstrap block")
    p.add_argument("--test-tokens", type=int, default=None, help="smoke runs only: test prefix")
    p.add_argument("--log", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from keras_rnnlm.data.corpora import load_corpus
    from keras_rnnlm.dynamic_evaluation import (
        dynamic_stream_units,
        gradient_rms,
        static_and_dynamic,
    )
    from keras_rnnlm.evaluation import evaluate_stream_perplexity
    from keras_rnnlm.runs import load_any_model

    model, vocabulary, _ = load_any_model(args.model)
    train, valid, test = _streams(vocabulary, load_corpus(args.corpus))
    start = time.perf_counter()
    rms, stat_info = gradient_rms(model, train, args.segment_length, args.rows, args.stat_tokens)
    stat_seconds = time.perf_counter() - start
    valid = valid[: args.valid_tokens + 1]
    test = test[: None if args.test_tokens is None else args.test_tokens + 1]
    log = Path(args.log)
    done = _logged(log, args.corpus)
    static_valid = evaluate_stream_perplexity(model, valid, window=args.segment_length)
    for lr, decay in itertools.product(args.lr, args.decay):
        if (lr, decay) in done:
            continue
        result = dynamic_stream_units(model, valid, rms, lr, decay, args.segment_length)
        row = {
            "corpus": args.corpus,
            "split": "valid",
            "valid_tokens": result["tokens"],
            "segment_length": args.segment_length,
            "lr": lr,
            "decay": decay,
            "static_perplexity": static_valid["perplexity"],
            "dynamic_perplexity": result["perplexity"],
            "seconds": round(result["seconds"], 1),
        }
        done[(lr, decay)] = row
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    grid = [done[key] for key in itertools.product(args.lr, args.decay)]
    best = min(grid, key=lambda r: r["dynamic_perplexity"])

    result = static_and_dynamic(
        model, test, rms, best["lr"], best["decay"], args.segment_length, 1000, 0, args.block_tokens
    )
    summary = {
        "model": args.model,
        "corpus": args.corpus,
        **result,
        "chosen": {"lr": best["lr"], "decay": best["decay"], "on": "valid prefix"},
        "segment_length": args.segment_length,
        "gradient_statistics": {**stat_info, "seconds": round(stat_seconds, 1)},
    }
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
