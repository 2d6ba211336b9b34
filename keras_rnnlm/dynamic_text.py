"""Dynamic evaluation of text files: ``keras-rnnlm evaluate MODEL --test-file F --dynamic``.

The file layer over ``keras_rnnlm.dynamic_evaluation`` (which works on token streams): a text
file read as one stream split into documents, and the command's static-vs-dynamic report.
"""

import time

import numpy as np

from keras_rnnlm.document_boundary import resolve_document_boundary
from keras_rnnlm.dynamic_evaluation import (
    DEFAULT_EPSILON,
    gradient_rms,
    static_and_dynamic,
)


def text_file_documents(
    vocabulary, text_file, document_boundary: str | None, max_tokens: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """A text file (one sentence per line) as one token stream split into documents, as
    ``keras_rnnlm.runs.score_text_units`` reads it in stream mode.

    Args:
        vocabulary: the model's ``Vocabulary``.
        text_file: the text, one sentence per line.
        document_boundary: ``"blank"`` (blank lines separate documents), a token (lines holding
            only it separate documents and are dropped), or None (no documents), the semantics
            of training's ``--document-boundary`` (``keras_rnnlm.data.pipelines.encode_stream``).
        max_tokens: keep only the first ``max_tokens`` tokens (None: all).

    Returns:
        ``(stream, reset)``: int32 ids (sentences ended by ``<eos>``) and the per-token resets
        (1 at the ``<eos>`` before each document's first token), None without a boundary.

    Example:

    >>> stream, reset = text_file_documents(vocabulary, "plays.txt", "blank")
    >>> int(reset.sum())  # the number of documents
    """
    from keras_rnnlm.data.corpora import text_files_corpus
    from keras_rnnlm.data.pipelines import encode_stream

    stream, reset = encode_stream(vocabulary, text_files_corpus(text_file).train, document_boundary)
    if len(stream) == 0:
        raise ValueError(f"{text_file} holds no text.")
    return stream[:max_tokens], None if reset is None else reset[:max_tokens]


def dynamic_evaluate_text_file(
    path,
    text_file,
    train_file,
    lr: float = 1.5e-4,
    decay: float = 0.02,
    segment_length: int = 20,
    stat_tokens: int | None = 200_000,
    rows: int = 64,
    B: int = 1000,
    seed: int = 0,
    block_tokens: int = 512,
    mode: str | None = None,
    quiet: bool = False,
    document_boundary: str | None = None,
) -> dict:
    """``keras-rnnlm evaluate MODEL --test-file F --dynamic``: static vs dynamic evaluation.

    Args:
        path: a run directory or an export (``keras_rnnlm.runs.load_any_model``); nothing in it
            is modified or written.
        text_file: the evaluated text, one sentence per line, read as one stream.
        train_file: training text for the gradient statistics (``gradient_rms``).
        lr: learning rate of the RMS-normalised step.
        decay: ``lambda`` of the decay toward the trained weights.
        segment_length: tokens scored before each update.
        stat_tokens: training tokens used for the statistics (None: all).
        rows: parallel streams of the statistics' gradients.
        B: bootstrap replicates.
        seed: seed of the resampling.
        block_tokens: tokens per resampled block.
        mode: ``"stream"`` (or None: the model must have been trained on a stream).
        quiet: no progress on stderr.
        document_boundary: documents in both files (``text_file_documents``), the state
            zeroed at each one's start in the static and dynamic passes and in the gradient
            statistics; the weights carry over. None: the run's own ``--document-boundary``
            (as static evaluation, ``keras_rnnlm.document_boundary.resolve_document_boundary``);
            ``"none"``: no resets; ``"blank"`` or a token: that boundary.

    Returns:
        ``static_and_dynamic``'s dict plus ``"mode"``, ``"document_boundary"``, ``"dynamic"``
        (the settings and the gradient statistics' size), ``"file"`` and ``"model"``.

    Example:

    >>> dynamic_evaluate_text_file("saved_models/ptb_word_lstm_small", "ptb.test.txt",
    ...                            "ptb.train.txt", lr=1e-4, decay=0.02)["dynamic_perplexity"]
    """
    from keras_rnnlm.progress import Progress
    from keras_rnnlm.runs import load_any_model

    model, vocabulary, info = load_any_model(path)
    if (mode or info["mode"]) != "stream":
        raise ValueError(
            f"--dynamic reads the text as one stream, but {path} was trained on sentences; "
            "pass --mode stream to evaluate it as a stream anyway."
        )
    boundary = resolve_document_boundary(document_boundary, info, "stream")
    stream, reset = text_file_documents(vocabulary, text_file, boundary)
    start = time.perf_counter()
    train_stream, train_reset = text_file_documents(vocabulary, train_file, boundary, stat_tokens)
    rms, statistics = gradient_rms(model, train_stream, segment_length, rows, reset=train_reset)
    statistics.update(file=str(train_file), seconds=round(time.perf_counter() - start, 2))
    segments = -(-(len(stream) - 1) // segment_length)
    with Progress(segments, "dynamic evaluation", "segments", quiet=quiet) as progress:
        result = static_and_dynamic(
            model, stream, rms, lr, decay, segment_length, B, seed, block_tokens, progress, reset
        )
    result["mode"] = "stream"
    result["document_boundary"] = boundary
    result["dynamic"] = {
        "lr": lr,
        "decay": decay,
        "segment_length": segment_length,
        "epsilon": DEFAULT_EPSILON,
        "rule": "theta += -lr*g/(rms+epsilon) + min(decay*rms/sum(mean(rms)), 1)*(theta_0-theta)",
        "gradient_statistics": statistics,
    }
    result.update(file=str(text_file), model=str(path))
    return result
