"""Quiz rounds: seeded generated roadmaps per level, or the states a real plan reaches.

A round is one decision: a roadmap, the outcomes so far and the budget left, solved
exactly. Everything a round reveals is read off that solution: the value of every move
(each runnable experiment, and stopping), the moves tied with the best, each heuristic's
pick, and the exact probability that the optimal plan earns the top reward.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from derisk.errors import DeriskError
from derisk.graphs import Conditional, Roadmap, random_roadmap
from derisk.planner import (
    HEURISTICS,
    SUCCESS,
    UNTRIED,
    PlanningProblem,
    Solution,
    SolveConfig,
    compile_roadmap,
    config_posterior,
    hypothesis_posteriors,
    solve,
)

STOP = "stop"
# Moves whose value is within this of the best (relative to max(1, |value|)) are tied:
# far above float noise (~1e-12), far below any difference a learner could reason about.
TIE_TOLERANCE = 1e-6
# A generated round is kept only if some runnable experiment loses more than this share
# of the optimal value: a round where every experiment is (nearly) as good teaches nothing.
MIN_SPREAD = 0.02
# ... and its optimal value is at least this share of the largest reward: a plan worth
# almost nothing makes every regret a huge percentage of nothing.
MIN_VALUE_SHARE = 0.05
# Every third round (the 1st, 4th, ...) is one where Steinhardt's rule or cheapest-first
# picks a move outside the optimal set, so at least a third of the rounds are such.
TRAP_EVERY = 3
TRAP_RULES = ("steinhardt", "cheapest")
# The 2nd, 5th, ... rounds also ask for P(the optimal plan earns the top reward).
CALIBRATION_EVERY = 3
CALIBRATION_OFFSET = 1
# A calibration question is asked only about a probability inside this range: "the plan
# cannot earn it" is a fact about the budget, not a judgement of chances.
CALIBRATION_RANGE = (0.02, 0.98)
MAX_CANDIDATES = 500  # generated roadmaps tried per round before giving up
RULES = tuple(h for h in HEURISTICS if h != "random")  # random has no pick to compare


class QuizError(DeriskError):
    """A quiz cannot be set up as asked (level, rounds, roadmap)."""


@dataclass(frozen=True, kw_only=True)
class Level:
    """The generator's settings for one difficulty level (`random_roadmap` arguments)."""

    n: int  # experiments
    hypotheses: int
    stochastic_costs: float  # fraction of experiments with a lognormal cost
    budget_fraction: float  # budget / total median cost: lower is tighter
    budget_levels: int
    rewards: int  # experiments that pay a reward (the last ones)
    density: float = 0.3
    any_groups: float = 0.0
    compute_price: float = 0.0


# Size, hypotheses, stochastic costs and budget tightness grow with the level. Two or
# three rewards: with one, most generated roadmaps have a single experiment worth running
# first (the others lead nowhere), and nothing to choose.
LEVELS: dict[int, Level] = {
    1: Level(n=4, hypotheses=0, stochastic_costs=0.0, budget_fraction=0.6, budget_levels=20,
             rewards=2),
    2: Level(n=5, hypotheses=1, stochastic_costs=0.0, budget_fraction=0.55, budget_levels=24,
             rewards=2),
    3: Level(n=6, hypotheses=1, stochastic_costs=0.25, budget_fraction=0.5, budget_levels=30,
             rewards=3),
    4: Level(n=7, hypotheses=2, stochastic_costs=0.4, budget_fraction=0.45, budget_levels=36,
             rewards=3, compute_price=0.2),
    5: Level(n=8, hypotheses=2, stochastic_costs=0.5, budget_fraction=0.4, budget_levels=40,
             rewards=3, any_groups=0.3, compute_price=0.2),
}  # fmt: skip


@dataclass(frozen=True, eq=False)
class Round:
    """One decision to quiz on, solved.

    q: runnable experiment id -> value of running it now then acting optimally (every
    experiment whose prerequisites have succeeded and whose cheapest cost fits the budget
    left, also those that can no longer lead to a reward). optimal: the solver's move
    ("stop" or an id); optimal_set: every move within `TIE_TOLERANCE` of the best, in
    row order, "stop" last. heuristics: each rule's pick (None where it would stop).
    top: the largest reward still to earn and p_top the exact probability that the
    optimal plan earns it (None when no reward is left).
    """

    number: int  # 1-based
    level: int | None  # None for a roadmap of the user's
    roadmap: Roadmap
    outcomes: dict[str, str]  # id -> "success" | "failure", before this decision
    budget_left: float  # in the roadmap's unit
    seed: int | None  # the generator's seed (generated rounds)
    solution: Solution
    value: float
    q: dict[str, float]
    optimal: str
    optimal_set: tuple[str, ...]
    heuristics: dict[str, str | None]
    top: str | None
    p_top: float | None
    calibration: bool  # this round also asks for p_top
    source: str | None = None  # the roadmap file, for a user's roadmap

    @property
    def problem(self) -> PlanningProblem:
        return self.solution.problem

    @property
    def runnable(self) -> tuple[str, ...]:
        """Runnable experiment ids, in row order."""
        return tuple(self.q)

    @property
    def choices(self) -> tuple[str, ...]:
        return (*self.q, STOP)

    def row(self, eid: str) -> int:
        """1-based row number of an experiment in the roadmap's table."""
        return self.roadmap.ids.index(eid) + 1

    def move_value(self, move: str) -> float:
        return 0.0 if move == STOP else self.q[move]

    @property
    def trap(self) -> bool:
        """Steinhardt's rule or cheapest-first picks a move outside the optimal set."""
        return any((self.heuristics[r] or STOP) not in self.optimal_set for r in TRAP_RULES)

    @property
    def spread(self) -> float:
        """Largest regret among the runnable experiments, as a share of the optimal value."""
        if not self.q or self.value <= 0:
            return 0.0
        return max(self.value - v for v in self.q.values()) / self.value

    def p_now(self) -> dict[str, float]:
        """Posterior success probability of every experiment given the outcomes so far."""
        pr = self.problem
        post = config_posterior(pr, pr.start_status[None, :])[0]  # every latent variable
        return {eid: float(post @ pr.p_table[i]) for i, eid in enumerate(pr.ids)}

    def posteriors(self) -> dict[str, float]:
        """P(hypothesis) given the outcomes so far."""
        return hypothesis_posteriors(self.problem, self.problem.start_status)


def _runnable(problem: PlanningProblem, status: np.ndarray, b: int) -> list[int]:
    """Untried experiments whose every prerequisite clause has a success and whose
    cheapest cost fits in `b` budget units, in row order (whether or not they can still
    lead to a reward: the solver's state space leaves those out)."""
    succ = 0
    for i in np.flatnonzero(status == SUCCESS):
        succ |= 1 << int(i)
    lo = problem.min_cost
    return [
        i
        for i in range(problem.n)
        if status[i] == UNTRIED and all(succ & c for c in problem.clauses[i]) and int(lo[i]) <= b
    ]


def _idle_value(solution: Solution, i: int, b: int) -> float:
    """Value of running an experiment whose outcome cannot matter any more: only the
    budget changes (a run cut off by the budget spends all of it)."""
    pr = solution.problem
    row = solution.values[solution.space.root]  # (L,) by budget left
    price = pr.price_per_unit
    total = 0.0
    for c, w in zip(pr.cost_units[i], pr.cost_probs[i], strict=True):
        c = int(c)
        if c <= b:
            total += w * (row[b - c] - price * c)
        else:
            total += w * (row[0] - price * b)
    return float(total)


def make_round(
    roadmap: Roadmap,
    solution: Solution,
    *,
    number: int,
    level: int | None = None,
    seed: int | None = None,
    outcomes: dict[str, str] | None = None,
    calibration: bool = False,
    source: str | None = None,
) -> Round:
    """A round at the solution's start state (its recorded outcomes and budget)."""
    pr, sp = solution.problem, solution.space
    s, b = sp.root, pr.start_budget
    outcomes = dict(outcomes or {})
    value = solution.root_value
    q_mdp = solution.q_values()
    q = {}
    for i in _runnable(pr, pr.start_status, b):
        if np.isfinite(q_mdp[i]):
            q[pr.ids[i]] = float(q_mdp[i])
        else:  # runnable but pointless: the solver's states leave it out
            q[pr.ids[i]] = _idle_value(solution, i, b)
    a = int(solution.policy[s, b])
    optimal = STOP if a < 0 else pr.ids[a]
    tol = TIE_TOLERANCE * max(1.0, abs(value))
    tied = [m for m, v in q.items() if value - v <= tol]
    if value <= tol:
        tied.append(STOP)
    picks = {}
    for rule in RULES:
        k = int(solution.policy_table(rule)[s, b])
        picks[rule] = None if k < 0 else pr.ids[k]
    top = p_top = None
    left = [j for j in range(pr.n) if pr.reward[j] > 0 and pr.start_status[j] == UNTRIED]
    if left:
        j = max(left, key=lambda k: (pr.reward[k], -k))  # the largest, first on a tie
        ev = solution.start_value("optimal")
        top = pr.ids[j]
        p_top = float(ev.p_reward[list(ev.rewarded).index(j)])
    return Round(
        number=number,
        level=level,
        roadmap=roadmap,
        outcomes=outcomes,
        budget_left=float(b * pr.resolution + pr.surplus),
        seed=seed,
        solution=solution,
        value=value,
        q=q,
        optimal=optimal,
        optimal_set=tuple(tied),
        heuristics=picks,
        top=top,
        p_top=p_top,
        calibration=calibration and top is not None,
        source=source,
    )


def is_calibration(number: int) -> bool:
    return (number - 1) % CALIBRATION_EVERY == CALIBRATION_OFFSET


def level_roadmap(level: int, seed: int) -> Roadmap:
    """The generated roadmap of one level for one generator seed."""
    spec = LEVELS[level]
    return random_roadmap(
        spec.n,
        seed=seed,
        density=spec.density,
        rewards=spec.rewards,
        hypotheses=spec.hypotheses,
        stochastic_costs=spec.stochastic_costs,
        any_groups=spec.any_groups,
        compute_price=spec.compute_price,
        budget_levels=spec.budget_levels,
        budget_fraction=spec.budget_fraction,
    )


def check_level(level: int) -> None:
    if level not in LEVELS:
        raise QuizError(f"--level must be one of {', '.join(map(str, LEVELS))}, got {level}")


def generate_rounds(*, seed: int, level: int, count: int) -> Iterator[Round]:
    """`count` rounds of one level, the same for the same seed and level.

    Candidate roadmaps come from `random_roadmap` with seeds drawn from a generator seeded
    by (seed, level). A candidate is kept when its optimal value is at least
    `MIN_VALUE_SHARE` of the largest reward, two or more
    experiments can run, and some runnable experiment loses more than `MIN_SPREAD` of the
    optimal value; at rounds 1, 4, 7, ... it must also be one where Steinhardt's rule or
    cheapest-first is not optimal, and at the calibration rounds (2, 5, 8, ...) the
    probability asked about must lie in `CALIBRATION_RANGE`. Rounds are drawn in order,
    so the first k rounds of a longer session are the rounds of a k-round one.

    >>> [r.roadmap.name for r in generate_rounds(seed=1, level=1, count=2)] == [
    ...     r.roadmap.name for r in generate_rounds(seed=1, level=1, count=2)]
    True
    """
    check_level(level)
    if count < 1:
        raise QuizError(f"--rounds must be at least 1, got {count}")
    if seed < 0:
        raise QuizError(f"--seed must be a non-negative integer, got {seed}")
    rng = np.random.default_rng([seed, level])
    for number in range(1, count + 1):
        want_trap = (number - 1) % TRAP_EVERY == 0
        for _ in range(MAX_CANDIDATES):
            cand = int(rng.integers(0, 2**31 - 1))
            roadmap = level_roadmap(level, cand)
            sol = solve(compile_roadmap(roadmap))
            r = make_round(
                roadmap,
                sol,
                number=number,
                level=level,
                seed=cand,
                calibration=is_calibration(number),
            )
            worth = MIN_VALUE_SHARE * float(r.problem.reward.max())
            if r.value <= worth or len(r.q) < 2 or r.spread <= MIN_SPREAD:
                continue
            if want_trap and not r.trap:
                continue
            if r.calibration and not (CALIBRATION_RANGE[0] < r.p_top < CALIBRATION_RANGE[1]):
                continue
            yield r
            break
        else:  # pragma: no cover - the levels keep about half their candidates
            raise QuizError(
                f"no instructive roadmap in {MAX_CANDIDATES} tries at level {level} "
                f"(round {number}); try another --seed"
            )


def policy_rounds(
    roadmap: Roadmap,
    *,
    count: int | None = None,
    outcomes: dict[str, str] | None = None,
    spent: float = 0.0,
    budget: float | None = None,
    config: SolveConfig | None = None,
    source: str | None = None,
) -> Iterator[Round]:
    """Rounds at the states the optimal policy reaches in a real roadmap, nearest first.

    From the start (after `outcomes` already recorded), follow the optimal policy
    through both outcomes of every experiment it runs (at the median budget left after a
    stochastic cost, as the policy tree does; a run cut off by the budget ends the plan).
    Every distinct state reached where some experiment that can still lead to a reward is
    affordable is a round (after the last reward is won or lost there is nothing to
    decide), solved afresh from its outcomes and budget left, so its explanation is
    `explain`'s for that state.
    """
    if count is not None and count < 1:
        raise QuizError(f"--rounds must be at least 1, got {count}")
    config = SolveConfig() if config is None else config
    base = dict(outcomes or {})
    pr0 = compile_roadmap(roadmap, budget=budget, outcomes=base, spent=spent)
    sol0 = solve(pr0, config=config)
    res = pr0.resolution
    queue = [({}, sol0.space.root, pr0.start_budget)]
    seen = set()
    number = 0
    while queue and (count is None or number < count):
        hist, s, b = queue.pop(0)
        if (s, b) in seen:
            continue
        seen.add((s, b))
        known = {**base, **hist}
        a = int(sol0.policy[s, b])
        if np.isfinite(sol0.q_values(s, b)).any():
            # The state's own problem: same step, the budget left as the whole budget. The
            # surplus (budget no plan can spend) stays unspendable: the value is the same.
            left = b * res + pr0.surplus
            pr = compile_roadmap(roadmap, budget=left, resolution=res, outcomes=known)
            number += 1
            yield make_round(
                roadmap,
                solve(pr, config=config),
                number=number,
                outcomes=known,
                calibration=is_calibration(number),
                source=source,
            )
        if a < 0:
            continue
        median = _median_left(pr0, a, b)
        if median is None:
            continue
        eid = pr0.ids[a]
        p = float(sol0.space.p[s, a])
        for outcome, nxt, prob in (
            ("success", sol0.space.succ_s[s, a], p),
            ("failure", sol0.space.succ_f[s, a], 1 - p),
        ):
            if prob > 0:
                queue.append(({**hist, eid: outcome}, int(nxt), int(median)))


def _median_left(problem: PlanningProblem, i: int, b: int) -> int | None:
    """Median budget units left after running experiment i with b left, given that it
    fits (None when it never fits): where the policy tree continues."""
    units, probs = problem.cost_units[i], problem.cost_probs[i]
    fits = units <= b
    if not fits.any():
        return None
    left = b - units[fits]  # descending, as the units ascend
    w = probs[fits] / probs[fits].sum()
    order = np.argsort(left)
    k = np.searchsorted(np.cumsum(w[order]), 0.5 - 1e-12)
    return int(left[order][k])


def roadmap_dict(roadmap: Roadmap) -> dict:
    """The roadmap in the file format (a dict `roadmap_from_dict` loads back)."""
    unit = f" {roadmap.unit}" if roadmap.unit else ""

    def amount(x: float):
        return f"{x:g}{unit}" if unit else x

    exps = []
    for e in roadmap.experiments:
        d: dict = {"id": e.id}
        if e.title and e.title != e.id:
            d["title"] = e.title
        if e.requires:
            d["after"] = [c[0] if len(c) == 1 else {"any": list(c)} for c in e.requires]
        if isinstance(e.p, Conditional):
            d["p"] = {"if": e.p.hypothesis, "then": e.p.then, "else": e.p.otherwise}
        else:
            d["p"] = e.p
        if e.cost.stochastic:
            d["cost"] = {"median": amount(e.cost.median), "p90": amount(e.cost.p90)}
        else:
            d["cost"] = amount(e.cost.median)
        if e.reward:
            d["reward"] = e.reward
        exps.append(d)
    out: dict = {"name": roadmap.name, "budget": amount(roadmap.budget)}
    if roadmap.resolution is not None:
        out["resolution"] = amount(roadmap.resolution)
    out["compute_price"] = roadmap.compute_price
    if roadmap.hypotheses:
        out["hypotheses"] = dict(roadmap.hypotheses)
    out["experiments"] = exps
    return out
