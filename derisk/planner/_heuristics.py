"""Fixed heuristic policies, as full (state, budget) policy tables for exact evaluation.

Each heuristic ranks the runnable experiments by a score computed from the current
(posterior) success probability p and the mean cost c, runs the best one it can
afford, and stops only when nothing is runnable. The scores:

- steinhardt: log(1/p) / c, highest first ("most informative per unit cost first";
  Steinhardt, "Research as a Stochastic Decision Process", 2019).
- least_cost: c / (1 - p), lowest first: the order that minimises expected cost of a
  serial all-must-succeed project (the classical sequential-testing result).
- cheapest: c, lowest first.
- greedy: p x reward / c, highest first (immediate expected reward per unit cost).
- random: uniform over runnable experiments (evaluated exactly as a stochastic policy).
"""

from __future__ import annotations

import numpy as np

from derisk.planner._problem import PlanningProblem
from derisk.planner._states import StateSpace, small_pages

HEURISTICS = ("steinhardt", "least_cost", "cheapest", "greedy", "random")
_BIG = 1e300


def heuristic_scores(name: str, problem: PlanningProblem, p: np.ndarray) -> np.ndarray:
    """(..., n) scores, higher is better, for posterior p (..., n)."""
    if p.ndim == 2 and p.shape[0] > 1 and p.strides[0] == 0:
        # The prior broadcast over every state (no hypotheses): score one row.
        return np.broadcast_to(heuristic_scores(name, problem, p[:1]), p.shape)
    c = np.maximum(problem.mean_cost, 1e-12)  # a free experiment ranks as infinitely cheap
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "steinhardt":
            s = np.where(p > 0, np.log(1.0 / np.maximum(p, 1e-300)), _BIG) / c
        elif name == "least_cost":
            s = -c / np.maximum(1.0 - p, 1e-300)
        elif name == "cheapest":
            s = np.broadcast_to(-c, p.shape)
        elif name == "greedy":
            s = p * problem.reward / c
        else:
            raise ValueError(f"unknown heuristic {name!r}; expected one of {HEURISTICS}")
    return np.clip(np.nan_to_num(s, nan=0.0, posinf=_BIG, neginf=-_BIG), -_BIG, _BIG)


@small_pages
def heuristic_policy(name: str, problem: PlanningProblem, space: StateSpace) -> np.ndarray | None:
    """(S, L) int8 policy table, or None for "random" (evaluated as a stochastic policy)."""
    if name == "random":
        return None
    S, L = space.size, problem.levels + 1
    score = heuristic_scores(name, problem, space.p)
    lo = problem.min_cost
    policy = np.full((S, L), -1, dtype=np.int8)
    # The affordable set only grows with the budget, so the choice is constant between
    # consecutive distinct minimum costs. Experiments join the running best as they
    # become affordable, each compared once (the first index wins a tie, as argmax).
    value = np.full(S, -np.inf)
    best = np.full(S, -1, dtype=np.int8)
    thresholds = sorted(set(int(x) for x in lo if x < L))
    for k, t in enumerate(thresholds):
        for i in np.flatnonzero(lo == t):
            col = np.where(space.avail[:, i], score[:, i], -np.inf)
            better = (col > value) | ((col == value) & (i < best) & np.isfinite(col))
            value[better] = col[better]
            best[better] = i
        end = thresholds[k + 1] if k + 1 < len(thresholds) else L
        policy[:, t:end] = best[:, None]
    return policy
