"""Fitting laws: Huber loss on log residuals, multi-start L-BFGS, bootstrap, prediction."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy import optimize, stats

from derisk.errors import DataError, DeriskWarning
from derisk.scaling._data import RunData
from derisk.scaling._laws import FORMS, LAWS, LawForm

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, approach 3


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss and its derivative, elementwise."""
    a = np.abs(r)
    quad = a <= delta
    loss = np.where(quad, 0.5 * r**2, delta * (a - 0.5 * delta))
    grad = np.where(quad, r, delta * np.sign(r))
    return loss, grad


def objective(
    law: LawForm,
    theta: np.ndarray,
    X: np.ndarray,
    y: np.ndarray,
    delta: float = HUBER_DELTA,
    weights: np.ndarray | None = None,
):
    """Sum of Huber(log L_hat - log L) and its gradient; theta may be batched (K, P)."""
    t = law.terms(theta, X)  # (..., n, J)
    m = t.max(axis=-1, keepdims=True)
    e = np.exp(t - m)
    s = e.sum(axis=-1, keepdims=True)
    pred = (m + np.log(s))[..., 0]
    w = e / s  # softmax: d pred / d t_j
    loss, dl = _huber(pred - y, delta)
    if weights is not None:
        loss, dl = loss * weights, dl * weights
    J = law.term_jacobian(X)  # (n, J, P)
    grad = np.einsum("...n,...nj,njp->...p", dl, w, J)
    return loss.sum(axis=-1), grad


class Member(NamedTuple):
    """One form in a model average: its weight, its parameters, and the closed form they
    belong to (a key of `FORMS`: the law's own, e.g. "chinchilla", or "frontier")."""

    weight: float
    theta: tuple[float, ...]
    form: str


@dataclass(frozen=True, eq=False)
class Refits:
    """The pooled bootstrap refits of a model average whose members have different forms:
    refit i is `thetas[i]` of form `forms[i]` (their lengths differ with the form)."""

    forms: tuple[str, ...]
    thetas: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.thetas)

    def of_form(self, form: str) -> np.ndarray:
        """(k, P) the refits of one form."""
        rows = [t for f, t in zip(self.forms, self.thetas, strict=True) if f == form]
        return np.stack(rows) if rows else np.empty((0, len(FORMS[form].params)))

    def log_predict(self, X: np.ndarray) -> np.ndarray:
        """(B, n) each refit's log prediction at log inputs X, in refit order."""
        out = np.empty((len(self), len(X)))
        forms = np.array(self.forms)
        for form in dict.fromkeys(self.forms):
            at = np.flatnonzero(forms == form)
            out[at] = FORMS[form].log_predict(np.stack([self.thetas[i] for i in at]), X)
        return out


@dataclass(frozen=True)
class FitResult:
    """A fitted law (scipy.optimize style: success, status, message).

    `success` is whether L-BFGS converged. `status` says whether to trust the fit:
    `FIT_OK` (0), `FIT_DEGENERATE` (1: converged, but to parameters the data cannot
    pin down; `flags` names each problem, `message` says it in words) or
    `FIT_NOT_CONVERGED` (2). `backtest` and `calibration` are what `backtest` and
    `calibrate` add (None until then).
    """

    law: str
    theta: np.ndarray
    params: dict[str, float]
    loss: float  # Huber objective at the optimum
    starts: int  # L-BFGS starts run
    starts_at_optimum: int  # how many reached the best loss (within 1e-9 relative)
    screened: int  # grid points evaluated to choose the starts
    n: int
    rmse_log: float  # root mean square of log residuals
    sigma_log: float  # robust (MAD) scale of log residuals: the run-to-run noise
    success: bool
    message: str
    seconds: float
    bootstrap: np.ndarray | None = None  # (B, P) refitted theta
    summary: dict = field(default_factory=dict)
    status: int = 0  # FIT_OK, FIT_DEGENERATE or FIT_NOT_CONVERGED
    flags: tuple[str, ...] = ()  # what makes a fit degenerate: "E_at_zero", "alpha_range", ...
    backtest: dict | None = None  # Backtest.as_dict() of the same data and law
    calibration: dict | None = None  # the extrapolation-error term fitted from the backtest
    remedy: dict | None = None  # for a degenerate fit: the remedies tried and the one chosen
    # a model average: (Member(weight, theta, form), ...); the point prediction is the
    # weighted mean of their log predictions, `bootstrap` their pooled refits (a `Refits`
    # when the forms differ), `theta` and `form` the heaviest member's (what `params` reads)
    members: tuple[Member, ...] | None = None
    # the closed form `theta` belongs to: None for the law's own (LAWS[law]), "frontier"
    # for the IsoFLOP approach-2 frontier (`derisk.scaling._frontier`)
    form: str | None = None

    def law_form(self):
        """The closed form of `theta` and `bootstrap` (a LawForm or the FrontierForm)."""
        return FORMS[self.form or self.law]

    def log_samples(self, X: np.ndarray) -> np.ndarray:
        """(B, n) log predictions at log inputs X under each bootstrap refit (under the
        fit itself, B = 1, without a bootstrap)."""
        if isinstance(self.bootstrap, Refits):
            return self.bootstrap.log_predict(X)
        if self.bootstrap is None and self.members:  # an average without refits: its point
            with np.errstate(all="ignore"):
                return np.log(self.predict(X))[None]
        thetas = self.bootstrap if self.bootstrap is not None else self.theta[None]
        return self.law_form().log_predict(thetas, X)

    def intervals(self, level: float = 0.8) -> dict[str, tuple[float, float]]:
        """Central bootstrap intervals of the readable parameters (for a model average
        of several forms, over the refits of the form `params` are in)."""
        if self.bootstrap is None or not len(self.bootstrap):
            return {}
        law = self.law_form()
        boot = self.bootstrap
        if isinstance(boot, Refits):
            boot = boot.of_form(law.name)
            if not len(boot):
                return {}
        vals = {k: [] for k in self.params}
        for th in boot:
            for k, v in law.readable(th).items():
                vals[k].append(v)
        lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
        return {k: (float(np.quantile(v, lo)), float(np.quantile(v, hi))) for k, v in vals.items()}

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Point prediction of the loss at log inputs X (n, 3); for a model average, the
        weighted mean of its members' log predictions."""
        if self.members:
            return np.exp(
                sum(
                    m.weight * FORMS[m.form].log_predict(np.asarray(m.theta), X)
                    for m in self.members
                )
            )
        return np.exp(self.law_form().log_predict(self.theta, X))

    def extrapolation_sigma(self, X: np.ndarray) -> np.ndarray:
        """(n,) log-scale sd of the calibrated extrapolation error at log inputs X: on
        each axis (parameters N, tokens D, compute 6ND), its per-decade scale times the
        decades beyond the largest fitted run; the largest of them. 0 in range or for an
        uncalibrated law. An axis the law's calibration lacks (tokens, in law files from
        before it was added) borrows the largest per-decade scale of the others, with its
        reference from the law's data ranges: a run far beyond the data in tokens alone
        is not forecast as if it were in range."""
        axes = dict((self.calibration or {}).get("axes") or {})
        out = np.zeros(len(X))
        if not axes:
            return out
        k_max = max(float(t["per_decade"]) for t in axes.values())
        seen = self.summary or {}
        for axis in ("params", "tokens"):
            if axis not in axes and seen.get(axis):
                axes[axis] = {"reference": float(seen[axis][1]), "per_decade": k_max}
        for axis, term in axes.items():
            if axis == "params":
                x = X[:, 0]
            elif axis == "tokens":
                x = X[:, 1]
            else:  # compute, 6ND
                x = np.log(6.0) + X[:, 0] + X[:, 1]
            decades = np.maximum(0.0, (x - np.log(term["reference"])) / np.log(10.0))
            out = np.maximum(out, term["per_decade"] * decades)
        return out

    def predictive_samples(
        self, X: np.ndarray, *, rng=None, noise: bool = True, calibrated: bool = True
    ) -> np.ndarray:
        """(B, n) samples of the loss: bootstrap parameters x log-normal run noise (x the
        calibrated extrapolation error beyond the fitted runs, unless `calibrated` is
        False)."""
        logp = self.log_samples(X)  # (B, n)
        if noise and self.sigma_log > 0:
            rng = np.random.default_rng(0) if rng is None else rng
            logp = logp + rng.normal(0.0, self.sigma_log, size=logp.shape)
        extra = self.extrapolation_sigma(X) if calibrated else np.zeros(len(X))
        if noise and np.any(extra > 0):
            # Its own stream: in range (extra 0) the samples are exactly the uncalibrated ones.
            logp = logp + np.random.default_rng(1).standard_normal(logp.shape) * extra
        return np.exp(logp)

    def predictive_band(self, X: np.ndarray, level: float = 0.8, *, calibrated: bool = True):
        """(lo, median, hi) of the predictive distribution at the first row of X: the
        central `level` interval and the median of the same mixture `prob_below` uses
        (`_mixture`), so P(loss < lo) = (1 - level) / 2 and P(loss < median) = 0.5
        exactly. None without bootstrap samples.

        Raises DataError when the law's samples there are not finite.
        """
        if self.bootstrap is None:
            return None
        from derisk.scaling._mixture import mixture_band

        with np.errstate(all="ignore"):
            means = self.log_samples(X[:1])[:, 0]
            point = float(self.predict(X[:1])[0])
        with np.errstate(all="ignore"):
            losses = np.exp(means)  # every refit's loss must be a number, not only its log
        if not (np.all(np.isfinite(losses)) and np.isfinite(point)):
            raise DataError(_non_finite(self, X[0]))
        extra = float(self.extrapolation_sigma(X[:1])[0]) if calibrated else 0.0
        lo, mid, hi = mixture_band(means, math.hypot(self.sigma_log, extra), level)
        if not lo <= point <= hi:
            # Far from the fitted runs the refits' distribution can be so skewed that the
            # fit itself falls outside their band. The band stays the distribution's (it
            # is what p is computed from); the user is told.
            warnings.warn(
                "the law's own prediction here falls outside its predictive band (the "
                "bootstrap refits disagree with the fit this far from its runs): trust "
                "neither far",
                DeriskWarning,
                stacklevel=2,
            )
        return lo, mid, hi

    def predictive_interval(self, X: np.ndarray, level: float = 0.8, *, calibrated: bool = True):
        """Central `level` predictive interval (lo, hi) at the first row of X (see
        `predictive_band`); None without bootstrap samples."""
        band = self.predictive_band(X, level, calibrated=calibrated)
        return None if band is None else (band[0], band[2])

    def prob_below(self, X: np.ndarray, threshold: float, *, calibrated: bool = True) -> np.ndarray:
        """P(loss < threshold) at each input: mean over bootstrap of the noise CDF (run
        noise and, calibrated, the extrapolation error: log-normal, their variances add)."""
        with np.errstate(all="ignore"):
            logp = self.log_samples(X)
        if not np.all(np.isfinite(logp)):
            raise DataError(_non_finite(self, X[0]))
        extra = self.extrapolation_sigma(X) if calibrated else np.zeros(len(X))
        sigma = np.maximum(np.sqrt(self.sigma_log**2 + extra**2), 1e-12)  # (n,)
        return stats.norm.cdf((np.log(threshold) - logp) / sigma).mean(axis=0)


def robust_sigma(resid: np.ndarray) -> float:
    """The run-to-run noise of log residuals: their median absolute deviation, scaled to
    a normal's sd (1.4826), so a few outlying runs do not inflate it."""
    return float(1.4826 * np.median(np.abs(resid - np.median(resid))))


FIT_OK, FIT_DEGENERATE, FIT_NOT_CONVERGED = 0, 1, 2
EXPONENT_RANGE = (0.1, 0.7)  # alpha, beta published for language models, roughly
EXPONENT_BOUNDS = (0.01, 2.0)  # beyond these an exponent has run to a bound
E_FLOOR = 0.01  # E below this fraction of the lowest loss has run to its bound at 0
STARTS_AGREE = 0.05  # near-optimal starts whose exponents differ more than this disagree
NEAR_OPTIMUM = 1e-3  # relative objective within which a start counts as near-optimal


def diagnose(
    law: str,
    theta: np.ndarray,
    min_loss: float,
    *,
    near_optimal: np.ndarray | None = None,
    fixed_E: bool = False,
) -> tuple[tuple[str, ...], list[str]]:
    """What makes a fitted law degenerate: (flags, one sentence per flag).

    Checks the irreducible loss E against its bounds (0, and the lowest observed loss
    `min_loss`, which E cannot exceed), the exponents alpha and beta against their bounds
    (EXPONENT_BOUNDS) and against the published range (EXPONENT_RANGE, roughly 0.1-0.7),
    and, with `near_optimal` (K, P) thetas of the starts that reached nearly the best
    objective, whether those starts disagree on the exponents (the optimum is a ridge, not
    a point). No flags: a healthy fit.

    >>> diagnose("chinchilla", np.array([6.2, 7.6, np.log(1.8), 0.34, 0.37]), 2.0)
    ((), [])
    """
    form = LAWS[law]
    p = form.readable(np.asarray(theta, dtype=np.float64))
    flags, words = [], []
    irreducible = float(p["E"])
    if not fixed_E and irreducible < E_FLOOR * min_loss:
        flags.append("E_at_zero")
        words.append(
            f"E = {irreducible:.3g} is at its bound 0 (no irreducible loss: the data "
            "cannot separate E from the power laws; hold it with --fix-E)"
        )
    elif not fixed_E and irreducible >= (1 - 1e-3) * min_loss:
        flags.append("E_at_ceiling")
        words.append(
            f"E = {irreducible:.4g} is at the lowest observed loss {min_loss:.4g} (the "
            "power-law terms vanish on the best runs; hold E lower with --fix-E)"
        )
    for name in ("alpha", "beta"):
        v = float(p[name])
        lo, hi = EXPONENT_BOUNDS
        if not lo <= v <= hi:
            flags.append(f"{name}_at_bound")
            words.append(f"{name} = {v:.3g} is at a bound (outside {lo:g}-{hi:g})")
        elif not EXPONENT_RANGE[0] <= v <= EXPONENT_RANGE[1]:
            flags.append(f"{name}_range")
            words.append(
                f"{name} = {v:.3g} is outside the published range "
                f"{EXPONENT_RANGE[0]:g}-{EXPONENT_RANGE[1]:g}"
            )
    if near_optimal is not None and len(near_optimal) > 1:
        spread = {
            name: float(np.ptp([form.readable(t)[name] for t in near_optimal]))
            for name in ("alpha", "beta")
        }
        worst = max(spread, key=spread.get)
        if spread[worst] > STARTS_AGREE:
            flags.append("starts_disagree")
            words.append(
                f"{len(near_optimal)} starts reach nearly the best objective with {worst} "
                f"{spread[worst]:.3g} apart (a ridge, not a point: the data does not pin "
                "the exponents down)"
            )
    return tuple(flags), words


def fit_status(success: bool, flags: tuple[str, ...], words: list[str], optimizer: str):
    """(status, message) of a fit from L-BFGS's outcome and `diagnose`'s flags."""
    if not success:
        return FIT_NOT_CONVERGED, f"L-BFGS did not converge: {optimizer}"
    if flags:
        return FIT_DEGENERATE, "degenerate fit: " + "; ".join(words)
    return FIT_OK, "converged; E and exponents inside their usual ranges"


def _non_finite(fit: FitResult, x: np.ndarray) -> str:
    with np.errstate(all="ignore"):
        n, d, g = np.exp(x)
    at = f"params {n:.3g}, tokens {d:.3g}"
    if fit.law != "chinchilla":
        at += f", {LAWS[fit.law].inputs[2]} {g:.3g}"
    return (
        f"the {fit.law} law predicts a non-finite loss at {at}: too far outside its fitted "
        "runs to evaluate (or its parameters are corrupt; refit it)"
    )


def _inputs(law: LawForm, data: RunData) -> tuple[np.ndarray, np.ndarray]:
    g = np.ones(data.n)
    if "granularity" in law.inputs:
        g = data.granularity
    elif "experts" in law.inputs:
        g = data.experts
    X = np.stack([np.log(data.params), np.log(data.tokens), np.log(g)], axis=1)
    return X, np.log(data.loss)


E_INDEX = 2  # every law keeps its irreducible loss as log E at theta[2]

MAX_ROWS = 10_000  # past this many runs a fit uses a random subset (see fit_law)
SCREEN_ELEMENTS = 2**21  # grid points x runs x terms per screening chunk (16 MB a float array)
SCREEN_ROWS = 2_000  # runs the grid screen reads (L-BFGS then reads them all)


class _Problem:
    """One fit's data with what every objective evaluation reuses: the log inputs X
    (n, 3), the log losses y (n,) and the term Jacobian (n, J, P), built once instead of
    at each of the thousands of L-BFGS evaluations."""

    def __init__(self, law: LawForm, X: np.ndarray, y: np.ndarray, delta: float):
        self.law, self.X, self.y, self.delta = law, X, y, delta
        self.prior = None  # (indices, means, sds, weight): a Gaussian penalty on exponents
        jac = law.term_jacobian(X)  # (n, J, P)
        self.n_terms = jac.shape[1]
        # Terms first, (J n, P): reductions over the J terms then run along rows of
        # length n, 5x faster than numpy's reduction over a last axis of length 3.
        self.jac_terms_first = np.ascontiguousarray(jac.transpose(1, 0, 2)).reshape(
            -1, jac.shape[2]
        )

    def value_and_grad(self, theta: np.ndarray, weights: np.ndarray | None):
        """Huber objective and gradient at one theta (P,), as `objective`. The terms are
        linear in theta with no offset (t = jac . theta), so both directions of the chain
        rule are one (J n) x P matrix-vector product."""
        t = (self.jac_terms_first @ theta).reshape(self.n_terms, -1)  # (J, n)
        m = t.max(axis=0)
        e = np.exp(t - m)
        s = e.sum(axis=0)
        loss, dl = _huber(m + np.log(s) - self.y, self.delta)
        if weights is not None:
            loss, dl = loss * weights, dl * weights
        dt = (e * (dl / s)).reshape(-1)  # (J n,) d objective / d t
        value, grad = float(loss.sum()), dt @ self.jac_terms_first
        if self.prior is not None:
            idx, mu, sd, w = self.prior
            z = (theta[idx] - mu) / sd
            value += w * 0.5 * float(z @ z)
            grad = grad.copy()
            grad[idx] += w * z / sd
        return value, grad

    def screen(self, grid: np.ndarray, rows: int | None = None, seed: int = 0) -> np.ndarray:
        """Huber objective (no gradient) at every grid point (K, P) -> (K,), in chunks of
        at most SCREEN_ELEMENTS terms, so memory stays O(chunk) whatever the run count.

        With `rows`, on a random `rows` of the runs: the screen only ranks starts for
        L-BFGS, which then reads every run, and a few thousand runs rank them as well.
        """
        X, y = self.X, self.y
        if rows is not None and len(y) > rows:
            keep = np.random.default_rng(seed).choice(len(y), size=rows, replace=False)
            X, y = X[keep], y[keep]
        size = max(1, SCREEN_ELEMENTS // (len(y) * self.n_terms))
        out = np.empty(len(grid))
        for i in range(0, len(grid), size):
            lp = self.law.log_predict(grid[i : i + size], X)  # (k, n)
            out[i : i + size] = _huber(lp - y, self.delta)[0].sum(axis=-1)
        return out


def _minimize(problem: _Problem, start, weights, bounds=None):
    return optimize.minimize(
        problem.value_and_grad,
        start,
        args=(weights,),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12},
    )


@contextlib.contextmanager
def _one_blas_thread():
    """Run BLAS on one thread while fitting. scipy's L-BFGS-B makes thousands of BLAS
    calls on 5x10 matrices; OpenBLAS threads that spin-wait on a busy machine made a
    200-run fit 10x slower (18 s against 1.9 s on 2 shared cores). Without threadpoolctl
    this does nothing."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _phase(on_phase, message: str) -> None:
    if on_phase is not None:
        on_phase(message)


@_one_blas_thread()
def fit_law(
    data: RunData,
    law: str = "chinchilla",
    *,
    starts: int = 64,
    delta: float = HUBER_DELTA,
    bootstrap: int = 0,
    seed: int = 0,
    fix_E: float | None = None,
    E_min: float | None = None,
    exponent_prior: tuple[float, float] | None = None,
    max_rows: int | None = MAX_ROWS,
    progress=None,
    on_phase=None,
) -> FitResult:
    """Fit a law by Huber-loss L-BFGS from the best points of a grid of initialisations.

    Every grid point (4,500 for chinchilla, Hoffmann et al.'s grid) is scored, in chunks
    of bounded memory; L-BFGS-B then runs from the `starts` best (at most the grid size),
    and the best optimum is kept. With `bootstrap > 0`, runs are resampled with replacement
    and refitted (from the optimum and two of the 8 best grid points) to give parameter
    uncertainty. `fix_E` holds the irreducible loss at a given value (e.g. the dense fit's,
    for an MoE law on the same data: E belongs to the text, not to the architecture),
    which small sweeps often cannot identify on their own. `E_min` bounds it below instead
    (E cannot run to 0). `exponent_prior` = (mean, sd) puts a weakly informative Gaussian
    prior on the exponents alpha and beta: a penalty in the Huber objective's units, the
    prior's negative log density times delta x the mean absolute log residual of the
    unpenalised fit (the Huber loss is delta x |r| for |r| >> delta, a Laplace negative log
    likelihood of scale b times delta x b).

    Time grows with the number of runs (every L-BFGS step reads them all): past
    `max_rows` runs (None: no limit) the fit uses a random `max_rows` of them, chosen by
    `seed`, and says so with a `DeriskWarning`. `progress(k)` is called after each
    bootstrap refit, `on_phase(message)` at the start of each phase.

    Raises DataError for data that cannot identify the law, ValueError for bad options.
    """
    t0 = time.perf_counter()
    if law not in LAWS:
        raise ValueError(f"law must be one of {', '.join(LAWS)}, got {law!r}")
    form = LAWS[law]
    for name, v, lo in (("starts", starts, 1), ("bootstrap", bootstrap, 0), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if max_rows is not None and not (isinstance(max_rows, int | np.integer) and max_rows >= 1):
        raise ValueError(f"max_rows must be a positive integer or None, got {max_rows!r}")
    if not (isinstance(delta, int | float) and math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be a positive finite number, got {delta!r}")
    for name, v in (("fix_E", fix_E), ("E_min", E_min)):
        if v is not None and not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite loss, got {v!r}")
    if fix_E is not None and E_min is not None:
        raise ValueError("give fix_E or E_min, not both (fix_E holds E; E_min bounds it)")
    if exponent_prior is not None:
        mu, sd = exponent_prior
        if not (math.isfinite(mu) and math.isfinite(sd) and sd > 0):
            raise ValueError(f"exponent_prior must be (mean, sd > 0), got {exponent_prior!r}")
    data.require(form)
    full = data
    if max_rows is not None and data.n > max_rows:
        keep = np.zeros(data.n, dtype=bool)
        keep[np.random.default_rng(seed).choice(data.n, size=max_rows, replace=False)] = True
        data = data.subset(keep)
        data.require(form)
        warnings.warn(
            f"{full.source}: fitting a random {max_rows:,} of its {full.n:,} runs (seed "
            f"{seed}) to bound the time (every L-BFGS step reads every run); "
            "raise the limit (`--max-rows`) to use more",
            DeriskWarning,
            stacklevel=2,
        )
    X, y = _inputs(form, data)
    grid = form.starts()
    bounds = None
    if fix_E is not None:
        grid = np.unique(np.where(np.arange(grid.shape[1]) == E_INDEX, np.log(fix_E), grid), axis=0)
        bounds = [(None, None)] * grid.shape[1]
        bounds[E_INDEX] = (np.log(fix_E), np.log(fix_E))
    if E_min is not None:
        grid = np.unique(
            np.where(np.arange(grid.shape[1]) == E_INDEX, np.maximum(grid, np.log(E_min)), grid),
            axis=0,
        )
        bounds = [(None, None)] * grid.shape[1]
        bounds[E_INDEX] = (np.log(E_min), None)
    if starts > len(grid):
        warnings.warn(
            f"{starts:,} starts asked for, but the {law} grid has {len(grid):,} points: "
            f"running {len(grid):,}",
            DeriskWarning,
            stacklevel=2,
        )
        starts = len(grid)
    problem = _Problem(form, X, y, delta)
    used = min(data.n, SCREEN_ROWS)
    _phase(on_phase, f"screening {len(grid):,} grid starts on {used:,} of {data.n:,} runs")
    with np.errstate(over="ignore", invalid="ignore"):
        scores = problem.screen(grid, SCREEN_ROWS, seed)
    order = np.argsort(scores)
    _phase(on_phase, f"L-BFGS from the best {starts:,} of them")
    results = [_minimize(problem, s, None, bounds) for s in grid[order[:starts]]]
    ran = len(results)
    losses = np.array([r.fun for r in results])
    if not np.isfinite(losses).any():
        raise DataError(f"{data.source}: the {law} fit diverged from every start")
    if exponent_prior is not None:
        # The prior's weight needs the residual scale: take it from the unpenalised
        # optimum, then rerun L-BFGS with the prior from the 8 best optima.
        best0 = results[int(np.nanargmin(losses))].x
        b = float(np.mean(np.abs(form.log_predict(best0, X) - y)))
        idx = np.array([form.params.index("alpha"), form.params.index("beta")])
        problem.prior = (idx, float(exponent_prior[0]), float(exponent_prior[1]), delta * b)
        top = [results[i].x for i in np.argsort(losses)[:8]]
        results = [_minimize(problem, s, None, bounds) for s in top]  # starts: these 8
        losses = np.array([r.fun for r in results])
    k = int(np.nanargmin(losses))
    best = results[k]
    at_opt = int(np.sum(losses <= losses[k] * (1 + 1e-9) + 1e-15))
    theta = best.x
    near = np.array(
        [
            r.x
            for r, f in zip(results, losses, strict=True)
            if f <= losses[k] * (1 + NEAR_OPTIMUM) + 1e-15
        ]
    )
    flags, words = diagnose(
        law, theta, float(np.min(data.loss)), near_optimal=near, fixed_E=fix_E is not None
    )
    status, message = fit_status(bool(best.success), flags, words, str(best.message))
    resid = form.log_predict(theta, X) - y
    sigma = robust_sigma(resid)
    boot = None
    if bootstrap:
        _phase(on_phase, f"bootstrap: {bootstrap:,} refits on resampled runs")
        rng = np.random.default_rng(seed)
        inits = [theta, *grid[order[:8]]]
        boot = np.empty((bootstrap, len(theta)))
        for b in range(bootstrap):
            idx = rng.integers(0, data.n, size=data.n)
            w = np.bincount(idx, minlength=data.n).astype(float)  # resampling as weights
            fits = [_minimize(problem, s, w, bounds) for s in inputs_for(inits, b)]
            boot[b] = min(fits, key=lambda r: r.fun).x
            if progress is not None:
                progress(1)
    if not (np.all(np.isfinite(theta)) and (boot is None or np.all(np.isfinite(boot)))):
        raise DataError(f"{data.source}: the {law} fit gave non-finite parameters")
    summary = full.summary()
    if data is not full:
        summary["runs_fitted"] = data.n
    return FitResult(
        law=law,
        theta=theta,
        params={k: float(v) for k, v in form.readable(theta).items()},
        loss=float(best.fun),
        starts=ran,
        starts_at_optimum=at_opt,
        screened=len(grid),
        n=data.n,
        rmse_log=float(np.sqrt(np.mean(resid**2))),
        sigma_log=sigma,
        success=bool(best.success),
        message=message,
        seconds=time.perf_counter() - t0,
        bootstrap=boot,
        summary=summary,
        status=status,
        flags=flags,
    )


def inputs_for(inits, b):
    # The optimum always; two grid points in rotation keep refits cheap but not blind.
    return [
        inits[0],
        inits[1 + (2 * b) % (len(inits) - 1)],
        inits[1 + (2 * b + 1) % (len(inits) - 1)],
    ]
