"""The closed loop: `run` (train a roadmap node, record it, refit its law, replan) and
`laws` (the laws, shipped and user, and their versions)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from derisk.cli._output import JsonOpt, command, emit, err, fmt, out, progress
from derisk.errors import DataError, DeriskError, DeriskWarning

MAX_BOOTSTRAP = 100_000


def _plan_summary(path: Path) -> tuple[dict, object]:
    """The plan from the file and its recorded outcomes, with the laws as they are now:
    ({"next", "value", "p": {id: law-driven p}}, the PlanInput)."""
    from derisk.cli.roadmap import is_approx, plan_input, solve_roadmap
    from derisk.planner import approx_plan_report, plan_report

    inp = plan_input(path, None, False)
    sol = solve_roadmap(inp, solver="auto")
    rep = approx_plan_report(sol, depth=1) if is_approx(sol) else plan_report(sol, depth=1)
    p = {k: e.p for k, e in inp.estimates.items() if e.p is not None}
    return {"next": rep.next, "value": rep.value, "p": p}, inp


def _check_int(flag: str, v: int, lo: int, hi: int) -> None:
    if not lo <= v <= hi:
        raise DeriskError(f"{flag} must be an integer between {lo:,} and {hi:,}, got {v}")


def _added_before(name: str, run_id: int, store: str) -> int | None:
    """The version of law `name` whose refit already added this stored run, if any."""
    from derisk.scaling._versions import law_versions

    for v in law_versions(name):
        a = v.added_run or {}
        if a.get("id") == run_id and a.get("store") == store:
            return v.version
    return None


@command
def run(
    file: Annotated[Path, typer.Argument(help="Roadmap YAML/JSON (its state file is updated).")],
    node: Annotated[str, typer.Argument(help="The experiment to train, by id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Train without asking.")] = False,
    max_minutes: Annotated[
        float,
        typer.Option(
            "--max-minutes", help="Refuse a run estimated to take longer than this on this machine."
        ),
    ] = 30.0,
    refit: Annotated[
        bool,
        typer.Option(
            "--refit/--no-refit",
            help="Add the run to its law's data and refit the law as a new version (default), "
            "or only train and record.",
        ),
    ] = True,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Refits on resampled runs, for the new law.")
    ] = 100,
    backtest_bootstrap: Annotated[
        int, typer.Option("--backtest-bootstrap", help="Refits per backtest cut (calibration).")
    ] = 20,
    starts: Annotated[int, typer.Option("--starts", help="L-BFGS starts of the refit.")] = 64,
    corpus: Annotated[
        Path | None,
        typer.Option("--corpus", help="Text file or folder (default: the Python stdlib sources)."),
    ] = None,
    as_json: JsonOpt = False,
):
    """Train a node of the roadmap for real, record its outcome, refit its law, replan.

    The node needs `train:` with its shape (d_model, layers) and `success: {loss_below:
    X}`. Its wall time is estimated first (from a similar run in the store, or a short
    timed warm-up) and the run is refused beyond --max-minutes. The run goes into the run
    store (--store / $DERISK_STORE), its outcome into FILE.state.json, and the run into its
    law's data: the law is refitted and saved as a new version (`derisk laws` lists them;
    the old one stays loadable as NAME@K). Prints the plan before and after.
    """
    import jax

    from derisk.cli.runs import _check_fits, _stored_result, _train_point, open_store
    from derisk.estimators import check_corpus, load_corpus, run_key
    from derisk.estimators._loop import (
        RefitOptions,
        check_time,
        estimate_from_runs,
        estimate_from_warmup,
        law_accepts,
        law_data,
        minutes_text,
        optimistic_seconds,
        outcome_of,
        plan_change,
        refit_law,
        run_setting,
        training_run,
        upper_bound,
    )
    from derisk.graphs import record_outcomes, state_path
    from derisk.scaling import load_law
    from derisk.scaling._versions import current_version, split_version

    if not (math.isfinite(max_minutes) and max_minutes > 0):
        raise DeriskError(f"--max-minutes must be a positive number, got {max_minutes:g}")
    _check_int("--bootstrap", bootstrap, 0, MAX_BOOTSTRAP)
    _check_int("--backtest-bootstrap", backtest_bootstrap, 2, MAX_BOOTSTRAP)
    _check_int("--starts", starts, 1, 100_000)
    path = Path(file)

    before, inp = _plan_summary(path)
    roadmap = inp.roadmap
    loop = training_run(roadmap, node)
    if node in inp.outcomes:
        raise DeriskError(
            f"`{node}` is already recorded as {inp.outcomes[node]} in {state_path(path)}; "
            f"clear it with `derisk record {path} {node}=untried` to run it again"
        )
    e = roadmap.experiment(node)
    for clause in e.requires:
        if not any(inp.outcomes.get(a) == "success" for a in clause):
            need = clause[0] if len(clause) == 1 else "one of " + ", ".join(clause)
            raise DeriskError(
                f"`{node}` needs {need} to have succeeded first (it is not recorded as a "
                f"success in {state_path(path)}); run or record it first"
            )
    data = load_corpus(corpus, max_bytes=20_000_000)
    check_corpus(data, loop.model)
    setting = run_setting(loop.model, loop.train, data.digest)
    law_before = None
    if refit:
        base, pinned = split_version(loop.law)
        if loop.law.endswith(".json") or pinned is not None:
            raise DeriskError(
                f"`{node}` names its law as `{loop.law}`, "
                + (
                    "a file: refits make numbered versions of a law saved by name (`derisk "
                    "fit RUNS.csv --save NAME`)"
                    if pinned is None
                    else f"version {pinned} of `{base}`: a refit makes a new version this "
                    f"node would not use (name it `{base}` to follow the refits)"
                )
                + "; or pass --no-refit to train and record it only"
            )
        law_before = current_version(loop.law)
        # Now, not after training: can the run join this law's data?
        why = law_accepts(load_law(loop.law), setting)
        if why:
            raise DeriskError(
                f"`{node}`'s run cannot join law `{loop.law}`'s data: {'; '.join(why)}. "
                f"Train it the way the law's runs were (in its `train:` block), or pass "
                "--no-refit to train and record it without refitting"
            )
        try:
            law_data(law_before)
        except DataError as exc:
            raise DeriskError(f"{exc} (or pass --no-refit)") from None
    _check_fits(loop.model, loop.train)
    store = open_store(create=True)
    key = run_key(loop.model, loop.train, data.digest)
    known = store.id_of(key)
    stored = store.get(known) if known is not None else None
    reuse = stored is not None and stored["status"] not in ("running", "failed")
    if not reuse and not yes and not err.is_terminal:
        raise DeriskError(
            f"not asking for confirmation on a non-terminal: pass --yes to train `{node}`"
        )
    estimate = None
    if not reuse:
        device = jax.devices()[0].device_kind
        estimate = estimate_from_runs(loop, store.runs(), device)
        if estimate is None:
            floor = optimistic_seconds(loop, device)
            if floor > max_minutes * 60:
                raise DeriskError(
                    f"`{node}` ({loop.describe()}; {loop.flops:.3g} FLOPs) would train for "
                    f"at least {minutes_text(floor)} on this machine ({device}) even at its "
                    f"peak, more than --max-minutes {max_minutes:g}; run it elsewhere and "
                    f"record the outcome with `derisk record {path} {node}=success`"
                )
            bound = upper_bound(loop)
            if bound.seconds <= max_minutes * 60:
                estimate = bound
        if estimate is None:
            with progress("{task.completed}/{task.total} steps") as bar:
                task = bar.add_task("timing a warm-up", total=1)
                estimate = estimate_from_warmup(
                    loop,
                    data,
                    progress=lambda i, n, loss, rate: bar.update(task, completed=i, total=n),
                )
        check_time(loop, estimate, max_minutes)
    if not as_json:
        out.print(f"[bold]{escape(roadmap.name)}[/]  ({escape(str(path))})")
        out.print(f"`{escape(node)}`: {escape(loop.describe())}")
        if reuse:
            out.print(
                f"this point is already in the store as run {known} "
                f"({escape(stored['status'])}); using it, not training again"
            )
        else:
            how = "at most" if estimate.upper else "estimated"
            out.print(
                f"{how} ~{minutes_text(estimate.seconds)} on this machine "
                f"(from {escape(estimate.source)})"
            )
        _print_plan("plan before", before, roadmap.unit_label())
    if not (reuse or yes) and not typer.confirm(
        f"Train `{node}` now (~{minutes_text(estimate.seconds)})?", default=True, err=True
    ):
        raise typer.Exit(1)

    claim, r = _train_point(store, loop.model, loop.train, data, label=f"training {node}")
    result = r.as_dict() if r is not None else _stored_result(store, claim)
    stored = store.get(claim.id)
    loss = result["final_val_loss"]
    loss = float(loss) if isinstance(loss, int | float) and math.isfinite(loss) else None
    outcome = outcome_of(result["status"], loss, loop.loss_below)
    spent = result["flops"] if roadmap.unit == "flops" and result["flops"] else None
    record_outcomes(roadmap, state_path(path), {node: (outcome, spent)})

    update, skipped = None, None
    if not refit:
        skipped = "--no-refit"
    elif stored["status"] != "finished" or loss is None:
        skipped = f"the run {stored['status']}: no loss to add"
    else:
        earlier = _added_before(loop.law, int(stored["id"]), str(Path(store.path).resolve()))
        if earlier is not None:
            skipped = f"run {stored['id']} is already in the law's data (version {earlier})"
    if skipped is None:
        with progress("{task.completed}/{task.total}") as bar:
            task = bar.add_task("refitting", total=bootstrap, visible=False)

            def on_phase(message: str) -> None:
                if bar.disable and not as_json:
                    err.print(f"refit: {message}", soft_wrap=True, highlight=False, markup=False)
                bar.update(task, description=f"refit: {message}", visible=True)

            with warnings.catch_warnings():
                warnings.simplefilter("always", DeriskWarning)
                update = refit_law(
                    loop.law,
                    stored,
                    options=RefitOptions(
                        bootstrap=bootstrap, backtest_bootstrap=backtest_bootstrap, starts=starts
                    ),
                    context={
                        "store": str(Path(store.path).resolve()),
                        "key": key,
                        "roadmap": str(path.resolve()),
                        "node": node,
                    },
                    progress=lambda k: bar.advance(task, k),
                    on_phase=on_phase,
                )
    after, _ = _plan_summary(path)
    change = plan_change(before, after)
    if update is not None:
        law_b, law_a = update.as_dicts()
    else:
        law_b, law_a = (law_before.as_dict() if law_before else None), None
    run_json = {
        "id": int(stored["id"]),
        "key": key,
        "store": str(store.path),
        "reused": r is None,
        "status": result["status"],
        "tokens": result["tokens"],
        "flops": result["flops"],
        "wall_s": result["wall_s"],
        "tokens_per_s": result["tokens_per_s"],
        "device": result["device"],
        "estimate": None if estimate is None else estimate.as_dict(),
    }
    if as_json:
        emit(
            {
                "node": node,
                "run": run_json,
                "outcome": outcome,
                "loss": loss,
                "loss_below": loop.loss_below,
                "state_file": str(state_path(path)),
                "law_before": law_b,
                "law_after": law_a,
                "refit_skipped": skipped,
                "before": before,
                "after": after,
                "changes": change,
            }
        )
        return
    unit = roadmap.unit_label()
    loss_text = "-" if loss is None else f"{loss:.4f}"
    out.print(
        f"run {stored['id']} {escape(result['status'])}: validation loss {loss_text} "
        f"(success needs < {loop.loss_below:g}) -> [bold]{outcome}[/]; "
        f"{fmt(result['tokens'])} tokens in {result['wall_s']:.1f}s"
    )
    out.print(f"recorded `{escape(node)}`={outcome} in {escape(str(state_path(path)))}")
    if update is not None:
        b, a = update.before, update.after
        out.print(
            f"law {escape(loop.law)}: version {b.version} ({b.where}, {update.runs_before} runs)"
            f" -> version {a.version} ({update.runs_after} runs), saved to "
            f"{escape(str(a.path))}" + f"; version {b.version} stays loadable as {escape(b.label)}"
        )
        t = Table(title="law parameters", title_justify="left")
        for col in ("parameter", "before", "after"):
            t.add_column(col, justify="left" if col == "parameter" else "right")
        for k, v in update.params_before.items():
            t.add_row(k, f"{v:.4g}", f"{update.params_after.get(k, float('nan')):.4g}")
        out.print(t)
    else:
        out.print(f"law {escape(loop.law)} not refitted: {escape(skipped)}")
    _print_change(change, unit)


def _print_plan(title: str, summary: dict, unit: str) -> None:
    nxt = summary["next"] or "stop"
    ps = ", ".join(f"{k} {fmt(v, p=True)}" for k, v in summary["p"].items())
    out.print(
        f"{title}: next [bold]{escape(nxt)}[/], value {fmt(summary['value'])}"
        + (f"; law-driven p: {escape(ps)}" if ps else "")
    )


def _print_change(change: dict, unit: str) -> None:
    t = Table(title="plan before -> after", title_justify="left")
    for col in ("", "before", "after", "change"):
        t.add_column(col, justify="left" if col == "" else "right")
    n = change["next"]
    t.add_row(
        "next",
        escape(n["before"] or "stop"),
        escape(n["after"] or "stop"),
        "changed" if change["next_changed"] else "same",
    )
    v = change["value"]
    d = v["change"]
    t.add_row(
        "value",
        fmt(v["before"]),
        fmt(v["after"]),
        "-" if d is None else f"{'+' if d > 0 else ''}{fmt(d)}",
    )
    for k, p in change["p"].items():
        b, a = p["before"], p["after"]
        d = None if b is None or a is None else a - b
        t.add_row(
            f"p({escape(k)})",
            "-" if b is None else fmt(b, p=True),
            "-" if a is None else fmt(a, p=True),
            "-" if d is None else f"{d:+.3f}",
        )
    out.print(t)


@command
def laws(
    name: Annotated[
        str | None, typer.Argument(help="One law: list its versions (default: every law).")
    ] = None,
    as_json: JsonOpt = False,
):
    """List the fitted laws, shipped and yours, and their versions.

    A refit (`derisk run`) saves a new version and keeps the old one as NAME@K, loadable
    by that name (`--law cpu-dense@1`, `success: {law: cpu-dense@1}`).
    """
    from derisk.scaling import laws_dir
    from derisk.scaling._optimal import packaged_laws_dir
    from derisk.scaling._versions import law_versions, list_laws

    found = {name: law_versions(name)} if name is not None else list_laws()
    if as_json:
        emit(
            {
                "laws_dir": str(laws_dir()),
                "shipped_dir": str(packaged_laws_dir()),
                "laws": [
                    {
                        "name": n,
                        "current": next((v.version for v in vs if v.current), None),
                        "versions": [v.as_dict() for v in vs],
                    }
                    for n, vs in found.items()
                ],
            }
        )
        return
    if name is None:
        t = Table(title=f"laws (yours in {escape(str(laws_dir()))})", title_justify="left")
        for col in ("name", "current", "versions", "form", "runs", "source"):
            t.add_column(col, justify="right" if col in ("current", "runs") else "left")
        for n, vs in found.items():
            cur = next((v for v in vs if v.current), vs[-1])
            t.add_row(
                escape(n),
                f"{cur.version} ({cur.where})",
                ", ".join(str(v.version) for v in vs),
                escape(cur.law or "-"),
                "-" if cur.runs is None else str(cur.runs),
                escape(cur.source or "-"),
            )
        out.print(t)
        out.print("`derisk laws NAME` lists one law's versions; NAME@K loads version K")
        return
    t = Table(title=f"law {escape(name)}", title_justify="left")
    for col in ("version", "", "where", "runs", "saved", "added", "path"):
        t.add_column(col, justify="right" if col in ("version", "runs") else "left")
    for v in found[name]:
        a = v.added_run or {}
        added = "-"
        if a:
            added = f"run {a.get('id')}" + (f" ({a['node']})" if a.get("node") else "")
        t.add_row(
            str(v.version),
            "current" if v.current else "",
            v.where,
            "-" if v.runs is None else str(v.runs),
            escape(v.saved or "-"),
            escape(added),
            escape(str(v.path)) + (f" [red]({escape(v.error)})[/]" if v.error else ""),
        )
    out.print(t)


COMMANDS = [("run", run), ("laws", laws)]
