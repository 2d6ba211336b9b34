"""Writing SavedModel exports: ``export_saved_model``, ``export_run``, and their inspection."""

import json
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from keras_rnnlm.data.vocabulary import Vocabulary
from keras_rnnlm.export.server import MAX_NEW_TOKENS, LanguageModelServer, serving_copy
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.tf_logging import save_saved_model


def export_saved_model(
    model: RNNLanguageModel,
    vocabulary: Vocabulary,
    export_dir,
    model_card: dict | None = None,
    allow_untrained: bool = False,
    overwrite: bool = False,
    tpu_batch_size: int = 8,
    tpu_sequence_length: int = 64,
) -> Path:
    """Export ``model`` as a SavedModel with the signatures listed in this module's docstring.

    Args:
        model: a built ``RNNLanguageModel`` (stateful or not, any layer implementation).
        vocabulary: its ``Vocabulary`` (saved beside the SavedModel and baked into
            ``tokenize``/``detokenize``).
        export_dir: new directory (must not exist unless ``overwrite``).
        model_card: extra facts for ``model_card.json`` (corpus, measured perplexities...).
        allow_untrained: export even if the model's optimizer never took a step.
        tpu_batch_size, tpu_sequence_length: the shapes of the fixed-shape TPU variants.

    Returns:
        The export directory.
    """
    if not isinstance(model, RNNLanguageModel):
        raise TypeError(f"Expected an RNNLanguageModel, got {type(model).__name__}.")
    if not model.built:
        raise ValueError("The model is not built: train it (or call it on data) before exporting.")
    optimizer = getattr(model, "optimizer", None)
    trained = optimizer is not None and int(optimizer.iterations.numpy()) > 0
    if not trained and not allow_untrained:
        raise ValueError(
            "The model has not been trained (its optimizer took no step); pass allow_untrained=True "
            "to export it anyway."
        )
    if vocabulary.size != model.vocabulary_size:
        raise ValueError(
            f"Vocabulary has {vocabulary.size} tokens but the model expects {model.vocabulary_size}."
        )
    export_dir = Path(export_dir)
    if export_dir.exists():
        if not overwrite:
            raise FileExistsError(
                f"{export_dir} already exists; pass overwrite=True to replace it."
            )
        shutil.rmtree(export_dir)

    server = LanguageModelServer(
        serving_copy(model), vocabulary, tpu_batch_size, tpu_sequence_length
    )
    signatures = {
        "serving_default": server.score,
        "score": server.score,
        "step": server.step,
        "step_with_reset": server.step_with_reset,
        "initial_state": server.initial_state,
        "generate": server.generate,
        "generate_top_p": server.generate_top_p,
        "tokenize": server.tokenize,
        "score_text": server.score_text,
        "detokenize": server.detokenize,
        "score_tpu": server.score_tpu,
        "step_tpu": server.step_tpu,
    }
    options = tf.saved_model.SaveOptions(function_aliases={"tpu_func": server.score_tpu})
    save_saved_model(server, export_dir, signatures=signatures, options=options)
    vocabulary.save(export_dir / "vocabulary.json")
    from keras_rnnlm import __version__

    card = {
        "config": {k: v for k, v in model.get_config().items() if k not in ("trainable", "dtype")},
        "vocabulary_size": model.vocabulary_size,
        "level": vocabulary.level,
        "state_names": server.state_names,
        "start_id": server.start_id,
        "signatures": sorted(signatures),
        "max_new_tokens": MAX_NEW_TOKENS,
        "suppressed_ids": list(server.suppressed_ids),
        "score_counts_eos": True,
        "keras_rnnlm_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        **(model_card or {}),
    }
    (export_dir / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
    return export_dir


def export_run(run_dir, export_dir, overwrite: bool = False) -> Path:
    """Export a ``keras-rnnlm train`` run directory (its measured perplexities go to the card)."""
    from keras_rnnlm.runs import CONFIG_FILE, METRICS_FILE, MODEL_FILE, VOCAB_FILE

    run_dir = Path(run_dir)
    for name in (MODEL_FILE, VOCAB_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not a keras-rnnlm run: {name} is missing.")
    model = keras.saving.load_model(run_dir / MODEL_FILE)
    card = {}
    if (run_dir / METRICS_FILE).is_file():
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
        card["corpus"] = metrics.get("corpus")
        card["mode"] = metrics.get("mode")
        card["perplexity"] = {s: metrics[s] for s in ("train", "valid", "test") if s in metrics}
    if (run_dir / CONFIG_FILE).is_file():
        card["train_config"] = json.loads((run_dir / CONFIG_FILE).read_text())
    return export_saved_model(
        model, Vocabulary.load(run_dir / VOCAB_FILE), export_dir, card, overwrite=overwrite
    )


def saved_model_op_types(export_dir) -> set[str]:
    """Every op type in the SavedModel's graphs (to check, e.g., that no cuDNN op is inside)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(export_dir) / "saved_model.pb").read_bytes())
    ops = set()
    for meta in proto.meta_graphs:
        ops.update(node.op for node in meta.graph_def.node)
        for function in meta.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


#: Facts of a model card that describe the trained model, kept by ``reexport_saved_model``
#: (``config`` as trained, e.g. ``stateful``, although the export itself is always stateless).
TRAINING_CARD_KEYS = ("config", "corpus", "mode", "perplexity", "train_config")


def reexport_saved_model(export_dir, new_dir, overwrite: bool = False) -> Path:
    """Export an existing export again with this version's signatures, the same weights.

    The model and vocabulary are rebuilt from ``export_dir`` (``inspection.load_language_model``:
    the card's config, ``vocabulary.json`` and the variables checkpoint), and the card's training
    facts (``TRAINING_CARD_KEYS``) are carried over.

    Args:
        export_dir: an export made by ``export_saved_model`` (any earlier version).
        new_dir: where to write the new export (may equal ``export_dir`` with ``overwrite``).
        overwrite: replace ``new_dir`` if it exists.

    Returns:
        The new export directory.

    Example:

    >>> reexport_saved_model("saved_models/ptb_word_lstm_small", "/tmp/ptb_small")
    """
    from keras_rnnlm.inspection import load_language_model

    export_dir = Path(export_dir)
    model, vocabulary = load_language_model(export_dir)
    old_card = json.loads((export_dir / "model_card.json").read_text())
    card = {k: old_card[k] for k in TRAINING_CARD_KEYS if k in old_card}
    card["exported_first_by_keras_rnnlm"] = old_card.get(
        "exported_first_by_keras_rnnlm", old_card.get("keras_rnnlm_version")
    )
    return export_saved_model(
        model, vocabulary, new_dir, card, allow_untrained=True, overwrite=overwrite
    )
