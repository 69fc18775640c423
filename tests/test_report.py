"""Explanations, DOT/Mermaid exports and the Markdown report."""

import re
import shutil
import subprocess

import pytest

from derisk.graphs import example_path, load_roadmap, roadmap_from_dict
from derisk.planner import compile_roadmap, plan_report, solve
from derisk.planner._explain import explain
from derisk.planner._sensitivity import sensitivity
from derisk.report import (
    policy_dot,
    policy_mermaid,
    roadmap_dot,
    roadmap_mermaid,
    write_report,
)

PILOT = {
    "name": 'pilot "quoted" | piped',
    "budget": 100,
    "resolution": 1,
    "compute_price": 0.1,
    "hypotheses": {"works": 0.4},
    "experiments": [
        {"id": "pilot-1", "cost": 5, "p": {"if": "works", "then": 0.9, "else": 0.2}},
        {
            "id": "big",
            "cost": 60,
            "p": {"if": "works", "then": 0.8, "else": 0.05},
            "reward": 100,
            "after": ["pilot-1"],
        },
        {"id": "alt", "cost": 30, "p": 0.3, "reward": 20},
    ],
}


def _dot_nodes_and_edges(text):
    nodes = set(re.findall(r'^\s+("(?:[^"\\]|\\.)*"|t\d+) \[label=', text, re.M))
    edges = re.findall(r'^\s+("(?:[^"\\]|\\.)*"|t\d+) -> ("(?:[^"\\]|\\.)*"|t\d+)', text, re.M)
    return nodes, edges


@pytest.mark.parametrize("name", ["moe-at-scale", "two-approaches", "serial-project"])
def test_dot_exports_are_well_formed(name):
    r = load_roadmap(example_path(name))
    rep = plan_report(solve(compile_roadmap(r)), depth=4)
    for text, count in ((roadmap_dot(r), len(r.experiments)), (policy_dot(rep.tree), None)):
        assert text.count("{") == text.count("}")
        nodes, edges = _dot_nodes_and_edges(text)
        if count is not None:
            assert len(nodes) == count
            assert len(edges) == sum(len(c) for e in r.experiments for c in e.requires)
        for a, b in edges:  # every edge joins declared nodes
            assert a in nodes and b in nodes
        if shutil.which("dot"):
            done = subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True)
            assert done.returncode == 0, done.stderr.decode()
            assert b"<svg" in done.stdout


def test_mermaid_exports_name_every_node():
    r = roadmap_from_dict(PILOT)
    text = roadmap_mermaid(r)
    assert text.startswith("flowchart LR")
    for e in r.experiments:
        assert e.id in text
    tree = plan_report(solve(compile_roadmap(r)), depth=3).tree
    m = policy_mermaid(tree)
    assert "run pilot-1" in m and "-->|" in m


def test_dot_escapes_quotes_in_names():
    r = roadmap_from_dict(PILOT)
    text = roadmap_dot(r)
    assert 'digraph "pilot \\"quoted\\" | piped"' in text
    if shutil.which("dot"):
        assert (
            subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True).returncode
            == 0
        )


def test_explain_branches_rebuild_the_q_values():
    """Deterministic costs: Q = p (reward + V_success) + (1 - p) V_failure - price x cost."""
    r = roadmap_from_dict(PILOT)
    sol = solve(compile_roadmap(r))
    ex = explain(sol)
    assert ex.next == ex.actions[0].id == sol.as_policy().action({}, 100)
    pr = sol.problem
    for a in ex.actions:
        i = pr.ids.index(a.id)
        succ = next(b for b in a.branches if b.outcome == "success")
        fail = next(b for b in a.branches if b.outcome == "failure")
        rebuilt = (
            succ.prob * (pr.reward[i] + succ.value)
            + fail.prob * fail.value
            - pr.price_per_unit * pr.cost_units[i][0]
        )
        assert a.q == pytest.approx(rebuilt, abs=1e-9)
        assert a.regret == pytest.approx(ex.value - a.q)


def test_explain_posteriors_follow_bayes():
    r = roadmap_from_dict(PILOT)
    ex = explain(solve(compile_roadmap(r)))
    pilot = next(a for a in ex.actions if a.id == "pilot-1")
    post = {b.outcome: b.posteriors["works"] for b in pilot.branches}
    assert post["success"] == pytest.approx(0.4 * 0.9 / (0.4 * 0.9 + 0.6 * 0.2))
    assert post["failure"] == pytest.approx(0.4 * 0.1 / (0.4 * 0.1 + 0.6 * 0.8))
    assert ex.posteriors == {"works": pytest.approx(0.4)}
    assert "pilot-1" in ex.summary and "P(works)" in ex.summary


def test_explain_uses_recorded_outcomes():
    r = roadmap_from_dict(PILOT)
    sol = solve(compile_roadmap(r, outcomes={"pilot-1": "success"}, spent=5))
    ex = explain(sol, recorded={"pilot-1": "success"})
    assert ex.posteriors["works"] == pytest.approx(0.4 * 0.9 / (0.4 * 0.9 + 0.6 * 0.2))
    assert "pilot-1" not in [a.id for a in ex.actions]


def test_report_writes_markdown_and_figures(tmp_path):
    r = roadmap_from_dict(PILOT)
    sol = solve(compile_roadmap(r))
    res = write_report(r, sol, tmp_path / "rep", sensitivity=sensitivity(r, sol))
    text = res.path.read_text()
    for section in (
        "## Recommendation",
        "## Value against budget",
        "## Which estimate",
        "## What this plan assumed",
    ):
        assert section in text
    for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        f = tmp_path / "rep" / img
        assert f.exists() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", img
    assert "value_budget.png" in res.files and "tornado.png" in res.files
    assert not any(p.name.startswith(".derisk-report") for p in tmp_path.iterdir())


def test_report_without_graphviz_still_writes(tmp_path, monkeypatch):
    import derisk.report._graphs as g

    monkeypatch.setattr(g.shutil, "which", lambda name: None)
    r = roadmap_from_dict(PILOT)
    res = write_report(r, solve(compile_roadmap(r)), tmp_path / "rep")
    text = res.path.read_text()
    assert "```mermaid" in text and "graphviz" in text.lower()
    assert res.notes and "roadmap.png" not in res.files


def test_whatif_reports_one_progress_step_per_backward_pass():
    from derisk.graphs import random_roadmap
    from derisk.planner import whatif_report

    pr = compile_roadmap(random_roadmap(8, seed=5, rewards=3, budget_levels=30))
    sol = solve(pr)
    steps = []
    w = whatif_report(sol, 0.0, pr.levels * pr.resolution, progress=steps.append)
    assert steps == [1] * 4  # expected compute, then each of the 3 rewards
    assert len(w.p_reward) == 3


def test_plan_report_reports_one_progress_step_per_policy():
    from derisk.graphs import random_roadmap
    from derisk.planner import HEURISTICS

    sol = solve(compile_roadmap(random_roadmap(7, seed=1, budget_levels=20)))
    steps = []
    rep = plan_report(sol, progress=steps.append)
    assert steps == [1] * (1 + len(HEURISTICS)) and set(rep.heuristics) == set(HEURISTICS)
