"""The closed loop (`derisk run`): train a roadmap node for real, record its outcome,
add the run to its law's data and refit the law as a new version.

The steps, each a plain function the command line sequences (it asks for confirmation and
draws the progress bars in between):

1. `training_run`: the node's `train:` spec as the trainer's `ModelConfig` and
   `TrainConfig` (its shape; `derisk train`'s defaults, the shipped sweep's setting, for
   what the spec leaves out: 2 heads, batch 16, peak learning rate 0.096 / d_model), its
   law, and its success rule. `law_accepts` says why the run could not join its law's
   data (another loss unit, another training setting).
2. `estimate_from_runs` / `estimate_from_warmup`: the wall time, from the measured
   training FLOP/s of the most similar finished run on this device in the run store, else
   from a short timed warm-up of the node's own model. Two bounds skip the warm-up:
   `optimistic_seconds` (the device's peak FLOP/s) refuses a hopeless node at once, and
   `upper_bound` (1 GFLOP/s plus a minute to compile) accepts a run so small that a
   warm-up would cost more than the run.
3. training itself is `derisk train`'s path (the run store's claim, `train`, `finish`).
4. `outcome_of`: the success rule, final validation loss < `loss_below` (a diverged run
   fails).
5. `law_data` + `with_run` + `refit_law`: the runs the law was fitted on (the file its
   summary names, with the same `min_tokens` and parameter column, or the rows a previous
   refit kept in the law), plus this run, refitted with the same law form (backtest and
   calibration when the law had them) and saved by `derisk.scaling._versions.save_version`
   as the next version: never over the old one. The refit's options, the run added and
   the full data rows go into the new version's provenance, so the next refit needs no
   file but the law.
6. `plan_change`: what moved between the plans before and after.

JAX is imported here (the trainer's model config); planning never imports this module.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from derisk.errors import DataError, DeriskError, Problem, RoadmapError
from derisk.estimators._model import ModelConfig, flops_per_token, param_counts
from derisk.estimators._resolve import law_name
from derisk.estimators._train import PEAK_FLOPS, TrainConfig, lr_for_width
from derisk.graphs import Roadmap

TRAINER_DEFAULTS = {"n_head": 2, "batch_size": 16}  # `derisk train`'s: the shipped sweep's
TRAINER_LOSS_UNIT = "nats per byte"  # what the trainer's validation loss measures
SIMILAR = 4.0  # a stored run within this factor of FLOPs per token speaks for the node
WARMUP_STEPS = 20  # steps of a timed warm-up (the first, compiling, one is not timed)
# Any device derisk trains on does at least this many FLOP/s, and compiles a step in at
# most COMPILE_S: a run that fits the time limit even so needs no warm-up to say so.
SLOWEST_FLOPS = 1e9
COMPILE_S = 60.0
# A CPU core's optimistic peak: two 16-lane fp32 FMA units at ~3 GHz (AVX-512).
CPU_CORE_PEAK = 2e11
# The real run evaluates 10 times, `eval_batches` (8) forward passes each: a forward is
# about a third of a training step.
EVAL_STEP_EQUIVALENT = 10 * 8 / 3
DATA_ROWS_KEY = "data_rows"  # in a refitted law's provenance: the runs it was fitted on


@dataclass(frozen=True)
class LoopRun:
    """What `derisk run` trains for a node, and how its outcome is decided."""

    node: str
    model: ModelConfig
    train: TrainConfig
    law: str  # the law the node's p comes from; the run joins its data
    loss_below: float
    source: str  # the roadmap file
    line: int | None = None

    @property
    def flops(self) -> float:
        return float(self.train.tokens) * flops_per_token(self.model)

    def describe(self) -> str:
        m = self.model
        kind = "dense" if m.arch == "dense" else f"MoE {m.experts} experts top-{m.top_k}"
        n = param_counts(m)["non_embedding"]
        layers = f"{m.n_layer} layer" + ("s" if m.n_layer > 1 else "")
        return (
            f"{kind}, d_model {m.d_model}, {layers}, {m.n_head} heads, seq_len {m.seq_len}, "
            f"{n:,} non-embedding params, {self.train.tokens:,} tokens"
        )


def _fail(roadmap: Roadmap, mark, message: str) -> RoadmapError:
    line, col = (mark or (None, None))[:2]
    return RoadmapError([Problem(roadmap.source, line, col, message)])


def training_run(roadmap: Roadmap, node: str) -> LoopRun:
    """The node's run as the trainer's configs. Raises RoadmapError at the node's line for
    a node that is not trainable here (no `train:`, no `loss_below`, no shape, a vocabulary
    other than bytes, a shape the trainer refuses), DeriskError for an unknown node."""
    if node not in roadmap.ids:
        close = difflib.get_close_matches(node, list(roadmap.ids), n=1)
        raise DeriskError(
            f"no experiment `{node}` in {roadmap.source}"
            + (f"; did you mean `{close[0]}`?" if close else "")
        )
    e = roadmap.experiment(node)
    what = f"experiment `{node}`"
    at = (e.line, None)
    if e.train is None:
        raise _fail(
            roadmap,
            at,
            f"{what} has no `train:` block, so there is nothing for `derisk run` to train; "
            f"record an outcome you got by hand with `derisk record {roadmap.source} "
            f"{node}=success`",
        )
    spec, success = e.train, e.success
    below = getattr(success, "loss_below", None) if success is not None else None
    if below is None:
        raise _fail(
            roadmap,
            success.mark if success is not None else spec.mark,
            f"{what} needs `success: {{loss_below: X}}`: `derisk run` decides its outcome "
            "by the final validation loss"
            + (
                " (a `beats:` rule compares two runs; record it with `derisk record`)"
                if getattr(success, "beats", None)
                else ""
            ),
        )
    if spec.d_model is None or spec.layers is None:
        raise _fail(
            roadmap,
            spec.mark,
            f"`train` of {what} gives no shape: `derisk run` builds the model from "
            "`d_model` and `layers` (a parameter count alone cannot be trained)",
        )
    if spec.vocab not in (None, 256):
        raise _fail(
            roadmap,
            spec.marks.get("vocab", spec.mark),
            f"`train` of {what} has `vocab: {spec.vocab}`, but the trainer models bytes "
            "(256); leave `vocab` out to train it here",
        )
    if spec.tokens is None:
        raise _fail(roadmap, spec.mark, f"`train` of {what} needs `tokens`")
    try:
        model = ModelConfig(
            arch=spec.arch,
            d_model=spec.d_model,
            n_layer=spec.layers,
            n_head=spec.heads or TRAINER_DEFAULTS["n_head"],
            seq_len=spec.seq_len or 2048,  # as the roadmap's FLOP count takes it
            experts=spec.experts or 1,
            top_k=spec.top_k or 1,
            granularity=int(spec.granularity or 1),
        )
        tc = TrainConfig(
            tokens=int(round(spec.tokens)),
            batch_size=TRAINER_DEFAULTS["batch_size"],
            lr=lr_for_width(spec.d_model),
        )
    except ValueError as exc:
        raise _fail(roadmap, spec.mark, f"`train` of {what} cannot be trained: {exc}") from None
    return LoopRun(
        node=node,
        model=model,
        train=tc,
        law=law_name(spec, success.law),
        loss_below=float(below),
        source=roadmap.source,
        line=e.line,
    )


def run_setting(model: ModelConfig, tc: TrainConfig, corpus_hash: str) -> dict:
    """A run's training setting as the law's recorded setting names it (`derisk runs
    --csv`'s columns)."""
    out = {**asdict(model), **asdict(tc), "corpus_hash": corpus_hash}
    if model.arch == "dense":
        out.pop("top_k")  # no router
    return out


def law_accepts(fit, setting: dict) -> list[str]:
    """Why a run with this training setting cannot join the law's data (empty: it can):
    a recorded loss unit other than the trainer's, or a setting the law's runs did not
    use (`derisk.scaling.setting_mismatches`)."""
    from derisk.scaling import setting_mismatches

    out = []
    unit = (fit.summary or {}).get("loss_unit")
    if unit and not str(unit).startswith(TRAINER_LOSS_UNIT):
        out.append(f"its loss is in {unit}, the trainer's in {TRAINER_LOSS_UNIT}")
    out += setting_mismatches(fit, setting)
    return out


# ----------------------------------------------------------------------- wall time


@dataclass(frozen=True)
class WallEstimate:
    """How long the node's run should take on this device, and from what measurement."""

    seconds: float
    tokens_per_s: float
    flops_per_s: float  # training FLOP/s measured on the reference, applied to the node
    overhead_s: float  # compilation and evaluations
    source: str  # "run 12 (...)", "a timed warm-up of 20 steps" or "the device's peak"
    run: int | None = None  # the stored run it scales, if any
    upper: bool = False  # a bound (the run takes at most this long), not a measurement

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_from_runs(loop: LoopRun, runs: list[dict], device: str) -> WallEstimate | None:
    """Scale the most similar finished run in the store (same device, architecture,
    sequence length and batch; FLOPs per token within `SIMILAR`x) to the node: its
    training FLOP/s, held fixed, over the node's FLOPs, plus its measured overhead."""
    fpt = flops_per_token(loop.model)
    best, best_d = None, math.inf
    for r in runs:
        if r.get("status") != "finished" or not r.get("tokens_per_s") or not r.get("tokens"):
            continue
        m, t = r["model"], r["train"]
        if (
            r.get("device") != device
            or m.get("arch") != loop.model.arch
            or m.get("seq_len") != loop.model.seq_len
            or t.get("batch_size") != loop.train.batch_size
        ):
            continue
        try:
            their = flops_per_token(ModelConfig(**m))
        except (TypeError, ValueError):
            continue
        d = abs(math.log(their / fpt))
        if d < best_d:
            best, best_d, best_fpt = r, d, their
    if best is None or best_d > math.log(SIMILAR):
        return None
    rate = best["tokens_per_s"] * best_fpt  # FLOP/s
    tok_s = rate / fpt
    overhead = max(0.0, (best.get("wall_s") or 0.0) - best["tokens"] / best["tokens_per_s"])
    m = best["model"]
    return WallEstimate(
        seconds=loop.train.tokens / tok_s + overhead,
        tokens_per_s=tok_s,
        flops_per_s=rate,
        overhead_s=overhead,
        source=(
            f"run {best['id']} in the store ({m['arch']} d_model {m['d_model']}, "
            f"{best['tokens_per_s']:,.0f} tokens/s on {device})"
        ),
        run=int(best["id"]),
    )


def device_peak(device: str) -> float:
    """An optimistic FLOP/s for this device: its bf16 peak when the trainer's table knows
    it, else every CPU core at `CPU_CORE_PEAK`."""
    try:
        cores = len(os.sched_getaffinity(0))  # the cores this process may use
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return PEAK_FLOPS.get(device) or CPU_CORE_PEAK * cores


def optimistic_seconds(loop: LoopRun, device: str) -> float:
    """The run's time at the device's peak: no real run is faster."""
    return loop.flops / device_peak(device)


def upper_bound(loop: LoopRun) -> WallEstimate:
    """The run's time at `SLOWEST_FLOPS` plus `COMPILE_S`: no real run is slower. When
    that fits the limit, a warm-up (which compiles the model too) would cost more than it
    tells."""
    fpt = flops_per_token(loop.model)
    return WallEstimate(
        seconds=loop.flops / SLOWEST_FLOPS + COMPILE_S,
        tokens_per_s=SLOWEST_FLOPS / fpt,
        flops_per_s=SLOWEST_FLOPS,
        overhead_s=COMPILE_S,
        source=f"an upper bound: {SLOWEST_FLOPS:.0e} FLOP/s, the slowest device assumed, "
        f"plus {COMPILE_S:.0f} s to compile",
        upper=True,
    )


def warmup_steps(loop: LoopRun) -> int:
    steps = max(1, loop.train.tokens // (loop.train.batch_size * loop.model.seq_len))
    return int(min(WARMUP_STEPS, max(2, steps // 5)))


def estimate_from_warmup(loop: LoopRun, corpus, *, progress=None) -> WallEstimate:
    """Time `warmup_steps` steps of the node's own model (one evaluation, at the end):
    tokens/s excluding the first, compiling, step; the wall time left over is the
    overhead, plus the real run's evaluations."""
    from derisk.estimators._train import train

    steps = warmup_steps(loop)
    per_step = loop.train.batch_size * loop.model.seq_len
    tc = TrainConfig(
        tokens=steps * per_step,
        batch_size=loop.train.batch_size,
        lr=loop.train.lr,
        eval_every=steps,
        eval_batches=1,
    )
    r = train(loop.model, tc, corpus, progress=progress)
    tok_s = r.tokens_per_s or (r.tokens / r.wall_s if r.wall_s else 0.0)
    if not tok_s > 0:
        raise DeriskError("the timed warm-up measured no progress; cannot estimate the run")
    overhead = max(0.0, r.wall_s - (r.tokens - per_step) / tok_s)
    overhead += EVAL_STEP_EQUIVALENT * per_step / tok_s
    fpt = flops_per_token(loop.model)
    return WallEstimate(
        seconds=loop.train.tokens / tok_s + overhead,
        tokens_per_s=tok_s,
        flops_per_s=tok_s * fpt,
        overhead_s=overhead,
        source=f"a timed warm-up of {steps} steps ({tok_s:,.0f} tokens/s on {r.device})",
    )


def minutes_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.0f} days"


def check_time(loop: LoopRun, est: WallEstimate, max_minutes: float) -> None:
    """Refuse (DeriskError) a run estimated to take longer than `max_minutes`."""
    if est.seconds > max_minutes * 60:
        raise DeriskError(
            f"`{loop.node}` ({loop.describe()}; {loop.flops:.3g} FLOPs) would train for "
            f"~{minutes_text(est.seconds)} on this machine (from {est.source}), more than "
            f"--max-minutes {max_minutes:g}; raise --max-minutes, or run it elsewhere and "
            f"record the outcome with `derisk record {loop.source} {loop.node}=success`"
        )


# ----------------------------------------------------------------------- outcome


def outcome_of(status: str, loss: float | None, loss_below: float) -> str:
    """ "success" when the run finished with final validation loss < `loss_below`."""
    ok = status == "finished" and loss is not None and math.isfinite(loss) and loss < loss_below
    return "success" if ok else "failure"


# ----------------------------------------------------------------------- refit


SETTING_ORDER = ("arch", "d_model", "n_layer", "n_head", "seq_len", "top_k", "batch_size", "lr")


def _package_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent


def law_data(version) -> tuple:
    """(RunData, fit, raw JSON) of the runs a saved law version was fitted on.

    A version a refit wrote carries its rows; any other is read back from the CSV its
    summary names (as given, else beside the derisk package, as the shipped laws name
    theirs), with the same parameter column and `min_tokens`, and must give as many runs
    as the law says it was fitted on. Raises DataError saying what is missing.
    """
    from derisk.scaling import load_runs_csv, run_data
    from derisk.scaling._lawfile import load_law_file

    raw = json.loads(Path(version.path).read_text(encoding="utf-8"))
    fit = load_law_file(Path(version.path), version.label)
    summary = fit.summary or {}
    prov = raw.get("provenance") or {}
    stored = prov.get(DATA_ROWS_KEY)
    params_col = summary.get("params_col") or "params"
    if isinstance(stored, dict) and stored.get("rows"):
        cols = stored["columns"]
        rows = stored["rows"]
        get = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
        data = run_data(
            get["params"],
            get["tokens"],
            get["loss"],
            experts=get["experts"],
            granularity=get["granularity"],
            source=f"law {version.label}'s {len(rows)} runs",
        )
        setting = {c: [str(v) for v in get[c]] for c in cols if c not in _NUMERIC}
        return dataclasses.replace(data, setting=setting, params_col=params_col), fit, raw
    source = summary.get("source") or prov.get("file")
    candidates = [Path(str(source)), _package_root() / str(source)] if source else []
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise DataError(
            f"law `{version.label}` ({version.path}) was fitted on "
            f"{source or 'runs it did not record'}, which is not here; `derisk run` refits a "
            "law on the runs it was fitted on. Refit it by hand with `derisk fit RUNS.csv "
            "--save NAME` (plus `derisk runs --csv` for the new run), or run the node with "
            "a law whose runs are here"
        )
    data = load_runs_csv(path, columns={"params": params_col} if params_col != "params" else None)
    floor = summary.get("min_tokens") or 0
    if floor:
        data = data.subset(data.tokens >= floor)
    if summary.get("runs") is not None and data.n != summary["runs"]:
        raise DataError(
            f"law `{version.label}` was fitted on {summary['runs']} runs of {path}, which now "
            f"gives {data.n}: the file changed since; refit it with `derisk fit {path} "
            f"--save {version.name}` first"
        )
    return data, fit, raw


_NUMERIC = ("params", "tokens", "loss", "experts", "granularity")


def data_rows(data) -> dict:
    """RunData as the rows a refitted law keeps (numbers, then setting columns)."""
    setting = [c for c in data.setting]
    cols = list(_NUMERIC) + setting
    rows = []
    for i in range(data.n):
        rows.append(
            [
                float(data.params[i]),
                float(data.tokens[i]),
                float(data.loss[i]),
                float(data.experts[i]),
                float(data.granularity[i]),
            ]
            + [data.setting[c][i] for c in setting]
        )
    return {"columns": cols, "rows": rows}


def with_run(data, fit, run: dict, *, source: str):
    """The law's data plus one finished stored run (N as the law counts it), its setting
    appended to the setting columns the data has."""
    from derisk.estimators._store import law_point
    from derisk.scaling import run_data

    pt = law_point(run, fit)
    m, t = run["model"], run["train"]
    conf = {**m, **t, "corpus_hash": run["corpus_hash"]}
    if m["arch"] == "dense":
        conf["top_k"] = ""
    setting = {k: [*v, str(conf.get(k, ""))] for k, v in data.setting.items()}
    new = run_data(
        np.append(data.params, pt.params),
        np.append(data.tokens, pt.tokens),
        np.append(data.loss, pt.observed),
        experts=np.append(data.experts, pt.experts),
        granularity=np.append(data.granularity, pt.granularity),
        source=source,
    )
    return dataclasses.replace(new, setting=setting, params_col=data.params_col)


@dataclass(frozen=True, kw_only=True)
class RefitOptions:
    """How `derisk run` refits a law (recorded in the new version's provenance)."""

    bootstrap: int = 100  # as `derisk fit`
    backtest_bootstrap: int = 20
    starts: int = 64
    seed: int = 0


@dataclass(frozen=True)
class LawUpdate:
    """A law before and after a refit: the versions, their parameters, the run added."""

    name: str
    before: object  # LawVersion
    after: object  # LawVersion
    params_before: dict
    params_after: dict
    runs_before: int
    runs_after: int
    added_run: dict = field(default_factory=dict)

    def as_dicts(self) -> tuple[dict, dict]:
        b = {
            **self.before.as_dict(),
            "params": self.params_before,
            "runs": self.runs_before,
        }
        a = {**self.after.as_dict(), "params": self.params_after, "runs": self.runs_after}
        return b, a


def refit_law(
    name: str,
    run: dict,
    *,
    options: RefitOptions = RefitOptions(),
    context: dict | None = None,
    progress=None,
    on_phase=None,
) -> LawUpdate:
    """Add the finished stored `run` to the data of the current version of law `name`,
    refit it (the same form; backtest and calibration when that version had them) and
    save the result as the next version. `context` (the roadmap and node) goes into the
    new version's provenance with the run. Raises DataError when the law's runs are not
    here or the refit cannot identify the law."""
    from derisk.scaling import fit_calibrated, fit_law
    from derisk.scaling._versions import current_version, save_version

    before = current_version(name)
    data, old, _ = law_data(before)
    added = {
        "id": int(run["id"]),
        "params": None,
        "tokens": run["tokens"],
        "loss": run["val_loss"],
        **(context or {}),
    }
    grown = with_run(data, old, run, source=f"law {before.label}'s {data.n} runs + run {run['id']}")
    added["params"] = float(grown.params[-1])
    common = {
        "bootstrap": options.bootstrap,
        "starts": options.starts,
        "seed": options.seed,
        "progress": progress,
        "on_phase": on_phase,
    }
    # a remedy the law needed is compared against the plain fit again; else as `fit` does
    chosen = (old.remedy or {}).get("chosen")
    remedy = chosen if chosen in ("e_floor", "prior", "power") else "auto"
    calibrated = old.backtest is not None or old.calibration is not None
    if calibrated:
        fit, _ = fit_calibrated(
            grown,
            old.law,
            remedy=remedy,
            backtest_bootstrap=options.backtest_bootstrap,
            **common,
        )
    else:
        fit = fit_law(grown, old.law, **common)
    summary = dict(fit.summary)
    for k in ("params_col", "min_tokens", "loss_unit"):
        if k in (old.summary or {}):
            summary[k] = old.summary[k]
    fit = dataclasses.replace(fit, summary=summary)
    provenance = {
        "law": old.law,
        "refit": {
            **asdict(options),
            "backtest": calibrated,
            "remedy": remedy,
            "by": "derisk run",
        },
        "added_run": added,
        DATA_ROWS_KEY: data_rows(grown),
    }
    after = save_version(fit, name, provenance=provenance)
    return LawUpdate(
        name=name,
        before=before,
        after=after,
        params_before=dict(old.params),
        params_after=dict(fit.params),
        runs_before=data.n,
        runs_after=grown.n,
        added_run=added,
    )


# ----------------------------------------------------------------------- plans


def plan_change(before: dict, after: dict) -> dict:
    """What moved between two plan summaries ({"next", "value", "p": {id: p}}): the next
    experiment, the value, and each estimated node's p (nodes in either)."""
    ids = list(dict.fromkeys([*before.get("p", {}), *after.get("p", {})]))
    return {
        "next": {"before": before.get("next"), "after": after.get("next")},
        "next_changed": before.get("next") != after.get("next"),
        "value": {
            "before": before.get("value"),
            "after": after.get("value"),
            "change": None
            if before.get("value") is None or after.get("value") is None
            else after["value"] - before["value"],
        },
        "p": {
            i: {
                "before": before.get("p", {}).get(i),
                "after": after.get("p", {}).get(i),
            }
            for i in ids
        },
    }


__all__ = [
    "LawUpdate",
    "LoopRun",
    "RefitOptions",
    "WallEstimate",
    "check_time",
    "estimate_from_runs",
    "estimate_from_warmup",
    "law_accepts",
    "law_data",
    "optimistic_seconds",
    "upper_bound",
    "outcome_of",
    "plan_change",
    "refit_law",
    "run_setting",
    "training_run",
    "with_run",
]
