"""The words of ``keras-rnnlm``: ``--help`` examples, ``--quiet``, what ``train`` is about to do
and the commands to try next. Imports neither TensorFlow nor Keras (``--help`` stays instant)."""

import argparse
from pathlib import Path

BACKUP_DIR = "backup"  # keras_rnnlm.run_config.BACKUP_DIR (checked equal in tests/cli_test.py)


class DefaultsAndExamples(
    argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter
):
    """Shows each option's default and keeps the example epilog's line breaks."""


#: the ``--help`` epilog of every command: examples to copy
EXAMPLES = {
    "train": """Example:
  keras-rnnlm train                          # 2x200 LSTM on the offline python_docs corpus
  keras-rnnlm train --preset small --output ptb_small --tensorboard tb   # PTB, Zaremba small
  keras-rnnlm train --train-file my.txt --valid-file my_valid.txt --epochs 3 --output my_run
  keras-rnnlm train --mode stream --document-boundary blank --train-file docs.txt
  keras-rnnlm train --strategy mirrored --cpu-devices 2 --batch-size 32   # 2 replicas
An interrupted run resumes when the same command is run again.""",
    "evaluate": """Example:
  keras-rnnlm evaluate rnnlm_run --test-file test.txt          # JSON on stdout, with a 95% CI
  keras-rnnlm evaluate saved_models/ptb_word_lstm_small --test-file ptb.test.txt  # as a stream
  keras-rnnlm evaluate rnnlm_run --test-file test.txt --quiet | jq .perplexity
  keras-rnnlm evaluate saved_models/ptb_word_lstm_small --test-file ptb.test.txt \\
      --dynamic --dynamic-train-file ptb.train.txt           # + dynamic evaluation
  keras-rnnlm evaluate saved_models/shakespeare_char_lstm --test-file plays.txt \\
      --document-boundary blank      # state reset at every blank line (also with --dynamic)
--document-boundary defaults to the run's own (train --document-boundary); 'none' carries the
state through the whole text.""",
    "compare": """Example:
  keras-rnnlm compare run_a run_b --test-file test.txt   # log ppl(B) - log ppl(A), paired CI""",
    "export": """Example:
  keras-rnnlm export rnnlm_run rnnlm_export
  saved_model_cli show --dir rnnlm_export --all      # the signatures (plain TensorFlow)
  keras-rnnlm export saved_models/ptb_word_lstm_small /tmp/ptb_litert --format litert --quantize
  keras-rnnlm export rnnlm_run /tmp/rnnlm_onnx --format onnx
In Python: keras_rnnlm.presets.load_preset("rnnlm_export") rebuilds the Keras model.""",
    "generate": """Example:
  keras-rnnlm generate rnnlm_run --prompt "the model" --strategy greedy --max-length 20
  keras-rnnlm generate rnnlm_run --strategy top_k --top-k 10 --num-samples 3 --seed 0
  keras-rnnlm generate rnnlm_run --prompt "the model" --max-new-tokens 10 --seed 0
--max-length counts the prompt (keras-hub's convention): the prompt's tokens, its start token
included, plus the generated ones; --max-new-tokens counts the generated ones only.""",
    "score": """Example:
  keras-rnnlm score rnnlm_run --text "the cat sat on the mat"   # per-token log-probabilities
  keras-rnnlm score rnnlm_run --file test.txt > ppl.json        # perplexity as JSON
  keras-rnnlm score rnnlm_run --file test.txt --jsonl           # one JSON line per sentence""",
}


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress on stderr (shown only when stderr is a terminal)",
    )


def train_intro(config) -> str:
    """What ``train`` is about to do: corpus, model and training sizes, output directory."""

    if config.train_file:
        corpus = f"your text {config.train_file} ({config.level or 'word'} level)"
    else:
        offline = " (offline, shipped with the package)" if config.corpus == "python_docs" else ""
        corpus = f"the {config.corpus} corpus{offline}"
    resuming = (Path(config.output) / BACKUP_DIR).is_dir() and not config.overwrite
    lines = [
        f"{'Resuming' if resuming else 'Training'} a {config.num_layers}-layer "
        f"{config.cell.upper()} language model on {corpus}, {config.mode} batches:",
        f"  {config.units} units, {config.embedding_dim}-d embeddings, vocabulary <= "
        f"{config.max_vocabulary_size}; {config.epochs} epochs of batch {config.batch_size}, "
        f"{config.optimizer} lr {config.learning_rate}, clip norm {config.clip_norm}",
        f"  output: {config.output}/ (model.keras, vocabulary.json, metrics.json); "
        "if interrupted, the same command resumes",
    ]
    if config.tensorboard:
        lines.append(f"  TensorBoard: tensorboard --logdir {config.tensorboard}")
    return "\n".join(lines)


def next_commands(config) -> str:
    """The commands to try on the run ``train`` just wrote."""
    run = config.output
    return "\n".join(
        [
            "\nNext:",
            f'  keras-rnnlm generate {run} --prompt "the" --strategy top_p --num-samples 3',
            f'  keras-rnnlm score {run} --text "a sentence to score"',
            f"  keras-rnnlm evaluate {run} --test-file some_text.txt",
            f"  keras-rnnlm export {run} {run}_export",
        ]
    )
