"""Remedies for degenerate fits (E bounded, exponent priors, pure power laws), chosen by
backtest error, and the calibration's quantile over backtest cuts."""

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from derisk.cli import app
from derisk.scaling import (
    FIT_DEGENERATE,
    backtest,
    calibrate,
    extrapolation_scale,
    fit_calibrated,
    fit_law,
    load_law,
    remedy_options,
    run_data,
    save_law,
)


def kaplan_data(n=60, seed=0):
    """Kaplan et al.'s form (no irreducible loss) over two decades: the chinchilla fit
    runs E to 0 and alpha below the published range."""
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e9), n))
    D = np.exp(rng.uniform(np.log(1e9), np.log(1e11), n))
    L = ((8.8e13 / N) ** (0.076 / 0.095) + 5.4e13 / D) ** 0.095
    return run_data(N, D, L * np.exp(rng.normal(0, 0.01, n)))


def test_exponent_prior_gradient_matches_finite_differences():
    from derisk.scaling._fit import LAWS, _inputs, _Problem

    data = kaplan_data(30)
    X, y = _inputs(LAWS["chinchilla"], data)
    p = _Problem(LAWS["chinchilla"], X, y, 1e-3)
    p.prior = (np.array([3, 4]), 0.35, 0.15, 0.02)
    theta = np.array([2.0, 4.0, 0.3, 0.2, 0.5])
    _, g = p.value_and_grad(theta, None)
    h = 1e-6
    fd = [
        (p.value_and_grad(theta + h * e, None)[0] - p.value_and_grad(theta - h * e, None)[0])
        / (2 * h)
        for e in np.eye(5)
    ]
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-9)
    # the prior's share, by hand: w (theta - mu) / sd^2 on alpha and beta only
    p0 = _Problem(LAWS["chinchilla"], X, y, 1e-3)
    _, g0 = p0.value_and_grad(theta, None)
    np.testing.assert_allclose(
        g - g0, [0, 0, 0, 0.02 * (0.2 - 0.35) / 0.15**2, 0.02 * (0.5 - 0.35) / 0.15**2]
    )


def test_e_min_bounds_e_and_the_prior_pulls_exponents():
    data = kaplan_data()
    plain = fit_law(data, starts=16)
    assert plain.status == FIT_DEGENERATE and "E_at_zero" in plain.flags
    floor = fit_law(data, starts=16, bootstrap=4, E_min=1.0)
    assert floor.params["E"] >= 1.0 - 1e-9
    assert np.all(np.exp(floor.bootstrap[:, 2]) >= 1.0 - 1e-9)
    pinned = fit_law(data, starts=16, exponent_prior=(0.35, 1e-4))  # a prior that decides
    assert pinned.params["alpha"] == pytest.approx(0.35, abs=1e-3)
    assert pinned.params["beta"] == pytest.approx(0.35, abs=1e-3)
    loose = fit_law(data, starts=16, exponent_prior=(0.35, 1e6))  # one that does not
    assert loose.params["alpha"] == pytest.approx(plain.params["alpha"], abs=1e-3)
    weak = fit_law(data, starts=16, exponent_prior=(0.35, 0.15))

    def dist(f):  # the prior's penalty, up to its weight
        return (f.params["alpha"] - 0.35) ** 2 + (f.params["beta"] - 0.35) ** 2

    # a penalised optimum cannot sit farther from the prior than the unpenalised one (it
    # would then be worse on both terms), and it gives up some fit to come closer
    assert dist(pinned) < dist(weak) < dist(plain)
    assert weak.loss > plain.loss
    with pytest.raises(ValueError, match="fix_E or E_min"):
        fit_law(data, fix_E=1.0, E_min=0.5)
    with pytest.raises(ValueError, match="exponent_prior"):
        fit_law(data, exponent_prior=(0.35, 0.0))


@pytest.fixture(scope="module")
def remedied():
    data = kaplan_data()
    fit, bt = fit_calibrated(data, bootstrap=4, starts=16, backtest_bootstrap=3)
    return data, fit, bt


def test_a_degenerate_fit_tries_every_remedy_and_keeps_the_best(remedied):
    data, fit, bt = remedied
    r = fit.remedy
    assert set(r["candidates"]) == {"none", "e_floor", "prior", "power", "average"}
    errors = {k: v["backtest_mean_abs_log_error"] for k, v in r["candidates"].items()}
    assert r["chosen"] == min(errors, key=errors.get)
    # one candidate's score recomputed independently, from a fresh backtest of its options
    again = backtest(data, bootstrap=3, seed=0, options=remedy_options("e_floor", data))
    assert errors["e_floor"] == pytest.approx(np.mean([abs(x.log_error) for x in again.rows]))
    assert r["candidates"]["e_floor"]["params"]["E"] >= 0.5 * data.loss.min() - 1e-9
    assert r["candidates"]["power"]["params"]["E"] < 1e-6
    # the kept fit carries its own backtest and calibration
    assert fit.calibration is not None and fit.backtest == bt.as_dict()
    chosen = remedy_options(r["chosen"], data)
    if "E_min" in chosen:
        assert fit.params["E"] >= chosen["E_min"] - 1e-9


def test_the_remedy_survives_a_save_and_a_healthy_fit_gets_none(remedied, tmp_path):
    from tests.test_backtest import synthetic

    _, fit, _ = remedied
    back = load_law(str(save_law(fit, tmp_path / "r.json")))
    assert back.remedy == json.loads(json.dumps(fit.remedy))
    healthy, _ = fit_calibrated(synthetic(60, 0.01, 1), bootstrap=4, starts=8, backtest_bootstrap=3)
    assert healthy.status == 0 and healthy.remedy is None


def test_calibration_takes_the_quantile_over_cuts(remedied):
    data, fit, bt = remedied
    cal = calibrate(fit, bt, data)
    for axis, term in cal.calibration["axes"].items():
        if term.get("borrowed"):
            continue
        rows = [r for r in bt.rows if r.by == axis]
        cuts = sorted({r.cut for r in rows})
        per_cut = [extrapolation_scale([r for r in rows if r.cut == c]) for c in cuts]
        assert term["per_cut"] == pytest.approx(per_cut)
        # the finite-sample median: the ceil((m + 1) / 2)-th smallest of m cuts' scales
        want = sorted(per_cut)[-(-(len(per_cut) + 1) // 2) - 1]
        assert term["per_decade"] == pytest.approx(want)


def test_cli_remedy_flags_are_checked(tmp_path):
    csv = tmp_path / "runs.csv"
    d = kaplan_data(20)
    csv.write_text(
        "params,tokens,loss\n"
        + "".join(f"{n},{t},{l}\n" for n, t, l in zip(d.params, d.tokens, d.loss, strict=True))
    )
    r = CliRunner().invoke(app, ["fit", str(csv), "--remedy", "bogus"])
    assert r.exit_code == 2 and "--remedy" in r.output and "e_floor" in r.output
    r = CliRunner().invoke(app, ["fit", str(csv), "--remedy", "prior"])
    assert r.exit_code == 2 and "--backtest" in r.output
    r = CliRunner().invoke(
        app, ["fit", str(csv), "--remedy", "e_floor", "--backtest", "--fix-E", "1"]
    )
    assert r.exit_code == 2 and "--fix-E" in r.output


def test_fit_save_by_name_keeps_the_previous_version(tmp_path, monkeypatch):
    monkeypatch.setenv("DERISK_LAWS", str(tmp_path / "laws"))
    csv = tmp_path / "runs.csv"
    d = kaplan_data(20)
    csv.write_text(
        "params,tokens,loss\n"
        + "".join(f"{n},{t},{l}\n" for n, t, l in zip(d.params, d.tokens, d.loss, strict=True))
    )
    args = ["fit", str(csv), "--starts", "4", "--save", "mine", "--json"]
    first = json.loads(CliRunner().invoke(app, [*args, "--seed", "1"]).stdout)
    second = json.loads(CliRunner().invoke(app, [*args, "--seed", "2"]).stdout)
    assert first["saved"] == second["saved"] == str(tmp_path / "laws" / "mine.json")
    kept = json.loads((tmp_path / "laws" / "mine@1.json").read_text())
    now = json.loads((tmp_path / "laws" / "mine.json").read_text())
    assert kept["provenance"]["seed"] == 1 and now["provenance"]["seed"] == 2
    assert now["provenance"]["previous"]["version"] == 1
    assert load_law("mine@1").theta.tolist() == kept["theta"]


def test_a_model_average_predicts_the_weighted_log_mean(tmp_path):
    from derisk.scaling._remedy import average_fits

    data = kaplan_data()
    opts = {"none": {}, "e_floor": remedy_options("e_floor", data)}
    fits = {n: fit_law(data, starts=8, bootstrap=4, **o) for n, o in opts.items()}
    tests = {n: backtest(data, bootstrap=3, starts=8, options=o) for n, o in opts.items()}
    avg, bt, weights = average_fits(fits, tests)
    mse = {n: np.mean([r.log_error**2 for r in tests[n].rows]) for n in opts}
    inv = {n: 1 / v for n, v in mse.items()}
    for n in opts:
        assert weights[n] == pytest.approx(inv[n] / sum(inv.values()))
    # the law by hand: L = E + A / N^alpha + B / D^beta, members mixed in log space
    N, D = 3e9, 3e11
    logs = []
    for n in opts:
        p = fits[n].params
        logs.append(
            weights[n] * np.log(p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"])
        )
    from derisk.scaling import law_inputs

    assert avg.predict(law_inputs("chinchilla", N, D))[0] == pytest.approx(np.exp(sum(logs)))
    # its backtest: each held-out run's prediction is the same weighted log mean
    row = bt.rows[0]
    preds = {
        n: next(
            r for r in tests[n].rows if (r.by, r.cut, r.run) == (row.by, row.cut, row.run)
        ).predicted
        for n in opts
    }
    assert row.predicted == pytest.approx(np.exp(sum(weights[n] * np.log(preds[n]) for n in opts)))
    back = load_law(str(save_law(avg, tmp_path / "avg.json")))
    assert [m.weight for m in back.members] == pytest.approx([m.weight for m in avg.members])
    assert [m.form for m in back.members] == ["chinchilla", "chinchilla"]
    X = law_inputs("chinchilla", N, D)
    assert back.predict(X)[0] == pytest.approx(avg.predict(X)[0], rel=1e-12)
    # without refits the average's p is about its own point (not its heaviest member's):
    # the point is the median of a log-normal around it
    bare = dataclasses.replace(avg, bootstrap=None)
    assert bare.prob_below(X, avg.predict(X)[0])[0] == pytest.approx(0.5, abs=1e-9)


def steep_isoflop(seed=0, noise=0.01):
    """An IsoFLOP sweep (7 budgets, 9 sizes each around the optimum) from a law whose
    exponents (0.75) are outside the published range: the plain fit is flagged."""
    p = {"E": 1.69, "A": 4e5, "B": 4e5, "alpha": 0.75, "beta": 0.75}
    rng = np.random.default_rng(seed)
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    budgets = np.array([1e17, 3e17, 1e18, 3e18, 1e19, 3e19, 1e20])
    C = np.repeat(budgets, 9)
    N = G * (C / 6) ** 0.5 * 10 ** np.tile(np.linspace(-1, 1, 9), len(budgets))
    D = C / (6 * N)
    L = p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]
    return run_data(N, D, L * np.exp(rng.normal(0, noise, len(N))))


def test_auto_tries_the_frontier_exactly_when_the_runs_have_isoflop_slices(remedied):
    from derisk.scaling._remedy import has_isoflop_slices

    # no slices (Kaplan's runs at random sizes and tokens): never a candidate
    data, fit, _ = remedied
    assert not has_isoflop_slices(data)
    assert "frontier" not in fit.remedy["candidates"]
    assert "frontier" not in fit.remedy["candidates"]["average"]["weights"]
    # slices and a degenerate plain fit: a candidate, scored, and a member of the average
    iso = steep_isoflop()
    assert has_isoflop_slices(iso)
    fit, _ = fit_calibrated(iso, bootstrap=2, starts=8, backtest_bootstrap=2)
    cands = fit.remedy["candidates"]
    assert fit_law(iso, starts=8).status == FIT_DEGENERATE
    assert set(cands) == {"none", "e_floor", "prior", "power", "frontier", "average"}
    assert (
        cands["frontier"]["form"] == "frontier"
        and "backtest_mean_abs_log_error" in cands["frontier"]
    )
    assert set(cands["average"]["weights"]) == {"none", "e_floor", "prior", "power", "frontier"}
    assert cands["average"]["forms"]["frontier"] == "frontier"
    errors = {k: v["backtest_mean_abs_log_error"] for k, v in cands.items()}
    assert fit.remedy["chosen"] == min(errors, key=errors.get)


def test_a_backtest_cut_without_slices_drops_the_frontier_and_says_why():
    from derisk.scaling._backtest import default_cuts
    from derisk.scaling._remedy import has_isoflop_slices

    # slices only at the three largest budgets; below them 30 runs at random sizes whose
    # budgets are 17% apart, more than a slice's 10%: no two share a slice
    rng = np.random.default_rng(3)
    low_C = np.geomspace(1e16, 1e18, 30)
    low_N = np.exp(rng.uniform(np.log(1e7), np.log(3e8), 30))
    low_D = low_C / (6 * low_N)
    C = np.repeat([1e19, 3e19, 1e20], 9)
    hi_N = np.sqrt(C / 120) * 10 ** np.tile(np.linspace(-1, 1, 9), 3)
    N, D = np.concatenate([low_N, hi_N]), np.concatenate([low_D, C / (6 * hi_N)])
    L = 1.69 + 406.4 / N**0.34 + 410.7 / D**0.28
    data = run_data(N, D, L * np.exp(rng.normal(0, 0.005, len(N))))
    assert has_isoflop_slices(data)
    cut = default_cuts(data, "compute")[0]
    compute = 6 * N * D
    assert not has_isoflop_slices(data.subset(compute <= cut))
    fit, bt = fit_calibrated(data, remedy="frontier", bootstrap=2, starts=8, backtest_bootstrap=2)
    why = fit.remedy["candidates"]["frontier"]["error"]
    assert f"compute cut at {cut:.3g}" in why and "no IsoFLOP structure" in why
    assert "same held-out runs" in why and fit.remedy["chosen"] == "none" and fit.form is None
