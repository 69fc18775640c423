"""Monte Carlo simulation of any policy on the true generative model.

Each episode draws the hypotheses from their prior, then every outcome from the
experiment's p under those hypotheses; the planner only ever sees posteriors, so the
simulated mean of the optimal policy must match its computed value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from derisk.planner._solve import Solution


@dataclass(frozen=True)
class SimulationResult:
    """Per-episode returns of one policy; value = reward - price x compute."""

    policy: str
    reward: np.ndarray  # (N,)
    compute: np.ndarray  # (N,) in the roadmap's unit
    value: np.ndarray  # (N,)

    @property
    def mean(self) -> float:
        return float(self.value.mean())

    @property
    def stderr(self) -> float:
        return (
            float(self.value.std(ddof=1) / np.sqrt(len(self.value)))
            if len(self.value) > 1
            else float("nan")
        )


def simulate(
    solution: Solution,
    policy: str = "optimal",
    *,
    episodes: int = 10_000,
    seed: int = 0,
    level: int | None = None,
) -> SimulationResult:
    """Run `episodes` independent episodes of a policy from the start state."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    pr, sp = solution.problem, solution.space
    table = solution.policy_table(policy)
    rng = np.random.default_rng(seed)
    N = episodes
    K = max(len(c) for c in pr.cost_units)
    cu = np.zeros((pr.n, K), dtype=np.int64)
    cq = np.zeros((pr.n, K))
    for i, (c, q) in enumerate(zip(pr.cost_units, pr.cost_probs, strict=True)):
        cu[i, : len(c)], cq[i, : len(c)] = c, q
    ccum = np.cumsum(cq, axis=1)
    config = rng.choice(len(pr.prior), size=N, p=pr.prior)
    s = np.full(N, sp.root, dtype=np.int64)
    b = np.full(N, pr.start_budget if level is None else level, dtype=np.int64)
    reward = np.zeros(N)
    spent = np.zeros(N, dtype=np.int64)
    active = np.ones(N, dtype=bool)
    lo = pr.min_cost
    for _ in range(pr.n + 1):
        if table is None:  # uniform over runnable and affordable experiments
            ok = sp.avail[s] & (lo[None, :] <= b[:, None])
            counts = ok.sum(axis=1)
            pick = (rng.random(N) * np.maximum(counts, 1)).astype(np.int64)
            a = np.where(counts > 0, np.argmax(np.cumsum(ok, axis=1) > pick[:, None], axis=1), -1)
        else:
            a = table[s, b].astype(np.int64)
        active &= a >= 0
        if not active.any():
            break
        idx = np.flatnonzero(active)
        ai, si, bi = a[idx], s[idx], b[idx]
        k = np.argmax(rng.random(len(idx))[:, None] < ccum[ai], axis=1)
        c = cu[ai, k]
        over = c > bi
        win = ~over & (rng.random(len(idx)) < pr.p_table[ai, config[idx]])
        reward[idx] += np.where(win, pr.reward[ai], 0.0)
        spent[idx] += np.where(over, bi, c)
        s[idx] = np.where(
            over, sp.succ_d[si, ai], np.where(win, sp.succ_s[si, ai], sp.succ_f[si, ai])
        )
        b[idx] = np.where(over, 0, bi - c)
    compute = spent * pr.resolution
    return SimulationResult(
        policy=policy, reward=reward, compute=compute, value=reward - pr.price_per_unit * spent
    )
