"""The TensorFlow side of deployment: the ``step`` and ``score`` functions every format converts.

Both are traced from the reference path of an ``RNNLanguageModel`` (``model.step``, one cell
step per token, never the XLA-compiled serving signatures) and frozen (weights become
constants), so a converter sees plain graph ops: embedding gather, matmuls, sigmoid, tanh,
select. ``score`` runs the same ``model.step`` in a ``tf.while_loop`` over a fixed number of
positions, accumulating into a fixed-shape tensor (no ``TensorArray``/``TensorList``, which
LiteRT cannot run without Flex ops); a Python loop unrolled at trace time would copy every
weight once per position in the frozen graph (tf2onnx ran out of memory on it).

* ``step``: ``token`` int32 ``(batch,)`` and the states ``h_0`` (``c_0`` for LSTMs), ``h_1``,
  ... ``(batch, units)`` -> ``logits`` ``(batch, vocabulary_size)`` and the new states. A
  padding token (id 0) leaves the states unchanged.
* ``score``: ``token_ids`` int32 ``(batch, sequence_length)`` right-padded with 0 ->
  ``token_log_probs`` ``(batch, sequence_length)``: ``log P(token_ids[:, t + 1] | ..<= t)``,
  0 where the next token is padding and at the last position (as the SavedModel's ``score``).
"""

import json
from pathlib import Path

import keras
import tensorflow as tf

from keras_rnnlm.data.vocabulary import Vocabulary
from keras_rnnlm.export.server import state_names  # one naming of the flat states
from keras_rnnlm.models import RNNLanguageModel

#: ``export_model`` formats.
FORMATS = ("litert", "onnx")
#: Positions of the fixed-shape ``score`` model unless told otherwise.
SCORE_SEQUENCE_LENGTH = 64
CARD_FILE = "model_card.json"
VOCABULARY_FILE = "vocabulary.json"


def state_sizes(model: RNNLanguageModel) -> list[int]:
    """The sizes of the states named by ``state_names``, in the same order."""
    return [int(size) for sizes in model.state_sizes for size in sizes]


def _nest(model, flat_states):
    nested, i = [], 0
    for sizes in model.state_sizes:
        nested.append(list(flat_states[i : i + len(sizes)]))
        i += len(sizes)
    return nested


def _traced(function, specs, freeze):
    function = tf.function(function, input_signature=specs)
    if not freeze:
        return function
    # The TF 2.21 LiteRT converter keeps Keras 3 variables as resource variables (a model with
    # VAR_HANDLE/READ_VARIABLE ops and no weights), so the weights are folded in first.
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    concrete = function.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    keys = sorted(concrete.structured_outputs)  # the order of the frozen function's outputs

    def named(*args):  # freezing drops the output names; put them back
        return dict(zip(keys, tf.nest.flatten(frozen(*args)), strict=True))

    return tf.function(named, input_signature=specs).get_concrete_function()


def step_function(
    model: RNNLanguageModel,
    batch_size: int | None = 1,
    output_suffix: str = "",
    freeze: bool = True,
):
    """The frozen one-token ``step`` of ``model`` (see the module docstring).

    Args:
        model: a built, stateless ``RNNLanguageModel`` on the from-scratch layers.
        batch_size: the fixed batch size, or None for a dynamic one.
        output_suffix: appended to the state outputs' names (ONNX needs outputs named unlike
            the inputs: ``"_out"`` gives ``h_0_out``...).
        freeze: return a concrete function with the weights as constants; False returns
            the ``tf.function`` with its ``input_signature`` (what tf2onnx takes).

    Returns:
        A function with inputs ``token`` and the states, outputs ``logits`` and the states.

    Example:

    >>> fn = step_function(model)
    >>> fn(token=tf.constant([2]), h_0=..., c_0=..., h_1=..., c_1=...)["logits"]
    """
    names = state_names(model)
    specs = [tf.TensorSpec((batch_size,), tf.int32, name="token")] + [
        tf.TensorSpec((batch_size, size), tf.float32, name=name)
        for name, size in zip(names, state_sizes(model))
    ]

    def step(token, *states):
        logits, new_states = model.step(token, _nest(model, states))
        flat = [s for layer in new_states for s in layer]
        return {"logits": logits, **{n + output_suffix: s for n, s in zip(names, flat)}}

    return _traced(step, specs, freeze)


def score_function(
    model: RNNLanguageModel,
    batch_size: int | None = 1,
    sequence_length: int = SCORE_SEQUENCE_LENGTH,
    freeze: bool = True,
):
    """The frozen fixed-length ``score`` of ``model`` (see the module docstring).

    Args:
        model: a built, stateless ``RNNLanguageModel`` on the from-scratch layers.
        batch_size: the fixed batch size, or None for a dynamic one.
        sequence_length: the number of positions.
        freeze: as in ``step_function``.

    Returns:
        A function ``token_ids -> {"token_log_probs"}``.

    Example:

    >>> fn = score_function(model, sequence_length=16)
    >>> fn(token_ids=tf.constant([[3, 17, 9] + [0] * 13]))["token_log_probs"]
    """
    spec = tf.TensorSpec((batch_size, sequence_length), tf.int32, name="token_ids")

    def score(token_ids):
        batch = tf.shape(token_ids)[0]
        next_ids = tf.concat([token_ids[:, 1:], tf.zeros_like(token_ids[:, :1])], axis=1)

        def body(t, states, total):
            logits, states = model.step(token_ids[:, t], _nest(model, states))
            log_probs = tf.nn.log_softmax(logits, axis=-1)  # (batch, vocabulary)
            picked = tf.gather(log_probs, next_ids[:, t], batch_dims=1)  # (batch,)
            total += picked[:, None] * tf.one_hot(t, sequence_length)[None, :]
            return t + 1, [s for layer in states for s in layer], total

        states = [tf.zeros((batch, size)) for size in state_sizes(model)]
        _, _, total = tf.while_loop(
            lambda t, *_: t < sequence_length,
            body,
            (tf.constant(0), states, tf.zeros((batch, sequence_length))),
            maximum_iterations=sequence_length,
        )  # a loop, not an unrolled trace: each weight appears once in the graph
        return {"token_log_probs": tf.where(next_ids > 0, total, tf.zeros_like(total))}

    return _traced(score, [spec], freeze)


def load_for_deploy(
    model_or_path, vocabulary: Vocabulary | None = None
) -> tuple[RNNLanguageModel, Vocabulary, dict]:
    """The stateless reference-path model, its vocabulary and known facts for the card.

    Args:
        model_or_path: an ``RNNLanguageModel``, a ``keras-rnnlm train`` run directory
            (``model.keras`` + ``vocabulary.json``), or a SavedModel export / shipped model
            (``model_card.json`` + ``vocabulary.json`` + ``variables/``).
        vocabulary: the ``Vocabulary``; required with a model object, ignored with a path.

    Returns:
        ``(model, vocabulary, facts)``; ``facts`` holds the source's corpus, mode and measured
        perplexities when it records them.

    Example:

    >>> model, vocab, facts = load_for_deploy("saved_models/ptb_word_lstm_small")
    """
    from keras_rnnlm.export import serving_copy
    from keras_rnnlm.runs import METRICS_FILE, MODEL_FILE, load_run

    if isinstance(model_or_path, RNNLanguageModel):
        if vocabulary is None:
            raise ValueError("Pass the model's vocabulary along with a model object.")
        return serving_copy(model_or_path), vocabulary, {}
    path = Path(model_or_path)
    if (path / CARD_FILE).is_file():
        from keras_rnnlm.inspection import load_language_model

        model, vocabulary = load_language_model(path)
        card = json.loads((path / CARD_FILE).read_text())
    elif (path / MODEL_FILE).is_file():
        model, vocabulary = load_run(path)
        model = serving_copy(model)
        metrics_path = path / METRICS_FILE
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        card = {
            "corpus": metrics.get("corpus"),
            "mode": metrics.get("mode"),
            "perplexity": {s: metrics[s] for s in ("train", "valid", "test") if s in metrics},
        }
    else:
        raise FileNotFoundError(
            f"{path} is neither a keras-rnnlm run (model.keras) nor an export (model_card.json)."
        )
    facts = {key: card[key] for key in ("corpus", "mode", "perplexity") if card.get(key)}
    return model, vocabulary, facts


def tokenization_rules(vocabulary: Vocabulary) -> dict:
    """What an app must re-implement to turn text into ids (written into every card)."""
    config = vocabulary.get_config()
    return {
        "level": config["level"],
        "lowercase": config["lowercase"],
        "pretokenized": config["pretokenized"],
        "sentence_start": config["sentence_start"],
        "start_id": vocabulary.start_id,
        "word_pattern": r"\w+|[^\w\s]",
        "special_ids": {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3},
        "rules": (
            "char level: one id per character. word level: lower-case first if lowercase; "
            "split on whitespace if pretokenized, else take the matches of word_pattern "
            "(Unicode \\w); unknown tokens are <unk> = 1. A context starts with start_id. "
            "id i is tokens[i] of vocabulary.json after the 4 special tokens."
        ),
    }


def write_card(
    out_dir: Path, model: RNNLanguageModel, vocabulary: Vocabulary, facts: dict, extra: dict
) -> dict:
    """Write ``vocabulary.json`` and ``model_card.json`` (sizes of every file in ``out_dir``)."""
    from keras_rnnlm import __version__

    vocabulary.save(out_dir / VOCABULARY_FILE)
    config = {k: v for k, v in model.get_config().items() if k not in ("trainable", "dtype")}
    card = {
        "config": config,
        "vocabulary_size": model.vocabulary_size,
        "state_names": state_names(model),
        "state_sizes": state_sizes(model),
        "tokenization": tokenization_rules(vocabulary),
        "suppressed_ids_when_generating": [0, 1, 2],
        "stop_at_eos": not vocabulary.separates_with_eos,
        **facts,
        **extra,
        "keras_rnnlm_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }
    card["file_bytes"] = {
        p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.name != CARD_FILE
    }
    (out_dir / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
    return card


def export_model(
    model_or_path,
    out_dir,
    format: str,
    vocabulary: Vocabulary | None = None,
    overwrite: bool = False,
    **kwargs,
) -> Path:
    """Convert a model to an on-device format: the entry point of ``keras-rnnlm export --format``.

    Args:
        model_or_path: an ``RNNLanguageModel`` (with ``vocabulary``), a run directory or a
            SavedModel export (e.g. ``saved_models/ptb_word_lstm_small``).
        out_dir: new directory for the converted files, ``vocabulary.json`` and the card.
        format: ``"litert"`` or ``"onnx"``.
        vocabulary: the ``Vocabulary`` when ``model_or_path`` is a model object.
        overwrite: replace an existing ``out_dir``.
        **kwargs: passed to ``export_litert`` / ``export_onnx`` (``sequence_length``,
            ``quantize``...).

    Returns:
        ``out_dir``.

    Example:

    >>> export_model("saved_models/ptb_word_lstm_small", "/tmp/ptb_litert", "litert")
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    model, vocabulary, facts = load_for_deploy(model_or_path, vocabulary)
    if format == "litert":
        from keras_rnnlm.deploy.litert import export_litert as convert
    else:
        from keras_rnnlm.deploy.onnx import export_onnx as convert
    return convert(model, vocabulary, out_dir, facts=facts, overwrite=overwrite, **kwargs)


def prepare_out_dir(out_dir, overwrite: bool) -> Path:
    """Create ``out_dir``; refuse an existing one unless ``overwrite``."""
    import shutil

    out_dir = Path(out_dir)
    if out_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it.")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    return out_dir
