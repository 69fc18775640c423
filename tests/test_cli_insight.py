"""explain, sensitivity, graph, report and plan --dot/--mermaid through the command line."""

import shutil
import subprocess

import pytest
from conftest import copy_example, run, run_json

from derisk.graphs import example_path, load_roadmap
from derisk.planner import compile_roadmap, solve


def test_sensitivity_json_has_every_input_and_matches_the_plan(tmp_path):
    out = run_json("sensitivity", example_path("moe-at-scale"), "--png", tmp_path / "t.png")
    plan = run_json("plan", example_path("moe-at-scale"))
    assert out["value"] == pytest.approx(plan["value"]) and out["next"] == plan["next"]
    r = load_roadmap(example_path("moe-at-scale"))
    expected = set()
    for e in r.experiments:
        if isinstance(e.p, float):
            expected.add((e.id, "p", None))
        else:
            expected |= {(e.id, "p", "then"), (e.id, "p", "else")}
        expected.add((e.id, "cost", None))
    expected |= {(h, "prior", None) for h in r.hypotheses}
    assert {(p["node"], p["param"], p["branch"]) for p in out["parameters"]} == expected
    keys = {
        "node",
        "param",
        "branch",
        "base",
        "gradient",
        "low",
        "high",
        "value_low",
        "value_high",
        "flip_below",
        "flip_above",
    }
    assert all(keys <= set(p) for p in out["parameters"])
    assert set(out["evpi"]["experiments"]) == set(r.ids)
    assert all(v >= 0 for v in out["evpi"]["experiments"].values())
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_sensitivity_flags_are_checked():
    for args in (["--p-step", "0"], ["--p-step", "1.5"], ["--cost-factor", "1"], ["--top", "0"]):
        res = run("sensitivity", example_path("moe-at-scale"), *args)
        assert res.exit_code == 2, args
        assert args[0] in res.stderr


def test_explain_json_and_text():
    out = run_json("explain", example_path("two-approaches"))
    assert out["next"] == out["actions"][0]["id"]
    a = out["actions"][0]
    assert {"q", "regret", "on_success", "on_failure", "evpi", "unlocks"} <= set(a)
    assert a["on_success"]["posteriors"] and out["posteriors"]
    assert out["summary"].startswith(f"Run {out['next']}")
    res = run("explain", example_path("two-approaches"))
    assert res.exit_code == 0 and "Heuristics" in res.stdout and out["next"] in res.stdout


def test_explain_plans_from_recorded_outcomes(tmp_path):
    p = copy_example(tmp_path)
    assert run("record", p, "pilot=success").exit_code == 0
    out = run_json("explain", p)
    assert out["recorded"] == {"pilot": "success"}
    assert out["posteriors"]["routing_stable"] > 0.8  # Bayes after a successful pilot
    assert "pilot" not in [a["id"] for a in out["actions"]]
    fresh = run_json("explain", p, "--fresh")
    assert fresh["next"] == "pilot" and fresh["recorded"] == {}


def test_record_then_whatif_then_simulate_agree(tmp_path):
    """One recorded state for plan, whatif and simulate; simulation matches the value."""
    p = copy_example(tmp_path)
    assert run("record", p, "pilot=success").exit_code == 0
    plan = run_json("plan", p)
    w = run_json("whatif", p)
    left = plan["budget_left"]
    k = w["budgets"].index(left)
    assert w["value"][k] == pytest.approx(plan["value"])
    sim = run_json("simulate", p, "-n", "20000")
    opt = next(r for r in sim["policies"] if r["policy"] == "optimal")
    assert opt["exact"] == pytest.approx(plan["value"]) and opt["agrees"]
    lib = solve(compile_roadmap(load_roadmap(p), outcomes={"pilot": "success"}, spent=40))
    assert lib.root_value == pytest.approx(plan["value"])


def test_graph_and_plan_exports(tmp_path):
    res = run("graph", example_path("moe-at-scale"))
    assert res.exit_code == 0 and res.stdout.startswith("digraph")
    mer = run("graph", example_path("moe-at-scale"), "--format", "mermaid")
    assert mer.stdout.startswith("flowchart")
    out = run_json(
        "plan",
        example_path("moe-at-scale"),
        "--dot",
        tmp_path / "t.dot",
        "--mermaid",
        tmp_path / "t.mmd",
        "--depth",
        "4",
    )
    assert len(out["written"]) == 2
    dot = (tmp_path / "t.dot").read_text()
    assert dot.startswith("digraph") and "run pilot" in dot
    assert (tmp_path / "t.mmd").read_text().startswith("flowchart TD")
    if shutil.which("dot"):
        for text in (dot, res.stdout):
            done = subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True)
            assert done.returncode == 0, done.stderr
        assert run("graph", example_path("moe-at-scale"), "-o", tmp_path / "g.png").exit_code == 0
        assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    bad = run("graph", example_path("moe-at-scale"), "--format", "svg")
    assert bad.exit_code == 2 and "--format" in bad.stderr
    folder = run("plan", example_path("moe-at-scale"), "--dot", tmp_path)
    assert folder.exit_code == 2 and "folder" in folder.stderr


def test_report_writes_a_readable_folder(tmp_path):
    p = copy_example(tmp_path)
    assert run("record", p, "pilot=success").exit_code == 0
    out = run_json("report", p, "-o", tmp_path / "rep")
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "pilot: success" in text  # the recorded outcome it planned from
    for f in out["files"]:
        assert (tmp_path / "rep" / f).stat().st_size > 0
    assert {"report.md", "value_budget.png", "tornado.png"} <= set(out["files"])
    afile = tmp_path / "afile"
    afile.write_text("x")
    res = run("report", p, "-o", afile)
    assert res.exit_code == 2 and "-o" in res.stderr


def test_validate_says_how_far_a_law_estimate_extrapolates():
    from derisk.scaling import load_law

    path = example_path("tiny-lm")
    text = run("validate", path).stdout
    assert "law cpu-dense: 24 runs" in " ".join(text.split())
    est = run_json("validate", path)["estimates"]["dense-d384-3M"]
    largest = load_law("cpu-dense").summary["params"][1]  # the law's largest fitted run
    assert est["extrapolation"]["params"] == pytest.approx(3540864 / largest, rel=1e-9)
    assert est["law"] == "cpu-dense" and est["derived"] == ["p", "cost"]
