"""Model presets, keras-hub style: ``load_preset(dir_or_name)`` and ``save_to_preset``.

Named after keras-hub's ``from_preset``/``save_to_preset`` (a preset is a *directory* holding a
ready model), not to be confused with the *training* presets ``small|medium|large``
(``TrainConfig.from_preset``, ``keras-rnnlm train --preset``).

``load_preset`` accepts:

* a shipped model's name, ``"ptb_word_lstm_small"`` or ``"shakespeare_char_lstm"``, looked up in
  the repository's ``saved_models/`` (found relative to the package), or a path to any
  ``keras-rnnlm export`` SavedModel (rebuilt by
  ``keras_rnnlm.inspection.load_language_model``);
* a directory written by ``save_to_preset``;
* a training run directory (``model.keras`` + ``vocabulary.json``).

Layout of a directory written by ``save_to_preset(model, directory, vocabulary)``::

    directory/
      metadata.json       {"format": "keras_rnnlm_preset", "format_version": 1,
                           "keras_rnnlm_version", "keras_version", "tensorflow_version",
                           "vocabulary_size", "level", plus the caller's ``metadata``}
      config.json         the model's ``get_config()`` (stateless, from-scratch or built-in)
      model.weights.h5    ``model.save_weights`` (Keras weights file)
      vocabulary.json     ``Vocabulary.save``

The loaded model is stateless and carries its vocabulary as ``model.vocabulary``.

Length convention (pinned here, as in keras-hub): ``max_length`` is the *total* length of a
generated sequence in tokens, the prompt (its start token included) counted;
``max_new_tokens(max_length, prompt_length)`` converts it to the number of tokens to generate.
"""

import json
from pathlib import Path

import keras
import tensorflow as tf

from keras_rnnlm.data.vocabulary import Vocabulary
from keras_rnnlm.models import RNNLanguageModel

PRESET_FORMAT, PRESET_FORMAT_VERSION = "keras_rnnlm_preset", 1
METADATA_FILE, CONFIG_FILE, WEIGHTS_FILE, VOCABULARY_FILE = (
    "metadata.json",
    "config.json",
    "model.weights.h5",
    "vocabulary.json",
)
#: names ``load_preset`` resolves in the repository's ``saved_models/``
SHIPPED_PRESETS = ("ptb_word_lstm_small", "shakespeare_char_lstm")
SAVED_MODELS_DIR = Path(__file__).resolve().parent.parent / "saved_models"


def resolve_preset(dir_or_name) -> Path:
    """The directory ``dir_or_name`` names: an existing path, else a shipped model.

    Args:
        dir_or_name: a directory, a shipped name (``SHIPPED_PRESETS``) or a path relative to
            the repository such as ``"saved_models/ptb_word_lstm_small"``.

    Returns:
        The directory's ``Path``.

    Example:

    >>> resolve_preset("ptb_word_lstm_small").name
    'ptb_word_lstm_small'
    """
    path = Path(dir_or_name)
    candidates = [path, SAVED_MODELS_DIR / path, SAVED_MODELS_DIR.parent / path]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"No preset {str(dir_or_name)!r}: not a directory, and not a shipped model "
        f"{SHIPPED_PRESETS} in {SAVED_MODELS_DIR}."
    )


def save_to_preset(
    model: RNNLanguageModel, directory, vocabulary: Vocabulary, metadata: dict | None = None
) -> Path:
    """Write ``model`` and ``vocabulary`` as a preset directory (layout: module docstring).

    Args:
        model: a built ``RNNLanguageModel`` (a stateful one is saved stateless).
        directory: where to write; created if needed; existing preset files are replaced.
        vocabulary: the model's ``Vocabulary`` (its size must equal the model's).
        metadata: optional JSON-serialisable facts (e.g. corpus, perplexity) for
            ``metadata.json``.

    Returns:
        The directory's ``Path``.

    Example:

    >>> model, vocab = load_run("rnnlm_run")
    >>> save_to_preset(model, "/tmp/my_preset", vocab)
    >>> load_preset("/tmp/my_preset").vocabulary == vocab
    True
    """
    if vocabulary.size != model.vocabulary_size:
        raise ValueError(
            f"The vocabulary has {vocabulary.size} tokens but the model predicts "
            f"{model.vocabulary_size}."
        )
    if model.stateful:
        model = model.clone_with(stateful=False)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(model.get_config(), indent=2))
    model.save_weights(directory / WEIGHTS_FILE, overwrite=True)
    vocabulary.save(directory / VOCABULARY_FILE)
    from keras_rnnlm import __version__

    facts = {
        "format": PRESET_FORMAT,
        "format_version": PRESET_FORMAT_VERSION,
        "keras_rnnlm_version": __version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "vocabulary_size": vocabulary.size,
        "level": vocabulary.level,
        **(metadata or {}),
    }
    (directory / METADATA_FILE).write_text(json.dumps(facts, indent=2))
    return directory


def _load_preset_directory(directory: Path) -> tuple[RNNLanguageModel, Vocabulary]:
    facts = json.loads((directory / METADATA_FILE).read_text())
    if facts.get("format") != PRESET_FORMAT:
        raise ValueError(f"{directory / METADATA_FILE} is not a keras_rnnlm preset.")
    if facts.get("format_version", 0) > PRESET_FORMAT_VERSION:
        raise ValueError(
            f"{directory} has preset format {facts['format_version']}; this keras_rnnlm reads "
            f"up to {PRESET_FORMAT_VERSION}: upgrade keras_rnnlm."
        )
    for name in (CONFIG_FILE, WEIGHTS_FILE, VOCABULARY_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a complete preset: {name} is missing.")
    model = RNNLanguageModel.from_config(json.loads((directory / CONFIG_FILE).read_text()))
    model.build((None, None))
    model.load_weights(directory / WEIGHTS_FILE)
    return model, Vocabulary.load(directory / VOCABULARY_FILE)


def load_preset(dir_or_name) -> RNNLanguageModel:
    """A stateless ``RNNLanguageModel`` from a preset, with ``model.vocabulary`` attached.

    Args:
        dir_or_name: a shipped model's name (``"ptb_word_lstm_small"``,
            ``"shakespeare_char_lstm"``), a ``keras-rnnlm export`` SavedModel directory, a
            directory written by ``save_to_preset``, or a training run directory.

    Returns:
        The built model; ``model.vocabulary`` is its ``Vocabulary``.

    Example:

    >>> model = load_preset("ptb_word_lstm_small")
    >>> generate_text(model, model.vocabulary, ["the company said"], "greedy")
    """
    directory = resolve_preset(dir_or_name)
    if (directory / METADATA_FILE).is_file():
        model, vocabulary = _load_preset_directory(directory)
    elif (directory / "saved_model.pb").is_file():
        from keras_rnnlm.inspection import load_language_model

        model, vocabulary = load_language_model(directory)
    elif (directory / "model.keras").is_file():
        from keras_rnnlm.runs import load_run

        model, vocabulary = load_run(directory)
    else:
        raise FileNotFoundError(
            f"{directory} is neither a preset ({METADATA_FILE}), a SavedModel export "
            "(saved_model.pb) nor a training run (model.keras)."
        )
    model.vocabulary = vocabulary
    return model


def max_new_tokens(max_length: int, prompt_length: int) -> int:
    """How many tokens to generate when ``max_length`` counts the prompt (keras-hub's meaning).

    Args:
        max_length: the total length of the generated sequence, prompt included.
        prompt_length: the prompt's token count, its start token (``<bos>``/``<eos>``) included.

    Returns:
        ``max_length - prompt_length`` (>= 1).

    Example:

    >>> max_new_tokens(10, 4)
    6
    """
    if max_length <= prompt_length:
        raise ValueError(
            f"max_length={max_length} counts the prompt (keras-hub's convention) and the "
            f"prompt already has {prompt_length} tokens (start token included): give a "
            f"max_length > {prompt_length}."
        )
    return max_length - prompt_length
