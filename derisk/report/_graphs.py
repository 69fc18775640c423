"""The roadmap DAG and the optimal policy tree as Graphviz DOT and Mermaid text.

Plain string builders over the validated roadmap and `policy_tree`'s nested dict; every
label is quoted and escaped, so ids with dashes, quotes or spaces stay one node.
`render_dot` turns DOT into PNG/SVG through Graphviz's `dot` when it is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from derisk._numbers import fmt as _num
from derisk._numbers import fmt_range
from derisk.errors import DeriskError
from derisk.graphs import Categorical, Roadmap, describe_p


def _q(text: str) -> str:
    """A DOT double-quoted string."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _m(text: str) -> str:
    """A Mermaid label: quoted, with the characters Mermaid reads specially escaped."""
    safe = str(text).replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    return '"' + safe.replace("\n", "<br/>") + '"'


def p_words(p, categories=None, *, digits: int = 2) -> str:
    """An experiment's p in words (`describe_p`), with a plain or law-driven p as the CLI
    prints it: three decimals, never rounded to a certainty it is not (`>0.999`)."""
    if isinstance(p, int | float):
        return _num(p, p=True)
    if isinstance(p, Categorical) and p.hypothesis.startswith("law "):
        prior = (categories or {}).get(p.hypothesis)
        mean = p.mean(prior) if prior else sum(q for _, q in p.table) / len(p.table)
        return f"{_num(mean, p=True)} ({p.hypothesis}, {len(p.table)} worlds)"
    return describe_p(p, categories, digits=digits)


def _p_text(e, categories) -> str:
    return f"p {p_words(e.p, categories)}"


def _cost_text(e, unit: str) -> str:
    u = f" {unit}" if unit else ""
    if e.cost.stochastic:
        return f"cost {_num(e.cost.median)}{u} (p90 {_num(e.cost.p90)})"
    return f"cost {_num(e.cost.median)}{u}"


def _node_lines(roadmap: Roadmap) -> dict[str, list[str]]:
    unit = roadmap.unit_label()
    out = {}
    for e in roadmap.experiments:
        lines = [e.id, _p_text(e, roadmap.categories), _cost_text(e, unit)]
        if e.reward:
            lines.append(f"reward {_num(e.reward)}")
        out[e.id] = lines
    return out


RECORDED_FILL = {"success": "#c6efce", "failure": "#f4c7c3"}


def roadmap_dot(roadmap: Roadmap, recorded: dict[str, str] | None = None) -> str:
    """The prerequisite DAG with p, cost and reward; dashed edges are `any` alternatives;
    recorded outcomes (id -> "success" | "failure") are coloured and labelled."""
    recorded = recorded or {}
    legend = "yellow: earns a reward; dashed: any one of"
    if recorded:
        legend += "; green / red: recorded success / failure"
    lines = [
        f"digraph {_q(roadmap.name)} {{",
        "  rankdir=LR;",
        f'  labelloc=b; fontname="Helvetica"; fontsize=10; label={_q(legend)};',
        '  node [shape=box, style="rounded,filled", fillcolor="#f4f6fb", fontname="Helvetica"];',
        '  edge [color="#555555", fontname="Helvetica"];',
    ]
    for eid, text in _node_lines(roadmap).items():
        e = roadmap.experiment(eid)
        fill = ', fillcolor="#fff2cc"' if e.reward else ""
        if eid in recorded:
            fill = f', fillcolor="{RECORDED_FILL[recorded[eid]]}"'
            text = [*text, f"recorded: {recorded[eid]}"]
        lines.append(f"  {_q(eid)} [label={_q(chr(10).join(text))}{fill}];")
    for e in roadmap.experiments:
        for clause in e.requires:
            style = ' [style=dashed, label="any"]' if len(clause) > 1 else ""
            for pre in clause:
                lines.append(f"  {_q(pre)} -> {_q(e.id)}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def roadmap_mermaid(roadmap: Roadmap) -> str:
    ids = {e.id: f"n{k}" for k, e in enumerate(roadmap.experiments)}
    lines = ["flowchart LR"]
    for eid, text in _node_lines(roadmap).items():
        lines.append(f"  {ids[eid]}[{_m(chr(10).join(text))}]")
    for e in roadmap.experiments:
        for clause in e.requires:
            arrow = "-.->|any|" if len(clause) > 1 else "-->"
            for pre in clause:
                lines.append(f"  {ids[pre]} {arrow} {ids[e.id]}")
    return "\n".join(lines) + "\n"


def _budget_text(node: dict, unit: str) -> str:
    u = f" {unit}" if unit else ""
    rng = node.get("budget_left_range")
    text = f"budget left {_num(node['budget_left'])}{u}"
    if rng and rng[0] != rng[1]:  # an uncertain cost: the median, and the spread of levels
        text += f" (median; range {fmt_range(rng[0], rng[1])})"
    return text


def _walk(tree: dict):
    """(node id, node, [(child id, edge label)]) depth first; ids t0, t1, ..."""
    counter = [0]
    out = []

    def visit(node):
        me = f"t{counter[0]}"
        counter[0] += 1
        kids = []
        entry = (me, node, kids)
        out.append(entry)
        for o in node.get("outcomes", []):
            child = visit(o["next"])
            kids.append((child, f"{o['outcome']} {_num(o['prob'], p=True, derived=True)}"))
        return me

    visit(tree)
    return out


def _tree_label(node: dict, unit: str) -> str:
    if node["action"] is None:
        return f"stop\nvalue {_num(node['value'])}"
    return f"run {node['action']}\nvalue {_num(node['value'])}\n{_budget_text(node, unit)}"


def policy_dot(tree: dict, *, unit: str = "", title: str = "policy") -> str:
    """The optimal policy's first decisions (from `policy_tree`) as a DOT digraph."""
    lines = [
        f"digraph {_q(title)} {{",
        '  node [shape=box, style="rounded", fontname="Helvetica"];',
        '  edge [fontname="Helvetica"];',
    ]
    for me, node, kids in _walk(tree):
        shape = ", shape=ellipse" if node["action"] is None else ""
        lines.append(f"  {me} [label={_q(_tree_label(node, unit))}{shape}];")
        for child, label in kids:
            lines.append(f"  {me} -> {child} [label={_q(label)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def policy_mermaid(tree: dict, *, unit: str = "") -> str:
    lines = ["flowchart TD"]
    for me, node, kids in _walk(tree):
        lines.append(f"  {me}[{_m(_tree_label(node, unit))}]")
        for child, label in kids:
            lines.append(f"  {me} -->|{_m(label)}| {child}")
    return "\n".join(lines) + "\n"


def dot_available() -> bool:
    return shutil.which("dot") is not None


def render_dot(text: str, path: Path) -> bool:
    """Render DOT to `path` (format from its extension) with Graphviz; False if `dot` is
    not installed. A DOT error or an unwritable path raises DeriskError."""
    exe = shutil.which("dot")
    if exe is None:
        return False
    fmt = Path(path).suffix.lstrip(".") or "png"
    try:
        done = subprocess.run(
            [exe, f"-T{fmt}", "-o", str(path)],
            input=text.encode(),
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeriskError(f"graphviz could not render {path}: {exc}") from None
    if done.returncode != 0:
        msg = done.stderr.decode(errors="replace").strip().splitlines()
        raise DeriskError(f"graphviz could not render {path}: {msg[-1] if msg else 'failed'}")
    return True
