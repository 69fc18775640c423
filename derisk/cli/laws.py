"""Scaling-law commands: fit, optimal, predict."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from derisk.cli._output import (
    JsonOpt,
    command,
    emit,
    err,
    fmt,
    out,
    print_chart,
    progress,
    warn,
)
from derisk.errors import DeriskError, DeriskWarning

MAX_ROWS = 10_000  # derisk.scaling.MAX_ROWS (not imported here: it would load scipy early)
MAX_BOOTSTRAP = 100_000  # refits; each reads every run (the default is 100)
MAX_SEQ_LEN = 2**24


def _check_int(flag: str, v: int, lo: int, hi: int | None = None) -> None:
    if v < lo or (hi is not None and v > hi):
        within = f"between {lo:,} and {hi:,}" if hi is not None else f">= {lo:,}"
        raise DeriskError(f"{flag} must be an integer {within}, got {v}")


def _check_number(flag: str, v: float, what: str, *, positive: bool = False) -> None:
    """A finite number, positive or >= 0; the message names the flag."""
    if not (math.isfinite(v) and (v > 0 if positive else v >= 0)):
        raise DeriskError(f"{flag} must be {what}, got {v:g}")


# ---------------------------------------------------------------- fit


@command
def fit(
    file: Annotated[
        Path, typer.Argument(help="CSV with params, tokens, loss (+ experts, granularity).")
    ],
    law: Annotated[
        str, typer.Option("--law", help="chinchilla | moe (granularity) | moe_experts")
    ] = "chinchilla",
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Refits on resampled runs for intervals (0 = none).")
    ] = 100,
    starts: Annotated[
        int,
        typer.Option(
            "--starts", help="L-BFGS starts (the best points of the initialisation grid)."
        ),
    ] = 64,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    params_col: Annotated[str, typer.Option("--params-col")] = "params",
    tokens_col: Annotated[str, typer.Option("--tokens-col")] = "tokens",
    flops_col: Annotated[
        str | None,
        typer.Option(
            "--flops-col",
            help="A column of training compute instead of tokens: tokens = C / (6 N), as "
            "Hoffmann et al.'s and Epoch's data count them.",
        ),
    ] = None,
    params_kind: Annotated[
        str,
        typer.Option(
            "--params-kind",
            help="What the params column counts: non_embedding (derisk's own runs, Kaplan "
            "et al.) or total (embeddings and output layer included, Hoffmann et al.). "
            "Recorded in the law; roadmap runs it judges are counted the same way.",
        ),
    ] = "non_embedding",
    loss_col: Annotated[str, typer.Option("--loss-col")] = "loss",
    experts_col: Annotated[str, typer.Option("--experts-col")] = "experts",
    granularity_col: Annotated[str, typer.Option("--granularity-col")] = "granularity",
    fix_e: Annotated[
        float | None,
        typer.Option(
            "--fix-E",
            help="Hold the irreducible loss E at this value (e.g. the "
            "dense fit's, when fitting MoE runs on the same data).",
        ),
    ] = None,
    min_tokens: Annotated[
        float,
        typer.Option(
            "--min-tokens",
            help="Leave out runs with fewer training tokens "
            "(very short runs measure warm-up, not scaling).",
        ),
    ] = 0,
    max_rows: Annotated[
        int,
        typer.Option(
            "--max-rows",
            help="Fit a random subset of this many runs when there are more (the time "
            "grows with the runs: about 2 s per 1,000 with the default bootstrap).",
        ),
    ] = MAX_ROWS,
    save: Annotated[
        str | None,
        typer.Option("--save", help="Save the law under this name (or to this .json path)."),
    ] = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="Also save a matplotlib figure.")
    ] = None,
    loss_unit: Annotated[
        str | None,
        typer.Option(
            "--loss-unit",
            help="What the loss measures, recorded in the saved law (e.g. 'nats per token, "
            "MassiveText, Chinchilla tokenizer').",
        ),
    ] = None,
    run_backtest: Annotated[
        bool,
        typer.Option(
            "--backtest",
            help="Also refit below successive scale cuts (by compute and by parameters) "
            "and score the predictions above them against the distance extrapolated; "
            "kept in the saved law.",
        ),
    ] = False,
    backtest_bootstrap: Annotated[
        int,
        typer.Option("--backtest-bootstrap", help="Refits per backtest cut, for its band."),
    ] = 20,
    remedy: Annotated[
        str,
        typer.Option(
            "--remedy",
            help="With --backtest, for a degenerate fit: auto (try e_floor, prior, power, "
            "the IsoFLOP frontier when the runs form IsoFLOP slices, and their average; "
            "keep the best by backtest error), none, or one of them.",
        ),
    ] = "auto",
    as_json: JsonOpt = False,
):
    """Fit a scaling law (Hoffmann et al. approach 3) with bootstrap intervals."""
    from derisk.errors import DataError
    from derisk.figures import fit_figure
    from derisk.scaling import (
        LAWS,
        REMEDIES,
        check_law_destination,
        fit_calibrated,
        fit_diagnostics,
        fit_law,
        load_runs_csv,
        save_law,
        save_version,
    )

    if law not in LAWS:
        raise DeriskError(f"--law must be one of {', '.join(LAWS)}, got {law!r}")
    _check_int("--bootstrap", bootstrap, 0, MAX_BOOTSTRAP)
    _check_int("--starts", starts, 1)
    _check_int("--seed", seed, 0, 2**63 - 1)
    _check_int("--max-rows", max_rows, 1)
    _check_int("--backtest-bootstrap", backtest_bootstrap, 2, MAX_BOOTSTRAP)
    if fix_e is not None:
        _check_number("--fix-E", fix_e, "a positive loss", positive=True)
    if remedy != "auto" and remedy not in REMEDIES:
        raise DeriskError(f"--remedy must be auto or one of {', '.join(REMEDIES)}, got {remedy!r}")
    if remedy not in ("auto", "none") and not run_backtest:
        raise DeriskError(f"--remedy {remedy} is chosen against a backtest: add --backtest")
    if remedy == "frontier" and law != "chinchilla":
        raise DeriskError(
            f"--remedy frontier is an IsoFLOP fit of a dense law: use --law chinchilla, not {law}"
        )
    if remedy not in ("auto", "none") and fix_e is not None:
        raise DeriskError(f"--remedy {remedy} changes how E is fitted: drop --fix-E or the remedy")
    _check_number("--min-tokens", min_tokens, "a token count >= 0")
    if png is not None and (png.is_dir() or not png.parent.is_dir()):  # now, not after
        why = "is a folder" if png.is_dir() else f"{png.parent} is not a folder"
        raise DeriskError(f"--png {png}: {why}; give a file path ending in .png, .svg or .pdf")
    if save is not None:  # fail now, not after the fit
        try:
            check_law_destination(save)
        except DataError as exc:
            raise DeriskError(f"--save {save}: {exc}") from None
    if params_kind not in ("non_embedding", "total"):
        raise DeriskError(f"--params-kind must be non_embedding or total, got {params_kind!r}")
    if flops_col is not None and tokens_col != "tokens":
        raise DeriskError("--flops-col and --tokens-col both say where tokens come from: give one")
    columns = {
        "params": params_col,
        "tokens": tokens_col,
        "loss": loss_col,
        "experts": experts_col,
        "granularity": granularity_col,
    }
    if flops_col is not None:
        columns["flops"] = flops_col
    data = load_runs_csv(file, columns=columns)
    if min_tokens > 0:
        data = data.subset(data.tokens >= min_tokens)
    with progress("{task.completed}/{task.total}") as bar:
        task = bar.add_task("bootstrap", total=bootstrap, visible=False)

        def on_phase(message: str) -> None:
            # A terminal gets the bar; anything else (a log, CI) one line per phase.
            if bar.disable:
                err.print(f"fit: {message}", soft_wrap=True, highlight=False, markup=False)
            else:
                bar.update(task, description=f"fit: {message}", visible=True)

        with warnings.catch_warnings():
            # Shown as they happen (a subsampled file, capped starts), not after the fit.
            warnings.simplefilter("always", DeriskWarning)
            warnings.showwarning = lambda message, *args, **kwargs: warn(message)
            common = dict(
                fix_E=fix_e,
                starts=starts,
                bootstrap=bootstrap,
                seed=seed,
                max_rows=max_rows,
                progress=lambda k: bar.advance(task, k),
                on_phase=on_phase,
            )
            bt = None
            if run_backtest:
                result, bt = fit_calibrated(
                    data, law, remedy=remedy, backtest_bootstrap=backtest_bootstrap, **common
                )
            else:
                result = fit_law(data, law, **common)
    # what `derisk predict --run` needs to put a stored run on this law's axes
    result.summary.update(params_col=params_col, min_tokens=min_tokens, params_kind=params_kind)
    if flops_col is not None:
        result.summary["tokens_from"] = f"{flops_col} / (6 {params_col})"
    if loss_unit:
        result.summary["loss_unit"] = loss_unit
    intervals = result.intervals()
    extra = fit_diagnostics(result, data)
    saved = None
    if save:
        provenance = {"file": str(file), "law": law, "bootstrap": bootstrap, "seed": seed}
        try:
            if save.endswith(".json"):  # a path: written where asked
                saved = str(save_law(result, save, provenance))
            else:  # a name: a new version, the one before kept as NAME@K
                saved = str(save_version(result, save, provenance=provenance).path)
        except DataError as exc:
            raise DeriskError(f"--save {save}: {exc}") from None
    if png is not None:
        fit_figure(result, data, png)
    if as_json:
        emit(
            {
                **result.params,
                "law": law,
                "form": result.form or law,
                "members": None
                if result.members is None
                else [{"weight": m.weight, "form": m.form} for m in result.members],
                "intervals": intervals,
                "loss": result.loss,
                "rmse_log": result.rmse_log,
                "sigma_log": result.sigma_log,
                "runs": result.n,  # fitted: a random max_rows of them past --max-rows
                "runs_in_file": result.summary.get("runs", result.n),
                "starts": result.starts,
                "starts_at_optimum": result.starts_at_optimum,
                "success": result.success,
                "status": result.status,
                "message": result.message,
                "flags": list(result.flags),
                "seconds": result.seconds,
                "saved": saved,
                **extra,
                **({} if bt is None else {"backtest": _backtest_json(bt)}),
                **({} if result.calibration is None else {"calibration": result.calibration}),
                **({} if result.remedy is None else {"remedy": result.remedy}),
            }
        )
        return
    what = law
    if result.members:
        what = f"{law} (model average of {len(result.members)} fits)"
    elif result.form:
        what = f"{law} ({result.form} form)"
    how = (
        "a parabola per IsoFLOP slice, no L-BFGS"
        if result.form == "frontier"
        else f"{result.starts_at_optimum}/{result.starts} L-BFGS starts reached the optimum"
    )
    out.print(
        f"[bold]{what}[/] fit to {result.n} runs from {escape(str(file))} in "
        f"{result.seconds:.2f}s: {how} (Huber objective {fmt(result.loss)})"
    )
    t = Table()
    for col in ("parameter", "value", "80% interval"):
        t.add_column(col, justify="right")
    for k, v in result.params.items():
        iv = intervals.get(k)
        t.add_row(k, fmt(v), f"{fmt(iv[0])} - {fmt(iv[1])}" if iv else "-")
    out.print(t)
    if "isoflop" in extra:
        iso = extra["isoflop"]
        out.print(
            f"IsoFLOP slices (approach 2, {len(iso['budgets'])} budgets): N_opt ~ "
            f"C^{iso['a']:.3f}, D_opt ~ C^{iso['b']:.3f}"
        )
    if "effective_params" in extra:
        e = extra["effective_params"]
        out.print(
            f"An MoE with {fmt(e['experts'])} experts / granularity {fmt(e['granularity'])} "
            f"is worth a dense model {e['multiplier']:.2f}x larger"
        )
    out.print(
        f"log-loss residuals: RMS {result.rmse_log:.4f}, robust noise sigma "
        f"{result.sigma_log:.4f}" + (f"; saved to {escape(saved)}" if saved else "")
    )
    if result.status:
        out.print(f"[bold yellow]{escape(result.message)}[/]")
        if bt is None:
            out.print(
                "add --backtest to try the remedies (E bounded below, priors on the "
                "exponents, pure power laws) and keep the one that extrapolates best"
            )
    else:
        out.print(f"fit status: {escape(result.message)}")
    if result.remedy:
        _print_remedies(result.remedy)
    if bt is not None:
        _print_backtest(bt)
        _backtest_chart(bt, result.calibration)
    if result.calibration:
        for axis, c in result.calibration["axes"].items():
            if c.get("borrowed"):
                out.print(
                    f"calibrated by {axis}: not cut along; borrows {c['per_decade']:.4f} per "
                    "decade (the largest measured scale) beyond the largest run"
                )
                continue
            out.print(
                f"calibrated by {axis}: extrapolation error (log sd) {c['per_decade']:.4f} "
                f"per decade beyond the largest run; backtest runs inside the 80% band "
                f"{100 * c['coverage_before']:.0f}% -> {100 * c['coverage_after']:.0f}%"
            )
    _fit_chart(result, data)
    if png is not None:
        out.print(f"figure saved to {escape(str(png))}")


def _print_remedies(remedy: dict) -> None:
    t = Table(
        title="remedies, scored by backtest (mean |log error| of the held-out larger runs)",
        title_justify="left",
    )
    for col in ("remedy", "mean |log error|", "inside 80%", "alpha", "beta", "E", "status"):
        t.add_column(col, justify="right")
    for name, c in remedy["candidates"].items():
        mark = " (chosen)" if name == remedy["chosen"] else ""
        if "error" in c:
            t.add_row(name + mark, "-", "-", "-", "-", "-", escape(c["error"]))
            continue
        p = c["params"]
        if "weights" in c:
            note = "weights " + ", ".join(f"{k} {v:.2f}" for k, v in c["weights"].items())
        elif c.get("form") == "frontier":  # no alpha, beta: its own N_opt and L*
            note = f"N_opt ~ C^{p['a']:.3f}, L* = E + B C^-{p['gamma']:.3f}"
            note += f"; {', '.join(c['flags'])}" if c["flags"] else ""
        else:
            note = ", ".join(c["flags"]) or "ok"
        t.add_row(
            name + mark,
            f"{c['backtest_mean_abs_log_error']:.4f}",
            f"{100 * c['backtest_coverage']:.0f}%",
            fmt(p["alpha"]) if "alpha" in p else "-",
            fmt(p["beta"]) if "beta" in p else "-",
            fmt(p["E"]),
            note,
        )
    out.print(t)


def _backtest_json(bt) -> dict:
    d = bt.as_dict()
    del d["rows"]  # in the saved law; the table is the answer here
    return d


def _print_backtest(bt) -> None:
    pct = f"{100 * bt.level:.0f}%"
    t = Table(
        title=f"backtest: fit below each cut, predict the runs above ({bt.bootstrap} refits "
        "per cut)",
        title_justify="left",
    )
    for col in ("by", "decades beyond", "runs", "mean |log error|", "bias", f"inside {pct}"):
        t.add_column(col, justify="right")
    for r in bt.table:
        lo, hi = r["decades"]
        t.add_row(
            r["by"],
            f"{lo:g}-{hi:g}" if hi is not None else f"> {lo:g}",
            str(r["runs"]),
            f"{r['mean_abs_log_error']:.4f}",
            f"{r['mean_log_error']:+.4f}",
            f"{r['inside']}/{r['runs']}",
        )
    out.print(t)
    for s in bt.skipped:
        out.print(f"skipped {s['by']} cut {s['cut']:.3g}: {escape(s['why'])}")


def _backtest_chart(bt, calibration) -> None:
    """Each held-out run's log error against how far it was extrapolated, with the 80%
    spread the calibration adds (+-1.28 x k x decades)."""
    import plotext as plt

    plt.clear_figure()
    for by, marker in (("compute", "dot"), ("params", "x")):
        rows = [r for r in bt.rows if r.by == by]
        if rows:
            x = [r.decades for r in rows]
            plt.scatter(x, [r.log_error for r in rows], label=f"by {by}", marker=marker)
    k = ((calibration or {}).get("axes", {}).get("compute") or {}).get("per_decade")
    if k:
        top = max((r.decades for r in bt.rows), default=1.0)
        xs = np.linspace(0, top, 20)
        z = 1.2816  # the 80% band's half-width in standard deviations
        plt.plot(xs.tolist(), (z * k * xs).tolist(), label="calibrated 80% (compute)")
        plt.plot(xs.tolist(), (-z * k * xs).tolist())
    plt.xlabel("decades beyond the largest fitted run")
    plt.ylabel("log error")
    plt.title("backtest: held-out larger runs")
    print_chart(plt)


def _fit_chart(result, data) -> None:
    import plotext as plt

    from derisk.scaling import law_inputs, loss_frontier

    plt.clear_figure()
    flops = 6 * data.params * data.tokens
    plt.scatter(np.log10(flops).tolist(), data.loss.tolist(), label="runs", marker="dot")
    if result.law == "chinchilla":
        f = loss_frontier(result, float(flops.min()), float(flops.max()) * 10)
        x = np.log10(f.flops).tolist()
        plt.plot(x, f.loss.tolist(), label="compute-optimal fit")
        plt.plot(x, f.lo.tolist(), label="80% band")
        plt.plot(x, f.hi.tolist())
    else:
        X = law_inputs(result.law, data.params, data.tokens, data.experts, data.granularity)
        pred = result.predict(X)
        plt.scatter(np.log10(flops).tolist(), pred.tolist(), label="fit at each run", marker="x")
    plt.xlabel("log10 training FLOPs (6ND)")
    plt.ylabel("loss")
    print_chart(plt)


# ---------------------------------------------------------------- optimal


@command
def optimal(
    flops: Annotated[str, typer.Option("--flops", help="Training compute, e.g. 1e21.")],
    law: Annotated[
        str, typer.Option("--law", help="A saved law name or .json path.")
    ] = "chinchilla",
    exact: Annotated[
        bool,
        typer.Option(
            "--exact", help="Count attention FLOPs (numeric) instead of C = 6ND (closed form)."
        ),
    ] = False,
    seq_len: Annotated[int, typer.Option("--seq-len")] = 2048,
    uncalibrated: Annotated[
        bool,
        typer.Option(
            "--uncalibrated",
            help="The loss band without the law's calibrated extrapolation error.",
        ),
    ] = False,
    as_json: JsonOpt = False,
):
    """Compute-optimal model size and tokens for a FLOP budget, from a fitted law."""
    from derisk.scaling import load_law, optimal_allocation

    try:
        c = float(flops)
    except ValueError:
        raise DeriskError(f"--flops must be a number like 1e21, got {flops!r}") from None
    if not (math.isfinite(c) and c > 0):
        raise DeriskError(f"--flops must be a positive finite number, got {flops!r}")
    _check_int("--seq-len", seq_len, 1, MAX_SEQ_LEN)
    result = load_law(law)
    if result.law != "chinchilla":
        raise DeriskError(
            f"--law {law}: a {result.law} law; compute-optimal allocation "
            "needs a dense (chinchilla) law"
        )
    try:
        a = optimal_allocation(result, c, exact=exact, seq_len=seq_len, calibrated=not uncalibrated)
    except ValueError as exc:
        raise DeriskError(f"--flops {flops}: {exc}") from None
    from derisk.scaling._predict import extrapolation_text

    # How far N* and D* lie beyond the law's runs: said as `predict` says it.
    seen = result.summary or {}
    p_lo, p_hi = seen.get("params") or [a.params, a.params]
    d_lo, d_hi = seen.get("tokens") or [a.tokens, a.tokens]
    beyond = {"params": a.params / p_hi, "tokens": a.tokens / d_hi}
    below = {"params": a.params / p_lo, "tokens": a.tokens / d_lo}  # < 1: under the runs
    far = extrapolation_text(beyond["params"], beyond["tokens"], below["params"], below["tokens"])
    if far and (max(beyond.values()) > 3 or min(below.values()) < 1 / 3):
        warn(f"--law {law}: the allocation at {fmt(c)} FLOPs {far}; the form may not hold that far")
    if as_json:
        emit(
            {
                "flops": a.flops,
                "params": a.params,
                "tokens": a.tokens,
                "tokens_per_param": a.tokens_per_param,
                "loss": a.loss,
                "loss_interval": a.loss_interval,
                "method": a.method,
                "law": law,
                "calibrated": bool(result.calibration) and not uncalibrated,
                "extrapolation": beyond,
                "below_runs": below,
            }
        )
        return
    out.print(f"C = {fmt(a.flops)} FLOPs ({a.method}):")
    out.print(
        f"  N* = {fmt(a.params)} parameters, D* = {fmt(a.tokens)} tokens "
        f"({a.tokens_per_param:.1f} tokens per parameter)"
    )
    iv = f" (80%: {a.loss_interval[0]:.4f} - {a.loss_interval[1]:.4f})" if a.loss_interval else ""
    out.print(f"  predicted loss {a.loss:.4f}{iv}")
    out.print(
        f"  {far}"
        if far
        else f"  within the law's runs ({beyond['params']:.2g}x the largest fitted model, "
        f"{beyond['tokens']:.2g}x the most fitted tokens)"
    )


# ---------------------------------------------------------------- predict


@command
def predict(
    law: Annotated[
        str | None,
        typer.Option(
            "--law", help="A saved law name or .json path (default: the shipped law for --arch)."
        ),
    ] = None,
    params: Annotated[
        float | None,
        typer.Option(
            "--params",
            help="Parameters as the law counts them: non-embedding for derisk's own laws "
            "(active for MoE), total (embeddings included) for a law fitted on total "
            "counts, such as chinchilla (`derisk laws` shows which).",
        ),
    ] = None,
    tokens: Annotated[float | None, typer.Option("--tokens", help="Training tokens.")] = None,
    d_model: Annotated[
        int | None,
        typer.Option(
            "--d-model",
            help="Instead of --params: the model `derisk train --d-model` would train "
            "(with --arch, --n-layer, --experts).",
        ),
    ] = None,
    arch: Annotated[str, typer.Option("--arch", help="dense | moe, with --d-model")] = "dense",
    n_layer: Annotated[int, typer.Option("--n-layer", help="With --d-model.")] = 2,
    experts: Annotated[
        float | None, typer.Option("--experts", help="Default 1 (dense), 4 (--arch moe).")
    ] = None,
    granularity: Annotated[float, typer.Option("--granularity")] = 1.0,
    run_ids: Annotated[
        list[str] | None,
        typer.Option(
            "--run",
            help="A run id from `derisk runs` (repeatable, or `all`): its measured loss "
            "against the prediction.",
        ),
    ] = None,
    below: Annotated[
        float | None, typer.Option("--below", help="Also print P(loss < this).")
    ] = None,
    uncalibrated: Annotated[
        bool,
        typer.Option(
            "--uncalibrated",
            help="The band without the law's calibrated extrapolation error (parameter "
            "uncertainty and run noise only), for comparison.",
        ),
    ] = False,
    as_json: JsonOpt = False,
):
    """A run's loss predicted by a fitted law, with its 80% predictive interval."""
    from derisk.cli.runs import open_store
    from derisk.estimators import SHIPPED_LAWS, law_point
    from derisk.scaling import PredictPoint, load_law, predict_points

    if arch not in SHIPPED_LAWS:
        raise DeriskError(f"--arch must be dense or moe, got {arch!r}")
    for name, v in (
        ("--params", params),
        ("--tokens", tokens),
        ("--experts", experts),
        ("--granularity", granularity),
    ):
        if v is not None:
            _check_number(name, v, "a positive finite number", positive=True)
    if below is not None:
        _check_number("--below", below, "a positive finite loss", positive=True)
    if d_model is not None and params is not None:
        raise DeriskError("give --params or --d-model, not both")
    law = SHIPPED_LAWS[arch] if law is None else law
    fit = load_law(law)
    if experts is None:
        experts = 4.0 if arch == "moe" and d_model is not None else 1.0
    if d_model is not None:
        from derisk._flops import Shape, param_counts
        from derisk.scaling._predict import count_key

        if not float(experts).is_integer():
            raise DeriskError(f"--experts must be a whole number with --d-model, got {experts:g}")
        _check_int("--d-model", d_model, 8)
        _check_int("--n-layer", n_layer, 1)
        shape = Shape(arch=arch, d_model=d_model, layers=n_layer, experts=int(experts), top_k=1)
        counts = param_counts(shape)
        params = float(counts[count_key(fit)])  # as the law counts N
    if (params is None) != (tokens is None):
        raise DeriskError("give both --params and --tokens (or --run ID)")
    if params is None and not run_ids:
        raise DeriskError("give --params N --tokens D, or --run ID for a run in the store")
    points = []
    if params is not None:
        points.append(
            PredictPoint(params=params, tokens=tokens, experts=experts, granularity=granularity)
        )
    if run_ids:
        store = open_store(create=False)
        if "all" in run_ids:
            arches = set(((fit.summary or {}).get("setting") or {}).get("arch") or [])
            chosen = [
                r
                for r in store.runs()
                if r["status"] == "finished" and (not arches or r["arch"] in arches)
            ]
            if not chosen:
                arch = f" of arch {', '.join(sorted(arches))}" if arches else ""
                warn(
                    f"--run all: the store holds no finished runs{arch} to predict; "
                    "train or sweep first (`derisk train`, `derisk sweep`)"
                )
        else:
            chosen = [store.get(i) for i in run_ids]
        points += [law_point(r, fit) for r in chosen]
    forecast = predict_points(fit, points, below=below, calibrated=not uncalibrated)
    results = forecast.as_dicts()
    summary = forecast.summary
    if as_json:
        emit(
            {
                "law": law,
                "predictions": results,
                "summary": summary,
                "warnings": list(forecast.warnings),
            }
        )
        return
    band = ""
    if fit.calibration:
        band = "; band uncalibrated" if uncalibrated else "; band calibrated for extrapolation"
    kind = fit.law
    if fit.members:
        kind += f", average of {len(fit.members)} fits"
    elif fit.form:
        kind += f", {fit.form} form"
    t = Table(title=f"law {escape(law)} ({kind}, {fit.n} runs{band})", title_justify="left")
    cols = ["params", "tokens", "law", "80% band"]
    if summary:
        cols = ["run", *cols, "measured", "error", "q"]
    for col in cols:
        t.add_column(col, justify="right")
    for d in results:
        iv = d["interval"]
        row = [
            fmt(d["params"]),
            fmt(d["tokens"]),
            f"{d['loss']:.4f}",
            f"{iv[0]:.3f}-{iv[1]:.3f}" if iv else "-",
        ]
        if summary:
            row = [
                "-" if d["run"] is None else str(d["run"]),
                *row,
                "-" if d["observed"] is None else f"{d['observed']:.4f}",
                "-" if d["error"] is None else f"{100 * d['error']:+.1f}%",
                "-" if d["quantile"] is None else f"{d['quantile']:.2f}",
            ]
        t.add_row(*row)
    out.print(t)
    if below is not None:
        for d in results:
            out.print(f"P(loss < {below:g}) = {fmt(d['p_below'], p=True)}")
    if summary:
        out.print(
            f"{summary['inside_80']} of {summary['runs']} measured losses inside the 80% "
            f"interval; mean |error| {100 * summary['mean_abs_error']:.1f}%"
        )


COMMANDS = [("fit", fit), ("optimal", optimal), ("predict", predict)]
