"""The `derisk` command line: parse, call one library function, render.

Results go to stdout (JSON with --json, else rich text); progress, warnings and
errors go to stderr, so `--json` output always parses. A user's mistake is one red
line per problem and exit code 2; --debug shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import sys
import warnings
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.tree import Tree

from derisk.errors import DeriskError, DeriskWarning, Problem, RoadmapError
from derisk.graphs import (
    Roadmap,
    example_path,
    examples,
    load_roadmap,
    load_state,
    load_with_overrides,
    record_outcomes,
    state_path,
)
from derisk.graphs._load import _Checker, _quantity

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Plan research roadmaps: the next experiment, by exact value iteration under a "
    "compute budget.",
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
_state = {"debug": False}

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def emit(result: dict) -> None:
    """The one JSON writer: stdout, fixed settings, NaN/inf as null."""
    sys.stdout.write(json.dumps(_jsonable(result), indent=2, allow_nan=False) + "\n")
    sys.stdout.flush()


def _report(exc: DeriskError) -> None:
    """One red line per problem on stderr (text escaped: it may hold brackets)."""
    lines = [str(p) for p in exc.problems] if isinstance(exc, RoadmapError) else [str(exc)]
    for line in lines:
        err.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True, highlight=False)


def _warn(message) -> None:
    err.print(f"[yellow]warning:[/] {escape(str(message))}", soft_wrap=True, highlight=False)


def command(fn):
    """Run a command body: warnings to stderr, user errors as red lines + exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DeriskWarning)
            try:
                return fn(*args, **kwargs)
            except DeriskError as exc:
                if _state["debug"]:
                    raise
                _report(exc)
                raise typer.Exit(2) from None
            finally:
                for w in caught:
                    if issubclass(w.category, DeriskWarning):
                        _warn(w.message)

    return wrapper


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    store: Annotated[
        Path | None,
        typer.Option(
            "--store", envvar="DERISK_STORE", help="Run store (SQLite) for train, sweep and runs."
        ),
    ] = None,
):
    _state["debug"] = debug
    _state["store"] = store


# ---------------------------------------------------------------- shared helpers


def _roadmap_arg(file: Path | None, sets: list[str] | None = None) -> tuple[Roadmap, Path]:
    path = Path(file) if file is not None else example_path()
    if sets:
        return load_with_overrides(path, sets), path
    return load_roadmap(path), path


def _amount(text: str | None, roadmap: Roadmap, what: str) -> float | None:
    """Parse `1500` or `1500 gpu_hours` into the roadmap's unit."""
    if text is None:
        return None
    ck = _Checker(what)
    q = _quantity(ck, text, None, what)
    if q is None or q[0] < 0:
        raise DeriskError(
            f"{what} must be a non-negative number with an optional unit "
            f"(e.g. 1500 or '1500 gpu_hours'), got {text!r}"
        )
    if q[1] is not None and roadmap.unit is not None and q[1] != roadmap.unit:
        raise DeriskError(f"{what} is in {q[1]} but {roadmap.source} plans in {roadmap.unit}")
    return q[0]


def _progress(counter: str = "{task.completed:,}/{task.total:,} states"):
    """A transient progress bar on stderr (off when stderr is not a terminal)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn(counter),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _solve(
    roadmap: Roadmap,
    *,
    budget=None,
    resolution=None,
    solver="exact",
    max_states=2_000_000,
    max_memory_gb=8.0,
    outcomes=None,
    spent=0.0,
):
    from derisk.errors import ProblemTooLarge
    from derisk.planner import SolveConfig, build_space, compile_roadmap, solve

    problem = compile_roadmap(
        roadmap, budget=budget, resolution=resolution, outcomes=outcomes, spent=spent
    )
    config = SolveConfig(solver=solver, max_states=max_states, max_memory_gb=max_memory_gb)
    try:
        space = build_space(problem, config)
    except ProblemTooLarge as exc:
        raise DeriskError(
            f"{roadmap.source}: too large to solve exactly: {exc}. Use a coarser budget step "
            f"(--resolution, now {problem.resolution:g}), fewer experiments, or raise "
            "--max-states / --max-memory if the machine has room"
        ) from None
    with _progress() as bar:
        task = bar.add_task(f"solving ({solver})", total=space.size)
        sol = solve(problem, config=config, space=space, progress=lambda k: bar.advance(task, k))
    return sol


def _fmt(x: float, unit: str = "") -> str:
    if x is None or not math.isfinite(x):
        return "-"
    if abs(x) < 1e-9:  # float noise from sums of equal paths
        x = 0.0
    s = f"{x:,.4g}" if abs(x) < 1e5 else f"{x:.3g}"
    return f"{s} {unit}".strip()


def _outcomes_from_state(roadmap: Roadmap, path: Path, fresh: bool):
    if fresh:
        return {}, 0.0
    state = load_state(roadmap, state_path(path))
    outcomes = {k: v["outcome"] for k, v in state.items()}
    return outcomes, float(sum(v["spent"] for v in state.values()))


SolverOpt = Annotated[str, typer.Option("--solver", help="exact | jax | mdptoolbox")]
BudgetOpt = Annotated[
    str | None,
    typer.Option(
        "--budget", help="Budget to plan with, e.g. 1500 or '1500 gpu_hours' (default: the file's)."
    ),
]
ResOpt = Annotated[
    str | None,
    typer.Option(
        "--resolution", help="Budget step (default: the file's, else chosen automatically)."
    ),
]
MaxStatesOpt = Annotated[
    int, typer.Option("--max-states", help="Refuse problems with more reachable states than this.")
]
MaxMemOpt = Annotated[
    float,
    typer.Option("--max-memory", help="Refuse problems whose solve would need more GiB than this."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override, e.g. pilot.p=0.5, big.cost=1200, budget=3000 (repeatable)."
    ),
]


def _print_chart(plt) -> None:
    """A plotext figure to stdout, plain when stdout is not a colour terminal."""
    plt.plotsize(min(100, out.width), 20)
    text = plt.build()
    if not out.is_terminal or out.no_color:
        text = plt.uncolorize(text)
    # Straight to stdout: rich would re-wrap the chart's lines.
    out.file.write(text + "\n")
    out.file.flush()


def _save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure (format from the extension); a bad path is a user error."""
    import matplotlib.pyplot as mpl

    fig.tight_layout()
    try:
        fig.savefig(path)
    except (OSError, ValueError) as exc:
        raise DeriskError(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None
    finally:
        mpl.close(fig)


# ---------------------------------------------------------------- plan


@app.command()
@command
def plan(
    file: Annotated[
        Path | None, typer.Argument(help="Roadmap YAML/JSON (default: bundled example).")
    ] = None,
    budget: BudgetOpt = None,
    resolution: ResOpt = None,
    solver: SolverOpt = "exact",
    depth: Annotated[int, typer.Option("--depth", help="Levels of the policy tree.")] = 3,
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore recorded outcomes.")] = False,
    set_: SetOpt = None,
    max_states: MaxStatesOpt = 2_000_000,
    max_memory: MaxMemOpt = 8.0,
    as_json: JsonOpt = False,
):
    """Recommend the next experiment and show what the plan is worth."""
    from derisk.planner import plan_report

    roadmap, path = _roadmap_arg(file, set_)
    outcomes, spent = _outcomes_from_state(roadmap, path, fresh or file is None)
    sol = _solve(
        roadmap,
        budget=_amount(budget, roadmap, "--budget"),
        resolution=_amount(resolution, roadmap, "--resolution"),
        solver=solver,
        max_states=max_states,
        max_memory_gb=max_memory,
        outcomes=outcomes,
        spent=spent,
    )
    rep = plan_report(sol, depth=depth)
    unit = roadmap.unit_label()
    if as_json:
        emit(
            {
                "roadmap": roadmap.name,
                "file": str(path),
                "next": rep.next,
                "value": rep.value,
                "expected_compute": rep.expected_compute,
                "p_reward": rep.p_reward,
                "actions": rep.actions,
                "heuristics": rep.heuristics,
                "states": rep.states,
                "solve_seconds": rep.solve_seconds,
                "solver": solver,
                "budget_left": rep.budget_left,
                "unit": roadmap.unit,
                "recorded": outcomes,
                "tree": rep.tree,
            }
        )
        return
    out.print(f"[bold]{roadmap.name}[/]  ({path})")
    recorded = f", {len(outcomes)} outcomes recorded" if outcomes else ""
    out.print(
        f"budget left {_fmt(rep.budget_left, unit)} in steps of "
        f"{_fmt(sol.problem.resolution, unit)}{recorded}; {rep.states:,} states solved "
        f"by {solver} in {rep.solve_seconds:.2f}s"
    )
    out.print()
    if rep.next is None:
        out.print("[bold]Next:[/] stop - no experiment is worth its compute from here.")
    else:
        title = sol.problem.titles[sol.problem.ids.index(rep.next)]
        out.print(f"[bold green]Next:[/] [bold]{rep.next}[/]" + (f" - {title}" if title else ""))
    compute = _fmt(rep.expected_compute, unit)
    out.print(f"Expected value {_fmt(rep.value)}; expected compute {compute}")
    for eid, p in rep.p_reward.items():
        out.print(f"  P(reward of {eid}) = {p:.3f}")
    if rep.actions:
        t = Table(title="Runnable now", title_justify="left")
        for col in ("experiment", "p", "cost", "Q", "regret"):
            t.add_column(col, justify="left" if col == "experiment" else "right")
        for a in rep.actions:
            t.add_row(
                a["id"], f"{a['p']:.3f}", _fmt(a["cost"], unit), _fmt(a["q"]), _fmt(a["regret"])
            )
        out.print(t)
    h = rep.heuristics["steinhardt"]
    out.print(
        f"Steinhardt's rule (log(1/p)/cost first) would run [bold]{h['pick'] or 'nothing'}"
        f"[/] and, followed throughout, is worth {_fmt(h['value'])} (regret "
        f"{_fmt(h['regret'])})."
    )
    if rep.tree and rep.tree.get("action"):
        out.print(_render_tree(rep.tree, unit))


def _render_tree(tree: dict, unit: str) -> Tree:
    root = Tree(f"[bold]policy[/] (first levels; value {_fmt(tree['value'])})")

    def add(parent, node):
        if node["action"] is None:
            parent.add(f"stop (value {_fmt(node['value'])})")
            return
        branch = parent.add(
            f"run [bold]{node['action']}[/]  (budget left {_fmt(node['budget_left'], unit)})"
        )
        for o in node.get("outcomes", []):
            sub = branch.add(f"{o['outcome']} ({o['prob']:.2f})")
            add(sub, o["next"])

    add(root, tree)
    return root


# ---------------------------------------------------------------- whatif


@app.command()
@command
def whatif(
    file: Annotated[Path, typer.Argument(help="Roadmap YAML/JSON.")],
    lo: Annotated[str | None, typer.Option("--from", help="Smallest budget to show.")] = None,
    hi: Annotated[str | None, typer.Option("--to", help="Largest budget (solved once).")] = None,
    resolution: ResOpt = None,
    set_: SetOpt = None,
    png: Annotated[
        Path | None,
        typer.Option("--png", help="Also save a matplotlib figure (PNG or SVG by extension)."),
    ] = None,
    rows: Annotated[
        int, typer.Option("--rows", help="Table rows (change points always shown).")
    ] = 12,
    max_states: MaxStatesOpt = 2_000_000,
    max_memory: MaxMemOpt = 8.0,
    as_json: JsonOpt = False,
):
    """Value and probability of success against budget, from one solve."""
    from derisk.planner import whatif_report

    roadmap, path = _roadmap_arg(file, set_)
    top = _amount(hi, roadmap, "--to")
    top = roadmap.budget if top is None else top
    bottom = _amount(lo, roadmap, "--from") or 0.0
    if bottom > top:
        raise DeriskError(f"--from ({bottom:g}) is larger than --to ({top:g})")
    sol = _solve(
        roadmap,
        budget=top,
        resolution=_amount(resolution, roadmap, "--resolution"),
        max_states=max_states,
        max_memory_gb=max_memory,
    )
    w = whatif_report(sol, bottom, top)
    unit = roadmap.unit_label()
    goal = max(w.p_reward, key=lambda k: roadmap.experiment(k).reward) if w.p_reward else None
    if png is not None:
        _whatif_png(w, goal, png, roadmap)
    if as_json:
        emit(
            {
                "roadmap": roadmap.name,
                "unit": roadmap.unit,
                "budgets": w.budgets,
                "value": w.value,
                "p_reward": w.p_reward,
                "expected_compute": w.expected_compute,
                "first_action": w.first,
                "changes": [float(w.budgets[k]) for k in w.changes],
                "marginal_value": w.marginal,
                "png": str(png) if png else None,
            }
        )
        return
    out.print(
        f"[bold]{roadmap.name}[/]: value against budget ({len(w.budgets)} levels, one "
        f"solve, {sol.seconds:.2f}s)"
    )
    pick = sorted(
        set(np.linspace(0, len(w.budgets) - 1, min(rows, len(w.budgets))).round().astype(int))
        | set(w.changes)
        | {k - 1 for k in w.changes if k}
    )
    t = Table()
    for col in ("budget", "value", f"P({goal})" if goal else "P", "E(compute)", "first"):
        t.add_column(col, justify="right")
    for k in pick:
        mark = " *" if k in w.changes else ""
        t.add_row(
            _fmt(w.budgets[k], unit),
            _fmt(w.value[k]),
            f"{w.p_reward[goal][k]:.3f}" if goal else "-",
            _fmt(w.expected_compute[k], unit),
            f"{w.first[k] or 'stop'}{mark}",
        )
    out.print(t)
    if w.changes:
        out.print(
            "* the best first experiment changes at: "
            + ", ".join(f"{_fmt(w.budgets[k], unit)} -> {w.first[k] or 'stop'}" for k in w.changes)
        )
    _whatif_chart(w, goal, unit)


def _whatif_chart(w, goal, unit) -> None:
    import plotext as plt

    plt.clear_figure()
    plt.plot(list(map(float, w.budgets)), list(map(float, w.value)), label="value")
    if goal:
        scale = float(np.max(w.value)) if np.max(w.value) > 0 else 1.0
        plt.plot(
            list(map(float, w.budgets)),
            list(map(float, w.p_reward[goal] * scale)),
            label=f"P({goal}) x {scale:.3g}",
        )
    plt.xlabel(f"budget ({unit})" if unit else "budget")
    _print_chart(plt)


def _whatif_png(w, goal, png: Path, roadmap: Roadmap) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as mpl

    fig, ax = mpl.subplots(figsize=(7, 4))
    ax.plot(w.budgets, w.value, label="expected value", color="C0")
    ax.set_xlabel(f"budget ({roadmap.unit_label()})" if roadmap.unit else "budget")
    ax.set_ylabel("expected value")
    for k in w.changes:
        ax.axvline(w.budgets[k], color="grey", lw=0.8, ls=":")
    if goal:
        ax2 = ax.twinx()
        ax2.plot(w.budgets, w.p_reward[goal], color="C1", label=f"P({goal})")
        ax2.set_ylabel(f"P({goal})")
        ax2.set_ylim(0, 1)
    ax.set_title(roadmap.name)
    _save_figure(fig, png)


# ---------------------------------------------------------------- simulate


@app.command()
@command
def simulate(
    file: Annotated[
        Path | None, typer.Argument(help="Roadmap YAML/JSON (default: bundled example).")
    ] = None,
    n: Annotated[int, typer.Option("-n", "--episodes", help="Episodes per policy.")] = 20_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    budget: BudgetOpt = None,
    max_states: MaxStatesOpt = 2_000_000,
    max_memory: MaxMemOpt = 8.0,
    as_json: JsonOpt = False,
):
    """Simulate the optimal policy and the heuristics; check against the exact values."""
    from derisk.planner import HEURISTICS
    from derisk.planner import simulate as run

    if n < 2:
        raise DeriskError(f"-n must be at least 2 (a standard error needs two episodes), got {n}")
    roadmap, path = _roadmap_arg(file)
    sol = _solve(
        roadmap,
        budget=_amount(budget, roadmap, "--budget"),
        max_states=max_states,
        max_memory_gb=max_memory,
    )
    pr, sp = sol.problem, sol.space
    rows = []
    for name in ("optimal", *HEURISTICS):
        r = run(sol, name, episodes=n, seed=seed)
        exact = float(sol.evaluation(name)["value"][sp.root, pr.start_budget])
        z = (r.mean - exact) / r.stderr if r.stderr > 0 else 0.0
        rows.append(
            {
                "policy": name,
                "mean": r.mean,
                "stderr": r.stderr,
                "exact": exact,
                "z": z,
                "agrees": bool(abs(z) < 4 or abs(r.mean - exact) < 1e-9),
                "compute_p10": float(np.percentile(r.compute, 10)),
                "compute_p50": float(np.percentile(r.compute, 50)),
                "compute_p90": float(np.percentile(r.compute, 90)),
                "compute_mean": float(r.compute.mean()),
                "reward_mean": float(r.reward.mean()),
            }
        )
    if as_json:
        emit({"roadmap": roadmap.name, "episodes": n, "seed": seed, "policies": rows})
        return
    unit = roadmap.unit_label()
    t = Table(
        title=f"{roadmap.name}: {n:,} episodes per policy (seed {seed})", title_justify="left"
    )
    for col in ("policy", "simulated mean", "+/- s.e.", "exact", "agrees", "compute p10/p50/p90"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        t.add_row(
            r["policy"],
            _fmt(r["mean"]),
            _fmt(r["stderr"]),
            _fmt(r["exact"]),
            "yes" if r["agrees"] else "[red]NO[/]",
            " / ".join(_fmt(r[k]) for k in ("compute_p10", "compute_p50", "compute_p90"))
            + (f" {unit}" if unit else ""),
        )
    out.print(t)
    opt = rows[0]
    verdict = "agrees" if opt["agrees"] else "DISAGREES"
    out.print(
        f"optimal policy: simulated {_fmt(opt['mean'])} +/- {_fmt(opt['stderr'])} "
        f"{verdict} with the solved value {_fmt(opt['exact'])} (z = {opt['z']:.2f})"
    )


# ---------------------------------------------------------------- validate / examples / record


@app.command()
@command
def validate(
    file: Annotated[Path, typer.Argument(help="Roadmap YAML/JSON.")],
    as_json: JsonOpt = False,
):
    """Check a roadmap file; report every problem with its line and column."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeriskWarning)
        try:
            roadmap = load_roadmap(file)
        except RoadmapError as exc:
            if as_json:
                emit({"valid": False, "problems": [p.__dict__ for p in exc.problems]})
            raise
    msgs = [str(w.message) for w in caught if issubclass(w.category, DeriskWarning)]
    for m in msgs:
        _warn(m)
    if as_json:
        emit(
            {
                "valid": True,
                "name": roadmap.name,
                "experiments": len(roadmap.experiments),
                "budget": roadmap.budget,
                "unit": roadmap.unit,
                "warnings": msgs,
                "estimates": {e.id: e.estimate for e in roadmap.experiments if e.estimate},
            }
        )
        return
    out.print(
        f"ok: {file}: {roadmap.name!r}, {len(roadmap.experiments)} experiments, budget "
        f"{_fmt(roadmap.budget, roadmap.unit_label())}"
        + (f", {len(msgs)} warning(s)" if msgs else "")
    )
    for e in roadmap.experiments:
        est = e.estimate
        if not est:
            continue
        iv = est["loss_interval"]
        band = f", 80% {iv[0]:.3f}-{iv[1]:.3f}" if iv else ""
        line = f"  {e.id}: law {est['law']} predicts loss {est['loss']:.3f}{band}"
        if e.success and est["p"] is not None:
            line += f"; p = P(loss < {e.success['loss_below']}) = {est['p']:.3f}"
        line += f"; {est['flops']:.3g} training FLOPs"
        if "cost" in est["derived"]:
            line += f" (cost {_fmt(e.cost.median, roadmap.unit_label())})"
        out.print(line)


@app.command(name="examples")
@command
def examples_cmd(
    name: Annotated[str | None, typer.Argument(help="Example to print or copy.")] = None,
    copy: Annotated[
        Path | None, typer.Option("--copy", help="Copy the example to this path to edit it.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    as_json: JsonOpt = False,
):
    """List the bundled example roadmaps, print one, or copy one out to edit."""
    found = examples()
    if name is None:
        items = []
        for key, p in found.items():
            r = load_roadmap(p)
            items.append(
                {"name": key, "title": r.name, "experiments": len(r.experiments), "path": str(p)}
            )
        if as_json:
            emit({"examples": items})
            return
        t = Table()
        for col in ("name", "title", "experiments"):
            t.add_column(col)
        for it in items:
            t.add_row(it["name"], it["title"], str(it["experiments"]))
        out.print(t)
        out.print("`derisk examples NAME --copy my.yaml` copies one out to edit.")
        return
    if name not in found:
        raise DeriskError(f"no example {name!r}; known: {', '.join(found)}")
    src = found[name]
    if copy is None:
        if as_json:
            emit({"name": name, "path": str(src), "text": src.read_text()})
        else:
            out.print(src.read_text(), markup=False, highlight=False, end="")
        return
    if copy.is_dir():
        copy = copy / src.name
    if copy.exists() and not force:
        raise DeriskError(f"{copy} exists; pass --force to overwrite it")
    try:
        shutil.copyfile(src, copy)
    except OSError as exc:
        raise DeriskError(f"cannot write {copy}: {exc.strerror}") from None
    if as_json:
        emit({"name": name, "copied_to": str(copy)})
    else:
        out.print(f"copied {name} to {copy}")


@app.command()
@command
def record(
    file: Annotated[Path, typer.Argument(help="Roadmap YAML/JSON.")],
    results: Annotated[
        list[str], typer.Argument(help="ID=success, ID=failure, or ID=untried to clear.")
    ],
    spent: Annotated[
        str | None,
        typer.Option(
            "--spent", help="Compute actually spent (one result only; default: the median cost)."
        ),
    ] = None,
    as_json: JsonOpt = False,
):
    """Record experiment outcomes; `plan` then plans from the current state."""
    roadmap = load_roadmap(file)
    updates = {}
    for text in results:
        if "=" not in text:
            raise DeriskError(f"{text!r}: expected ID=success, ID=failure or ID=untried")
        eid, outcome = text.split("=", 1)
        outcome = {
            "ok": "success",
            "succeeded": "success",
            "fail": "failure",
            "failed": "failure",
            "clear": "untried",
        }.get(outcome, outcome)
        if outcome not in ("success", "failure", "untried"):
            raise DeriskError(f"{text!r}: outcome must be success, failure or untried")
        updates[eid] = (outcome, None)
    if spent is not None:
        if len(updates) != 1:
            raise DeriskError("--spent applies to one result; record them one at a time")
        eid = next(iter(updates))
        updates[eid] = (updates[eid][0], _amount(spent, roadmap, "--spent"))
    path = state_path(file)
    state = record_outcomes(roadmap, path, updates)
    total = sum(v["spent"] for v in state.values())
    if as_json:
        emit(
            {
                "state_file": str(path),
                "outcomes": state,
                "spent": total,
                "budget_left": roadmap.budget - total,
            }
        )
        return
    for eid, rec in state.items():
        out.print(f"{eid}: {rec['outcome']} ({_fmt(rec['spent'], roadmap.unit_label())})")
    out.print(f"saved to {path}; budget left {_fmt(roadmap.budget - total, roadmap.unit_label())}")


# ---------------------------------------------------------------- scaling laws


@app.command()
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
    save: Annotated[
        str | None,
        typer.Option("--save", help="Save the law under this name (or to this .json path)."),
    ] = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="Also save a matplotlib figure.")
    ] = None,
    as_json: JsonOpt = False,
):
    """Fit a scaling law (Hoffmann et al. approach 3) with bootstrap intervals."""
    from derisk.graphs import write_atomic
    from derisk.scaling import LAWS, fit_law, fit_to_json, laws_dir, load_runs_csv

    if law not in LAWS:
        raise DeriskError(f"--law must be one of {', '.join(LAWS)}, got {law!r}")
    if bootstrap < 0 or starts < 1:
        raise DeriskError("--bootstrap must be >= 0 and --starts >= 1")
    if fix_e is not None and not fix_e > 0:
        raise DeriskError(f"--fix-E must be a positive loss, got {fix_e}")
    data = load_runs_csv(
        file,
        columns={
            "params": params_col,
            "tokens": tokens_col,
            "loss": loss_col,
            "experts": experts_col,
            "granularity": granularity_col,
        },
    )
    if min_tokens > 0:
        data = data.subset(data.tokens >= min_tokens)
    with _progress("{task.completed}/{task.total}") as bar:
        task = bar.add_task("bootstrap", total=bootstrap)
        result = fit_law(
            data,
            law,
            fix_E=fix_e,
            starts=starts,
            bootstrap=bootstrap,
            seed=seed,
            progress=lambda k: bar.advance(task, k),
        )
    # what `derisk predict --run` needs to put a stored run on this law's axes
    result.summary.update(params_col=params_col, min_tokens=min_tokens)
    intervals = result.intervals()
    extra = _fit_extras(result, data)
    saved = None
    if save:
        dest = Path(save) if save.endswith(".json") else laws_dir() / f"{save}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(
            dest,
            json.dumps(
                _jsonable(
                    fit_to_json(
                        result,
                        provenance={
                            "file": str(file),
                            "law": law,
                            "bootstrap": bootstrap,
                            "seed": seed,
                        },
                    )
                ),
                indent=1,
            )
            + "\n",
        )
        saved = str(dest)
    if png is not None:
        _fit_png(result, data, png)
    if as_json:
        emit(
            {
                **result.params,
                "law": law,
                "intervals": intervals,
                "loss": result.loss,
                "rmse_log": result.rmse_log,
                "sigma_log": result.sigma_log,
                "runs": result.n,
                "starts": result.starts,
                "starts_at_optimum": result.starts_at_optimum,
                "success": result.success,
                "seconds": result.seconds,
                "saved": saved,
                **extra,
            }
        )
        return
    out.print(
        f"[bold]{law}[/] fit to {result.n} runs from {file} in {result.seconds:.2f}s: "
        f"{result.starts_at_optimum}/{result.starts} L-BFGS starts reached the optimum "
        f"(Huber objective {result.loss:.3g})"
    )
    t = Table()
    for col in ("parameter", "value", "80% interval"):
        t.add_column(col, justify="right")
    for k, v in result.params.items():
        iv = intervals.get(k)
        t.add_row(k, f"{v:.4g}", f"{iv[0]:.4g} - {iv[1]:.4g}" if iv else "-")
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
            f"An MoE with {e['experts']:g} experts / granularity {e['granularity']:g} is "
            f"worth a dense model {e['multiplier']:.2f}x larger"
        )
    out.print(
        f"log-loss residuals: RMS {result.rmse_log:.4f}, robust noise sigma "
        f"{result.sigma_log:.4f}" + (f"; saved to {saved}" if saved else "")
    )
    _fit_chart(result, data)


def _fit_extras(result, data) -> dict:
    """Approach-2 exponents when the runs form IsoFLOP slices; the MoE dense equivalent."""
    from derisk.errors import DataError
    from derisk.scaling import effective_params, isoflop_fit

    extra = {}
    try:
        iso = isoflop_fit(data)
        extra["isoflop"] = {"budgets": iso.budgets, "n_opt": iso.n_opt, "a": iso.a, "b": iso.b}
    except DataError:
        pass
    if result.law in ("moe", "moe_experts"):
        x, g = float(data.experts.max()), float(data.granularity.max())
        n = float(np.median(data.params))
        extra["effective_params"] = {
            "experts": x,
            "granularity": g,
            "params": n,
            "multiplier": effective_params(result, n, experts=x, granularity=g) / n,
        }
    return extra


def _frontier(result, data, upto: float = 10.0):
    """Compute-optimal loss against compute, with the bootstrap 10-90% band."""
    from derisk.scaling import optimal_allocation

    C = 6 * data.params * data.tokens
    grid = np.geomspace(C.min(), C.max() * upto, 40)
    mid, lo, hi = [], [], []
    for c in grid:
        a = optimal_allocation(result, float(c))
        mid.append(a.loss)
        lo.append(a.loss_interval[0] if a.loss_interval else a.loss)
        hi.append(a.loss_interval[1] if a.loss_interval else a.loss)
    return C, grid, np.array(mid), np.array(lo), np.array(hi)


def _fit_chart(result, data) -> None:
    import plotext as plt

    plt.clear_figure()
    C = 6 * data.params * data.tokens
    plt.scatter(np.log10(C).tolist(), data.loss.tolist(), label="runs", marker="dot")
    if result.law == "chinchilla":
        _, grid, mid, lo, hi = _frontier(result, data)
        x = np.log10(grid).tolist()
        plt.plot(x, mid.tolist(), label="compute-optimal fit")
        plt.plot(x, lo.tolist(), label="80% band")
        plt.plot(x, hi.tolist())
    else:
        pred = result.predict(_law_inputs(result, data))
        plt.scatter(np.log10(C).tolist(), pred.tolist(), label="fit at each run", marker="x")
    plt.xlabel("log10 training FLOPs (6ND)")
    plt.ylabel("loss")
    _print_chart(plt)


def _law_inputs(result, data):
    from derisk.scaling._fit import _inputs
    from derisk.scaling._laws import LAWS

    return _inputs(LAWS[result.law], data)[0]


def _fit_png(result, data, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as mpl

    fig, ax = mpl.subplots(figsize=(7, 4.5))
    C = 6 * data.params * data.tokens
    sc = ax.scatter(C, data.loss, c=np.log10(data.params), s=14, cmap="viridis", label="runs")
    fig.colorbar(sc, ax=ax, label="log10 params")
    if result.law == "chinchilla":
        _, grid, mid, lo, hi = _frontier(result, data)
        ax.plot(grid, mid, color="C3", label="compute-optimal fit")
        ax.fill_between(grid, lo, hi, color="C3", alpha=0.2, label="80% predictive band")
        ax.axvline(C.max(), color="grey", ls=":", lw=0.8)
    else:
        ax.scatter(
            C, result.predict(_law_inputs(result, data)), marker="x", color="C3", s=14, label="fit"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs (6ND)")
    ax.set_ylabel("loss")
    ax.set_title(f"{result.law} fit, {result.n} runs")
    ax.legend()
    _save_figure(fig, png)


@app.command()
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
    as_json: JsonOpt = False,
):
    """Compute-optimal model size and tokens for a FLOP budget, from a fitted law."""
    from derisk.scaling import load_law, optimal_allocation

    try:
        c = float(flops)
    except ValueError:
        raise DeriskError(f"--flops must be a number like 1e21, got {flops!r}") from None
    if not (math.isfinite(c) and c > 0):
        raise DeriskError(f"--flops must be positive, got {flops!r}")
    result = load_law(law)
    if result.law != "chinchilla":
        raise DeriskError(
            f"law {law!r} is a {result.law} law; compute-optimal allocation "
            "needs a dense (chinchilla) law"
        )
    a = optimal_allocation(result, c, exact=exact, seq_len=seq_len)
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
            }
        )
        return
    out.print(f"C = {a.flops:.3g} FLOPs ({a.method}):")
    out.print(
        f"  N* = {a.params:.3g} parameters, D* = {a.tokens:.3g} tokens "
        f"({a.tokens_per_param:.1f} tokens per parameter)"
    )
    iv = f" (80%: {a.loss_interval[0]:.4f} - {a.loss_interval[1]:.4f})" if a.loss_interval else ""
    out.print(f"  predicted loss {a.loss:.4f}{iv}")


def _law_n(fit, counts: dict) -> int:
    """The parameter count a law was fitted on (total or active non-embedding)."""
    from derisk.scaling import uses_active_params

    return counts["non_embedding_active" if uses_active_params(fit) else "non_embedding"]


def _run_point(store, rows: dict, fit, ident: str) -> tuple[dict, dict]:
    """(the run's row, its inputs to the law) for a run id in the store's `rows`."""
    from derisk.estimators import ModelConfig, param_counts

    if ident not in rows:
        raise DeriskError(
            f"{store.path}: no run with id {ident}; `derisk runs` lists the ids"
            + ("" if rows else " (the store is empty)")
        )
    r = rows[ident]
    if r["status"] != "finished" or r["val_loss"] is None:
        raise DeriskError(f"run {ident} is {r['status']}, not finished: nothing to compare")
    return r, {
        "params": _law_n(fit, param_counts(ModelConfig(**r["model"]))),
        "tokens": r["tokens"],
        "experts": r["experts"] or 1,
        "granularity": r["granularity"] or 1,
    }


@app.command()
@command
def predict(
    law: Annotated[
        str | None,
        typer.Option(
            "--law", help="A saved law name or .json path (default: the shipped law for --arch)."
        ),
    ] = None,
    params: Annotated[
        float | None, typer.Option("--params", help="Non-embedding parameters (active for MoE).")
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
    as_json: JsonOpt = False,
):
    """A run's loss predicted by a fitted law, with its 80% predictive interval."""
    import numpy as np

    from derisk.scaling import (
        SHIPPED_LAWS,
        load_law,
        predict_loss,
        setting_mismatches,
    )

    if arch not in SHIPPED_LAWS:
        raise DeriskError(f"--arch must be dense or moe, got {arch!r}")
    law = law or SHIPPED_LAWS[arch]
    fit = load_law(law)
    if experts is None:
        experts = 4.0 if arch == "moe" and d_model is not None else 1.0
    if d_model is not None:
        from derisk.estimators import ModelConfig, param_counts

        if params is not None:
            raise DeriskError("give --params or --d-model, not both")
        try:
            model = ModelConfig(
                arch=arch,
                d_model=d_model,
                n_layer=n_layer,
                n_head=1,
                experts=int(experts),
                top_k=1,
            )
        except ValueError as exc:
            raise DeriskError(f"bad model: {exc}") from None
        params = _law_n(fit, param_counts(model))
    if (params is None) != (tokens is None):
        raise DeriskError("give both --params and --tokens (or --run ID)")
    if params is None and not run_ids:
        raise DeriskError("give --params N --tokens D, or --run ID for a run in the store")
    for name, v in (
        ("--params", params),
        ("--tokens", tokens),
        ("--experts", experts),
        ("--granularity", granularity),
    ):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise DeriskError(f"{name} must be a positive number, got {v:g}")
    if below is not None and not below > 0:
        raise DeriskError(f"--below must be a positive loss, got {below:g}")
    points = []  # (label, inputs, observed, run row)
    if params is not None:
        points.append(
            (
                "-",
                dict(params=params, tokens=tokens, experts=experts, granularity=granularity),
                None,
                None,
            )
        )
    if run_ids:
        store = _store()
        rows = {str(r["id"]): r for r in store.runs()}
        ids = run_ids
        if "all" in run_ids:
            arches = set(((fit.summary or {}).get("setting") or {}).get("arch") or [])
            ids = [
                i
                for i, r in rows.items()
                if r["status"] == "finished" and (not arches or r["arch"] in arches)
            ]
        for ident in ids:
            r, inputs = _run_point(store, rows, fit, ident)
            points.append((ident, inputs, r["val_loss"], r))
    results, warnings = [], []
    for label, inputs, observed, r in points:
        pr = predict_loss(fit, observed=observed, below=below, **inputs)
        d = {"run": None if r is None else r["id"], **pr.as_dict()}
        if r is not None:
            setting = {**r["model"], **r["train"], "corpus_hash": r["corpus_hash"]}
            if r["arch"] == "dense":
                setting.pop("top_k", None)
            d["setting_differs"] = setting_mismatches(fit, setting)
            for m in d["setting_differs"]:
                warnings.append(f"run {label} was trained with {m}: the law may not apply")
        beyond = [
            f"{x:.1f}x the {what}"
            for x, what in (
                (pr.params_beyond, "largest fitted model"),
                (pr.tokens_beyond, "most fitted tokens"),
            )
            if x > 1.1  # runs stop at whole batches: 1e7 tokens may be 9,999,360
        ]
        if beyond:
            who = "run " + label if r is not None else "this point"
            warnings.append(f"{who} extrapolates to {' and '.join(beyond)}")
        results.append(d)
    scored = [d for d in results if d["quantile"] is not None]
    inside = sum(0.1 <= d["quantile"] <= 0.9 for d in scored)
    summary = {}
    if scored:
        summary = {
            "runs": len(scored),
            "inside_80": inside,
            "mean_abs_error": float(np.mean([abs(d["error"]) for d in scored])),
        }
    if as_json:
        emit({"law": law, "predictions": results, "summary": summary, "warnings": warnings})
        return
    for w in warnings:
        _warn(w)
    t = Table(title=f"law {law} ({fit.law}, {fit.n} runs)", title_justify="left")
    cols = ["params", "tokens", "law", "80% band"]
    if scored:
        cols = ["run", *cols, "measured", "error", "q"]
    for col in cols:
        t.add_column(col, justify="right")
    for d in results:
        iv = d["interval"]
        row = [
            f"{d['params']:.3g}",
            f"{d['tokens']:.3g}",
            f"{d['loss']:.4f}",
            f"{iv[0]:.3f}-{iv[1]:.3f}" if iv else "-",
        ]
        if scored:
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
            out.print(f"P(loss < {below:g}) = {d['p_below']:.3f}")
    if summary:
        out.print(
            f"{inside} of {len(scored)} measured losses inside the 80% interval; "
            f"mean |error| {100 * summary['mean_abs_error']:.1f}%"
        )


# ---------------------------------------------------------------- small real trainings


def _store():
    from derisk.estimators import RunStore, default_store

    return RunStore(_state.get("store") or default_store())


def _check_fits(model, tc) -> None:
    """Refuse a run whose estimated memory exceeds this machine's (or the GPU's)."""
    import os

    import jax

    from derisk.estimators import training_bytes

    need = training_bytes(model, tc)
    try:
        have = jax.devices()[0].memory_stats()["bytes_limit"]
    except (AttributeError, KeyError, TypeError, RuntimeError):
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > 0.8 * have:
        raise DeriskError(
            f"a {model.arch} model with d_model {model.d_model}, {model.n_layer} layers and "
            f"batch {tc.batch_size} x {model.seq_len} needs ~{need / 2**30:.1f} GiB to train, "
            f"more than this device's {have / 2**30:.1f} GiB; use a smaller --d-model, "
            "--n-layer, --batch-size or --seq-len"
        )


def _run_one(store, model, tc, corpus, *, label: str = ""):
    """Train one point with a live progress bar and record it; returns the result."""
    from derisk.estimators import run_key, train

    _check_fits(model, tc)
    key = run_key(model, tc, corpus.digest)
    store.start(key, model, tc, corpus)
    with _progress("loss {task.fields[loss]:.3f}  {task.fields[rate]:,.0f} tok/s") as bar:
        task = bar.add_task(label or f"{model.arch} d{model.d_model}", total=1, loss=0.0, rate=0.0)

        def progress(i, n, loss, rate):
            bar.update(task, completed=i, total=n, loss=loss, rate=rate)

        result = train(model, tc, corpus, progress=progress)
    store.finish(key, result)
    return key, result


def _corpus(path: Path | None, max_bytes: int | None):
    from derisk.estimators import load_corpus

    return load_corpus(path, max_bytes=max_bytes)


@app.command(name="train")
@command
def train_cmd(
    arch: Annotated[str, typer.Option("--arch", help="dense | moe")] = "dense",
    d_model: Annotated[int, typer.Option("--d-model")] = 64,
    n_layer: Annotated[int, typer.Option("--n-layer")] = 2,
    n_head: Annotated[int, typer.Option("--n-head")] = 2,
    seq_len: Annotated[int, typer.Option("--seq-len")] = 64,
    experts: Annotated[int, typer.Option("--experts")] = 4,
    top_k: Annotated[int, typer.Option("--top-k")] = 1,
    granularity: Annotated[int, typer.Option("--granularity")] = 1,
    tokens: Annotated[float, typer.Option("--tokens", help="Training tokens (bytes).")] = 1e6,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr", help="Peak learning rate (default 0.096 / d_model, as the shipped sweep)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    corpus: Annotated[
        Path | None,
        typer.Option("--corpus", help="Text file or folder (default: the Python stdlib sources)."),
    ] = None,
    max_bytes: Annotated[
        int | None, typer.Option("--max-bytes", help="Cap the corpus.")
    ] = 20_000_000,
    as_json: JsonOpt = False,
):
    """Train one small dense or MoE language model and record it in the run store.

    The defaults are the shipped sweep's setting, so the shipped laws (`derisk predict
    --law cpu-dense --run ID`) apply to a run that only changes --d-model and --tokens.
    """
    from derisk.estimators import ModelConfig, TrainConfig, lr_for_width

    try:
        model = ModelConfig(
            arch=arch,
            d_model=d_model,
            n_layer=n_layer,
            n_head=n_head,
            seq_len=seq_len,
            experts=experts,
            top_k=top_k,
            granularity=granularity,
        )
        if lr is None:  # the model above has a valid width (d_model >= 8)
            lr = lr_for_width(d_model)
        tc = TrainConfig(tokens=int(tokens), batch_size=batch_size, lr=lr, seed=seed)
    except ValueError as exc:
        raise DeriskError(f"bad training config: {exc}") from None
    data = _corpus(corpus, max_bytes)
    store = _store()
    key, r = _run_one(store, model, tc, data)
    if as_json:
        emit({"key": key, "store": str(store.path), **r.as_dict()})
        return
    out.print(
        f"{r.status}: {model.arch} with {r.params['non_embedding']:,} non-embedding "
        f"params ({r.params['non_embedding_active']:,} active), {r.tokens:,} tokens, "
        f"validation loss {r.final_val_loss:.4f} nats/byte, {r.tokens_per_s:,.0f} "
        f"tokens/s on {r.device}; saved to {store.path}"
    )


@app.command()
@command
def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec YAML: lists are grid axes.")],
    as_json: JsonOpt = False,
):
    """Run a grid of trainings; resumable (finished points are skipped)."""
    from derisk.estimators import load_sweep, run_key, sweep_points

    raw = load_sweep(spec)
    points, capped = sweep_points(raw, str(spec))
    for model, tc in points:
        _check_fits(model, tc)
    data = _corpus(raw.get("corpus"), raw.get("max_bytes", 20_000_000))
    store = _store()
    done = ran = 0
    results = []
    for i, (model, tc) in enumerate(points):
        key = run_key(model, tc, data.digest)
        if store.status(key) == "finished":
            done += 1
            continue
        label = f"[{i + 1}/{len(points)}] {model.arch} d{model.d_model} {tc.tokens:,} tok"
        _, r = _run_one(store, model, tc, data, label=label)
        ran += 1
        results.append({"key": key, "status": r.status, "val_loss": r.final_val_loss})
        if not as_json:
            err.print(f"{label}: {r.status}, val loss {r.final_val_loss:.4f}")
    summary = {
        "points": len(points),
        "skipped_finished": done,
        "ran": ran,
        "over_compute_cap": capped,
        "store": str(store.path),
        "results": results,
    }
    if as_json:
        emit(summary)
    else:
        out.print(
            f"{len(points)} points: {done} already finished, {ran} run"
            + (f", {capped} beyond max_flops" if capped else "")
            + f"; store {store.path}"
        )


@app.command()
@command
def runs(
    csv_out: Annotated[
        Path | None,
        typer.Option("--csv", help="Export finished runs as the CSV `derisk fit` reads."),
    ] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="Only dense or moe runs.")] = None,
    as_json: JsonOpt = False,
):
    """List the runs in the store (or export them for fitting)."""
    from derisk.graphs import write_atomic

    store = _store()
    rows = [r for r in store.runs() if not arch or r["arch"] == arch]
    if csv_out is not None:
        write_atomic(csv_out, store.export_csv(arch=arch))
    if as_json:
        emit(
            {
                "store": str(store.path),
                "runs": [
                    {
                        "id": r["id"],
                        "arch": r["arch"],
                        "params": r["non_embedding"],
                        "total_params": r["params"],
                        "active_params": r["active_params"],
                        "experts": r["experts"],
                        "tokens": r["tokens"],
                        "val_loss": r["val_loss"],
                        "best_val_loss": r["best_val_loss"],
                        "flops": r["flops"],
                        "wall_s": r["wall_s"],
                        "tokens_per_s": r["tokens_per_s"],
                        "mfu": r["mfu"],
                        "device": r["device"],
                        "corpus_hash": r["corpus_hash"],
                        "status": r["status"],
                    }
                    for r in rows
                ],
            }
        )
        return
    t = Table(title=str(store.path), title_justify="left")
    for col in ("id", "arch", "params", "tokens", "val loss", "tok/s", "status"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            str(r["id"]),
            r["arch"],
            f"{r['non_embedding']:,}",
            f"{r['tokens']:,}",
            _fmt(r["val_loss"]) if r["val_loss"] is not None else "-",
            _fmt(r["tokens_per_s"]) if r["tokens_per_s"] else "-",
            r["status"],
        )
    out.print(t)
    if csv_out is not None:
        out.print(f"exported finished runs to {csv_out}")


def main() -> None:
    try:
        app()
    except DeriskError as exc:  # raised outside a command body (e.g. by a callback)
        _report(exc)
        sys.exit(2)


__all__ = ["app", "emit", "main", "Problem"]


if __name__ == "__main__":
    main()
