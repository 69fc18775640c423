"""The IsoFLOP approach-2 frontier as a law of (N, D): recovery of a known law's optimum,
predictions off the frontier, allocation, law files (forms, old members, corrupt ones)
and the CLI."""

import json
import warnings

import numpy as np
import pytest

from derisk.errors import DataError, DeriskWarning
from derisk.scaling import (
    LawFileError,
    backtest,
    calibrate,
    fit_calibrated,
    fit_from_json,
    fit_law,
    fit_to_json,
    law_inputs,
    load_law,
    optimal_allocation,
    predict_loss,
    run_data,
    save_law,
)
from derisk.scaling._fit import Refits
from derisk.scaling._frontier import fit_frontier
from derisk.scaling._remedy import average_fits
from tests.conftest import run, run_json

# Hoffmann et al. (2022)'s approach-3 law: the synthetic IsoFLOP sweeps come from it.
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
AL, BE = TRUE["alpha"], TRUE["beta"]
G = (AL * TRUE["A"] / (BE * TRUE["B"])) ** (1 / (AL + BE))


def true_loss(N, D):
    return TRUE["E"] + TRUE["A"] / N**AL + TRUE["B"] / D**BE


def true_n_opt(C):
    """The true law's compute-optimal size under C = 6ND (Hoffmann et al. eq. 4)."""
    return G * (C / 6) ** (BE / (AL + BE))


BUDGETS = tuple(np.geomspace(1e18, 1e21, 7))


def iso_sweep(seed=0, noise=0.005, budgets=BUDGETS, sizes=13, span=0.75):
    """At each budget, `sizes` models log-spaced over +-`span` decades around the true
    optimum, D = C / 6N, loss from TRUE with log-normal noise."""
    rng = np.random.default_rng(seed)
    N = np.concatenate([true_n_opt(C) * np.logspace(-span, span, sizes) for C in budgets])
    C = np.repeat(budgets, sizes)
    D = C / (6 * N)
    return run_data(N, D, true_loss(N, D) * np.exp(rng.normal(0, noise, len(N))))


# A law of the frontier's own form: N_opt = 3e8 at 1e19 FLOPs (about 20 tokens per
# parameter), N_opt ~ C^0.5, L* = 1.8 + 0.6 (C/1e19)^-0.15, one curvature 0.04.
FRONT = np.array([np.log(1e19), np.log(3e8), 0.5, 1.8, np.log(0.6), 0.15, np.log(0.04), 0.0])


def frontier_form_sweep(seed=0, noise=0.005, budgets=(1e17, 3e17, 1e18, 3e18, 1e19, 3e19, 1e20)):
    from derisk.scaling._laws import FRONTIER

    rng = np.random.default_rng(seed)
    C = np.repeat(budgets, 9)
    n_opt = np.exp(FRONT[1] + FRONT[2] * (np.log(C) - FRONT[0]))
    N = n_opt * 10 ** np.tile(np.linspace(-1, 1, 9), len(budgets))
    D = C / (6 * N)
    X = np.stack([np.log(N), np.log(D), 0 * N], 1)
    L = np.exp(FRONTIER.log_predict(FRONT, X) + rng.normal(0, noise, len(N)))
    return run_data(N, D, L)


def by_hand(p, N, D):
    """The frontier's loss from its readable parameters, written out: C = 6ND,
    L = E + B C^-gamma + kappa C^kappa_slope (log N - log(k_n C^a))^2."""
    C = 6 * N * D
    return (
        p["E"]
        + p["B"] * C ** -p["gamma"]
        + p["kappa"] * C ** p["kappa_slope"] * (np.log(N) - np.log(p["k_n"] * C ** p["a"])) ** 2
    )


@pytest.fixture(scope="module")
def frontier():
    return fit_frontier(iso_sweep(), bootstrap=40)


def test_the_frontier_recovers_the_true_laws_optimum(frontier):
    # Tolerances: approach 2 reads each budget's optimum from a parabola on a curve that
    # is not symmetric in log N, with 0.5% noise; over 5 seeds (not this one alone) the
    # exponent came out 0.442-0.472, N_opt within 5% and L* within 0.3% of the truth.
    a_true = BE / (AL + BE)  # 0.4516, by hand from eq. 4
    p = frontier.params
    assert abs(p["a"] - a_true) < 0.04
    lo, hi = frontier.intervals()["a"]
    assert lo - 0.01 <= a_true <= hi + 0.01  # the bootstrap band is not blind to it
    for C in (1e19, 1e20):
        n = true_n_opt(C)
        n_fit = p["k_n"] * C ** p["a"]
        assert n_fit / n == pytest.approx(1.0, abs=0.10)
        l_star = true_loss(n, C / (6 * n))  # the true law's minimum loss at C
        assert p["E"] + p["B"] * C ** -p["gamma"] == pytest.approx(l_star, rel=0.005)
        # and the law predicts exactly its L* on its own frontier
        X = law_inputs("chinchilla", n_fit, C / (6 * n_fit))
        assert frontier.predict(X)[0] == pytest.approx(
            p["E"] + p["B"] * C ** -p["gamma"], rel=1e-12
        )


def test_its_prediction_off_the_frontier_follows_the_true_law(frontier):
    C = 1e20
    for factor in (0.25, 4.0):  # over 6 seeds: within 0.7% of the truth, which is 3% above L*
        N = factor * true_n_opt(C)
        D = C / (6 * N)
        truth = true_loss(N, D)
        l_star = true_loss(true_n_opt(C), C / (6 * true_n_opt(C)))
        assert truth / l_star - 1 > 0.02  # twice the tolerance off the optimum: it matters
        got = predict_loss(frontier, N, D).loss
        assert got == pytest.approx(truth, rel=0.01)
        assert got == pytest.approx(by_hand(frontier.params, N, D), rel=1e-9)


def test_the_bootstrap_resamples_within_slices_and_holds_the_structure(frontier):
    boot = frontier.bootstrap
    assert boot.shape == (40, 8)
    assert np.all(boot[:, 0] == frontier.theta[0])  # one centre of log C for all
    assert "7 slices" in frontier.message and "linear in log C" in frontier.message
    # three slices: too few to fit E or a curvature slope
    data = iso_sweep(budgets=np.array([1e18, 1e19, 1e20]))
    small = fit_frontier(data, bootstrap=5, seed=1)
    assert small.params["E"] == 0 and np.all(small.bootstrap[:, 3] == 0)
    assert small.params["kappa_slope"] == 0 and np.all(small.bootstrap[:, 7] == 0)
    assert "pure power law" in small.message and "shared" in small.message


def test_no_slices_is_a_clear_error():
    rng = np.random.default_rng(0)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e9), 40))
    D = np.exp(rng.uniform(np.log(1e9), np.log(1e11), 40))
    with pytest.raises(DataError, match="no IsoFLOP structure"):
        fit_frontier(run_data(N, D, true_loss(N, D)))


def test_allocation_reads_the_frontiers_own_n_opt(frontier):
    p = frontier.params
    a = optimal_allocation(frontier, 3e20)
    assert a.params == pytest.approx(p["k_n"] * 3e20 ** p["a"], rel=1e-9)
    assert a.tokens == pytest.approx(3e20 / (6 * a.params), rel=1e-12)
    assert a.loss == pytest.approx(p["E"] + p["B"] * 3e20 ** -p["gamma"], rel=1e-9)
    assert "frontier" in a.method
    # exact FLOPs: a numeric minimum of the same law; brute force over a fine grid
    ex = optimal_allocation(frontier, 3e20, exact=True, seq_len=2048)
    from derisk.scaling import flops_per_token

    grid = np.exp(np.linspace(np.log(ex.params) - 1, np.log(ex.params) + 1, 4001))
    loss = by_hand(p, grid, 3e20 / flops_per_token(grid, seq_len=2048))
    assert ex.params == pytest.approx(grid[np.argmin(loss)], rel=2e-3)


@pytest.fixture(scope="module")
def averaged():
    """A model average of Chinchilla's form and the frontier on the frontier-form sweep,
    each backtested on the same cuts, calibrated from the average's backtest."""
    data = frontier_form_sweep()
    fits = {
        "none": fit_law(data, starts=8, bootstrap=6),
        "frontier": fit_frontier(data, bootstrap=6),
    }
    tests = {
        "none": backtest(data, bootstrap=3, starts=8),
        "frontier": backtest(data, bootstrap=3, form="frontier"),
    }
    avg, bt, weights = average_fits(fits, tests)
    return data, fits, tests, calibrate(avg, bt, data), bt, weights


def test_the_average_with_a_frontier_member_by_hand(averaged):
    data, fits, tests, avg, bt, weights = averaged
    mse = {n: np.mean([r.log_error**2 for r in tests[n].rows]) for n in fits}
    inv = {n: 1 / v for n, v in mse.items()}
    for n in fits:
        assert weights[n] == pytest.approx(inv[n] / sum(inv.values()))
    assert [m.form for m in avg.members] == ["chinchilla", "frontier"]
    N, D = 2e9, 4e10
    p = fits["none"].params
    chin = p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]
    front = by_hand(fits["frontier"].params, N, D)
    want = np.exp(weights["none"] * np.log(chin) + weights["frontier"] * np.log(front))
    assert avg.predict(law_inputs("chinchilla", N, D))[0] == pytest.approx(want, rel=1e-9)
    # pooled refits of both forms, in proportion to the weights
    assert isinstance(avg.bootstrap, Refits)
    counts = {f: avg.bootstrap.forms.count(f) for f in ("chinchilla", "frontier")}
    assert counts == {
        "chinchilla": max(1, round(weights["none"] * 6)),
        "frontier": max(1, round(weights["frontier"] * 6)),
    }
    # the band is the pooled refits' predictive mixture, the one its p comes from
    lo, hi = predict_loss(avg, N, D).interval
    X = law_inputs("chinchilla", N, D)
    assert avg.prob_below(X, lo)[0] == pytest.approx(0.1, abs=1e-6)
    assert avg.prob_below(X, hi)[0] == pytest.approx(0.9, abs=1e-6)


def test_allocation_of_an_average_is_its_own_numeric_minimum(averaged):
    _, fits, _, avg, _, weights = averaged
    a = optimal_allocation(avg, 1e21)
    assert "model average" in a.method

    def mixed(N):  # the average's loss along C = 6ND, by hand
        D = 1e21 / (6 * N)
        p = fits["none"].params
        chin = p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]
        front = by_hand(fits["frontier"].params, N, D)
        return np.exp(weights["none"] * np.log(chin) + weights["frontier"] * np.log(front))

    grid = np.exp(np.linspace(np.log(1e8), np.log(1e11), 20001))
    assert a.params == pytest.approx(grid[np.argmin(mixed(grid))], rel=2e-3)
    assert a.loss == pytest.approx(mixed(a.params), rel=1e-9)


def test_frontier_and_average_survive_save_and_load(frontier, averaged, tmp_path):
    X = law_inputs("chinchilla", [3e8, 2e9], [6e9, 1e11])
    for fit, name in ((frontier, "f.json"), (averaged[3], "avg.json")):
        back = load_law(str(save_law(fit, tmp_path / name)))
        assert back.form == fit.form and back.law == "chinchilla"
        np.testing.assert_allclose(back.predict(X), fit.predict(X), rtol=1e-12)
        np.testing.assert_allclose(back.log_samples(X), fit.log_samples(X), rtol=1e-12)
        assert back.calibration == json.loads(json.dumps(fit.calibration))
    body = json.loads((tmp_path / "avg.json").read_text())
    assert [m["form"] for m in body["members"]] == ["chinchilla", "frontier"]
    assert len(body["bootstrap_forms"]) == len(body["bootstrap"])


def test_old_members_without_a_form_still_load(tmp_path):
    from tests.test_remedy import kaplan_data

    data = kaplan_data(40)
    fits = {
        n: fit_law(data, starts=4, bootstrap=3, **o) for n, o in (("a", {}), ("b", {"E_min": 1.0}))
    }
    tests = {
        n: backtest(data, bootstrap=2, starts=4, options=o)
        for n, o in (("a", {}), ("b", {"E_min": 1.0}))
    }
    avg, _, _ = average_fits(fits, tests)
    body = json.loads(json.dumps(fit_to_json(avg), default=float))
    # as written before members carried a form: [weight, theta], no `form` keys
    body["members"] = [[m["weight"], m["theta"]] for m in body["members"]]
    del body["form"], body["bootstrap_forms"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(body))
    back = load_law(str(path))
    assert [m.form for m in back.members] == ["chinchilla", "chinchilla"]
    X = law_inputs("chinchilla", 3e9, 3e11)
    assert back.predict(X)[0] == pytest.approx(avg.predict(X)[0], rel=1e-12)
    # and every shipped law still loads
    for name in ("chinchilla", "cpu-dense", "cpu-moe"):
        assert load_law(name).members is None


def _corrupt(tmp_path, averaged, edit):
    body = json.loads(json.dumps(fit_to_json(averaged[3]), default=float))
    edit(body)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(body))
    return path


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (
            lambda b: b["members"][1]["theta"].__setitem__(3, -1.0),
            "members[1].theta[3]",
            "E must be at least 0",
        ),
        (lambda b: b["members"][1]["theta"].pop(), "members[1].theta", "list of 8 numbers"),
        (lambda b: b["members"][1].__setitem__("form", "moe"), "members[1].form", "cannot hold"),
        (
            lambda b: b["members"][1].__setitem__("form", "parabola"),
            "members[1].form",
            "must be one of",
        ),
        (lambda b: b["members"][1].pop("weight"), "members[1].weight", "is missing"),
        (lambda b: b["bootstrap_forms"].pop(), "bootstrap_forms", "one per refit"),
        (lambda b: b.__setitem__("form", None), "theta", "list of 5 numbers"),
    ],
)
def test_a_corrupt_frontier_member_is_a_located_error(tmp_path, averaged, edit, field, words):
    path = _corrupt(tmp_path, averaged, edit)
    with pytest.raises(LawFileError) as info:
        load_law(str(path))
    assert info.value.field == field and words in str(info.value)
    assert str(path) in str(info.value) and "refit it with" in str(info.value)
    r = run("predict", "--law", path, "--params", "1e9", "--tokens", "2e10")
    assert r.exit_code == 2 and field in r.output and "Traceback" not in r.output


def test_a_frontier_law_checked_like_any_other():
    f = fit_frontier(iso_sweep(budgets=np.array([1e18, 1e19, 1e20])), bootstrap=3)
    body = json.loads(json.dumps(fit_to_json(f), default=float))
    body["bootstrap"][1][3] = -0.5  # a refit with a negative E
    with pytest.raises(LawFileError, match=r"`bootstrap\[1\]\[3\]` E must be at least 0"):
        fit_from_json(body, "x.json")


def _csv(path, data):
    path.write_text(
        "params,tokens,loss\n"
        + "".join(
            f"{float(n)!r},{float(d)!r},{float(v)!r}\n"
            for n, d, v in zip(data.params, data.tokens, data.loss, strict=True)
        )
    )
    return path


def test_cli_a_law_whose_remedy_is_the_frontier(tmp_path, monkeypatch):
    monkeypatch.setenv("DERISK_LAWS", str(tmp_path / "laws"))
    csv = _csv(tmp_path / "iso.csv", frontier_form_sweep())
    png = tmp_path / "fit.png"
    args = ["fit", csv, "--bootstrap", "4", "--backtest-bootstrap", "2", "--starts", "4"]
    out = run_json(*args, "--backtest", "--remedy", "frontier", "--save", "front", "--png", png)
    assert out["remedy"]["chosen"] == "frontier" and out["form"] == "frontier"
    cands = out["remedy"]["candidates"]
    assert (
        cands["frontier"]["backtest_mean_abs_log_error"]
        < cands["none"]["backtest_mean_abs_log_error"]
    )
    assert out["a"] == pytest.approx(0.5, abs=0.05) and out["calibration"]["axes"]
    assert png.stat().st_size > 10_000
    text = run(*args, "--backtest", "--remedy", "frontier")
    assert text.exit_code == 0, text.output
    assert "frontier form" in text.output and "IsoFLOP slices" in text.output
    # the remedy table (its cells may wrap on a narrow terminal): the frontier's row
    # names its exponents instead of alpha and beta
    assert "(chosen)" in text.output and "N_opt" in text.output
    law = load_law("front")
    p = law.params
    pred = run_json("predict", "--law", "front", "--params", "1e9", "--tokens", "2e10")
    assert pred["predictions"][0]["loss"] == pytest.approx(by_hand(p, 1e9, 2e10), rel=1e-9)
    opt = run_json("optimal", "--law", "front", "--flops", "1e21")
    assert opt["params"] == pytest.approx(p["k_n"] * 1e21 ** p["a"], rel=1e-9)
    r = run("fit", csv, "--law", "moe", "--backtest", "--remedy", "frontier")
    assert r.exit_code == 2 and "--remedy frontier" in r.output


def test_cli_prints_and_saves_an_average_with_a_frontier_member(tmp_path, monkeypatch, averaged):
    import derisk.scaling

    data, _, _, avg, bt, weights = averaged
    record = {
        "chosen": "average",
        "options": {},
        "by": "lowest mean |log error| of the backtest's held-out larger runs",
        "candidates": {
            "frontier": {
                "backtest_mean_abs_log_error": 0.01,
                "backtest_coverage": 0.5,
                "status": 0,
                "flags": [],
                "params": dict(averaged[1]["frontier"].params),
                "form": "frontier",
            },
            "average": {
                "backtest_mean_abs_log_error": 0.009,
                "backtest_coverage": 0.6,
                "status": avg.status,
                "flags": list(avg.flags),
                "params": dict(avg.params),
                "weights": weights,
            },
        },
    }
    import dataclasses

    chosen = dataclasses.replace(avg, remedy=record)
    monkeypatch.setattr(derisk.scaling, "fit_calibrated", lambda *a, **k: (chosen, bt))
    monkeypatch.setenv("DERISK_LAWS", str(tmp_path / "laws"))
    csv = _csv(tmp_path / "iso.csv", data)
    png = tmp_path / "avg.png"
    out = run_json("fit", csv, "--backtest", "--save", "avg", "--png", png, "--bootstrap", "2")
    assert [m["form"] for m in out["members"]] == ["chinchilla", "frontier"]
    assert out["remedy"]["chosen"] == "average" and png.stat().st_size > 10_000
    text = run("fit", csv, "--backtest", "--bootstrap", "2")
    assert text.exit_code == 0, text.output
    assert "model average of 2 fits" in text.output and "(chosen)" in text.output
    assert "weights" in text.output
    back = load_law("avg")
    assert [m.form for m in back.members] == ["chinchilla", "frontier"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeriskWarning)
        pred = run_json("predict", "--law", "avg", "--params", "2e9", "--tokens", "4e10")
    X = law_inputs("chinchilla", 2e9, 4e10)
    assert pred["predictions"][0]["loss"] == pytest.approx(avg.predict(X)[0], rel=1e-12)
    opt = run_json("optimal", "--law", "avg", "--flops", "1e21")
    assert opt["method"] == "numeric (model average, C = 6ND)"


def test_fit_calibrated_rejects_the_frontier_for_a_moe_law():
    with pytest.raises(ValueError, match="dense law"):
        fit_calibrated(frontier_form_sweep(), "moe", remedy="frontier")
