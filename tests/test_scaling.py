import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from derisk.cli import app
from derisk.errors import DataError
from derisk.scaling import (
    LAWS,
    effective_params,
    fit_law,
    flops_per_token,
    isoflop_fit,
    load_runs_csv,
    objective,
    optimal_allocation,
    run_data,
)

# Besiroglu et al. (2024)'s refit of Chinchilla: the law the synthetic runs come from.
TRUE = {"E": 1.82, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}


def chinchilla(N, D, p=TRUE):
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def synthetic(n, noise, seed, n_range=(4e7, 1.6e10), d_range=(5e9, 5e11)):
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(*np.log(n_range), n))
    D = np.exp(rng.uniform(*np.log(d_range), n))
    L = chinchilla(N, D) * np.exp(rng.normal(0, noise, n))
    return run_data(N, D, L)


def write_csv(path, rows, header="params,tokens,loss"):
    path.write_text(header + "\n" + "\n".join(",".join(str(v) for v in r) for r in rows) + "\n")
    return path


def test_gradient_matches_finite_differences():
    data = synthetic(50, 0.01, 0)
    law = LAWS["chinchilla"]
    X = np.stack([np.log(data.params), np.log(data.tokens), np.zeros(data.n)], 1)
    y = np.log(data.loss)
    th = np.array([5.0, 7.0, 0.5, 0.3, 0.3])
    _, g = objective(law, th, X, y)
    eye = np.eye(5) * 1e-6
    num = [(objective(law, th + e, X, y)[0] - objective(law, th - e, X, y)[0]) / 2e-6 for e in eye]
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-8)


def test_recovers_known_parameters_without_noise():
    fit = fit_law(synthetic(200, 0.0, 1))
    for k, v in TRUE.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-3), k
    assert fit.starts_at_optimum >= 2 and fit.success
    assert fit.seconds < 30  # seconds, not minutes, for a few hundred points


def test_recovers_known_parameters_with_noise():
    fit = fit_law(synthetic(400, 0.005, 2))
    assert fit.params["E"] == pytest.approx(TRUE["E"], rel=0.03)
    assert fit.params["alpha"] == pytest.approx(TRUE["alpha"], rel=0.1)
    assert fit.params["beta"] == pytest.approx(TRUE["beta"], rel=0.1)
    assert fit.sigma_log == pytest.approx(0.005, rel=0.3)


def test_predictive_interval_is_calibrated():
    """80% predictive intervals at new (N, D) inside the data's range cover ~80% of fresh
    noisy runs, pooled over several independent datasets."""
    hits, total = 0, 0
    for seed in range(6):
        fit = fit_law(synthetic(120, 0.02, 10 + seed), bootstrap=40, starts=16, seed=seed)
        new = synthetic(100, 0.02, 100 + seed)
        X = np.stack([np.log(new.params), np.log(new.tokens), np.zeros(new.n)], 1)
        s = fit.predictive_samples(X, rng=np.random.default_rng(seed))
        lo, hi = np.quantile(s, 0.1, axis=0), np.quantile(s, 0.9, axis=0)
        hits += int(np.sum((new.loss >= lo) & (new.loss <= hi)))
        total += new.n
    assert 0.72 <= hits / total <= 0.88, hits / total


def test_extrapolates_from_small_runs_to_large():
    """Fit on runs below 2e9 params, predict held-out runs at 4-16x the largest."""
    small = synthetic(150, 0.005, 3, n_range=(4e7, 2e9))
    fit = fit_law(small, bootstrap=30, starts=16)
    big = synthetic(40, 0.0, 4, n_range=(8e9, 3.2e10))
    X = np.stack([np.log(big.params), np.log(big.tokens), np.zeros(big.n)], 1)
    rel = np.abs(fit.predict(X) - big.loss) / big.loss
    assert rel.max() < 0.02
    p = fit.prob_below(X, float(np.median(big.loss)))
    assert np.all((p >= 0) & (p <= 1))


def test_fixed_irreducible_loss():
    data = synthetic(150, 0.005, 11)
    fit = fit_law(data, fix_E=1.5, starts=16)
    assert fit.params["E"] == pytest.approx(1.5)
    free = fit_law(data, starts=16)
    assert free.loss <= fit.loss  # fixing a parameter cannot fit better
    with pytest.raises(ValueError, match="fix_E"):
        fit_law(data, fix_E=-1.0)


def test_compute_optimal_closed_form_and_numeric():
    fit = fit_law(synthetic(200, 0.0, 5))
    a = optimal_allocation(fit, 1e23)
    assert 6 * a.params * a.tokens == pytest.approx(1e23, rel=1e-9)
    # the closed form is the minimum along C = 6ND
    for f in (0.7, 1.4):
        n = a.params * f
        assert chinchilla(n, 1e23 / 6 / n) > chinchilla(a.params, a.tokens)
    b = optimal_allocation(fit, 1e23, exact=True)
    assert b.tokens * flops_per_token(b.params) == pytest.approx(1e23, rel=1e-9)
    assert b.params < a.params  # attention FLOPs make parameters dearer
    assert a.params == pytest.approx(b.params, rel=0.3)


def test_isoflop_approach_2_recovers_exponent():
    # IsoFLOP slices of a noiseless law: N_opt ~ C^(beta/(alpha+beta)) (Hoffmann eq. 4)
    Ns, Ds = [], []
    for C in np.geomspace(1e18, 1e21, 6):
        for n in np.geomspace(1e7, 1e10, 31):
            Ns.append(n)
            Ds.append(C / 6 / n)
    Ns, Ds = np.array(Ns), np.array(Ds)
    iso = isoflop_fit(run_data(Ns, Ds, chinchilla(Ns, Ds)))
    expect = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    assert iso.a == pytest.approx(expect, abs=0.02)
    with pytest.raises(DataError, match="IsoFLOP"):
        isoflop_fit(synthetic(60, 0.0, 6))


def test_moe_laws_recover_and_give_effective_params():
    rng = np.random.default_rng(7)
    n = 300
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e9), n))
    D = np.exp(rng.uniform(np.log(1e9), np.log(1e11), n))
    X = rng.choice([1, 4, 8, 16, 32], n).astype(float)
    L = 1.7 + 300.0 / (N**0.33 * X**0.1) + 1500.0 / D**0.35
    fit = fit_law(run_data(N, D, L, experts=X), "moe_experts")
    assert fit.params["gamma"] == pytest.approx(0.1, rel=0.02)
    assert fit.params["alpha"] == pytest.approx(0.33, rel=0.02)
    # 8 experts are worth N * 8^(0.1/0.33) dense parameters
    assert effective_params(fit, 1e8, experts=8) == pytest.approx(1e8 * 8 ** (0.1 / 0.33), rel=0.05)
    G = rng.choice([1, 2, 4, 8, 16], n).astype(float)
    L2 = 1.6 + (200.0 / G**0.5 + 100.0) / N**0.3 + 1800.0 / D**0.34
    fit2 = fit_law(run_data(N, D, L2, granularity=G), "moe")
    assert fit2.params["gamma"] == pytest.approx(0.5, rel=0.05)
    assert fit2.params["E"] == pytest.approx(1.6, rel=0.02)
    assert effective_params(fit2, 1e8, granularity=8) > 1e8


def test_degenerate_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="distinct `params`"):
        run_data([1e8] * 10, np.geomspace(1e9, 1e11, 10), np.linspace(3, 2, 10)).require(
            LAWS["chinchilla"]
        )
    with pytest.raises(DataError, match="row 3"):
        run_data([1e8, 2e8, -1.0], [1e9] * 3, [3.0] * 3)
    p = write_csv(tmp_path / "bad.csv", [[1e8, 1e9, 3.0], [2e8, "nan", 2.9]])
    with pytest.raises(DataError, match=r"bad.csv:3: column `tokens`"):
        load_runs_csv(p)


runner = CliRunner()


def test_cli_fit_json_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("DERISK_LAWS", str(tmp_path / "laws"))
    data = synthetic(60, 0.005, 8)
    p = write_csv(tmp_path / "runs.csv", zip(data.params, data.tokens, data.loss, strict=True))
    res = runner.invoke(
        app,
        [
            "fit",
            str(p),
            "--json",
            "--bootstrap",
            "10",
            "--starts",
            "8",
            "--save",
            "mylaw",
            "--png",
            str(tmp_path / "f.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for k in ("E", "A", "B", "alpha", "beta"):
        assert isinstance(out[k], float)
        lo, hi = out["intervals"][k]
        assert lo <= hi
    assert out["E"] == pytest.approx(TRUE["E"], rel=0.05)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    opt = runner.invoke(app, ["optimal", "--flops", "1e22", "--law", "mylaw", "--json"])
    assert opt.exit_code == 0, opt.output
    o = json.loads(opt.stdout)
    assert 6 * o["params"] * o["tokens"] == pytest.approx(1e22, rel=1e-6)
    assert o["loss_interval"][0] <= o["loss"] <= o["loss_interval"][1]
    # wrong columns, too few points, one size, unknown law, missing law: exit 2, no traceback
    cases = [
        (write_csv(tmp_path / "cols.csv", [[1, 2, 3]], header="N,D,L"), "missing column"),
        (write_csv(tmp_path / "few.csv", [[1e8, 1e9, 3.0]] * 3), "cannot fit"),
        (
            write_csv(
                tmp_path / "one.csv", [[1e8, 1e9 * (i + 1), 3.0 - 0.1 * i] for i in range(10)]
            ),
            "distinct",
        ),
    ]
    for path, msg in cases:
        r = runner.invoke(app, ["fit", str(path)])
        assert r.exit_code == 2 and msg in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["fit", str(p), "--min-tokens", "1e13"])
    assert r.exit_code == 2 and "0 runs cannot fit" in r.stderr
    r = runner.invoke(app, ["fit", str(p), "--law", "kaplan"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["optimal", "--flops", "1e22", "--law", "nope"])
    assert r.exit_code == 2 and "derisk fit" in r.stderr
    mapped = write_csv(
        tmp_path / "mapped.csv",
        zip(data.params, data.tokens, data.loss, strict=True),
        header="N,D,L",
    )
    r = runner.invoke(
        app,
        [
            "fit",
            str(mapped),
            "--params-col",
            "N",
            "--tokens-col",
            "D",
            "--loss-col",
            "L",
            "--bootstrap",
            "0",
            "--starts",
            "4",
            "--json",
        ],
    )
    assert r.exit_code == 0 and json.loads(r.stdout)["E"] == pytest.approx(out["E"], rel=0.05)


def test_shipped_law_loads_by_name(tmp_path, monkeypatch):
    from derisk.scaling import load_law

    monkeypatch.setenv("DERISK_LAWS", str(tmp_path))  # no user laws: the packaged one
    fit = load_law("cpu-dense")
    assert fit.law == "chinchilla" and fit.bootstrap is not None
    # it was fitted to the shipped runs: it must describe them to within a few percent
    from pathlib import Path

    import derisk.estimators

    csv = Path(derisk.estimators.__file__).parent / "data" / "runs_cpu_dense.csv"
    data = load_runs_csv(csv)
    data = data.subset(data.tokens >= 9e4)
    X = np.stack([np.log(data.params), np.log(data.tokens), np.zeros(data.n)], 1)
    r = np.log(fit.predict(X) / data.loss)
    assert np.sqrt(np.mean(r**2)) < 0.05 and np.median(np.abs(r)) < 0.03
    assert fit.summary["setting"]["seq_len"] == ["64"]  # it knows how its runs were trained


def test_prediction_at_a_held_out_point_and_its_quantile():
    from derisk.scaling import predict_loss

    fit = fit_law(synthetic(150, 0.01, 21), bootstrap=30, starts=16)
    N, D = 3e9, 2e11  # inside the fitted range, not a fitted run
    true = chinchilla(N, D)
    p = predict_loss(fit, N, D)
    assert p.loss == pytest.approx(true, rel=0.01)
    assert p.interval[0] < true < p.interval[1]
    assert p.params_beyond < 1 and p.tokens_beyond < 1
    on = predict_loss(fit, N, D, observed=true)
    assert 0.1 < on.quantile < 0.9 and abs(on.error) < 0.01
    off = predict_loss(fit, N, D, observed=1.5 * true)
    assert off.quantile > 0.999 and off.error == pytest.approx(1.5 * true / p.loss - 1)
    far = predict_loss(fit, 6.4e10, 2e12)
    assert far.params_beyond == pytest.approx(6.4e10 / fit.summary["params"][1])


def test_cli_predict_matches_the_law_formula(tmp_path, monkeypatch):
    """`derisk predict` on the shipped law gives E + A/N^alpha + B/D^beta from its file."""
    from pathlib import Path

    import derisk.estimators

    monkeypatch.setenv("DERISK_LAWS", str(tmp_path))
    law = Path(derisk.estimators.__file__).parent / "data" / "laws" / "cpu-dense.json"
    p = json.loads(law.read_text())["params"]
    r = CliRunner().invoke(
        app,
        [
            "predict",
            "--law",
            "cpu-dense",
            "--params",
            "2e6",
            "--tokens",
            "1e7",
            "--below",
            "1.2",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)["predictions"][0]
    assert d["loss"] == pytest.approx(chinchilla(2e6, 1e7, p), rel=1e-9)
    assert d["interval"][0] < d["loss"] < d["interval"][1]
    assert 0 <= d["p_below"] <= 1 and d["params_beyond"] > 1
    # --d-model: the model `derisk train --d-model 384` trains (2 layers, SwiGLU 8/3 d)
    r = CliRunner().invoke(app, ["predict", "--d-model", "384", "--tokens", "3e6", "--json"])
    d = 384
    by_hand = 2 * (4 * d * d + 2 * d + 3 * d * (8 * d // 3)) + d
    assert json.loads(r.stdout)["predictions"][0]["params"] == by_hand == 3_540_864
    for args in (
        ["--d-model", "64", "--params", "1e5", "--tokens", "1e6"],
        ["--d-model", "64", "--arch", "foo", "--tokens", "1e6"],
        ["--params", "1e6"],
        ["--tokens", "1e6"],
        ["--params", "-1", "--tokens", "1"],
        ["--law", "nope", "--params", "1e6", "--tokens", "1e6"],
    ):
        bad = CliRunner().invoke(app, ["predict", *args])
        assert bad.exit_code == 2 and "Traceback" not in bad.output, args


# ---------------------------------------------------------------- degenerate fits


def _power_data(seed, E, A, alpha, B, beta, noise=0.003, n=200):
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(4e7), np.log(1.6e10), n))
    D = np.exp(rng.uniform(np.log(5e9), np.log(5e11), n))
    L = (E + A / N**alpha + B / D**beta) * np.exp(rng.normal(0, noise, n))
    return run_data(N, D, L)


def test_a_healthy_fit_has_status_ok():
    from derisk.scaling import FIT_OK

    fit = fit_law(synthetic(200, 0.005, 1))
    assert fit.status == FIT_OK and fit.flags == () and fit.success
    assert "converged" in fit.message


def test_no_irreducible_loss_is_e_at_its_bound():
    from derisk.scaling import FIT_DEGENERATE

    fit = fit_law(_power_data(0, 0.0, 482.0, 0.3, 2085.0, 0.3))
    assert fit.status == FIT_DEGENERATE and "E_at_zero" in fit.flags
    assert "E = " in fit.message and "--fix-E" in fit.message
    held = fit_law(_power_data(0, 0.0, 482.0, 0.3, 2085.0, 0.3), fix_E=0.5)
    assert "E_at_zero" not in held.flags  # a held E is the user's choice, not a bound


def test_an_exponent_outside_the_published_range_is_named():
    fit = fit_law(_power_data(1, 1.8, 3.0, 0.05, 2085.0, 0.36))
    assert "alpha_range" in fit.flags and "beta_range" not in fit.flags
    assert "alpha = 0.0" in fit.message and "0.1-0.7" in fit.message


def test_diagnose_on_constructed_parameters():
    from derisk.scaling import diagnose

    good = np.array([np.log(482.0), np.log(2085.0), np.log(1.8), 0.34, 0.37])
    assert diagnose("chinchilla", good, 2.0) == ((), [])
    at_ceiling = good.copy()
    at_ceiling[2] = np.log(2.0)
    assert diagnose("chinchilla", at_ceiling, 2.0)[0] == ("E_at_ceiling",)
    bounds = good.copy()
    bounds[3], bounds[4] = -0.2, 3.0
    assert diagnose("chinchilla", bounds, 2.0)[0] == ("alpha_at_bound", "beta_at_bound")
    ridge = np.stack([good, good + [0, 0, 0, 0.2, 0]])  # same objective, alpha 0.2 apart
    flags, words = diagnose("chinchilla", good, 2.0, near_optimal=ridge)
    assert flags == ("starts_disagree",) and "alpha 0.2 apart" in words[0]
    assert diagnose("chinchilla", good, 2.0, near_optimal=ridge[:1])[0] == ()


def test_status_is_saved_shown_and_old_laws_are_diagnosed(tmp_path, monkeypatch):
    from derisk.scaling import fit_from_json, fit_to_json, load_law, save_law

    monkeypatch.setenv("DERISK_LAWS", str(tmp_path))
    fit = fit_law(_power_data(0, 0.0, 482.0, 0.3, 2085.0, 0.3))
    save_law(fit, "flat")
    back = load_law("flat")
    assert (back.status, back.flags, back.message) == (fit.status, fit.flags, fit.message)
    old = fit_to_json(fit)
    for key in ("status", "message", "flags", "backtest", "calibration"):
        del old[key]
    again = fit_from_json(json.loads(json.dumps(old)))
    assert again.status == fit.status and "E_at_zero" in again.flags
    assert load_law("cpu-dense").status == 0  # the shipped laws load, healthy
    flat = _power_data(0, 0.0, 482.0, 0.3, 2085.0, 0.3, n=60)
    rows = zip(flat.params, flat.tokens, flat.loss, strict=True)
    csv = write_csv(tmp_path / "flat.csv", rows)
    r = CliRunner().invoke(app, ["fit", str(csv), "--bootstrap", "0", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["status"] == 1 and "E_at_zero" in out["flags"] and "E = " in out["message"]
    r = CliRunner().invoke(app, ["fit", str(csv), "--bootstrap", "0"])
    assert "degenerate fit: E = " in " ".join(r.stdout.split())


EPOCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "chinchilla_epoch.csv"


@pytest.mark.skipif(not EPOCH.exists(), reason="../shared/data/chinchilla_epoch.csv is absent")
def test_epochs_chinchilla_points_give_epochs_fit():
    """Besiroglu et al. (2024): the 240 lowest-loss of Epoch's 245 points, approach 3,
    give E 1.8172, A 482.01, B 2085.43, alpha 0.3478, beta 0.3658 (their s.e. 0.03 for E,
    0.02 for the exponents); the fit is healthy."""
    import csv

    rows = sorted(csv.DictReader(EPOCH.open()), key=lambda r: float(r["loss"]))[:-5]
    N = np.array([float(r["Model Size"]) for r in rows])
    C = np.array([float(r["Training FLOP"]) for r in rows])
    fit = fit_law(run_data(N, C / (6 * N), np.array([float(r["loss"]) for r in rows])))
    assert fit.params["E"] == pytest.approx(1.8172, abs=0.03)
    assert fit.params["alpha"] == pytest.approx(0.3478, abs=0.02)
    assert fit.params["beta"] == pytest.approx(0.3658, abs=0.02)
    assert fit.status == 0 and fit.flags == ()
