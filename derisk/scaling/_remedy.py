"""Remedies for a degenerate fit, chosen by how well each extrapolates in a backtest.

A fit whose irreducible loss runs to 0 or whose exponents leave the published range
usually still interpolates well; what it gets wrong is the way out of range, which is
where a plan uses it. Each remedy is a constraint the data could not supply:

- `e_floor`: E bounded below by half the lowest observed loss (text has an entropy; a
  law with E = 0 says a large enough model reaches zero loss);
- `prior`: weakly informative Gaussian priors on alpha and beta, mean 0.35, sd 0.15
  (the published exponents for language models sit roughly in 0.1-0.7);
- `power`: the other way round: no irreducible term at all (E held at 0), pure power
  laws in N and D, for data whose losses are still far from any floor;
- `frontier`: another form altogether, the IsoFLOP approach-2 frontier read as a law of
  (N, D) (`derisk.scaling._frontier`), for a dense law whose runs form IsoFLOP slices
  (`isoflop_fit`'s rule: 2+ budgets with 3+ distinct sizes each, bracketing their
  minimum). On data without slices it is not a candidate at all. Every backtest cut must
  have slices too: the candidates are compared on the same held-out runs, so when a cut
  the plain fit was scored on has no slices below it, the frontier is dropped from the
  remedies altogether (its score would be over fewer, different runs), and the remedy
  table says which cut and why. Cuts the plain fit could not fit are left out of the
  frontier's backtest for the same reason;
- `average`: the candidates above, averaged in log space, weighted by 1 / their backtest
  mean squared log error (`average_fits`); the members keep their forms.

Each candidate, the unremedied fit included, is backtested on the same cuts, and the
one with the lowest mean absolute log error on the held-out larger runs is kept. The
choice and every candidate's score go into the fit (`FitResult.remedy`) and the saved
law.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from derisk.errors import DataError, DeriskWarning
from derisk.scaling._backtest import Backtest, backtest, backtest_table, calibrate
from derisk.scaling._data import RunData
from derisk.scaling._fit import FIT_DEGENERATE, FitResult, Member, Refits, fit_law
from derisk.scaling._frontier import fit_frontier
from derisk.scaling._optimal import isoflop_fit

FRONTIER = "frontier"  # the IsoFLOP approach-2 frontier, a form of its own
REMEDIES = ("none", "e_floor", "prior", "power", FRONTIER)
AVERAGE = "average"  # the forms averaged, weighted by their backtest accuracy
PRIOR = (0.35, 0.15)  # mean, sd of alpha and beta
E_FLOOR_FRACTION = 0.5  # e_floor: E >= this x the lowest observed loss
POWER_E = 1e-9  # power: E held at this fraction of the lowest loss (0 to the fit)


def remedy_options(name: str, data: RunData) -> dict:
    """The `fit_law` options of one remedy on `data`."""
    lowest = float(np.min(data.loss))
    if name == "none":
        return {}
    if name == "e_floor":
        return {"E_min": E_FLOOR_FRACTION * lowest}
    if name == "prior":
        return {"exponent_prior": PRIOR}
    if name == "power":
        return {"fix_E": POWER_E * lowest}
    if name in (FRONTIER, AVERAGE):
        return {}  # no fit_law options: another form (`fit_frontier`), or several
    raise ValueError(f"remedy must be one of {', '.join(REMEDIES)}, got {name!r}")


def average_fits(fits: dict, tests: dict) -> tuple[FitResult, Backtest, dict]:
    """A model average of fits of one law (their forms may differ: Chinchilla's and the
    IsoFLOP frontier), weighted by 1 / their backtest's mean squared log error, and its
    backtest rebuilt from theirs (same cuts, same held-out runs): point = the weighted
    mean of the members' log predictions, band = the weighted mean of their log band ends
    (an approximation of the mixture's). Each member keeps its form (`Member`); the
    pooled refits are a `Refits` when the forms differ.

    Returns (fit, backtest, {name: weight}).
    """
    names = list(fits)
    mse = {n: float(np.mean([r.log_error**2 for r in tests[n].rows])) for n in names}
    raw = {n: 1.0 / max(mse[n], 1e-300) for n in names}
    total = sum(raw.values())
    weights = {n: raw[n] / total for n in names}
    heaviest = max(names, key=weights.get)
    base = fits[heaviest]
    form = {n: fits[n].form or fits[n].law for n in names}
    members = tuple(Member(weights[n], tuple(map(float, fits[n].theta)), form[n]) for n in names)
    pooled = None
    if all(fits[n].bootstrap is not None for n in names):
        # refits pooled in proportion to the weights (at least one from each member)
        B = max(len(fits[n].bootstrap) for n in names)
        rng = np.random.default_rng(0)
        parts = []
        for n in names:
            k = max(1, int(round(weights[n] * B)))
            parts.append(fits[n].bootstrap[rng.choice(len(fits[n].bootstrap), size=k)])
        if len(set(form.values())) == 1:
            pooled = np.concatenate(parts)
        else:
            pooled = Refits(
                forms=tuple(form[n] for n, p in zip(names, parts, strict=True) for _ in p),
                thetas=tuple(row for p in parts for row in p),
            )
    sigma = float(np.sqrt(sum(weights[n] * fits[n].sigma_log ** 2 for n in names)))
    fit = dataclasses.replace(
        base,
        members=members,
        bootstrap=pooled,
        sigma_log=sigma,
        message=base.message + f"; averaged with {len(names) - 1} other form(s)",
    )
    keyed = {n: {(r.by, r.cut, r.run): r for r in tests[n].rows} for n in names}
    common = set.intersection(*(set(k) for k in keyed.values()))
    rows = []
    for key in sorted(common, key=lambda k: (k[0], k[1], k[2])):
        rs = {n: keyed[n][key] for n in names}
        first = rs[names[0]]

        def mean_log(attr, rs=rs):
            return float(np.exp(sum(weights[n] * np.log(getattr(rs[n], attr)) for n in names)))

        # The average's band at a held-out run, without refitting the average per cut:
        # the members' band ends mixed as their predictions are (in log space, by weight).
        # Not widened to include the point: bands are distributions, not brackets.
        pred, lo, hi = mean_log("predicted"), mean_log("lo"), mean_log("hi")
        rows.append(
            dataclasses.replace(
                first,
                predicted=pred,
                log_error=float(np.log(first.observed) - np.log(pred)),
                lo=lo,
                hi=hi,
                inside=bool(lo <= first.observed <= hi),
            )
        )
    if not rows:
        raise DataError("the forms' backtests share no held-out run to average over")
    bt = dataclasses.replace(
        tests[heaviest], law=base.law, rows=tuple(rows), table=tuple(backtest_table(rows))
    )
    return fit, bt, weights


def has_isoflop_slices(data: RunData) -> bool:
    """Whether the runs form IsoFLOP slices (`isoflop_fit`'s rule)."""
    try:
        isoflop_fit(data)
    except DataError:
        return False
    return True


def same_cuts(bt: Backtest, reference: Backtest) -> tuple[Backtest, str | None]:
    """`bt` cut down to the cuts `reference` was scored on, or (bt, why not) when it
    misses one of them (a cut with no IsoFLOP slices below it)."""
    mine = {(r.by, r.cut) for r in bt.rows}
    want = sorted({(r.by, r.cut) for r in reference.rows})
    lacking = [c for c in want if c not in mine]
    if lacking:
        by, cut = lacking[0]
        why = next(
            (s["why"] for s in bt.skipped if (s["by"], s["cut"]) == (by, cut)),
            "no held-out run could be predicted",
        )
        return bt, (
            f"left out: the {by} cut at {cut:.3g} has no IsoFLOP frontier ({why}), so it "
            "cannot be scored on the same held-out runs as the other forms"
        )
    rows = tuple(r for r in bt.rows if (r.by, r.cut) in set(want))
    return dataclasses.replace(bt, rows=rows, table=tuple(backtest_table(rows))), None


def backtest_error(bt: Backtest) -> float:
    """Mean absolute log error of a backtest's held-out runs (both axes pooled)."""
    return float(np.mean([abs(r.log_error) for r in bt.rows]))


def fit_calibrated(
    data: RunData,
    law: str = "chinchilla",
    *,
    remedy: str = "auto",
    bootstrap: int = 100,
    backtest_bootstrap: int = 20,
    starts: int = 64,
    seed: int = 0,
    fix_E: float | None = None,
    max_rows: int | None = None,
    progress=None,
    on_phase=None,
) -> tuple[FitResult, Backtest | None]:
    """Fit `law`, backtest it, and calibrate its extrapolation error; for a degenerate
    fit, try the remedies first and keep the best by backtest error.

    `remedy` is "auto" (remedies tried only when the plain fit is degenerate and E is not
    held by `fix_E`; `frontier` among them only for a dense law whose runs form IsoFLOP
    slices), "none", or one remedy name (that one, compared against the plain fit).
    Returns (fit, its backtest); the backtest is None, with the fit uncalibrated, when
    no cut could be fitted (a DeriskWarning says why).

    Raises DataError for data that cannot identify the law, ValueError for bad options.
    """
    if remedy != "auto" and remedy not in REMEDIES:
        raise ValueError(f"remedy must be auto or one of {', '.join(REMEDIES)}, got {remedy!r}")
    if fix_E is not None and remedy not in ("auto", "none"):
        raise ValueError("a remedy changes how E is fitted: give it or fix_E, not both")
    if remedy == FRONTIER and law != "chinchilla":
        raise ValueError(f"the frontier remedy is an IsoFLOP fit of a dense law, not {law}")
    common = {"bootstrap": bootstrap, "starts": starts, "seed": seed, "max_rows": max_rows}
    plain = fit_law(data, law, fix_E=fix_E, progress=progress, on_phase=on_phase, **common)
    names = ["none"]
    if remedy == "auto" and plain.status == FIT_DEGENERATE and fix_E is None:
        names += [r for r in REMEDIES if r not in ("none", FRONTIER)]
        if law == "chinchilla" and has_isoflop_slices(data):
            names.append(FRONTIER)
    elif remedy not in ("auto", "none"):
        names.append(remedy)
    fits, tests, scores = {"none": plain}, {}, {}
    for name in names:
        opts = remedy_options(name, data)
        if name != "none":
            if on_phase is not None:
                on_phase(f"remedy {name}: refitting")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeriskWarning)
                try:
                    if name == FRONTIER:
                        fits[name] = fit_frontier(data, bootstrap=bootstrap, seed=seed)
                    else:
                        fits[name] = fit_law(data, law, **opts, **common)
                except DataError as exc:
                    scores[name] = {"error": str(exc)}
                    continue
        try:
            tests[name] = backtest(
                data,
                law,
                bootstrap=backtest_bootstrap,
                seed=seed,
                fix_E=fix_E if name == "none" else None,
                options=opts,
                form=FRONTIER if name == FRONTIER else None,
                on_phase=None
                if on_phase is None
                else (lambda m, n=name: on_phase(m if n == "none" else f"remedy {n}: {m}")),
            )
        except DataError as exc:
            if name == "none":
                warnings.warn(f"no backtest: {exc}", DeriskWarning, stacklevel=2)
                return plain, None
            scores[name] = {"error": str(exc)}
            continue
        if name == FRONTIER:
            tests[name], missing = same_cuts(tests[name], tests["none"])
            if missing is not None:
                del tests[name]
                scores[name] = {"error": missing}
                continue
        f = fits[name]
        scores[name] = {
            "backtest_mean_abs_log_error": backtest_error(tests[name]),
            "backtest_coverage": float(np.mean([r.inside for r in tests[name].rows])),
            "status": f.status,
            "flags": list(f.flags),
            "params": dict(f.params),
            **({"form": f.form, "message": f.message} if f.form else {}),
        }
    usable = [n for n in names if n in tests]
    if remedy == "auto" and len(usable) >= 3:
        fits[AVERAGE], tests[AVERAGE], weights = average_fits(
            {n: fits[n] for n in usable}, {n: tests[n] for n in usable}
        )
        scores[AVERAGE] = {
            "backtest_mean_abs_log_error": backtest_error(tests[AVERAGE]),
            "backtest_coverage": float(np.mean([r.inside for r in tests[AVERAGE].rows])),
            "status": fits[AVERAGE].status,
            "flags": list(fits[AVERAGE].flags),
            "params": dict(fits[AVERAGE].params),
            "weights": weights,
            "forms": {n: fits[n].form or fits[n].law for n in weights},
        }
        usable.append(AVERAGE)
        names.append(AVERAGE)
    chosen = min(usable, key=lambda n: (scores[n]["backtest_mean_abs_log_error"], n != "none"))
    fit, bt = fits[chosen], tests[chosen]
    try:
        fit = calibrate(fit, bt, data)
    except DataError as exc:
        warnings.warn(f"not calibrated: {exc}", DeriskWarning, stacklevel=2)
        fit = dataclasses.replace(fit, backtest=bt.as_dict())
    if len(names) > 1:
        record = {
            "chosen": chosen,
            "options": {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in remedy_options(chosen, data).items()
            },
            "by": "lowest mean |log error| of the backtest's held-out larger runs",
            "candidates": scores,
        }
        fit = dataclasses.replace(fit, remedy=record)
    return fit, bt
