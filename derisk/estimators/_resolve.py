"""The resolve stage: a roadmap's `train:` and `success:` specs -> p, cost and provenance.

graphs parses a roadmap without I/O and leaves law-driven p and FLOP-priced costs
pending; this module sets them. A run's FLOPs come from derisk's one count
(`derisk._flops`: from its shape, or from its parameter count), priced on its hardware
(`estimators._hardware`: GPU-hours = FLOPs / (peak x MFU x 3600); an MFU range makes the
cost log-normal with the matching 80% interval) or by `flops_per_gpu_hour`, in the
roadmap's unit; its p is P(loss < loss_below) under the law's calibrated predictive
distribution. Every estimate says how far its law extrapolates; problems are located
at the roadmap's lines (RoadmapError), never tracebacks.

Nothing here imports JAX: planning a roadmap does not start the trainer.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import numpy as np

from derisk._flops import TRAINER_VOCAB, Shape, flops_per_token_from_params, param_counts
from derisk._flops import flops_per_token as shape_flops_per_token
from derisk.errors import DataError, DeriskWarning, Problem, RoadmapError
from derisk.estimators._hardware import accelerator, gpu_hours
from derisk.graphs import Categorical, Cost, Roadmap, suspicious
from derisk.graphs._model import ComputeDefaults, TrainSpec

SHIPPED_LAWS = {"dense": "cpu-dense", "moe": "cpu-moe"}  # fitted to the runs derisk ships
WARN_BEYOND = 3.0  # an estimate this many times past its law's largest run is flagged
REFUSE_BEYOND = 10.0  # ... and, with strict_laws, refused
SHAPE_TOLERANCE = 0.02  # a given `params` this far from the shape's own count is a typo
WORLDS = 8192  # law-world configurations in all: one shared law keeps up to 8,192 of its
# bootstrap samples as worlds (all, for the shipped laws), two keep 90 each, and so on


class SpecError(ValueError):
    """A spec the estimators cannot price or predict; `key` is the offending key."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Estimate:
    """Where a node's p and cost came from.

    `params` is what the law takes as N (active or total non-embedding, as it was fitted),
    `extrapolation` how many times the law's largest fitted run the node's params and
    tokens are (> 1: beyond the data). `cost` is (median, p90 or None) in the roadmap's
    unit; `derived` lists which of p and cost the estimate set (the file gave the rest).
    """

    flops: float
    cost: tuple[float, float | None]
    unit: str | None
    hardware: str | None
    peak_flops: float | None
    mfu: tuple[float, float] | None
    flops_from: str  # "shape" or "params"
    law: str | None = None
    loss_unit: str | None = None
    law_data: dict | None = None  # the fitted runs: count, params and tokens ranges
    params: float | None = None
    tokens: float | None = None
    loss: float | None = None  # predictive median (the centre p is computed around)
    loss_interval: tuple[float, float] | None = None  # 80% band of the same distribution
    loss_fit: float | None = None  # the law's point prediction
    extra_sigma: float = 0.0  # the calibrated extrapolation error's log sd added here
    loss_below: float | None = None
    beats: str | None = None  # p is P(this run's loss < that experiment's run's loss)
    p: float | None = None
    calibrated: bool = False
    extrapolation: dict | None = None  # {"params": x, "tokens": x}
    world: str | None = None  # the latent variable of its law's worlds, when shared
    derived: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """JSON-ready: `cost` is the median in the roadmap's unit, `cost_p90` its 90th
        percentile (None: deterministic)."""
        d = dataclasses.asdict(self)
        d["cost"], d["cost_p90"] = self.cost
        d["derived"] = list(self.derived)
        for k in ("mfu", "loss_interval"):
            d[k] = None if d[k] is None else list(d[k])
        return d


@dataclass(frozen=True)
class Resolved:
    """A roadmap ready to plan, its estimates by experiment id, and the warnings found
    while resolving (estimates far beyond their laws' data; suspicious content)."""

    roadmap: Roadmap
    estimates: dict
    warnings: tuple[str, ...]


def law_name(spec: TrainSpec, law: str | None) -> str:
    return law or SHIPPED_LAWS[spec.arch]


def shape_of(spec: TrainSpec) -> Shape | None:
    """The spec's shape, when it gives d_model and layers."""
    if spec.d_model is None or spec.layers is None:
        return None
    return Shape(
        d_model=spec.d_model,
        layers=spec.layers,
        seq_len=spec.seq_len or 2048,
        vocab=spec.vocab or TRAINER_VOCAB,
        arch=spec.arch,
        experts=spec.experts or 1,
        top_k=spec.top_k or 1,
        granularity=int(spec.granularity or 1),
    )


def counted_params(spec: TrainSpec) -> dict[str, float]:
    """{"params", "active_params"} (non-embedding): as given, else counted from the shape;
    with a shape also {"total_params", "total_active_params"} (embeddings and output
    head included), for laws fitted on total counts (Hoffmann et al.'s convention).

    Raises ValueError for a spec that gives neither, or a count that disagrees with its
    own shape.
    """
    shape = shape_of(spec)
    out = {}
    if shape is not None:
        c = param_counts(shape)
        out = {
            "params": float(c["non_embedding"]),
            "active_params": float(c["non_embedding_active"]),
        }
        totals = {"total_params": float(c["total"]), "total_active_params": float(c["active"])}
    for key in ("params", "active_params"):
        given = getattr(spec, key)
        if given is None:
            continue
        if key in out and abs(given / out[key] - 1) > SHAPE_TOLERANCE:
            raise SpecError(
                f"gives `{key}: {given:.6g}` but its shape (d_model {spec.d_model}, "
                f"{spec.layers} layers{', MoE' if spec.arch == 'moe' else ''}) has "
                f"{out[key]:.6g}; leave `{key}` out to use the count, or fix the shape",
                key,
            )
        out[key] = float(given)
    if spec.arch == "dense":
        for a, b in (("params", "active_params"), ("active_params", "params")):
            if a not in out and b in out:
                out[a] = out[b]
    if not out:
        raise ValueError(
            "needs its size: `params` (or `active_params` for an MoE), or its shape "
            "`d_model` and `layers`"
        )
    if shape is not None:
        out.update(totals)
    return out


# `param_counts`' name for each count (`scaling._predict.count_key`) -> `counted_params`'
_COUNTED = {
    "non_embedding": "params",
    "non_embedding_active": "active_params",
    "total": "total_params",
    "active": "total_active_params",
}


def law_params_key(fit) -> str:
    """Which count of `counted_params` a law takes as N (`count_key`: active or not, and
    non-embedding or total, as the law's data records)."""
    from derisk.scaling._predict import count_key

    return _COUNTED[count_key(fit)]


def run_flops(spec: TrainSpec) -> tuple[float, str]:
    """(training FLOPs, "shape" or "params") of a spec: derisk's one count."""
    shape = shape_of(spec)
    if shape is not None:
        return spec.tokens * shape_flops_per_token(shape), "shape"
    counts = counted_params(spec)
    active = counts.get("active_params")
    if active is None:
        raise ValueError(
            "an MoE run needs `active_params` (or its shape: d_model, layers, experts, top_k) "
            "to count its FLOPs: only the active parameters do work per token"
        )
    per_token = flops_per_token_from_params(
        active, seq_len=spec.seq_len or 2048, vocab=spec.vocab or TRAINER_VOCAB
    )
    return spec.tokens * float(per_token), "params"


def price(flops: float, spec: TrainSpec, compute: ComputeDefaults, unit: str | None):
    """(median, p90 or None) cost of `flops` in `unit`, and (hardware, peak, mfu) used.

    Raises ValueError for unknown hardware (graphs has checked the rest is given).
    """
    name = spec.hardware or compute.hardware
    mfu = spec.mfu or compute.mfu
    if unit == "flops":
        return (flops, None), (name, None, mfu)
    if name is not None and mfu is not None:
        try:
            acc = accelerator(name)
        except KeyError as exc:
            raise SpecError(str(exc.args[0]), "hardware") from None
        lo, hi = mfu
        median = gpu_hours(flops, acc.peak_flops, math.sqrt(lo * hi))
        p90 = gpu_hours(flops, acc.peak_flops, lo) if hi > lo else None
        used = (acc.name, acc.peak_flops, mfu)
    else:
        median, p90 = flops / compute.flops_per_gpu_hour, None
        used = (None, None, None)
    if unit == "usd":
        rate = compute.usd_per_gpu_hour
        median, p90 = median * rate, None if p90 is None else p90 * rate
    return (median, p90), used


def _mark_of(spec, key: str | None = None) -> tuple:
    if key is not None and key in spec.marks:
        return spec.marks[key]
    return spec.mark


def resolve(
    roadmap: Roadmap,
    *,
    strict_laws: bool = False,
    independent_laws: bool = False,
    worlds: int = WORLDS,
    warn_beyond: float = WARN_BEYOND,
    refuse_beyond: float = REFUSE_BEYOND,
) -> Resolved:
    """Set every pending p and cost of `roadmap` from its `train:`/`success:` specs.

    `success: {loss_below: x}` gives p = P(loss < x); `success: {beats: OTHER}` gives
    p = P(loss < OTHER's loss) under the laws' joint distribution (`prob_beats`: one
    law's runs share its parameter uncertainty). A node whose law is extrapolated more
    than `warn_beyond` times its largest fitted run (in parameters or tokens) gets a
    warning; with `strict_laws`, one beyond `refuse_beyond` is refused. Nodes with
    `train:` and their own p and cost still get an estimate, shown beside.

    Raises RoadmapError listing every problem, each at its line in the roadmap.
    """
    problems, notes, laws = [], [], {}
    shared = {}  # law name -> [(experiment id, (K,) P(success | world))]
    runs = {}  # id -> (spec, counts, flops, flops_from, cost, (hw, peak, mfu))
    for e in roadmap.experiments:
        if e.train is None:
            continue
        spec = e.train
        try:
            counts = counted_params(spec)
            flops, flops_from = run_flops(spec)
            cost, used = price(flops, spec, roadmap.compute, roadmap.unit)
        except ValueError as exc:
            key = getattr(exc, "key", None)
            if key == "hardware" and "hardware" not in spec.marks:  # the roadmap's default
                mark = roadmap.compute.marks.get("hardware", spec.mark)
                problem = _problem(roadmap, mark, f"`hardware`: {exc}")
                if problem not in problems:  # once, not once per experiment using it
                    problems.append(problem)
                continue
            problems.append(
                _problem(roadmap, _mark_of(spec, key), f"`train` of experiment `{e.id}` {exc}")
            )
            continue
        runs[e.id] = (spec, counts, flops, flops_from, cost, used)

    def predict(eid: str, law: str | None):
        """(law name, fit, log inputs, Prediction) of experiment eid's run."""
        from derisk.scaling import law_inputs, load_law, predict_loss

        spec, counts = runs[eid][0], runs[eid][1]
        name = law_name(spec, law)
        if name not in laws:
            laws[name] = load_law(name)
        fit = laws[name]
        want = law_params_key(fit)
        n = counts.get(want)
        if want.startswith("total") and spec.vocab is None and n is not None:
            raise SpecError(
                f"uses the law `{name}`, fitted on total parameter counts (embeddings and "
                "output layer included): give `vocab` so derisk can count the embeddings"
            )
        if n is None and want.startswith("total"):
            raise SpecError(
                f"uses the law `{name}`, fitted on total parameter counts (embeddings and "
                "output layer included): give the run's shape (`d_model`, `layers`, "
                "`vocab`) so derisk can count them"
            )
        if n is None:
            raise SpecError(
                f"needs `{want}` ({'active' if want == 'active_params' else 'total'} "
                "non-embedding parameters, or the shape): that is what its law was fitted on"
            )
        unit = (fit.summary or {}).get("loss_unit") or ""
        if "per byte" in unit and spec.vocab is not None and spec.vocab != TRAINER_VOCAB:
            raise SpecError(
                f"gives `vocab: {spec.vocab}`, but its law `{name}` measures loss in {unit}: "
                f"a model over a {spec.vocab}-token vocabulary has a loss per token, so "
                "`loss_below` would compare two units. Leave `vocab` out (the law's "
                f"{TRAINER_VOCAB}-byte vocabulary), or judge the run by a law fitted on "
                "that vocabulary's tokens",
                "vocab",
            )
        if fit.law == "moe_experts" and spec.experts is None:
            raise SpecError(f"uses the experts law `{name}`: give `experts`")
        experts, gran = float(spec.experts or 1), float(spec.granularity or 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeriskWarning)  # said below, per node
            pr = predict_loss(fit, n, spec.tokens, experts=experts, granularity=gran)
        return name, fit, law_inputs(fit.law, n, spec.tokens, experts, gran), pr

    estimates, experiments = {}, []
    for e in roadmap.experiments:
        if e.id not in runs:
            experiments.append(e)
            continue
        spec, counts, flops, flops_from, cost, (hw, peak, mfu) = runs[e.id]
        success, what = e.success, f"experiment `{e.id}`"
        est = {
            "flops": flops,
            "cost": cost,
            "unit": roadmap.unit,
            "hardware": hw,
            "peak_flops": peak,
            "mfu": mfu,
            "flops_from": flops_from,
        }
        p = None
        if success is not None:
            from derisk.scaling import prob_beats, prob_below_at, world_indices, world_probs

            try:
                name, fit, x, pr = predict(e.id, success.law)
                if success.beats is not None:
                    other = roadmap.experiment(success.beats)
                    if success.beats not in runs or other.id == e.id:
                        why = "is itself" if other.id == e.id else "has no `train:` run"
                        problems.append(
                            _problem(
                                roadmap,
                                _mark_of(success, "beats"),
                                f"`success.beats` of {what}: `{other.id}` {why} to compare with",
                            )
                        )
                        experiments.append(e)
                        continue
                    law_b = other.success.law if other.success else None
                    _, fit_b, x_b, _ = predict(other.id, law_b)
                    p = prob_beats(fit, x, fit_b, x_b)
                    rule = {"other": (fit_b, x_b)}
                else:
                    p = prob_below_at(fit, x, success.loss_below)
                    rule = {"below": success.loss_below}
                if "p" in e.pending and not independent_laws and fit.bootstrap is not None:
                    ps = world_probs(fit, x, np.arange(len(fit.bootstrap)), **rule)
                    shared.setdefault(name, []).append((e.id, ps))
            except DataError as exc:
                problems.append(_problem(roadmap, _mark_of(success, "law"), f"{what}: {exc}"))
                experiments.append(e)
                continue
            except SpecError as exc:
                mark = _mark_of(spec, exc.key) if exc.key else spec.mark
                problems.append(_problem(roadmap, mark, f"`train` of {what} {exc}"))
                experiments.append(e)
                continue
            summary = fit.summary or {}
            est.update(
                law=name,
                loss_unit=summary.get("loss_unit"),
                law_data={
                    **{
                        k: summary.get(k)
                        for k in ("runs", "params", "tokens", "source", "params_col")
                    },
                    "params_kind": summary.get("params_kind") or "non_embedding",
                },
                params=pr.params,
                tokens=pr.tokens,
                loss=pr.median if pr.median is not None else pr.loss,
                loss_interval=pr.interval,
                loss_fit=pr.loss,
                extra_sigma=pr.extra_sigma,
                loss_below=success.loss_below,
                beats=success.beats,
                p=p,
                calibrated=pr.calibrated,
                extrapolation={"params": pr.params_beyond, "tokens": pr.tokens_beyond},
            )
            far = max(pr.params_beyond, pr.tokens_beyond)
            if strict_laws and far > refuse_beyond:
                problems.append(
                    _problem(
                        roadmap,
                        spec.mark,
                        f"{what}: its law `{name}` would extrapolate {_beyond(pr)}, more "
                        f"than --strict-laws allows ({refuse_beyond:g}x); fit a law on "
                        "larger runs or give `p` yourself",
                    )
                )
            elif far > warn_beyond:
                line = f"{roadmap.source}:{e.line}" if e.line else roadmap.source
                if not pr.calibrated:
                    how = (
                        "the law has no calibrated extrapolation error (fit it with "
                        "--backtest), so the band is its in-range one"
                    )
                else:
                    how = (
                        f"the band includes its calibrated extrapolation error (log sd "
                        f"{pr.extra_sigma:.3g} here, as its backtest measured), but the "
                        "form may not hold that far"
                    )
                notes.append(
                    f"{line}: `{e.id}`'s p comes from the law `{name}` extrapolated "
                    f"{_beyond(pr)}; {how}"
                )
        derived = tuple(k for k in ("p", "cost") if k in e.pending)
        estimates[e.id] = Estimate(**est, derived=derived)
        changes = {"pending": (), "estimate": estimates[e.id].as_dict()}
        if "p" in e.pending and p is not None:
            changes["p"] = p
        if "cost" in e.pending:
            changes["cost"] = Cost(median=cost[0], p90=cost[1])
        experiments.append(dataclasses.replace(e, **changes))
    if problems:
        raise RoadmapError(sorted(problems, key=lambda q: (q.line or 0, q.col or 0)))
    categories = dict(roadmap.categories)
    shared = {k: v for k, v in shared.items() if len(v) >= 2}  # one node alone: marginal
    # every bootstrap sample a world when the configurations allow, else an even subset
    per_law = int(worlds ** (1 / len(shared))) if shared else 0
    for name, nodes in shared.items():
        idx = world_indices(laws[name], max(2, per_law))
        nodes = [(eid, ps[idx]) for eid, ps in nodes]
        var = f"law {name}"
        values = tuple(f"w{k}" for k in range(len(idx)))
        categories[var] = dict.fromkeys(values, 1.0 / len(values))
        for eid, ps in nodes:
            i = next(j for j, x in enumerate(experiments) if x.id == eid)
            mean = float(np.mean(ps))
            estimates[eid] = dataclasses.replace(estimates[eid], p=mean, world=var)
            experiments[i] = dataclasses.replace(
                experiments[i],
                p=Categorical(
                    hypothesis=var, table=tuple(zip(values, map(float, ps), strict=True))
                ),
                estimate=estimates[eid].as_dict(),
            )
    out = dataclasses.replace(roadmap, experiments=tuple(experiments), categories=categories)
    notes += suspicious(out)
    return Resolved(roadmap=out, estimates=estimates, warnings=tuple(notes))


def _problem(roadmap: Roadmap, mark: tuple, message: str) -> Problem:
    return Problem(roadmap.source, mark[0], mark[1], message)


def _beyond(pr) -> str:
    return (
        f"{pr.params_beyond:.3g}x its largest fitted run's parameters and "
        f"{pr.tokens_beyond:.3g}x its tokens"
    )


__all__ = ["Estimate", "Resolved", "resolve", "run_flops", "price", "counted_params"]
