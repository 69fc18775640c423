"""Held-out check of the remedies on synthetic IsoFLOP sweeps whose plain fit is degenerate.

Each sweep has 9 compute budgets 1e17 x 2^k (k = 0..8), 9 model sizes per budget
log-spaced over +-1 decade around the true optimum, D = C / 6N, 1% log-normal noise. The
law is fitted on the 5 smallest budgets (<= 1.6e18 FLOPs) with `fit_calibrated` (bootstrap
100, backtest, remedies chosen by `auto`), and the 36 runs at the 4 larger budgets (2x to
16x the largest fitted) are predicted: mean absolute error and how many fall inside the
calibrated 80% band. Beside auto's choice: the plain fit (`remedy="none"`), the
frontier forced into the comparison (`remedy="frontier"`: the frontier or the plain fit,
whichever backtests better) and the IsoFLOP frontier alone (calibrated from its own
backtest), on the same split.

Laws:
- steep (Chinchilla's form): E 1.69, A = B = 4e5, alpha = beta = 0.75; the plain fit's
  exponents leave the published range 0.1-0.7;
- shallow (Chinchilla's form): E 1.0, A 50, B 60, alpha 0.12, beta 0.10; the plain fit's
  E runs to 0 and an exponent leaves the range;
- frontier (the frontier's own form): N_opt = 3e8 (C / 1e19)^0.5, L* = 1.8 + 0.6 (C /
  1e19)^-0.15, curvature 0.04; the plain fit is healthy, so auto tries no remedy.

Usage: PYTHONPATH=. python benchmarks/heldout_isoflop.py [SEEDS]   (default 3 seeds)
"""

import sys
import time
import warnings

import numpy as np

from derisk.errors import DeriskWarning
from derisk.scaling import (
    FRONTIER,
    backtest,
    calibrate,
    fit_calibrated,
    fit_frontier,
    fit_law,
    law_inputs,
    run_data,
)

LAWS = {
    "steep": {"E": 1.69, "A": 4e5, "B": 4e5, "alpha": 0.75, "beta": 0.75},
    "shallow": {"E": 1.0, "A": 50.0, "B": 60.0, "alpha": 0.12, "beta": 0.10},
    "frontier": np.array([np.log(1e19), np.log(3e8), 0.5, 1.8, np.log(0.6), 0.15, np.log(0.04), 0]),
}
BUDGETS = 1e17 * 2.0 ** np.arange(9)
FITTED = 5  # budgets fitted; the rest are held out


def sweep(p, seed):
    rng = np.random.default_rng(seed)
    C = np.repeat(BUDGETS, 9)
    spread = 10 ** np.tile(np.linspace(-1, 1, 9), len(BUDGETS))
    if isinstance(p, np.ndarray):  # the frontier's own form
        N = np.exp(p[1] + p[2] * (np.log(C) - p[0])) * spread
        D = C / (6 * N)
        L = np.exp(FRONTIER.log_predict(p, np.stack([np.log(N), np.log(D), 0 * N], 1)))
    else:
        al, be = p["alpha"], p["beta"]
        G = (al * p["A"] / (be * p["B"])) ** (1 / (al + be))
        N = G * (C / 6) ** (be / (al + be)) * spread
        D = C / (6 * N)
        L = p["E"] + p["A"] / N**al + p["B"] / D**be
    return N, D, C, L * np.exp(rng.normal(0, 0.01, len(N)))


def score(fit, N, D, L, held):
    inside, err = 0, []
    for i in held:
        X = law_inputs("chinchilla", N[i], D[i], 1, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeriskWarning)
            lo, hi = fit.predictive_interval(X)
        inside += bool(lo <= L[i] <= hi)
        err.append(abs(L[i] / fit.predict(X)[0] - 1))
    return inside, float(np.mean(err))


seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
for name, p in LAWS.items():
    totals = {key: [0, []] for key in ("auto", "none", "forced frontier", "frontier alone")}
    for seed in range(seeds):
        N, D, flops, L = sweep(p, seed)
        small = flops <= BUDGETS[FITTED - 1] * 1.01
        held = np.flatnonzero(~small)
        data = run_data(N[small], D[small], L[small], source=f"{name} seed {seed}")
        plain = fit_law(data)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeriskWarning)
            auto, _ = fit_calibrated(data, bootstrap=100, seed=0)
            seconds = time.perf_counter() - t0
            none, _ = fit_calibrated(data, bootstrap=100, seed=0, remedy="none")
            forced, _ = fit_calibrated(data, bootstrap=100, seed=0, remedy="frontier")
            front = fit_frontier(data, bootstrap=100, seed=0)
            front = calibrate(front, backtest(data, form="frontier", seed=0), data)
        cands = {**(auto.remedy or {}).get("candidates", {}), **forced.remedy["candidates"]}
        scores = ", ".join(
            f"{k} {v['backtest_mean_abs_log_error']:.4f}"
            if "error" not in v
            else f"{k}: {v['error']}"
            for k, v in cands.items()
        )
        print(
            f"{name} seed {seed}: plain flags {', '.join(plain.flags) or 'none'}; auto "
            f"({seconds:.1f} s) chose {(auto.remedy or {}).get('chosen')}, forced frontier "
            f"chose {forced.remedy['chosen']}; backtest "
            f"|log error|: {scores}"
        )
        for key, fit in (
            ("auto", auto),
            ("none", none),
            ("forced frontier", forced),
            ("frontier alone", front),
        ):
            k, e = score(fit, N, D, L, held)
            totals[key][0] += k
            totals[key][1].append(e)
            print(f"  {key}: {k} of {len(held)} inside the 80% band, mean abs error {100 * e:.2f}%")
    n = seeds * len(held)
    for key, (k, e) in totals.items():
        print(
            f"{name}, {seeds} seeds, {key}: {k} of {n} ({100 * k / n:.0f}%) inside, "
            f"mean abs error {100 * np.mean(e):.2f}%"
        )
