"""The IsoFLOP approach-2 frontier as a law that predicts a loss at any (N, D).

Approach 2 (Hoffmann et al. 2022) fits, per compute budget C, a parabola of loss in
log N and reads off the budget's optimum; the optima give N_opt(C) and the best loss
L*(C). On its own that predicts only the frontier. To score it on the same held-out
runs as the approach-3 forms (and average it with them), the slices' parabolas are
kept too, and the law is (`FrontierForm` in `_laws.py` holds the closed form):

    C = 6ND                                       (the convention the fit data uses)
    log N_opt(C) = n0 + a (log C - c_ref)         (the slices' minima, least squares)
    L*(C)        = E + B' exp(-g (log C - c_ref))  (the minima's losses; E = 0, a pure
                                                   power law, when E runs to a bound or
                                                   there are fewer than 4 slices)
    c(C)         = exp(k0 + k1 (log C - c_ref))   (the parabolas' curvatures; k1 = 0,
                                                   one shared curvature, unless the
                                                   slope is 2+ standard errors from 0
                                                   with 4+ slices)
    L(N, D)      = L*(C) + c(C) (log N - log N_opt(C))^2

Additive, not multiplicative (L* exp(kappa dx^2)), for two reasons. The slices'
parabolas are fitted to the loss itself (`isoflop_fit`, whose slices, minima and
exponent `derisk fit` prints: the frontier reuses them unchanged), so their curvature is
c in loss units. And under Chinchilla's form c is a power law in C: along an IsoFLOP
the loss is E + A N^-alpha + B (C/6N)^-beta, whose second derivative in log N at the
optimum is alpha beta (L*(C) - E), proportional to C^-(alpha beta / (alpha + beta)),
so log c linear in log C is exact for the form the other candidates assume, where a
multiplicative kappa = c / L* is not a power law at all.

What it cannot do: a parabola in log N is the loss near each budget's optimum; far
off it (an over-trained small model, 10x from N_opt) the true loss grows like a power of
N, not a square of log N, and the prediction there is poor. The backtest scores that
like any other error. Runs outside every slice do not enter the fit.

The bootstrap resamples runs within each slice (with replacement) and refits every
slice's parabola and the frontier through them, with the main fit's structure (E or
not, shared or sloped curvature) held, so the refits are parameter uncertainty of one
form. A resample in which fewer than 2 slices still bracket their minimum is drawn again
(up to 200 times: the refits are conditioned on the frontier being identified, which
narrows the band a little on sweeps with few sizes per budget).
"""

from __future__ import annotations

import time

import numpy as np
from scipy import optimize

from derisk.errors import DataError
from derisk.scaling._data import RunData
from derisk.scaling._fit import (
    E_FLOOR,
    FIT_DEGENERATE,
    FIT_OK,
    HUBER_DELTA,
    FitResult,
    _huber,
    robust_sigma,
)
from derisk.scaling._laws import FRONTIER
from derisk.scaling._optimal import isoflop_fit, slice_parabola, slice_window

MIN_SLICES_E = 4  # fitting E needs 3 parameters from the minima and a degree of freedom
MIN_SLICES_SLOPE = 4  # a curvature slope needs 2 parameters and 2 degrees of freedom
SLOPE_T = 2.0  # a curvature slope this many standard errors from 0 is kept
RESAMPLE_TRIES = 200  # draws per bootstrap refit before giving up (each is a few polyfits)


def _line(u: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(intercept, slope, slope's standard error) of least squares y ~ u."""
    slope, icpt = np.polyfit(u, y, 1)
    if len(u) <= 2:
        return float(icpt), float(slope), float("inf")
    resid = y - (icpt + slope * u)
    s2 = float(resid @ resid) / (len(u) - 2)
    sxx = float(np.sum((u - u.mean()) ** 2))
    return float(icpt), float(slope), float(np.sqrt(s2 / sxx)) if sxx > 0 else float("inf")


def _l_opt(
    u: np.ndarray, lmin: np.ndarray, with_e: bool, start: np.ndarray | None = None
) -> tuple[float, float, float]:
    """(E, b, g): L* = E + exp(b - g u) through the slices' minimum losses, least squares
    in log loss; E = 0 (a power law, linear in logs) unless `with_e`. Without `start`,
    from three starts (E at 0, half and 0.9 of the lowest minimum); a bootstrap refit
    starts from the fit's own (E, b, g) only."""
    b0, slope, _ = _line(u, np.log(lmin))
    if not with_e:
        return 0.0, b0, -slope
    top = float(lmin.min()) * (1 - 1e-6)

    def resid(p):
        E, b, g = p
        return np.log(E + np.exp(b - g * u)) - np.log(lmin)

    def jac(p):
        E, b, g = p
        e = np.exp(b - g * u)
        s = E + e
        return np.stack([1 / s, e / s, -u * e / s], axis=1)

    starts = []
    if start is not None:
        starts.append(np.clip(start, [0.0, -50.0, 0.0], [top * (1 - 1e-9), 50.0, 5.0]))
    else:
        for frac in (0.0, 0.5, 0.9):
            E0 = frac * top
            bb, sl, _ = _line(u, np.log(np.maximum(lmin - E0, 1e-12 * top)))
            starts.append(np.array([E0, bb, min(max(-sl, 1e-4), 4.9)]))
    best = None
    for x0 in starts:
        r = optimize.least_squares(
            resid, x0, jac=jac, bounds=([0.0, -50.0, 0.0], [top, 50.0, 5.0]), method="trf"
        )
        if best is None or r.cost < best.cost:
            best = r
    E, b, g = best.x
    return float(E), float(b), float(g)


def _theta(
    slices: np.ndarray, c_ref: float, with_e: bool, sloped: bool, start: np.ndarray | None = None
) -> np.ndarray:
    """The frontier's theta from per-slice (budget, log N_opt, L_opt, curvature) rows;
    `start`: a theta whose (E, b, g) start the fit of L*."""
    C, xm, lmin, curv = slices.T
    u = np.log(C) - c_ref
    n0, a, _ = _line(u, xm)
    E, b, g = _l_opt(u, lmin, with_e, None if start is None else start[3:6])
    if sloped:
        k0, k1, _ = _line(u, np.log(curv))
    else:
        k0, k1 = float(np.mean(np.log(curv))), 0.0
    return np.array([c_ref, n0, a, E, b, g, k0, k1])


def _slices(data: RunData, groups) -> np.ndarray | None:
    rows = [slice_parabola(data, g) for g in groups]
    rows = [r for r in rows if r is not None]
    return np.array(rows) if len(rows) >= 2 else None


def fit_frontier(
    data: RunData, *, bootstrap: int = 0, seed: int = 0, progress=None, on_phase=None
) -> FitResult:
    """The IsoFLOP approach-2 frontier of `data` as a dense law (module docstring).

    Returns a FitResult with law "chinchilla" (a dense law of N and D) and form
    "frontier"; `n` counts the runs inside the slices' parabola windows, `sigma_log` is
    the robust scale of their log residuals. Status is degenerate when a (N_opt ~ C^a)
    leaves (0, 1), where more compute would shrink the model or the tokens.

    Raises DataError when the runs have no IsoFLOP structure (`isoflop_fit`'s rule: 2+
    budgets with 3+ distinct sizes each, bracketing their minimum).
    """
    t0 = time.perf_counter()
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int | np.integer) or bootstrap < 0:
        raise ValueError(f"bootstrap must be an integer >= 0, got {bootstrap!r}")
    if on_phase is not None:
        on_phase("IsoFLOP frontier: a parabola per compute budget")
    iso = isoflop_fit(data)  # DataError without slices
    slices = np.stack([iso.budgets, np.log(iso.n_opt), iso.loss_opt, iso.curvature], axis=1)
    k = len(slices)
    c_ref = float(np.mean(np.log(iso.budgets)))
    u = np.log(iso.budgets) - c_ref
    notes = []
    with_e = k >= MIN_SLICES_E
    if with_e:
        E = _l_opt(u, iso.loss_opt, True)[0]
        at_zero = E / float(iso.loss_opt.min()) < E_FLOOR
        if at_zero or E / float(iso.loss_opt.min()) >= 1 - 1e-3:
            with_e = False
            where = "0" if at_zero else "the lowest minimum"
            notes.append(f"E ran to {where}: L* is a pure power law in C")
    else:
        notes.append(f"{k} slices cannot fit E too: L* is a pure power law in C")
    sloped = False
    if k >= MIN_SLICES_SLOPE:
        _, slope, se = _line(u, np.log(iso.curvature))
        sloped = abs(slope) >= SLOPE_T * se
    notes.append("curvature linear in log C" if sloped else "one curvature shared by every budget")
    theta = _theta(slices, c_ref, with_e, sloped)
    used = np.concatenate([slice_window(data, g) for g in iso.runs])
    X = np.stack([np.log(data.params), np.log(data.tokens), np.zeros(data.n)], axis=1)[used]
    resid = FRONTIER.log_predict(theta, X) - np.log(data.loss[used])
    boot = None
    if bootstrap:
        if on_phase is not None:
            on_phase(f"IsoFLOP frontier: {bootstrap:,} refits on runs resampled within slices")
        rng = np.random.default_rng(seed)
        boot = np.empty((bootstrap, len(theta)))
        for b in range(bootstrap):
            for _ in range(RESAMPLE_TRIES):
                drawn = _slices(data, [rng.choice(g, size=len(g)) for g in iso.runs])
                if drawn is not None:
                    break
            else:
                raise DataError(
                    f"{data.source}: the IsoFLOP slices are too small to resample (fewer "
                    f"than 2 of them bracket their minimum in {RESAMPLE_TRIES} draws); "
                    "use the approach-3 fit"
                )
            boot[b] = _theta(drawn, c_ref, with_e, sloped and len(drawn) >= 3, start=theta)
            if progress is not None:
                progress(1)
    a = float(theta[2])
    if not np.all(np.isfinite(theta)) or (boot is not None and not np.all(np.isfinite(boot))):
        raise DataError(f"{data.source}: the IsoFLOP frontier gave non-finite parameters")
    flags, status = (), FIT_OK
    message = f"IsoFLOP frontier from {k} slices, N_opt ~ C^{a:.3f}; " + "; ".join(notes)
    if not 0.0 < a < 1.0:  # more compute would shrink the model or its tokens
        flags, status = ("a_range",), FIT_DEGENERATE
        message = f"degenerate fit: a (N_opt ~ C^a) = {a:.3g} is outside 0-1 ({message})"
    summary = data.summary()
    summary["runs_fitted"] = int(len(used))
    return FitResult(
        law="chinchilla",
        form=FRONTIER.name,
        theta=theta,
        params={n: float(v) for n, v in FRONTIER.readable(theta).items()},
        loss=float(_huber(resid, HUBER_DELTA)[0].sum()),
        starts=0,
        starts_at_optimum=0,
        screened=0,
        n=int(len(used)),
        rmse_log=float(np.sqrt(np.mean(resid**2))),
        sigma_log=robust_sigma(resid),
        success=True,
        message=message,
        seconds=time.perf_counter() - t0,
        bootstrap=boot,
        summary=summary,
        status=status,
        flags=flags,
    )
