"""`derisk report`: one Markdown file with the figures, the numbers and the assumptions.

The report is written into a fresh temporary folder beside the destination and moved
into place at the end, so a failed run never leaves half a report.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from derisk._numbers import fmt as _num
from derisk._numbers import fmt_range
from derisk.errors import DeriskError
from derisk.graphs import Roadmap
from derisk.planner import Solution, plan_report, whatif_report
from derisk.planner._explain import explain
from derisk.planner._sensitivity import Sensitivity
from derisk.report._graphs import (
    dot_available,
    p_words,
    policy_dot,
    policy_mermaid,
    render_dot,
    roadmap_dot,
    roadmap_mermaid,
)


@dataclass(frozen=True)
class ReportResult:
    path: Path  # report.md
    files: tuple[str, ...]  # every file written, relative to the folder
    notes: tuple[str, ...]  # what could not be drawn, and why


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _p(x: float) -> str:
    """A derived probability (a posterior, P(reward)) as the CLI prints it."""
    return _num(x, p=True, derived=True)


def _val(x: float, unit: str = "") -> str:
    """A derived value (expected value, Q, regret): float noise prints as 0."""
    return _num(x, unit, derived=True)


def _input_name(p) -> str:
    """A sensitivity input as the CLI names it: `node.p`, `node.p.then`, `node.p (law)`."""
    if p.branch == "shift":
        return "p (law)"  # every world of its law shifted together
    return p.param if p.branch is None else f"p.{p.branch}"


def _p_words(p, categories) -> str:
    return p_words(p, categories, digits=3)


def tornado_figure(sens: Sensitivity, path: Path, *, top: int = 12, unit: str = "") -> Path:
    """Horizontal bars from the value at each input's low end to its high end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = [p for p in sens.parameters if p.swing > 0][:top] or list(sens.parameters[:top])
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(params), 2) + 1.4))
    for k, p in enumerate(reversed(params)):
        lo, hi = p.value_low, p.value_high
        ax.barh(k, hi - sens.value, left=sens.value, color="C0", alpha=0.85)
        ax.barh(k, lo - sens.value, left=sens.value, color="C3", alpha=0.85)
    names = []
    for p in reversed(params):
        if p.param == "cost":
            rng = fmt_range(p.low, p.high, unit)
        else:
            rng = f"{_num(p.low, p=True)}-{_num(p.high, p=True)}"
        names.append(f"{p.node}.{_input_name(p)} ({rng})")
    ax.set_yticks(range(len(params)), names)
    ax.axvline(sens.value, color="black", lw=0.8)
    ax.set_xlabel("optimal expected value")
    ax.set_title("Tornado: value at each input's low (red) and high (blue) end")
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color="C3", label="low end"), Patch(color="C0", label="high end")],
        loc="lower left",
        fontsize=8,
    )
    fig.tight_layout()
    from derisk.figures import _save

    return _save(fig, path)


def _assumptions(roadmap: Roadmap, solution: Solution) -> list[str]:
    pr = solution.problem
    unit = roadmap.unit_label()
    out = [
        f"- Budget: {_num(roadmap.budget, unit)} (planned in steps of "
        f"{_num(pr.resolution, unit)}; costs round up to whole steps)",
        f"- Compute price: {_num(roadmap.compute_price)} reward per {unit or 'unit'}",
    ]
    if roadmap.hypotheses:
        hs = ", ".join(f"{h} {v:.2f}" for h, v in roadmap.hypotheses.items())
        out.append(f"- Hypothesis priors: {hs}")
    out += [
        "",
        "| experiment | needs | p (prior) | cost | reward | source |",
        "|---|---|---|---|---|---|",
    ]
    for e in roadmap.experiments:
        needs = " and ".join((c[0] if len(c) == 1 else "any of " + "/".join(c)) for c in e.requires)
        p = _p_words(e.p, roadmap.categories)
        cost = _num(e.cost.median, unit)
        if e.cost.stochastic:
            cost += f" (p90 {_num(e.cost.p90, unit)})"
        src = "your estimate"
        if e.estimate:
            src = f"law {e.estimate.get('law')}: {', '.join(e.estimate.get('derived', []))}"
        out.append(
            f"| {_cell(e.id)} | {_cell(needs or '-')} | {_cell(p)} | {_cell(cost)} | "
            f"{_num(e.reward)} | {_cell(src)} |"
        )
    return out


def write_report(
    roadmap: Roadmap,
    solution: Solution,
    out_dir: str | Path,
    *,
    sensitivity: Sensitivity | None = None,
    recorded: dict[str, str] | None = None,
    spent: float = 0.0,
    overrides: tuple[dict, ...] = (),
    depth: int = 3,
    source: str | None = None,
) -> ReportResult:
    """Write report.md and its figures into `out_dir` (created; replaced files only)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DeriskError(f"-o {out_dir}: exists and is not a folder; give a folder path")
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".derisk-report-", dir=parent))
    except OSError as exc:
        raise DeriskError(f"-o {out_dir}: cannot write there ({exc.strerror or exc})") from None
    try:
        files, notes = _write(
            roadmap, solution, tmp, sensitivity, recorded or {}, spent, overrides, depth, source
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.replace(tmp / name, out_dir / name)
    except OSError as exc:
        raise DeriskError(
            f"-o {out_dir}: cannot write the report ({exc.strerror or exc})"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ReportResult(path=out_dir / "report.md", files=tuple(files), notes=tuple(notes))


def _write(roadmap, solution, tmp, sens, recorded, spent, overrides, depth, source):
    from derisk.figures import whatif_figure

    pr, sp = solution.problem, solution.space
    unit = roadmap.unit_label()
    rep = plan_report(solution, depth=depth)
    ex = explain(
        solution, recorded=recorded, evpi_by_id=None if sens is None else sens.evpi_experiments
    )
    files, notes, md = [], [], []
    md.append(f"# {roadmap.name}")
    md.append("")
    md.append(
        f"Planned by derisk on {_dt.date.today().isoformat()} from `{source or roadmap.source}`: "
        f"{sp.size:,} states x {pr.levels + 1:,} budget levels, solved exactly."
    )
    md.append("")
    md.append("## Recommendation")
    md.append("")
    md.append(f"**Next: {rep.next or 'stop'}**. {ex.summary}")
    md.append("")
    md.append(
        f"Expected value {_val(rep.value)}; expected compute {_val(rep.expected_compute, unit)} "
        f"of {_num(rep.budget_left, unit)} left."
    )
    for eid, p in rep.p_reward.items():
        md.append(f"- P(reward of {eid}) = {_p(p)}")
    md.append("")
    if ex.actions:
        md += [
            "| runnable now | p now | mean cost | Q | regret | value of information |",
            "|---|---|---|---|---|---|",
        ]
        for a in ex.actions:
            md.append(
                f"| {_cell(a.id)} | {_p(a.p)} | {_num(a.cost, unit)} | {_val(a.q)} | "
                f"{_val(a.regret)} | {_val(a.evpi)} |"
            )
        md.append("")
        md.append(
            f"Mean costs are in whole budget steps of {_num(pr.resolution, unit)}, rounded up "
            "as the solver plans; the assumptions below give them before rounding."
        )
        md.append("")
    md += ["| heuristic | first pick | exact value | regret |", "|---|---|---|---|"]
    for name, h in rep.heuristics.items():
        pick = "(uniform)" if name == "random" else h["pick"] or "stop"
        md.append(f"| {name} | {_cell(pick)} | {_val(h['value'])} | {_val(h['regret'])} |")
    md.append("")

    # figures
    md.append("## The roadmap")
    md.append("")
    have_dot = dot_available()
    tree = rep.tree
    for name, dot, mer, caption in (
        ("roadmap", roadmap_dot(roadmap, recorded), roadmap_mermaid(roadmap), "Prerequisite graph"),
        ("policy", policy_dot(tree, unit=unit), policy_mermaid(tree, unit=unit), "Policy tree"),
    ):
        (tmp / f"{name}.dot").write_text(dot)
        files.append(f"{name}.dot")
        if name == "policy":
            md.append("## The optimal policy, first decisions")
            md.append("")
        if have_dot and render_dot(dot, tmp / f"{name}.png"):
            files.append(f"{name}.png")
            md.append(f"![{caption}]({name}.png)")
        else:
            notes.append(
                f"{name}.png not drawn: Graphviz's `dot` is not installed "
                "(Debian: apt-get install graphviz); the Mermaid text in its place renders "
                "on GitHub"
            )
            md.append(f"```mermaid\n{mer}```")
        md.append("")

    md.append("## Value against budget")
    md.append("")
    w = whatif_report(solution, 0.0, pr.levels * pr.resolution)
    whatif_figure(
        w,
        roadmap,
        tmp / "value_budget.png",
        budget=pr.start_budget * pr.resolution,
        left=bool(recorded),
    )
    files.append("value_budget.png")
    md.append("![Value against budget](value_budget.png)")
    md.append("")
    if w.changes:
        md.append(
            "The best first experiment changes at "
            + ", ".join(
                f"{_num(w.budgets[k], unit)} (to {w.first[k] or 'stop'})" for k in w.changes
            )
            + "."
        )
        md.append("")

    if sens is not None:
        md.append("## Which estimate matters most")
        md.append("")
        tornado_figure(sens, tmp / "tornado.png", unit=unit)
        files.append("tornado.png")
        md.append("![Tornado](tornado.png)")
        md.append("")
        md += [
            "| input | now | dV/dx | range tried | value at its low / high end "
            "| first move changes below / above |",
            "|---|---|---|---|---|---|",
        ]
        for p in sens.parameters[:15]:
            what = _input_name(p)
            cost = p.param == "cost"

            def v(x, _cost=cost):
                return _num(x, unit) if _cost else _num(x, p=True)

            fb = "-" if p.flip_below is None else f"{v(p.flip_below)} ({p.next_below})"
            fa = "-" if p.flip_above is None else f"{v(p.flip_above)} ({p.next_above})"
            tried = (
                fmt_range(p.low, p.high, unit, sep=" - ") if cost else f"{v(p.low)} - {v(p.high)}"
            )
            md.append(
                f"| {_cell(p.node)}.{what} | {v(p.base)} | {p.gradient:.4g} | {tried}"
                f" | {_val(p.value_low)} / {_val(p.value_high)} | "
                f"{_cell(fb)} / {_cell(fa)} |"
            )
        md.append("")
        md.append(
            "dV/dx is the exact derivative of the optimal value (for a cost, per "
            f"{unit or 'unit'}: the change from one budget step more). Costs are medians; a "
            f"lognormal keeps its spread. Every number used a budget step of "
            f"{_num(sens.resolution, unit)}."
        )
        md.append("")
        md.append(
            "Value of perfect information (knowing the answer before the first decision): "
            + sens.evpi_text()
            + "."
        )
        md.append("")

    md.append("## What this plan assumed")
    md.append("")
    md += _assumptions(roadmap, solution)
    md.append("")
    if overrides:
        md.append("Overrides given on the command line:")
        md.append("")
        for o in overrides:
            md.append(f"- `{o.get('set')}` ({o.get('before')} -> {o.get('after')})")
        md.append("")
    if recorded:
        md.append(f"Recorded outcomes it planned from ({_num(spent, unit)} spent):")
        md.append("")
        for k, v in recorded.items():
            md.append(f"- {k}: {v}")
        md.append("")
    if ex.posteriors:
        md.append(
            "Hypothesis beliefs now: "
            + ", ".join(f"P({h}) = {_p(v)}" for h, v in ex.posteriors.items())
            + "."
        )
        md.append("")
    if notes:
        md.append("Notes: " + "; ".join(notes) + ".")
        md.append("")
    (tmp / "report.md").write_text("\n".join(md))
    files.insert(0, "report.md")
    return files, notes
