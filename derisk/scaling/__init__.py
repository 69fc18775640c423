"""Scaling laws: fits with uncertainty, compute-optimal allocation, dense and MoE."""

from derisk.scaling._data import RunData, load_runs_csv, run_data
from derisk.scaling._estimate import SHIPPED_LAWS, TrainEstimate, estimate
from derisk.scaling._fit import HUBER_DELTA, FitResult, fit_law, objective
from derisk.scaling._laws import LAWS, LawForm
from derisk.scaling._optimal import (
    Allocation,
    IsoFlopFit,
    effective_params,
    fit_from_json,
    fit_to_json,
    flops_per_token,
    isoflop_fit,
    laws_dir,
    load_law,
    optimal_allocation,
)
from derisk.scaling._predict import (
    Prediction,
    law_inputs,
    predict_loss,
    setting_mismatches,
    uses_active_params,
)

__all__ = [
    "HUBER_DELTA",
    "LAWS",
    "SHIPPED_LAWS",
    "Allocation",
    "FitResult",
    "IsoFlopFit",
    "LawForm",
    "Prediction",
    "RunData",
    "TrainEstimate",
    "effective_params",
    "estimate",
    "fit_from_json",
    "fit_law",
    "fit_to_json",
    "flops_per_token",
    "isoflop_fit",
    "law_inputs",
    "laws_dir",
    "load_law",
    "load_runs_csv",
    "objective",
    "optimal_allocation",
    "predict_loss",
    "run_data",
    "setting_mismatches",
    "uses_active_params",
]
