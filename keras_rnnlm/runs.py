"""End-to-end runs: corpus -> vocabulary -> tf.data -> ``model.fit`` -> files in a directory.

The CLI (``keras-rnnlm train``/``evaluate``) and the notebooks call these functions; a run
directory holds ``model.keras``, ``vocabulary.json``, ``metrics.json`` and ``config.json``.
The configuration and what it builds live in ``keras_rnnlm.run_config``, training in
``keras_rnnlm.run_training``; this module loads and evaluates finished runs and re-exports
every name of the other two.
"""

import json
from pathlib import Path

import keras

from keras_rnnlm.data.corpora import text_files_corpus
from keras_rnnlm.data.pipelines import sentence_dataset
from keras_rnnlm.data.vocabulary import Vocabulary
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.run_config import (
    BACKUP_DIR,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    ENCODING_ERRORS,
    JIT_COMPILE_OPTIONS,
    METRICS_FILE,
    MODEL_FILE,
    MODES,
    RESUMABLE_FIELDS_IGNORED,
    VOCAB_FILE,
    TrainConfig,
    build_model,
    build_vocabulary,
    load_config_corpus,
    make_dataset,
    stateless_copy,
)
from keras_rnnlm.run_training import SaveModelEachEpoch, TrainingDivergedError, train
from keras_rnnlm.training import evaluate_perplexity

__all__ = [
    "BACKUP_DIR",
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "ENCODING_ERRORS",
    "JIT_COMPILE_OPTIONS",
    "METRICS_FILE",
    "MODEL_FILE",
    "MODES",
    "RESUMABLE_FIELDS_IGNORED",
    "VOCAB_FILE",
    "SaveModelEachEpoch",
    "TrainConfig",
    "TrainingDivergedError",
    "build_model",
    "build_vocabulary",
    "evaluate_text_file",
    "load_config_corpus",
    "load_run",
    "make_dataset",
    "stateless_copy",
    "train",
]


def load_run(directory) -> tuple[RNNLanguageModel, Vocabulary]:
    """The model and vocabulary of a run directory; a stateful model comes back stateless."""
    directory = Path(directory)
    for name in (MODEL_FILE, VOCAB_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a keras-rnnlm run: {name} is missing.")
    model = keras.saving.load_model(directory / MODEL_FILE)
    vocabulary = Vocabulary.load(directory / VOCAB_FILE)
    if getattr(model, "vocabulary_size", vocabulary.size) != vocabulary.size:
        raise ValueError(
            f"{directory / VOCAB_FILE} has {vocabulary.size} tokens but the model in "
            f"{directory / MODEL_FILE} predicts {model.vocabulary_size}: they come from "
            "different runs."
        )
    return stateless_copy(model), vocabulary


def evaluate_text_file(directory, text_file, batch_size: int = 32) -> dict:
    """Perplexity of a run's model on a text file (sentence mode); also written to the run."""
    model, vocabulary = load_run(directory)
    lines = text_files_corpus(text_file).train
    sentences = [ids for ids in vocabulary.encode_batch(lines) if ids]  # one tokenizer call
    if not sentences:
        raise ValueError(f"{text_file} holds no text.")
    dataset = sentence_dataset(sentences, batch_size, shuffle=False, start_id=vocabulary.start_id)
    result = evaluate_perplexity(model, dataset)
    result["file"] = str(text_file)
    out = Path(directory) / f"evaluate_{Path(text_file).stem}.json"
    out.write_text(json.dumps(result, indent=2))
    return result
