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


FRONTIER_PARAMS = ("c_ref", "n0", "a", "E", "b", "g", "k0", "k1")


@dataclass(frozen=True)
class FrontierForm:
    """The IsoFLOP approach-2 frontier read as a law of (N, D) (`derisk.scaling._frontier`
    fits it; this is its closed form). With C = 6ND and u = log C - c_ref:

        log N_opt(C) = n0 + a u                     (N_opt = k_n C^a)
        L*(C)        = E + exp(b - g u)             (E = 0: a pure power law)
        c(C)         = exp(k0 + k1 u)               (k1 = 0: one curvature for all C)
        L(N, D)      = L*(C) + c(C) (log N - log N_opt(C))^2

    theta = (c_ref, n0, a, E, b, g, k0, k1); c_ref only centres log C (the slices' mean).
    Not a LogSumExp of linear terms, so `fit_law` cannot fit it and it is not in LAWS.
    """

    name: str = "frontier"
    params: tuple[str, ...] = FRONTIER_PARAMS
    inputs: tuple[str, ...] = ("params", "tokens")

    @staticmethod
    def parts(theta: np.ndarray, log_c: np.ndarray):
        """(log N_opt, L*, curvature) at log compute `log_c` (n,) for theta (..., 8)."""
        th = np.asarray(theta, dtype=np.float64)[..., None, :]
        u = log_c - th[..., 0]
        x_opt = th[..., 1] + th[..., 2] * u
        l_opt = th[..., 3] + np.exp(th[..., 4] - th[..., 5] * u)
        curv = np.exp(th[..., 6] + th[..., 7] * u)
        return x_opt, l_opt, curv

    def log_predict(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        """theta (..., 8), X (n, 3) of log N, log D, (unused) -> log L (..., n)."""
        x_opt, l_opt, curv = self.parts(theta, np.log(6.0) + X[:, 0] + X[:, 1])
        return np.log(l_opt + curv * (X[:, 0] - x_opt) ** 2)

    def readable(self, theta: np.ndarray) -> dict[str, float]:
        """N_opt = k_n C^a, L* = E + B C^-gamma, curvature kappa C^kappa_slope (C in FLOPs)."""
        t = theta
        return {
            "E": t[3],
            "B": np.exp(t[4] + t[5] * t[0]),
            "gamma": t[5],
            "a": t[2],
            "k_n": np.exp(t[1] - t[2] * t[0]),
            "kappa": np.exp(t[6] - t[7] * t[0]),
            "kappa_slope": t[7],
        }

    def problem(self, theta: np.ndarray) -> tuple[int, str] | None:
        """(index, what is wrong) for parameters no fit gives (a law file's check), or
        None: E below 0 (losses could turn negative), a centre c_ref that is no log
        compute. Exponents are not bounded here: a bootstrap refit may leave any range."""
        t = np.asarray(theta, dtype=np.float64)
        if not t[3] >= 0.0:
            return 3, f"E must be at least 0, got {t[3]!r}"
        if not abs(t[0]) < 1e3:
            return 0, f"c_ref (log FLOPs) must be a plausible log compute, got {t[0]!r}"
        return None


FRONTIER = FrontierForm()
# every closed form a fit's `theta` (or a model average's member) may belong to
FORMS = {**LAWS, FRONTIER.name: FRONTIER}
