"""Held-out check of the calibrated band on public data this project did not produce.

Epoch's 240 Chinchilla points (Hoffmann et al. 2022 Figure 4, less the 5 highest losses):
fit on the runs with N <= 5e9 (with backtest, calibration and, for a degenerate fit, the
remedies), predict the 17 larger ones, and count how many fall inside the 80% band:
uncalibrated, calibrated by pooling the backtest's runs (the first method, rebuilt here),
and calibrated per cut as `calibrate` does now (the finite-sample median over cuts of each
cut's scale, on bands that are the predictive mixture's own quantiles, tokens included).
The previous session's rule (the interpolated 80% quantile over cuts, on Monte Carlo bands,
no tokens axis) is measured by running this script's version of that session on its code:
`PYTHONPATH=OLD python OLD/benchmarks/heldout_chinchilla.py ...` beside this one.

Then the IsoFLOP approach-2 frontier on the same split: whether the fitted runs form
IsoFLOP slices (`isoflop_fit`'s rule), the remedy table of `fit_calibrated(...,
remedy="frontier")` (the frontier against the plain fit, scored on the same backtest),
and the frontier law alone, calibrated from its own backtest, on the 17 larger runs.
Last, what `auto` does not do on a healthy fit: the plain fit and the frontier averaged
(`average_fits`, weights 1 / backtest MSE), calibrated from the average's backtest.

Usage: PYTHONPATH=. python benchmarks/heldout_chinchilla.py ../shared/data/chinchilla_epoch.csv
"""

import csv
import dataclasses
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from derisk.errors import DeriskWarning
from derisk.scaling import (
    backtest,
    calibrate,
    extrapolation_scale,
    fit_calibrated,
    fit_frontier,
    isoflop_fit,
    law_inputs,
    run_data,
)
from derisk.scaling._remedy import average_fits, backtest_error

rows = sorted(
    csv.DictReader(Path(sys.argv[1]).read_text().splitlines()), key=lambda r: float(r["loss"])
)[:-5]
N = np.array([float(r["Model Size"]) for r in rows])
C = np.array([float(r["Training FLOP"]) for r in rows])
L = np.array([float(r["loss"]) for r in rows])
D = C / (6 * N)
small = N <= 5e9
data = run_data(N[small], D[small], L[small], source="chinchilla N <= 5e9")
t0 = time.perf_counter()
fit, bt = fit_calibrated(data, bootstrap=100, seed=0)
seconds = time.perf_counter() - t0
pooled = dataclasses.replace(
    fit,
    calibration={
        **fit.calibration,
        "axes": {
            a: {**t, "per_decade": extrapolation_scale([r for r in bt.rows if r.by == a])}
            for a, t in fit.calibration["axes"].items()
        },
    },
)
counts = {"uncalibrated": 0, "pooled over runs": 0, "per cut (now)": 0}
errors = []
for i in np.flatnonzero(~small):
    X = law_inputs("chinchilla", N[i], D[i], 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeriskWarning)
        bands = {
            "uncalibrated": fit.predictive_interval(X, calibrated=False),
            "pooled over runs": pooled.predictive_interval(X),
            "per cut (now)": fit.predictive_interval(X),
        }
    for k, (lo, hi) in bands.items():
        counts[k] += bool(lo <= L[i] <= hi)
    errors.append(abs(L[i] / fit.predict(X)[0] - 1))
n = int((~small).sum())
print(
    f"fit {int(small.sum())} runs (N <= 5e9) in {seconds:.1f} s, status {fit.status}, "
    f"remedy {None if fit.remedy is None else fit.remedy['chosen']}"
)
print(f"held out {n} larger runs: mean abs error {100 * np.mean(errors):.2f}%")
for k, v in counts.items():
    print(f"  inside the 80% band, {k}: {v} of {n}")
for a, t in fit.calibration["axes"].items():
    if t.get("borrowed"):
        print(f"  k {a}: not cut along, borrows {t['per_decade']:.4f}")
        continue
    print(
        f"  k {a}: per cut {[round(x, 4) for x in t['per_cut']]} -> {t['per_decade']:.4f}, "
        f"pooled {pooled.calibration['axes'][a]['per_decade']:.4f}"
    )

# ------------------------------------------------------------------ the IsoFLOP frontier
iso = isoflop_fit(data)
print(
    f"IsoFLOP slices among the fitted runs: {len(iso.budgets)} budgets "
    f"({iso.budgets.min():.2g}-{iso.budgets.max():.2g} FLOPs), N_opt ~ C^{iso.a:.3f}"
)
t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeriskWarning)
    forced, _ = fit_calibrated(data, bootstrap=100, seed=0, remedy="frontier")
print(f"fit_calibrated(remedy='frontier') in {time.perf_counter() - t0:.1f} s:")
for name, c in forced.remedy["candidates"].items():
    mark = " (chosen)" if name == forced.remedy["chosen"] else ""
    if "error" in c:
        print(f"  {name}{mark}: {c['error']}")
        continue
    print(
        f"  {name}{mark}: backtest mean |log error| {c['backtest_mean_abs_log_error']:.4f}, "
        f"inside 80% {100 * c['backtest_coverage']:.0f}%"
    )
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeriskWarning)
    front = fit_frontier(data, bootstrap=100, seed=0)
    front_bt = backtest(data, form="frontier", seed=0)
    plain_bt = backtest(data, seed=0)
    avg, avg_bt, weights = average_fits(
        {"none": dataclasses.replace(fit, calibration=None), "frontier": front},
        {"none": plain_bt, "frontier": front_bt},
    )
    front = calibrate(front, front_bt, data)
    avg = calibrate(avg, avg_bt, data)


def held_out(law):
    inside, errs = 0, []
    for i in np.flatnonzero(~small):
        X = law_inputs("chinchilla", N[i], D[i], 1, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeriskWarning)
            lo, hi = law.predictive_interval(X)
        inside += bool(lo <= L[i] <= hi)
        errs.append(abs(L[i] / law.predict(X)[0] - 1))
    mean = 100 * np.mean(errs)
    return f"mean abs error {mean:.2f}%, inside its calibrated 80% band {inside} of {n}"


print(f"  {front.message}")
print(f"  the frontier alone on the {n} larger runs: {held_out(front)}")
print(
    f"plain + frontier averaged (weights {weights['none']:.2f} / {weights['frontier']:.2f}; "
    f"backtest mean |log error| {backtest_error(avg_bt):.6f} against the plain fit's "
    f"{backtest_error(plain_bt):.6f}): {held_out(avg)}"
)
