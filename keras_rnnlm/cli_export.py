"""``keras-rnnlm export``: a run, an export or a shipped model as a SavedModel, LiteRT or ONNX.

Kept apart from ``cli.py`` (one subcommand, its parser and its body); like the rest of the
command line it imports TensorFlow only inside the command, after logging is configured.
"""

import argparse

from keras_rnnlm import cli_help

#: ``--format`` choices: the SavedModel of ``keras_rnnlm.export`` and the step/score models of
#: ``keras_rnnlm.deploy`` (``keras_rnnlm.deploy.FORMATS``)
EXPORT_FORMATS = ("savedmodel", "litert", "onnx")


def add_export_parser(subparsers, common) -> None:
    """Register the ``export`` subcommand on ``subparsers`` (``common``: shared options)."""
    p = subparsers.add_parser(
        "export",
        help="export a run (SavedModel), or a run, an export or a shipped model (LiteRT, ONNX)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=cli_help.EXAMPLES["export"],
        parents=[common],
    )
    p.add_argument(
        "run_dir",
        metavar="MODEL",
        help="a run directory; with --format litert|onnx also a SavedModel export or shipped model",
    )
    p.add_argument("savedmodel_dir", metavar="OUT")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="savedmodel")
    p.add_argument("--quantize", action="store_true", help="litert: dynamic-range quantisation")
    p.add_argument(
        "--sequence-length",
        type=int,
        default=64,
        help="litert/onnx: positions of the fixed-shape score model",
    )
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=export_command)


def export_command(args) -> int:
    """Run ``keras-rnnlm export``; bad input raises ``ValueError`` (exit code 2)."""
    if args.format == "savedmodel":
        from keras_rnnlm.export import export_run

        path = export_run(args.run_dir, args.savedmodel_dir, overwrite=args.overwrite)
        print(f"SavedModel written to {path}/ (signatures: see {path}/model_card.json)")
        return 0
    if args.quantize and args.format != "litert":
        raise ValueError("--quantize applies to --format litert only.")
    from keras_rnnlm.deploy import export_model

    kwargs = {"sequence_length": args.sequence_length}
    if args.format == "litert":
        kwargs["quantize"] = args.quantize
    path = export_model(
        args.run_dir, args.savedmodel_dir, args.format, overwrite=args.overwrite, **kwargs
    )
    print(f"{args.format} model written to {path}/ (step, score, vocabulary.json, model_card.json)")
    return 0
