"""Scaling-law forms, each a LogSumExp of terms linear in its parameters and log inputs.

Writing L = sum_j exp(t_j) with every t_j linear in the parameters theta and in
log N, log D, log G (Hoffmann et al. 2022, approach 3) gives one objective, one analytic
gradient and one fitter for every law here:

- chinchilla (Hoffmann et al. 2022, eq. 2):   L = E + A / N^alpha + B / D^beta
      theta = (a, b, e, alpha, beta) with A = e^a, B = e^b, E = e^e.
- moe (Krajewski et al. 2024, granularity G, N = total non-embedding params):
      L = c + (g / G^gamma + a') / N^alpha + b' / D^beta
      theta = (log a', log b', log c, log g, alpha, beta, gamma).
- moe_experts (expert count X, in the spirit of Clark et al. 2022, with N = active params):
      L = E + A / (N^alpha X^gamma) + B / D^beta
      theta = (a, b, e, alpha, beta, gamma); the MoE is worth a dense model with
      N_eff = N X^(gamma / alpha) parameters.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LawForm:
    """A law as terms t_j = c_j . theta (+ offsets): coef[j] (P, 3) maps (1, logN, logD)...

    `terms(theta, X)` returns (..., n, J) for inputs X = [log N, log D, log G] (n, 3).
    """

    name: str
    params: tuple[str, ...]  # names of theta entries
    inputs: tuple[str, ...]  # data columns used besides loss
    grid: tuple[tuple[float, ...], ...]  # initialisation grid per parameter

    def terms(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        """theta (..., P), X (n, 3) -> t (..., n, J)."""
        th = theta[..., None, :]
        lN, lD, lG = X[:, 0], X[:, 1], X[:, 2]
        if self.name == "chinchilla":
            a, b, e, al, be = (th[..., k] for k in range(5))
            return np.stack([a - al * lN, b - be * lD, e + 0 * lN], axis=-1)
        if self.name == "moe":
            la, lb, lc, lg, al, be, ga = (th[..., k] for k in range(7))
            return np.stack(
                [la - al * lN, lg - ga * lG - al * lN, lb - be * lD, lc + 0 * lN], axis=-1
            )
        if self.name == "moe_experts":
            a, b, e, al, be, ga = (th[..., k] for k in range(6))
            return np.stack([a - al * lN - ga * lG, b - be * lD, e + 0 * lN], axis=-1)
        raise ValueError(self.name)

    def term_jacobian(self, X: np.ndarray) -> np.ndarray:
        """(n, J, P): d t_j / d theta_p (the terms are linear in theta)."""
        n = X.shape[0]
        lN, lD, lG = X[:, 0], X[:, 1], X[:, 2]
        one, zero = np.ones(n), np.zeros(n)
        if self.name == "chinchilla":
            rows = [
                [one, zero, zero, -lN, zero],
                [zero, one, zero, zero, -lD],
                [zero, zero, one, zero, zero],
            ]
        elif self.name == "moe":
            rows = [
                [one, zero, zero, zero, -lN, zero, zero],
                [zero, zero, zero, one, -lN, zero, -lG],
                [zero, one, zero, zero, zero, -lD, zero],
                [zero, zero, one, zero, zero, zero, zero],
            ]
        else:
            rows = [
                [one, zero, zero, -lN, zero, -lG],
                [zero, one, zero, zero, -lD, zero],
                [zero, zero, one, zero, zero, zero],
            ]
        return np.stack([np.stack(r, axis=-1) for r in rows], axis=1)

    def log_predict(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        t = self.terms(theta, X)
        m = t.max(axis=-1, keepdims=True)
        return (m + np.log(np.exp(t - m).sum(axis=-1, keepdims=True)))[..., 0]

    def starts(self) -> np.ndarray:
        return np.array(list(itertools.product(*self.grid)), dtype=np.float64)

    def readable(self, theta: np.ndarray) -> dict[str, float]:
        """Parameters in the papers' names (A, B, E, alpha, beta, ...)."""
        t = theta
        if self.name == "chinchilla":
            return {
                "E": np.exp(t[2]),
                "A": np.exp(t[0]),
                "B": np.exp(t[1]),
                "alpha": t[3],
                "beta": t[4],
            }
        if self.name == "moe":
            return {
                "E": np.exp(t[2]),
                "A": np.exp(t[0]),
                "B": np.exp(t[1]),
                "g": np.exp(t[3]),
                "alpha": t[4],
                "beta": t[5],
                "gamma": t[6],
            }
        return {
            "E": np.exp(t[2]),
            "A": np.exp(t[0]),
            "B": np.exp(t[1]),
            "alpha": t[3],
            "beta": t[4],
            "gamma": t[5],
        }


_EXP = (0.0, 0.5, 1.0, 1.5, 2.0)  # exponents, Hoffmann et al.'s grid
_LOG_COEF = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)  # log A, log B
_LOG_E = (-1.0, -0.5, 0.0, 0.5, 1.0)

LAWS = {
    "chinchilla": LawForm(
        "chinchilla",
        ("a", "b", "e", "alpha", "beta"),
        ("params", "tokens"),
        (_LOG_COEF, _LOG_COEF, _LOG_E, _EXP, _EXP),
    ),
    "moe": LawForm(
        "moe",
        ("log_a", "log_b", "log_c", "log_g", "alpha", "beta", "gamma"),
        ("params", "tokens", "granularity"),
        (
            (0.0, 10.0, 20.0),
            (0.0, 10.0, 20.0),
            _LOG_E,
            (0.0, 10.0, 20.0),
            (0.0, 0.5, 1.0),
            (0.0, 0.5, 1.0),
            (0.0, 0.5, 1.0),
        ),
    ),
    "moe_experts": LawForm(
        "moe_experts",
        ("a", "b", "e", "alpha", "beta", "gamma"),
        ("params", "tokens", "experts"),
        (
            (0.0, 5.0, 10.0, 15.0, 20.0),
            (0.0, 5.0, 10.0, 15.0, 20.0),
            _LOG_E,
            (0.0, 0.5, 1.0),
            (0.0, 0.5, 1.0),
            (0.0, 0.25, 0.5),
        ),
    ),
}
