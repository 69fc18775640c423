"""Predicting one run's loss from a fitted law, and scoring a run against the prediction."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from derisk.errors import DataError, DeriskWarning
from derisk.scaling._fit import FitResult, _non_finite
from derisk.scaling._laws import LAWS


@dataclass(frozen=True)
class Prediction:
    """The law's loss at one (params, tokens[, experts or granularity]) point.

    `interval` is the central predictive interval at `level` (parameter uncertainty from the
    bootstrap and run-to-run noise, and beyond the fitted runs the calibrated extrapolation
    error, whose log sd here is `extra_sigma`), `median` the predictive median: both from
    the one distribution `p_below` is computed from, so p_below > 0.5 exactly when
    `below` > `median`. `loss` is the law's point prediction. With an `observed` loss,
    `quantile` is where it falls in the predictive distribution (0.5 = on the median;
    outside [0.1, 0.9] = outside the 80% band) and `error` is observed / predicted - 1.
    """

    params: float
    tokens: float
    experts: float
    granularity: float
    loss: float
    interval: tuple[float, float] | None
    level: float
    params_beyond: float  # params / the largest fitted run's (> 1: extrapolating)
    tokens_beyond: float
    observed: float | None = None
    quantile: float | None = None
    error: float | None = None
    below: float | None = None  # a target loss, and the probability of beating it
    p_below: float | None = None
    calibrated: bool = False  # the law has a calibration and it was applied (may add 0)
    median: float | None = None  # of the predictive distribution (None without bootstrap)
    extra_sigma: float = 0.0  # the calibrated extrapolation error's log sd at this point

    def as_dict(self) -> dict:
        return asdict(self)


def law_inputs(law: str, params, tokens, experts=1.0, granularity=1.0) -> np.ndarray:
    """Log inputs (n, 3) in the order every law form takes them."""
    inputs = LAWS[law].inputs
    g = granularity if "granularity" in inputs else experts if "experts" in inputs else 1.0
    p, d, g = np.broadcast_arrays(
        np.asarray(params, np.float64), np.asarray(tokens, np.float64), np.asarray(g, np.float64)
    )
    return np.stack([np.log(p).ravel(), np.log(d).ravel(), np.log(g).ravel()], axis=1)


def predict_loss(
    fit: FitResult,
    params: float,
    tokens: float,
    *,
    experts: float = 1.0,
    granularity: float = 1.0,
    observed: float | None = None,
    below: float | None = None,
    level: float = 0.8,
    calibrated: bool = True,
) -> Prediction:
    """The law's loss at one point with its central `level` predictive interval.

    With a law that carries a `calibration` (from `calibrate`) and `calibrated`, the
    interval, `quantile` and `p_below` include the extrapolation error beyond the fitted
    runs (0 in range); `calibrated=False` gives the band from parameter uncertainty and
    run noise alone.
    """
    for name, v in (
        ("params", params),
        ("tokens", tokens),
        ("experts", experts),
        ("granularity", granularity),
        ("observed", observed),
        ("below", below),
    ):
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
        if v is not None and not (ok and v > 0):
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    X = law_inputs(fit.law, params, tokens, experts, granularity)
    with np.errstate(all="ignore"):
        point = float(fit.predict(X)[0])
    if not math.isfinite(point):
        raise DataError(_non_finite(fit, X[0]))
    band = fit.predictive_band(X, level, calibrated=calibrated)
    interval = None if band is None else (band[0], band[2])
    extra = float(fit.extrapolation_sigma(X)[0]) if calibrated else 0.0
    seen = fit.summary or {}
    p_hi = (seen.get("params") or [params, params])[1]
    d_hi = (seen.get("tokens") or [tokens, tokens])[1]
    quantile = error = None
    if observed is not None:
        quantile = float(fit.prob_below(X, observed, calibrated=calibrated)[0])
        error = observed / point - 1.0
    p_below = None if below is None else float(fit.prob_below(X, below, calibrated=calibrated)[0])
    return Prediction(
        params=float(params),
        tokens=float(tokens),
        experts=float(experts),
        granularity=float(granularity),
        loss=point,
        interval=interval,
        level=level,
        params_beyond=float(params / p_hi),
        tokens_beyond=float(tokens / d_hi),
        observed=observed,
        quantile=quantile,
        error=error,
        below=below,
        p_below=p_below,
        calibrated=bool(calibrated and fit.calibration),
        median=None if band is None else band[1],
        extra_sigma=extra,
    )


def uses_active_params(fit: FitResult) -> bool:
    """Whether the law's N is active (not total) non-embedding parameters."""
    return fit.law == "moe_experts" or (fit.summary or {}).get("params_col") == "active_params"


def count_key(fit: FitResult) -> str:
    """Which of `derisk._flops.param_counts`'s counts is the law's N: active or not, and
    with embeddings (`params_kind: total`, Hoffmann et al.'s convention) or without."""
    total = (fit.summary or {}).get("params_kind") == "total"
    if uses_active_params(fit):
        return "active" if total else "non_embedding_active"
    return "total" if total else "non_embedding"


def setting_mismatches(fit: FitResult, run: dict) -> list[str]:
    """How a run's training setting differs from the runs the law was fitted to.

    `run` maps setting names (seq_len, n_layer, lr, d_model, corpus_hash, ...) to values.
    Laws fitted to CSVs without setting columns have nothing to compare and return [].
    """
    seen = (fit.summary or {}).get("setting") or {}
    out = []
    for k, vals in seen.items():
        if k == "lr_x_d_model" or k not in run or run[k] in (None, ""):
            continue
        if str(run[k]) not in vals:
            out.append(f"{k} {run[k]} (the law's runs: {', '.join(vals)})")
    lo_hi = seen.get("lr_x_d_model")
    if lo_hi and run.get("lr") and run.get("d_model"):
        scaled = float(run["lr"]) * float(run["d_model"])
        if not 0.8 * lo_hi[0] <= scaled <= 1.25 * lo_hi[1]:
            out.append(
                f"lr {run['lr']:g} at d_model {run['d_model']} (the law's runs used "
                f"lr = {lo_hi[0]:.3g} / d_model)"
            )
    return out


# Runs stop at whole batches, so a run asked for 1e7 tokens may train on 9,999,360: only
# a point this far past the largest fitted one counts as extrapolating.
EXTRAPOLATION_SLACK = 1.1


@dataclass(frozen=True, kw_only=True)
class PredictPoint:
    """One point to predict: given by hand (`run` None) or a stored run with its loss."""

    params: float
    tokens: float
    experts: float = 1.0
    granularity: float = 1.0
    run: int | None = None  # the run store's id
    observed: float | None = None  # the run's measured loss
    setting: dict | None = None  # how the run was trained, to compare with the law's runs


@dataclass(frozen=True)
class Forecast:
    """Predictions for several points, what to be wary of, and how the measured ones did.

    `setting_differs[i]` lists how point i's training setting differs from the law's runs;
    `warnings` holds every caution (also issued as `DeriskWarning`); `summary` scores the
    points with a measured loss: `runs`, `inside_80` (how many fall in the 80% band) and
    `mean_abs_error` (relative), or is empty when none has one.
    """

    predictions: tuple[Prediction, ...]
    points: tuple[PredictPoint, ...]
    setting_differs: tuple[tuple[str, ...], ...]
    warnings: tuple[str, ...]
    summary: dict = field(default_factory=dict)

    def as_dicts(self) -> list[dict]:
        out = []
        for pt, pr, diff in zip(self.points, self.predictions, self.setting_differs, strict=True):
            d = {"run": pt.run, **pr.as_dict()}
            if pt.setting is not None:
                d["setting_differs"] = list(diff)
            out.append(d)
        return out


def extrapolation_text(
    params_beyond: float,
    tokens_beyond: float,
    params_below: float | None = None,
    tokens_below: float | None = None,
) -> str | None:
    """ "extrapolates to 2.2x the largest fitted model", or None within the fitted range.

    With `params_below` / `tokens_below` (the point over the smallest fitted run's), a
    point under the runs says so instead: "extrapolates to 81x below the smallest fitted
    model"."""
    under = [
        f"{1 / x:.3g}x below the {what}"
        for x, what in (
            (params_below, "smallest fitted model"),
            (tokens_below, "fewest fitted tokens"),
        )
        if x is not None and x < 1 / 1.05
    ]
    if under:
        return "extrapolates to " + " and ".join(under)
    beyond = [
        f"{x:.1f}x the {what}" if x < 1e4 else f"{x:.3g}x the {what}"
        for x, what in (
            (params_beyond, "largest fitted model"),
            (tokens_beyond, "most fitted tokens"),
        )
        if x > EXTRAPOLATION_SLACK
    ]
    return f"extrapolates to {' and '.join(beyond)}" if beyond else None


def predict_points(
    fit: FitResult,
    points: Sequence[PredictPoint],
    *,
    below: float | None = None,
    calibrated: bool = True,
) -> Forecast:
    """`predict_loss` at every point, warning (`DeriskWarning`) when a run was trained
    differently from the law's runs or a point lies beyond the largest fitted model or
    token count (by more than `EXTRAPOLATION_SLACK`)."""
    preds, diffs, cautions = [], [], []
    for pt in points:
        pr = predict_loss(
            fit,
            pt.params,
            pt.tokens,
            experts=pt.experts,
            granularity=pt.granularity,
            observed=pt.observed,
            below=below,
            calibrated=calibrated,
        )
        who = "this point" if pt.run is None else f"run {pt.run}"
        diff = tuple(setting_mismatches(fit, pt.setting)) if pt.setting is not None else ()
        cautions += [f"{who} was trained with {m}: the law may not apply" for m in diff]
        beyond = extrapolation_text(pr.params_beyond, pr.tokens_beyond)
        if beyond:
            cautions.append(f"{who} {beyond}")
        preds.append(pr)
        diffs.append(diff)
    for message in cautions:
        warnings.warn(message, DeriskWarning, stacklevel=2)
    scored = [p for p in preds if p.quantile is not None]
    summary = {}
    if scored:
        summary = {
            "runs": len(scored),
            "inside_80": sum(0.1 <= p.quantile <= 0.9 for p in scored),
            "mean_abs_error": float(np.mean([abs(p.error) for p in scored])),
        }
    return Forecast(
        predictions=tuple(preds),
        points=tuple(points),
        setting_differs=tuple(diffs),
        warnings=tuple(cautions),
        summary=summary,
    )


def prob_beats(fit_a: FitResult, x_a: np.ndarray, fit_b: FitResult, x_b: np.ndarray) -> float:
    """P(loss of run a < loss of run b) under the laws' joint predictive distribution.

    Each run's log loss is its law's prediction under a bootstrap parameter sample plus
    log-normal noise (run-to-run noise and, calibrated, the extrapolation error at its
    inputs), the noises independent. Two runs under one law share its parameter sample
    (the refits are the law's uncertainty, common to both): P = mean_k Phi((lb_k - la_k)
    / s). Under two laws the samples are independent: the mean over every pair (k, l).
    `x_a`, `x_b` are one row of log inputs (`law_inputs`).

    Raises DataError when either law's prediction there is not finite.
    """
    B = 1 if fit_a.bootstrap is None else len(fit_a.bootstrap)
    return float(world_probs(fit_a, x_a, np.arange(B), other=(fit_b, x_b)).mean())


def prob_below_at(fit: FitResult, x: np.ndarray, threshold: float) -> float:
    """P(loss < threshold) at one row of log inputs (calibrated, as `predict_loss`)."""
    return float(fit.prob_below(x[:1], float(threshold))[0])


def world_indices(fit: FitResult, worlds: int) -> np.ndarray:
    """Which bootstrap samples stand for the law's `worlds` equally likely worlds: all of
    them when there are at most `worlds`, else `worlds` evenly spaced ones."""
    B = 1 if fit.bootstrap is None else len(fit.bootstrap)
    if worlds >= B:
        return np.arange(B)
    return np.unique(np.linspace(0, B - 1, worlds).round().astype(int))


def world_probs(
    fit: FitResult,
    x: np.ndarray,
    worlds: np.ndarray,
    *,
    below: float | None = None,
    other: tuple[FitResult, np.ndarray] | None = None,
) -> np.ndarray:
    """(K,) P(success | world k) of a run at log inputs `x`, world k being the law's
    bootstrap sample `worlds[k]`: with `below`, P(loss < below) under that sample's
    prediction and the log-normal noise (run-to-run and calibrated extrapolation); with
    `other` = (fit_b, x_b), P(loss < the other run's loss). Under one law the other run
    shares the world; under another law its samples are averaged over (its own worlds
    are not modelled jointly). The mean over all of a law's samples is `prob_below` /
    `prob_beats`."""
    from scipy import stats

    def draws(f, xx):
        with np.errstate(all="ignore"):
            lp = f.log_samples(xx[:1])[:, 0]
        if not np.all(np.isfinite(lp)):
            raise DataError(_non_finite(f, xx[0]))
        return lp, f.sigma_log**2 + float(f.extrapolation_sigma(xx[:1])[0]) ** 2

    la, va = draws(fit, x)
    la = la[worlds]
    if other is None:
        s = max(np.sqrt(va), 1e-12)
        return stats.norm.cdf((np.log(below) - la) / s)
    fit_b, x_b = other
    lb, vb = draws(fit_b, x_b)
    s = max(np.sqrt(va + vb), 1e-12)
    if fit_b is fit:
        return stats.norm.cdf((lb[worlds] - la) / s)
    return stats.norm.cdf((lb[None, :] - la[:, None]) / s).mean(axis=1)
