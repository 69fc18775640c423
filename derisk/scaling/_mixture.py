"""The predictive distribution of a loss as one object: a mixture of log-normals.

A law's forecast at one (N, D) is the mean over its bootstrap refits b of a log-normal
centred on refit b's prediction, with the run noise and the calibrated extrapolation
error as its scale: P(loss < x) = mean_b Phi((log x - m_b) / sigma). The probability a
roadmap plans with, the band it prints and the centre it prints must all come from this
one distribution, or they can contradict each other (a band whose lower end is below the
target beside a p under 10%). Quantiles are found by root finding on that same CDF, so
P(loss < quantile(q)) = q to solver precision.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special


def mixture_cdf(y: float, means: np.ndarray, sigma: float) -> float:
    """P(log loss < y) for the mixture of N(means[b], sigma^2) with equal weights."""
    if sigma <= 0:
        return float(np.mean(means < y))
    return float(np.mean(special.ndtr((y - means) / sigma)))


def mixture_quantile(q: float, means: np.ndarray, sigma: float) -> float:
    """The log-loss y with mixture_cdf(y) = q (0 < q < 1).

    The mixture's q-quantile lies between its components' smallest and largest
    q-quantiles, which bracket the root. With sigma 0 (no noise) the mixture is the
    refits' empirical distribution and this is its lower q-quantile.
    """
    if not 0 < q < 1:
        raise ValueError(f"q must be in (0, 1), got {q}")
    means = np.asarray(means, dtype=np.float64)
    if sigma <= 0:
        return float(np.quantile(means, q, method="inverted_cdf"))
    z = special.ndtri(q) * sigma
    lo, hi = float(means.min() + z), float(means.max() + z)
    if hi - lo < 1e-15:
        return lo
    return float(optimize.brentq(lambda y: mixture_cdf(y, means, sigma) - q, lo, hi, xtol=1e-13))


def mixture_band(means: np.ndarray, sigma: float, level: float = 0.8):
    """(lo, median, hi) of the loss (not its log): the central `level` interval and the
    median of the mixture."""
    a = (1 - level) / 2
    lo, mid, hi = (mixture_quantile(q, means, sigma) for q in (a, 0.5, 1 - a))
    return float(np.exp(lo)), float(np.exp(mid)), float(np.exp(hi))
