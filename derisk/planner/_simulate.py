"""Monte Carlo simulation of any policy on the planning problem's generative model.

Each episode draws the hypotheses from their prior (conditioned on any recorded
outcomes), then every outcome from the experiment's p under those hypotheses; the
planner only ever sees posteriors, so the simulated mean of the optimal policy must
match its computed value.

Costs are drawn from the compiled problem's discretised distribution (`cost_units`,
`cost_probs`: equal-probability levels of a log-normal cost, rounded up to budget
steps), the one the solver plans with. So a simulation checks the solver and the
policy evaluation; it cannot see the error of that discretisation (tails beyond the
levels, rounding up to a step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from derisk.planner._solve import Solution
from derisk.planner._states import config_posterior


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


CHUNK = 1 << 16  # episodes simulated at once: bounds the (episodes, n) temporaries
# Bytes per episode kept for the result (reward, compute, value as float64).
BYTES_PER_EPISODE = 24


def simulate(
    solution: Solution,
    policy: str = "optimal",
    *,
    episodes: int = 10_000,
    seed: int = 0,
    level: int | None = None,
) -> SimulationResult:
    """Run `episodes` independent episodes of a policy from the start state.

    Episodes run in chunks of `CHUNK` from one random stream, so memory beyond the
    per-episode results (`BYTES_PER_EPISODE` each) does not grow with `episodes`.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    pr = solution.problem
    table = solution.policy_table(policy)
    rng = np.random.default_rng(seed)
    K = max(len(c) for c in pr.cost_units)
    cu = np.zeros((pr.n, K), dtype=np.int64)
    cq = np.zeros((pr.n, K))
    for i, (c, q) in enumerate(zip(pr.cost_units, pr.cost_probs, strict=True)):
        cu[i, : len(c)], cq[i, : len(c)] = c, q
    ccum = np.cumsum(cq, axis=1)
    belief = config_posterior(pr, pr.start_status[None, :])[0]  # recorded outcomes
    start = pr.start_budget if level is None else level
    reward = np.empty(episodes)
    spent = np.empty(episodes)
    for lo in range(0, episodes, CHUNK):
        hi = min(lo + CHUNK, episodes)
        reward[lo:hi], spent[lo:hi] = _episodes(
            solution, table, rng, hi - lo, start, belief, cu, ccum
        )
    compute = spent * pr.resolution
    return SimulationResult(
        policy=policy, reward=reward, compute=compute, value=reward - pr.price_per_unit * spent
    )


def _episodes(solution, table, rng, N, start, belief, cu, ccum):
    """(reward, budget units spent) of N episodes."""
    pr, sp = solution.problem, solution.space
    config = rng.choice(len(pr.prior), size=N, p=belief)
    s = np.full(N, sp.root, dtype=np.int64)
    b = np.full(N, start, dtype=np.int64)
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
    return reward, spent


@dataclass(frozen=True)
class PolicyCheck:
    """One policy's simulated mean against its exactly computed value.

    `agrees` when the two are within `z_limit` standard errors (or equal to 1e-9: a
    deterministic policy has no spread); compute percentiles are in the roadmap's unit.
    """

    policy: str
    mean: float
    stderr: float
    exact: float
    z: float
    agrees: bool
    compute_p10: float
    compute_p50: float
    compute_p90: float
    compute_mean: float
    reward_mean: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SimulationCheck:
    """`check_simulation`'s verdict: every policy's check, the optimal policy's first."""

    episodes: int
    seed: int
    z_limit: float
    policies: tuple[PolicyCheck, ...]

    @property
    def agrees(self) -> bool:
        """Whether every simulated mean agrees with its computed value."""
        return all(p.agrees for p in self.policies)


def check_simulation(
    solution: Solution,
    policies: Sequence[str] | None = None,
    *,
    episodes: int = 20_000,
    seed: int = 0,
    z_limit: float = 4.0,
) -> SimulationCheck:
    """Simulate each policy from the start state and compare with its exact value.

    `policies` defaults to the optimal policy and every heuristic. The mean of `episodes`
    returns is within `z_limit` standard errors of the exact value unless the solver (or
    the policy evaluation) is wrong: with the default 4, a false alarm has probability
    6e-5 per policy.
    """
    from derisk.planner._heuristics import HEURISTICS

    if episodes < 2:
        raise ValueError(f"episodes must be at least 2 (for a standard error), got {episodes}")
    names = ("optimal", *HEURISTICS) if policies is None else tuple(policies)
    checks = []
    for name in names:
        r = simulate(solution, name, episodes=episodes, seed=seed)
        exact = float(solution.start_value(name).value)
        z = (r.mean - exact) / r.stderr if r.stderr > 0 else 0.0
        p10, p50, p90 = (float(x) for x in np.percentile(r.compute, [10, 50, 90]))
        checks.append(
            PolicyCheck(
                policy=name,
                mean=r.mean,
                stderr=r.stderr,
                exact=exact,
                z=float(z),
                agrees=bool(abs(z) < z_limit or abs(r.mean - exact) < 1e-9),
                compute_p10=p10,
                compute_p50=p50,
                compute_p90=p90,
                compute_mean=float(r.compute.mean()),
                reward_mean=float(r.reward.mean()),
            )
        )
    return SimulationCheck(episodes=episodes, seed=seed, z_limit=z_limit, policies=tuple(checks))
