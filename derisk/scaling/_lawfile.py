"""Saved law files: reading them and checking them against their schema.

A law file is JSON written by `save_law`. Anything read back is checked field by field
before it becomes a `FitResult`: the law and its closed form (`form`: null for the law's
own, "frontier" for the IsoFLOP frontier of a dense law) are known, `theta` has exactly
the form's parameters within what the form allows, every number is finite and in range,
the bootstrap refits have the shape of their form (`bootstrap_forms` names each refit's
form when a model average pools several), a model average's `members` are
{weight, form, theta} (or, as written before forms were tagged, [weight, theta] of the
law's own form) with weights summing to 1, and the law and each member predict a finite
loss over the runs it was fitted to. A problem
is one line naming the file, the field (as a JSON path: `theta[2]`, `data.params[1]`),
what is wrong and how to fix it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from derisk.errors import DataError
from derisk.scaling._fit import (
    FIT_NOT_CONVERGED,
    FitResult,
    Member,
    Refits,
    diagnose,
    fit_status,
)
from derisk.scaling._laws import FORMS, LAWS

MAX_LAW_BYTES = 64 * 2**20  # a law with 10,000 bootstrap refits is about 1 MB
MAX_SIGMA_LOG = 5.0  # run-to-run noise of a factor e^5 is no fit at all
MAX_JSON_INT_DIGITS = 18  # longer integer literals are read as floats (huge ones -> inf)


class LawFileError(DataError):
    """A saved law file is unreadable or does not match the law-file schema.

    `path` is the file, `field` the JSON path of the offending value ("" for the whole
    file).
    """

    def __init__(self, path: str, field: str, problem: str, fix: str):
        self.path = path
        self.field = field
        where = f"{path}: `{field}` " if field else f"{path}: "
        super().__init__(f"{where}{problem}; {fix}")


def refit_hint(d: object = None, name: str | None = None) -> str:
    """The command that would write this law again (from its provenance when it has one)."""
    prov = d.get("provenance") if isinstance(d, dict) else None
    prov = prov if isinstance(prov, dict) else {}
    runs = prov.get("file") if isinstance(prov.get("file"), str) else "RUNS.csv"
    law = next(
        (
            x
            for x in (prov.get("law"), d.get("law") if isinstance(d, dict) else None)
            if isinstance(x, str) and x in LAWS
        ),
        None,
    )
    flag = f" --law {law}" if law and law != "chinchilla" else ""
    return f"refit it with `derisk fit {runs}{flag} --save {name or 'NAME'}`"


def read_law_json(path: Path, name: str | None = None) -> object:
    """The parsed JSON of a law file; LawFileError for anything that is not JSON text."""
    fix = refit_hint(name=name)
    if path.is_dir():
        raise LawFileError(str(path), "", "is a folder, not a law file", f"{fix} or pass the file")
    try:
        size = path.stat().st_size
        if size > MAX_LAW_BYTES:
            raise LawFileError(
                str(path), "", f"is {size:,} bytes, more than a law file's {MAX_LAW_BYTES:,}", fix
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise LawFileError(str(path), "", f"cannot be read ({exc.strerror or exc})", fix) from None
    if not raw.strip():
        raise LawFileError(str(path), "", "is empty", fix)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise LawFileError(
            f"{path}:{line}", "", f"is not UTF-8 text (byte {raw[exc.start]:#04x})", fix
        ) from None
    try:
        # Huge integer literals become floats (then fail the finiteness check) instead of
        # tripping Python's integer-string limit; deep nesting is a RecursionError.
        return json.loads(
            text, parse_int=lambda s: int(s) if len(s) <= MAX_JSON_INT_DIGITS else float(s)
        )
    except json.JSONDecodeError as exc:
        raise LawFileError(
            f"{path}:{exc.lineno}:{exc.colno}", "", f"is not valid JSON ({exc.msg})", fix
        ) from None
    except (RecursionError, ValueError) as exc:
        what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:80]
        raise LawFileError(str(path), "", f"is not a law file ({what})", fix) from None


def _kind(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, int | float):
        if math.isnan(v):
            return "NaN"
        return repr(v) if math.isfinite(v) else ("-Infinity" if v < 0 else "Infinity")
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    if isinstance(v, list):
        return f"a list of {len(v)}"
    return f"a {type(v).__name__}"


class _Checker:
    """Checks one parsed law file, raising LawFileError at the first problem."""

    def __init__(self, d: object, source: str, name: str | None):
        self.d, self.source, self.fix = d, source, refit_hint(d, name)

    def fail(self, field: str, problem: str) -> None:
        raise LawFileError(self.source, field, problem, self.fix)

    def number(
        self,
        v: object,
        field: str,
        *,
        lo: float | None = None,
        hi: float | None = None,
        positive: bool = False,
        integer: bool = False,
    ) -> float:
        want = "an integer" if integer else "a number"
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.fail(field, f"must be {want}, got {_kind(v)}")
        if not math.isfinite(v):
            self.fail(field, f"must be a finite number, got {_kind(v)}")
        if integer and not float(v).is_integer():
            self.fail(field, f"must be an integer, got {v!r}")
        if positive and not v > 0:
            self.fail(field, f"must be positive, got {v!r}")
        if lo is not None and v < lo:
            self.fail(field, f"must be at least {lo:g}, got {v!r}")
        if hi is not None and v > hi:
            self.fail(field, f"must be at most {hi:g}, got {v!r}")
        return v

    def vector(self, v: object, field: str, size: int, names: str) -> np.ndarray:
        if not isinstance(v, list) or len(v) != size:
            self.fail(field, f"must be a list of {size} numbers ({names}), got {_kind(v)}")
        for i, x in enumerate(v):
            self.number(x, f"{field}[{i}]")
        return np.asarray(v, dtype=np.float64)

    def theta(self, v: object, field: str, form) -> np.ndarray:
        """One parameter vector of `form` (a LawForm or the FrontierForm), its values
        checked against what the form allows."""
        names = f"{form.name}: {', '.join(form.params)}"
        t = self.vector(v, field, len(form.params), names)
        problem = form.problem(t) if hasattr(form, "problem") else None
        if problem is not None:
            self.fail(f"{field}[{problem[0]}]", problem[1])
        return t

    def mapping(self, v: object, field: str) -> dict:
        if not isinstance(v, dict):
            self.fail(field, f"must be a mapping, got {_kind(v)}")
        return v


def _check_form(ck: _Checker, field: str, f: object, law: str) -> str:
    """A form name (a key of FORMS) that a law `law` may hold: its own, or the IsoFLOP
    frontier for a dense law."""
    if not isinstance(f, str) or f not in FORMS:
        ck.fail(field, f"must be one of {', '.join(FORMS)}, got {_kind(f)}")
    if f != law and not (f == "frontier" and law == "chinchilla"):
        ck.fail(
            field,
            f"is {f}, which a {law} law cannot hold (its own form, or frontier for chinchilla)",
        )
    return f


def fit_from_json(d: object, source: str = "<law>", *, name: str | None = None) -> FitResult:
    """A FitResult from a parsed law file, after checking every field the law uses.

    Raises LawFileError (a DataError) naming the file, the field and the fix.
    """
    ck = _Checker(d, source, name)
    if not isinstance(d, dict):
        ck.fail("", f"must hold a JSON object (a mapping), got {_kind(d)}")
    for key in ("law", "theta", "sigma_log", "n", "loss", "rmse_log", "starts"):
        if key not in d:
            ck.fail(key, "is missing")
    if "version" in d and (isinstance(d["version"], bool) or d["version"] != 1):
        ck.fail("version", f"must be 1 (the only law-file version), got {_kind(d['version'])}")
    law = d["law"]
    if not isinstance(law, str) or law not in LAWS:
        ck.fail("law", f"must be one of {', '.join(LAWS)}, got {_kind(law)}")
    form_name = d.get("form")
    if form_name is not None and (not isinstance(form_name, str) or form_name not in FORMS):
        ck.fail("form", f"must be null or one of {', '.join(FORMS)}, got {_kind(form_name)}")
    form_name = _check_form(ck, "form", form_name or law, law)
    form = FORMS[form_name]
    theta = ck.theta(d["theta"], "theta", form)
    boot = d.get("bootstrap")
    boot_forms = d.get("bootstrap_forms")
    if boot is not None:
        if not isinstance(boot, list) or not boot:
            ck.fail("bootstrap", f"must be null or a non-empty list of refits, got {_kind(boot)}")
        if boot_forms is None:
            boot = np.stack([ck.theta(r, f"bootstrap[{i}]", form) for i, r in enumerate(boot)])
        else:
            if not isinstance(boot_forms, list) or len(boot_forms) != len(boot):
                ck.fail(
                    "bootstrap_forms",
                    f"must be a list of {len(boot)} form names (one per refit), got "
                    f"{_kind(boot_forms)}",
                )
            forms = [
                _check_form(ck, f"bootstrap_forms[{i}]", f, law) for i, f in enumerate(boot_forms)
            ]
            boot = Refits(
                forms=tuple(forms),
                thetas=tuple(
                    ck.theta(r, f"bootstrap[{i}]", FORMS[f])
                    for i, (r, f) in enumerate(zip(boot, forms, strict=True))
                ),
            )
    elif boot_forms is not None:
        ck.fail("bootstrap_forms", "must be null without `bootstrap`")
    members = d.get("members")
    if members is not None:
        if not isinstance(members, list) or len(members) < 2:
            ck.fail(
                "members",
                f"must be null or a list of 2+ {{weight, form, theta}}, got {_kind(members)}",
            )
        parsed = []
        for i, m in enumerate(members):
            field = f"members[{i}]"
            if isinstance(m, list) and len(m) == 2:  # written before members had a form
                w, t, f = m[0], m[1], law
                wf, tf = f"{field}[0]", f"{field}[1]"
            elif isinstance(m, dict):
                for key in ("weight", "form", "theta"):
                    if key not in m:
                        ck.fail(f"{field}.{key}", "is missing")
                w, t = m["weight"], m["theta"]
                f = _check_form(ck, f"{field}.form", m["form"], law)
                wf, tf = f"{field}.weight", f"{field}.theta"
            else:
                ck.fail(
                    field, f"must be {{weight, form, theta}} (or [weight, theta]), got {_kind(m)}"
                )
            w = ck.number(w, wf, lo=0.0, hi=1.0)
            t = ck.theta(t, tf, FORMS[f])
            parsed.append(Member(float(w), tuple(float(x) for x in t), f))
        total = sum(m.weight for m in parsed)
        if not math.isclose(total, 1.0, rel_tol=1e-6):
            ck.fail("members", f"weights must sum to 1, got {total:g}")
        members = tuple(parsed)
    sigma = ck.number(d["sigma_log"], "sigma_log", lo=0.0, hi=MAX_SIGMA_LOG)
    n = ck.number(d["n"], "n", lo=1, integer=True)
    loss = ck.number(d["loss"], "loss", lo=0.0)
    rmse = ck.number(d["rmse_log"], "rmse_log", lo=0.0)
    starts = ck.number(d["starts"], "starts", lo=0, integer=True)
    at_opt = ck.number(d.get("starts_at_optimum", starts), "starts_at_optimum", lo=0, integer=True)
    for key in ("intervals", "provenance", "backtest", "calibration", "remedy"):
        if d.get(key) is not None:
            ck.mapping(d[key], key)
    summary = _check_summary(ck, d.get("data", {}))
    with np.errstate(all="ignore"):
        readable = {k: float(v) for k, v in form.readable(theta).items()}
    for k, v in readable.items():
        if not math.isfinite(v):
            ck.fail("theta", f"gives {k} = {v} (a log-coefficient too large to exponentiate)")
    if d.get("params") is not None:
        stored = ck.mapping(d["params"], "params")
        for k, v in stored.items():
            if k not in readable:
                continue  # a name this law does not have: informational only
            x = ck.number(v, f"params.{k}")
            if not math.isclose(x, readable[k], rel_tol=1e-6, abs_tol=1e-12):
                ck.fail(
                    f"params.{k}",
                    f"is {x:g} but `theta` gives {readable[k]:g} (predictions use `theta`)",
                )
    status, message, flags = _check_status(ck, d, law if form_name == law else None, theta, summary)
    _check_calibration(ck, d.get("calibration"))
    fit = FitResult(
        law=law,
        theta=theta,
        params=readable,
        loss=float(loss),
        starts=int(starts),
        starts_at_optimum=int(at_opt),
        screened=0,
        n=int(n),
        rmse_log=float(rmse),
        sigma_log=float(sigma),
        success=status != FIT_NOT_CONVERGED,
        message=message,
        seconds=0.0,
        bootstrap=boot,
        summary=summary,
        status=status,
        flags=flags,
        backtest=d.get("backtest"),
        calibration=d.get("calibration"),
        remedy=d.get("remedy"),
        members=members,
        form=None if form_name == law else form_name,
    )
    _check_predictions(ck, fit)
    return fit


def _check_calibration(ck: _Checker, cal: dict | None) -> None:
    """The extrapolation-error term predictions read: its kind, axes and numbers."""
    if cal is None:
        return
    if cal.get("kind") != "lognormal_linear":
        ck.fail("calibration.kind", f"must be 'lognormal_linear', got {_kind(cal.get('kind'))}")
    axes = ck.mapping(cal.get("axes"), "calibration.axes")
    for axis, term in axes.items():
        field = f"calibration.axes.{axis}"
        if axis not in ("compute", "params", "tokens"):
            ck.fail(field, "is not an axis (compute, params or tokens)")
        term = ck.mapping(term, field)
        ck.number(term.get("reference"), f"{field}.reference", positive=True)
        ck.number(term.get("per_decade"), f"{field}.per_decade", lo=0.0, hi=MAX_SIGMA_LOG)


def _check_status(ck: _Checker, d: dict, law: str | None, theta: np.ndarray, summary: dict):
    """(status, message, flags): as saved, or (laws saved before fits had a status)
    diagnosed again from the parameters and the runs' lowest loss (law None: a form
    `diagnose` does not know, which files have only ever been written with a status)."""
    if d.get("status") is None and law is None:
        ck.fail("status", "is missing (a frontier law is always saved with one)")
    if d.get("status") is None:
        lowest = (summary.get("loss") or [np.nan])[0]
        fixed = not np.isfinite(lowest)  # no runs summary: E cannot be judged
        flags, words = diagnose(law, theta, float(lowest) if not fixed else 1.0, fixed_E=fixed)
        status, message = fit_status(True, flags, words, "")
        return status, message, flags
    status = int(ck.number(d["status"], "status", lo=0, hi=FIT_NOT_CONVERGED, integer=True))
    message = d.get("message", "")
    if not isinstance(message, str):
        ck.fail("message", f"must be a string, got {_kind(message)}")
    flags = d.get("flags") or []
    if not isinstance(flags, list) or not all(isinstance(x, str) for x in flags):
        ck.fail("flags", f"must be a list of strings, got {_kind(flags)}")
    return status, message, tuple(flags)


def _check_summary(ck: _Checker, data: object) -> dict:
    """The `data` block: the runs' ranges and training setting, as `predict` reads them."""
    if data is None:
        return {}
    data = ck.mapping(data, "data")
    for key in ("params", "tokens", "loss"):
        if data.get(key) is None:
            continue
        v = data[key]
        if not isinstance(v, list) or len(v) != 2:
            ck.fail(f"data.{key}", f"must be [smallest, largest], got {_kind(v)}")
        lo = ck.number(v[0], f"data.{key}[0]", positive=True)
        hi = ck.number(v[1], f"data.{key}[1]", positive=True)
        if lo > hi:
            ck.fail(f"data.{key}", f"must be [smallest, largest], got [{lo:g}, {hi:g}]")
    for key in ("experts", "granularity"):
        if data.get(key) is not None:
            v = data[key]
            if not isinstance(v, list):
                ck.fail(f"data.{key}", f"must be a list of numbers, got {_kind(v)}")
            for i, x in enumerate(v):
                ck.number(x, f"data.{key}[{i}]", positive=True)
    for key in ("params_col", "source", "loss_unit"):
        if data.get(key) is not None and not isinstance(data[key], str):
            ck.fail(f"data.{key}", f"must be a string, got {_kind(data[key])}")
    kind = data.get("params_kind")
    if kind is not None and kind not in ("total", "non_embedding"):
        ck.fail(
            "data.params_kind",
            f"must be 'total' (embeddings counted) or 'non_embedding', got {kind!r}",
        )
    if data.get("min_tokens") is not None:
        ck.number(data["min_tokens"], "data.min_tokens", lo=0.0)
    if data.get("runs") is not None:
        ck.number(data["runs"], "data.runs", lo=0, integer=True)
    setting = data.get("setting")
    if setting is not None:
        setting = ck.mapping(setting, "data.setting")
        for k, vals in setting.items():
            field = f"data.setting.{k}"
            if k == "lr_x_d_model":
                if not isinstance(vals, list) or len(vals) != 2:
                    ck.fail(field, f"must be [lowest, highest], got {_kind(vals)}")
                for i, x in enumerate(vals):
                    ck.number(x, f"{field}[{i}]", positive=True)
            elif not isinstance(vals, list) or not all(isinstance(x, str) for x in vals):
                ck.fail(field, f"must be a list of strings (values seen), got {_kind(vals)}")
    return data


def _check_predictions(ck: _Checker, fit: FitResult) -> None:
    """Refuse a law that cannot predict a finite loss over its own fitted runs."""
    seen = fit.summary
    p_lo, p_hi = seen.get("params") or (1e6, 1e9)
    d_lo, d_hi = seen.get("tokens") or (1e8, 1e11)
    g = [*(seen.get("experts") or []), *(seen.get("granularity") or []), 1.0]
    corners = np.array(
        [[np.log(p), np.log(t), np.log(x)] for p in (p_lo, p_hi) for t in (d_lo, d_hi) for x in g]
    )
    with np.errstate(all="ignore"):
        point = fit.law_form().log_predict(fit.theta, corners)
        if not np.all(np.isfinite(point) & (point < 700)):
            ck.fail("theta", "predicts a non-finite loss over the law's own fitted runs")
        for i, m in enumerate(fit.members or ()):
            lp = FORMS[m.form].log_predict(np.asarray(m.theta), corners)
            if not np.all(np.isfinite(lp) & (lp < 700)):
                ck.fail(
                    f"members[{i}]", "predicts a non-finite loss over the law's own fitted runs"
                )
        if fit.bootstrap is not None:
            boot = fit.log_samples(corners)  # (B, K)
            bad = ~np.all(np.isfinite(boot) & (boot < 700), axis=1)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                ck.fail(
                    f"bootstrap[{i}]",
                    "predicts a non-finite loss over the law's own fitted runs",
                )


def load_law_file(path: Path, name: str | None = None) -> FitResult:
    """Read and check one law file (LawFileError on any problem)."""
    return fit_from_json(read_law_json(path, name), str(path), name=name)
