"""Approximate planning with certified bounds, for roadmaps past the exact solver.

The policy is a rollout over the best heuristic (Bertsekas, Tsitsiklis and Wu, "Rollout
algorithms for combinatorial optimization", 1997). At each decision the candidates (every
heuristic's pick and the base heuristic's best few) are each run first and then followed
on `rollouts` outcome scenarios drawn from the current posterior, the same scenarios for
every candidate; the continuation is the better of the base restricted to experiments on
a path to a reward ("/direct": it never pays for information, so the first move alone
decides whether information is worth buying) and the base itself (a parallel rollout). A
candidate replaces the default move only when it wins by `margin` paired standard errors.
The scenarios' uniforms are hashed from (seed, canonical state, budget left), so the
policy is a fixed function of the state: simulated and evaluated exactly, it is the same
policy. The policy returned is the better of the rollout and its base heuristic.

The interval [lower, upper] contains the optimal value:

- lower: the returned policy's value, computed exactly by a forward pass over the (state,
  budget) pairs it reaches when those are few, else simulated: the base heuristic's value
  plus the rollout's paired gain over it, each mean taken with zero-mean martingale terms
  as control variates (cross-fitted on halves), minus z standard errors.
- upper: the information relaxation (Brown, Smith and Sun, "Information relaxations and
  duality in stochastic dynamic programs", Operations Research 2010). In each sampled
  scenario every outcome, cost and the hypothesis configuration are known in advance, and
  the best plan is found exactly as a 0-1 program (a precedence-constrained knapsack,
  solved by HiGHS). Penalties `lam_i * (1[s_i] - p_i(c))` charged each time experiment i
  is started have mean zero under any policy that does not see the future (given the
  configuration c, the outcome of an untried experiment is a fresh draw with probability
  p_i(c)), so the mean stays an upper bound for any lam; lam is fitted to make it small.
  The mean is estimated as the base's value plus the relaxation's paired excess over the
  base's return, and the reported upper end adds z standard errors.

Both ends are statistical where simulated: with z = 2 each holds with probability about
97.7% (normal approximation), both together with at least 95%. A guard covers the case
the normal approximation misses (almost every sample equal: a rare event unseen), and a
deterministic cap (every experiment succeeding at its smallest cost) bounds the upper end.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from derisk.planner._heuristics import HEURISTICS, heuristic_scores
from derisk.planner._problem import DEAD, FAILED, SUCCESS, UNTRIED, PlanningProblem
from derisk.planner._states import config_posterior

DETERMINISTIC = tuple(h for h in HEURISTICS if h != "random")


@dataclass(frozen=True, kw_only=True)
class ApproxConfig:
    """How the approximate solver trades time for a tighter interval."""

    episodes: int = 8000  # episodes of the base heuristic for its value (when not exact)
    rollout_episodes: int = 500  # of those, how many the rollout policy also plays
    scenarios: int = 1000  # scenarios for the upper bound (and to choose the base)
    rollouts: int = 16  # scenarios per candidate in each rollout decision
    candidates: int = 2  # the base heuristic's best few, besides every heuristic's pick
    z: float = 2.0  # standard errors added to each end of the interval
    seed: int = 0
    exact_pairs: int = 100_000  # evaluate the policy exactly up to this many (state, budget)
    exact_states: int = 50_000  # states enumerated to try an exact evaluation
    penalty_rounds: int = 20  # subgradient steps on the penalties (0: no penalties)
    milp_seconds: float = 5.0  # per scenario; past it HiGHS's dual bound is used


# ---------------------------------------------------------------- the model, vectorised


@dataclass(frozen=True, eq=False)
class _Model:
    """The problem's arrays in the shapes the batched simulator needs."""

    problem: PlanningProblem
    clause_nodes: tuple[tuple[int, np.ndarray], ...]  # (node j, members of one clause)
    cu: np.ndarray  # (n, K) cost units, padded with the last one
    ccum: np.ndarray  # (n, K) cumulative cost probabilities
    mean_units: np.ndarray  # (n,)
    stochastic: np.ndarray  # (n,) bool
    hyp_nodes: tuple[np.ndarray, ...]  # nodes of each hypothesis
    by_node: tuple[tuple[np.ndarray, ...], ...]  # each node's clauses (member arrays)
    evidence: np.ndarray  # nodes whose outcome is evidence about a hypothesis
    log_p: np.ndarray  # (n, C) log p, floored so that 0 x log stays finite
    log_q: np.ndarray  # (n, C) log (1 - p), floored
    log_prior: np.ndarray  # (C,)
    impossible: float  # a log-likelihood below this has probability zero

    @classmethod
    def of(cls, problem: PlanningProblem) -> _Model:
        n = problem.n
        cl = []
        for j, clauses in enumerate(problem.clauses):
            for c in clauses:
                cl.append((j, np.array([i for i in range(n) if c >> i & 1], dtype=np.int64)))
        K = max(len(c) for c in problem.cost_units)
        cu = np.zeros((n, K), dtype=np.int64)
        cq = np.zeros((n, K))
        for i, (c, q) in enumerate(zip(problem.cost_units, problem.cost_probs, strict=True)):
            cu[i, : len(c)], cq[i, : len(c)] = c, q
            cu[i, len(c) :] = c[-1]
        ccum = np.cumsum(cq, axis=1)
        ccum[:, -1] = 1.0 + 1e-12  # a uniform draw always lands in a bin
        by_node = [[] for _ in range(n)]
        for j, m in cl:
            by_node[j].append(m)
        floor = 1e-300
        return cls(
            problem=problem,
            clause_nodes=tuple(cl),
            cu=cu,
            ccum=ccum,
            mean_units=problem.mean_cost,
            stochastic=np.array([len(c) > 1 for c in problem.cost_units]),
            hyp_nodes=tuple(
                np.flatnonzero(problem.hyp_of == h) for h in range(len(problem.hypotheses))
            ),
            by_node=tuple(tuple(b) for b in by_node),
            evidence=np.flatnonzero(problem.hyp_of >= 0),
            log_p=np.log(np.maximum(problem.p_table, floor)),
            log_q=np.log(np.maximum(1 - problem.p_table, floor)),
            log_prior=np.log(np.maximum(problem.prior, floor)),
            impossible=float(np.log(floor) / 2),
        )


def _any(rows: np.ndarray, members: np.ndarray) -> np.ndarray:
    """(F,) whether any of `members` is set, for node-major (n, F) booleans."""
    out = rows[members[0]].copy()
    for i in members[1:]:
        out |= rows[i]
    return out


def canonical(model: _Model, status: np.ndarray, *, direct: bool = False, collapse: bool = True):
    """(canonical status, runnable) for (F, n) statuses, with boolean arrays only (any n).

    The same collapsing as `_states.canonicalize` (which packs nodes into int64 bit
    masks): untried nodes that can no longer help earn a reward become DEAD, and tried
    nodes whose outcome no longer matters become DEAD. `runnable` is (F, n): untried,
    useful, and every prerequisite clause has a success. Works node-major, (n, F), so
    that each node's column is one contiguous row. With `direct`, a third (F, n) array:
    runnable and on a path to a reward (not only informative about a hypothesis); with
    `collapse` False as well, the canonical status is not built (None in its place).
    """
    pr = model.problem
    T = np.ascontiguousarray(status.T)  # (n, F)
    n, F = T.shape
    untried = T == UNTRIED
    succ = T == SUCCESS
    by_node = model.by_node
    alive = np.zeros((n, F), dtype=bool)
    can = succ.copy()
    for i in pr.topo:
        ok = untried[i].copy()
        for m in by_node[i]:
            ok &= _any(can, m)
        alive[i] = ok
        can[i] |= ok
    unmet = [[~_any(succ, m) for m in by_node[j]] for j in range(n)]
    target = alive & (pr.reward > 0)[:, None]
    first = None
    while True:
        useful = target.copy()
        for j in reversed(pr.topo):
            for k, m in enumerate(by_node[j]):
                need = useful[j] & unmet[j][k]
                for i in m:
                    useful[i] |= need & alive[i]
        if first is None:
            first = useful.copy()
        new_target = target.copy()
        for nodes in model.hyp_nodes:
            if len(nodes) < 2:
                continue
            count = useful[nodes].sum(axis=0)
            for i in nodes:
                new_target[i] |= alive[i] & (count - useful[i] > 0)
        if np.array_equal(new_target, target):
            break
        target = new_target
    runnable = untried & useful
    for j in range(n):
        for u in unmet[j]:
            runnable[j] &= ~u
    if direct and not collapse:
        return None, runnable.T.copy(), (runnable & first).T.copy()
    T[untried & ~useful] = DEAD
    keep = np.zeros((n, F), dtype=bool)
    for nodes in model.hyp_nodes:
        if len(nodes):
            keep[nodes] |= useful[nodes].any(axis=0)[None, :]
    for j in range(n):
        for m in by_node[j]:
            for i in m:
                keep[i] |= useful[j] & succ[i]
    tried = succ | (T == FAILED)
    T[tried & ~keep] = DEAD
    if direct:
        return T.T.copy(), runnable.T.copy(), (runnable & first).T.copy()
    return np.ascontiguousarray(T.T), np.ascontiguousarray(runnable.T)


def _posterior_p(model: _Model, status: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, n) posterior success probabilities and (F, C) configuration posterior.

    Bayes' rule as in `_states.config_posterior`, with the log-likelihoods of all rows
    as two matrix products; without hypotheses the prior p, no work.
    """
    pr = model.problem
    F = status.shape[0]
    if not pr.hypotheses:
        return np.broadcast_to(pr.p_table[:, 0], status.shape), np.ones((F, 1))
    h = model.evidence  # only these outcomes are evidence about a hypothesis
    s = status[:, h]
    ll = (s == SUCCESS) @ model.log_p[h] + (s == FAILED) @ model.log_q[h]  # (F, C)
    ll += model.log_prior[None, :]
    top = ll.max(axis=1, keepdims=True)
    w = np.exp(ll - top)
    post = w / w.sum(axis=1, keepdims=True)
    impossible = top[:, 0] < model.impossible  # a history of probability zero: the prior
    if impossible.any():
        post[impossible] = pr.prior
    return post @ pr.p_table.T, post


def _heuristic_pick(model, name, status, budget, runnable, p) -> np.ndarray:
    """(F,) the heuristic's choice (-1: nothing runnable and affordable)."""
    score = heuristic_scores(name, model.problem, p)
    ok = runnable & (model.problem.min_cost[None, :] <= budget[:, None])
    score = np.where(ok, score, -np.inf)
    best = np.argmax(score, axis=1)
    return np.where(ok.any(axis=1), best, -1)


def _step(model, status, budget, a, succ_draw, cost_draw):
    """Apply actions a (>= 0) in place; returns (reward gained, units spent)."""
    pr = model.problem
    rows = np.arange(len(a))
    c = cost_draw[rows, a]
    over = c > budget
    win = ~over & succ_draw[rows, a]
    status[rows, a] = np.where(over, DEAD, np.where(win, SUCCESS, FAILED))
    spent = np.where(over, budget, c)
    budget -= spent
    return np.where(win, pr.reward[a], 0.0), spent


def _draw(model, post, u_cfg, u_succ, u_cost):
    """Scenarios from uniforms: configuration (F,), success (F, n) bool, cost (F, n)."""
    pr = model.problem
    cfg = np.minimum((np.cumsum(post, axis=1) < u_cfg[:, None]).sum(axis=1), post.shape[1] - 1)
    succ = u_succ < pr.p_table.T[cfg]
    k = (model.ccum[None, :, :] < u_cost[:, :, None]).sum(axis=2)
    k = np.minimum(k, model.cu.shape[1] - 1)
    cost = np.take_along_axis(model.cu[None, :, :], k[:, :, None], axis=2)[:, :, 0]
    return cfg, succ, cost


def _follow(model, name, status, budget, succ, cost):
    """Run heuristic `name` to the end from every row; returns (F,) value earned.

    A name ending in "/direct" runs only experiments on a path to a reward, never one
    that is only informative: a base that does not spend on information lets the
    rollout's first step judge whether information is worth its cost."""
    name, _, variant = name.partition("/")
    price = model.problem.price_per_unit
    value = np.zeros(len(budget))
    active = np.arange(len(budget))
    status, budget = status.copy(), budget.copy()
    while len(active):
        st = status[active]
        # The posterior from every outcome seen (the canonical status would drop some
        # that no longer matter; the scores of the experiments left are the same).
        _, run, direct = canonical(model, st, direct=True, collapse=False)
        p, _ = _posterior_p(model, st)
        a = _heuristic_pick(model, name, st, budget[active], direct if variant else run, p)
        go = a >= 0
        active = active[go]
        if not len(active):
            break
        st, b = status[active], budget[active]
        r, spent = _step(model, st, b, a[go], succ[active], cost[active])
        status[active], budget[active] = st, b
        value[active] += r - price * spent
    return value


# ---------------------------------------------------------------- the rollout policy


@dataclass(frozen=True, eq=False)
class RolloutPolicy:
    """Rollout over a base heuristic; `actions(status, budget)` is deterministic.

    The `rollouts` scenarios of a decision come from uniforms hashed from (seed, the
    canonical state, the budget left): fixed per state, independent between states.
    """

    model: _Model
    base: str
    candidates: int
    rollouts: int
    weights: np.ndarray  # (n + 1,) uint64: hashes a state and its budget
    bases: tuple[str, ...] = ()  # heuristics that follow each candidate (default: base)
    margin: float = 2.0  # paired standard errors a candidate must beat the base's pick by
    use_rollout: bool = True  # False: the base heuristic itself
    chunk: int = 1 << 15  # rows (decision x candidate x scenario) simulated at once

    def decide(self, status: np.ndarray, budget: np.ndarray):
        """(F,) actions (-1 stop) and (F, A) candidate nodes with their (F, A) estimates."""
        F = len(budget)
        M = self.rollouts
        per = max(1, self.chunk // (M * (self.candidates + len(DETERMINISTIC))))
        acts, cands, qs = [], [], []
        for lo in range(0, F, per):
            a, c, q = self._decide(status[lo : lo + per], budget[lo : lo + per])
            acts.append(a)
            cands.append(c)
            qs.append(q)
        if not acts:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), np.int64), np.zeros((0, 0))
        return np.concatenate(acts), np.concatenate(cands), np.concatenate(qs)

    def actions(self, status: np.ndarray, budget: np.ndarray) -> np.ndarray:
        return self.decide(status, budget)[0]

    def _uniforms(self, status, budget) -> np.ndarray:
        """(F, M, 2n + 1) uniforms in [0, 1), a fixed function of each row's state."""
        F, n = status.shape
        key = np.concatenate([status.astype(np.uint64), budget.astype(np.uint64)[:, None]], 1)
        with np.errstate(over="ignore"):
            h = _mix((key * self.weights[None, :]).sum(axis=1, dtype=np.uint64))
            counter = np.arange(self.rollouts * (2 * n + 1), dtype=np.uint64)
            z = _mix(h[:, None] ^ (counter[None, :] * np.uint64(0xD1B54A32D192ED03)))
        u = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
        return u.reshape(F, self.rollouts, 2 * n + 1)

    def __post_init__(self):
        if not self.bases:  # the base restricted to reward paths first, then the base
            object.__setattr__(self, "bases", (f"{self.base}/direct", self.base))

    def _decide(self, status, budget):
        model = self.model
        pr = model.problem
        status, run = canonical(model, status)
        F, n = status.shape
        p, post = _posterior_p(model, status)
        if not self.use_rollout:
            a = _heuristic_pick(model, self.base, status, budget, run, p)
            return a, a[:, None], np.full((F, 1), np.nan)
        ok = run & (pr.min_cost[None, :] <= budget[:, None])
        # candidates: each heuristic's pick, then the base heuristic's next best
        # slot 0, the default move, is the first base's pick ("/direct": among the
        # experiments on a path to a reward, when there is one)
        first, _, variant = self.bases[0].partition("/")
        slots = [_heuristic_pick(model, first, status, budget, run, p)]
        if variant:
            _, _, direct = canonical(model, status, direct=True)
            pick = _heuristic_pick(model, first, status, budget, direct, p)
            slots[0] = np.where(pick >= 0, pick, slots[0])
        slots += [_heuristic_pick(model, h, status, budget, run, p) for h in DETERMINISTIC]
        score = np.where(ok, heuristic_scores(self.base, pr, p), -np.inf)
        order = np.argsort(-score, axis=1, kind="stable")[:, : self.candidates]
        for k in range(order.shape[1]):
            slots.append(np.where(np.isfinite(score[np.arange(F), order[:, k]]), order[:, k], -1))
        cand = np.stack(slots, axis=1)  # (F, A)
        for k in range(1, cand.shape[1]):  # a repeated candidate is evaluated once
            dup = (cand[:, :k] == cand[:, k : k + 1]).any(axis=1)
            cand[dup, k] = -1
        A = cand.shape[1]
        M = self.rollouts
        u = self._uniforms(status, budget)  # (F, M, 2n + 1)
        # (F x M) scenarios from the posterior at each row; the same M for every candidate
        _, succ, cost = _draw(
            model,
            np.repeat(post, M, axis=0),
            u[:, :, 0].reshape(-1),
            u[:, :, 1 : n + 1].reshape(-1, n),
            u[:, :, n + 1 :].reshape(-1, n),
        )
        fa, ma = np.nonzero(cand >= 0)  # (row, slot) pairs to simulate
        vals = np.zeros((F, A, M))
        q = np.full((F, A), -np.inf)
        if len(fa):
            rows = (fa[:, None] * M + np.arange(M)[None, :]).reshape(-1)
            st = np.repeat(status[fa], M, axis=0)
            b = np.repeat(budget[fa], M).astype(np.int64)
            a = np.repeat(cand[fa, ma], M)
            r, spent = _step(model, st, b, a, succ[rows], cost[rows])
            first = r - pr.price_per_unit * spent
            # Each candidate is followed by every base heuristic; it is worth the best
            # of them (a parallel rollout: never worse than any one of its bases).
            best = None
            for h in self.bases:
                v = (first + _follow(model, h, st, b, succ[rows], cost[rows])).reshape(-1, M)
                if best is None:
                    best = v
                else:
                    take = v.mean(axis=1) > best.mean(axis=1)
                    best[take] = v[take]
            vals[fa, ma] = best
            q[fa, ma] = best.mean(axis=1)
        # Leave the base heuristic's pick (slot 0) only for a candidate that beats it on
        # the paired scenarios by `self.margin` standard errors: with few scenarios an
        # unpaired argmax often swaps a good move for a lucky one. (Slot 0 is empty only
        # when nothing is runnable and affordable, and then every slot is.)
        valid = cand >= 0
        diff = vals - vals[:, :1, :]
        gain = diff.mean(axis=2)
        se = diff.std(axis=2, ddof=1) / np.sqrt(M)
        better = valid & (gain > self.margin * se) & (gain > 1e-12)
        better[:, 0] = False
        pick = np.where(better.any(axis=1), np.argmax(np.where(better, gain, -np.inf), axis=1), 0)
        rows_f = np.arange(F)
        chosen = cand[rows_f, pick]
        qbest = q[rows_f, pick]
        # Stopping is worth 0: stop when the chosen move loses on the bank by the margin
        # (with a price of 0 running never loses).
        sse = vals[rows_f, pick].std(axis=1, ddof=1) / np.sqrt(M)
        stop = ~np.isfinite(qbest) | ((qbest < -self.margin * sse) & (qbest < -1e-12))
        act = np.where(stop, -1, chosen)
        return act, cand, q


def make_policy(problem: PlanningProblem, *, base: str, config: ApproxConfig) -> RolloutPolicy:
    model = _Model.of(problem)
    rng = np.random.default_rng([config.seed, 1])
    weights = rng.integers(1, 2**63, size=problem.n + 1, dtype=np.uint64) * np.uint64(2) + 1
    return RolloutPolicy(
        model=model,
        base=base,
        candidates=config.candidates,
        rollouts=config.rollouts,
        weights=weights,
    )


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (Steele, Lea and Flood 2014), elementwise on uint64."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


# ---------------------------------------------------------------- simulation


def _start(model: _Model, N: int):
    pr = model.problem
    status = np.repeat(pr.start_status[None, :].astype(np.int8), N, axis=0)
    budget = np.full(N, pr.start_budget, dtype=np.int64)
    return status, budget


def simulate_policy(model: _Model, act, scenarios) -> dict:
    """One episode of a batched policy `act(status, budget) -> actions` from the start per
    scenario (configuration (N,), success (N, n), cost (N, n) from `_scenarios`).

    Returns per-episode "value" (N,) and terms of mean zero under any policy: "dev"
    (N, n), for each experiment started, its outcome minus its posterior probability at
    that moment; "cdev" (N, n), its drawn cost minus its mean cost; "cfg" (N, C), the
    indicator of the scenario's hypothesis configuration minus its probability.
    """
    pr = model.problem
    cfg, succ, cost = scenarios
    N = len(succ)
    status, budget = _start(model, N)
    value = np.zeros(N)
    spent_all = np.zeros(N)
    won = np.zeros((N, pr.n), dtype=bool)
    dev = np.zeros((N, pr.n))
    cdev = np.zeros((N, pr.n))
    active = np.arange(N)
    while len(active):
        st, b = status[active], budget[active]
        a = act(st, b)
        go = a >= 0
        active, st, b, a = active[go], st[go], b[go], a[go]
        if not len(active):
            break
        p, _ = _posterior_p(model, canonical(model, st)[0])
        pa = p[np.arange(len(a)), a]
        dev[active, a] += succ[active, a] - pa
        cdev[active, a] += cost[active, a] - model.mean_units[a]
        r, spent = _step(model, st, b, a, succ[active], cost[active])
        status[active], budget[active] = st, b
        value[active] += r - pr.price_per_unit * spent
        spent_all[active] += spent
        won[active, a] = st[np.arange(len(a)), a] == SUCCESS
    post0 = config_posterior(pr, pr.start_status[None, :])
    onehot = (cfg[:, None] == np.arange(post0.shape[1])[None, :]) - post0
    return {
        "value": value,
        "dev": dev,
        "cdev": cdev,
        "cfg": onehot,
        "spent": spent_all,
        "won": won,
    }


def heuristic_act(model: _Model, name: str):
    def act(status, budget):
        canon, run = canonical(model, status)
        p, _ = _posterior_p(model, canon)
        return _heuristic_pick(model, name, canon, budget, run, p)

    return act


def controlled_mean(y: np.ndarray, sim: dict) -> tuple[float, float]:
    """Mean of per-scenario `y` with a policy's martingale terms on the same scenarios as
    control variates (they have mean zero exactly), cross-fitted.

    Returns (mean, standard error). Coefficients fitted on one half of the scenarios are
    applied to the other half, so each half's estimate is unbiased.
    """
    X = np.concatenate([sim["dev"], sim["cdev"], sim["cfg"]], axis=1)
    X = X[:, np.abs(X).sum(axis=0) > 0]
    N = len(y)
    if len(y) < 4 * (X.shape[1] + 2):  # too few scenarios to fit the coefficients
        se = float(y.std(ddof=1) / np.sqrt(N)) if N > 1 else float("nan")
        return float(y.mean()), se
    half = np.arange(N) % 2 == 0
    resid = np.empty(N)
    for fit, use in ((half, ~half), (~half, half)):
        beta = np.linalg.lstsq(X[fit] - X[fit].mean(0), y[fit] - y[fit].mean(), rcond=None)[0]
        resid[use] = y[use] - X[use] @ beta
    return float(resid.mean()), float(resid.std(ddof=1) / np.sqrt(N))


# ---------------------------------------------------------------- the upper bound


def _scenarios(model: _Model, S: int, rng: np.random.Generator):
    pr = model.problem
    post0 = config_posterior(pr, pr.start_status[None, :])
    cfg, succ, cost = _draw(
        model, np.repeat(post0, S, axis=0), rng.random(S), rng.random((S, pr.n)),
        rng.random((S, pr.n)),
    )  # fmt: skip
    return cfg, succ, cost


class _Relaxation:
    """The deterministic selection problem of one scenario, as a 0-1 program.

    Variables x_i (experiment i is started and completes, paying its drawn cost) and y_i
    (started and cut off by the budget: a relaxation lets it cost nothing). Constraints:
    the drawn costs of completed runs fit the budget; every clause of a started
    experiment has a completed success; x_i + y_i <= 1; at most one cut-off when every
    cost is at least one unit (after a cut-off nothing is left).
    """

    def __init__(self, model: _Model):
        pr = model.problem
        self.model = model
        n = pr.n
        untried = pr.start_status == UNTRIED
        succ0 = pr.start_status == SUCCESS
        rows = []
        for j, m in model.clause_nodes:
            if untried[j] and not succ0[m].any():
                rows.append((j, m[untried[m]]))
        self.rows = rows
        self.untried = untried
        self.one_cut = bool(pr.min_cost.min() >= 1)
        self.n = n

    def solve(self, succ, cost, lam, pc, seconds):
        """Best penalised value of one scenario: succ (n,) bool, cost (n,), pc (n,) p(c).

        Returns (value, proven optimal, (n,) started): value is HiGHS's dual bound when
        the time limit stops it first (still an upper bound on the scenario's best).
        """
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_matrix

        model, n = self.model, self.n
        pr = model.problem
        B = pr.start_budget
        pen = lam * (succ - pc)
        gx = np.where(succ, pr.reward, 0.0) - pen - pr.price_per_unit * cost
        gy = -pen
        ux = self.untried & (cost <= B)
        uy = self.untried & model.stochastic & (gy > 0)
        started = np.zeros(n)
        if not ((gx > 0) & ux).any() and not uy.any():
            return 0.0, True, started  # nothing is worth starting
        r: list = [np.zeros(ux.sum(), dtype=np.int64)]
        c: list = [np.flatnonzero(ux)]
        v: list = [cost[ux].astype(float)]
        ub = [float(B)]
        k = 1
        for j, m in self.rows:
            if not (ux[j] or uy[j]):
                continue
            ms = m[succ[m] & ux[m]]
            r.append(np.full(2 + len(ms), k))
            c.append(np.concatenate([[j, n + j], ms]))
            v.append(np.concatenate([[1.0, 1.0], -np.ones(len(ms))]))
            ub.append(0.0)
            k += 1
        for j in np.flatnonzero(ux & uy):
            r.append(np.array([k, k]))
            c.append(np.array([j, n + j]))
            v.append(np.ones(2))
            ub.append(1.0)
            k += 1
        if self.one_cut and uy.sum() > 1:
            iy = np.flatnonzero(uy)
            r.append(np.full(len(iy), k))
            c.append(n + iy)
            v.append(np.ones(len(iy)))
            ub.append(1.0)
            k += 1
        A = coo_matrix(
            (np.concatenate(v), (np.concatenate(r), np.concatenate(c))), shape=(k, 2 * n)
        ).tocsr()
        res = milp(
            -np.concatenate([gx, gy]),
            integrality=np.ones(2 * n),
            bounds=Bounds(np.zeros(2 * n), np.concatenate([ux, uy]).astype(float)),
            constraints=LinearConstraint(A, -np.inf, np.array(ub)),
            options={"time_limit": seconds},
        )
        if res.x is not None:
            started = np.round(res.x[:n] + res.x[n:])
        if res.status == 0:
            return float(-res.fun), True, started
        bound = getattr(res, "mip_dual_bound", None)
        if bound is None or not np.isfinite(bound):  # no bound at all: every gain counts
            return float(np.maximum(gx * ux, 0).sum() + gy[uy].max(initial=0.0)), False, started
        return float(-bound), False, started


def _reachable_reward(model: _Model, succ: np.ndarray) -> np.ndarray:
    """(S,) the rewards of every experiment a chain of successes could reach from the
    start in each scenario, budget ignored: no plan earns more."""
    pr = model.problem
    ok = np.ascontiguousarray(succ.T) & (pr.start_status == UNTRIED)[:, None]  # (n, S)
    done = np.repeat((pr.start_status == SUCCESS)[:, None], succ.shape[0], axis=1)
    for i in pr.topo:
        reach = ok[i].copy()
        for m in model.by_node[i]:
            reach &= _any(done, m)
        done[i] |= reach
        ok[i] = reach
    return pr.reward @ ok


def _relax(model, scen, ref, lam, config):
    """Relaxation values of scenarios, screened: without penalties, a scenario in which the
    base policy already earns every reachable reward has relaxation = its return (the
    relaxation is at least any policy's return and at most that reward), no program
    needed. Returns (values, proven optimal, programs solved)."""
    cfg, succ, cost = scen
    vals = np.empty(len(cfg))
    screen = np.zeros(len(cfg), dtype=bool)
    if not lam.any():
        screen = _reachable_reward(model, succ) <= ref["value"] + 1e-9
        vals[screen] = ref["value"][screen]
    idx = np.flatnonzero(~screen)
    v, proven, _ = relaxation_values(
        model, succ[idx], cost[idx], cfg[idx], lam, config.milp_seconds
    )
    vals[idx] = v
    return vals, int(proven + screen.sum()), len(idx)


def relaxation_values(model, succ, cost, cfg, lam, seconds=5.0, progress=None):
    """(S,) best penalised value of each scenario, how many were proven optimal, and
    (S, n) which experiments each scenario's best plan starts."""
    rel = _Relaxation(model)
    pr = model.problem
    out = np.empty(len(cfg))
    started = np.zeros((len(cfg), pr.n))
    proven = 0
    with _quiet_stdout():
        for s in range(len(cfg)):
            pc = pr.p_table[:, cfg[s]]
            out[s], ok, started[s] = rel.solve(succ[s], cost[s], lam, pc, seconds)
            proven += ok
            if progress is not None:
                progress(1)
    return out, proven, started


@contextlib.contextmanager
def _quiet_stdout():
    """Send file descriptor 1 to /dev/null: HiGHS (C++) sometimes prints a debug line
    on stdout whatever its options say, and stdout carries the commands' JSON."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # no real stdout (a test runner)
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def brute_force_relaxation(model, succ, cost, lam, pc) -> float:
    """The same selection problem by enumerating every order-free plan (tiny n only).

    A plan is a set of completed runs (each with its outcome) whose drawn costs fit the
    budget and whose clauses are met by completed successes, plus at most one cut-off run.
    """
    pr = model.problem
    untried = np.flatnonzero(pr.start_status == UNTRIED)
    succ0 = pr.start_status == SUCCESS
    pen = lam * (succ - pc)
    best = 0.0
    for mask in range(1 << len(untried)):
        chosen = [untried[k] for k in range(len(untried)) if mask >> k & 1]
        if sum(cost[i] for i in chosen) > pr.start_budget:
            continue
        done = succ0.copy()
        for i in chosen:
            done[i] |= bool(succ[i])
        ok = True
        for j, m in model.clause_nodes:
            if j in chosen and not done[m].any():
                ok = False
        if not ok:
            continue
        val = sum(
            (pr.reward[i] if succ[i] else 0.0) - pen[i] - pr.price_per_unit * cost[i]
            for i in chosen
        )
        extra = 0.0
        for j in untried:
            if j in chosen or not model.stochastic[j]:
                continue
            if all(done[m].any() for jj, m in model.clause_nodes if jj == j):
                extra = max(extra, -pen[j])
        best = max(best, val + extra)
    return float(best)


# ---------------------------------------------------------------- the solver


@dataclass(frozen=True, eq=False)
class ApproxSolution:
    """What the approximate solver found.

    lower / upper: the certified interval (lower = the policy's value, minus z standard
    errors when simulated; upper = the relaxation's mean plus z standard errors).
    policy_value / policy_se: the returned policy's value (se 0 when computed exactly).
    relaxation / relaxation_se: the penalised relaxation's mean and standard error.
    heuristics: name -> (value, se) of each heuristic from the same start, simulated.
    """

    problem: PlanningProblem
    policy: RolloutPolicy
    lower: float
    upper: float
    policy_value: float
    policy_se: float
    exact_lower: bool
    relaxation: float
    relaxation_se: float
    perfect_information: float  # the relaxation without penalties (same scenarios)
    scenarios: int
    proven: int  # scenarios whose 0-1 program was solved to optimality
    episodes: int
    base: str
    base_value: float  # the base heuristic's value (exact or simulated) and its se
    base_se: float
    expected_compute: float  # the policy's, in budget units (simulated or exact)
    p_reward: dict  # rewarded node -> the policy's probability of earning it
    heuristics: dict
    z: float
    seconds: float
    timings: dict = field(default_factory=dict)
    solver: str = "approx"

    @property
    def bounds(self) -> tuple[float, float]:
        return (self.lower, self.upper)

    @property
    def gap(self) -> float:
        return self.upper - self.lower

    @property
    def root_value(self) -> float:
        return self.policy_value

    def action(self, outcomes: dict[str, str], budget: float) -> str | None:
        """Id of the experiment the policy runs next after `outcomes` (id -> "success",
        "failure" or "cut") with `budget` left, or None to stop."""
        pr = self.problem
        status = pr.start_status.astype(np.int8).copy()
        for eid, out in outcomes.items():
            status[pr.ids.index(eid)] = {"success": SUCCESS, "failure": FAILED, "cut": DEAD}[out]
        b = min(pr.level_of(budget), pr.levels)
        a = int(self.policy.actions(status[None, :], np.array([b]))[0])
        return None if a < 0 else pr.ids[a]

    def next_action(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(node or -1, candidate nodes, their rollout estimates) at the planning start."""
        pr = self.problem
        st = pr.start_status[None, :].astype(np.int8)
        a, cand, q = self.policy.decide(st, np.array([pr.start_budget]))
        return int(a[0]), cand[0], q[0]


def _exact_policy_value(problem, act, config):
    """A batched policy's exact value from the planning start: one forward pass over the
    (state, budget) pairs it reaches builds its table there, then `start_value`. None
    when the state space or the reached pairs are over the configured limits."""
    from derisk.errors import ProblemTooLarge
    from derisk.planner._evaluate import start_value
    from derisk.planner._states import enumerate_states

    try:
        space = enumerate_states(problem, max_states=config.exact_states, max_bytes=2**31)
    except (ProblemTooLarge, OverflowError, ValueError):
        return None
    S, L = space.size, problem.levels + 1
    if space.size * L > 50 * config.exact_pairs:  # (S, L) tables alone: too large
        return None
    table = np.full((S, L), -1, dtype=np.int8)
    reach = np.zeros((S, L), dtype=bool)
    reach[space.root, problem.start_budget] = True
    pairs = 0
    for layer in reversed(space.layers()):
        si, bi = np.nonzero(reach[layer])
        if not len(si):
            continue
        s = layer[si]
        pairs += len(s)
        if pairs > config.exact_pairs:
            return None
        a = act(space.status[s], bi.astype(np.int64))
        table[s, bi] = a
        go = a >= 0
        for i in np.unique(a[go]):
            sel = go & (a == i)
            ss, bb = s[sel], bi[sel]
            for c in problem.cost_units[i]:
                fit = bb >= c
                reach[space.succ_s[ss[fit], i], bb[fit] - c] = True
                reach[space.succ_f[ss[fit], i], bb[fit] - c] = True
                if (~fit).any():
                    reach[space.succ_d[ss[~fit], i], 0] = True
    return start_value(problem, space, table)


def solve_approx(
    problem: PlanningProblem, *, config: ApproxConfig = ApproxConfig(), progress=None
) -> ApproxSolution:
    """Rollout policy with a certified interval on the optimal value (see module doc).

    `progress(k)` is called with the work done (steps of `APPROX_STEPS`).

    >>> from derisk.graphs import random_roadmap
    >>> from derisk.planner import compile_roadmap
    >>> sol = solve_approx(compile_roadmap(random_roadmap(5, seed=0)),
    ...                    config=ApproxConfig(episodes=200, scenarios=100))
    >>> sol.lower <= sol.upper
    True
    """
    for name in ("episodes", "scenarios", "rollouts", "candidates"):
        if getattr(config, name) < 2:
            raise ValueError(f"ApproxConfig.{name} must be at least 2, got {getattr(config, name)}")
    if not (np.isfinite(config.z) and config.z >= 0):
        raise ValueError(f"ApproxConfig.z must be a non-negative number, got {config.z}")
    t0 = time.perf_counter()
    timings = {}
    model = _Model.of(problem)
    tick = progress or (lambda _k: None)
    rel = _Relaxation(model)
    # Every scenario's best plan is worth at most the plan that assumes every experiment
    # succeeds at its smallest cost: a deterministic cap on the optimum, and the range
    # of any policy's return for the small-sample guard.
    with _quiet_stdout():
        cap = rel.solve(
            np.ones(problem.n, dtype=bool), problem.min_cost, np.zeros(problem.n),
            np.ones(problem.n), config.milp_seconds,
        )[0]  # fmt: skip
    spread = cap + problem.price_per_unit * problem.start_budget

    def guard(values: np.ndarray) -> float:
        # When almost every sampled value is the same (a rare success missing from the
        # sample), the standard error says nothing; then z^2 x range / N, about the
        # "rule of three" bound for an event not seen in N draws, is added.
        common = np.median(values)
        return config.z**2 * spread / len(values) if (values != common).sum() < 10 else 0.0

    # Three independent sets of scenarios: one to choose the base heuristic, one for
    # its value (and the rollout's paired gain), one for the relaxation; estimating on
    # the set a choice was made on would bias both ends the wrong way.
    choice = _scenarios(model, config.scenarios, np.random.default_rng([config.seed, 2]))
    heur = {}
    for h in HEURISTICS:
        rng = np.random.default_rng([config.seed, 3])
        act = heuristic_act(model, h) if h != "random" else _random_act(model, rng)
        sim_h = simulate_policy(model, act, choice)
        heur[h] = controlled_mean(sim_h["value"], sim_h)
    base = max(DETERMINISTIC, key=lambda h: heur[h][0])
    timings["heuristics_s"] = time.perf_counter() - t0
    tick(1)
    # 2. the rollout policy and the base heuristic: exact when the states they reach are
    # few. The policy returned is the better of the two.
    t1 = time.perf_counter()
    rollout = make_policy(problem, base=base, config=config)
    plain = replace(rollout, use_rollout=False)
    ev_r = _exact_policy_value(problem, rollout.actions, config)
    ev_b = None if ev_r is None else _exact_policy_value(problem, plain.actions, config)
    rewarded = np.flatnonzero(problem.reward > 0)
    exact = ev_r is not None and ev_b is not None
    if exact:
        use_r = ev_r.value >= ev_b.value
        ev = ev_r if use_r else ev_b
        policy, mean, se = (rollout if use_r else plain), ev.value, 0.0
        base_value, base_se = ev_b.value, 0.0
        compute, p_reward = ev.compute, ev.p_reward
        lower = mean
    else:
        own = _scenarios(model, config.episodes, np.random.default_rng([config.seed, 4]))
        ref = simulate_policy(model, plain.actions, own)
        base_value, base_se = controlled_mean(ref["value"], ref)
        base_lower = base_value - config.z * base_se - guard(ref["value"])
        # The rollout's paired gain over the base on the same scenarios: the difference
        # varies far less than either. The larger of the two lower confidence bounds is
        # kept (each holds with probability 1 - a, the larger with at least 1 - 2a).
        k = min(config.episodes, config.rollout_episodes)
        sim = simulate_policy(model, rollout.actions, tuple(x[:k] for x in own))
        both = {key: np.concatenate([sim[key], ref[key][:k]], axis=1) for key in ("dev", "cdev")}
        both["cfg"] = sim["cfg"]
        diff = sim["value"] - ref["value"][:k]
        gain, gain_se = controlled_mean(diff, both)
        r_se = float(np.hypot(base_se, gain_se))
        r_lower = base_lower + config.z * base_se + gain - config.z * r_se - guard(diff)
        if r_lower > base_lower:
            policy, mean, se, used, lower = rollout, base_value + gain, r_se, sim, r_lower
        else:
            policy, mean, se, used, lower = plain, base_value, base_se, ref, base_lower
        compute = float(used["spent"].mean())
        p_reward = used["won"][:, rewarded].mean(axis=0)
    timings["policy_s"] = time.perf_counter() - t1
    tick(1)
    # 3. the information relaxation, as the base heuristic's value plus the relaxation's
    # paired excess over the base's return on the same scenarios; penalised when the
    # plain one leaves a gap worth closing
    t2 = time.perf_counter()
    rng_u = np.random.default_rng([config.seed, 5])
    scen = _scenarios(model, config.scenarios, rng_u)
    ref_u = simulate_policy(model, plain.actions, scen)
    zero = np.zeros(problem.n)
    pi, proven, solved = _relax(model, scen, ref_u, zero, config)
    # Where the relaxation equals the base's return in almost every scenario, the
    # small-sample guard dominates the gap; screened scenarios cost no 0-1 program, so
    # draw up to 9 x more (with at most as many programs again) to shrink it.
    extra = 0
    while guard(pi - ref_u["value"]) > 0 and extra < 9 * config.scenarios:
        more = _scenarios(model, config.scenarios, rng_u)
        ref_m = simulate_policy(model, plain.actions, more)
        v, pr_m, n_m = _relax(model, more, ref_m, zero, config)
        pi = np.concatenate([pi, v])
        ref_u = {k: np.concatenate([ref_u[k], ref_m[k]]) for k in ref_u}
        proven, solved, extra = proven + pr_m, solved + n_m, extra + config.scenarios
        if solved > 2 * config.scenarios:
            break
    vals, lam = pi, zero
    pi_excess = controlled_mean(pi - ref_u["value"], ref_u)[0]
    if not extra and pi_excess > 0.005 * max(abs(base_value), 1e-12):
        t3 = time.perf_counter()
        lam = _fit_penalties(model, config, tick)
        timings["penalties_s"] = time.perf_counter() - t3
        if lam.any():
            cfg, succ, cost = scen
            vals, proven, _ = relaxation_values(model, succ, cost, cfg, lam, config.milp_seconds)
    excess, excess_se = controlled_mean(vals - ref_u["value"], ref_u)
    rmean = base_value + excess
    rse = float(np.hypot(base_se, excess_se))
    upper = min(rmean + config.z * rse + guard(vals - ref_u["value"]), cap)
    pi_mean = base_value + pi_excess
    timings["upper_s"] = time.perf_counter() - t2
    tick(1)
    return ApproxSolution(
        problem=problem,
        policy=policy,
        lower=float(lower),
        upper=float(upper),
        policy_value=float(mean),
        policy_se=float(se),
        exact_lower=exact,
        relaxation=rmean,
        relaxation_se=rse,
        perfect_information=float(pi_mean),
        scenarios=len(vals),
        proven=int(proven),
        episodes=0 if exact else config.episodes,
        base=base,
        base_value=float(base_value),
        expected_compute=float(compute),
        p_reward={int(j): float(q) for j, q in zip(rewarded, p_reward, strict=True)},
        base_se=float(base_se),
        heuristics=heur,
        z=config.z,
        seconds=time.perf_counter() - t0,
        timings=timings,
    )


APPROX_STEPS = 3


def _random_act(model, rng):
    pr = model.problem

    def act(status, budget):
        canon, run = canonical(model, status)
        ok = run & (pr.min_cost[None, :] <= budget[:, None])
        counts = ok.sum(axis=1)
        pick = (rng.random(len(budget)) * np.maximum(counts, 1)).astype(np.int64)
        a = np.argmax(np.cumsum(ok, axis=1) > pick[:, None], axis=1)
        return np.where(counts > 0, a, -1)

    return act


def _fit_penalties(model, config, tick) -> np.ndarray:
    """Penalty weights lam: stochastic subgradient steps on the mean penalised
    relaxation (convex in lam: a mean of maxima of functions affine in lam), from lam = 0
    (plain perfect information), on scenarios of their own so that the final estimate,
    on fresh scenarios, stays unbiased. Keeps lam = 0 unless the fitted lam does better
    on its own training scenarios."""
    pr = model.problem
    lam = np.zeros(pr.n)
    if config.penalty_rounds < 1:
        return lam
    rng = np.random.default_rng([config.seed, 6])
    batch = max(8, config.scenarios // 20)
    step0 = 0.5 * max(float(pr.reward.max()), 1e-9)
    avg, total = np.zeros(pr.n), 0.0
    for t in range(config.penalty_rounds):
        cfg, succ, cost = _scenarios(model, batch, rng)
        _, _, started = relaxation_values(model, succ, cost, cfg, lam, config.milp_seconds)
        pc = pr.p_table[:, cfg].T  # (S, n)
        grad = -((succ - pc) * started).mean(axis=0)
        lam = lam - step0 / np.sqrt(t + 1) * grad
        w = t + 1.0  # later iterates weigh more
        avg += w * lam
        total += w
        tick(0)
    lam = avg / total
    cfg, succ, cost = _scenarios(model, 4 * batch, rng)
    fitted = relaxation_values(model, succ, cost, cfg, lam, config.milp_seconds)[0].mean()
    plain = relaxation_values(model, succ, cost, cfg, 0 * lam, config.milp_seconds)[0].mean()
    return lam if fitted < plain else 0 * lam


__all__ = ["ApproxConfig", "ApproxSolution", "RolloutPolicy", "solve_approx"]


def approx_curve(
    problem: PlanningProblem,
    levels: np.ndarray,
    *,
    config: ApproxConfig = ApproxConfig(),
    progress=None,
) -> list[ApproxSolution]:
    """One approximate solve per starting budget level (a what-if curve with bounds)."""
    out = []
    for b in levels:
        sol = solve_approx(replace(problem, start_budget=int(b)), config=config)
        out.append(sol)
        if progress is not None:
            progress(1)
    return out


@dataclass(frozen=True)
class ApproxSimulation:
    """One policy simulated from the planning start (values; compute in budget units)."""

    policy: str
    value: np.ndarray  # (N,)
    compute: np.ndarray  # (N,)

    @property
    def mean(self) -> float:
        return float(self.value.mean())

    @property
    def stderr(self) -> float:
        return float(self.value.std(ddof=1) / np.sqrt(len(self.value)))


def simulate_approx(
    sol: ApproxSolution, *, episodes: int, policy_episodes: int | None = None, seed: int = 0
) -> list[ApproxSimulation]:
    """Simulate the returned policy (`policy_episodes`, default `episodes`) and every
    heuristic (`episodes`) on fresh scenarios from the true model; the policy's mean must
    lie in the interval up to its own standard error."""
    if episodes < 2:
        raise ValueError(f"episodes must be at least 2, got {episodes}")
    model = sol.policy.model
    rng = np.random.default_rng([seed, 7])
    scen = _scenarios(model, episodes, rng)
    k = episodes if policy_episodes is None else max(2, min(policy_episodes, episodes))
    sim = simulate_policy(model, sol.policy.actions, tuple(x[:k] for x in scen))
    out = [ApproxSimulation("policy", sim["value"], sim["spent"])]
    for h in HEURISTICS:
        act = heuristic_act(model, h) if h != "random" else _random_act(model, rng)
        r = simulate_policy(model, act, scen)
        out.append(ApproxSimulation(h, r["value"], r["spent"]))
    return out


__all__ += ["ApproxSimulation", "approx_curve", "simulate_approx"]
