"""Why this plan, and how sure: explain, sensitivity, graph, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from derisk._numbers import fmt_range
from derisk.cli._output import JsonOpt, command, emit, fmt, out, progress
from derisk.cli.roadmap import (
    P_NOW,
    BudgetOpt,
    FileArg,
    FreshOpt,
    IndependentOpt,
    MaxMemOpt,
    MaxStatesOpt,
    SetOpt,
    StrictOpt,
    load_and_solve,
    plan_input,
    print_context,
    print_estimates,
    rounding_note,
    write_graph,
)
from derisk.errors import DeriskError

# ---------------------------------------------------------------- explain


@command
def explain(
    file: FileArg = None,
    budget: BudgetOpt = None,
    fresh: FreshOpt = False,
    set_: SetOpt = None,
    max_states: MaxStatesOpt = 2_000_000,
    max_memory: MaxMemOpt = 8.0,
    strict_laws: StrictOpt = False,
    independent_laws: IndependentOpt = False,
    as_json: JsonOpt = False,
):
    """Why the recommended experiment: Q-values, what each outcome leads to, beliefs,
    value of information, and where the heuristics disagree."""
    from derisk.planner import explain as explain_plan

    inp, sol = load_and_solve(
        file,
        set_,
        fresh,
        budget=budget,
        max_states=max_states,
        max_memory=max_memory,
        strict_laws=strict_laws,
        independent_laws=independent_laws,
    )
    roadmap = inp.roadmap
    ex = explain_plan(sol, recorded=inp.outcomes)
    if as_json:
        emit({"roadmap": roadmap.name, **inp.as_json(), **ex.as_dict()})
        return
    unit = roadmap.unit_label()
    out.print(f"[bold]{escape(roadmap.name)}[/]  ({escape(str(inp.path))})")
    print_context(inp)
    print_estimates(inp.estimates, unit, inp.outcomes)
    if ex.posteriors:
        out.print(
            "beliefs now: "
            + ", ".join(
                f"P({escape(h)}) = {fmt(v, p=True, derived=True)}" for h, v in ex.posteriors.items()
            )
        )
    out.print()
    out.print(f"[bold green]Next:[/] [bold]{escape(ex.next or 'stop')}[/]")
    out.print(escape(ex.summary))
    out.print()
    if ex.actions:
        t = Table(title="Runnable now", title_justify="left")
        for col in (
            "experiment",
            P_NOW,
            "mean cost",
            "Q",
            "regret",
            "if success",
            "if failure",
            "VOI",
        ):
            left = col.startswith(("exp", "if"))
            t.add_column(col, justify="left" if left else "right", overflow="fold")
        for a in ex.actions:
            cells = []
            for outcome in ("success", "failure"):
                br = next((b for b in a.branches if b.outcome == outcome), None)
                cells.append(
                    "-"
                    if br is None
                    else f"{escape(br.next or 'stop')} ({fmt(br.value, derived=True)})"
                )
            t.add_row(
                escape(a.id),
                fmt(a.p, p=True, derived=True),
                fmt(a.cost),
                fmt(a.q, derived=True),
                fmt(a.regret, derived=True),
                *cells,
                fmt(a.evpi, derived=True),
            )
        out.print(t)
        note = rounding_note([a.id for a in ex.actions], roadmap, sol.problem.resolution)
        if note:
            out.print(escape(note))
        out.print(
            f"cost in {unit or 'budget units'}; if success / if failure: the next move there "
            "(value of the rest of the plan); VOI: value of knowing the outcome first."
        )
    t = Table(title="Heuristics, each followed throughout", title_justify="left")
    for col in ("rule", "first pick", "exact value", "regret"):
        t.add_column(col, justify="left" if col in ("rule", "first pick") else "right")
    for name, h in ex.heuristics.items():
        pick = "(uniform)" if name == "random" else h["pick"] or "stop"
        mark = "" if pick in (ex.next, "(uniform)") else " *"
        t.add_row(
            name,
            escape(pick + mark),
            fmt(h["value"], derived=True),
            fmt(h["regret"], derived=True),
        )
    out.print(t)
    if any(h["pick"] != ex.next and name != "random" for name, h in ex.heuristics.items()):
        out.print("* disagrees with the optimal first move")


# ---------------------------------------------------------------- sensitivity


@command
def sensitivity(
    file: FileArg = None,
    budget: BudgetOpt = None,
    p_step: Annotated[
        float, typer.Option("--p-step", help="Tornado range for probabilities: p +- this.")
    ] = 0.1,
    cost_factor: Annotated[
        float, typer.Option("--cost-factor", help="Tornado range for costs: cost / and x this.")
    ] = 2.0,
    top: Annotated[int, typer.Option("--top", help="Rows of the tornado table.")] = 15,
    no_flips: Annotated[
        bool,
        typer.Option("--no-flips", help="Skip the flip points (most of the work) on big roadmaps."),
    ] = False,
    png: Annotated[
        Path | None, typer.Option("--png", help="Also save the tornado as a PNG (or SVG).")
    ] = None,
    fresh: FreshOpt = False,
    set_: SetOpt = None,
    max_states: MaxStatesOpt = 2_000_000,
    max_memory: MaxMemOpt = 8.0,
    as_json: JsonOpt = False,
):
    """Which estimate matters most: gradients, tornado, flip points and value of information."""

    if not (0 < p_step <= 1):
        raise DeriskError(f"--p-step must be in (0, 1], got {p_step:g}")
    if not (cost_factor > 1 and cost_factor < float("inf")):
        raise DeriskError(f"--cost-factor must be a number above 1, got {cost_factor:g}")
    if top < 1:
        raise DeriskError(f"--top must be at least 1, got {top}")
    inp, sol = load_and_solve(
        file, set_, fresh, budget=budget, max_states=max_states, max_memory=max_memory
    )
    roadmap = inp.roadmap
    res = _analyse(roadmap, sol, p_step=p_step, cost_factor=cost_factor, flips=not no_flips)
    unit = roadmap.unit_label()
    if png is not None:
        from derisk.report import tornado_figure

        png = tornado_figure(res, png, unit=unit)
    if as_json:
        emit(
            {
                "roadmap": roadmap.name,
                **inp.as_json(),
                **res.as_dict(),
                "unit": roadmap.unit,
                "solves": res.solves,
                "seconds": res.seconds,
                "png": str(png) if png else None,
            }
        )
        return
    out.print(f"[bold]{escape(roadmap.name)}[/]  ({escape(str(inp.path))})")
    print_context(inp)
    out.print(
        f"optimal value {fmt(res.value, derived=True)}, next "
        f"[bold]{escape(res.next or 'stop')}[/]; "
        f"{fmt(res.solves)} re-solves in {res.seconds:.1f}s"
    )
    t = Table(title=f"Tornado (costs in {unit or 'budget units'})", title_justify="left")
    for col in ("input", "now", "dV/dx", "range", "value over range", "flips below", "flips above"):
        first = col == "input"
        t.add_column(col, justify="left" if first else "right", no_wrap=first, overflow="fold")
    for p in res.parameters[:top]:
        what = p.param if p.branch in (None, "shift") else f"p.{p.branch}"
        if p.branch == "shift":
            what = "p (law)"  # every world of its law shifted together
        cost = p.param == "cost"

        def v(x, _cost=cost):
            return fmt(x) if _cost else fmt(x, p=True)

        fb = "-" if p.flip_below is None else f"{v(p.flip_below)} {p.next_below}"
        fa = "-" if p.flip_above is None else f"{v(p.flip_above)} {p.next_above}"
        t.add_row(
            escape(f"{p.node}.{what}"),
            v(p.base),
            f"{p.gradient:.3g}",
            fmt_range(p.low, p.high) if cost else f"{v(p.low)}-{v(p.high)}",
            f"{fmt(p.value_low, derived=True)} / {fmt(p.value_high, derived=True)}",
            escape(fb),
            escape(fa),
        )
    out.print(t)
    if len(res.parameters) > top:
        out.print(f"({len(res.parameters) - top} more inputs with smaller swings; --top N)")
    out.print(
        "dV/dx: exact derivative of the optimal value (for a cost: per "
        f"{unit or 'unit'}, from one budget step more). flips: the nearest value at which the "
        "recommended first experiment changes, and to what. Costs are medians; a lognormal "
        "cost keeps its spread (p90 scales with it). Every re-solve used the plan's budget "
        f"step of {fmt(res.resolution, unit)}: reproduce a number with `derisk plan FILE "
        f"--set X=... --resolution {res.resolution:g}`."
        + (
            " A `p (law)` input is a law-driven p shared with other nodes through the law's "
            "worlds: each world's p is shifted by the same amount (`--set` would replace it "
            "with one number, cutting that link)."
            if any(p.branch == "shift" for p in res.parameters[:top])
            else ""
        )
    )
    out.print(f"Value of knowing before deciding (EVPI): {res.evpi_text(escape)}")
    if png is not None:
        out.print(f"tornado saved to {escape(str(png))}")


def _analyse(roadmap, sol, **options):
    """`planner.sensitivity` with a time estimate up front and a progress bar."""
    from derisk.planner import sensitivity, sensitivity_steps

    _estimate(sol, roadmap, not options.get("flips", True))
    with progress("{task.completed}/{task.total}") as bar:
        task = bar.add_task("sensitivity", total=sensitivity_steps(roadmap))
        return sensitivity(roadmap, sol, progress=lambda k: bar.advance(task, k), **options)


def _estimate(sol, roadmap, no_flips: bool) -> None:
    """Say up front when the analysis will take a while (stderr)."""
    from derisk.cli._output import err
    from derisk.planner._sensitivity import SOLVES_PER_INPUT, sensitivity_inputs

    inputs = sensitivity_inputs(roadmap)
    solves = inputs * (4 if no_flips else SOLVES_PER_INPUT)
    seconds = solves * max(sol.seconds, 1e-4)
    if seconds > 30:
        hint = "" if no_flips else "; --no-flips skips the flip points, most of the work"
        err.print(
            f"sensitivity: about {solves:,} re-solves of ~{sol.seconds:.2g} s each (the "
            f"first solve's time; re-solves reuse its solve pairs and often run faster), "
            f"~{seconds / 60:.0f} min{hint}",
            soft_wrap=True,
        )


# ---------------------------------------------------------------- graph


@command
def graph(
    file: FileArg = None,
    fmt_: Annotated[
        str, typer.Option("--format", help="dot | mermaid, for the text on stdout.")
    ] = "dot",
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Write to a file instead; the extension picks the format: .dot, .mmd, or "
            ".png/.svg/.pdf rendered with Graphviz.",
        ),
    ] = None,
    set_: SetOpt = None,
    as_json: JsonOpt = False,
):
    """The roadmap DAG with p, cost and reward, as Graphviz DOT or Mermaid."""
    import sys

    from derisk.report import roadmap_dot, roadmap_mermaid

    if fmt_ not in ("dot", "mermaid"):
        raise DeriskError(f"--format must be dot or mermaid, got {fmt_!r}")
    inp = plan_input(file, set_, True)
    dot, mermaid = roadmap_dot(inp.roadmap), roadmap_mermaid(inp.roadmap)
    written = None
    if output is not None:
        written = write_graph(output, "-o", dot=dot, mermaid=mermaid)
    text = dot if fmt_ == "dot" else mermaid
    if as_json:
        emit({"roadmap": inp.roadmap.name, "format": fmt_, "text": text, "written": written})
    elif output is None:
        sys.stdout.write(text)
    else:
        out.print(f"wrote {escape(written)}")


# ---------------------------------------------------------------- report


@command
def report(
    file: FileArg = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for report.md.")] = Path(
        "derisk-report"
    ),
    budget: BudgetOpt = None,
    depth: Annotated[int, typer.Option("--depth", help="Levels of the policy tree.")] = 3,
    no_sensitivity: Annotated[
        bool, typer.Option("--no-sensitivity", help="Skip the tornado (faster).")
    ] = False,
    fresh: FreshOpt = False,
    set_: SetOpt = None,
    max_states: MaxStatesOpt = 2_000_000,
    max_memory: MaxMemOpt = 8.0,
    as_json: JsonOpt = False,
):
    """Write report.md with figures: roadmap graph, value vs budget, tornado, policy tree,
    and the assumptions, overrides and recorded outcomes it planned from."""
    from derisk.report import write_report

    if depth < 1:
        raise DeriskError(f"--depth must be at least 1, got {depth}")
    inp, sol = load_and_solve(
        file, set_, fresh, budget=budget, max_states=max_states, max_memory=max_memory
    )
    roadmap = inp.roadmap
    sens = None if no_sensitivity else _analyse(roadmap, sol)
    res = write_report(
        roadmap,
        sol,
        output,
        sensitivity=sens,
        recorded=inp.outcomes,
        spent=inp.spent,
        overrides=inp.overrides,
        depth=depth,
        source=str(inp.path),
    )
    if as_json:
        emit({"report": str(res.path), "files": list(res.files), "notes": list(res.notes)})
        return
    for n in res.notes:
        out.print(f"note: {escape(n)}")
    out.print(f"wrote {escape(str(res.path))} ({len(res.files)} files)")


COMMANDS = [
    ("explain", explain),
    ("sensitivity", sensitivity),
    ("graph", graph),
    ("report", report),
]
