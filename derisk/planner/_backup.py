"""The Bellman backup of one action over a block of states, as a numpy function.

Shared by the exact solver and by exact policy evaluation, so that the value of a
policy and the optimal value are computed by the same arithmetic.
"""

from __future__ import annotations

import numpy as np

from derisk.planner._problem import PlanningProblem


def continuation(p: np.ndarray, x_s: np.ndarray, x_f: np.ndarray, *, gain: float) -> np.ndarray:
    """p (gain + x_s) + (1 - p) x_f, in place on the caller's fresh gathers (m, L)."""
    cont = x_s
    if gain:
        cont += gain
    cont *= p[:, None]
    x_f *= (1.0 - p)[:, None]
    cont += x_f
    return cont


def action_value(
    problem: PlanningProblem,
    i: int,
    p: np.ndarray,
    x_s: np.ndarray,
    x_f: np.ndarray,
    x_d0: np.ndarray | None,
    *,
    gain: float,
    spend_weight: float,
) -> np.ndarray:
    """Expected return of running node i, for every remaining budget level.

    Args:
        p: (m,) posterior success probability in each state.
        x_s, x_f: (m, L) return-to-go after success / failure, by remaining budget.
        x_d0: (m,) return-to-go at budget 0 after a cut-off (stochastic costs), or None.
        gain: what a success pays immediately (the reward, or 1 for a probability channel).
        spend_weight: what one budget unit spent adds (-price for value, 1 for compute).

    Returns:
        (m, L) array; -inf where the node cannot be started (min cost > budget).
        x_s and x_f are overwritten: callers pass fresh gathers (fancy indexing copies).
    """
    m, L = x_s.shape
    cont = continuation(p, x_s, x_f, gain=gain)  # (m, L), by the budget left after paying
    units, probs = problem.cost_units[i], problem.cost_probs[i]
    lo = int(units[0])
    if len(units) == 1:  # deterministic cost: a shift, no mixture
        out = np.empty((m, L))
        k = min(lo, L)
        out[:, :k] = -np.inf
        out[:, k:] = cont[:, : L - k]
        if spend_weight and lo:
            out[:, k:] += spend_weight * lo
        return out
    out = np.zeros((m, L))
    levels = np.arange(L)
    for c, q in zip(units, probs, strict=True):
        c = int(c)
        if c < L:
            out[:, c:] += q * (cont[:, : L - c] + spend_weight * c)
        if x_d0 is not None:
            k = min(c, L)
            # Overrun: the run is cut off, everything left is spent, it counts as failed.
            out[:, :k] += q * (x_d0[:, None] + spend_weight * levels[None, :k])
    out[:, : min(lo, L)] = -np.inf
    return out
