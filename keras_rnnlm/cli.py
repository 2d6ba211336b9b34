"""``keras-rnnlm`` command line: train | evaluate."""

import argparse
import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _add_train_parser(subparsers):
    from keras_rnnlm.runs import TrainConfig

    d = TrainConfig()
    p = subparsers.add_parser(
        "train",
        help="train a language model (default: LSTM on the offline python_docs corpus)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--preset",
        choices=["small", "medium", "large"],
        help="Zaremba et al. 2014 PTB settings (stream mode); other flags override them",
    )
    p.add_argument(
        "--corpus",
        choices=["python_docs", "ptb", "tiny_shakespeare"],
        help=f"default {d.corpus} ({d.corpus!r} is offline)",
    )
    p.add_argument("--train-file", help="your own training text, one sentence per line")
    p.add_argument("--valid-file")
    p.add_argument("--test-file")
    p.add_argument("--data-dir", help="TFDS data_dir (default ~/tensorflow_datasets)")
    p.add_argument(
        "--manual-dir", help="directory with the raw corpus files (default ../shared/data/<corpus>)"
    )
    p.add_argument("--level", choices=["word", "char"], help="default: the corpus's own")
    p.add_argument("--mode", choices=["sentence", "stream"])
    p.add_argument("--cell", choices=["lstm", "gru", "simple_rnn"])
    p.add_argument("--num-layers", type=int)
    p.add_argument("--units", type=int)
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--tie-embeddings", action="store_true", default=None)
    p.add_argument("--init-scale", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--num-steps", type=int, help="stream mode: unrolled steps per batch")
    p.add_argument("--max-length", type=int, help="sentence mode: longer sentences are split")
    p.add_argument("--max-vocabulary-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--optimizer", choices=["sgd", "adam"])
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--clip-norm", type=float, help="gradient norm limit (<= 0: no clipping)")
    p.add_argument(
        "--clipping",
        choices=["global", "per_variable", "none"],
        help="global = the lecture's clipping",
    )
    p.add_argument("--decay-start-epoch", type=int)
    p.add_argument("--decay-factor", type=float)
    p.add_argument(
        "--use-builtin-layers",
        action="store_true",
        default=None,
        help="Keras's fused LSTM/GRU (cuDNN on GPU)",
    )
    p.add_argument(
        "--no-jit-compile",
        dest="jit_compile",
        action="store_false",
        default=None,
        help="run the train step without XLA",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--output", help=f"run directory (default {d.output})")
    p.add_argument("--overwrite", action="store_true", default=None)
    p.add_argument("--verbose", type=int, choices=[0, 1, 2])
    p.set_defaults(func=_train)


def _train(args):
    from keras_rnnlm.runs import TrainConfig, train

    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    if overrides.get("clip_norm") is not None and overrides["clip_norm"] <= 0:
        overrides["clip_norm"] = None
    if args.preset:
        config = TrainConfig.from_preset(args.preset, **overrides)
    else:
        config = TrainConfig(**overrides)
    metrics = train(config)
    print(f"\nRun written to {config.output}/")
    for split in ("train", "valid", "test"):
        if split in metrics:
            m = metrics[split]
            print(f"  {split:5s} perplexity {m['perplexity']:10.2f}  ({m['tokens']} tokens)")
    if "unigram_valid_perplexity" in metrics:
        print(f"  unigram (add-one) valid perplexity {metrics['unigram_valid_perplexity']:.2f}")
    if "warning" in metrics:
        print("  WARNING:", metrics["warning"])
    return 0


def _add_evaluate_parser(subparsers):
    p = subparsers.add_parser("evaluate", help="perplexity of a trained run's model on a text file")
    p.add_argument("run_dir")
    p.add_argument("--test-file", required=True, help="text, one sentence per line")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=_evaluate)


def _evaluate(args):
    from keras_rnnlm.runs import evaluate_text_file

    result = evaluate_text_file(args.run_dir, args.test_file, args.batch_size)
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-rnnlm", description="RNN language models on Keras 3."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(subparsers)
    _add_evaluate_parser(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"keras-rnnlm {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
