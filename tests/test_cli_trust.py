"""The command line's promises: global options anywhere, one number format, the recorded
state used by every roadmap command, and reading commands that create nothing."""

import json
import time

import pytest
import yaml
from conftest import copy_example, run, run_json

from derisk.cli import hoist_global_options
from derisk.cli._output import fmt
from derisk.graphs import example_path, examples

# ---------------------------------------------------------------- global options


def test_global_options_before_or_after_the_command(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: 10\nexperiments:\n  - {id: a, cost: 1, p: 2}\n")
    for args in (["--debug", "plan", bad], ["plan", bad, "--debug"]):
        res = run(*args)
        # --debug lets the error through with its traceback instead of one red line
        assert res.exit_code != 0 and res.exception is not None
        assert type(res.exception).__name__ == "RoadmapError", args
    plain = run("plan", bad)
    assert plain.exit_code == 2 and "error:" in plain.stderr
    store = tmp_path / "none" / "runs.sqlite"
    for args in (
        ["--store", store, "runs"],
        ["runs", "--store", store],
        ["runs", f"--store={store}"],
    ):
        res = run(*args)
        assert res.exit_code == 2 and str(store) in res.stderr, args
    assert hoist_global_options(["record", "x.yaml", "--", "--debug"]) == [
        "record",
        "x.yaml",
        "--",
        "--debug",
    ]


def test_short_help_and_version():
    from derisk import __version__

    for args in (["-h"], ["plan", "-h"], ["whatif", "-h"], ["fit", "-h"]):
        res = run(*args)
        assert res.exit_code == 0 and "Usage" in res.stdout, args
    res = run("--version")
    assert res.exit_code == 0 and __version__ in res.stdout
    assert "loops: C" in res.stdout  # the install built them (tests/test_native.py)


# ---------------------------------------------------------------- numbers


def test_one_number_format():
    assert fmt(50_000, "GPU-h") == "50,000 GPU-h"
    assert fmt(9910) == "9,910"
    assert fmt(3.2e21, "FLOP") == "3.2e21 FLOP"
    assert fmt(4.5e-5) == "4.5e-5"
    assert fmt(12.3456) == "12.35"
    assert fmt(0.41234, p=True) == "0.412"
    assert fmt(float("nan")) == fmt(None) == "-"
    # a nonzero number never prints as 0 (a compute price of 2e-13 is not free); only a
    # derived sum's float noise does
    assert fmt(1e-12) == "1e-12" and fmt(2e-13) == "2e-13"
    assert fmt(1e-12, derived=True) == "0"


def test_plan_of_a_large_budget_prints_no_exponents(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text(
        "name: big budget\nbudget: 50000 gpu_hours\nresolution: 10 gpu_hours\nexperiments:\n"
        "  - {id: a, cost: 9910 gpu_hours, p: 0.5}\n"
        "  - {id: b, after: [a], cost: 20000 gpu_hours, p: 0.5, reward: 100000}\n"
    )
    res = run("plan", p)
    assert res.exit_code == 0, res.output
    assert "e+" not in res.stdout
    assert "50,000 GPU-h" in res.stdout and "9,910" in res.stdout  # cost shown with separators


def test_budget_in_the_display_unit(tmp_path):
    out = run_json("plan", example_path("moe-at-scale"), "--budget", "500 GPU-h")
    assert out["budget_left"] == 500
    res = run("plan", example_path("moe-at-scale"), "--budget", "10 GPU-x")
    assert res.exit_code == 2
    assert "--budget" in res.stderr and "gpu_hours" in res.stderr
    res = run("plan", example_path("moe-at-scale"), "--budget", "lots")
    assert res.exit_code == 2 and res.stderr.count("--budget") == 1, res.stderr


# ---------------------------------------------------------------- recorded state


def test_every_roadmap_command_plans_from_the_recorded_state(tmp_path):
    p = copy_example(tmp_path)  # pilot is informative about a hypothesis: values move
    fresh = run_json("plan", p)
    run_json("record", p, "pilot=success")
    plan = run_json("plan", p)
    assert plan["recorded"] == {"pilot": "success"} and plan["spent"] == 40
    assert plan["value"] != pytest.approx(fresh["value"], abs=1e-3)

    w = run_json("whatif", p)
    assert w["recorded"] == {"pilot": "success"} and w["spent"] == 40
    assert w["value"][w["budgets"].index(w["budget_left"])] == pytest.approx(plan["value"])
    w_fresh = run_json("whatif", p, "--fresh")
    assert w_fresh["recorded"] == {} and w_fresh["value"][-1] == pytest.approx(fresh["value"])

    s = run_json("simulate", p, "-n", "4000", "--seed", "1")
    opt = s["policies"][0]
    assert s["recorded"] == {"pilot": "success"}
    assert opt["exact"] == pytest.approx(plan["value"])
    # episodes start from the posterior the recorded success implies, so they agree
    assert opt["agrees"] and s["agrees"]
    s_fresh = run_json("simulate", p, "-n", "4000", "--seed", "1", "--fresh")
    assert s_fresh["policies"][0]["exact"] == pytest.approx(fresh["value"])

    text = run("whatif", p)
    assert "planning from 1 recorded outcome" in text.stdout and "40 GPU-h spent" in text.stdout
    assert "ignoring the recorded outcomes" in run("simulate", p, "-n", "100", "--fresh").stdout


def test_record_refuses_duplicates_and_unknown_ids(tmp_path):
    p = copy_example(tmp_path)
    res = run("record", p, "pilot=success", "pilot=failure")
    assert res.exit_code == 2
    assert "'pilot=success'" in res.stderr and "'pilot=failure'" in res.stderr
    assert not (tmp_path / "moe-at-scale.yaml.state.json").exists()
    res = run("record", p, "pilt=success")
    assert res.exit_code == 2 and "did you mean `pilot`" in res.stderr


# ---------------------------------------------------------------- overrides and the tree


def test_overrides_are_echoed():
    path = example_path("two-approaches")
    sets = ["--set", "needle-eval.p=0.5", "--set", "data-audit.p.then=0.7"]
    base = run_json("plan", path)
    for cmd in ("plan", "whatif", "simulate"):
        extra = ["-n", "200"] if cmd == "simulate" else []
        res = run(cmd, path, *sets, *extra)
        assert res.exit_code == 0, res.output
        assert "override needle-eval.p: 0.8 -> 0.5 (-0.3)" in res.stdout, cmd
        assert "override data-audit.p.then: 0.85 -> 0.7 (-0.15)" in res.stdout, cmd
        out = run_json(cmd, path, *sets, *extra)
        targets = [o["target"] for o in out["overrides"]]
        assert targets == ["needle-eval.p", "data-audit.p.then"], cmd
    assert run_json("plan", path, *sets)["value"] < base["value"]  # less optimistic
    # a plain number for a conditional p is refused, blaming the flag
    res = run("plan", path, "--set", "data-audit.p=0.3")
    assert res.exit_code == 2 and "--set data-audit.p=0.3" in res.stderr
    assert "data-audit.p.then" in res.stderr


def test_policy_tree_shows_the_budget_range():
    from rich.console import Console

    from derisk.cli.roadmap import render_tree

    tree = {
        "action": "a",
        "value": 1.0,
        "budget_left": 1000.0,
        "outcomes": [
            {
                "outcome": "success",
                "prob": 0.5,
                "next": {
                    "action": None,
                    "value": 2.0,
                    "budget_left": 300.0,
                    "budget_left_range": [200.0, 400.0],
                },
            },
            {
                "outcome": "failure",
                "prob": 0.5,
                "next": {
                    "action": None,
                    "value": 0.0,
                    "budget_left": 300.0,
                    "budget_left_range": [300.0, 300.0],
                },
            },
        ],
    }
    console = Console(width=120, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(render_tree(tree, "GPU-h"))
    text = console.export_text()
    assert "budget left 300 GPU-h (median; range 200-400)" in text
    assert "budget left 300 GPU-h)" in text  # no range when it is one value


# ---------------------------------------------------------------- examples


@pytest.mark.parametrize("name", sorted(examples()))
def test_examples_print_the_file_unchanged(name):
    res = run("examples", name)
    assert res.exit_code == 0
    raw = examples()[name].read_bytes()
    assert res.stdout_bytes == raw
    assert yaml.safe_load(res.stdout_bytes) == yaml.safe_load(raw)


# ---------------------------------------------------------------- run store and laws


def test_reading_commands_create_no_store(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "runs.sqlite"
    for args in (["runs"], ["runs", "--json"], ["predict", "--run", "1"]):
        res = run("--store", missing, *args)
        assert res.exit_code == 2, args
        assert f"no run store at {missing}" in res.stderr and "train or sweep" in res.stderr
    assert not missing.parent.exists()
    # the default store before any training: an empty listing that says so
    monkeypatch.delenv("DERISK_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    out = run_json("runs")
    assert out["runs"] == [] and out["exists"] is False and "train or sweep" in out["note"]
    assert "no run store" in run("runs").stdout
    assert not (tmp_path / "xdg").exists()


def test_predict_warnings_on_stderr_also_with_json():
    res = run("predict", "--law", "cpu-dense", "--params", "1e9", "--tokens", "1e10", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert any("extrapolates" in w for w in out["warnings"])
    assert "warning:" in res.stderr and "extrapolates" in res.stderr


def test_fit_save_to_an_unwritable_place_fails_before_fitting(tmp_path, monkeypatch):
    import derisk.scaling

    def no_fit(*a, **k):
        raise AssertionError("the fit ran before --save was checked")

    monkeypatch.setattr(derisk.scaling, "fit_law", no_fit)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    csv = tmp_path / "runs.csv"
    csv.write_text("params,tokens,loss\n1e6,1e7,3.0\n")
    start = time.perf_counter()
    res = run("fit", csv, "--save", blocker / "law.json")
    assert res.exit_code == 2 and "--save" in res.stderr and "not a folder" in res.stderr
    assert time.perf_counter() - start < 5
    assert "Traceback" not in res.output


def test_train_gives_the_run_id_predict_takes(tmp_path):
    store = tmp_path / "runs.sqlite"
    tiny = ["--d-model", "16", "--n-layer", "1", "--n-head", "2", "--seq-len", "32"]
    tiny += ["--tokens", "2000", "--batch-size", "8", "--max-bytes", "200000"]
    out = run_json("train", *tiny, "--store", store)
    assert isinstance(out["id"], int)
    pred = run_json("predict", "--law", "cpu-dense", "--run", out["id"], "--store", store)
    assert pred["predictions"][0]["run"] == out["id"]
    # the run was trained unlike the law's runs: said on stderr, and in the JSON
    assert pred["warnings"] and pred["predictions"][0]["setting_differs"]


def test_check_simulation_from_a_recorded_state():
    """Episodes start from the belief the recorded outcomes imply (Bayes' rule on the
    hypotheses), so the simulated mean matches the value planned from that state."""
    from derisk.graphs import load_roadmap
    from derisk.planner import check_simulation, compile_roadmap, solve

    roadmap = load_roadmap(example_path("moe-at-scale"))
    for outcome in ("success", "failure"):
        sol = solve(compile_roadmap(roadmap, outcomes={"pilot": outcome}, spent=40))
        check = check_simulation(sol, ["optimal"], episodes=20_000, seed=0)
        assert check.agrees and check.policies[0].exact == pytest.approx(sol.root_value)


def test_debug_shows_the_traceback_from_the_console_script(tmp_path):
    import subprocess
    import sys

    for args in (["plan", "nope.yaml", "--debug"], ["--debug", "plan", "nope.yaml"]):
        res = subprocess.run(
            [sys.executable, "-m", "derisk.cli", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert res.returncode != 0 and "Traceback" in res.stderr, args
    res = subprocess.run(
        [sys.executable, "-m", "derisk.cli", "plan", "nope.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr and "no such file" in res.stderr


def test_messages_are_printed_verbatim(tmp_path):
    """Rich would turn `:x:` into an emoji and `[b]` into markup; user text stays as is."""
    f = tmp_path / "passwd"
    f.write_text("root:x:0:0:[b]root[/b]\n")
    res = run("--store", f, "runs")
    assert res.exit_code == 2
    assert "root:x:0:0:[b]ro" in res.stderr
