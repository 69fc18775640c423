"""Held-out check of the calibrated band on public data this project did not produce.

Epoch's 240 Chinchilla points (Hoffmann et al. 2022 Figure 4, less the 5 highest losses):
fit on the runs with N <= 5e9 (with backtest, calibration and, for a degenerate fit, the
remedies), predict the 17 larger ones, and count how many fall inside the 80% band:
uncalibrated, calibrated by pooling the backtest's runs (the previous method, rebuilt
here as the baseline), and calibrated by the quantile over backtest cuts (now).

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
from derisk.scaling import extrapolation_scale, fit_calibrated, law_inputs, run_data

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
counts = {"uncalibrated": 0, "pooled (before)": 0, "per cut (now)": 0}
errors = []
for i in np.flatnonzero(~small):
    X = law_inputs("chinchilla", N[i], D[i], 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeriskWarning)
        bands = {
            "uncalibrated": fit.predictive_interval(X, calibrated=False),
            "pooled (before)": pooled.predictive_interval(X),
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
    print(
        f"  k {a}: per cut {[round(x, 4) for x in t['per_cut']]} -> {t['per_decade']:.4f}, "
        f"pooled {pooled.calibration['axes'][a]['per_decade']:.4f}"
    )
