"""Progress on stderr for long commands (``evaluate``, ``score --file``, ``generate``).

Shown only when stderr is a terminal and not ``quiet``: piped or redirected output, CI logs and
``--quiet`` get nothing, and stdout is never written, so a command's JSON or text result stays
clean (``keras-rnnlm score --file f | jq .``). Imports neither TensorFlow nor Keras.

Example:

>>> with Progress(total=len(batches), description="score", unit="batch") as progress:
...     for batch in progress.iterate(batches):
...         ...
"""

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO


class Progress:
    """A one-line counter ``description: done/total unit (pct%) elapsed`` redrawn in place.

    Args:
        total: the number of units expected (None: unknown, only the count is shown).
        description: what is being done (e.g. ``"score"``).
        unit: the name of one unit (``"batch"``, ``"sentence"``, ``"sample"``).
        quiet: never show anything.
        stream: where to draw (default ``sys.stderr``, looked up when drawing).
        min_interval: seconds between redraws (the last update always draws).

    Example:

    >>> progress = Progress(total=3, description="evaluate", unit="batch")
    >>> for _ in progress.iterate(range(3)):
    ...     pass
    >>> progress.done
    3
    """

    def __init__(
        self,
        total: int | None = None,
        description: str = "",
        unit: str = "item",
        quiet: bool = False,
        stream: TextIO | None = None,
        min_interval: float = 0.1,
    ):
        self.total = total
        self.description = description
        self.unit = unit
        self.stream = stream
        self.min_interval = min_interval
        self.done = 0
        self.enabled = not quiet and is_terminal(self._stream())
        self._start = time.monotonic()
        self._last_draw = -float("inf")
        self._drawn = False

    def _stream(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def update(self, count: int = 1) -> None:
        """Record ``count`` more units done; redraw if due."""
        self.done += count
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw >= self.min_interval or self.done == self.total:
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        text = f"{self.description}: {self.done}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f" {now - self._start:.1f}s"
        self._stream().write(f"\r{text}\x1b[K")
        self._stream().flush()
        self._drawn = True

    def iterate(self, iterable: Iterable) -> Iterator:
        """Yield the items of ``iterable``, counting one unit after each."""
        for item in iterable:
            yield item
            self.update()

    def close(self) -> None:
        """End the line (only if something was drawn)."""
        if self._drawn:
            self._draw(time.monotonic())
            self._stream().write("\n")
            self._stream().flush()
            self._drawn = False

    def __enter__(self) -> "Progress":
        if self.enabled:  # "0/total" at once: the user sees that the command is working
            self._last_draw = time.monotonic()
            self._draw(self._last_draw)
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (False for files, pipes, closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def chunks(items: list, size: int) -> list[list]:
    """``items`` cut into consecutive lists of ``size`` (the last one shorter).

    Example:

    >>> chunks([1, 2, 3, 4, 5], 2)
    [[1, 2], [3, 4], [5]]
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}.")
    return [items[i : i + size] for i in range(0, len(items), size)]


def score_file_with_progress(
    model, vocabulary, sentences: list[str], batch_size: int = 32, quiet: bool = False
) -> dict:
    """``keras_rnnlm.scoring.text_perplexity`` of ``sentences``, computed in chunks with a
    progress line on stderr (only on a terminal, never with ``quiet``); same result.

    Args:
        model: a stateless ``RNNLanguageModel``.
        vocabulary: its ``Vocabulary``.
        sentences: the text, one sentence per item (empty ones are skipped).
        batch_size: sentences scored per batch.
        quiet: show no progress.

    Returns:
        The dict ``text_perplexity`` returns (totals summed over the chunks).

    Example:

    >>> score_file_with_progress(model, vocab, open("test.txt").read().splitlines())
    """
    from keras_rnnlm.progress import Progress, chunks
    from keras_rnnlm.scoring import text_perplexity, text_summary

    sentences = [s for s, ids in zip(sentences, vocabulary.encode_batch(list(sentences))) if ids]
    if not sentences:
        raise ValueError("The text holds no token.")
    log_prob = tokens = count = 0
    with Progress(len(sentences), "score", "sentences", quiet=quiet) as progress:
        for part in chunks(sentences, 8 * batch_size):
            result = text_perplexity(model, vocabulary, part, batch_size)
            log_prob += result["log_prob"]
            tokens += result["tokens"]
            count += result["sentences"]
            progress.update(len(part))
    return text_summary(log_prob, tokens, count)
