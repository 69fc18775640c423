"""What `derisk plan` and `derisk whatif` show, computed as plain data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from derisk.planner._heuristics import HEURISTICS
from derisk.planner._solve import Solution

# Branch probabilities at or below this are float noise (see `policy_tree`): far below any
# probability a roadmap states (and any a law gives that matters to a plan).
PROB_NOISE = 1e-12


@dataclass(frozen=True)
class PlanReport:
    next: str | None
    value: float
    expected_compute: float  # in the roadmap's unit
    p_reward: dict[str, float]
    actions: list[dict]  # runnable now: id, title, p, cost, q, regret
    heuristics: dict[str, dict]  # name -> first pick, exact value, regret
    tree: dict | None
    states: int
    solve_seconds: float
    budget_left: float
    # ids whose prerequisites are met but which the budget left cannot start (None: not
    # computed, as by the approximate solver's report)
    unaffordable: list[str] | None = None


def plan_report(solution: Solution, *, depth: int = 3, progress=None) -> PlanReport:
    """The next experiment, the runnable ones' Q-values, and the plan's and each
    heuristic's exact value from the start. `progress(1)` after each policy's
    evaluation (the optimal one, then each heuristic)."""
    pr, sp = solution.problem, solution.space
    s, b = sp.root, pr.start_budget
    ev = solution.start_value("optimal")
    if progress is not None:
        progress(1)
    value = float(solution.values[s, b])
    q = solution.q_values()
    actions = []
    for i in np.flatnonzero(np.isfinite(q)):
        actions.append(
            {
                "id": pr.ids[i],
                "title": pr.titles[i],
                "p": float(sp.p[s, i]),
                "cost": float(pr.mean_cost[i] * pr.resolution),
                "q": float(q[i]),
                "regret": value - float(q[i]),
            }
        )
    pick = int(solution.policy[s, b])
    chosen = None if pick < 0 else pr.ids[pick]
    actions.sort(key=lambda x: (x["id"] != chosen, -x["q"]))  # the pick first, even on a tie
    heur = heuristic_summary(solution, progress)
    a = int(solution.policy[s, b])
    return PlanReport(
        next=None if a < 0 else pr.ids[a],
        value=value,
        expected_compute=ev.compute * pr.resolution,
        p_reward={pr.ids[j]: float(ev.p_reward[k]) for k, j in enumerate(ev.rewarded)},
        actions=actions,
        heuristics=heur,
        tree=policy_tree(solution, s, b, depth),
        states=sp.size,
        solve_seconds=solution.seconds,
        budget_left=float(b * pr.resolution + pr.surplus),
        unaffordable=unaffordable_now(solution, q),
    )


def unaffordable_now(solution: Solution, q: np.ndarray | None = None) -> list[str]:
    """Experiments whose prerequisites are met at the planning start but which cannot be
    started with the budget left (their cheapest cost is more): why a plan that stops
    with nothing runnable stops (the budget, not the value of the experiments)."""
    pr, sp = solution.problem, solution.space
    q = solution.q_values() if q is None else q
    return [pr.ids[i] for i in np.flatnonzero(sp.avail[sp.root]) if not np.isfinite(q[i])]


def heuristic_summary(solution: Solution, progress=None) -> dict[str, dict]:
    """Each heuristic's first pick at the planning start, its exact value, and its regret
    against the optimal policy ("random" picks nothing: it is uniform). `progress(1)`
    after each."""
    pr, sp = solution.problem, solution.space
    s, b = sp.root, pr.start_budget
    out = {}
    for name in HEURISTICS:
        table = solution.policy_table(name)
        hv = solution.start_value(name).value
        pick = None if table is None or table[s, b] < 0 else pr.ids[table[s, b]]
        out[name] = {"pick": pick, "value": hv, "regret": solution.root_value - hv}
        if progress is not None:
            progress(1)
    return out


def budget_after(problem, node: int, b: int):
    """How the budget left is distributed after starting `node` with `b` units left.

    Returns (p_fit, left, weights, median): the probability the run fits the budget,
    the budget units left for each fitting cost level with their conditional
    probabilities, and the median of that distribution (0 when nothing fits).
    """
    cu, cq = problem.cost_units[node], problem.cost_probs[node]
    fits = cu <= b
    p_fit = float(cq[fits].sum())
    if p_fit <= 0:
        return 0.0, np.zeros(0, dtype=np.int64), np.zeros(0), 0
    left, w = b - cu[fits], cq[fits] / p_fit
    order = np.argsort(left)
    median = int(left[order][np.searchsorted(np.cumsum(w[order]), 0.5 - 1e-12)])
    return p_fit, left, w, median


def policy_tree(solution: Solution, s: int, b: int, depth: int) -> dict | None:
    """The optimal policy's first `depth` decisions as a nested dict.

    Each decision lists its outcomes (success, failure, and overrun when the budget may
    be cut off) with their probabilities. After a stochastic-cost experiment the budget
    left is a distribution: the child shows its median (`budget_left`, where the tree
    continues) and its range (`budget_left_range`).
    """
    pr, sp = solution.problem, solution.space
    a = int(solution.policy[s, b])
    if a < 0:
        return {
            "action": None,
            "value": float(solution.values[s, b]),
            "budget_left": float(b * pr.resolution + pr.surplus),
        }
    node = {
        "action": pr.ids[a],
        "value": float(solution.values[s, b]),
        "budget_left": float(b * pr.resolution + pr.surplus),
        "outcomes": [],
    }
    if depth <= 1:
        return node
    p_fit, left, _, median = budget_after(pr, a, b)
    if p_fit > 0:
        span = [
            float(left.min() * pr.resolution + pr.surplus),
            float(left.max() * pr.resolution + pr.surplus),
        ]
    else:
        span = [0.0, 0.0]
    p = float(sp.p[s, a])
    branches = [
        ("success", p * p_fit, sp.succ_s[s, a], median),
        ("failure", (1 - p) * p_fit, sp.succ_f[s, a], median),
    ]
    if p_fit < 1:
        branches.append(("overrun", 1 - p_fit, sp.succ_d[s, a], 0))
    for label, prob, nxt, nb in branches:
        # A posterior is a ratio of sums over the latent configurations, so a p of exactly
        # 1 can come back as 1 - 1.1e-16: a "failure" branch of probability 1e-16 is float
        # noise, not an outcome, and is not shown.
        if prob <= PROB_NOISE:
            continue
        child = policy_tree(solution, int(nxt), int(nb), depth - 1)
        if label != "overrun":
            child["budget_left_range"] = span
        node["outcomes"].append({"outcome": label, "prob": prob, "next": child})
    return node


@dataclass(frozen=True)
class WhatIf:
    budgets: np.ndarray  # (M,) in the roadmap's unit
    value: np.ndarray  # (M,)
    p_reward: dict[str, np.ndarray]  # id -> (M,)
    expected_compute: np.ndarray  # (M,)
    first: list[str | None]  # best first action per budget
    changes: list[int]  # indices where the best first action changes
    marginal: np.ndarray  # (M,) d value / d budget (per unit), forward difference


def whatif_report(solution: Solution, lo: float, hi: float, progress=None) -> WhatIf:
    """Value, P(reward) and the best first action for every budget level in [lo, hi].

    Past what the roadmap can spend (a problem compiled with a `surplus`) nothing
    changes: the curve ends with one point at `hi` equal to its last level.
    `progress(1)` after each backward pass of the optimal policy's evaluation (expected
    compute, then P(reward) of each rewarded experiment).
    """
    pr, sp = solution.problem, solution.space
    levels = np.arange(pr.levels + 1)
    budgets = levels * pr.resolution
    keep = (budgets >= lo - 1e-9) & (budgets <= hi + 1e-9)
    ev = solution.root_curves("optimal", progress)
    value = solution.values[sp.root][keep]
    first_idx = solution.policy[sp.root][keep]
    p_reward = {pr.ids[j]: ev["p_reward"][k][keep] for k, j in enumerate(ev["rewarded"])}
    compute = ev["compute"][keep] * pr.resolution
    budgets = budgets[keep]
    if pr.surplus > 0 and keep[-1] and hi > budgets[-1] + 1e-9:
        budgets = np.append(budgets, hi)
        value = np.append(value, value[-1])
        first_idx = np.append(first_idx, first_idx[-1])
        p_reward = {k: np.append(v, v[-1]) for k, v in p_reward.items()}
        compute = np.append(compute, compute[-1])
    first = [None if a < 0 else pr.ids[a] for a in first_idx]
    changes = [k for k in range(1, len(first)) if first[k] != first[k - 1]]
    marginal = np.gradient(value, budgets) if len(budgets) > 1 else np.zeros(1)
    return WhatIf(
        budgets=budgets,
        value=value,
        p_reward=p_reward,
        expected_compute=compute,
        first=first,
        changes=changes,
        marginal=marginal,
    )
