"""Bootstrap intervals (keras_rnnlm.intervals): pure numpy, no model."""

import numpy as np
import pytest

from keras_rnnlm.intervals import (
    block_units,
    bootstrap_log_perplexity,
    bootstrap_perplexity,
    paired_bootstrap_difference,
)


def _synthetic_units(rng, n_units, mean):
    """Units of 1..30 tokens whose per-token NLLs are Gamma(2, mean / 2): E[NLL] = mean."""
    tokens = rng.integers(1, 31, size=n_units)
    nll = np.array([rng.gamma(2.0, mean / 2.0, size=t).sum() for t in tokens])
    return nll, tokens


def test_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(123)
    truth = 4.5
    repetitions = 400
    covered = 0
    for repetition in range(repetitions):
        nll, tokens = _synthetic_units(rng, 80, truth)
        low, high = bootstrap_log_perplexity(nll, tokens, B=400, seed=repetition)
        assert low <= nll.sum() / tokens.sum() <= high
        covered += low <= truth <= high
    assert 0.90 <= covered / repetitions <= 0.99, covered


def test_interval_is_seeded_and_deterministic():
    nll, tokens = _synthetic_units(np.random.default_rng(0), 50, 3.0)
    first = bootstrap_perplexity(nll, tokens, B=300, seed=7)
    assert first == bootstrap_perplexity(nll, tokens, B=300, seed=7)
    assert first != bootstrap_perplexity(nll, tokens, B=300, seed=8)
    low, high = bootstrap_log_perplexity(nll, tokens, B=300, seed=7)
    np.testing.assert_allclose(first, np.exp([low, high]))


def test_paired_difference_sees_a_small_shift_an_unpaired_view_would_miss():
    rng = np.random.default_rng(1)
    nll_a, tokens = _synthetic_units(rng, 200, 4.0)
    nll_b = nll_a + 0.05 * tokens  # B is worse by exactly 0.05 nats per token
    result = paired_bootstrap_difference(nll_a, tokens, nll_b, tokens, B=500, seed=0)
    assert result["log_ppl_difference"] == pytest.approx(0.05)
    low, high = result["log_ppl_difference_ci95"]
    assert 0.0 < low <= 0.05 <= high
    # the unpaired intervals of the two models overlap: pairing is what separates them
    a_low, a_high = bootstrap_log_perplexity(nll_a, tokens, B=500, seed=0)
    b_low, _ = bootstrap_log_perplexity(nll_b, tokens, B=500, seed=0)
    assert b_low < a_high
    swapped = paired_bootstrap_difference(nll_b, tokens, nll_a, tokens, B=500, seed=0)
    assert swapped["log_ppl_difference_ci95"][1] < 0.0


def test_paired_difference_refuses_different_units():
    with pytest.raises(ValueError, match="same units"):
        paired_bootstrap_difference([1.0, 2.0], [1, 2], [1.0, 2.0], [2, 1])


def test_block_units_sums_contiguous_units():
    nll, tokens = block_units([1.0, 2.0, 3.0, 4.0, 5.0], [1, 2, 3, 4, 5], block=2)
    np.testing.assert_array_equal(nll, [3.0, 7.0, 5.0])
    np.testing.assert_array_equal(tokens, [3.0, 7.0, 5.0])
    with pytest.raises(ValueError):
        block_units([1.0], [1], block=0)
