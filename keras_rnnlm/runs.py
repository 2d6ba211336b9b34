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
import numpy as np

from keras_rnnlm.data.corpora import text_files_corpus
from keras_rnnlm.data.pipelines import encode_stream
from keras_rnnlm.data.vocabulary import Vocabulary
from keras_rnnlm.document_boundary import resolve_document_boundary
from keras_rnnlm.evaluation import evaluate_stream_perplexity, perplexity_summary
from keras_rnnlm.intervals import (
    DEFAULT_B,
    DEFAULT_SEED,
    block_units,
    bootstrap_perplexity,
    paired_bootstrap_difference,
)
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.progress import chunks
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
from keras_rnnlm.run_training import (
    SaveModelEachEpoch,
    TrainingCrashedError,
    TrainingDivergedError,
    train,
)
from keras_rnnlm.scoring import score_ids

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
    "TrainingCrashedError",
    "TrainingDivergedError",
    "build_model",
    "build_vocabulary",
    "compare_text_file",
    "evaluate_text_file",
    "load_any_model",
    "load_config_corpus",
    "load_run",
    "make_dataset",
    "score_text_units",
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


def _training_mode(card: dict, vocabulary: Vocabulary) -> str:
    mode = card.get("mode") or (card.get("train_config") or {}).get("mode")
    if mode in MODES:
        return mode
    return "stream" if vocabulary.separates_with_eos else "sentence"  # <eos> starts: a stream


def load_any_model(path) -> tuple[RNNLanguageModel, Vocabulary, dict]:
    """A stateless model, its vocabulary and how it was trained, from a run or an export.

    Args:
        path: a run directory (``model.keras``, ``config.json``) or a SavedModel export
            (``model_card.json``, e.g. ``saved_models/ptb_word_lstm_small``), rebuilt by
            ``keras_rnnlm.inspection.load_language_model`` (nothing is written into it).

    Returns:
        ``(model, vocabulary, info)``; ``info`` is ``{"kind": "run" | "export", "mode":
        "sentence" | "stream", "path": str}``. The mode is the run's ``config.json`` or the
        export's ``model_card.json`` setting; without one, models whose sentences start with
        ``<eos>`` (``Vocabulary.separates_with_eos``) were trained on a stream.

    Example:

    >>> model, vocabulary, info = load_any_model("saved_models/ptb_word_lstm_small")
    >>> info["mode"]
    'stream'
    """
    path = Path(path)
    if (path / MODEL_FILE).is_file():
        model, vocabulary = load_run(path)
        config_path = path / CONFIG_FILE
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        return (
            model,
            vocabulary,
            {
                "kind": "run",
                "mode": _training_mode(config, vocabulary),
                "path": str(path),
                "document_boundary": config.get("document_boundary"),
            },
        )
    if (path / "model_card.json").is_file():
        from keras_rnnlm.inspection import load_language_model

        model, vocabulary = load_language_model(path)
        card = json.loads((path / "model_card.json").read_text())
        return (
            model,
            vocabulary,
            {"kind": "export", "mode": _training_mode(card, vocabulary), "path": str(path)},
        )
    raise FileNotFoundError(
        f"{path} is not a keras-rnnlm run: {MODEL_FILE} is missing (nor an export: no "
        "model_card.json)."
    )


def score_text_units(
    model,
    vocabulary: Vocabulary,
    text_file,
    mode: str,
    batch_size: int = 32,
    window: int = 256,
    document_boundary: str | None = None,
    progress=None,
) -> dict:
    """Per-unit NLL sums and token counts of a text file, read the way the model was trained.

    Args:
        model: a stateless ``RNNLanguageModel``.
        vocabulary: its ``Vocabulary``.
        text_file: text, one sentence per line (blank lines are skipped).
        mode: ``"sentence"``: every sentence scored from a zero state (units: sentences);
            ``"stream"``: the sentences joined by ``<eos>`` into one stream read with the state
            carried, batch 1 (``evaluate_stream_perplexity``; units: windows).
        batch_size: sentences per forward pass (sentence mode).
        window: tokens per step (stream mode).
        document_boundary: stream mode: ``"blank"`` or a token separating documents in the
            file; the state is reset at every document start (as the run was trained).
        progress: optional ``keras_rnnlm.progress.Progress`` (its total is set here).

    Returns:
        ``perplexity_summary`` keys plus ``"units": {"nll", "tokens"}`` and ``"mode"``.

    Example:

    >>> score_text_units(model, vocabulary, "test.txt", "stream")["units"]["nll"].shape
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    lines = text_files_corpus(text_file).train
    sentences = [ids for ids in vocabulary.encode_batch(lines) if ids]  # one tokenizer call
    if not sentences:
        raise ValueError(f"{text_file} holds no text.")
    if mode == "stream":
        stream, reset = encode_stream(vocabulary, lines, document_boundary)
        if progress is not None:
            progress.total = -(-(len(stream) - 1) // window)
        result = evaluate_stream_perplexity(
            model, stream, window=window, return_units=True, reset=reset, progress=progress
        )
    else:
        if progress is not None:
            progress.total = len(sentences)
        scores = []
        for part in chunks(sentences, 8 * batch_size):
            scores += score_ids(model, part, batch_size, vocabulary.start_id)
            if progress is not None:
                progress.update(len(part))
        nll = np.asarray([-s.log_prob for s in scores], np.float64)
        tokens = np.asarray([s.num_tokens for s in scores], np.float64)
        result = perplexity_summary(float(nll.sum()), float(tokens.sum()))
        result["units"] = {"nll": nll, "tokens": tokens}
    result["mode"] = mode
    return result


def _bootstrap_units(result: dict, block: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The resampled units: sentences, or contiguous blocks of ``block`` stream windows."""
    units = result["units"]
    if result["mode"] == "stream":
        nll, tokens = block_units(units["nll"], units["tokens"], block)
        return nll, tokens, {"unit": "block", "windows_per_block": block}
    return units["nll"], units["tokens"], {"unit": "sentence"}


def evaluate_text_file(
    directory,
    text_file,
    batch_size: int = 32,
    mode: str | None = None,
    window: int = 256,
    B: int = DEFAULT_B,
    seed: int = DEFAULT_SEED,
    block: int = 2,
    progress=None,
    document_boundary: str | None = None,
) -> dict:
    """Perplexity, with a 95% bootstrap interval, of a run's or an export's model on a file.

    Stream-trained models are evaluated as a stream (state carried, batch 1), sentence-trained
    ones per sentence (``score_text_units``). The interval resamples sentences, or contiguous
    blocks of ``block`` windows of ``window`` tokens for a stream (``keras_rnnlm.intervals``).
    The result is also written to a run directory (``evaluate_<stem>.json``), never into an
    export.

    Args:
        directory: a run directory or an export (``load_any_model``).
        text_file: text, one sentence per line.
        batch_size: sentences per forward pass (sentence mode).
        mode: ``"sentence"`` or ``"stream"``; default: how the model was trained.
        window: tokens per stream step.
        B: bootstrap replicates.
        seed: seed of the resampling.
        block: windows per resampled block (stream mode).
        progress: optional ``keras_rnnlm.progress.Progress`` (windows or sentences).
        document_boundary: stream mode: the state is zeroed at every document start;
            None: the run's own ``--document-boundary`` (``resolve_document_boundary``),
            ``"none"``: carried through the whole text, ``"blank"`` or a token: that one.

    Returns:
        ``{"perplexity", "perplexity_ci95", "tokens", "bootstrap": {"B", "unit", "seed"...},
        "nll_per_token", "bits_per_token", "mode", "document_boundary" (stream mode), "file",
        "model"}``.

    Example:

    >>> evaluate_text_file("saved_models/ptb_word_lstm_small", "ptb.test.txt")["perplexity_ci95"]
    """
    model, vocabulary, info = load_any_model(directory)
    mode = mode or info["mode"]
    boundary = resolve_document_boundary(document_boundary, info, mode)
    result = score_text_units(
        model, vocabulary, text_file, mode, batch_size, window,
        document_boundary=boundary, progress=progress,
    )  # fmt: skip
    nll, tokens, unit = _bootstrap_units(result, block)
    del result["units"]
    result["perplexity_ci95"] = bootstrap_perplexity(nll, tokens, B=B, seed=seed)
    result["bootstrap"] = {"B": B, **unit, "seed": seed, "units": len(nll)}
    if result["mode"] == "stream":
        result["window"] = window
        result["document_boundary"] = boundary
    result.update(file=str(text_file), model=str(directory))
    if info["kind"] == "run":
        out = Path(directory) / f"evaluate_{Path(text_file).stem}.json"
        out.write_text(json.dumps(result, indent=2))
    return result


#: vocabulary settings two compared models must share (besides the tokens themselves)
COMPARED_SETTINGS = ("level", "lowercase", "pretokenized", "sentence_start")


def compare_text_file(
    directory_a,
    directory_b,
    text_file,
    batch_size: int = 32,
    window: int = 256,
    B: int = DEFAULT_B,
    seed: int = DEFAULT_SEED,
    block: int = 2,
) -> dict:
    """Paired-bootstrap difference ``log ppl(B) - log ppl(A)`` of two models on one file.

    Both models read the same units (sentences, or blocks of stream windows) of the same
    tokens, and every bootstrap replicate resamples the same units for both.

    Args:
        directory_a: run or export of model A.
        directory_b: run or export of model B.
        text_file: text, one sentence per line.
        batch_size: sentences per forward pass (sentence mode).
        window: tokens per stream step.
        B: bootstrap replicates.
        seed: seed of the resampling.
        block: windows per resampled block (stream mode).

    Returns:
        ``{"log_ppl_difference", "log_ppl_difference_ci95", "perplexity_a", "perplexity_b",
        "tokens", "mode", "bootstrap"}``; the difference is positive when B is worse.

    Raises:
        ValueError: the models differ in vocabulary, tokenization (level, lowercase,
            pretokenized, sentence start) or training mode, so their perplexities are not
            over the same tokens.

    Example:

    >>> compare_text_file("runs/good", "runs/bad", "test.txt")["log_ppl_difference_ci95"]
    """
    model_a, vocabulary_a, info_a = load_any_model(directory_a)
    model_b, vocabulary_b, info_b = load_any_model(directory_b)
    config_a, config_b = vocabulary_a.get_config(), vocabulary_b.get_config()
    for key in COMPARED_SETTINGS:
        if config_a.get(key) != config_b.get(key):
            raise ValueError(
                f"The models tokenize differently: {key} is {config_a.get(key)!r} for "
                f"{directory_a} and {config_b.get(key)!r} for {directory_b}."
            )
    if vocabulary_a.tokens != vocabulary_b.tokens:
        raise ValueError(
            f"{directory_a} and {directory_b} have different vocabularies "
            f"({vocabulary_a.size} and {vocabulary_b.size} tokens): their perplexities are not "
            "over the same tokens."
        )
    if info_a["mode"] != info_b["mode"]:
        raise ValueError(
            f"{directory_a} was trained in {info_a['mode']} mode and {directory_b} in "
            f"{info_b['mode']} mode: they are not evaluated on the same units."
        )
    results = [
        score_text_units(model, vocabulary_a, text_file, info_a["mode"], batch_size, window)
        for model in (model_a, model_b)
    ]
    (nll_a, tokens_a, unit), (nll_b, tokens_b, _) = (_bootstrap_units(r, block) for r in results)
    out = paired_bootstrap_difference(nll_a, tokens_a, nll_b, tokens_b, B=B, seed=seed)
    out.update(
        perplexity_a=results[0]["perplexity"],
        perplexity_b=results[1]["perplexity"],
        tokens=results[0]["tokens"],
        mode=info_a["mode"],
        bootstrap={"B": B, **unit, "seed": seed, "units": len(nll_a)},
        file=str(text_file),
        model_a=str(directory_a),
        model_b=str(directory_b),
    )
    return out
