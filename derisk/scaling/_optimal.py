"""Compute-optimal allocation, IsoFLOP fits (approach 2), saved laws."""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import optimize

from derisk._flops import TRAINER_VOCAB, flops_per_token_from_params
from derisk._paths import data_path
from derisk.errors import DataError
from derisk.scaling._data import RunData
from derisk.scaling._fit import FitResult, Refits
from derisk.scaling._lawfile import fit_from_json, load_law_file
from derisk.scaling._laws import FORMS


def flops_per_token(
    params: float | np.ndarray, *, seq_len: int = 2048, vocab: int = TRAINER_VOCAB
) -> float | np.ndarray:
    """Training FLOPs per token of a decoder with `params` active non-embedding
    parameters: derisk's one count (`derisk._flops`: weight matmuls, output head and
    causal attention, forward + backward), on the usual aspect ratio d_model = 128 x
    layers."""
    return flops_per_token_from_params(params, seq_len=seq_len, vocab=vocab)


@dataclass(frozen=True)
class Allocation:
    flops: float
    params: float  # N*
    tokens: float  # D*
    tokens_per_param: float
    loss: float
    loss_interval: tuple[float, float] | None
    method: str  # "closed form (C = 6ND)" or "numeric (exact FLOPs)"


def _closed_form_params(form: str, theta, flops: float) -> float:
    """N* at compute `flops` under C = 6ND for one closed form: Chinchilla's (Hoffmann
    et al. 2022, eq. 4: N* = G (C/6)^(b/(a+b)), G = (alpha A / (beta B))^(1/(a+b))) or the
    IsoFLOP frontier's own N_opt(C) = k_n C^a.

    Raises DataError for exponents under which loss would not fall with compute."""
    p = FORMS[form].readable(np.asarray(theta, dtype=np.float64))
    if form == "frontier":
        if not 0 < p["a"] < 1:
            raise DataError(
                f"the frontier's N_opt ~ C^a needs 0 < a < 1 for a compute-optimal size, "
                f"got a = {p['a']:g}"
            )
        with np.errstate(all="ignore"):
            return float(np.exp(FORMS[form].parts(theta, np.log([flops]))[0][0]))
    if form != "chinchilla":
        raise ValueError("use effective_params for MoE laws; allocate with the dense view")
    A, B, al, be = p["A"], p["B"], p["alpha"], p["beta"]
    if not (al > 0 and be > 0):
        raise DataError(
            f"the law's exponents must be positive for a compute-optimal size (alpha "
            f"{al:g}, beta {be:g}): loss would not fall with model size or tokens"
        )
    with np.errstate(all="ignore"):
        G = (al * A / (be * B)) ** (1 / (al + be))
        return float(G * (flops / 6) ** (be / (al + be)))


def optimal_allocation(
    fit: FitResult,
    flops: float,
    *,
    exact: bool = False,
    seq_len: int = 2048,
    level: float = 0.8,
    calibrated: bool = True,
) -> Allocation:
    """N*(C), D*(C) minimising the fitted loss at compute C.

    Closed form under C = 6ND: for Chinchilla's form Hoffmann et al. 2022, eq. 4,
    N* = G (C/6)^(b/(a+b)), D* = G^-1 (C/6)^(a/(a+b)), G = (alpha A / (beta B))^(1/(a+b));
    for the IsoFLOP frontier its own N_opt(C) = k_n C^a, D* = C / (6 N*). A model average
    has no closed form: its loss (the weighted log mean of its members') is minimised
    numerically along C = 6ND, between its members' own optima widened by a decade.
    With exact=True, C = D x flops_per_token(N) (attention included), solved numerically
    for any law. The loss interval includes the law's calibrated extrapolation error
    unless `calibrated` is False.
    """
    if not (np.isfinite(flops) and flops > 0):
        raise ValueError(f"flops must be a positive number, got {flops!r}")
    if fit.law != "chinchilla":
        raise ValueError(f"compute-optimal allocation needs a dense law; got {fit.law}")
    if not (isinstance(seq_len, int | np.integer) and seq_len >= 1):
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    if exact and not flops / 6 > 1e3:
        raise ValueError(f"flops must be above 6e3 for the exact allocation, got {flops:g}")
    members = fit.members or ((1.0, tuple(fit.theta), fit.form or fit.law),)
    own = [_closed_form_params(form, theta, flops) for _, theta, form in members]

    def tokens(n_):
        return flops / (flops_per_token(n_, seq_len=seq_len) if exact else 6.0 * n_)

    if not exact and not fit.members:
        n = own[0]
        d = flops / 6 / n
        method = (
            "IsoFLOP frontier (N_opt = k C^a, C = 6ND)"
            if fit.form == "frontier"
            else "closed form (C = 6ND)"
        )
    else:

        def loss_at(logn):
            n_ = np.exp(logn)
            with np.errstate(all="ignore"):
                return float(np.log(fit.predict(np.array([[logn, np.log(tokens(n_)), 0.0]]))[0]))

        lo, hi = np.log(1e3), np.log(flops / 6 / 1.0)
        if not exact:  # a model average: between its members' optima, a decade either side
            logs = np.log(own)
            if np.all(np.isfinite(logs)):
                lo = max(lo, float(logs.min()) - np.log(10.0))
                hi = min(hi, float(logs.max()) + np.log(10.0))
        res = optimize.minimize_scalar(
            loss_at, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10}
        )
        n = float(np.exp(res.x))
        d = float(tokens(n))
        method = (
            "numeric (exact FLOPs, attention included)"
            if exact
            else "numeric (model average, C = 6ND)"
        )
    if not (np.isfinite(n) and np.isfinite(d) and n > 0 and d > 0):
        raise DataError(
            f"the law's compute-optimal allocation at {flops:g} FLOPs is not finite "
            f"(N* {n:g}, D* {d:g}): too far outside its fitted runs"
        )
    X = np.array([[np.log(n), np.log(d), 0.0]])
    with np.errstate(all="ignore"):
        point = float(fit.predict(X)[0])
    if not np.isfinite(point):
        raise DataError(f"the law predicts a non-finite loss at {flops:g} FLOPs")
    interval = fit.predictive_interval(X, level, calibrated=calibrated)
    return Allocation(
        flops=float(flops),
        params=float(n),
        tokens=float(d),
        tokens_per_param=float(d / n),
        loss=point,
        loss_interval=interval,
        method=method,
    )


def effective_params(
    fit: FitResult, params: float, *, experts: float = 1.0, granularity: float = 1.0
) -> float:
    """The dense parameter count this MoE is worth under the fitted law.

    moe_experts: N_eff = N X^(gamma/alpha). moe (granularity G): the parameter term
    (g/G^gamma + a)/N^alpha equals (g + a)/N_eff^alpha, i.e. relative to G = 1.
    """
    p = fit.params
    if fit.law == "moe_experts":
        return float(params * experts ** (p["gamma"] / p["alpha"]))
    if fit.law == "moe":
        ratio = (p["g"] + p["A"]) / (p["g"] / granularity ** p["gamma"] + p["A"])
        return float(params * ratio ** (1 / p["alpha"]))
    return float(params)


@dataclass(frozen=True)
class IsoFlopFit:
    """Approach 2: per-budget parabola minima, then N_opt = k C^a.

    Per slice (one entry per budget kept): `budgets` (mean 6ND of the parabola's runs),
    `n_opt` (the parabola's minimum), `loss_opt` (the loss there), `curvature` (the
    parabola's coefficient c in L = L_opt + c (log N - log N_opt)^2) and `runs` (the row
    indices of the slice's runs, all of them, before the window around the best run).
    """

    budgets: np.ndarray
    n_opt: np.ndarray
    a: float  # exponent of N_opt in C
    b: float  # exponent of D_opt in C
    k_n: float
    loss_opt: np.ndarray | None = None
    curvature: np.ndarray | None = None
    runs: tuple[np.ndarray, ...] = ()


def isoflop_slices(data: RunData, rel_tol: float = 0.1) -> list[np.ndarray]:
    """Row indices of the runs in each IsoFLOP slice: runs sorted by C = 6ND, a slice
    holding every run within `rel_tol` of its smallest C."""
    C = 6 * data.params * data.tokens
    order = np.argsort(C)
    groups, cur = [], [order[0]]
    for i in order[1:]:
        if C[i] <= C[cur[0]] * (1 + rel_tol):
            cur.append(i)
        else:
            groups.append(cur)
            cur = [i]
    groups.append(cur)
    return [np.asarray(g) for g in groups]


def slice_window(data: RunData, rows: np.ndarray, window_decades: float = 0.5) -> np.ndarray:
    """The rows of a slice within `window_decades` of its best (lowest-loss) run's size."""
    g = np.asarray(rows)
    best = g[np.argmin(data.loss[g])]
    return g[np.abs(np.log10(data.params[g] / data.params[best])) <= window_decades]


def slice_parabola(
    data: RunData, rows: np.ndarray, *, min_points: int = 3, window_decades: float = 0.5
) -> tuple[float, float, float, float] | None:
    """(budget, log N at the minimum, loss there, curvature) of one slice's parabola of
    loss in log N, or None when the slice does not bracket an identified minimum (too few
    points or distinct sizes, a parabola opening downwards, its minimum outside the
    slice). Only runs within `window_decades` of the slice's best run enter the fit: the
    loss is not symmetric in log N, so a parabola over a wide slice misplaces the minimum.
    """
    g = np.asarray(rows)
    if len(g) < min_points or len(np.unique(data.params[g])) < 3:
        return None
    g = slice_window(data, g, window_decades)
    if len(g) < min_points or len(np.unique(data.params[g])) < 3:
        return None
    x = np.log(data.params[g])
    c2, c1, c0 = np.polyfit(x, data.loss[g], 2)
    if c2 <= 0:
        return None
    xm = -c1 / (2 * c2)
    if not (x.min() <= xm <= x.max()):
        return None  # minimum outside the slice: not identified
    lmin = c0 - c1**2 / (4 * c2)
    if not lmin > 0:
        return None  # a parabola through a few noisy runs dipping below zero loss
    C = 6 * data.params[g] * data.tokens[g]
    return float(np.mean(C)), float(xm), float(lmin), float(c2)


def isoflop_fit(
    data: RunData, *, rel_tol: float = 0.1, min_points: int = 3, window_decades: float = 0.5
) -> IsoFlopFit:
    """Group runs into IsoFLOP slices (C = 6ND within rel_tol), fit a parabola of loss in
    log N per slice, and a power law to the minima (Hoffmann et al. 2022, approach 2).

    A slice counts when it has `min_points` runs at 3+ distinct sizes and its parabola
    brackets its minimum (`slice_parabola`); the data has IsoFLOP structure when 2+
    slices count.

    Raises DataError when fewer than 2 slices count.
    """
    kept, runs = [], []
    for g in isoflop_slices(data, rel_tol):
        p = slice_parabola(data, g, min_points=min_points, window_decades=window_decades)
        if p is not None:
            kept.append(p)
            runs.append(g)
    if len(kept) < 2:
        raise DataError(
            f"{data.source}: no IsoFLOP structure (need 2+ compute budgets with 3+ "
            "model sizes each, bracketing the optimum); use the approach-3 fit"
        )
    budgets, xm, lmin, curv = (np.array(v) for v in zip(*kept, strict=True))
    nopt = np.exp(xm)
    a, logk = np.polyfit(np.log(budgets), np.log(nopt), 1)
    return IsoFlopFit(
        budgets=budgets,
        n_opt=nopt,
        a=float(a),
        b=float(1 - a),
        k_n=float(np.exp(logk)),
        loss_opt=lmin,
        curvature=curv,
        runs=tuple(runs),
    )


# ------------------------------------------------------------------------- saved laws


def laws_dir() -> Path:
    """Where fitted laws are saved: $DERISK_LAWS, else ~/.local/share/derisk/laws."""
    return data_path("DERISK_LAWS", "laws")


def _refits_json(boot) -> list | None:
    if boot is None:
        return None
    if isinstance(boot, Refits):
        return [t.tolist() for t in boot.thetas]
    return boot.tolist()


def fit_to_json(fit: FitResult, *, provenance: dict | None = None) -> dict:
    """The law-file body of a fit (`save_law` writes it, `_lawfile` reads it back).

    `form` is null for the law's own closed form, "frontier" for the IsoFLOP frontier;
    a model average's `members` are {weight, form, theta} (files written before forms
    were tagged hold [weight, theta], read as the law's own form); `bootstrap_forms`
    names each refit's form when a model average pools refits of several forms."""
    return {
        "version": 1,
        "law": fit.law,
        "theta": fit.theta.tolist(),
        "params": fit.params,
        "intervals": fit.intervals(),
        "loss": fit.loss,
        "rmse_log": fit.rmse_log,
        "sigma_log": fit.sigma_log,
        "n": fit.n,
        "starts": fit.starts,
        "starts_at_optimum": fit.starts_at_optimum,
        "bootstrap": _refits_json(fit.bootstrap),
        "bootstrap_forms": list(fit.bootstrap.forms) if isinstance(fit.bootstrap, Refits) else None,
        "status": fit.status,
        "message": fit.message,
        "flags": list(fit.flags),
        "backtest": fit.backtest,
        "calibration": fit.calibration,
        "remedy": fit.remedy,
        "form": fit.form,
        "members": None
        if fit.members is None
        else [{"weight": m.weight, "form": m.form, "theta": list(m.theta)} for m in fit.members],
        "data": fit.summary,
        "provenance": provenance or {},
    }


def packaged_laws_dir() -> Path:
    """Laws fitted from the runs shipped with derisk (derisk/estimators/data/laws)."""
    return Path(__file__).resolve().parent.parent / "estimators" / "data" / "laws"


def load_law(name_or_path: str) -> FitResult:
    """A saved law by path, or by name from `laws_dir()`, then from the shipped laws.

    A name ending in `.json` is a path; any other is looked up by name first (so a law
    saved as `v1.2` is found), then tried as a path. `NAME@K` loads version K of a law
    (`derisk.scaling._versions`). The file is checked against the law
    schema (`LawFileError`, a DataError, names the file, the field and the fix).
    """
    from derisk.scaling._versions import split_version, version_path

    text = str(name_or_path)
    if not text.endswith(".json"):
        _check_law_name(split_version(text)[0])  # NAME@K: version K (scaling._versions)
    name = None
    if text.endswith(".json"):
        p = Path(text)
    else:
        name = text
        p = laws_dir() / f"{text}.json"
        if not p.exists() and split_version(text)[1] is not None:
            p = version_path(text) or p
        if not p.exists() and (packaged_laws_dir() / f"{text}.json").exists():
            p = packaged_laws_dir() / f"{text}.json"
        elif not p.exists() and Path(text).is_file():
            p, name = Path(text), None
    try:
        found = p.exists()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL
        raise DataError(f"no fitted law `{name_or_path}`: {exc}") from None
    if not found:
        d = laws_dir()
        known = sorted(x.stem for x in d.glob("*.json")) if d.is_dir() else []
        raise DataError(
            f"no fitted law `{name_or_path}` ({p}); fit one with `derisk fit FILE "
            f"--save NAME`" + (f"; known: {', '.join(known)}" if known else "")
        )
    return load_law_file(p, name or str(p))


LAW_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}")


def _check_law_name(name: str) -> None:
    """A saved law's name: a plain file name (no folders, not hidden), or a .json path."""
    if not LAW_NAME.fullmatch(name):
        raise DataError(
            f"{name[:80]!r} is not a law name: use letters, digits and - _ . + (up to 200, "
            "not starting with a dot), or a path ending in .json"
        )


def law_path(name_or_path: str | Path) -> Path:
    """Where `save_law` writes: a `.json` path as given, else `laws_dir()/NAME.json`."""
    text = str(name_or_path)
    return Path(text) if text.endswith(".json") else laws_dir() / f"{text}.json"


def check_law_destination(name_or_path: str | Path) -> Path:
    """The path `save_law` would write, after making sure it can be written.

    Creates the folder if needed and writes (then removes) a probe file in it, so a bad
    destination fails before a long fit rather than after it.
    """
    text = str(name_or_path)
    if not text.endswith(".json"):
        _check_law_name(text)
    elif "\0" in text:
        raise DataError(f"cannot save a law to {text!r}: a path cannot hold a NUL character")
    dest = law_path(name_or_path)
    try:
        if dest.is_dir():
            raise DataError(f"cannot save a law to {dest}: it is a folder")
        folder = dest.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise DataError(f"cannot save a law to {dest}: {folder} is a file, not a folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=dest.parent):
            pass
    except OSError as exc:
        raise DataError(
            f"cannot save a law to {dest}: {exc.strerror or exc}; choose a writable "
            "folder (or set DERISK_LAWS)"
        ) from None
    return dest


def _plain(x):
    """JSON-ready copy: numpy scalars and arrays as Python numbers, NaN/inf as None."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_plain(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if np.isfinite(x) else None
    return x


def save_law(fit: FitResult, name_or_path: str | Path, provenance: dict | None = None) -> Path:
    """Write a fitted law as JSON where `load_law(name_or_path)` finds it.

    The file is replaced atomically (concurrent saves to one name leave one whole file,
    never a torn one) and keeps the mode an existing file had. A law that would not load
    back (non-finite parameters) is refused before anything is written.

    >>> # save_law(fit_law(data), "mylaw")  ->  ~/.local/share/derisk/laws/mylaw.json
    """
    from derisk.graphs import write_atomic  # the one atomic writer (locks, keeps the mode)

    dest = check_law_destination(name_or_path)
    body = _plain(fit_to_json(fit, provenance=provenance))
    fit_from_json(body, str(dest), name=dest.stem)  # what load_law would say, said now
    text = json.dumps(body, indent=1, allow_nan=False) + "\n"
    try:
        write_atomic(dest, text)
    except OSError as exc:
        raise DataError(
            f"cannot save a law to {dest}: {exc.strerror or exc}; choose a writable "
            "folder (or set DERISK_LAWS)"
        ) from None
    return dest


@dataclass(frozen=True)
class Frontier:
    """The compute-optimal loss of a dense law against compute, with its predictive band."""

    flops: np.ndarray  # (K,)
    loss: np.ndarray  # (K,)
    lo: np.ndarray  # (K,) lower end of the `level` predictive interval
    hi: np.ndarray  # (K,)


def loss_frontier(
    fit: FitResult, flops_lo: float, flops_hi: float, *, points: int = 40
) -> Frontier:
    """`optimal_allocation`'s loss on a log grid of compute from flops_lo to flops_hi."""
    grid = np.geomspace(flops_lo, flops_hi, points)
    mid, lo, hi = [], [], []
    for c in grid:
        a = optimal_allocation(fit, float(c))
        mid.append(a.loss)
        lo.append(a.loss_interval[0] if a.loss_interval else a.loss)
        hi.append(a.loss_interval[1] if a.loss_interval else a.loss)
    return Frontier(flops=grid, loss=np.array(mid), lo=np.array(lo), hi=np.array(hi))


def fit_diagnostics(fit: FitResult, data: RunData) -> dict:
    """What `derisk fit` adds to a fit: approach-2 exponents when the runs form IsoFLOP
    slices (`isoflop`), and for MoE laws the dense size the largest MoE is worth
    (`effective_params`)."""
    extra: dict = {}
    try:
        iso = isoflop_fit(data)
        extra["isoflop"] = {"budgets": iso.budgets, "n_opt": iso.n_opt, "a": iso.a, "b": iso.b}
    except DataError:
        pass
    if fit.law in ("moe", "moe_experts"):
        x, g = float(data.experts.max()), float(data.granularity.max())
        n = float(np.median(data.params))
        extra["effective_params"] = {
            "experts": x,
            "granularity": g,
            "params": n,
            "multiplier": effective_params(fit, n, experts=x, granularity=g) / n,
        }
    return extra
