"""Which estimate matters most: gradients, a tornado, flip points and the value of information.

Every number here is about the optimal value at the planning start, V*, and the
recommended first experiment, as functions of one input of the roadmap at a time:

- **Gradient.** Holding the optimal policy fixed, its value is affine in each success
  probability, branch probability and hypothesis prior (every experiment runs at most
  once, so each appears at most once in a history's probability, and the value is the
  prior-weighted sum of the values under each hypothesis configuration). By the
  envelope theorem dV*/dtheta is the slope of that affine function, read exactly from
  two evaluations of the fixed policy (theta = 0 and 1), one forward pass each. Where
  two policies tie exactly, this is the slope of the one the solver picked.
  Costs are whole budget steps, so V* is a step function of a cost; its "gradient" is
  the fixed policy's change when the cost grows by one step, per unit of cost: the
  compute price and the budget it takes from what follows.
- **Tornado.** V* re-solved with each input at its low and high end.
- **Flip points.** The nearest values below and above the current one at which the
  recommended first experiment changes: a scan of re-solves outward from the current
  value, then bisection to `p_tol` (probabilities) or one budget step (costs).
- **EVPI.** The value of learning an experiment's outcome (or a hypothesis's truth)
  before the first decision: the probability-weighted value of the problems
  conditioned on each answer, minus V*. Never negative (the planner could ignore it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from derisk._numbers import fmt
from derisk.errors import SolverError
from derisk.graphs import Categorical, Conditional, Cost, Roadmap
from derisk.planner._evaluate import start_value
from derisk.planner._exact import solve_exact
from derisk.planner._problem import UNTRIED, PlanningProblem
from derisk.planner._solve import Solution
from derisk.planner._states import StateSpace, beliefs

SCAN_POINTS = 10  # re-solves per side before bisection (a flip narrower than a scan
# step that flips back inside it can be missed; documented in the README)


@dataclass(frozen=True)
class Parameter:
    """One input of the roadmap and what the plan does as it moves."""

    node: str  # experiment id, or the hypothesis name for a prior
    param: str  # "p" | "cost" | "prior"
    branch: str | None  # "then" | "else" for a conditional p, "shift" for a categorical one
    base: float  # current value (cost in the roadmap's unit: the median)
    gradient: float  # dV*/d(value) (per unit of cost for a cost)
    low: float
    high: float
    value_low: float
    value_high: float
    flip_below: float | None
    flip_above: float | None
    next_below: str | None  # the recommendation just past flip_below ("stop" = None)
    next_above: str | None

    @property
    def swing(self) -> float:
        return abs(self.value_high - self.value_low)

    def as_dict(self) -> dict:
        return {
            "node": self.node,
            "param": self.param,
            "branch": self.branch,
            "base": self.base,
            "gradient": self.gradient,
            "low": self.low,
            "high": self.high,
            "value_low": self.value_low,
            "value_high": self.value_high,
            "flip_below": self.flip_below,
            "flip_above": self.flip_above,
            "next_below": self.next_below,
            "next_above": self.next_above,
        }


@dataclass(frozen=True)
class Sensitivity:
    value: float
    next: str | None
    resolution: float  # the budget step every re-solve used (reproduce with --resolution)
    parameters: tuple[Parameter, ...]  # ranked by swing, largest first
    evpi_experiments: dict[str, float]
    evpi_hypotheses: dict[str, float]
    solves: int
    seconds: float

    def evpi_text(self, name=str) -> str:
        """ "big 1.79, pilot 0.152; hypotheses: h 0.216", largest first; `name` quotes ids."""

        ranked = sorted(self.evpi_experiments.items(), key=lambda kv: -kv[1])
        text = ", ".join(f"{name(k)} {fmt(v)}" for k, v in ranked)
        if self.evpi_hypotheses:
            hyps = ", ".join(f"{name(k)} {fmt(v)}" for k, v in self.evpi_hypotheses.items())
            text += f"; hypotheses: {hyps}"
        return text

    def as_dict(self) -> dict:
        return {
            "value": self.value,
            "next": self.next,
            "resolution": self.resolution,
            "parameters": [p.as_dict() for p in self.parameters],
            "evpi": {"experiments": self.evpi_experiments, "hypotheses": self.evpi_hypotheses},
        }


# ------------------------------------------------------------------ perturbed problems


@dataclass(frozen=True)
class _Knob:
    """How to set one input on the compiled problem."""

    node: str
    param: str
    branch: str | None
    index: int  # node index, or hypothesis index
    base: float
    lo: float  # range searched for flip points
    hi: float


def _config_bits(problem: PlanningProblem) -> np.ndarray:
    """(C, H) 1 where boolean hypothesis k is true in configuration c (compile's order)."""
    H = problem.booleans
    C = len(problem.prior)
    c = np.arange(C)[:, None]
    return 1 - ((c >> (H - 1 - np.arange(H))[None, :]) & 1)


def _hyp_priors(problem: PlanningProblem) -> np.ndarray:
    bits = _config_bits(problem)
    return problem.prior @ bits if problem.booleans else np.zeros(0)


def _with_priors(problem: PlanningProblem, priors: np.ndarray) -> PlanningProblem:
    bits = _config_bits(problem)
    prior = np.prod(np.where(bits == 1, priors[None, :], 1 - priors[None, :]), axis=1)
    if problem.cat_prior is not None:  # the categorical variables keep their share
        prior = prior * problem.cat_prior
    return replace(problem, prior=prior)


def _latent_masks(problem: PlanningProblem, h: int) -> list[np.ndarray]:
    """(C,) masks of the configurations where latent variable h takes each of its values
    (a boolean: true, then false; a categorical: in its declared order)."""
    C = len(problem.prior)
    if h < problem.booleans:
        bits = _config_bits(problem)[:, h]
        return [bits == 1, bits == 0]
    # categorical digits: c // 2**H in mixed radix, the first categorical most significant
    rest = np.arange(C) // (2**problem.booleans)
    sizes = [len(v) for v in problem.cat_values]
    below = int(np.prod(sizes[h - problem.booleans + 1 :])) if sizes else 1
    digit = (rest // below) % sizes[h - problem.booleans]
    return [digit == m for m in range(sizes[h - problem.booleans])]


def _set(
    problem: PlanningProblem, roadmap: Roadmap, knob: _Knob, x: float, *, clip: bool = True
) -> PlanningProblem:
    """`problem` with `knob` at `x`. A categorical p (a law's worlds) is shifted: every
    world's p moves by x - base, so its marginal is x and the worlds keep their spread
    (clipped to [0, 1]; unclipped, `clip=False`, it is the affine extension the gradient
    reads)."""
    if knob.param == "prior":
        pri = _hyp_priors(problem).copy()
        pri[knob.index] = x
        return _with_priors(problem, pri)
    i = knob.index
    if knob.param == "p":
        table = problem.p_table.copy()
        if knob.branch is None:
            table[i] = x
        elif knob.branch == "shift":
            table[i] = table[i] + (x - knob.base)
            if clip:
                table[i] = np.clip(table[i], 0.0, 1.0)
        else:
            h = int(problem.hyp_of[i])
            bits = _config_bits(problem)[:, h]
            table[i, bits == (1 if knob.branch == "then" else 0)] = x
        return replace(problem, p_table=table)
    # cost: x is the new median in the roadmap's unit; a lognormal keeps its spread
    cost = roadmap.experiments[i].cost
    if cost.p90 is not None and cost.median > 0:
        new = Cost(median=x, p90=cost.p90 * x / cost.median)
    else:
        new = Cost(median=x)
    # beyond the budget is unaffordable, however far: clamp, as compile_roadmap does
    costs, cprobs = list(problem.cost_units), list(problem.cost_probs)
    costs[i], cprobs[i] = new.levels(problem.resolution, cap=problem.levels + 1)
    return replace(problem, cost_units=tuple(costs), cost_probs=tuple(cprobs))


def _space_for(space: StateSpace, base: PlanningProblem, problem: PlanningProblem) -> StateSpace:
    """The same states with posteriors under the perturbed problem's probabilities."""
    if problem.p_table is base.p_table and problem.prior is base.prior:
        return space
    return replace(space, p=beliefs(problem, space.status))


def _knobs(roadmap: Roadmap, problem: PlanningProblem) -> list[_Knob]:
    out = []
    budget = problem.start_budget * problem.resolution
    for i, e in enumerate(roadmap.experiments):
        if isinstance(e.p, Conditional):
            out.append(_Knob(e.id, "p", "then", i, e.p.then, 0.0, 1.0))
            out.append(_Knob(e.id, "p", "else", i, e.p.otherwise, 0.0, 1.0))
        elif isinstance(e.p, Categorical):  # a shift of every value, around its mean
            mean = float(problem.prior @ problem.p_table[i])
            out.append(_Knob(e.id, "p", "shift", i, mean, 0.0, 1.0))
        else:
            out.append(_Knob(e.id, "p", None, i, float(e.p), 0.0, 1.0))
    for k, h in enumerate(problem.hypotheses[: problem.booleans]):
        out.append(_Knob(h, "prior", None, k, float(roadmap.hypotheses[h]), 0.0, 1.0))
    for i, e in enumerate(roadmap.experiments):
        c = e.cost.median
        # above the budget left (even its cheapest outcome) an experiment cannot start
        top = max(c, budget + problem.resolution)
        if e.cost.stochastic:
            u = problem.cost_units[i]
            frac = max(u[0] / max(problem.mean_cost[i], 1e-12), 1e-3)
            top = max(c, (budget + problem.resolution) / frac)
        out.append(_Knob(e.id, "cost", None, i, float(c), 0.0, float(top)))
    return out


# ------------------------------------------------------------------ the analysis


class _Solver:
    """Re-solves perturbed problems on the shared state space, counting them."""

    def __init__(self, solution: Solution):
        self.solution = solution
        self.count = 0

    def solve(self, problem: PlanningProblem) -> tuple[float, int]:
        sp = _space_for(self.solution.space, self.solution.problem, problem)
        V, pol = solve_exact(problem, sp)
        self.count += 1
        s, b = sp.root, problem.start_budget
        return float(V[s, b]), int(pol[s, b])


def _fixed_policy_value(solution: Solution, problem: PlanningProblem) -> float:
    sp = _space_for(solution.space, solution.problem, problem)
    return start_value(problem, sp, solution.policy).value


def _flip(solver, roadmap, base_problem, knob, first, direction, tol):
    """Nearest value from knob.base in `direction` where the first action changes."""
    end = knob.lo if direction < 0 else knob.hi
    if (end - knob.base) * direction <= 0:
        return None, None
    grid = knob.base + (end - knob.base) * np.arange(1, SCAN_POINTS + 1) / SCAN_POINTS
    same = knob.base
    for x in grid:
        _, a = solver.solve(_set(base_problem, roadmap, knob, float(x)))
        if a != first:
            diff, act = float(x), a
            break
        same = float(x)
    else:
        return None, None
    while abs(diff - same) > tol:
        mid = 0.5 * (diff + same)
        _, a = solver.solve(_set(base_problem, roadmap, knob, mid))
        if a != first:
            diff, act = mid, a
        else:
            same = mid
    return diff, act


def _revealed(problem: PlanningProblem, i: int | None, h: int | None):
    """[(probability, problem)] conditioned on each answer: experiment i's outcome, or
    hypothesis h's truth."""
    out = []
    if h is not None:
        for mask in _latent_masks(problem, h):
            w = problem.prior * mask
            z = w.sum()
            if z > 0:
                out.append((float(z), replace(problem, prior=w / z)))
        return out
    for success in (True, False):
        lik = problem.p_table[i] if success else 1 - problem.p_table[i]
        w = problem.prior * lik
        z = w.sum()
        if z <= 0:
            continue
        table = problem.p_table.copy()
        table[i] = 1.0 if success else 0.0
        out.append((float(z), replace(problem, prior=w / z, p_table=table)))
    return out


def _with_headroom(roadmap: Roadmap, solution: Solution, cost_factor: float) -> Solution:
    """A budget beyond what the roadmap can spend is planned as just enough (`surplus`);
    raising a cost must still find that budget, so plan over `cost_factor` times the
    levels (or the whole budget, if less). Same states, same value at the start."""
    pr = solution.problem
    if pr.surplus <= 0:
        return solution
    extra = min(int(pr.surplus / pr.resolution + 1e-9), int(pr.levels * (cost_factor - 1)) + 1)
    levels = pr.levels + extra
    units, probs = [], []
    for e in roadmap.experiments:
        u, q = e.cost.levels(pr.resolution, cap=levels + 1)
        units.append(u)
        probs.append(q)
    wide = replace(
        pr,
        levels=levels,
        start_budget=pr.start_budget + extra,
        surplus=pr.surplus - extra * pr.resolution,
        cost_units=tuple(units),
        cost_probs=tuple(probs),
    )
    V, pol = solve_exact(wide, solution.space)
    return replace(solution, problem=wide, values=V, policy=pol, _eval_cache={}, _table_cache={})


def evpi(solution: Solution, *, experiment: str | None = None, hypothesis: str | None = None):
    """Expected value of perfect information about one experiment's outcome or one
    hypothesis, at the planning start (>= 0)."""
    pr = solution.problem
    i = None if experiment is None else pr.ids.index(experiment)
    h = None if hypothesis is None else pr.hypotheses.index(hypothesis)
    if i is not None and pr.start_status[i] != UNTRIED:
        return 0.0  # already known
    solver = _Solver(solution)
    return _evpi(solver, pr, i, h)


def _evpi(solver, pr, i, h) -> float:
    base = solver.solution.root_value
    total = sum(p * solver.solve(prob)[0] for p, prob in _revealed(pr, i, h))
    gain = total - base
    # The same solve on a problem where the answer changes nothing gives the same bits;
    # anything within float noise of 0 is 0, and never below it.
    return 0.0 if gain < 1e-9 * max(1.0, abs(base)) else float(gain)


def sensitivity(
    roadmap: Roadmap,
    solution: Solution,
    *,
    p_step: float = 0.1,
    cost_factor: float = 2.0,
    p_tol: float = 1e-3,
    flips: bool = True,
    progress=None,
) -> Sensitivity:
    """Gradient, tornado, flip points and EVPI for every input of a solved roadmap.

    `roadmap` must be the one `solution` was compiled from (its costs are re-discretised
    at the solution's resolution). Only the exact solver's arithmetic is used for the
    re-solves, on the solution's state space (inputs never change the states). With
    `flips=False` the flip points (most of the re-solves) are skipped and left None.
    """
    if not (0 < p_step <= 1):
        raise SolverError(f"p_step must be in (0, 1], got {p_step}")
    if not (np.isfinite(cost_factor) and cost_factor > 1):
        raise SolverError(f"cost_factor must be a number above 1, got {cost_factor}")
    if tuple(e.id for e in roadmap.experiments) != solution.problem.ids:
        raise SolverError("the roadmap is not the one this solution was compiled from")
    t0 = time.perf_counter()
    solution = _with_headroom(roadmap, solution, cost_factor)
    pr, sp = solution.problem, solution.space
    s, b = sp.root, pr.start_budget
    base_value = solution.root_value
    first = int(solution.policy[s, b])
    solver = _Solver(solution)
    knobs = _knobs(roadmap, pr)
    params = []

    def name(a):
        return None if a < 0 else pr.ids[a]

    for knob in knobs:
        if knob.param == "cost":
            step = pr.resolution
            up = _set(pr, roadmap, knob, knob.base + step)
            grad = (_fixed_policy_value(solution, up) - base_value) / step
            low, high = knob.base / cost_factor, knob.base * cost_factor
            tol = pr.resolution
        elif knob.branch == "shift":  # affine in the shift: one unclipped unit step
            up = _set(pr, roadmap, knob, knob.base + 1.0, clip=False)
            grad = _fixed_policy_value(solution, up) - _fixed_policy_value(solution, pr)
            low, high = max(0.0, knob.base - p_step), min(1.0, knob.base + p_step)
            tol = p_tol
        else:
            v1 = _fixed_policy_value(solution, _set(pr, roadmap, knob, 1.0))
            v0 = _fixed_policy_value(solution, _set(pr, roadmap, knob, 0.0))
            grad = v1 - v0
            low, high = max(0.0, knob.base - p_step), min(1.0, knob.base + p_step)
            tol = p_tol
        vlow = solver.solve(_set(pr, roadmap, knob, low))[0]
        vhigh = solver.solve(_set(pr, roadmap, knob, high))[0]
        fb = ab = fa = aa = None
        if flips:
            fb, ab = _flip(solver, roadmap, pr, knob, first, -1, tol)
            fa, aa = _flip(solver, roadmap, pr, knob, first, +1, tol)
        params.append(
            Parameter(
                node=knob.node,
                param=knob.param,
                branch=knob.branch,
                base=knob.base,
                gradient=float(grad),
                low=float(low),
                high=float(high),
                value_low=vlow,
                value_high=vhigh,
                flip_below=fb,
                flip_above=fa,
                next_below=None if fb is None else (name(ab) or "stop"),
                next_above=None if fa is None else (name(aa) or "stop"),
            )
        )
        if progress is not None:
            progress(1)
    params.sort(key=lambda p: -p.swing)
    ev_exp, ev_hyp = {}, {}
    for i, eid in enumerate(pr.ids):
        ev_exp[eid] = 0.0 if pr.start_status[i] != UNTRIED else _evpi(solver, pr, i, None)
        if progress is not None:
            progress(1)
    for k, h in enumerate(pr.hypotheses):
        ev_hyp[h] = _evpi(solver, pr, None, k)
        if progress is not None:
            progress(1)
    return Sensitivity(
        value=base_value,
        next=name(first),
        resolution=pr.resolution,
        parameters=tuple(params),
        evpi_experiments=ev_exp,
        evpi_hypotheses=ev_hyp,
        solves=solver.count,
        seconds=time.perf_counter() - t0,
    )


SOLVES_PER_INPUT = 23  # measured mean over the benchmark cases (BENCHMARKS.md)


def sensitivity_inputs(roadmap: Roadmap) -> int:
    """How many inputs `sensitivity` varies: each p (two for a conditional one), each
    hypothesis prior, each cost."""
    n_p = sum(2 if isinstance(e.p, Conditional) else 1 for e in roadmap.experiments)
    return n_p + len(roadmap.hypotheses) + len(roadmap.experiments)


def sensitivity_steps(roadmap: Roadmap) -> int:
    """Progress steps `sensitivity` reports: one per input, then one per EVPI."""
    latents = len(roadmap.hypotheses) + len(roadmap.categories)
    return sensitivity_inputs(roadmap) + len(roadmap.experiments) + latents
