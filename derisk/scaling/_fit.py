"""Fitting laws: Huber loss on log residuals, multi-start L-BFGS, bootstrap, prediction."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

from derisk.scaling._data import RunData
from derisk.scaling._laws import LAWS, LawForm

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


@dataclass(frozen=True)
class FitResult:
    """A fitted law (scipy.optimize style: success, status, message)."""

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

    def intervals(self, level: float = 0.8) -> dict[str, tuple[float, float]]:
        """Central bootstrap intervals of the readable parameters."""
        if self.bootstrap is None or not len(self.bootstrap):
            return {}
        law = LAWS[self.law]
        vals = {k: [] for k in self.params}
        for th in self.bootstrap:
            for k, v in law.readable(th).items():
                vals[k].append(v)
        lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
        return {k: (float(np.quantile(v, lo)), float(np.quantile(v, hi))) for k, v in vals.items()}

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Point prediction of the loss at log inputs X (n, 3)."""
        return np.exp(LAWS[self.law].log_predict(self.theta, X))

    def predictive_samples(self, X: np.ndarray, *, rng=None, noise: bool = True) -> np.ndarray:
        """(B, n) samples of the loss: bootstrap parameters x log-normal run noise."""
        law = LAWS[self.law]
        thetas = self.bootstrap if self.bootstrap is not None else self.theta[None]
        logp = law.log_predict(thetas, X)  # (B, n)
        if noise and self.sigma_log > 0:
            rng = np.random.default_rng(0) if rng is None else rng
            logp = logp + rng.normal(0.0, self.sigma_log, size=logp.shape)
        return np.exp(logp)

    def predictive_interval(self, X: np.ndarray, level: float = 0.8):
        """Central predictive interval (lo, hi) of the loss at the first row of X; None
        without bootstrap samples."""
        if self.bootstrap is None:
            return None
        s = self.predictive_samples(X[:1])[:, 0]
        q = (1 - level) / 2
        return float(np.quantile(s, q)), float(np.quantile(s, 1 - q))

    def prob_below(self, X: np.ndarray, threshold: float) -> np.ndarray:
        """P(loss < threshold) at each input: mean over bootstrap of the noise CDF."""
        law = LAWS[self.law]
        thetas = self.bootstrap if self.bootstrap is not None else self.theta[None]
        logp = law.log_predict(thetas, X)
        sigma = max(self.sigma_log, 1e-12)
        return stats.norm.cdf((np.log(threshold) - logp) / sigma).mean(axis=0)


def _inputs(law: LawForm, data: RunData) -> tuple[np.ndarray, np.ndarray]:
    g = np.ones(data.n)
    if "granularity" in law.inputs:
        g = data.granularity
    elif "experts" in law.inputs:
        g = data.experts
    X = np.stack([np.log(data.params), np.log(data.tokens), np.log(g)], axis=1)
    return X, np.log(data.loss)


E_INDEX = 2  # every law keeps its irreducible loss as log E at theta[2]


def _minimize(law, start, X, y, delta, weights, bounds=None):
    res = optimize.minimize(
        objective_scalar,
        start,
        args=(law, X, y, delta, weights),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12},
    )
    return res


def objective_scalar(theta, law, X, y, delta, weights):
    loss, grad = objective(law, theta, X, y, delta, weights)
    return float(loss), np.asarray(grad, dtype=np.float64)


def fit_law(
    data: RunData,
    law: str = "chinchilla",
    *,
    starts: int = 64,
    delta: float = HUBER_DELTA,
    bootstrap: int = 0,
    seed: int = 0,
    fix_E: float | None = None,
    progress=None,
) -> FitResult:
    """Fit a law by Huber-loss L-BFGS from the best points of a grid of initialisations.

    Every grid point (4,500 for chinchilla, Hoffmann et al.'s grid) is scored in one
    vectorised evaluation; L-BFGS-B then runs from the `starts` best, and the best optimum
    is kept. With `bootstrap > 0`, runs are resampled with replacement and refitted
    (from the optimum and the 8 best grid points) to give parameter uncertainty.
    `fix_E` holds the irreducible loss at a given value (e.g. the dense fit's, for an
    MoE law on the same data: E belongs to the text, not to the architecture), which
    small sweeps often cannot identify on their own.
    """
    t0 = time.perf_counter()
    form = LAWS[law]
    data.require(form)
    X, y = _inputs(form, data)
    grid = form.starts()
    bounds = None
    if fix_E is not None:
        if not fix_E > 0:
            raise ValueError(f"fix_E must be positive, got {fix_E!r}")
        grid = np.unique(np.where(np.arange(grid.shape[1]) == E_INDEX, np.log(fix_E), grid), axis=0)
        bounds = [(None, None)] * grid.shape[1]
        bounds[E_INDEX] = (np.log(fix_E), np.log(fix_E))
    scores = np.concatenate(
        [
            objective(form, chunk, X, y, delta)[0]
            for chunk in np.array_split(grid, max(1, len(grid) // 512))
        ]
    )
    order = np.argsort(scores)
    best_starts = grid[order[: max(1, starts)]]
    results = [_minimize(form, s, X, y, delta, None, bounds) for s in best_starts]
    losses = np.array([r.fun for r in results])
    k = int(np.argmin(losses))
    best = results[k]
    at_opt = int(np.sum(losses <= losses[k] * (1 + 1e-9) + 1e-15))
    theta = best.x
    resid = form.log_predict(theta, X) - y
    sigma = float(1.4826 * np.median(np.abs(resid - np.median(resid))))
    boot = None
    if bootstrap:
        rng = np.random.default_rng(seed)
        inits = [theta, *grid[order[:8]]]
        boot = np.empty((bootstrap, len(theta)))
        for b in range(bootstrap):
            idx = rng.integers(0, data.n, size=data.n)
            w = np.bincount(idx, minlength=data.n).astype(float)  # resampling as weights
            fits = [_minimize(form, s, X, y, delta, w, bounds) for s in inputs_for(inits, b)]
            boot[b] = min(fits, key=lambda r: r.fun).x
            if progress is not None:
                progress(1)
    return FitResult(
        law=law,
        theta=theta,
        params={k: float(v) for k, v in form.readable(theta).items()},
        loss=float(best.fun),
        starts=len(results),
        starts_at_optimum=at_opt,
        screened=len(grid),
        n=data.n,
        rmse_log=float(np.sqrt(np.mean(resid**2))),
        sigma_log=sigma,
        success=bool(best.success),
        message=str(best.message),
        seconds=time.perf_counter() - t0,
        bootstrap=boot,
        summary=data.summary(),
    )


def inputs_for(inits, b):
    # The optimum always; two grid points in rotation keep refits cheap but not blind.
    return [
        inits[0],
        inits[1 + (2 * b) % (len(inits) - 1)],
        inits[1 + (2 * b + 1) % (len(inits) - 1)],
    ]
