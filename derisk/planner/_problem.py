"""A roadmap compiled into the arrays the solvers work on."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import networkx as nx
import numpy as np

from derisk.errors import SolverError
from derisk.graphs import MAX_LEVELS, Categorical, Conditional, Roadmap
from derisk.graphs._model import steps_up

# Status codes of one experiment inside a state.
UNTRIED, SUCCESS, FAILED, DEAD = 0, 1, 2, 3
# DEAD means "did not succeed, and its outcome carries no evidence": an untried node
# that can no longer matter, a run cut off by the budget, or a tried node whose outcome
# no longer affects anything. Prerequisites treat FAILED and DEAD alike.

MAX_NODES = 127  # policies are int8 tables of node indices (-1 = stop)
MAX_HYPOTHESES = 10  # the belief is a vector over 2**H hypothesis configurations
MAX_CONFIGS = 16384  # ... times the values of every categorical variable (law worlds too)


@dataclass(frozen=True, eq=False)
class PlanningProblem:
    """Everything a solver needs, in budget units of `resolution`.

    Attributes:
        ids: experiment ids, index i is node i.
        levels: number of budget levels minus one; values exist for b = 0..levels.
        cost_units / cost_probs: per node, the discretised cost distribution.
        p_table: (n, C) success probability of each node under each of the C
            configurations of the latent variables (rows equal across C without any).
        prior: (C,) prior over configurations.
        hypotheses: the latent variables: the `n_boolean` boolean hypotheses first, then
            the categorical ones (user-declared, and law worlds). Configuration c = m x
            2**H + b: b enumerates the booleans (bit H-1-k of b is 0 when hypothesis k is
            true), m the categorical values (the first categorical most significant).
        hyp_of: (n,) index in `hypotheses` of the variable node i depends on, or -1.
        clauses: per node, tuple of bit masks; node i needs, for every mask, one success.
        topo: node indices in topological order.
        price_per_unit: reward lost per budget unit spent.
        start_status / start_budget: where planning starts (recorded outcomes).
    """

    ids: tuple[str, ...]
    titles: tuple[str, ...]
    reward: np.ndarray
    cost_units: tuple[np.ndarray, ...]
    cost_probs: tuple[np.ndarray, ...]
    p_table: np.ndarray
    prior: np.ndarray
    hyp_of: np.ndarray
    hypotheses: tuple[str, ...]
    clauses: tuple[tuple[int, ...], ...]
    topo: tuple[int, ...]
    levels: int
    resolution: float
    unit: str | None
    price_per_unit: float
    start_status: np.ndarray
    start_budget: int
    # Budget beyond what the roadmap could ever spend (every experiment at its largest
    # cost), in the roadmap's unit: not planned over (it changes nothing), only reported.
    surplus: float = 0.0
    n_boolean: int | None = None  # boolean hypotheses among `hypotheses` (None: all)
    cat_prior: np.ndarray | None = None  # (C,) the categorical variables' share of prior
    cat_values: tuple[tuple[str, ...], ...] = ()  # each categorical variable's values

    @property
    def booleans(self) -> int:
        return len(self.hypotheses) if self.n_boolean is None else self.n_boolean

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def min_cost(self) -> np.ndarray:
        return np.array([c[0] for c in self.cost_units], dtype=np.int64)

    @property
    def mean_cost(self) -> np.ndarray:
        return np.array(
            [float(c @ q) for c, q in zip(self.cost_units, self.cost_probs, strict=True)]
        )

    def level_of(self, budget: float) -> int:
        return int(np.floor(budget / self.resolution + 1e-9))


def compile_roadmap(
    roadmap: Roadmap,
    *,
    budget: float | None = None,
    resolution: float | None = None,
    outcomes: dict[str, str] | None = None,
    spent: float = 0.0,
    cost_bins: int = 8,
) -> PlanningProblem:
    """Turn a validated roadmap into a `PlanningProblem`.

    Args:
        budget: overrides the roadmap's budget (the top budget level).
        resolution: overrides the budget step.
        outcomes: recorded results, id -> "success" | "failure".
        spent: compute already spent (in the roadmap's unit), taken off the budget.
        cost_bins: equal-probability bins for a lognormal cost.
    """
    if roadmap.pending:
        raise SolverError(
            f"{roadmap.source}: the p or cost of {', '.join(roadmap.pending)} come from laws "
            "and FLOPs not yet resolved; plan `derisk.estimators.resolve(roadmap).roadmap`"
        )
    n = len(roadmap.experiments)
    if n > MAX_NODES:
        raise SolverError(
            f"{roadmap.source}: {n} experiments; the planner handles at most {MAX_NODES}. "
            "Merge experiments that always run together, or split the roadmap into phases."
        )
    hyps = tuple(roadmap.hypotheses)
    if len(hyps) > MAX_HYPOTHESES:
        raise SolverError(f"{roadmap.source}: {len(hyps)} hypotheses; at most {MAX_HYPOTHESES}.")
    total = roadmap.budget if budget is None else float(budget)
    if not np.isfinite(total) or total < 0:
        raise SolverError(f"--budget must be a non-negative finite number, got {budget!r}")
    # More budget than every experiment together could spend plans like exactly that much:
    # the step is chosen for what can be spent, so a what-if "--budget 1e6" does not
    # coarsen the step until the plan is worse (or free).
    largest = np.array([e.cost.values(bins=cost_bins)[0].max() for e in roadmap.experiments])
    spendable = float(largest.sum())
    if resolution is not None:
        res = float(resolution)
        if not (np.isfinite(res) and res > 0):
            raise SolverError(f"--resolution must be a positive number, got {resolution!r}")
    else:
        res = replace(roadmap, budget=min(total, max(spendable, 0.0))).effective_resolution()
    planned = total
    if total > spendable:
        # every experiment at its largest cost, in whole steps (floats: no cap, no wrap)
        planned = min(total, float(steps_up(largest, res).sum()) * res)
    steps = planned / res
    if steps > MAX_LEVELS:
        given = "--resolution" if resolution is not None else "`resolution:`"
        raise SolverError(
            f"{roadmap.source}: a budget of {total:g} in steps of {res:g} ({given}) is "
            f"{steps:,.3g} budget levels; at most {MAX_LEVELS:,}: raise {given} to at least "
            f"{total / MAX_LEVELS:.3g}, or lower the budget"
        )
    levels = int(np.floor(steps + 1e-9))
    index = {e.id: i for i, e in enumerate(roadmap.experiments)}

    configs = list(itertools.product((1, 0), repeat=len(hyps)))  # 1 = hypothesis true
    priors = np.array([roadmap.hypotheses[h] for h in hyps])
    prior = np.array(
        [np.prod([priors[k] if c[k] else 1 - priors[k] for k in range(len(hyps))]) for c in configs]
    )
    cats = tuple(roadmap.categories)
    values = [tuple(roadmap.categories[c]) for c in cats]
    size = len(configs) * int(np.prod([len(v) for v in values]))
    if size > MAX_CONFIGS:
        raise SolverError(
            f"{roadmap.source}: its hypotheses and law worlds make {size:,} configurations "
            f"of the latent variables; at most {MAX_CONFIGS:,}: use fewer hypotheses, or "
            "--independent-laws to treat law-driven nodes as independent"
        )
    # categorical values: the most significant digits of the configuration index
    combos = list(itertools.product(*values)) if cats else [()]
    cat_prior = np.array(
        [np.prod([roadmap.categories[c][v] for c, v in zip(cats, m, strict=True)]) for m in combos]
    )
    cat_prior = np.repeat(cat_prior, len(configs))
    prior = np.tile(prior, len(combos)) * cat_prior
    latents = hyps + cats
    p_table = np.zeros((n, len(prior)))
    hyp_of = np.full(n, -1, dtype=np.int64)
    for i, e in enumerate(roadmap.experiments):
        if isinstance(e.p, Conditional):
            k = hyps.index(e.p.hypothesis)
            hyp_of[i] = k
            row = [e.p.then if c[k] else e.p.otherwise for c in configs]
            p_table[i] = np.tile(row, len(combos))
        elif isinstance(e.p, Categorical):
            j = cats.index(e.p.hypothesis)
            hyp_of[i] = len(hyps) + j
            table = dict(e.p.table)
            p_table[i] = np.repeat([table[m[j]] for m in combos], len(configs))
        else:
            p_table[i] = e.p

    units, probs = [], []
    for e in roadmap.experiments:
        # Clamped at levels + 1, "more than the whole budget": unaffordable, never wrapped.
        u, q = e.cost.levels(res, bins=cost_bins, cap=levels + 1)
        units.append(u)
        probs.append(q)
    clauses = tuple(
        tuple(sum(1 << index[a] for a in clause) for clause in e.requires)
        for e in roadmap.experiments
    )
    topo = tuple(index[i] for i in nx.topological_sort(roadmap.graph()))

    status = np.zeros(n, dtype=np.int8)
    for eid, outcome in (outcomes or {}).items():
        status[index[eid]] = SUCCESS if outcome == "success" else FAILED
    if not np.isfinite(spent):
        raise SolverError(f"compute spent must be a finite number, got {spent!r}")
    start_steps = (total - spent) / res  # in [-inf, levels]: clip before the int cast
    start = int(np.floor(min(max(start_steps, 0.0), levels) + 1e-9))
    surplus = max(0.0, (total - spent) - levels * res) if planned < total else 0.0
    return PlanningProblem(
        ids=tuple(e.id for e in roadmap.experiments),
        titles=tuple(e.title for e in roadmap.experiments),
        reward=np.array([e.reward for e in roadmap.experiments], dtype=np.float64),
        cost_units=tuple(units),
        cost_probs=tuple(probs),
        p_table=p_table,
        prior=prior,
        hyp_of=hyp_of,
        hypotheses=latents,
        n_boolean=len(hyps),
        cat_prior=cat_prior if cats else None,
        cat_values=tuple(values),
        clauses=clauses,
        topo=topo,
        levels=levels,
        resolution=float(res),
        unit=roadmap.unit,
        price_per_unit=roadmap.compute_price * res,
        start_status=status,
        start_budget=min(start, levels),
        surplus=surplus,
    )
