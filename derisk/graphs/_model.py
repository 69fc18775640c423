"""The validated roadmap model: frozen dataclasses, built only by the loader."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from scipy.special import ndtri  # the standard normal's quantile (scipy.stats: 1.4 s to import)

from derisk.errors import DeriskWarning

# Budget levels: at most MAX_LEVELS in any solve (the state-space guard multiplies states
# by levels; past 10 million levels one state's value vector alone is 80 MB), and at most
# MAX_AUTO_LEVELS when derisk chooses the step itself. 2,000 levels keep every cost within
# MAX_INFLATION of its value whenever the cheapest cost is at least ~1% of the budget, and
# keep a 20-experiment roadmap's value arrays in memory; finer steps are the user's call.
MAX_LEVELS = 10_000_000
MAX_AUTO_LEVELS = 2_000
USUAL_LEVELS = 200  # the automatic step's levels before this rule: budget / 200
MAX_INFLATION = 0.05  # the most rounding up to whole steps may inflate a cost, relatively
MAX_UNITS = 2**62  # clamp for cost units when no cap is given: never wrap int64

# z-score of the 90th percentile of a standard normal: p90 = median * exp(Z90 * sigma).
Z90 = float(ndtri(0.9))


def unit_label(unit: str | None) -> str:
    """How a canonical unit is printed (and accepted back as input): GPU-h, FLOP."""
    return {"gpu_hours": "GPU-h", "flops": "FLOP", "usd": "USD"}.get(unit or "", "")


def steps_up(values: np.ndarray, resolution: float) -> np.ndarray:
    """Costs in whole budget steps, as floats (no cap, no int cast): rounded up, with a
    float tolerance that keeps 40/10 at 4 steps, and never 0 for a positive cost."""
    with np.errstate(over="ignore"):
        steps = np.ceil(np.asarray(values, dtype=float) / resolution - 1e-9)
    return np.where(np.asarray(values) > 0, np.maximum(steps, 1.0), 0.0)


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

    def values(self, *, bins: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """The discretised distribution in the roadmap's unit: (values (K,), probs (K,)).

        A lognormal is cut into `bins` equal-probability bins, each represented by
        its conditional median (the quantile at the bin's middle).
        """
        if not self.stochastic:
            return np.array([self.median]), np.array([1.0])
        sigma = math.log(self.p90 / self.median) / Z90
        q = (np.arange(bins) + 0.5) / bins
        with np.errstate(over="ignore"):  # an absurd p90 gives inf bins: clamped later
            values = self.median * np.exp(sigma * ndtri(q))
        return values, np.full(bins, 1.0 / bins)

    def levels(
        self, resolution: float, *, bins: int = 8, cap: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Discretise into whole resolution units: (units int64 (K,), probs (K,)).

        Costs round up to whole units (never plan to do more than the budget allows);
        a float tolerance keeps 40/10 at 4 units, not 5. Units are clamped at `cap`
        (pass the budget's levels + 1: "more than the whole budget"), so that a cost of
        any size stays unaffordable instead of overflowing int64.
        """
        values, probs = self.values(bins=bins)
        steps = steps_up(values, resolution)
        # A cost beyond the budget is unaffordable whatever its size: clamp before the cast,
        # which would otherwise wrap a cost of 1e19 steps around to a negative (or zero).
        steps = np.minimum(steps, float(min(cap, MAX_UNITS)) if cap is not None else MAX_UNITS)
        units = steps.astype(np.int64)
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


Mark = tuple  # (line, col) in the roadmap file, either may be None


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """A node's training run, as written (`train:`): what the estimators resolve into a
    cost (FLOPs, then the roadmap's unit on the given hardware) and, with a
    `SuccessSpec`, a probability. Only what the file gave is set; `marks` says where each
    key was written, so a problem found while resolving points at the file."""

    arch: str = "dense"
    params: float | None = None  # non-embedding parameters (total, for an MoE)
    active_params: float | None = None  # non-embedding parameters one token uses
    tokens: float | None = None
    d_model: int | None = None
    layers: int | None = None
    heads: int | None = None
    seq_len: int | None = None
    vocab: int | None = None
    experts: int | None = None
    top_k: int | None = None
    granularity: float | None = None
    hardware: str | None = None
    mfu: tuple[float, float] | None = None  # an 80% interval; (x, x) for one value
    mark: Mark = field(default=(None, None), compare=False)
    marks: dict = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict:
        """The keys the file gave, as written (mfu as one number or [lo, hi])."""
        out = {}
        for k in TRAIN_FIELDS:
            v = getattr(self, k)
            if v is None:
                continue
            if k == "mfu":
                v = v[0] if v[0] == v[1] else list(v)
            out[k] = v
        return out


TRAIN_FIELDS = (
    "arch",
    "params",
    "active_params",
    "tokens",
    "d_model",
    "layers",
    "heads",
    "seq_len",
    "vocab",
    "experts",
    "top_k",
    "granularity",
    "hardware",
    "mfu",
)


@dataclass(frozen=True, kw_only=True)
class SuccessSpec:
    """A node's success rule (`success:`): the run's loss below `loss_below`, or below the
    loss of experiment `beats`'s run, by the law `law` (None: the shipped law for the
    run's architecture)."""

    loss_below: float | None = None
    beats: str | None = None
    law: str | None = None
    mark: Mark = field(default=(None, None), compare=False)
    marks: dict = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict:
        rule = {"beats": self.beats} if self.beats else {"loss_below": self.loss_below}
        return {**rule, **({"law": self.law} if self.law else {})}


@dataclass(frozen=True, kw_only=True)
class ComputeDefaults:
    """Roadmap-level defaults for pricing training runs: the hardware and MFU a `train:`
    block without its own uses, the price of a GPU-hour (for budgets in `usd`), and the
    older `flops_per_gpu_hour` (peak x MFU x 3600, instead of hardware and MFU)."""

    hardware: str | None = None
    mfu: tuple[float, float] | None = None
    usd_per_gpu_hour: float | None = None
    flops_per_gpu_hour: float | None = None
    marks: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True, kw_only=True)
class Categorical:
    """A success probability that depends on one categorical latent variable: a
    hypothesis with several values (`hypotheses: {arch: {a: 0.5, b: 0.3, c: 0.2}}`,
    `p: {if: arch, a: 0.9, b: 0.5, c: 0.1}`), or the "world" of a fitted law (one value
    per bootstrap parameter sample, set by the estimators: nodes estimated from one law
    share it, so one's outcome moves the others' p)."""

    hypothesis: str
    table: tuple[tuple[str, float], ...]  # (value, p) in the variable's order

    def mean(self, prior: dict[str, float]) -> float:
        return float(sum(prior[v] * p for v, p in self.table))

    def p_of(self, value: str) -> float:
        return dict(self.table)[value]


def describe_p(p, categories: dict | None = None, digits: int = 2) -> str:
    """A success probability in words: `0.70`, `0.90 if h else 0.20`, `by arch: a 0.90,
    b 0.50`, or for a law's worlds its mean, `0.74 (law cpu-dense, 200 worlds)`."""
    if isinstance(p, Conditional):
        return f"{p.then:.{digits}f} if {p.hypothesis} else {p.otherwise:.{digits}f}"
    if isinstance(p, Categorical):
        if p.hypothesis.startswith("law "):
            prior = (categories or {}).get(p.hypothesis)
            mean = p.mean(prior) if prior else sum(q for _, q in p.table) / len(p.table)
            return f"{mean:.{digits}f} ({p.hypothesis}, {len(p.table)} worlds)"
        values = ", ".join(f"{v} {q:.{digits}f}" for v, q in p.table)
        return f"by {p.hypothesis}: {values}"
    return f"{float(p):.{digits}f}"


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
    p: float | Conditional | Categorical = 1.0
    cost: Cost = field(default_factory=lambda: Cost(median=0.0))
    reward: float = 0.0
    train: TrainSpec | None = None
    success: SuccessSpec | None = None
    line: int | None = field(default=None, compare=False)
    # what the estimators still have to set from `train`/`success` ("p", "cost"); a
    # roadmap with any is not ready to plan (derisk.estimators.resolve sets them)
    pending: tuple[str, ...] = ()
    # where p and/or cost came from a fitted law (derisk.estimators.Estimate as a dict),
    # set by the estimators
    estimate: dict | None = field(default=None, compare=False)

    @property
    def prerequisites(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(i for clause in self.requires for i in clause))

    def p_mean(self, hypotheses: dict[str, float], categories: dict | None = None) -> float:
        """p averaged over its hypothesis's prior (boolean or categorical)."""
        if isinstance(self.p, Conditional):
            return self.p.mean(hypotheses[self.p.hypothesis])
        if isinstance(self.p, Categorical):
            return self.p.mean((categories or {})[self.p.hypothesis])
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
    # categorical latent variables: name -> {value: prior} (priors sum to 1); user-declared
    # ones and, set by the estimators, one "law NAME" per law whose runs share its worlds
    categories: dict[str, dict[str, float]] = field(default_factory=dict, compare=False)
    source: str = "<roadmap>"
    # `--set` overrides applied, in order: {"set": "pilot.p=0.3", "target": "pilot.p",
    # "before": 0.5, "after": 0.3}, values in the roadmap's unit (see load_with_overrides)
    overrides: tuple[dict, ...] = field(default=(), compare=False)
    compute: ComputeDefaults = field(default_factory=ComputeDefaults, compare=False)

    @property
    def pending(self) -> tuple[str, ...]:
        """Experiments whose p or cost a law or the hardware still has to set."""
        return tuple(e.id for e in self.experiments if e.pending)

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
        """The budget step: as given, else the one `choose_resolution` picks.

        Warns (`DeriskWarning`) when no automatic step within `MAX_AUTO_LEVELS` keeps
        every cost within `MAX_INFLATION`, naming the worst-rounded experiment.
        """
        if self.resolution is not None:
            return self.resolution
        choice = choose_resolution(self.budget, [(e.id, e.cost) for e in self.experiments])
        if choice.inflation > MAX_INFLATION:
            unit = self.unit_label()
            u = f" {unit}" if unit else ""
            change = (choice.worst_rounded - choice.worst_cost) / choice.worst_cost
            levels = self.budget / choice.suggested
            fix = (
                f"set `resolution:` in the file or pass --resolution (e.g. "
                f"{choice.suggested:g}{u}, {levels:,.0f} levels, slower)"
                if levels <= MAX_LEVELS
                else f"the budget is more than {MAX_LEVELS:,} of its cheapest steps; plan "
                "with a smaller budget, or merge the cheapest experiments into others"
            )
            warnings.warn(
                f"{self.source}: no budget step of at most {MAX_AUTO_LEVELS:,} levels keeps "
                f"every cost within {MAX_INFLATION:.0%}: with a step of {choice.step:g}{u}, "
                f"`{choice.worst_id}` costing {choice.worst_cost:g}{u} plans as "
                f"{choice.worst_rounded:g}{u} ({change:+.0%}); " + fix,
                DeriskWarning,
                stacklevel=2,
            )
        return choice.step

    def unit_label(self) -> str:
        return unit_label(self.unit)


@dataclass(frozen=True, kw_only=True)
class ResolutionChoice:
    """An automatic budget step and how much it inflates the worst-rounded cost.

    `inflation` is (rounded - cost) / cost for the worst cost among deterministic
    costs, stochastic medians and the bins of stochastic costs (those within the
    budget); `suggested` is a step that keeps it within `MAX_INFLATION` ignoring the
    level cap (equal to `step` when `step` does).
    """

    step: float
    levels: int
    inflation: float
    worst_id: str | None
    worst_cost: float
    worst_rounded: float
    suggested: float


def _rounded_up(amount: float, step: float) -> float:
    return float(steps_up(amount, step)) * step  # as `Cost.levels` rounds


def _nice_steps(hi: float, lo: float):
    """1, 2, 2.5, 5 x 10^k from the largest <= hi down to lo, largest first."""
    if not (hi > 0 and math.isfinite(hi)):
        return
    k = math.floor(math.log10(hi)) + 1
    while True:
        for m in (5.0, 2.5, 2.0, 1.0):
            s = m * 10.0**k
            if s < lo:
                return
            if s <= hi:
                yield s
        k -= 1


def choose_resolution(
    budget: float,
    costs: list[tuple[str, Cost]],
    *,
    max_levels: int = MAX_AUTO_LEVELS,
    max_inflation: float = MAX_INFLATION,
    bins: int = 8,
) -> ResolutionChoice:
    """A budget step that rounds no cost up by more than `max_inflation`, if one exists.

    "No cost" covers deterministic costs, the medians of stochastic costs, and the mean
    of each stochastic cost's bins (so a step as coarse as the median cannot lump the
    whole distribution into one or two steps). Costs above the budget are unaffordable
    at any step and are not counted.

    Costs round up to whole steps and the budget down, so a coarse step inflates cheap
    experiments (a 120 GPU-h run planned as 360) and a fine one multiplies the solver's
    work. Among "nice" steps (1, 2, 2.5, 5 x 10^k) with at most `max_levels` levels, one
    that keeps every cost within `max_inflation` (and loses at most that share
    of the budget) wins, the most accurate one when one within `USUAL_LEVELS` levels
    qualifies; failing that, steps that divide the costs exactly; failing that, the
    step within the cap with the smallest worst inflation.

    >>> choose_resolution(72000.0, [("a", Cost(median=120.0))]).step
    120.0
    """
    if not (budget > 0 and math.isfinite(budget)):
        return ResolutionChoice(
            step=1.0, levels=0, inflation=0.0, worst_id=None, worst_cost=0.0,
            worst_rounded=0.0, suggested=1.0,
        )  # fmt: skip
    amounts: list[tuple[float, str]] = []  # (cost or median, id), in (0, budget]
    spreads = []  # (id, bin values, bin probs) of stochastic costs, bins in (0, budget]
    exact: list[float] = []  # amounts a step may divide exactly
    for eid, cost in costs:
        if 0 < cost.median <= budget:
            amounts.append((cost.median, eid))
        if cost.stochastic:
            values, probs = cost.values(bins=bins)
            keep = (values > 0) & (values <= budget)
            if keep.any():
                spreads.append((eid, values[keep], probs[keep]))
        else:
            exact.append(cost.median)
    amounts.sort()
    # Only the cheapest amounts can be inflated much; the rest bound the work per step.
    distinct = list(dict.fromkeys(a for a, _ in amounts))

    def worst(step: float) -> tuple[float, float, str | None, float]:
        """(inflation, cost, id, rounded cost) of the worst-rounded cost at this step."""
        levels = math.floor(budget / step + 1e-9)
        out = ((budget - levels * step) / budget, budget, None, levels * step)
        for a, eid in amounts:
            rounded = _rounded_up(a, step)
            inflation = (rounded - a) / a
            if inflation > out[0]:
                out = (inflation, a, eid, rounded)
        for eid, values, probs in spreads:
            # a stochastic cost's mean over its bins (each rounded up to whole steps)
            mean = float(values @ probs) / float(probs.sum())
            rounded = float((steps_up(values, step) * step) @ probs) / float(probs.sum())
            inflation = (rounded - mean) / mean
            if inflation > out[0]:
                out = (inflation, mean, eid, rounded)
        return out

    lo = budget / max_levels
    nice = list(_nice_steps(budget, lo))
    # Within the levels derisk always used (budget/200), the most accurate nice step;
    # else the coarsest nice step within the cap that keeps every cost within tolerance.
    usual = [s for s in nice if s >= budget / USUAL_LEVELS]
    chosen = min(usual, key=lambda s: (worst(s)[0], -s)) if usual else None
    if chosen is None or worst(chosen)[0] > max_inflation:
        chosen = next((s for s in nice if worst(s)[0] <= max_inflation), None)
    if chosen is None:
        # Steps that make the cheapest costs exact: c / k for the finest k within the cap.
        others = [lo]
        for a in distinct[:20] + [e for e in exact if 0 < e <= budget][:20]:
            k = max(1, math.floor(a / lo))
            others += [a / j for j in (k, k - 1, k - 2) if j >= 1]
        g = _common_step(exact + [budget])
        if g is not None:
            others.append(g)
        candidates = sorted(set(nice + [s for s in others if s >= lo * (1 - 1e-12)]))[::-1]
        ok = [s for s in candidates if worst(s)[0] <= max_inflation]
        chosen = ok[0] if ok else min(candidates, key=lambda s: (worst(s)[0], -s))
    inflation, cost, eid, rounded = worst(chosen)
    suggested = chosen
    if inflation > max_inflation:
        # Ignoring the cap: a nice step below the cheapest amount's tolerance always works.
        cheapest = distinct[0] if distinct else budget
        suggested = next(
            (
                s
                for s in _nice_steps(chosen, cheapest * max_inflation / 10)
                if worst(s)[0] <= max_inflation
            ),
            cheapest * max_inflation,
        )
    return ResolutionChoice(
        step=float(chosen),
        levels=math.floor(budget / chosen + 1e-9),
        inflation=float(inflation),
        worst_id=eid,
        worst_cost=float(cost),
        worst_rounded=float(rounded),
        suggested=float(suggested),
    )


def _common_step(amounts: list[float]) -> float | None:
    """The largest step dividing every amount exactly (to 6 decimals), or None."""
    positive = [a for a in amounts if a > 0]
    if not positive:
        return None
    for scale in (1, 10**6):
        scaled = [a * scale for a in positive]
        if all(abs(x - round(x)) <= 1e-9 * max(1.0, x) and x < 2**62 for x in scaled):
            g = 0
            for x in scaled:
                g = math.gcd(g, round(x))
            return g / scale
    return None
