"""Roadmap commands under concurrency and abuse: recorded outcomes never lost, state files
and flags validated, exit 0 or 2 and never a traceback."""

import json
import os
import stat
import subprocess
import sys

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from derisk.cli import app
from derisk.graphs import example_path

runner = CliRunner()
N = 6


def _independent(tmp_path, n=N):
    exps = [{"id": f"e{i}", "cost": 1, "p": 0.5, "reward": 1} for i in range(n)]
    path = tmp_path / "ind.yaml"
    path.write_text(yaml.safe_dump({"name": "ind", "budget": 100, "experiments": exps}))
    return path


def test_concurrent_records_lose_nothing(tmp_path):
    """N processes each record one outcome at the same moment, 3 times over: every
    outcome lands (without the lock, read-merge-replace lost updates)."""
    path = _independent(tmp_path)
    state = tmp_path / "ind.yaml.state.json"
    for trial in range(3):
        state.unlink(missing_ok=True)
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "derisk.cli", "record", str(path), f"e{i}=success"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i in range(N)
        ]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()
        got = json.loads(state.read_text())["outcomes"]
        assert sorted(got) == sorted(f"e{i}" for i in range(N)), (trial, sorted(got))


def test_state_file_keeps_its_mode(tmp_path):
    path = _independent(tmp_path)
    state = tmp_path / "ind.yaml.state.json"
    old = os.umask(0o022)
    try:
        assert runner.invoke(app, ["record", str(path), "e0=success"]).exit_code == 0
        assert stat.S_IMODE(state.stat().st_mode) == 0o644  # the umask's, not mkstemp's 0600
        state.chmod(0o640)
        assert runner.invoke(app, ["record", str(path), "e1=failure"]).exit_code == 0
        assert stat.S_IMODE(state.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_impossible_state_file_is_refused_by_every_command(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(example_path("moe-at-scale").read_text())
    state = tmp_path / "m.yaml.state.json"
    bad = {
        "pilot": {"outcome": "failure", "spent": 40},
        "router-zloss": {"outcome": "success", "spent": 60},
    }
    state.write_text(json.dumps({"version": 1, "outcomes": bad}))
    for cmd in ("plan", "whatif", "simulate", "explain"):
        res = runner.invoke(app, [cmd, str(path)])
        assert res.exit_code == 2, (cmd, res.output)
        assert "router-zloss" in res.stderr and "pilot" in res.stderr
    assert runner.invoke(app, ["plan", str(path), "--fresh"]).exit_code == 0


# ---------------------------------------------------------------- property tests

WEIRD = st.one_of(
    st.sampled_from(
        [
            "nan",
            "inf",
            "-inf",
            "-1",
            "0",
            "1e308",
            "1e-300",
            "",
            "abc",
            "1e400",
            "10 GPU-h",
            "5 flops",
            "3 parsecs",
            "0x10",
            "1_000",
            "--json",
            "[]",
        ]
    ),
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
FLAGS = {
    "plan": ["--budget", "--resolution", "--depth", "--max-states", "--max-memory", "--set"],
    "whatif": ["--from", "--to", "--resolution", "--rows", "--set", "--max-memory"],
    "simulate": ["-n", "--seed", "--budget", "--set"],
    "explain": ["--budget", "--set", "--max-memory"],
    "sensitivity": ["--p-step", "--cost-factor", "--top", "--budget", "--set"],
}


def _no_traceback(res):
    assert res.exit_code in (0, 2), (res.exit_code, res.output, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cmd=st.sampled_from(sorted(FLAGS)), data=st.data())
def test_random_flags_exit_0_or_2(cmd, data):
    flag = data.draw(st.sampled_from(FLAGS[cmd]))
    value = data.draw(WEIRD)
    if flag == "--set":
        value = (
            data.draw(
                st.sampled_from(
                    [
                        "pilot.p.then=",
                        "big.cost=",
                        "budget=",
                        "routing_stable=",
                        "nope.p=",
                        "pilot.p=",
                    ]
                )
            )
            + value
        )
    args = [cmd, str(example_path("moe-at-scale")), flag, value, "--json"]
    if cmd == "simulate" and flag != "-n":
        args += ["-n", "100"]
    _no_traceback(runner.invoke(app, args))


STATE_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=8),
        st.sampled_from(["success", "failure", "pilot", "big"]),
    ),
    lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    outcomes=st.dictionaries(
        st.sampled_from(["pilot", "router-zloss", "dense-baseline", "big", "x"]),
        st.one_of(
            st.fixed_dictionaries(
                {
                    "outcome": st.sampled_from(["success", "failure", "maybe"]),
                    "spent": st.one_of(st.floats(), st.integers(-5, 5000), st.text(max_size=3)),
                }
            ),
            STATE_VALUES,
        ),
        max_size=4,
    ),
    raw=st.one_of(st.none(), st.binary(max_size=40)),
)
def test_random_state_files_exit_0_or_2(tmp_path, outcomes, raw):
    path = tmp_path / "m.yaml"
    path.write_text(example_path("moe-at-scale").read_text())
    state = tmp_path / "m.yaml.state.json"
    if raw is not None:
        state.write_bytes(raw)
    else:
        state.write_text(json.dumps({"version": 1, "outcomes": outcomes}, default=str))
    for cmd in ("plan", "record"):
        args = [cmd, str(path), "--json"] if cmd == "plan" else [cmd, str(path), "big=untried"]
        _no_traceback(runner.invoke(app, args))


def test_odd_bytes_and_nan_settings_are_located_errors(tmp_path):
    res = runner.invoke(app, ["plan", str(example_path("moe-at-scale")), "--set", "budget=\udcff"])
    assert res.exit_code == 2 and "UTF-8" in res.stderr
    path = tmp_path / "t.yaml"
    path.write_text(
        "budget: 100\nflops_per_gpu_hour: .nan\nexperiments:\n  - {id: a, cost: 1, p: 0.5}\n"
    )
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == 2 and "t.yaml:2" in res.stderr and "flops_per_gpu_hour" in res.stderr
