"""The ``evaluate``, ``score`` and ``compare`` commands of ``keras-rnnlm`` (parsers and bodies).

``keras_rnnlm.cli`` registers them. Like the rest of the command line, building the parsers
imports neither TensorFlow nor Keras; the command bodies import the library when they run.

* ``evaluate MODEL --test-file F``: perplexity with a 95% bootstrap interval, the text read
  as the model was trained (``keras_rnnlm.runs.evaluate_text_file``);
* ``score MODEL --file F [--jsonl]``: perplexity of a text, or one JSON line per sentence;
* ``compare A B --test-file F``: paired-bootstrap difference in log-perplexity
  (``keras_rnnlm.runs.compare_text_file``).
"""

import argparse
import json

from keras_rnnlm import cli_help, constants


def _add_command(subparsers, common, name: str, help: str, models: tuple[str, ...], func):
    """A subparser for ``name`` taking ``models`` (run or export), ``--test-file`` and the
    interval options."""
    p = subparsers.add_parser(
        name,
        help=help,
        formatter_class=cli_help.DefaultsAndExamples,
        epilog=cli_help.EXAMPLES[name],
        parents=[common],
    )
    for dest in models:
        p.add_argument(dest, metavar=dest.upper(), help="run directory or SavedModel export")
    p.add_argument("--test-file", required=True, help="text, one sentence per line")
    p.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass")
    p.add_argument("--window", type=int, default=256, help="stream mode: tokens per step")
    p.add_argument("--bootstrap-b", type=int, default=1000, help="bootstrap replicates")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.add_argument("--block", type=int, default=2, help="stream mode: windows per resampled block")
    cli_help.add_quiet_option(p)
    p.set_defaults(func=func)
    return p


def _interval_options(args) -> dict:
    return {
        "batch_size": args.batch_size,
        "window": args.window,
        "B": args.bootstrap_b,
        "seed": args.seed,
        "block": args.block,
    }


def add_evaluate_parser(subparsers, common) -> None:
    """Register ``evaluate MODEL --test-file F [--mode] [interval options]``.

    Args:
        subparsers: the ``keras-rnnlm`` subparsers action.
        common: the parent parser of the options every command takes.
    """
    p = _add_command(
        subparsers,
        common,
        "evaluate",
        "perplexity (with a 95%% bootstrap interval) of a run, an export or a shipped "
        "model on a text file, read as the model was trained (sentences or one stream)",
        ("model",),
        _evaluate,
    )
    p.add_argument(
        "--mode",
        choices=constants.MODES,
        help="override how the text is read (default: how the model was trained)",
    )
    p.add_argument(
        "--document-boundary",
        metavar="blank|TOKEN|none",
        help="stream mode: documents are separated by blank lines ('blank') or by lines holding "
        "only TOKEN, and the state is reset at every document start (static and --dynamic; "
        "dynamic evaluation's weights carry over); 'none': the state carried through the whole "
        "text (default: the run's own --document-boundary, none for an export)",
        default=argparse.SUPPRESS,  # absent: the run's own (no misleading "default: None")
    )
    dynamic = p.add_argument_group(
        "dynamic evaluation (Krause et al. 2018; keras_rnnlm.dynamic_evaluation)"
    )
    dynamic.add_argument(
        "--dynamic",
        action="store_true",
        help="also score the text as a stream updating the weights after each segment "
        "(score first, then update; the saved model is never changed)",
    )
    dynamic.add_argument(
        "--dynamic-train-file",
        help="training text, one sentence per line, for the gradient statistics (needed by "
        "--dynamic)",
    )
    dynamic.add_argument(
        "--dynamic-lr",
        type=float,
        default=1.5e-4,
        help="step size (the default was chosen on PTB valid)",
    )
    dynamic.add_argument(
        "--dynamic-decay", type=float, default=0.02, help="decay toward the trained weights"
    )
    dynamic.add_argument("--segment-length", type=int, default=20, help="tokens per update")
    dynamic.add_argument(
        "--dynamic-stat-tokens",
        type=int,
        default=200_000,
        help="training tokens read for the gradient statistics (0: all)",
    )


def _evaluate(args):
    if args.dynamic:
        return _evaluate_dynamic(args)
    from keras_rnnlm.progress import Progress
    from keras_rnnlm.runs import evaluate_text_file

    options = _interval_options(args)
    # windows (stream) or sentences (stderr, on a terminal only, never with --quiet)
    with Progress(None, "evaluate", "steps", quiet=args.quiet) as progress:
        result = evaluate_text_file(
            args.model,
            args.test_file,
            mode=args.mode,
            progress=progress,
            document_boundary=getattr(args, "document_boundary", None),
            **options,
        )
    print(json.dumps(result, indent=2))
    return 0


def _evaluate_dynamic(args):
    from keras_rnnlm.dynamic_text import dynamic_evaluate_text_file

    if not args.dynamic_train_file:
        raise ValueError(
            "--dynamic needs --dynamic-train-file: the gradient statistics of the update "
            "come from the model's training text."
        )
    result = dynamic_evaluate_text_file(
        args.model,
        args.test_file,
        args.dynamic_train_file,
        lr=args.dynamic_lr,
        decay=args.dynamic_decay,
        segment_length=args.segment_length,
        stat_tokens=args.dynamic_stat_tokens or None,
        B=args.bootstrap_b,
        seed=args.seed,
        block_tokens=args.block * args.window,
        mode=args.mode,
        quiet=args.quiet,
        document_boundary=getattr(args, "document_boundary", None),
    )
    print(json.dumps(result, indent=2))
    return 0


def add_compare_parser(subparsers, common) -> None:
    """Register ``compare A B --test-file F [interval options]``.

    Args:
        subparsers: the ``keras-rnnlm`` subparsers action.
        common: the parent parser of the options every command takes.
    """
    _add_command(
        subparsers,
        common,
        "compare",
        "paired-bootstrap difference log ppl(B) - log ppl(A) of two models on a text file "
        "(refused when they tokenize differently)",
        ("model_a", "model_b"),
        _compare,
    )


def _compare(args):
    from keras_rnnlm.runs import compare_text_file

    options = _interval_options(args)
    result = compare_text_file(args.model_a, args.model_b, args.test_file, **options)
    print(json.dumps(result, indent=2))
    return 0


def add_score_parser(subparsers, common) -> None:
    """Register ``score MODEL (--text T | --file F [--jsonl])``.

    Args:
        subparsers: the ``keras-rnnlm`` subparsers action.
        common: the parent parser of the options every command takes.
    """
    p = subparsers.add_parser(
        "score",
        help="log-probability of sentences and perplexity of a text under a run's or an "
        "export's model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=cli_help.EXAMPLES["score"],
        parents=[common],
    )
    p.add_argument("run_dir", metavar="MODEL", help="run directory or SavedModel export")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="one sentence: per-token log-probabilities and total")
    source.add_argument("--file", help="text, one sentence per line: perplexity (JSON)")
    p.add_argument(
        "--jsonl",
        action="store_true",
        help="with --file: one JSON object per sentence (line, nll, tokens) instead",
    )
    p.add_argument("--batch-size", type=int, default=32)
    cli_help.add_quiet_option(p)
    p.set_defaults(func=_score)


def _score(args):
    from keras_rnnlm.progress import score_file_with_progress
    from keras_rnnlm.runs import load_any_model
    from keras_rnnlm.scoring import score_ids, score_sentences

    if args.jsonl and args.file is None:
        raise ValueError("--jsonl needs --file.")
    model, vocabulary, _ = load_any_model(args.run_dir)
    if args.text is not None:
        if not vocabulary.encode(args.text):
            raise ValueError("--text holds no token.")
        (score,) = score_sentences(model, vocabulary, [args.text])
        for token, log_prob in zip(score.tokens, score.token_log_probs, strict=True):
            print(f"{token}\t{log_prob:.4f}")
        print(
            f"log_prob {score.log_prob:.4f}  tokens {score.num_tokens}  "
            f"perplexity {score.perplexity:.2f}"
        )
        return 0
    with open(args.file, encoding="utf-8") as f:
        lines = [(number, line.strip()) for number, line in enumerate(f, 1) if line.strip()]
    if args.jsonl:
        encoded = vocabulary.encode_batch([text for _, text in lines])
        kept = [(number, ids) for (number, _), ids in zip(lines, encoded, strict=True) if ids]
        if not kept:
            raise ValueError(f"{args.file} holds no token.")
        scores = score_ids(model, [ids for _, ids in kept], args.batch_size, vocabulary.start_id)
        for (number, _), score in zip(kept, scores, strict=True):
            record = {"line": number, "nll": -score.log_prob, "tokens": score.num_tokens}
            print(json.dumps(record))
        return 0
    texts = [text for _, text in lines]
    result = score_file_with_progress(model, vocabulary, texts, args.batch_size, args.quiet)
    result["file"] = str(args.file)
    print(json.dumps(result, indent=2))
    return 0
