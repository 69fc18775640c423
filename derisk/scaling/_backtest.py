"""Backtesting a law inside the user's own runs: fit below a scale cut, predict above it.

A law's predictive band carries parameter uncertainty and run-to-run noise, not the error
of extrapolating the law's form, which dominates out of range. A backtest measures that
error on the data at hand: for each cut on a scale axis (training compute 6ND, or model
parameters N), refit the law on the runs at or below the cut and predict every run above
it, recording the log error and whether the run fell inside the band, against the
distance extrapolated (decades beyond the largest fitted run on that axis).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from derisk.errors import DataError, DeriskWarning
from derisk.scaling._data import RunData
from derisk.scaling._fit import FitResult, fit_law
from derisk.scaling._frontier import fit_frontier
from derisk.scaling._predict import law_inputs

AXES = ("compute", "params")  # cut along; tokens D borrows (see `calibrate`)
CAL_AXES = ("compute", "params", "tokens")  # the calibration covers all three
DECADE_EDGES = (0.0, 0.25, 0.5, 1.0, 2.0, math.inf)  # bins of extrapolation distance
CUT_FRACTIONS = (0.5, 0.6, 0.7, 0.8)  # default cuts: these fractions of the runs fitted
BACKTEST_BOOTSTRAP = 20  # refits per cut: enough for a rough 80% band, cheap on 2 cores
BACKTEST_STARTS = 16  # L-BFGS starts per cut (a full fit uses 64)


def scale(data: RunData, by: str) -> np.ndarray:
    """The axis a backtest cuts along: training compute 6ND, parameters N, or tokens D."""
    if by == "compute":
        return 6.0 * data.params * data.tokens
    if by == "params":
        return np.asarray(data.params, dtype=np.float64)
    if by == "tokens":
        return np.asarray(data.tokens, dtype=np.float64)
    raise ValueError(f"by must be one of {', '.join(AXES)}, got {by!r}")


def default_cuts(data: RunData, by: str, fractions: Sequence[float] = CUT_FRACTIONS) -> list:
    """Cuts that fit about `fractions` of the runs, each a distinct scale value with at
    least one run above it (duplicates dropped)."""
    x = np.sort(scale(data, by))
    cuts = []
    for f in fractions:
        c = float(x[min(len(x) - 1, max(0, int(round(f * len(x))) - 1))])
        if c < x[-1] and c not in cuts:
            cuts.append(c)
    return cuts


@dataclass(frozen=True)
class BacktestRow:
    """One held-out run predicted from the runs at or below one cut."""

    by: str  # "compute" or "params"
    cut: float  # runs with scale <= cut were fitted
    fitted: int  # how many
    run: int  # the held-out run's row in the data
    decades: float  # log10(its scale / the largest fitted run's scale)
    observed: float
    predicted: float
    log_error: float  # log(observed) - log(predicted)
    lo: float  # the fit's central `level` predictive band (uncalibrated)
    hi: float
    inside: bool
    median: float | None = None  # of that predictive distribution (None: saved before)


@dataclass(frozen=True)
class Backtest:
    """Every held-out prediction (`rows`), `table` binning them by decades extrapolated
    (per axis: runs, mean |log error|, mean log error, inside the band), and the cuts
    that could not be fitted (`skipped`: axis, cut, why)."""

    law: str
    level: float
    bootstrap: int
    rows: tuple[BacktestRow, ...]
    table: tuple[dict, ...]
    skipped: tuple[dict, ...]
    seconds: float

    def as_dict(self) -> dict:
        return {
            "law": self.law,
            "level": self.level,
            "bootstrap": self.bootstrap,
            "table": [dict(r) for r in self.table],
            "rows": [asdict(r) for r in self.rows],
            "skipped": [dict(s) for s in self.skipped],
            "seconds": self.seconds,
        }


def backtest_table(rows: Sequence[BacktestRow], edges: Sequence[float] = DECADE_EDGES) -> list:
    """Rows binned by axis and decades extrapolated: (lo, hi] bins, empty ones left out."""
    out = []
    for by in AXES:
        mine = [r for r in rows if r.by == by]
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            b = [r for r in mine if lo < r.decades <= hi]
            if not b:
                continue
            err = np.array([r.log_error for r in b])
            out.append(
                {
                    "by": by,
                    "decades": [lo, None if math.isinf(hi) else hi],  # None: no end
                    "runs": len(b),
                    "mean_abs_log_error": float(np.mean(np.abs(err))),
                    "mean_log_error": float(np.mean(err)),
                    "inside": int(sum(r.inside for r in b)),
                    "coverage": float(np.mean([r.inside for r in b])),
                }
            )
    return out


def backtest(
    data: RunData,
    law: str = "chinchilla",
    *,
    by: str | Sequence[str] = AXES,
    cuts: Sequence[float] | None = None,
    bootstrap: int = BACKTEST_BOOTSTRAP,
    starts: int = BACKTEST_STARTS,
    level: float = 0.8,
    seed: int = 0,
    fix_E: float | None = None,
    options: dict | None = None,
    form: str | None = None,
    on_phase=None,
) -> Backtest:
    """Refit `law` on the runs at or below each cut and predict the runs above it.

    `by` is an axis or several ("compute": 6ND, "params": N); `cuts` are scale values on
    that axis (None: `default_cuts`, fitting about 50-80% of the runs). Each cut is one
    `fit_law` with `bootstrap` refits and `starts` starts; each held-out run is scored as
    `predict_loss` scores it (point prediction, central `level` band). A cut whose runs
    cannot identify the law is skipped and listed in `skipped`. `options` are passed on
    to every `fit_law` (a remedy's `E_min` or `exponent_prior`). `form="frontier"` fits
    the IsoFLOP approach-2 frontier (`fit_frontier`, dense laws only) at each cut
    instead; a cut whose runs have no IsoFLOP slices is skipped.

    Raises ValueError for bad options, DataError when no cut could be fitted.
    """
    t0 = time.perf_counter()
    axes = (by,) if isinstance(by, str) else tuple(by)
    for a in axes:
        scale(data, a)  # ValueError for an unknown axis
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 2:
        raise ValueError(f"bootstrap must be an integer >= 2 (for a band), got {bootstrap!r}")
    if form not in (None, "frontier") or (form == "frontier" and law != "chinchilla"):
        raise ValueError(f"form must be None or 'frontier' (a dense law), got {form!r}")
    rows, skipped = [], []
    for a in axes:
        x = scale(data, a)
        for cut in default_cuts(data, a) if cuts is None else cuts:
            cut = float(cut)
            below = x <= cut
            if not below.any() or below.all():
                skipped.append({"by": a, "cut": cut, "why": "no runs on one side of the cut"})
                continue
            if on_phase is not None:
                on_phase(f"backtest by {a}: fitting {int(below.sum())} runs at or below {cut:.3g}")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeriskWarning)
                    if form == "frontier":
                        fit = fit_frontier(data.subset(below), bootstrap=bootstrap, seed=seed)
                    else:
                        fit = fit_law(
                            data.subset(below),
                            law,
                            starts=starts,
                            bootstrap=bootstrap,
                            seed=seed,
                            **{"fix_E": fix_E, **(options or {})},
                        )
            except DataError as exc:
                skipped.append({"by": a, "cut": cut, "why": str(exc)})
                continue
            top = float(x[below].max())
            for i in np.flatnonzero(~below):
                X = law_inputs(
                    law, data.params[i], data.tokens[i], data.experts[i], data.granularity[i]
                )
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", DeriskWarning)  # point outside
                        lo, med, hi = fit.predictive_band(X, level)
                    with np.errstate(all="ignore"):
                        pred = float(fit.predict(X)[0])
                except DataError:
                    continue  # a non-finite prediction this far out: nothing to score
                obs = float(data.loss[i])
                rows.append(
                    BacktestRow(
                        by=a,
                        cut=cut,
                        fitted=int(below.sum()),
                        run=int(i),
                        decades=float(np.log10(x[i] / top)),
                        observed=obs,
                        predicted=pred,
                        log_error=float(np.log(obs) - np.log(pred)),
                        lo=lo,
                        hi=hi,
                        inside=bool(lo <= obs <= hi),
                        median=med,
                    )
                )
    if not rows:
        why = "; ".join(f"{s['by']} cut {s['cut']:.3g}: {s['why']}" for s in skipped)
        raise DataError(f"{data.source}: no backtest cut could be fitted ({why or 'no cuts'})")
    return Backtest(
        law=law,
        level=level,
        bootstrap=bootstrap,
        rows=tuple(rows),
        table=tuple(backtest_table(rows)),
        skipped=tuple(skipped),
        seconds=time.perf_counter() - t0,
    )


CALIBRATION_KIND = "lognormal_linear"  # sd k x decades; k conformal over backtest cuts
MAX_PER_DECADE = 5.0  # a log-scale error of e^5 per decade is no forecast at all


def _band_error(r: BacktestRow, z: float) -> tuple[float, float]:
    """(log error of the observed loss from the band's centre, the sd of the band's side
    it fell on): the centre is the predictive median, each side read as half a
    log-normal (the mixture's band is not symmetric); rows saved without a median use
    the band's log mid-point."""
    lo, hi = math.log(r.lo), math.log(r.hi)
    mid = math.log(r.median) if r.median else (lo + hi) / 2
    e = math.log(r.observed) - mid
    return e, ((hi - mid) if e > 0 else (mid - lo)) / z


def extrapolation_scale(rows: Sequence[BacktestRow], level: float = 0.8) -> float:
    """The per-decade scale k of a zero-mean log-normal extrapolation error, sd k x d at d
    decades beyond the fitted runs, that puts `level` of the backtest's held-out runs
    inside the calibrated band (a conformal quantile, in closed form).

    Each row's uncalibrated band is read as log-normal with centre c and sd s (its
    mid-point and half-width in logs, over the normal quantile z: the band is the
    predictive mixture's, not centred on the point prediction); a run falls inside the
    calibrated band when |log(observed) - c| <= z sqrt(s^2 + (k d)^2), i.e. when k >= k_i
    = sqrt(((log(observed) - c)/z)^2 - s^2) / d (k_i = 0 for a run already inside). k is
    the `level` quantile of the k_i.
    """
    z = float(stats.norm.ppf(0.5 + level / 2))
    need = []
    for r in rows:
        e, s = _band_error(r, z)
        gap = (e / z) ** 2 - s**2
        need.append(math.sqrt(gap) / r.decades if gap > 0 else 0.0)
    if not need:
        return 0.0
    return float(np.quantile(need, level, method="higher"))


def cut_quantile(values: Sequence[float], level: float = 0.5) -> float:
    """The finite-sample conformal `level` quantile of per-cut scales: the
    ceil((m + 1) level)-th smallest of m (the largest when that passes m).

    Each cut's scale is the one that puts 80% of its own held-out runs inside the band;
    each cut is one draw of how wrong the law's form is beyond its runs, and the runs one
    cut predicts share that one fit, so the cuts, not the runs, are the exchangeable
    units. For a new extrapolation, exchangeable with the m cuts, P(its scale <= this
    one) >= `level`. calibrate takes level 1/2, a median that is valid with 4 cuts, not
    only asymptotically: the interpolated median of 4 (the mean of the 2nd and 3rd) is
    exceeded more often than half the time.
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    if not len(v):
        return 0.0
    j = min(len(v), math.ceil((len(v) + 1) * level))
    return float(v[max(j, 1) - 1])


CUT_LEVEL = 0.5  # of `cut_quantile`: the chosen scale suffices for a new cut half the time


def calibrate(
    fit: FitResult, bt: Backtest, data: RunData, *, by: str | Sequence[str] = AXES
) -> FitResult:
    """`fit` carrying `bt` and an extrapolation-error term fitted from it.

    The term is log-normal with sd k_a x d_a, d_a the decades beyond the largest of
    `data`'s runs on axis a (compute 6ND, parameters N, tokens D); the largest of the
    axes' terms applies (a point can extrapolate in parameters, or in tokens, at a compute
    the runs already reached). k_a is fitted on the backtest's rows for each axis it cut
    along: `extrapolation_scale` of each cut's rows, then `cut_quantile` across the cuts
    (a cut's held-out runs all share one fit's error, so pooling them as if independent
    understates it: on Chinchilla's points, fit below 5e9 parameters, the pooled scale
    covered 7 of the 17 larger runs, the per-cut one 12). An axis it did not cut along
    (tokens, by default) borrows the largest k of the others (`borrowed`), so a run far
    beyond the data in tokens alone is not forecast as if it were in range. In range the
    term is 0, so predictions there are unchanged. `predict_loss`, `optimal_allocation`
    and `FitResult.prob_below` use it unless told `calibrated=False`.

    Raises DataError when the backtest has no held-out runs on any of the axes.
    """
    axes = (by,) if isinstance(by, str) else tuple(by)
    z = float(stats.norm.ppf(0.5 + bt.level / 2))
    terms = {}
    for a in axes:
        x = scale(data, a)  # ValueError for an unknown axis
        rows = [r for r in bt.rows if r.by == a]
        if not rows:
            continue
        cuts = sorted({r.cut for r in rows})
        per_cut = [extrapolation_scale([r for r in rows if r.cut == c], bt.level) for c in cuts]
        k = min(cut_quantile(per_cut, CUT_LEVEL), MAX_PER_DECADE)
        errs = [(_band_error(r, z), r.decades) for r in rows]
        after = [abs(e) <= z * math.hypot(s, k * d) for (e, s), d in errs]
        terms[a] = {
            "reference": float(x.max()),
            "per_decade": k,
            "per_cut": [float(v) for v in per_cut],
            "runs": len(rows),
            "coverage_before": float(np.mean([r.inside for r in rows])),
            "coverage_after": float(np.mean(after)),
        }
    if not terms:
        raise DataError(
            f"the backtest has no held-out runs by {' or '.join(axes)} to calibrate from"
        )
    k_max = max(t["per_decade"] for t in terms.values())
    for a in CAL_AXES:
        if a not in terms:
            terms[a] = {
                "reference": float(scale(data, a).max()),
                "per_decade": k_max,
                "borrowed": True,
            }
    calibration = {"kind": CALIBRATION_KIND, "level": bt.level, "axes": terms}
    return dataclasses.replace(fit, backtest=bt.as_dict(), calibration=calibration)
