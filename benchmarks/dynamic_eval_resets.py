"""Static and dynamic evaluation with and without per-document state resets (issue 18, item 5).

The shipped Tiny Shakespeare character LSTM (``saved_models/shakespeare_char_lstm``) on its
test split (TFDS's 90/5/5 split of ``input.txt``, the last 5%, as
``benchmarks/document_resets.py`` reads it), one stream, batch 1, segments of 50 characters,
scored four ways on the same targets:

* static, the state carried through the whole split (the model card's figure);
* static, the state zeroed at every speech (blank lines separate speeches);
* dynamic (Krause et al.; ``keras_rnnlm.dynamic_evaluation``), the state carried;
* dynamic, the state zeroed at every speech, the adapted weights carried over.

The dynamic hyperparameters are those chosen on the valid prefix in ``benchmarks/RESULTS.md``
("Y: dynamic evaluation", lr 1e-4, decay 0.2; not re-tuned on test). The gradient statistics
come from the first 200,000 training characters read as 128 parallel streams, with the same
resets as the evaluated text (none / at every speech). Intervals: 95% percentile bootstrap
over contiguous blocks of 10 segments (500 characters), B = 1000, seed 0; paired differences
over the same blocks.

Run offline, not in CI (about 15 minutes on 2 shared CPU cores)::

    python benchmarks/dynamic_eval_resets.py --out /tmp/dynamic_resets.json
"""

import argparse
import json
import time
from pathlib import Path

MODEL = "saved_models/shakespeare_char_lstm"


def _splits() -> tuple[list[str], list[str]]:
    """Train and test lines of Tiny Shakespeare (TFDS's 90/5/5 split, blank lines kept)."""
    from keras_rnnlm.data.corpora import shared_data_dir

    text = (shared_data_dir() / "tiny_shakespeare" / "input.txt").read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    rest = text[cut:]
    return text[:cut].splitlines(), rest[int(len(rest) * 0.5) :].splitlines()


def main(argv=None) -> dict:
    """The four evaluations; returns (and writes to ``--out``) the summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--decay", type=float, default=0.2)
    p.add_argument("--segment-length", type=int, default=50)
    p.add_argument("--stat-tokens", type=int, default=200_000)
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--block", type=int, default=10, help="segments per bootstrap block")
    p.add_argument("--test-tokens", type=int, default=None, help="a prefix of test (smoke runs)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from keras_rnnlm.data.pipelines import encode_stream
    from keras_rnnlm.dynamic_evaluation import dynamic_stream_units, gradient_rms
    from keras_rnnlm.evaluation import evaluate_stream_perplexity
    from keras_rnnlm.intervals import block_units, bootstrap_perplexity, paired_bootstrap_difference
    from keras_rnnlm.runs import load_any_model

    model, vocabulary, _ = load_any_model(MODEL)
    train_lines, test_lines = _splits()
    n = None if args.test_tokens is None else args.test_tokens + 1
    summary = {
        "model": MODEL,
        "lr": args.lr,
        "decay": args.decay,
        "segment_length": args.segment_length,
    }
    units = {}
    for name, boundary in (("carried", None), ("reset_per_speech", "blank")):
        stream, reset = encode_stream(vocabulary, test_lines, boundary)
        stream, reset = stream[:n], None if reset is None else reset[:n]
        train, train_reset = encode_stream(vocabulary, train_lines, boundary)
        k = args.stat_tokens
        start = time.perf_counter()
        rms, statistics = gradient_rms(
            model, train[:k], args.segment_length, args.rows,
            reset=None if train_reset is None else train_reset[:k],
        )  # fmt: skip
        statistics["seconds"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        static = evaluate_stream_perplexity(
            model, stream, args.segment_length, return_units=True, reset=reset
        )
        static_seconds = round(time.perf_counter() - start, 1)
        dynamic = dynamic_stream_units(
            model, stream, rms, args.lr, args.decay, args.segment_length, reset=reset
        )
        entry = {
            "documents": None if reset is None else int(reset.sum()),
            "tokens": static["tokens"],
            "gradient_statistics": statistics,
        }
        for kind, result, seconds in (
            ("static", static, static_seconds),
            ("dynamic", dynamic, round(dynamic["seconds"], 1)),
        ):
            nll, tokens = block_units(result["units"]["nll"], result["units"]["tokens"], args.block)
            units[name, kind] = (nll, tokens)
            entry[kind] = {
                "perplexity": result["perplexity"],
                "perplexity_ci95": bootstrap_perplexity(nll, tokens, B=1000, seed=0),
                "bits_per_token": result["bits_per_token"],
                "seconds": seconds,
            }
        entry["dynamic_gain"] = paired_bootstrap_difference(
            *units[name, "static"], *units[name, "dynamic"], B=1000, seed=0
        )
        summary[name] = entry
        print(json.dumps({name: entry}), flush=True)
    for kind in ("static", "dynamic"):  # log ppl(reset) - log ppl(carried), same blocks
        summary[f"{kind}_reset_minus_carried"] = paired_bootstrap_difference(
            *units["carried", kind], *units["reset_per_speech", kind], B=1000, seed=0
        )
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
