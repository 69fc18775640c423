"""Why the recommended experiment: every number behind the choice, and a paragraph.

Everything here is read off the solved MDP at the planning start: Q-values of the
runnable experiments, the states each outcome leads to (and the optimal move and value
there), the hypothesis posteriors before and after each outcome (Bayes' rule over the
hypothesis configurations), the value of information of each outcome (EVPI, by
re-solving the conditioned problems) and the heuristics' exact values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from derisk._numbers import fmt as _fmt
from derisk.graphs._model import unit_label
from derisk.planner._problem import FAILED, SUCCESS, PlanningProblem
from derisk.planner._report import budget_after, heuristic_summary
from derisk.planner._sensitivity import _config_bits, _latent_masks, evpi
from derisk.planner._solve import Solution
from derisk.planner._states import config_posterior


def hypothesis_posteriors(problem: PlanningProblem, status: np.ndarray) -> dict[str, float]:
    """P(hypothesis true | the outcomes in `status`), one (n,) status vector; for a
    categorical hypothesis, P(name=value) for each of its values. Law worlds are left out
    (a world is one bootstrap sample of a law: its posterior is not a statement a reader
    can use)."""
    if not problem.hypotheses:
        return {}
    post = config_posterior(problem, status[None, :])[0]
    H = problem.booleans
    booleans = post @ _config_bits(problem)
    out = {h: float(booleans[k]) for k, h in enumerate(problem.hypotheses[:H])}
    for k, h in enumerate(problem.hypotheses[H:], start=H):
        if h.startswith("law "):
            continue
        names = problem.cat_values[k - H]
        for name, mask in zip(names, _latent_masks(problem, k), strict=True):
            out[f"{h}={name}"] = float(post[mask].sum())
    return out


@dataclass(frozen=True)
class Branch:
    outcome: str  # "success" | "failure"
    prob: float  # probability of this outcome (the run fits the budget)
    value: float  # expected optimal value after it (over the cost distribution)
    next: str | None  # the optimal move after it, at the median budget left
    budget_left: float  # median, in the roadmap's unit
    posteriors: dict[str, float]

    def as_dict(self) -> dict:
        return {
            "outcome": self.outcome,
            "prob": self.prob,
            "value": self.value,
            "next": self.next,
            "budget_left": self.budget_left,
            "posteriors": self.posteriors,
        }


@dataclass(frozen=True)
class ActionExplanation:
    id: str
    title: str
    p: float  # posterior success probability now
    cost: float  # mean cost, roadmap unit
    q: float  # value of running it now, then acting optimally
    regret: float  # optimal value minus q
    branches: tuple[Branch, ...]
    p_overrun: float  # probability the run is cut off by the budget
    evpi: float  # value of knowing its outcome before deciding
    unlocks: tuple[str, ...]  # experiments it is a prerequisite of (in some clause)
    picked_by: tuple[str, ...]  # heuristics whose first pick it is

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "title": self.title,
            "p": self.p,
            "cost": self.cost,
            "q": self.q,
            "regret": self.regret,
            "on_success": next(
                (b.as_dict() for b in self.branches if b.outcome == "success"), None
            ),
            "on_failure": next(
                (b.as_dict() for b in self.branches if b.outcome == "failure"), None
            ),
            "p_overrun": self.p_overrun,
            "evpi": self.evpi,
            "unlocks": list(self.unlocks),
            "picked_by": list(self.picked_by),
        }


@dataclass(frozen=True)
class Explanation:
    next: str | None
    value: float
    budget_left: float
    unit: str | None
    posteriors: dict[str, float]  # hypotheses given the recorded outcomes
    recorded: dict[str, str]
    actions: tuple[ActionExplanation, ...]  # runnable now, best first
    heuristics: dict[str, dict]  # name -> pick, value, regret
    summary: str

    def as_dict(self) -> dict:
        return {
            "next": self.next,
            "value": self.value,
            "budget_left": self.budget_left,
            "unit": self.unit,
            "posteriors": self.posteriors,
            "recorded": self.recorded,
            "actions": [a.as_dict() for a in self.actions],
            "heuristics": self.heuristics,
            "summary": self.summary,
        }


def _branches(solution: Solution, i: int) -> tuple[list[Branch], float]:
    pr, sp = solution.problem, solution.space
    s, b = sp.root, pr.start_budget
    p_fit, left, w, median = budget_after(pr, i, b)
    out = []
    if p_fit <= 0:
        return out, 1.0
    p = float(sp.p[s, i])
    for label, succ, code, prob in (
        ("success", sp.succ_s[s, i], SUCCESS, p),
        ("failure", sp.succ_f[s, i], FAILED, 1 - p),
    ):
        if prob <= 0:
            continue
        status = pr.start_status.copy()
        status[i] = code
        a = int(solution.policy[succ, median])
        out.append(
            Branch(
                outcome=label,
                prob=prob * p_fit,
                value=float(w @ solution.values[succ, left]),
                next=None if a < 0 else pr.ids[a],
                budget_left=float(median * pr.resolution + pr.surplus),
                posteriors=hypothesis_posteriors(pr, status),
            )
        )
    return out, 1.0 - p_fit


def _summary(ex_actions, best, value, posteriors, heur, unit: str) -> str:
    if best is None:
        if not ex_actions:
            return (
                "Nothing can run from here: every remaining experiment is blocked or unaffordable."
            )
        top = ex_actions[0]
        return (
            f"Stop: the best experiment, {top.id}, is worth {_fmt(top.q)} in expectation, "
            f"less than stopping (0), so no experiment pays for its compute from here."
        )
    u = f" {unit}" if unit else ""
    parts = [f"Run {best.id} next (p {_fmt(best.p, p=True)}, about {_fmt(best.cost)}{u})."]
    for br in best.branches:
        moves = []
        for h, v in br.posteriors.items():
            if abs(v - posteriors[h]) > 0.01:
                moves.append(
                    f"P({h}) {_fmt(posteriors[h], p=True, derived=True)} -> "
                    f"{_fmt(v, p=True, derived=True)}"
                )
        then = f"runs {br.next} next" if br.next else "stops"
        info = f"; {', '.join(moves)}" if moves else ""
        parts.append(
            f"On {br.outcome} (probability {_fmt(br.prob, p=True, derived=True)}{info}) the "
            f"plan {then}, "
            f"worth {_fmt(br.value)}."
        )
    if best.p_overrun > 0:
        parts.append(f"It overruns the budget with probability {_fmt(best.p_overrun, p=True)}.")
    if best.unlocks:
        parts.append(f"It is a prerequisite of {', '.join(best.unlocks)}.")
    others = [a for a in ex_actions if a.id != best.id]
    if others:
        alt = others[0]
        parts.append(
            f"It is worth {_fmt(best.q)} against {_fmt(alt.q)} for the next best, {alt.id} "
            f"(margin {_fmt(best.q - alt.q)})."
        )
    if best.evpi > 0:
        parts.append(
            f"Knowing its outcome before deciding anything would add {_fmt(best.evpi)} "
            "(its value of information)."
        )
    wrong = [(k, v) for k, v in heur.items() if v["pick"] != best.id and k != "random"]
    if wrong:
        k, v = max(wrong, key=lambda kv: kv[1]["regret"])
        parts.append(
            f"{k.replace('_', ' ').capitalize()} would run {v['pick'] or 'nothing'} instead "
            f"and, followed throughout, loses {_fmt(v['regret'])} of value."
        )
    return " ".join(parts)


def explain(
    solution: Solution,
    *,
    recorded: dict[str, str] | None = None,
    evpi_by_id: dict[str, float] | None = None,
) -> Explanation:
    """Why the recommended first experiment, with every number behind it.

    `evpi_by_id` passes values of information already computed (by `sensitivity` on the
    same solution) instead of re-solving for them.

    >>> from derisk.graphs import random_roadmap
    >>> from derisk.planner import compile_roadmap, solve
    >>> ex = explain(solve(compile_roadmap(random_roadmap(4, seed=2))))
    >>> ex.next is None or ex.next == ex.actions[0].id
    True
    """
    pr, sp = solution.problem, solution.space
    s, b = sp.root, pr.start_budget
    value = solution.root_value
    q = solution.q_values()
    heur = heuristic_summary(solution)
    dependents: dict[int, list[str]] = {}
    for j, clauses in enumerate(pr.clauses):
        for c in clauses:
            for i in range(pr.n):
                if c >> i & 1:
                    dependents.setdefault(i, []).append(pr.ids[j])
    acts = []
    for i in np.flatnonzero(np.isfinite(q)):
        i = int(i)
        branches, p_over = _branches(solution, i)
        acts.append(
            ActionExplanation(
                id=pr.ids[i],
                title=pr.titles[i],
                p=float(sp.p[s, i]),
                cost=float(pr.mean_cost[i] * pr.resolution),
                q=float(q[i]),
                regret=value - float(q[i]),
                branches=tuple(branches),
                p_overrun=p_over,
                evpi=(
                    evpi_by_id[pr.ids[i]]
                    if evpi_by_id is not None
                    else evpi(solution, experiment=pr.ids[i])
                ),
                unlocks=tuple(dict.fromkeys(dependents.get(i, []))),
                picked_by=tuple(k for k, v in heur.items() if v["pick"] == pr.ids[i]),
            )
        )
    a = int(solution.policy[s, b])
    nxt = None if a < 0 else pr.ids[a]
    acts.sort(key=lambda x: (x.id != nxt, -x.q))  # the pick first, even on a tie
    best = next((x for x in acts if x.id == nxt), None)
    posteriors = hypothesis_posteriors(pr, pr.start_status)
    label = unit_label(pr.unit)
    return Explanation(
        next=nxt,
        value=value,
        budget_left=float(b * pr.resolution + pr.surplus),
        unit=pr.unit,
        posteriors=posteriors,
        recorded=dict(recorded or {}),
        actions=tuple(acts),
        heuristics=heur,
        summary=_summary(acts, best, value, posteriors, heur, label),
    )
