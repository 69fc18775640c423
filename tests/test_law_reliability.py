"""Saved laws, run CSVs and the flags of fit / optimal / predict under abuse.

Whatever a law file, a CSV or a flag holds, the commands exit 0 or 2, never with a
traceback; a prediction that exits 0 is finite and its band contains its point.
"""

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import derisk.estimators
from derisk.cli import app
from derisk.errors import DataError, DeriskWarning
from derisk.scaling import (
    LAWS,
    LawFileError,
    fit_from_json,
    fit_law,
    load_law,
    load_runs_csv,
    objective,
    predict_loss,
    run_data,
    save_law,
)

DATA = Path(derisk.estimators.__file__).parent / "data"
DENSE = json.loads((DATA / "laws" / "cpu-dense.json").read_text())
MOE = json.loads((DATA / "laws" / "cpu-moe.json").read_text())
RUNS = DATA / "runs_cpu_dense.csv"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _laws_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DERISK_LAWS", str(tmp_path / "laws"))


def no_traceback(r) -> None:
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code in (0, 2), (r.exit_code, r.output)
    assert "Traceback" not in r.output


def check_predict_output(r) -> None:
    """predict exited 0: every number finite, the band around its point."""
    for p in json.loads(r.stdout)["predictions"]:
        assert p["loss"] is not None and math.isfinite(p["loss"]) and p["loss"] > 0
        if p["interval"] is not None:
            lo, hi = p["interval"]
            assert lo is not None and hi is not None
            assert lo <= p["loss"] <= hi
        if p["p_below"] is not None:
            assert 0 <= p["p_below"] <= 1


def check_optimal_output(r) -> None:
    o = json.loads(r.stdout)
    for k in ("params", "tokens", "loss"):
        assert o[k] is not None and math.isfinite(o[k]) and o[k] > 0
    if o["loss_interval"] is not None:
        lo, hi = o["loss_interval"]
        assert lo is not None and hi is not None and lo <= o["loss"] <= hi


def use_law(path) -> tuple:
    """predict and optimal on the law at `path`, both checked."""
    p = runner.invoke(
        app,
        ["predict", "--law", str(path), "--params", "1e5", "--tokens", "1e6", "--below", "1.5"]
        + ["--experts", "4", "--json"],
    )
    no_traceback(p)
    if p.exit_code == 0:
        check_predict_output(p)
    o = runner.invoke(app, ["optimal", "--law", str(path), "--flops", "1e15", "--json"])
    no_traceback(o)
    if o.exit_code == 0:
        check_optimal_output(o)
    return p, o


# ------------------------------------------------------------- named corruptions


def _set(d, path, value):
    d = json.loads(json.dumps(d))
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return d


NAMED = {
    "short theta": (_set(DENSE, ["theta"], DENSE["theta"][:4]), "`theta`"),
    "nested theta": (_set(DENSE, ["theta"], [DENSE["theta"]]), "`theta`"),
    "data as a list": (_set(DENSE, ["data"], [1, 2]), "`data`"),
    "moe law, chinchilla theta": (_set(DENSE, ["law"], "moe"), "7 numbers"),
    "NaN theta": (_set(DENSE, ["theta", 0], float("nan")), "`theta[0]`"),
    "over-long theta": (_set(DENSE, ["theta", 2], 800.0), "`theta`"),
    "inf sigma": (_set(DENSE, ["sigma_log"], float("inf")), "`sigma_log`"),
    "NaN bootstrap": (_set(DENSE, ["bootstrap", 3, 1], float("nan")), "`bootstrap[3][1]`"),
    "short bootstrap row": (_set(MOE, ["bootstrap", 0], [1.0] * 5), "`bootstrap[0]`"),
    "setting a string": (_set(DENSE, ["data", "setting"], "x"), "`data.setting`"),
    "params disagree": (_set(DENSE, ["params", "E"], 5.0), "`params.E`"),
    "missing theta": ({k: v for k, v in DENSE.items() if k != "theta"}, "`theta` is missing"),
}
RAW = (DATA / "laws" / "cpu-dense.json").read_bytes()
NAMED_BYTES = {
    "non-UTF-8": (RAW[:40] + b"\xff\xfe" + RAW[40:], "not UTF-8"),
    "invalid JSON": (b"{law: chinchilla}", "not valid JSON"),
    "truncated": (RAW[: len(RAW) // 3], "not valid JSON"),
    "empty": (b"", "is empty"),
    "integer of 5,000 digits": (RAW.replace(b"24,", b"1" + b"0" * 5000 + b",", 1), "`n`"),
    "nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
}


@pytest.mark.parametrize("case", list(NAMED) + list(NAMED_BYTES))
def test_each_named_corruption_is_one_located_line(case, tmp_path):
    path = tmp_path / "law.json"
    if case in NAMED:
        body, expect = NAMED[case]
        path.write_text(json.dumps(body))
    else:
        blob, expect = NAMED_BYTES[case]
        path.write_bytes(blob)
    for r in use_law(path):
        assert r.exit_code == 2, (case, r.output)
        line = r.stderr.strip()
        assert "\n" not in line and str(path) in line and expect in line, line
        assert "derisk fit" in line  # the fix


def test_a_folder_named_like_a_law_and_bad_names(tmp_path):
    (tmp_path / "x.json").mkdir()
    for r in use_law(tmp_path / "x.json"):
        assert r.exit_code == 2 and "is a folder" in r.stderr
    for name in ("", "x" * 300, "../up", ".hidden"):
        r = runner.invoke(app, ["predict", "--law", name, "--params", "1e6", "--tokens", "1e6"])
        no_traceback(r)
        assert r.exit_code == 2, name
    with pytest.raises(LawFileError) as info:
        fit_from_json(_set(DENSE, ["theta"], "abc"), "f.json")
    assert info.value.field == "theta" and info.value.path == "f.json"


def test_a_roadmap_naming_a_corrupt_law_is_a_located_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_set(DENSE, ["theta"], [[1, 2]])))
    road = tmp_path / "r.yaml"
    road.write_text(
        "name: t\nbudget: 1e18 flops\nexperiments:\n  - id: big\n"
        "    train: {arch: dense, params: 1e6, tokens: 1e7}\n"
        f"    success: {{loss_below: 2.0, law: {bad}}}\n    reward: 1\n"
    )
    r = runner.invoke(app, ["validate", str(road)])
    no_traceback(r)
    assert r.exit_code == 2 and "r.yaml:6" in r.stderr and "`theta`" in r.stderr


# ------------------------------------------------------------- random corruptions


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):  # the first rows stand for the rest
            yield from _paths(v, (*prefix, i))


LAW_PATHS = {
    "dense": [p for p in _paths(DENSE) if p],
    "moe": [p for p in _paths(MOE) if p],
}
odd_numbers = st.sampled_from(
    [float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 1e-320, 0, -1, 10**30, 800.0]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | odd_numbers | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


@st.composite
def corrupt_law(draw) -> bytes:
    which = draw(st.sampled_from(["dense", "moe"]))
    d = json.loads(json.dumps(DENSE if which == "dense" else MOE))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(LAW_PATHS[which]))
        parent = d
        try:
            for k in path[:-1]:
                parent = parent[k]
            action = draw(st.sampled_from(["delete", "replace", "replace", "scale"]))
            if action == "delete" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif action == "scale" and isinstance(parent[path[-1]], int | float):
                parent[path[-1]] = parent[path[-1]] * draw(odd_numbers | st.floats(-1e3, 1e3))
            else:
                parent[path[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed the way there
    text = json.dumps(d).encode()
    cut = draw(st.sampled_from(["none", "none", "none", "truncate", "bytes"]))
    if cut == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif cut == "bytes":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=8)) + text[at:]
    return text


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(blob=corrupt_law())
def test_random_law_corruptions_never_crash(blob, tmp_path_factory):
    path = tmp_path_factory.mktemp("law") / "law.json"
    path.write_bytes(blob)
    use_law(path)


# ------------------------------------------------------------- CSVs and flags

cells = st.sampled_from(
    ["1e8", "2e9", "3.1", "nan", "inf", "-1", "0", "", "abc", "1e400", "9" * 400, "\u00e9", " 5 "]
)


@st.composite
def corrupt_csv(draw) -> bytes:
    header = draw(
        st.sampled_from(["params,tokens,loss", "params,tokens", "N,D,L", "params,tokens,loss,x"])
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        n, d = rng.uniform(1e6, 1e8), rng.uniform(1e8, 1e10)
        row = [f"{n:.4g}", f"{d:.4g}", f"{2 + 100 / n**0.3 + 300 / d**0.3:.4g}"]
        if draw(st.booleans()):
            row[draw(st.integers(0, 2))] = draw(cells)
        rows.append(",".join(row))
    text = ("\n".join([header, *rows]) + "\n").encode()
    how = draw(st.sampled_from(["none", "none", "bytes", "long field", "truncate"]))
    if how == "bytes":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=6)) + text[at:]
    elif how == "long field":
        text += b"1e8," + b"7" * 140_000 + b",3\n"
    elif how == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    return text


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(blob=corrupt_csv())
def test_random_csvs_to_fit_never_crash(blob, tmp_path_factory):
    path = tmp_path_factory.mktemp("csv") / "runs.csv"
    path.write_bytes(blob)
    r = runner.invoke(app, ["fit", str(path), "--bootstrap", "2", "--starts", "1", "--json"])
    no_traceback(r)
    if r.exit_code == 2:
        assert len(r.stderr.strip().splitlines()) == 1 and "runs.csv" in r.stderr


numbers = st.sampled_from(
    ["nan", "inf", "-inf", "-1", "0", "1e-300", "1e308", "1e400", "abc", "", "2", "1e6"]
)


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(params=numbers, tokens=numbers, below=numbers, experts=numbers, flops=numbers, seq=numbers)
def test_random_flags_to_predict_and_optimal(params, tokens, below, experts, flops, seq):
    r = runner.invoke(
        app,
        ["predict", "--params", params, "--tokens", tokens, "--below", below]
        + ["--experts", experts, "--json"],
    )
    no_traceback(r)
    if r.exit_code == 0:
        check_predict_output(r)
    for exact in ([], ["--exact"]):
        r = runner.invoke(
            app, ["optimal", "--law", "cpu-dense", "--flops", flops, "--seq-len", seq, *exact]
        )
        no_traceback(r)
        if r.exit_code == 0:
            assert "nan" not in r.stdout and "inf" not in r.stdout


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    flag=st.sampled_from(["--fix-E", "--min-tokens", "--bootstrap", "--starts", "--seed"]),
    value=st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e400", "abc", "1e9", str(2**70)]),
)
def test_random_flags_to_fit(flag, value):
    if flag == "--starts" and value == str(2**70):
        value = "-5"  # valid, capped at the grid's 4,500 starts: minutes (the cap is tested below)
    args = ["fit", str(RUNS), "--bootstrap", "1", "--starts", "1", flag, value, "--json"]
    r = runner.invoke(app, args)
    no_traceback(r)
    if r.exit_code == 2:
        assert flag in r.stderr or "Invalid value" in r.output or "runs cannot fit" in r.stderr


def test_flag_messages_name_the_flag():
    for args, flag in [
        (["fit", str(RUNS), "--fix-E", "inf"], "--fix-E"),
        (["fit", str(RUNS), "--starts", "0"], "--starts"),
        (["fit", str(RUNS), "--bootstrap", "-1"], "--bootstrap"),
        (["fit", str(RUNS), "--min-tokens", "nan"], "--min-tokens"),
        (["fit", str(RUNS), "--max-rows", "0"], "--max-rows"),
        (["fit", str(RUNS), "--seed", "-1"], "--seed"),
        (["fit", str(RUNS), "--png", "/no-such-folder/f.png"], "--png"),
        (["optimal", "--flops", "inf"], "--flops"),
        (["optimal", "--flops", "-1"], "--flops"),
        (["optimal", "--flops", "1e20", "--seq-len", "0"], "--seq-len"),
        (["predict", "--params", "nan", "--tokens", "1e6"], "--params"),
        (["predict", "--params", "1e6", "--tokens", "1e6", "--below", "inf"], "--below"),
    ]:
        r = runner.invoke(app, args)
        no_traceback(r)
        assert r.exit_code == 2 and flag in r.stderr, (args, r.output)


def test_csv_problems_are_located(tmp_path):
    good = "params,tokens,loss\n1e8,1e9,3\n"
    for body, expect in [
        (good + "2e8," + "1" * 140_000 + ",3\n", "runs.csv:3: column `tokens` has a field"),
        ((good + "2e8,1e9,3\n").encode().replace(b"2e8", b"2\xff8"), "runs.csv:3: not UTF-8"),
        ("", "empty file"),
        ("params,tokens,loss\n", "no data rows"),
        (good + "2e8,nan,3\n", "runs.csv:3: column `tokens`"),
        (good + "2e8,1e9,inf\n", "runs.csv:3: column `loss`"),
        (good + "-2e8,1e9,3\n", "runs.csv:3: column `params`"),
    ]:
        path = tmp_path / "runs.csv"
        path.write_bytes(body if isinstance(body, bytes) else body.encode())
        with pytest.raises(DataError, match=expect.replace("(", r"\(")):
            load_runs_csv(path)


# ------------------------------------------------------------- saving


def test_save_keeps_the_mode_and_concurrent_saves_leave_one_whole_law(tmp_path):
    fit = fit_law(load_runs_csv(RUNS), starts=2, bootstrap=3)
    dest = save_law(fit, tmp_path / "law.json")
    os.chmod(dest, 0o640)
    save_law(fit, dest)
    assert dest.stat().st_mode & 0o777 == 0o640
    # two processes saving different laws to one name while this one reads it back
    code = (
        "import sys; from derisk.scaling import load_law, save_law\n"
        "a = load_law(sys.argv[1]); b = load_law('cpu-dense')\n"
        "for i in range(20): save_law(a if i % 2 else b, sys.argv[1])\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(dest)]) for _ in range(2)]
    seen = set()
    while any(p.poll() is None for p in procs):
        seen.add(load_law(str(dest)).n)  # never a torn or half-written file
    assert all(p.wait() == 0 for p in procs)
    assert load_law(str(dest)).n in (fit.n, DENSE["n"]) and dest.stat().st_mode & 0o777 == 0o640
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_law_that_would_not_load_is_not_saved(tmp_path):
    fit = fit_from_json(DENSE, "x")
    bad = fit.__class__(**{**fit.__dict__, "theta": np.array([np.nan, 1, 1, 1, 1])})
    with pytest.raises(LawFileError, match=r"`theta\[0\]`"):
        save_law(bad, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


# ------------------------------------------------------------- bands and bounded work


def test_a_point_outside_its_band_is_said_and_the_band_stays_the_distributions():
    """When the refits disagree with the fit (here all far above it), the band is still
    the predictive distribution p is computed from (it used to be widened to include the
    point, so band and p disagreed); the user is warned instead."""
    fit = fit_from_json(DENSE, "x")
    shifted = np.array(DENSE["bootstrap"]) + [3.0, 0, 0, 0, 0]  # refits far above the fit
    skewed = fit.__class__(**{**fit.__dict__, "bootstrap": shifted})
    with pytest.warns(DeriskWarning, match="outside its predictive band"):
        p = predict_loss(skewed, 1e5, 1e6)
    assert not p.interval[0] <= p.loss <= p.interval[1]
    X = np.log([[1e5, 1e6, 1.0]])
    assert skewed.prob_below(X, p.interval[0])[0] == pytest.approx(0.1, abs=1e-6)
    assert skewed.prob_below(X, p.median)[0] == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(DataError, match="non-finite"):
        predict_loss(fit, 1e-300, 1e6)  # A / N^alpha overflows


@pytest.mark.parametrize("law_name", list(LAWS))
def test_value_and_grad_and_chunked_screen_match_the_objective(law_name, monkeypatch):
    from derisk.scaling import _fit

    rng = np.random.default_rng(0)
    n, d = rng.uniform(1e6, 1e9, 300), rng.uniform(1e8, 1e11, 300)
    g = rng.choice([1.0, 2.0, 4.0, 8.0], 300)
    loss = 1.8 + 400 / (n**0.34 * g**0.1) + 2000 / d**0.36
    data = run_data(n, d, loss, experts=g, granularity=g)
    law = LAWS[law_name]
    X, y = _fit._inputs(law, data)
    problem = _fit._Problem(law, X, y, _fit.HUBER_DELTA)
    th = rng.uniform(0.1, 3.0, len(law.params))
    w = rng.uniform(0, 2, 300)
    f, grad = problem.value_and_grad(th, w)
    f0, g0 = objective(law, th, X, y, weights=w)
    assert f == pytest.approx(f0, rel=1e-12)
    np.testing.assert_allclose(grad, g0, rtol=1e-10, atol=1e-12)
    grid = law.starts()[::37]
    full = objective(law, grid, X, y)[0]
    monkeypatch.setattr(_fit, "SCREEN_ELEMENTS", 3000)  # a few grid points a chunk
    np.testing.assert_allclose(problem.screen(grid), full, rtol=1e-12)
    sub = problem.screen(grid, rows=100)  # ranks on a subset: same shape, all finite
    assert sub.shape == full.shape and np.isfinite(sub).all()


def test_fit_caps_starts_and_rows_and_says_so(monkeypatch):
    from derisk.scaling import _fit

    small = LAWS["chinchilla"].__class__(
        "chinchilla",
        LAWS["chinchilla"].params,
        LAWS["chinchilla"].inputs,
        ((0.0, 5.0), (5.0,), (0.0,), (0.3,), (0.3,)),
    )
    monkeypatch.setitem(_fit.LAWS, "chinchilla", small)
    data = load_runs_csv(RUNS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_law(data, starts=100, max_rows=20)
    text = " | ".join(str(w.message) for w in caught if w.category is DeriskWarning)
    assert "100 starts asked for" in text and "running 2" in text and fit.starts == 2
    assert f"a random 20 of its {data.n}" in text and fit.n == 20
    assert fit.summary["runs"] == data.n and fit.summary["runs_fitted"] == 20


def test_fit_prints_one_line_per_phase_when_stderr_is_not_a_terminal():
    r = runner.invoke(app, ["fit", str(RUNS), "--bootstrap", "2", "--starts", "2", "--json"])
    assert r.exit_code == 0, r.output
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("fit: screening 4,500 grid starts on")
    assert any(x.startswith("fit: bootstrap: 2 refits") for x in lines)
    json.loads(r.stdout)  # stdout stays pure JSON
    from derisk.cli.laws import MAX_ROWS
    from derisk.scaling import MAX_ROWS as LIB_MAX_ROWS

    assert MAX_ROWS == LIB_MAX_ROWS
    assert load_law("cpu-dense").n == DENSE["n"]
