"""The validated roadmap model: frozen dataclasses, built only by the loader."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from scipy import stats

# z-score of the 90th percentile of a standard normal: p90 = median * exp(Z90 * sigma).
Z90 = float(stats.norm.ppf(0.9))


@dataclass(frozen=True, kw_only=True)
class Cost:
    """Compute cost of an experiment in the roadmap's unit.

    Deterministic when `p90` is None; otherwise lognormal with the given median
    and 90th percentile.
    """

    median: float
    p90: float | None = None

    @property
    def stochastic(self) -> bool:
        return self.p90 is not None and self.p90 > self.median

    @property
    def mean(self) -> float:
        if not self.stochastic:
            return self.median
        sigma = math.log(self.p90 / self.median) / Z90
        return self.median * math.exp(sigma**2 / 2)

    def levels(self, resolution: float, *, bins: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """Discretise into whole resolution units: (units int64 (K,), probs (K,)).

        A lognormal is cut into `bins` equal-probability bins, each represented by
        its conditional median (the quantile at the bin's middle). Costs round up
        to whole units (never plan to do more than the budget allows); a float
        tolerance keeps 40/10 at 4 units, not 5.
        """
        if not self.stochastic:
            values = np.array([self.median])
            probs = np.array([1.0])
        else:
            sigma = math.log(self.p90 / self.median) / Z90
            q = (np.arange(bins) + 0.5) / bins
            values = self.median * np.exp(sigma * stats.norm.ppf(q))
            probs = np.full(bins, 1.0 / bins)
        units = np.ceil(values / resolution - 1e-9).astype(np.int64)
        units = np.maximum(units, 0)
        uniq, inv = np.unique(units, return_inverse=True)
        merged = np.bincount(inv, weights=probs)
        return uniq, merged


@dataclass(frozen=True, kw_only=True)
class Conditional:
    """A success probability that depends on one binary hypothesis."""

    hypothesis: str
    then: float  # p when the hypothesis is true
    otherwise: float  # p when it is false

    def mean(self, prior: float) -> float:
        return prior * self.then + (1 - prior) * self.otherwise


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """One node of the roadmap.

    `requires` is a conjunction of clauses; a clause is satisfied when any of its
    ids has succeeded. A plain `after: [a, b]` is `((a,), (b,))`; `after: {any:
    [a, b]}` is `((a, b),)`.
    """

    id: str
    title: str = ""
    requires: tuple[tuple[str, ...], ...] = ()
    p: float | Conditional = 1.0
    cost: Cost = field(default_factory=lambda: Cost(median=0.0))
    reward: float = 0.0
    train: dict | None = None
    success: dict | None = None
    line: int | None = field(default=None, compare=False)
    # where p and/or cost came from a fitted law: law, params, tokens, loss, loss_interval,
    # p, flops (derisk.scaling.TrainEstimate as a dict)
    estimate: dict | None = field(default=None, compare=False)

    @property
    def prerequisites(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i for clause in self.requires for i in clause))

    def p_mean(self, hypotheses: dict[str, float]) -> float:
        if isinstance(self.p, Conditional):
            return self.p.mean(hypotheses[self.p.hypothesis])
        return self.p

    def __hash__(self) -> int:  # dict fields are not hashable; ids are unique
        return hash(self.id)


@dataclass(frozen=True, kw_only=True)
class Roadmap:
    """A validated roadmap. Build it with `load_roadmap` or `roadmap_from_dict`."""

    name: str
    experiments: tuple[Experiment, ...]
    budget: float
    unit: str | None = None  # "gpu_hours", "flops", or None for unitless
    resolution: float | None = None  # None: chosen by `effective_resolution`
    compute_price: float = 0.0
    hypotheses: dict[str, float] = field(default_factory=dict)
    source: str = "<roadmap>"

    def __hash__(self) -> int:
        return hash((self.name, self.source, self.budget, tuple(self.experiments)))

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(e.id for e in self.experiments)

    def experiment(self, id: str) -> Experiment:
        for e in self.experiments:
            if e.id == id:
                return e
        raise KeyError(id)

    def graph(self) -> nx.DiGraph:
        """Prerequisite DAG: an edge a -> b when b needs a (in any clause)."""
        g = nx.DiGraph()
        for e in self.experiments:
            g.add_node(e.id, experiment=e)
        for e in self.experiments:
            for pre in e.prerequisites:
                g.add_edge(pre, e.id)
        return g

    def effective_resolution(self) -> float:
        """The budget step: as given, else the gcd of integer costs, else budget/200."""
        if self.resolution is not None:
            return self.resolution
        amounts = [self.budget] + [e.cost.median for e in self.experiments if not e.cost.stochastic]
        if all(float(a).is_integer() for a in amounts):
            g = 0
            for a in amounts:
                g = math.gcd(g, int(a))
            if g > 0 and self.budget / g <= 2000:
                return float(g)
        return self.budget / 200 if self.budget > 0 else 1.0

    def unit_label(self) -> str:
        return {"gpu_hours": "GPU-h", "flops": "FLOP"}.get(self.unit or "", "")
