"""The command line, driven through typer's CliRunner and parsed from --json."""

import json

import pytest
from conftest import run, run_json
from typer.testing import CliRunner

from derisk.cli import app
from derisk.graphs import example_path, load_roadmap
from derisk.planner import compile_roadmap, solve

runner = CliRunner()


def test_plan_default_example_json_matches_library():
    out = run_json("plan")
    for key in (
        "next",
        "value",
        "expected_compute",
        "p_reward",
        "actions",
        "states",
        "solve_seconds",
    ):
        assert key in out
    sol = solve(compile_roadmap(load_roadmap(example_path())))
    assert out["value"] == pytest.approx(sol.root_value)
    assert out["next"] == sol.as_policy().action({}, 2000)
    best = max(a["q"] for a in out["actions"])
    assert best == pytest.approx(out["value"])
    assert {a["id"] for a in out["actions"]} == {"pilot", "dense-baseline"}
    assert set(out["p_reward"]) == {"scaling-sweep", "big"}


def test_plan_text_output_names_next_and_steinhardt():
    res = run("plan", example_path("serial-project"))
    assert res.exit_code == 0
    assert "Next:" in res.stdout and "Steinhardt" in res.stdout and "policy" in res.stdout


@pytest.mark.parametrize("solver", ["jax", "mdptoolbox"])
def test_plan_solvers_agree_through_cli(solver):
    a = run_json("plan", example_path("two-approaches"))
    b = run_json("plan", example_path("two-approaches"), "--solver", solver)
    assert b["value"] == pytest.approx(a["value"], abs=1e-6)


def test_plan_budget_override_and_units():
    small = run_json("plan", example_path("moe-at-scale"), "--budget", "500 gpu_hours")
    full = run_json("plan", example_path("moe-at-scale"))
    assert small["budget_left"] == 500 and small["value"] < full["value"]
    res = run("plan", example_path("moe-at-scale"), "--budget", "5e20 flops")
    assert res.exit_code == 2 and "flops" in res.stderr


def test_malformed_roadmap_exit_2_with_positions(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(
        "budget: 10\nexperiments:\n  - {id: a, cost: 1, p: 2}\n  - {id: b, after: [x],"
        " cost: 1, p: 0.5}\n"
    )
    for cmd in ("plan", "validate", "simulate"):
        res = run(cmd, p)
        assert res.exit_code == 2, cmd
        assert f"{p}:3:" in res.stderr and f"{p}:4:" in res.stderr
        assert "Traceback" not in res.output
    out = runner.invoke(app, ["validate", str(p), "--json"])
    assert out.exit_code == 2
    assert json.loads(out.stdout)["valid"] is False


def test_validate_ok_with_warning(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("budget: 5\nexperiments:\n  - {id: a, cost: 10, p: 0.5, reward: 3}\n")
    out = run_json("validate", p)
    assert out["valid"] and any("cannot be earned" in w for w in out["warnings"])


def test_whatif_json_curve_is_one_solve():
    out = run_json("whatif", example_path("two-approaches"), "--from", "0", "--to", "1500")
    assert out["budgets"][0] == 0 and out["budgets"][-1] == 1500
    full = run_json("plan", example_path("two-approaches"))
    assert out["value"][-1] == pytest.approx(full["value"])
    mid = run_json("plan", example_path("two-approaches"), "--budget", "800")
    assert out["value"][out["budgets"].index(800)] == pytest.approx(mid["value"])
    assert out["changes"], "the best first action changes with the budget here"


def test_whatif_set_and_png(tmp_path):
    png = tmp_path / "w.png"
    base = run_json("whatif", example_path("two-approaches"))
    more = run_json(
        "whatif", example_path("two-approaches"), "--set", "needle-eval.reward=200", "--png", png
    )
    assert more["value"][-1] > base["value"][-1]
    assert png.read_bytes()[:4] == b"\x89PNG"
    res = run("whatif", example_path("two-approaches"), "--set", "nedle-eval.p=0.5")
    assert res.exit_code == 2 and "did you mean `needle-eval`" in res.stderr


def test_simulate_agrees():
    out = run_json("simulate", example_path("moe-at-scale"), "-n", "5000", "--seed", "2")
    opt = out["policies"][0]
    assert opt["policy"] == "optimal" and opt["agrees"]
    assert abs(opt["mean"] - opt["exact"]) < 4 * opt["stderr"]


def test_record_then_plan(tmp_path):
    p = tmp_path / "moe.yaml"
    p.write_text(example_path("moe-at-scale").read_text())
    before = run_json("plan", p)
    res = run_json("record", p, "pilot=failure")
    assert res["outcomes"]["pilot"] == {"outcome": "failure", "spent": 40}
    after = run_json("plan", p)
    assert after["budget_left"] == 1960 and after["recorded"] == {"pilot": "failure"}
    assert after["value"] < before["value"]
    assert all(a["id"] != "pilot" for a in after["actions"])
    # prerequisites are checked, and nothing is written on error
    bad = run("record", p, "big=success")
    assert bad.exit_code == 2 and "prerequisite" in bad.stderr
    assert json.loads((tmp_path / "moe.yaml.state.json").read_text())["outcomes"] == {
        "pilot": {"outcome": "failure", "spent": 40}
    }
    run_json("record", p, "pilot=untried")
    assert run_json("plan", p)["value"] == pytest.approx(before["value"])


def test_corrupt_state_file(tmp_path):
    p = tmp_path / "moe.yaml"
    p.write_text(example_path("moe-at-scale").read_text())
    (tmp_path / "moe.yaml.state.json").write_text("{not json")
    res = run("plan", p)
    assert res.exit_code == 2 and "state file" in res.stderr


def test_examples_list_and_copy(tmp_path):
    out = run_json("examples")
    names = {e["name"] for e in out["examples"]}
    assert {"moe-at-scale", "serial-project", "two-approaches"} <= names
    dest = tmp_path / "mine.yaml"
    assert run("examples", "serial-project", "--copy", dest).exit_code == 0
    assert load_roadmap(dest).name.startswith("Serial")
    again = run("examples", "serial-project", "--copy", dest)
    assert again.exit_code == 2 and "--force" in again.stderr


def test_too_large_is_a_clear_error():
    res = run("plan", example_path("moe-at-scale"), "--max-states", "3", "--solver", "exact")
    assert res.exit_code == 2
    assert "too large" in res.stderr and "--resolution" in res.stderr
    # the default, auto, says so and falls back to the approximate solver instead
    res = run("plan", example_path("moe-at-scale"), "--max-states", "3", "--json")
    assert res.exit_code == 0 and "approx" in res.stderr
    out = json.loads(res.stdout)
    lo, hi = out["bounds"]
    assert out["solver"] == "approx" and lo <= hi


def test_no_color_and_plain_output(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    res = run("whatif", example_path("two-approaches"))
    assert res.exit_code == 0 and "\x1b[" not in res.stdout
