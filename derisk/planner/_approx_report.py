"""What `derisk plan` shows for an approximate solution, as plain data.

The same fields as `plan_report` where they have a meaning without the state space, plus
the certified interval. Values come from the returned policy (exact or simulated, see
`ApproxSolution`); the actions' and tree's values are rollout estimates (run the
experiment, then follow the base heuristic, on the policy's scenarios).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from derisk.planner._approx import ApproxSolution, _heuristic_pick, _posterior_p, canonical
from derisk.planner._problem import DEAD, FAILED, SUCCESS
from derisk.planner._report import PlanReport, budget_after


def _estimates(sol: ApproxSolution, status: np.ndarray, b: int):
    """(action, {node: rollout estimate}) at one state, from the policy with rollouts."""
    pol = replace(sol.policy, use_rollout=True)
    act = int(sol.policy.actions(status[None, :], np.array([b]))[0])
    _, cand, q = pol.decide(status[None, :], np.array([b]))
    est = {int(c): float(v) for c, v in zip(cand[0], q[0], strict=True) if c >= 0}
    return act, est


def approx_tree(sol: ApproxSolution, status: np.ndarray, b: int, depth: int) -> dict:
    """The policy's first `depth` decisions, as `policy_tree` builds them (median budget
    after a stochastic cost); "value" is the rollout estimate of the chosen move."""
    pr = sol.problem
    act, est = _estimates(sol, status, b)
    left = float(b * pr.resolution + pr.surplus)
    if act < 0:
        return {"action": None, "value": 0.0, "budget_left": left}
    node = {
        "action": pr.ids[act],
        "value": est.get(act, float("nan")),
        "budget_left": left,
        "outcomes": [],
    }
    if depth <= 1:
        return node
    p_fit, spare, _, median = budget_after(pr, act, b)
    span = [0.0, 0.0]
    if p_fit > 0:
        span = [float(x * pr.resolution + pr.surplus) for x in (spare.min(), spare.max())]
    canon, _ = canonical(sol.policy.model, status[None, :])
    p = float(_posterior_p(sol.policy.model, canon)[0][0, act])
    branches = [
        ("success", p * p_fit, SUCCESS, median),
        ("failure", (1 - p) * p_fit, FAILED, median),
    ]
    if p_fit < 1:
        branches.append(("overrun", 1 - p_fit, DEAD, 0))
    for label, prob, outcome, nb in branches:
        if prob <= 0:
            continue
        nxt = status.copy()
        nxt[act] = outcome
        child = approx_tree(sol, nxt, int(nb), depth - 1)
        if label != "overrun":
            child["budget_left_range"] = span
        node["outcomes"].append({"outcome": label, "prob": prob, "next": child})
    return node


def approx_plan_report(sol: ApproxSolution, *, depth: int = 3) -> PlanReport:
    """`plan_report` for an approximate solution (`states` is 0: none were enumerated)."""
    pr = sol.problem
    status = pr.start_status.astype(np.int8)
    b = pr.start_budget
    act, est = _estimates(sol, status, b)
    canon, _ = canonical(sol.policy.model, status[None, :])
    p = _posterior_p(sol.policy.model, canon)[0][0]
    best = max(est.values(), default=0.0)
    actions = [
        {
            "id": pr.ids[i],
            "title": pr.titles[i],
            "p": float(p[i]),
            "cost": float(pr.mean_cost[i] * pr.resolution),
            "q": q,
            "regret": best - q,
        }
        for i, q in est.items()
    ]
    chosen = None if act < 0 else pr.ids[act]
    actions.sort(key=lambda x: (x["id"] != chosen, -x["q"]))
    heur = {}
    for name, (value, se) in sol.heuristics.items():
        heur[name] = {"pick": None, "value": value, "se": se, "regret": sol.policy_value - value}
    model = sol.policy.model
    _, run = canonical(model, status[None, :])
    for name in heur:
        if name == "random":
            continue
        a = int(_heuristic_pick(model, name, canon, np.array([b]), run, p[None, :])[0])
        heur[name]["pick"] = None if a < 0 else pr.ids[a]
    tree = approx_tree(sol, status, b, depth)
    # The tree is the returned policy: at its root, that policy's value (the rollout
    # estimate of its first move assumes the base heuristic afterwards, and is lower).
    tree["value"] = sol.policy_value
    return PlanReport(
        next=chosen,
        value=sol.policy_value,
        expected_compute=sol.expected_compute * pr.resolution,
        p_reward={pr.ids[j]: q for j, q in sol.p_reward.items()},
        actions=actions,
        heuristics=heur,
        tree=tree,
        states=0,
        solve_seconds=sol.seconds,
        budget_left=float(b * pr.resolution + pr.surplus),
    )
