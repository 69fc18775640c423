"""Regenerate the shipped `chinchilla` law from ../shared/data/chinchilla_epoch.csv.

Epoch's 245 points (Besiroglu et al. 2024, from Hoffmann et al. 2022 Figure 4), less the 5
with the highest loss, as Epoch's headline fit; tokens D = C / (6N) as Epoch computes them.
Usage: PYTHONPATH=. python benchmarks/fit_chinchilla_law.py ../shared/data/chinchilla_epoch.csv \
    derisk/estimators/data/laws/chinchilla.json  (deterministic, seed 0)
"""

import csv
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

from derisk.scaling import fit_calibrated, run_data, save_law

src, dest = sys.argv[1], sys.argv[2]
rows = sorted(csv.DictReader(Path(src).read_text().splitlines()), key=lambda r: float(r["loss"]))[
    :-5
]
N = np.array([float(r["Model Size"]) for r in rows])
C = np.array([float(r["Training FLOP"]) for r in rows])
L = np.array([float(r["loss"]) for r in rows])
data = run_data(N, C / (6 * N), L, source="chinchilla_epoch.csv")
t0 = time.perf_counter()
fit, _ = fit_calibrated(data, bootstrap=100, seed=0)  # healthy: no remedy needed
seconds = time.perf_counter() - t0
fit.summary.update(
    params_col="params",
    params_kind="total",  # Hoffmann et al. count embeddings and the output layer
    min_tokens=0,
    loss_unit="nats per token (MassiveText, Chinchilla's SentencePiece tokenizer)",
)
sha = hashlib.sha256(Path(src).read_bytes()).hexdigest()
provenance = {
    "file": "../shared/data/chinchilla_epoch.csv",
    "sha256": sha,
    "source": "epoch-research/analyzing-chinchilla data/svg_extracted_data.csv "
    "(Besiroglu et al. 2024, arXiv 2404.10102; points from Hoffmann et al. 2022 Fig. 4)",
    "rows": "245 points less the 5 with the highest loss (as Epoch's headline fit); "
    "tokens = Training FLOP / (6 Model Size)",
    "law": "chinchilla",
    "bootstrap": 100,
    "seed": 0,
    "backtest": "default cuts by compute and params, 20 refits per cut",
}
print(save_law(fit, dest, provenance), f"{seconds:.1f}s", fit.params, fit.status)
print(fit.calibration)
