"""ONNX export through tf2onnx: ``step`` and ``score`` with a dynamic batch dimension.

``export_onnx`` writes into a new directory:

* ``step.onnx``: inputs ``token`` int32 ``(batch,)`` and the states ``h_0``, ``c_0``, ...
  float32 ``(batch, units)``; outputs ``logits`` ``(batch, vocabulary_size)`` and the new
  states named ``h_0_out``, ``c_0_out``, ... (ONNX forbids an output named like an input).
* ``score.onnx``: input ``token_ids`` int32 ``(batch, sequence_length)`` right-padded with 0;
  output ``token_log_probs`` ``(batch, sequence_length)``.
* ``vocabulary.json`` and ``model_card.json``.

Both come from the same frozen concrete functions as the LiteRT files
(``keras_rnnlm.deploy.functions``). Needs the ``onnx`` extra: ``pip install keras-rnnlm[onnx]``
(``tf2onnx``, ``onnxruntime``).
"""

from pathlib import Path

from keras_rnnlm.data.vocabulary import Vocabulary
from keras_rnnlm.deploy.functions import (
    SCORE_SEQUENCE_LENGTH,
    prepare_out_dir,
    score_function,
    step_function,
    write_card,
)
from keras_rnnlm.models import RNNLanguageModel

STEP_FILE = "step.onnx"
SCORE_FILE = "score.onnx"
STATE_OUTPUT_SUFFIX = "_out"
OPSET = 17


def _convert(function, path: Path, opset: int) -> None:
    import tf2onnx

    tf2onnx.convert.from_function(
        function,
        input_signature=function.input_signature,
        opset=opset,
        output_path=str(path),
    )


def export_onnx(
    model: RNNLanguageModel,
    vocabulary: Vocabulary,
    out_dir,
    sequence_length: int = SCORE_SEQUENCE_LENGTH,
    opset: int = OPSET,
    facts: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``step.onnx``, ``score.onnx``, the vocabulary and a card (module docstring).

    Args:
        model: a built, stateless ``RNNLanguageModel`` on the from-scratch layers.
        vocabulary: its ``Vocabulary``.
        out_dir: a new directory.
        sequence_length: the fixed length of ``score``'s ``token_ids`` (the batch is dynamic).
        opset: the ONNX opset.
        facts: extra card entries (corpus, measured perplexities of the source).
        overwrite: replace an existing ``out_dir``.

    Returns:
        ``out_dir``.

    Example:

    >>> export_onnx(model, vocab, "/tmp/lm_onnx")
    >>> onnxruntime.InferenceSession("/tmp/lm_onnx/step.onnx").run(None, feed)
    """
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx
    except ImportError as error:
        raise ImportError(
            "ONNX export needs the onnx extra: pip install 'keras-rnnlm[onnx]'."
        ) from error
    if vocabulary.size != model.vocabulary_size:
        raise ValueError(
            f"Vocabulary has {vocabulary.size} tokens but the model expects {model.vocabulary_size}."
        )
    out_dir = prepare_out_dir(out_dir, overwrite)
    step = step_function(model, None, STATE_OUTPUT_SUFFIX, freeze=False)
    _convert(step, out_dir / STEP_FILE, opset)
    score = score_function(model, None, sequence_length, freeze=False)
    _convert(score, out_dir / SCORE_FILE, opset)
    extra = {
        "format": "onnx",
        "files": {
            STEP_FILE: "token int32 (batch,), states float32 (batch, units) -> logits, "
            f"states named <state>{STATE_OUTPUT_SUFFIX}",
            SCORE_FILE: f"token_ids int32 (batch, {sequence_length}) -> token_log_probs",
        },
        "score_sequence_length": sequence_length,
        "opset": opset,
        "tf2onnx_version": tf2onnx.__version__,
    }
    write_card(out_dir, model, vocabulary, facts or {}, extra)
    return out_dir
