"""Bootstrap intervals for perplexity, and the paired bootstrap for comparing two models.

Perplexity is a ratio, ``exp(sum of NLL / number of tokens)``, over units of text: sentences
(sentence-mode evaluation, every sentence scored from a zero state) or windows of one stream
(stream evaluation, the state carried). The bootstrap resamples *units*, each an
``(NLL sum, tokens)`` pair, with replacement, and takes the ratio of the resampled totals, so a
long sentence weighs as much as its tokens. Units are resampled whole because the tokens of a
sentence are not independent of each other.

For a stream the units are contiguous *blocks* of windows (a moving-block bootstrap without
overlap): the recurrent state is carried from window to window, so neighbouring tokens, even
across a window edge, are predicted from shared context and are dependent; resampling single
tokens, or too short windows, would treat them as independent and give too narrow an interval.

Every function is seeded and deterministic (``numpy.random.default_rng(seed)``).
"""

import numpy as np

#: default number of bootstrap replicates
DEFAULT_B = 1000
#: default seed of the resampling
DEFAULT_SEED = 0


def block_units(nll, tokens, block: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Sum consecutive units into blocks of ``block`` units (the last block may be shorter).

    Args:
        nll: per-unit NLL sums.
        tokens: per-unit token counts.
        block: units per block (``1`` keeps the units).

    Returns:
        ``(nll, tokens)`` float64 arrays with one entry per block.

    Example:

    >>> block_units([1.0, 2.0, 3.0], [1, 1, 2], block=2)
    (array([3., 3.]), array([2., 2.]))
    """
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}.")
    nll, tokens = _pairs(nll, tokens)
    starts = np.arange(0, len(nll), block)
    return np.add.reduceat(nll, starts), np.add.reduceat(tokens, starts)


def _pairs(nll, tokens) -> tuple[np.ndarray, np.ndarray]:
    nll = np.asarray(nll, np.float64).ravel()
    tokens = np.asarray(tokens, np.float64).ravel()
    if nll.shape != tokens.shape:
        raise ValueError(f"nll and tokens differ in length: {nll.shape} vs {tokens.shape}.")
    if len(nll) == 0 or tokens.sum() <= 0:
        raise ValueError("No unit with a real token to resample.")
    return nll, tokens


def _resample_indices(n: int, replicates: int, seed: int) -> np.ndarray:
    if replicates < 1:
        raise ValueError(f"B must be >= 1, got {replicates}.")
    return np.random.default_rng(seed).integers(0, n, size=(replicates, n))


def _ratio(nll, tokens, indices) -> np.ndarray:
    counts = tokens[indices].sum(axis=1)
    return nll[indices].sum(axis=1) / np.maximum(counts, 1.0)  # 0-token replicates: NLL 0


def _interval(values: np.ndarray, level: float) -> list[float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [float(low), float(high)]


def bootstrap_log_perplexity(
    nll, tokens, B: int = DEFAULT_B, seed: int = DEFAULT_SEED, level: float = 0.95
) -> list[float]:
    """Percentile bootstrap interval of the mean NLL per token (log-perplexity).

    Args:
        nll: per-unit NLL sums (nats).
        tokens: per-unit real-token counts.
        B: bootstrap replicates.
        seed: seed of the resampling (same seed, same interval).
        level: coverage of the interval.

    Returns:
        ``[low, high]`` of ``sum(nll) / sum(tokens)`` over resampled units.

    Example:

    >>> low, high = bootstrap_log_perplexity(units["nll"], units["tokens"], B=1000, seed=0)
    """
    nll, tokens = _pairs(nll, tokens)
    indices = _resample_indices(len(nll), B, seed)
    return _interval(_ratio(nll, tokens, indices), level)


def bootstrap_perplexity(
    nll, tokens, B: int = DEFAULT_B, seed: int = DEFAULT_SEED, level: float = 0.95
) -> list[float]:
    """Percentile bootstrap interval of the perplexity ``exp(sum(nll) / sum(tokens))``.

    Args and resampling as ``bootstrap_log_perplexity``; the percentile interval is invariant
    under the monotone ``exp``, so this is its ``exp``.

    Returns:
        ``[low, high]`` perplexities.

    Example:

    >>> bootstrap_perplexity([40.0, 52.0], [10, 12], B=200, seed=0)
    """
    low, high = bootstrap_log_perplexity(nll, tokens, B, seed, level)
    return [float(np.exp(low)), float(np.exp(high))]


def paired_bootstrap_difference(
    nll_a,
    tokens_a,
    nll_b,
    tokens_b,
    B: int = DEFAULT_B,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> dict:
    """Paired bootstrap of ``log ppl(B) - log ppl(A)`` over the same units of text.

    The same resampled units are used for both models in every replicate, so the variation of
    the text (hard and easy sentences) cancels and only the models' difference remains.

    Args:
        nll_a: per-unit NLL sums of model A.
        tokens_a: per-unit token counts of model A.
        nll_b: per-unit NLL sums of model B, unit ``i`` the same text as A's.
        tokens_b: per-unit token counts of model B (must equal A's).
        B: bootstrap replicates.
        seed: seed of the resampling.
        level: coverage of the interval.

    Returns:
        ``{"log_ppl_difference": float, "log_ppl_difference_ci95": [low, high]}``: positive
        when B is worse (higher perplexity) than A. The key says ``ci95`` whatever ``level``.

    Example:

    >>> paired_bootstrap_difference(a["nll"], a["tokens"], b["nll"], b["tokens"])
    """
    nll_a, tokens_a = _pairs(nll_a, tokens_a)
    nll_b, tokens_b = _pairs(nll_b, tokens_b)
    if nll_a.shape != nll_b.shape or not np.array_equal(tokens_a, tokens_b):
        raise ValueError("The two models were not scored on the same units of text.")
    indices = _resample_indices(len(nll_a), B, seed)
    differences = _ratio(nll_b, tokens_b, indices) - _ratio(nll_a, tokens_a, indices)
    point = nll_b.sum() / tokens_b.sum() - nll_a.sum() / tokens_a.sum()
    return {
        "log_ppl_difference": float(point),
        "log_ppl_difference_ci95": _interval(differences, level),
    }
