"""``keras-rnnlm`` command line: train | evaluate | export | generate | score | compare.

Building the parser imports neither TensorFlow nor Keras (the choices come from
``keras_rnnlm.constants``), so ``--help`` is instant. ``main`` then silences TensorFlow's C++
logging *before* TensorFlow is first imported (``keras_rnnlm.tf_logging``), unless the
command has ``--tf-logs`` or the environment sets ``TF_CPP_MIN_LOG_LEVEL`` itself, and only
then runs the command, whose function imports the library.

Exit codes: 0 done; 1 unexpected error (one line naming it; ``--traceback`` prints the stack);
2 bad input or settings (the message names it); 3 training diverged (NaN or exploding loss; the
last good checkpoint is kept); 4 training crashed (a device, or a multi-worker run's peer,
failed inside ``fit``; the same command resumes from the last completed epoch).
"""

import argparse
import dataclasses
import sys
import traceback
from collections.abc import Sequence

from keras_rnnlm import cli_help, constants
from keras_rnnlm.cli_export import add_export_parser
from keras_rnnlm.tf_logging import configure_tensorflow_logging

EXIT_OK, EXIT_UNEXPECTED, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_CRASHED = 0, 1, 2, 3, 4
#: exceptions that mean "the input or the settings are wrong" (exit 2, message only)
BAD_INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


def _common_options() -> argparse.ArgumentParser:
    """Options every command takes (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--tf-logs",
        action="store_true",
        help="show TensorFlow's C++ log lines (hidden unless TF_CPP_MIN_LOG_LEVEL is set)",
    )
    common.add_argument(
        "--traceback",
        action="store_true",
        help="on an unexpected error, print the full Python traceback",
    )
    return common


def _add_train_parser(subparsers, common):
    p = subparsers.add_parser(
        "train",
        help="train a language model (default: LSTM on the offline python_docs corpus)",
        formatter_class=cli_help.DefaultsAndExamples,
        epilog=cli_help.EXAMPLES["train"],
        parents=[common],
    )
    p.add_argument(
        "--preset",
        choices=constants.PRESET_NAMES,
        help="Zaremba et al. 2014 PTB settings (stream mode); other flags override them",
    )
    p.add_argument(
        "--corpus",
        choices=constants.CORPORA,
        help=f"default {constants.DEFAULT_CORPUS} ({constants.DEFAULT_CORPUS!r} is offline)",
    )
    p.add_argument("--train-file", help="your own training text, one sentence per line")
    p.add_argument("--valid-file")
    p.add_argument("--test-file")
    p.add_argument("--data-dir", help="TFDS data_dir (default ~/tensorflow_datasets)")
    p.add_argument(
        "--manual-dir", help="directory with the raw corpus files (default ../shared/data/<corpus>)"
    )
    p.add_argument("--level", choices=constants.LEVELS, help="default: the corpus's own")
    p.add_argument("--mode", choices=constants.MODES)
    p.add_argument("--cell", choices=constants.CELL_NAMES)
    p.add_argument("--num-layers", type=int)
    p.add_argument("--units", type=int)
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--dropout", type=float)
    p.add_argument("--tie-embeddings", action="store_true", default=None)
    p.add_argument("--init-scale", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--num-steps", type=int, help="stream mode: unrolled steps per batch")
    p.add_argument(
        "--document-boundary",
        metavar="blank|TOKEN",
        help="stream mode: documents are separated by blank lines ('blank') or by lines holding "
        "only TOKEN; each row's state is reset at every document start (training and evaluation)",
    )
    p.add_argument("--max-length", type=int, help="sentence mode: longer sentences are split")
    p.add_argument("--max-vocabulary-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--optimizer", choices=constants.OPTIMIZERS)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--clip-norm", type=float, help="gradient norm limit (<= 0: no clipping)")
    p.add_argument(
        "--clipping",
        choices=constants.CLIPPING,
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
        help="reference path, train step in graph mode without XLA",
    )
    p.add_argument(
        "--jit-recurrence",
        dest="jit_compile",
        action="store_const",
        const=constants.JIT_RECURRENCE,
        help="force the fast path (graph-mode train step, XLA-compiled time loops); the "
        "default picks it where supported",
    )
    p.add_argument(
        "--jit-whole-step",
        dest="jit_compile",
        action="store_const",
        const=True,
        help="reference path with the whole train step XLA-compiled",
    )
    p.add_argument(
        "--output-dtype",
        choices=constants.OUTPUT_DTYPES,
        help="compute dtype of the output layer's training matmuls (weights stay float32; "
        "default auto: bfloat16 where the device runs it fast)",
    )
    p.add_argument(
        "--strategy",
        choices=constants.STRATEGIES,
        help="tf.distribute strategy (exact global clipping across replicas; "
        "multi_worker reads TF_CONFIG, tpu reads TPU_NAME)",
    )
    p.add_argument(
        "--cpu-devices",
        type=int,
        metavar="N",
        help="with --strategy mirrored: split the CPU into N logical devices (N replicas); "
        "--batch-size stays the global batch",
    )
    p.add_argument(
        "--encoding-errors",
        choices=constants.ENCODING_ERRORS,
        help="text files with bytes that are not UTF-8: fail (strict) or read them as U+FFFD",
    )
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--output",
        help=f"run directory (default {constants.DEFAULT_OUTPUT}); rerunning an interrupted run resumes it",
    )
    p.add_argument("--overwrite", action="store_true", default=None)
    p.add_argument("--verbose", type=int, choices=[0, 1, 2])
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="write per-step loss, epoch-to-date perplexity, learning rate and pre-clipping "
        "gradient norm for TensorBoard (tensorboard --logdir DIR); not a configuration change "
        "when a run is resumed",
    )
    p.set_defaults(func=_train)


def _train(args):
    from keras_rnnlm.runs import TrainConfig, TrainingCrashedError, TrainingDivergedError, train

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
    print(cli_help.train_intro(config))
    try:
        metrics = train(config)
    except TrainingDivergedError as error:
        print(f"keras-rnnlm train: error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except TrainingCrashedError as error:
        hint = "" if args.traceback else " (--traceback shows where)"
        print(f"keras-rnnlm train: {error}{hint}", file=sys.stderr)
        if args.traceback:
            traceback.print_exception(error.__cause__ or error)
        return EXIT_CRASHED
    print(f"\nRun written to {config.output}/")
    for split in ("train", "valid", "test"):
        if split in metrics:
            m = metrics[split]
            print(f"  {split:5s} perplexity {m['perplexity']:10.2f}  ({m['tokens']} tokens)")
    if "unigram_valid_perplexity" in metrics:
        print(f"  unigram (add-one) valid perplexity {metrics['unigram_valid_perplexity']:.2f}")
    if "warning" in metrics:
        print("  WARNING:", metrics["warning"])
    print(cli_help.next_commands(config))
    return 0


def _add_evaluate_parser(subparsers, common):
    from keras_rnnlm.evaluate_commands import add_evaluate_parser

    add_evaluate_parser(subparsers, common)


def _add_compare_parser(subparsers, common):
    from keras_rnnlm.evaluate_commands import add_compare_parser

    add_compare_parser(subparsers, common)


def _add_generate_parser(subparsers, common):
    p = subparsers.add_parser(
        "generate",
        help="continue a prompt with a trained run's model (greedy, sampling, top-k/p, beam)",
        formatter_class=cli_help.DefaultsAndExamples,
        epilog=cli_help.EXAMPLES["generate"],
        parents=[common],
    )
    p.add_argument("run_dir")
    p.add_argument(
        "--prompt", help="text to continue (<bos> is prepended); omit it to start a sentence"
    )
    p.add_argument("--strategy", choices=constants.SAMPLER_NAMES, default="top_p")
    p.add_argument("--temperature", type=float, default=1.0, help="sample, top_k, top_p")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--beam-width", type=int, default=5)
    p.add_argument(
        "--length-penalty", type=float, default=0.0, help="beam: rank by log P / length**this"
    )
    length = p.add_mutually_exclusive_group()
    length.add_argument(
        "--max-length",
        type=int,
        default=40,
        help="maximum total length in tokens, the prompt (start token included) counted",
    )
    length.add_argument(
        "--max-new-tokens",
        type=int,
        help="instead of --max-length: how many tokens to generate, the prompt not counted",
    )
    p.add_argument("--num-samples", type=int, default=1, help="beam: the best beams")
    p.add_argument("--seed", type=int, help="makes sampling reproducible")
    p.add_argument("--allow-unk", action="store_true", help="let the model emit <unk>")
    p.add_argument("--jit-compile", action="store_true", help="compile generation with XLA")
    cli_help.add_quiet_option(p)
    p.set_defaults(func=_generate)


def _generate(args):
    from keras_rnnlm.data.vocabulary import BOS_ID, PAD_ID
    from keras_rnnlm.presets import max_new_tokens
    from keras_rnnlm.progress import Progress
    from keras_rnnlm.runs import load_run
    from keras_rnnlm.samplers import generate_text, get_sampler

    if args.num_samples < 1 or args.max_length < 1:
        raise ValueError("--num-samples and --max-length must be >= 1.")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}.")
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError(
            "--prompt is empty; give some text, or omit --prompt to generate from the start "
            "of a sentence."
        )
    common = {"seed": args.seed}
    if args.allow_unk:
        common["suppressed_token_ids"] = (PAD_ID, BOS_ID)
    options = {
        "greedy": {},
        "sample": {"temperature": args.temperature},
        "top_k": {"temperature": args.temperature, "k": args.top_k},
        "top_p": {"temperature": args.temperature, "p": args.top_p},
        "beam": {"num_beams": args.beam_width, "length_penalty": args.length_penalty},
    }[args.strategy]
    sampler = get_sampler(args.strategy, **common, **options)
    model, vocabulary = load_run(args.run_dir)
    prompt = args.prompt or ""
    if prompt and not vocabulary.encode(prompt):
        raise ValueError(f"--prompt {prompt!r} holds no token of the model's vocabulary.")
    # --max-length counts the prompt and its start token (keras-hub's convention)
    new_tokens = args.max_new_tokens or max_new_tokens(
        args.max_length, 1 + len(vocabulary.encode(prompt))
    )
    quiet = args.quiet or args.num_samples == 1
    with Progress(args.num_samples, "generate", "samples", quiet=quiet) as progress:
        (samples,) = generate_text(
            model,
            vocabulary,
            [prompt],
            sampler,
            max_new_tokens=new_tokens,
            num_samples=args.num_samples,
            jit_compile=args.jit_compile,
        )
        progress.update(args.num_samples)  # one batch: all samples at once
    prefix = vocabulary.decode(vocabulary.encode(prompt))
    for sample in samples:
        print(f"{prefix} {sample}".strip() if vocabulary.level == "word" else prefix + sample)
    return 0


def _add_score_parser(subparsers, common):
    from keras_rnnlm.evaluate_commands import add_score_parser

    add_score_parser(subparsers, common)


def build_parser() -> argparse.ArgumentParser:
    """The ``keras-rnnlm`` argument parser (imports neither TensorFlow nor Keras).

    Returns:
        An ``argparse.ArgumentParser`` whose parsed namespace has ``func``, the command.

    Example:

    >>> args = build_parser().parse_args(["train", "--epochs", "1"])
    >>> args.command, args.epochs
    ('train', 1)
    """
    parser = argparse.ArgumentParser(
        prog="keras-rnnlm",
        description="RNN language models on Keras 3.",
        epilog="exit codes: 0 done, 1 unexpected error, 2 bad input or settings, "
        "3 training diverged, 4 training crashed (rerun to resume)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    common = _common_options()
    _add_train_parser(subparsers, common)
    _add_evaluate_parser(subparsers, common)
    add_export_parser(subparsers, common)
    _add_generate_parser(subparsers, common)
    _add_score_parser(subparsers, common)
    _add_compare_parser(subparsers, common)
    return parser


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "(no message)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        ``EXIT_OK`` (0) when done; ``EXIT_UNEXPECTED`` (1) for an unexpected exception, with a
        one-line hint on stderr (``--traceback`` adds the stack); ``EXIT_BAD_INPUT`` (2) for
        bad input or settings (the message names it); ``EXIT_DIVERGED`` (3) when training
        diverged (NaN or exploding loss; the last good checkpoint is kept); ``EXIT_CRASHED``
        (4) when ``fit`` failed (a device or a multi-worker peer), with a one-line hint.

    Example:

    >>> main(["train", "--epochs", "1", "--output", "/tmp/run"])
    0
    """
    args = build_parser().parse_args(argv)
    try:
        configure_tensorflow_logging(show=args.tf_logs)
        return args.func(args)
    except BAD_INPUT_ERRORS as error:
        print(f"keras-rnnlm {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as error:  # anything else is a bug or an environment problem, not input
        if args.traceback:
            traceback.print_exc()
        hint = "" if args.traceback else "; rerun with --traceback for details"
        print(
            f"keras-rnnlm {args.command}: unexpected error: "
            f"{type(error).__name__}: {_first_line(error)}{hint}",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
