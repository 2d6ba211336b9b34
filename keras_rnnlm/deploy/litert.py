"""LiteRT (TFLite) export: a batch-1 ``step`` and a fixed-shape ``score``, builtin ops only.

``export_litert`` writes into a new directory:

* ``step.tflite``: signature ``step``, inputs ``token`` int32 ``(1,)`` and the states
  ``h_0``, ``c_0``, ... float32 ``(1, units)``; outputs ``logits`` ``(1, vocabulary_size)``
  and the new states under the same names.
* ``score.tflite``: signature ``score``, input ``token_ids`` int32 ``(1, sequence_length)``
  right-padded with 0; output ``token_log_probs`` ``(1, sequence_length)``.
* ``vocabulary.json`` and ``model_card.json`` (sizes, tokenization rules, measured
  perplexities of the source model, versions).

Both are converted from frozen concrete functions of the reference path
(``keras_rnnlm.deploy.functions``), with ``TFLITE_BUILTINS`` only: a model needing a Flex
(select TensorFlow) op fails to convert instead of shipping a runtime dependency. The files run
in ``ai_edge_litert.interpreter.Interpreter`` without TensorFlow; ``keras_rnnlm.deploy.host``
drives ``step`` with the library's tokenizer and samplers, ``examples/litert_host.py`` with
numpy only.
"""

import tempfile
from pathlib import Path

import tensorflow as tf

from keras_rnnlm.data.vocabulary import Vocabulary
from keras_rnnlm.deploy.functions import (
    SCORE_SEQUENCE_LENGTH,
    prepare_out_dir,
    score_function,
    step_function,
    write_card,
)
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.tf_logging import save_saved_model

STEP_FILE = "step.tflite"
SCORE_FILE = "score.tflite"


def convert_to_litert(
    function: tf.types.experimental.ConcreteFunction, name: str, quantize: bool = False
) -> bytes:
    """A LiteRT flatbuffer of one frozen concrete function, builtin ops only.

    Args:
        function: a frozen concrete function (``step_function``/``score_function``).
        name: the signature's name in the ``.tflite`` file.
        quantize: dynamic-range quantisation (int8 weights, float activations).

    Returns:
        The ``.tflite`` bytes.

    Example:

    >>> Path("step.tflite").write_bytes(convert_to_litert(step_function(model), "step"))
    """
    # Through a weight-less SavedModel: it keeps the signature's name and its named outputs
    # (a bare concrete function converts to a model without SignatureDef, outputs "Identity").
    with tempfile.TemporaryDirectory() as saved:
        save_saved_model(tf.Module(), saved, signatures={name: function})
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=[name])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()


def litert_op_names(path) -> list[str]:
    """The op of every node in every subgraph (``WHILE`` bodies too) of a ``.tflite`` file.

    Builtin ops by name (``FULLY_CONNECTED``...), others by their custom code (``FlexFoo`` for
    select TensorFlow ops).

    Example:

    >>> assert not any(op.startswith("Flex") for op in litert_op_names("step.tflite"))
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    names = []
    for g in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(g)
        for i in range(subgraph.OperatorsLength()):
            code = model.OperatorCodes(subgraph.Operators(i).OpcodeIndex())
            if code.CustomCode():
                names.append(code.CustomCode().decode())
            else:
                names.append(builtin[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())])
    return names


def export_litert(
    model: RNNLanguageModel,
    vocabulary: Vocabulary,
    out_dir,
    sequence_length: int = SCORE_SEQUENCE_LENGTH,
    quantize: bool = False,
    facts: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``step.tflite``, ``score.tflite``, the vocabulary and a card (module docstring).

    Args:
        model: a built, stateless ``RNNLanguageModel`` on the from-scratch layers (see
            ``keras_rnnlm.deploy.load_for_deploy``, or ``export_model`` for paths).
        vocabulary: its ``Vocabulary``.
        out_dir: a new directory.
        sequence_length: the fixed length of ``score``'s ``token_ids``.
        quantize: dynamic-range quantisation of both models.
        facts: extra card entries (corpus, measured perplexities of the source).
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``out_dir``.

    Example:

    >>> model, vocab, facts = load_for_deploy("saved_models/ptb_word_lstm_small")
    >>> export_litert(model, vocab, "/tmp/ptb_litert", facts=facts)
    """
    if vocabulary.size != model.vocabulary_size:
        raise ValueError(
            f"Vocabulary has {vocabulary.size} tokens but the model expects {model.vocabulary_size}."
        )
    out_dir = prepare_out_dir(out_dir, overwrite)
    (out_dir / STEP_FILE).write_bytes(convert_to_litert(step_function(model, 1), "step", quantize))
    score = score_function(model, 1, sequence_length)
    (out_dir / SCORE_FILE).write_bytes(convert_to_litert(score, "score", quantize))
    import ai_edge_litert

    extra = {
        "format": "litert",
        "quantization": "dynamic_range" if quantize else "none (float32)",
        "files": {
            STEP_FILE: "signature step: token int32 (1,), states float32 (1, units) -> logits, "
            "states",
            SCORE_FILE: f"signature score: token_ids int32 (1, {sequence_length}) -> "
            "token_log_probs",
        },
        "score_sequence_length": sequence_length,
        "ai_edge_litert_version": getattr(ai_edge_litert, "__version__", "unknown"),
    }
    write_card(out_dir, model, vocabulary, facts or {}, extra)
    return out_dir
