"""The predictive mixture's quantiles against its own CDF and against sampling."""

import numpy as np
import pytest
from scipy import stats

from derisk.scaling._mixture import mixture_band, mixture_cdf, mixture_quantile


def test_quantiles_invert_the_cdf_the_probabilities_use():
    rng = np.random.default_rng(0)
    for _ in range(20):
        means = rng.normal(1.0, rng.uniform(0.001, 0.2), size=rng.integers(1, 200))
        sigma = rng.uniform(0.001, 0.1)
        for q in (0.1, 0.5, 0.9):
            y = mixture_quantile(q, means, sigma)
            assert mixture_cdf(y, means, sigma) == pytest.approx(q, abs=1e-9)


def test_one_component_is_the_log_normal():
    y = mixture_quantile(0.9, np.array([0.7]), 0.05)
    assert y == pytest.approx(0.7 + 0.05 * stats.norm.ppf(0.9), abs=1e-10)


def test_band_matches_a_large_sample_of_the_mixture():
    """Sampling a component uniformly then its normal: the sample's 10/50/90% quantiles
    agree with the band computed from the CDF."""
    rng = np.random.default_rng(1)
    means = np.log(2.0) + rng.standard_t(3, size=50) * 0.02  # skewed-ish, heavy tails
    sigma = 0.01
    draws = means[rng.integers(0, len(means), 400_000)] + rng.normal(0, sigma, 400_000)
    lo, mid, hi = mixture_band(means, sigma, 0.8)
    want = np.exp(np.quantile(draws, [0.1, 0.5, 0.9]))
    np.testing.assert_allclose([lo, mid, hi], want, rtol=1e-3)


def test_no_noise_is_the_refits_own_quantile():
    means = np.log(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert mixture_quantile(0.5, means, 0.0) == pytest.approx(np.log(3.0))
    with pytest.raises(ValueError, match="q must be"):
        mixture_quantile(1.0, means, 0.1)
