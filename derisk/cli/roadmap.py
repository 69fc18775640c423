"""Roadmap commands: plan, whatif, simulate, validate, examples, record."""

from __future__ import annotations

import math
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from derisk._numbers import fmt_distinct, fmt_range
from derisk.cli._output import (
    JsonOpt,
    command,
    emit,
    fmt,
    out,
    print_chart,
    progress,
    warn,
)
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

# ---------------------------------------------------------------- shared options

FileArg = Annotated[
    Path | None, typer.Argument(help="Roadmap YAML/JSON (default: bundled example).")
]
SolverOpt = Annotated[
    str,
    typer.Option(
        "--solver",
        help="auto (exact when the state and memory limits admit it, else approx) | exact | "
        "approx (a policy with a certified interval on the optimal value) | jax | mdptoolbox",
    ),
]
PLAN_SOLVERS = ("auto", "exact", "approx", "jax", "mdptoolbox")
BudgetOpt = Annotated[
    str | None,
    typer.Option(
        "--budget",
        help="Budget to plan with, e.g. 1500, '1500 gpu_hours' or '10 GPU-h' "
        "(default: the file's).",
    ),
]
ResOpt = Annotated[
    str | None,
    typer.Option(
        "--resolution", help="Budget step (default: the file's, else chosen automatically)."
    ),
]
MaxStatesOpt = Annotated[
    int,
    typer.Option(
        "--max-states", min=1, help="Refuse problems with more reachable states than this."
    ),
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
FreshOpt = Annotated[
    bool,
    typer.Option("--fresh", help="Ignore the outcomes recorded with `derisk record`."),
]
StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict-laws",
        help="Refuse a law-driven p extrapolated more than 10x beyond its law's largest run.",
    ),
]
IndependentOpt = Annotated[
    bool,
    typer.Option(
        "--independent-laws",
        help="Treat nodes estimated from one law as independent (ignores that they share "
        "the law's uncertainty; for comparison).",
    ),
]


# ---------------------------------------------------------------- shared helpers


def amount(text: str | None, roadmap: Roadmap, flag: str) -> float | None:
    """Parse a flag's `1500`, `1500 gpu_hours` or `10 GPU-h` into the roadmap's unit, with
    the roadmap file's own unit parser; a mistake names the flag and the accepted units."""
    from derisk.graphs._load import _Checker, _quantity

    if text is None:
        return None
    ck = _Checker(flag)
    q = _quantity(ck, text, None, flag)
    if ck.problems:  # the message names the flag (the `what` it was given) or not
        msg = ck.problems[0].message
        raise DeriskError(msg if msg.startswith(flag) else f"{flag} {text!r}: {msg}")
    if q is None or q[0] < 0:
        raise DeriskError(
            f"{flag} must be a non-negative number with an optional unit "
            f"(e.g. 1500 or '1500 gpu_hours'), got {text!r}"
        )
    if q[1] is not None and roadmap.unit is not None and q[1] != roadmap.unit:
        label = roadmap.unit_label() or roadmap.unit
        raise DeriskError(
            f"{flag} {text!r} is in {q[1]} but {roadmap.source} plans in {roadmap.unit}; "
            f"give it in {label} (e.g. '{flag} \"100 {label}\"') or as a plain number"
        )
    return q[0]


@dataclass(frozen=True)
class PlanInput:
    """What a roadmap command plans from: the roadmap (with --set overrides applied) and
    the outcomes recorded beside its file (none with --fresh)."""

    roadmap: Roadmap
    path: Path
    outcomes: dict  # id -> "success" | "failure"
    spent: float  # compute the recorded outcomes spent, in the roadmap's unit
    ignored: bool  # a state file exists and --fresh left it out
    overrides: tuple  # the graphs library's Roadmap.overrides (dicts), when present
    estimates: dict = field(default_factory=dict)  # id -> derisk.estimators.Estimate
    warnings: tuple = ()  # what resolving the estimates found (also sent to stderr)

    def as_json(self) -> dict:
        return {
            "file": str(self.path),
            "recorded": self.outcomes,
            "spent": self.spent,
            "overrides": list(self.overrides),
            "estimates": {k: e.as_dict() for k, e in self.estimates.items()},
            "warnings": list(self.warnings),
        }


def resolve_roadmap(roadmap: Roadmap, strict_laws: bool = False, independent: bool = False):
    """The estimators' resolve stage, its warnings sent on as DeriskWarnings (stderr)."""
    from derisk.estimators import resolve

    res = resolve(roadmap, strict_laws=strict_laws, independent_laws=independent)
    for w in res.warnings:
        warnings.warn(w, DeriskWarning, stacklevel=2)
    return res


def plan_input(
    file: Path | None,
    sets: list[str] | None,
    fresh: bool,
    strict_laws: bool = False,
    independent_laws: bool = False,
) -> PlanInput:
    path = Path(file) if file is not None else example_path()
    loaded = load_with_overrides(path, sets) if sets else load_roadmap(path)
    res = resolve_roadmap(loaded, strict_laws, independent_laws)
    roadmap = res.roadmap
    outcomes, spent, ignored = {}, 0.0, False
    if file is not None and fresh:  # ignored whole, even when it is unreadable
        ignored = state_path(path).exists()
    elif file is not None:  # the bundled example never carries a state file
        state = load_state(roadmap, state_path(path))
        outcomes = {k: v["outcome"] for k, v in state.items()}
        spent = float(sum(v["spent"] for v in state.values()))
    return PlanInput(
        roadmap=roadmap,
        path=path,
        outcomes=outcomes,
        spent=spent,
        ignored=ignored,
        overrides=tuple(getattr(roadmap, "overrides", ()) or ()),
        estimates=res.estimates,
        warnings=res.warnings,
    )


def estimates_table(estimates: dict, unit: str, outcomes: dict | None = None) -> Table | None:
    """Where each estimated node's p and cost come from: law (loss unit, runs), FLOPs,
    hardware and MFU, cost, predicted loss and band, p before any recorded outcome, and
    how far the law extrapolates (x its largest fitted run's params and tokens). A node
    with a recorded outcome says so beside its id."""
    if not estimates:
        return None
    t = Table(title="Estimated from laws and FLOPs", title_justify="left")
    cols = ("experiment", "law", "FLOPs", "hardware", "cost", LOSS_COL, P_PRIOR, "beyond")
    for col in cols:
        t.add_column(
            col,
            justify="left" if col in ("experiment", "law", "hardware") else "right",
            overflow="fold",  # a narrow terminal wraps numbers instead of cutting them
        )
    for eid, e in estimates.items():
        law = e.law or "-"
        hw = "-"
        if e.hardware:
            lo, hi = e.mfu
            hw = f"{e.hardware}, MFU {lo:g}" + (f"-{hi:g}" if hi > lo else "")
        cost = fmt(e.cost[0], unit) + (f" (p90 {fmt(e.cost[1])})" if e.cost[1] else "")
        if "cost" not in e.derived:
            cost = f"given; est. {cost}"
        loss = "-"
        if e.loss is not None:
            loss = f"{e.loss:.3f}"
            if e.loss_interval:
                loss += f" ({e.loss_interval[0]:.3f}-{e.loss_interval[1]:.3f})"
        p = "-" if e.p is None else fmt(e.p, p=True) + ("" if "p" in e.derived else " (not used)")
        beyond = "-"
        if e.extrapolation:
            x = e.extrapolation
            beyond = f"{x['params']:.2g}x N, {x['tokens']:.2g}x D"
        name = eid + (f" (recorded {outcomes[eid]})" if outcomes and eid in outcomes else "")
        t.add_row(escape(name), escape(law), fmt(e.flops), escape(hw), cost, loss, p, beyond)
    return t


# Column names that say which p and which cost a table shows: the estimates table's p is
# the law's, before any recorded outcome; a "Runnable now" p is the posterior given them.
P_PRIOR = "p (prior)"
LOSS_COL = "loss: median (80%)"  # of the predictive distribution p comes from
P_NOW = "p now"
COST_STEPS = "mean cost"


def rounding_note(ids, roadmap: Roadmap, resolution: float) -> str | None:
    """A footnote for a table of costs in budget steps: which costs rounding up to the
    step of `resolution` changed by more than 1%, and what they were before."""
    changed = []
    for eid in ids:
        cost = roadmap.experiment(eid).cost
        values, probs = cost.values()
        raw = float(values @ probs)
        units, uprobs = cost.levels(resolution)
        stepped = float(units @ uprobs) * resolution
        if raw > 0 and abs(stepped - raw) > 0.01 * raw:
            changed.append(f"{eid} {fmt(raw)}")
    if not changed:
        return None
    unit = roadmap.unit_label()
    return (
        f"mean cost: rounded up to whole budget steps of {fmt(resolution, unit)}, as the "
        f"solver plans; before rounding: {', '.join(changed)}" + (f" {unit}" if unit else "")
    )


def print_estimates(estimates: dict, unit: str, outcomes: dict | None = None) -> None:
    """The estimates table, then one line per law: its runs, their range, its loss unit;
    with recorded outcomes, a line saying its p is the prior."""
    table = estimates_table(estimates, unit, outcomes)
    if table is None:
        return
    out.print(table)
    if outcomes:
        out.print(
            f"  {P_PRIOR}: each law's p before the recorded outcomes; `{P_NOW}` below "
            "conditions on them"
        )
    laws = {e.law: e for e in estimates.values() if e.law}
    for name, e in laws.items():
        d = e.law_data or {}
        parts = [f"{d['runs']} runs" if d.get("runs") else None]
        for key in ("params", "tokens"):
            r = d.get(key)
            if r:
                what = key
                if key == "params":  # which count the law was fitted on, and is fed
                    kind = d.get("params_kind") or "non_embedding"
                    what = "params (total)" if kind == "total" else "params (non-embedding)"
                    if d.get("params_col") == "active_params":
                        what = "active " + what
                parts.append(f"{what} {fmt_range(r[0], r[-1])}")
        parts.append(f"loss in {e.loss_unit}" if e.loss_unit else "loss unit not recorded")
        out.print(f"  law {escape(name)}: " + escape(", ".join(x for x in parts if x)))


def _value_text(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int | float):
        return fmt(v)
    if isinstance(v, dict) and {"median", "p90"} <= set(v):  # a lognormal cost
        return f"median {_value_text(v['median'])} (p90 {_value_text(v['p90'])})"
    if isinstance(v, dict) and "law" in v:  # a law-driven p, before an override
        return f"p from law {v['law']}"
    if isinstance(v, dict) and {"if", "then", "else"} <= set(v):  # a conditional p
        return f"{_value_text(v['then'])} if {v['if']} else {_value_text(v['else'])}"
    return str(v)


def print_context(inp: PlanInput) -> None:
    """Say what the plan starts from: every override and the recorded outcomes."""
    unit = inp.roadmap.unit_label()
    for o in inp.overrides:
        before, after = o.get("before"), o.get("after")
        change = ""
        if all(isinstance(x, int | float) and not isinstance(x, bool) for x in (before, after)):
            d = after - before
            change = f" ({'+' if d > 0 else ''}{fmt(d)})"
        elif isinstance(before, dict) and isinstance(after, int | float):
            change = (
                " (now fixed)"
                if "median" in before
                else " (replaces the law's p)"
                if "law" in before
                else " (now plain)"
            )
        out.print(
            f"override {escape(str(o.get('target', o.get('set'))))}: "
            f"{escape(_value_text(before))} -> {escape(_value_text(after))}{change}"
        )
    if inp.outcomes:
        n = len(inp.outcomes)
        out.print(
            f"planning from {n} recorded outcome{'s' if n != 1 else ''} "
            f"({escape(', '.join(f'{k}={v}' for k, v in inp.outcomes.items()))}), "
            f"{fmt(inp.spent, unit)} spent; --fresh ignores them"
        )
    elif inp.ignored:
        out.print("ignoring the recorded outcomes (--fresh)")


def solve_roadmap(
    inp: PlanInput,
    *,
    budget=None,
    resolution=None,
    solver="exact",
    max_states=2_000_000,
    max_memory_gb=8.0,
):
    """Compile and solve from the recorded state, with a progress bar; a problem too large
    to solve is a user error that says what to change."""

    from derisk.errors import ProblemTooLarge
    from derisk.planner import SolveConfig, build_space, compile_roadmap, solve

    if not (math.isfinite(max_memory_gb) and max_memory_gb > 0):
        raise DeriskError(f"--max-memory must be a positive number of GiB, got {max_memory_gb}")
    roadmap = inp.roadmap
    problem = compile_roadmap(
        roadmap, budget=budget, resolution=resolution, outcomes=inp.outcomes, spent=inp.spent
    )
    if solver not in PLAN_SOLVERS:
        raise DeriskError(f"--solver {solver!r}: expected one of {', '.join(PLAN_SOLVERS)}")
    if solver == "approx":
        return solve_approximately(problem)
    config = SolveConfig(
        solver="exact" if solver == "auto" else solver,
        max_states=max_states,
        max_memory_gb=max_memory_gb,
    )
    try:
        with progress("{task.completed:,} states") as bar:
            task = bar.add_task("enumerating states", total=None)
            space = build_space(problem, config, progress=lambda k: bar.advance(task, k))
    except ProblemTooLarge as exc:
        if solver == "auto":
            warn(
                f"{roadmap.source}: too large for the exact solver ({exc}); using the "
                "approximate solver (--solver approx), which certifies an interval on the "
                "optimal value"
            )
            return solve_approximately(problem)
        raise DeriskError(
            f"{roadmap.source}: too large to solve exactly: {exc}. plan, whatif and "
            "simulate take --solver approx (a policy with a certified interval); or use a "
            "coarser budget step "
            f"(--resolution, now {fmt(problem.resolution)}), fewer experiments, or raise "
            "--max-states / --max-memory if the machine has room"
        ) from None
    solver = config.solver
    with progress() as bar:
        task = bar.add_task(f"solving ({solver})", total=space.size)
        return solve(problem, config=config, space=space, progress=lambda k: bar.advance(task, k))


def solve_approximately(problem, config=None):
    """The approximate solver with a progress bar over its stages."""
    from derisk.planner import ApproxConfig, solve_approx
    from derisk.planner._approx import APPROX_STEPS

    with progress("{task.completed}/{task.total} stages") as bar:
        task = bar.add_task("solving (approx)", total=APPROX_STEPS)
        return solve_approx(
            problem, config=config or ApproxConfig(), progress=lambda k: bar.advance(task, k)
        )


def is_approx(sol) -> bool:
    return getattr(sol, "solver", None) == "approx" and hasattr(sol, "bounds")


DOT_TEXT = (".dot", ".gv")
MERMAID_TEXT = (".mmd", ".mermaid", ".md")
IMAGES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def write_graph(path: Path, flag: str, *, dot: str | None = None, mermaid: str | None = None):
    """Write a graph in the format its extension names: DOT text (.dot, .gv), Mermaid text
    (.mmd, .mermaid, .md) or an image rendered by Graphviz (.png, .svg, .pdf, .jpg)."""
    from derisk.graphs import write_atomic
    from derisk.report import render_dot

    ext = path.suffix.lower()
    if path.is_dir():
        raise DeriskError(f"{flag} {path} is a folder; give a file path such as {path / 'g.dot'}")
    if ext in IMAGES and dot is not None:
        if not render_dot(dot, path):
            raise DeriskError(
                f"{flag} {path}: rendering needs Graphviz's `dot` (Debian: apt-get install "
                "graphviz); or write the DOT text to a .dot path"
            )
        return str(path)
    if ext in DOT_TEXT and dot is not None:
        text = dot
    elif ext in MERMAID_TEXT and mermaid is not None:
        text = mermaid
    else:
        kinds = (DOT_TEXT + IMAGES if dot is not None else ()) + (
            MERMAID_TEXT if mermaid is not None else ()
        )
        raise DeriskError(
            f"{flag} {path}: the extension picks the format; use one of {', '.join(kinds)}"
        )
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise DeriskError(f"{flag} {path}: cannot write ({exc.strerror or exc})") from None
    return str(path)


def load_and_solve(
    file,
    sets,
    fresh: bool,
    *,
    budget: str | None = None,
    resolution: str | None = None,
    solver: str = "exact",
    max_states: int = 2_000_000,
    max_memory: float = 8.0,
    strict_laws: bool = False,
    independent_laws: bool = False,
):
    """What every planning command starts with: the roadmap with its recorded state and
    overrides, its estimates resolved, solved with --budget / --resolution read in the
    roadmap's unit."""
    inp = plan_input(file, sets, fresh, strict_laws, independent_laws)
    sol = solve_roadmap(
        inp,
        budget=amount(budget, inp.roadmap, "--budget"),
        resolution=amount(resolution, inp.roadmap, "--resolution"),
        solver=solver,
        max_states=max_states,
        max_memory_gb=max_memory,
    )
    return inp, sol


# ---------------------------------------------------------------- plan


@command
def plan(
    file: FileArg = None,
    budget: BudgetOpt = None,
    resolution: ResOpt = None,
    solver: SolverOpt = "auto",
    depth: Annotated[int, typer.Option("--depth", help="Levels of the policy tree.")] = 3,
    dot: Annotated[
        Path | None,
        typer.Option(
            "--dot", help="Write the policy tree as DOT (.dot) or render it (.png, .svg, .pdf)."
        ),
    ] = None,
    mermaid: Annotated[
        Path | None,
        typer.Option("--mermaid", help="Write the policy tree as Mermaid text (.mmd, .md)."),
    ] = None,
    fresh: FreshOpt = False,
    set_: SetOpt = None,
    max_states: MaxStatesOpt = 2_000_000,
    max_memory: MaxMemOpt = 8.0,
    strict_laws: StrictOpt = False,
    independent_laws: IndependentOpt = False,
    as_json: JsonOpt = False,
):
    """Recommend the next experiment and show what the plan is worth."""
    from derisk.planner import approx_plan_report, plan_report
    from derisk.report import policy_dot, policy_mermaid

    if depth < 1:
        raise DeriskError(f"--depth must be at least 1, got {depth}")

    inp, sol = load_and_solve(
        file,
        set_,
        fresh,
        budget=budget,
        resolution=resolution,
        solver=solver,
        max_states=max_states,
        max_memory=max_memory,
        strict_laws=strict_laws,
        independent_laws=independent_laws,
    )
    roadmap = inp.roadmap
    approx = is_approx(sol)
    if approx:
        rep = approx_plan_report(sol, depth=depth)
    else:
        from derisk.planner import HEURISTICS

        with progress("{task.completed}/{task.total} policies") as bar:
            task = bar.add_task("evaluating the plan and the heuristics", total=1 + len(HEURISTICS))
            rep = plan_report(sol, depth=depth, progress=lambda k: bar.advance(task, k))
    unit = roadmap.unit_label()
    written = []
    if dot is not None:
        written.append(write_graph(dot, "--dot", dot=policy_dot(rep.tree, unit=unit)))
    if mermaid is not None:
        text = policy_mermaid(rep.tree, unit=unit)
        written.append(write_graph(mermaid, "--mermaid", mermaid=text))
    if as_json:
        emit(
            {
                "roadmap": roadmap.name,
                **inp.as_json(),
                "written": written,
                "next": rep.next,
                "value": rep.value,
                "expected_compute": rep.expected_compute,
                "p_reward": rep.p_reward,
                "actions": rep.actions,
                "heuristics": rep.heuristics,
                "states": rep.states,
                "solve_seconds": rep.solve_seconds,
                "solver": sol.solver,
                "bounds": list(sol.bounds) if approx else [rep.value, rep.value],
                **({"approx": approx_json(sol)} if approx else {}),
                "budget_left": rep.budget_left,
                "unaffordable": unaffordable(rep, roadmap),
                "resolution": sol.problem.resolution,
                "unit": roadmap.unit,
                "tree": rep.tree,
            }
        )
        return
    out.print(f"[bold]{escape(roadmap.name)}[/]  ({escape(str(inp.path))})")
    print_context(inp)
    print_estimates(inp.estimates, unit, inp.outcomes)
    if approx:
        out.print(
            f"budget left {fmt(rep.budget_left, unit)} in steps of "
            f"{fmt(sol.problem.resolution, unit)}; solved approximately in "
            f"{rep.solve_seconds:.1f}s"
        )
        print_bounds(sol)
    else:
        out.print(
            f"budget left {fmt(rep.budget_left, unit)} in steps of "
            f"{fmt(sol.problem.resolution, unit)}; {fmt(rep.states)} states solved "
            f"by {sol.solver} in {rep.solve_seconds:.2f}s"
        )
    out.print()
    if rep.next is None:
        out.print(f"[bold]Next:[/] stop - {escape(stop_reason(rep, roadmap))}")
    else:
        title = sol.problem.titles[sol.problem.ids.index(rep.next)]
        out.print(
            f"[bold green]Next:[/] [bold]{escape(rep.next)}[/]"
            + (f" - {escape(title)}" if title else "")
        )
    out.print(
        f"Expected value {fmt(rep.value, derived=True)}; expected compute "
        f"{fmt(rep.expected_compute, unit, derived=True)}"
    )
    for eid, p in rep.p_reward.items():
        out.print(f"  P(reward of {escape(eid)}) = {fmt(p, p=True, derived=True)}")
    if rep.actions:
        title = "Runnable now" + (
            f" (Q: rollout estimate, run it then {sol.base})" if approx else ""
        )
        t = Table(title=title, title_justify="left")
        for col in ("experiment", P_NOW, COST_STEPS, "Q", "regret"):
            t.add_column(col, justify="left" if col == "experiment" else "right")
        for a in rep.actions:
            t.add_row(
                escape(a["id"]),
                fmt(a["p"], p=True, derived=True),
                fmt(a["cost"], unit),
                fmt(a["q"], derived=True),
                fmt(a["regret"], derived=True),
            )
        out.print(t)
        note = rounding_note([a["id"] for a in rep.actions], roadmap, sol.problem.resolution)
        if note:
            out.print(escape(note))
    h = rep.heuristics["steinhardt"]
    out.print(
        f"Steinhardt's rule (log(1/p)/cost first) would run [bold]"
        f"{escape(h['pick'] or 'nothing')}[/] and, followed throughout, is worth "
        f"{fmt(h['value'], derived=True)}{' (simulated)' if approx else ''} "
        f"(regret {fmt(h['regret'], derived=True)})."
    )
    if rep.tree and rep.tree.get("action"):
        out.print(render_tree(rep.tree, unit))
        if tree_has_range(rep.tree):
            out.print(f"  {TREE_RANGE_NOTE}")
    for w in written:
        out.print(f"policy tree written to {escape(w)}")


def unaffordable(rep, roadmap: Roadmap) -> list[dict]:
    """The runnable experiments the budget left cannot start, cheapest (median) first."""
    rows = [{"id": i, "cost": roadmap.experiment(i).cost.median} for i in rep.unaffordable or ()]
    return sorted(rows, key=lambda r: r["cost"])


def stop_reason(rep, roadmap: Roadmap) -> str:
    """Why the plan stops: nothing worth its compute, nothing affordable with the budget
    left (naming the cheapest experiment), or nothing left to run."""
    if rep.actions:
        return "no experiment is worth its compute from here."
    if rep.unaffordable is None:  # not computed (the approximate solver)
        return "nothing runnable is both affordable and worth its compute from here."
    cheap = unaffordable(rep, roadmap)
    unit = roadmap.unit_label()
    if cheap:
        c = cheap[0]
        more = f" of {len(cheap)}" if len(cheap) > 1 else ""
        return (
            f"nothing runnable is affordable with {fmt(rep.budget_left, unit)} left: the "
            f"cheapest{more}, {c['id']}, costs {fmt(c['cost'], unit)} (median)."
        )
    return "nothing is left to run (every experiment is done or waits on one that failed)."


def approx_json(sol) -> dict:
    """The approximate solver's working: how each end of the interval was obtained."""
    return {
        "lower": sol.lower,
        "upper": sol.upper,
        "gap": sol.gap,
        "z": sol.z,
        "policy": "rollout" if sol.policy.use_rollout else "heuristic",
        "base_heuristic": sol.base,
        "base_value": sol.base_value,
        "policy_value": sol.policy_value,
        "policy_se": sol.policy_se,
        "policy_value_exact": sol.exact_lower,
        "episodes": sol.episodes,
        "relaxation": sol.relaxation,
        "relaxation_se": sol.relaxation_se,
        "perfect_information": sol.perfect_information,
        "scenarios": sol.scenarios,
        "scenarios_proven_optimal": sol.proven,
        "timings": sol.timings,
    }


def print_bounds(sol) -> None:
    """The certified interval, and how each end was obtained."""
    lo, hi = sol.bounds
    gap = f"{100 * sol.gap / abs(hi):.1f}% of upper" if hi else fmt(sol.gap)
    out.print(f"[bold]Optimal value in [{fmt(lo)}, {fmt(hi)}][/] (gap {gap})")
    who = f"rollout over {sol.base}" if sol.policy.use_rollout else f"the {sol.base} heuristic"
    if sol.exact_lower:
        low = f"lower: the returned policy ({who}), value computed exactly"
    else:
        low = (
            f"lower: the returned policy ({who}), value simulated: {fmt(sol.policy_value)} "
            f"+/- {fmt(sol.policy_se)} s.e. over {fmt(sol.episodes)} episodes, minus "
            f"{sol.z:g} s.e."
        )
    out.print(f"  {low}")
    out.print(
        f"  upper: best plan knowing every outcome in advance, with penalties, over "
        f"{fmt(sol.scenarios)} sampled scenarios: {fmt(sol.relaxation)} +/- "
        f"{fmt(sol.relaxation_se)} s.e., plus {sol.z:g} s.e."
    )


def _budget_left(node: dict, unit: str) -> str:
    text = f"budget left {fmt(node['budget_left'], unit)}"
    rng = node.get("budget_left_range")
    if rng and rng[0] != rng[1]:
        text += f" (median; range {fmt_range(rng[0], rng[1])})"
    return text


def tree_has_range(tree: dict) -> bool:
    rng = tree.get("budget_left_range")
    if rng and rng[0] != rng[1]:
        return True
    return any(tree_has_range(o["next"]) for o in tree.get("outcomes", []))


TREE_RANGE_NOTE = (
    "budget left after a run with an uncertain cost: its median (where the tree continues) "
    "and its min-max over the discretised cost levels the solver plans with"
)


def render_tree(tree: dict, unit: str) -> Tree:
    """The policy tree of `plan_report` (first decisions and their outcomes) as rich text."""
    root = Tree(f"[bold]policy[/] (first levels; value {fmt(tree['value'], derived=True)})")

    def add(parent, node):
        if node["action"] is None:
            parent.add(
                f"stop (value {fmt(node['value'], derived=True)}; {_budget_left(node, unit)})"
            )
            return
        branch = parent.add(f"run [bold]{escape(node['action'])}[/]  ({_budget_left(node, unit)})")
        for o in node.get("outcomes", []):
            sub = branch.add(f"{o['outcome']} ({fmt(o['prob'], p=True, derived=True)})")
            add(sub, o["next"])

    add(root, tree)
    return root


# ---------------------------------------------------------------- whatif


@command
def whatif(
    file: Annotated[Path, typer.Argument(help="Roadmap YAML/JSON.")],
    lo: Annotated[str | None, typer.Option("--from", help="Smallest budget to show.")] = None,
    hi: Annotated[str | None, typer.Option("--to", help="Largest budget (solved once).")] = None,
    resolution: ResOpt = None,
    set_: SetOpt = None,
    fresh: FreshOpt = False,
    png: Annotated[
        Path | None,
        typer.Option("--png", help="Also save a matplotlib figure (PNG or SVG by extension)."),
    ] = None,
    rows: Annotated[
        int, typer.Option("--rows", min=1, help="Table rows (change points always shown).")
    ] = 12,
    max_states: MaxStatesOpt = 2_000_000,
    max_memory: MaxMemOpt = 8.0,
    solver: SolverOpt = "auto",
    as_json: JsonOpt = False,
):
    """Value and probability of success against budget, from one solve.

    With recorded outcomes the budget axis is the budget left after them. With the
    approximate solver, one solve per row (at most 8), each with its interval.
    """
    from derisk.figures import goal_of, whatif_figure
    from derisk.planner import rewarded_nodes, whatif_report

    inp = plan_input(file, set_, fresh)
    roadmap = inp.roadmap
    unit = roadmap.unit_label()
    left = max(roadmap.budget - inp.spent, 0.0)  # what plan starts from
    top = amount(hi, roadmap, "--to")
    top = roadmap.budget if top is None else top
    bottom = amount(lo, roadmap, "--from") or 0.0
    if bottom > top:
        raise DeriskError(f"--from ({fmt(bottom, unit)}) is larger than --to ({fmt(top, unit)})")
    sol = solve_roadmap(
        inp,
        budget=top,
        resolution=amount(resolution, roadmap, "--resolution"),
        max_states=max_states,
        max_memory_gb=max_memory,
        solver=solver,
    )
    if is_approx(sol):
        return _whatif_approx(inp, sol, bottom, top, rows, png, left, as_json)
    passes = 1 + len(rewarded_nodes(sol.problem))  # expected compute, each P(reward)
    with progress("{task.completed}/{task.total} passes") as bar:
        task = bar.add_task("evaluating the plan at every budget", total=passes)
        w = whatif_report(sol, bottom, top, progress=lambda k: bar.advance(task, k))
    goal = goal_of(w, roadmap)
    if png is not None:
        png = whatif_figure(w, roadmap, png, budget=left, left=bool(inp.outcomes))
    if as_json:
        emit(_whatif_json(inp, w, left, png))
        return
    out.print(
        f"[bold]{escape(roadmap.name)}[/]: value against "
        f"{'budget left' if inp.outcomes else 'budget'} ({fmt(len(w.budgets))} levels, one "
        f"solve, {sol.seconds:.2f}s)"
    )
    print_context(inp)
    now = int(np.argmin(np.abs(w.budgets - left)))  # the row plan starts from
    pick = sorted(
        set(np.linspace(0, len(w.budgets) - 1, min(rows, len(w.budgets))).round().astype(int))
        | set(w.changes)
        | {k - 1 for k in w.changes if k}
        | ({now} if w.budgets[now] - left < sol.problem.resolution else set())
    )
    t = Table()
    axis = "budget left" if inp.outcomes else "budget"
    for col in (axis, "value", f"P({goal})" if goal else "P", "E(compute)", "first"):
        t.add_column(escape(col), justify="right")
    # more digits where two rows would print one budget (a change point one step apart)
    label = dict(zip(pick, fmt_distinct([w.budgets[k] for k in pick], unit), strict=True))
    for k in pick:
        mark = " *" if k in w.changes else ""
        t.add_row(
            label[k] + (" (now)" if k == now else ""),
            fmt(w.value[k], derived=True),
            fmt(w.p_reward[goal][k], p=True, derived=True) if goal else "-",
            fmt(w.expected_compute[k], unit, derived=True),
            escape(f"{w.first[k] or 'stop'}{mark}"),
        )
    out.print(t)
    if w.changes:
        out.print(
            "* the best first experiment changes at: "
            + ", ".join(f"{label[k]} -> {escape(w.first[k] or 'stop')}" for k in w.changes)
        )
    _whatif_chart(w, goal, unit)
    if png is not None:
        out.print(f"figure saved to {escape(str(png))}")


def _whatif_json(inp, w, left: float, png, **extra) -> dict:
    """whatif's JSON, from either solver's WhatIf (`extra`: the approx solver's fields)."""
    return {
        "roadmap": inp.roadmap.name,
        **inp.as_json(),
        "unit": inp.roadmap.unit,
        "budget_left": left,
        "budgets": w.budgets,
        "value": w.value,
        "p_reward": w.p_reward,
        "expected_compute": w.expected_compute,
        "first_action": w.first,
        "changes": [float(w.budgets[k]) for k in w.changes],
        "marginal_value": w.marginal,
        "png": str(png) if png else None,
        **extra,
    }


def _whatif_approx(inp, sol, bottom, top, rows, png, left, as_json) -> None:
    """whatif with the approximate solver: a few budget levels, each with its interval."""
    from derisk.figures import goal_of, whatif_figure
    from derisk.planner import ApproxConfig, WhatIf, approx_curve

    roadmap, pr = inp.roadmap, sol.problem
    unit = roadmap.unit_label()
    lo_level = min(pr.level_of(bottom), pr.levels)
    levels = np.unique(np.linspace(lo_level, pr.levels, min(rows, 8)).round().astype(int))
    # lighter than plan's solve: the curve's shape, each point still with its interval
    config = ApproxConfig(episodes=1000, scenarios=400, penalty_rounds=5)
    with progress("{task.completed}/{task.total} budgets") as bar:
        task = bar.add_task("solving (approx)", total=len(levels))
        sols = approx_curve(pr, levels, config=config, progress=lambda k: bar.advance(task, k))
    budgets = levels * pr.resolution
    firsts = []
    for s_ in sols:
        a, _, _ = s_.next_action()
        firsts.append(None if a < 0 else pr.ids[a])
    value = np.array([s_.policy_value for s_ in sols])
    w = WhatIf(
        budgets=budgets,
        value=value,
        p_reward={
            pr.ids[j]: np.array([s_.p_reward[j] for s_ in sols]) for j in sorted(sols[0].p_reward)
        },
        expected_compute=np.array([s_.expected_compute * pr.resolution for s_ in sols]),
        first=firsts,
        changes=[k for k in range(1, len(firsts)) if firsts[k] != firsts[k - 1]],
        marginal=np.gradient(value, budgets) if len(budgets) > 1 else np.zeros(1),
    )
    goal = goal_of(w, roadmap)
    if png is not None:
        png = whatif_figure(w, roadmap, png, budget=left, left=bool(inp.outcomes))
    if as_json:
        bounds = [list(s_.bounds) for s_ in sols]
        emit(_whatif_json(inp, w, left, png, solver="approx", bounds=bounds))
        return
    out.print(
        f"[bold]{escape(roadmap.name)}[/]: value against "
        f"{'budget left' if inp.outcomes else 'budget'} ({len(levels)} budgets, one "
        f"approximate solve each; the optimal value lies in each row's interval)"
    )
    print_context(inp)
    t = Table()
    axis = "budget left" if inp.outcomes else "budget"
    for col in (axis, "policy value", "interval", f"P({goal})" if goal else "P", "first"):
        t.add_column(escape(col), justify="right")
    labels = fmt_distinct(w.budgets, unit)
    for k, s_ in enumerate(sols):
        t.add_row(
            labels[k],
            fmt(w.value[k], derived=True),
            f"[{fmt(s_.lower, derived=True)}, {fmt(s_.upper, derived=True)}]",
            fmt(w.p_reward[goal][k], p=True, derived=True) if goal else "-",
            escape(w.first[k] or "stop"),
        )
    out.print(t)
    if png is not None:
        out.print(f"figure saved to {escape(str(png))}")


def _whatif_chart(w, goal, unit) -> None:
    import plotext as plt

    plt.clear_figure()
    plt.plot(list(map(float, w.budgets)), list(map(float, w.value)), label="value")
    if goal:
        scale = float(np.max(w.value)) if np.max(w.value) > 0 else 1.0
        plt.plot(
            list(map(float, w.budgets)),
            list(map(float, w.p_reward[goal] * scale)),
            label=f"P({goal}) x {fmt(scale)}",
        )
    plt.xlabel(f"budget ({unit})" if unit else "budget")
    print_chart(plt)


# ---------------------------------------------------------------- simulate

SIMULATE_NOTE = (
    "agrees: the simulated mean lies within {z} standard errors of the exact value (a false "
    "alarm has probability {alarm} per policy). Each episode draws every cost from the same "
    "discretised distribution the solver plans with (equal-probability levels of a "
    "log-normal cost, rounded up to budget steps), so this checks the solver and its policy "
    "values, not how well those levels stand for the continuous cost."
)


@command
def simulate(
    file: FileArg = None,
    n: Annotated[int, typer.Option("-n", "--episodes", help="Episodes per policy.")] = 20_000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed.")] = 0,
    budget: BudgetOpt = None,
    set_: SetOpt = None,
    fresh: FreshOpt = False,
    max_states: MaxStatesOpt = 2_000_000,
    max_memory: MaxMemOpt = 8.0,
    solver: SolverOpt = "auto",
    as_json: JsonOpt = False,
):
    """Simulate the optimal policy and the heuristics; check against the exact values
    (with the approximate solver: the returned policy against its interval)."""
    from derisk.planner import check_simulation
    from derisk.planner._simulate import BYTES_PER_EPISODE

    if n < 2:
        raise DeriskError(f"-n must be at least 2 (a standard error needs two episodes), got {n}")
    # the per-episode results, and a sorted copy for the compute percentiles
    if 2 * n * BYTES_PER_EPISODE > max_memory * 2**30 / 2:
        raise DeriskError(
            f"-n {n:,} episodes need ~{2 * n * BYTES_PER_EPISODE / 2**30:.1f} GiB of results, "
            f"more than half of --max-memory {max_memory:g}; use fewer episodes (the standard "
            "error shrinks as 1/sqrt(n): 1e6 is already 1,000x tighter than one episode)"
        )
    inp, sol = load_and_solve(
        file,
        set_,
        fresh,
        budget=budget,
        max_states=max_states,
        max_memory=max_memory,
        solver=solver,
    )
    roadmap = inp.roadmap
    if is_approx(sol):
        return _simulate_approx(inp, sol, n, seed, as_json)
    check = check_simulation(sol, episodes=n, seed=seed)
    rows = [p.as_dict() for p in check.policies]
    if as_json:
        emit(
            {
                "roadmap": roadmap.name,
                **inp.as_json(),
                "budget_left": float(sol.problem.start_budget * sol.problem.resolution),
                "episodes": n,
                "seed": seed,
                "agrees": check.agrees,
                "z_limit": check.z_limit,
                "costs_from": "discretised",
                "policies": rows,
            }
        )
        return
    unit = roadmap.unit_label()
    print_context(inp)
    t = Table(
        title=f"{escape(roadmap.name)}: {fmt(n)} episodes per policy (seed {seed})",
        title_justify="left",
    )
    agree_col = f"agrees (|z| < {check.z_limit:g})"
    for col in ("policy", "simulated mean", "+/- s.e.", "exact", agree_col, "compute p10/p50/p90"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for r in check.policies:
        t.add_row(
            r.policy,
            fmt(r.mean),
            fmt(r.stderr),
            fmt(r.exact, derived=True),
            "yes" if r.agrees else "[red]NO[/]",
            " / ".join(fmt(x) for x in (r.compute_p10, r.compute_p50, r.compute_p90))
            + (f" {unit}" if unit else ""),
        )
    out.print(t)
    opt = check.policies[0]
    verdict = "agrees" if opt.agrees else "DISAGREES"
    out.print(
        f"optimal policy: simulated {fmt(opt.mean)} +/- {fmt(opt.stderr)} "
        f"{verdict} with the solved value {fmt(opt.exact, derived=True)} (z = {opt.z:.2f})"
    )
    alarm = math.erfc(check.z_limit / math.sqrt(2))  # two-sided normal tail beyond z
    out.print(SIMULATE_NOTE.format(z=f"{check.z_limit:g}", alarm=fmt(alarm)))


# ---------------------------------------------------------------- validate / examples / record


APPROX_POLICY_EPISODES = 2_000  # the rollout policy costs ~1,000x a heuristic per episode


def _simulate_approx(inp, sol, n, seed, as_json) -> None:
    """simulate with the approximate solver: the returned policy's simulated mean must lie
    in the certified interval, up to z of its own standard errors."""
    from derisk.planner import simulate_approx

    roadmap, pr = inp.roadmap, sol.problem
    k = min(n, APPROX_POLICY_EPISODES) if sol.policy.use_rollout else n
    if k < n:
        warn(
            f"the rollout policy is simulated over {k:,} episodes (not -n {n:,}): each of its "
            "decisions simulates its candidates; the heuristics get all -n episodes"
        )
    with progress("{task.completed}/{task.total}") as bar:
        task = bar.add_task("simulating", total=1)
        sims = simulate_approx(sol, episodes=n, policy_episodes=k, seed=seed)
        bar.advance(task, 1)
    lo, hi = sol.bounds
    rows = []
    for r in sims:
        p10, p50, p90 = (float(x) for x in np.percentile(r.compute * pr.resolution, [10, 50, 90]))
        row = {
            "policy": r.policy,
            "mean": r.mean,
            "stderr": r.stderr,
            "episodes": len(r.value),
            "compute_p10": p10,
            "compute_p50": p50,
            "compute_p90": p90,
            # every policy's value is at most the optimum, so at most the upper end
            "below_upper": bool(r.mean - sol.z * r.stderr <= hi),
        }
        if r.policy == "policy":
            row["in_bounds"] = bool(r.mean + sol.z * r.stderr >= lo and row["below_upper"])
        rows.append(row)
    agrees = all(r["below_upper"] for r in rows) and rows[0]["in_bounds"]
    if as_json:
        emit(
            {
                "roadmap": roadmap.name,
                **inp.as_json(),
                "solver": "approx",
                "bounds": [lo, hi],
                "budget_left": float(pr.start_budget * pr.resolution),
                "episodes": n,
                "seed": seed,
                "agrees": agrees,
                "policies": rows,
            }
        )
        return
    unit = roadmap.unit_label()
    print_context(inp)
    print_bounds(sol)
    t = Table(title=f"{escape(roadmap.name)}: simulated (seed {seed})", title_justify="left")
    for col in ("policy", "episodes", "simulated mean", "+/- s.e.", "<= upper", "p10/p50/p90"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        t.add_row(
            r["policy"],
            fmt(r["episodes"]),
            fmt(r["mean"]),
            fmt(r["stderr"]),
            "yes" if r["below_upper"] else "[red]NO[/]",
            " / ".join(fmt(r[c]) for c in ("compute_p10", "compute_p50", "compute_p90"))
            + (f" {unit}" if unit else ""),
        )
    out.print(t)
    verdict = "inside" if rows[0]["in_bounds"] else "OUTSIDE"
    out.print(
        f"returned policy: simulated {fmt(rows[0]['mean'])} +/- {fmt(rows[0]['stderr'])}, "
        f"{verdict} the interval [{fmt(lo)}, {fmt(hi)}] (up to {sol.z:g} s.e.)"
    )


@command
def validate(
    file: Annotated[Path, typer.Argument(help="Roadmap YAML/JSON.")],
    strict_laws: StrictOpt = False,
    independent_laws: IndependentOpt = False,
    as_json: JsonOpt = False,
):
    """Check a roadmap file; report every problem with its line and column."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeriskWarning)
        try:
            res = resolve_roadmap(load_roadmap(file), strict_laws, independent_laws)
        except RoadmapError as exc:
            if as_json:
                emit({"valid": False, "problems": [p.__dict__ for p in exc.problems]})
            raise
    roadmap = res.roadmap
    msgs = list(
        dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, DeriskWarning))
    )
    for m in msgs:
        warn(m)
    unit = roadmap.unit_label()
    if as_json:
        emit(
            {
                "valid": True,
                "name": roadmap.name,
                "experiments": len(roadmap.experiments),
                "budget": roadmap.budget,
                "unit": roadmap.unit,
                "warnings": msgs,
                "estimates": {k: e.as_dict() for k, e in res.estimates.items()},
            }
        )
        return
    out.print(
        f"ok: {escape(str(file))}: {escape(repr(roadmap.name))}, {len(roadmap.experiments)} "
        f"experiments, budget {fmt(roadmap.budget, unit)}"
        + (f", {len(msgs)} warning(s)" if msgs else "")
    )
    print_estimates(res.estimates, unit)


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
            t.add_row(escape(it["name"]), escape(it["title"]), str(it["experiments"]))
        out.print(t)
        out.print("`derisk examples NAME > my.yaml` (or `--copy my.yaml`) copies one out to edit.")
        return
    if name not in found:
        raise DeriskError(f"no example {name!r}; known: {', '.join(found)}")
    src = found[name]
    if copy is None:
        if as_json:
            emit({"name": name, "path": str(src), "text": src.read_text(encoding="utf-8")})
        else:
            # The file's bytes, unchanged: a console would wrap long lines and break the YAML.
            sys.stdout.flush()
            sys.stdout.buffer.write(src.read_bytes())
            sys.stdout.buffer.flush()
        return
    if copy.is_dir():
        copy = copy / src.name
    if copy.exists() and not force:
        raise DeriskError(f"{copy} exists; pass --force to overwrite it")
    try:
        shutil.copyfile(src, copy)
    except OSError as exc:
        raise DeriskError(f"--copy: cannot write {copy}: {exc.strerror}") from None
    if as_json:
        emit({"name": name, "copied_to": str(copy)})
    else:
        out.print(f"copied {name} to {escape(str(copy))}")


OUTCOME_WORDS = {
    "success": "success",
    "ok": "success",
    "succeeded": "success",
    "failure": "failure",
    "fail": "failure",
    "failed": "failure",
    "untried": "untried",
    "clear": "untried",
}


def parse_results(results: list[str], roadmap: Roadmap) -> dict[str, str]:
    """`ID=outcome` arguments as {id: outcome}; an unknown id or outcome, or one id given
    twice, is an error naming the arguments."""
    import difflib

    parsed: dict[str, tuple[str, str]] = {}
    for text in results:
        eid, sep, word = text.partition("=")
        if not sep or not eid:
            raise DeriskError(f"{text!r}: expected ID=success, ID=failure or ID=untried")
        outcome = OUTCOME_WORDS.get(word.strip().lower())
        if outcome is None:
            raise DeriskError(f"{text!r}: the outcome must be success, failure or untried")
        if eid not in roadmap.ids:
            close = difflib.get_close_matches(eid, list(roadmap.ids), n=1)
            raise DeriskError(
                f"{text!r}: no experiment `{eid}` in {roadmap.source}"
                + (f"; did you mean `{close[0]}`?" if close else "")
            )
        if eid in parsed:
            raise DeriskError(
                f"`{eid}` is given twice ({parsed[eid][1]!r} and {text!r}); record one "
                "outcome per experiment"
            )
        parsed[eid] = (outcome, text)
    return {k: v[0] for k, v in parsed.items()}


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
    """Record experiment outcomes; plan, whatif and simulate then plan from this state."""
    roadmap = load_roadmap(file)
    outcomes = parse_results(results, roadmap)
    updates = {eid: (o, None) for eid, o in outcomes.items()}
    if spent is not None:
        if len(updates) != 1:
            raise DeriskError("--spent applies to one result; record them one at a time")
        eid = next(iter(updates))
        updates[eid] = (updates[eid][0], amount(spent, roadmap, "--spent"))
    # The default spent is the median cost the planning commands use: a cost priced from
    # `train:` is only known once the roadmap is resolved (unresolved, it reads as 0).
    needs_cost = [
        k
        for k, (o, x) in updates.items()
        if x is None and o != "untried" and "cost" in roadmap.experiment(k).pending
    ]
    if needs_cost:
        try:
            roadmap = resolve_roadmap(roadmap).roadmap
        except RoadmapError as exc:  # one red line more, after the file's own problems
            hint = Problem(
                str(file),
                None,
                None,
                f"cannot price {', '.join(f'`{k}`' for k in needs_cost)} from `train:` until "
                "that is fixed; or record the compute actually spent with --spent",
            )
            raise RoadmapError([*exc.problems, hint]) from None
    path = state_path(file)
    state = record_outcomes(roadmap, path, updates)
    total = float(sum(v["spent"] for v in state.values()))
    unit = roadmap.unit_label()
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
        out.print(f"{escape(eid)}: {rec['outcome']} ({fmt(rec['spent'], unit)})")
    # enough digits that a small spend does not print the budget unchanged (2e14 - 4.3e10)
    left = fmt_distinct([roadmap.budget, roadmap.budget - total], unit)[1]
    out.print(f"saved to {escape(str(path))}; budget left {left}")
    out.print("every planning command now plans from here (--fresh ignores it)")


COMMANDS = [
    ("plan", plan),
    ("whatif", whatif),
    ("simulate", simulate),
    ("validate", validate),
    ("examples", examples_cmd),
    ("record", record),
]
