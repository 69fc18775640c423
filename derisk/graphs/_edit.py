"""What-if overrides and the recorded-outcomes state file beside a roadmap."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

from derisk.errors import DeriskWarning, Problem, RoadmapError, StateFileError
from derisk.graphs._load import (
    LDict,
    LList,
    _FlagMark,
    parse_text,
    read_text,
    roadmap_from_dict,
)
from derisk.graphs._model import Conditional, Roadmap

# Settable parts of an experiment, as `id.<field>=value`.
EXPERIMENT_FIELDS = ("p", "p.then", "p.else", "cost", "cost.median", "cost.p90", "reward", "title")
TOP_FIELDS = ("budget", "resolution", "compute_price", "flops_per_gpu_hour")


def load_with_overrides(path: str | Path, sets: list[str]) -> Roadmap:
    """Load a roadmap after applying `--set` overrides; each is recorded on the result.

    Forms: `id.p=0.3`, `id.p.then=0.3` / `id.p.else=0.3` (a `p` conditional on a
    hypothesis must be set per branch, or replaced whole by `{if: h, then: .., else: ..}`),
    `id.cost=900 gpu_hours` (or `id.cost.median`, `id.cost.p90`), `id.reward`, `id.title`,
    `budget=3000`, `resolution=10`, `compute_price=0.01`, and a hypothesis' prior as
    `hypotheses.NAME=0.4` (or `NAME=0.4`). Values are YAML and are validated like the file;
    a bad one raises `RoadmapError` whose problem blames the flag (`--set pilot.p=abc: ...`).
    Each applied override is recorded in `Roadmap.overrides` as `{"set", "target", "before",
    "after"}`, numbers in the roadmap's unit (`before` from the file without overrides).
    Setting one target twice is an error (it would silently keep the last).
    """
    source = str(path)
    data = parse_text(read_text(path), source)
    try:  # the values before overriding, when the file is valid on its own
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            baseline = roadmap_from_dict(data, source=source)
    except RoadmapError:
        baseline = None
    records, seen = [], {}
    for text in sets:
        target, raw_before = _apply(data, text)
        if target in seen:
            _fail(text, f"`{target}` is already set by `--set {seen[target]}`; give it once")
        seen[target] = text
        records.append((text, target, raw_before))
    roadmap = roadmap_from_dict(data, source=source)
    overrides = tuple(
        {
            "set": text,
            "target": target,
            "before": raw
            if baseline is None or isinstance(raw, dict) and "law" in raw
            else _value_of(baseline, target),
            "after": _value_of(roadmap, target),
        }
        for text, target, raw in records
    )
    return dataclasses.replace(roadmap, overrides=overrides)


def _fail(text: str, msg: str):
    raise RoadmapError([Problem(f"--set {text}", None, None, msg)])


def _plain(value):
    """LDict/LList -> plain dicts and lists (for JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _blame(value, mark: _FlagMark):
    """Point every position inside an override's value at its flag."""
    if isinstance(value, LDict):
        value.mark = mark
        value.key_marks = dict.fromkeys(value, mark)
        value.value_marks = dict.fromkeys(value, mark)
        for v in value.values():
            _blame(v, mark)
    elif isinstance(value, LList):
        value.mark = mark
        value.item_marks = [mark] * len(value)
        for v in value:
            _blame(v, mark)
    return value


def _apply(data, text: str) -> tuple[str, object]:
    """Apply one `key=value` to the parsed file; return (target, the raw value before)."""
    if "=" not in text:
        _fail(
            text,
            "expected `id.field=value` (e.g. pilot.p=0.5), `budget=3000`, or `hypotheses.NAME=0.4`",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # bytes the shell passed through that are not text
        _fail(text.encode("utf-8", "replace").decode(), "the value is not valid UTF-8 text")
    key, raw = text.split("=", 1)
    key = key.strip()
    mark = _FlagMark(f"--set {text}")
    try:
        value = _blame(parse_text(raw, "--set"), mark)
    except RoadmapError as exc:
        msg = exc.problems[0].message
        if "empty" in msg:
            _fail(text, f"no value after `=`; e.g. `{key}=0.5`")
        _fail(text, f"cannot read the value `{raw}`: {msg}")
    if not isinstance(data, LDict):
        return key, None  # validation reports the file's own problem
    hyps = data.get("hypotheses")
    hyps = hyps if isinstance(hyps, LDict) else None
    if key in TOP_FIELDS:
        before = data.get(key)
        data[key] = value
        data.value_marks[key] = mark
        return key, _plain(before)
    # `NAME.prior` too: what `derisk sensitivity` calls a hypothesis's prior
    name = key.removeprefix("hypotheses.").removesuffix(".prior")
    if key.startswith("hypotheses.") or (hyps is not None and name in hyps):
        if hyps is None or name not in hyps:
            known = ", ".join(map(str, hyps)) if hyps else "none declared"
            _fail(
                text,
                f"no hypothesis `{name}` (hypotheses: {known}); a prior is set as "
                "`hypotheses.NAME=0.4`",
            )
        before = hyps[name]
        hyps[name] = value
        hyps.value_marks[name] = mark
        return f"hypotheses.{name}", _plain(before)

    exps = data.get("experiments")
    exps = [e for e in exps if isinstance(e, LDict) and "id" in e] if isinstance(exps, list) else []
    # Ids may contain dots: take the longest id that prefixes the key.
    found = [e for e in exps if key.startswith(f"{e['id']}.")]
    if not found:
        if "." not in key:
            close = difflib.get_close_matches(key, [*TOP_FIELDS, *(hyps or ())], n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            _fail(
                text,
                f"unknown setting `{key}`{hint}; expected {', '.join(TOP_FIELDS)}, "
                "`hypotheses.NAME`, or `id.field` for an experiment",
            )
        eid = key.split(".", 1)[0]
        close = difflib.get_close_matches(eid, [str(e["id"]) for e in exps], n=1)
        _fail(text, f"no experiment `{eid}`" + (f"; did you mean `{close[0]}`?" if close else ""))
    exp = max(found, key=lambda e: len(str(e["id"])))
    eid = str(exp["id"])
    field = key[len(eid) + 1 :]
    if field not in EXPERIMENT_FIELDS:
        _fail(
            text,
            f"cannot set `{field}` of `{eid}`; settable: "
            + ", ".join(f"{eid}.{f}" for f in EXPERIMENT_FIELDS),
        )
    name, _, branch = field.partition(".")
    current = exp.get(name)
    if name == "p" and not branch and "success" in exp and "p" not in exp:
        # a law-driven p: the value set replaces the law's (its `train:` still prices it)
        law = exp["success"].get("law") if isinstance(exp["success"], dict) else None
        del exp["success"]
        exp["p"] = value
        exp.value_marks["p"] = mark
        return f"{eid}.p", {"law": _plain(law) or "the shipped law"}
    if name == "p":
        conditional = isinstance(current, dict)
        if not branch and conditional and not isinstance(value, dict):
            h = current.get("if", "its hypothesis")
            _fail(
                text,
                f"`p` of `{eid}` depends on hypothesis `{h}`; a plain number would cut that "
                f"link: set one branch, `{eid}.p.then={raw.strip()}` (p when `{h}` is true) "
                f"or `{eid}.p.else={raw.strip()}`, or replace it whole with "
                f"`{eid}.p={{if: {h}, then: .., else: ..}}`",
            )
        if branch and not conditional:
            _fail(
                text,
                f"`p` of `{eid}` is a plain probability with no `{branch}` branch; "
                f"set `{eid}.p={raw.strip()}`",
            )
    if name == "cost" and branch and not isinstance(current, dict):
        _fail(
            text,
            f"`cost` of `{eid}` is a single number with no `{branch}`; set "
            f"`{eid}.cost={raw.strip()}`, or `{eid}.cost={{median: .., p90: ..}}`",
        )
    if branch:
        before = current.get(branch)
        current[branch] = value
        current.value_marks[branch] = mark
    else:
        before = current
        exp[name] = value
        exp.value_marks[name] = mark
    return f"{eid}.{field}", _plain(before)


def _value_of(roadmap: Roadmap, target: str):
    """The value a `--set` target has in a validated roadmap (JSON-ready)."""
    if target in TOP_FIELDS:
        return getattr(roadmap, target, None)
    if target.startswith("hypotheses."):
        return roadmap.hypotheses.get(target.removeprefix("hypotheses."))
    for e in roadmap.experiments:
        if target.startswith(f"{e.id}.") and target[len(e.id) + 1 :] in EXPERIMENT_FIELDS:
            field = target[len(e.id) + 1 :]
            p, cost = e.p, e.cost
            if field == "p":
                if isinstance(p, Conditional):
                    return {"if": p.hypothesis, "then": p.then, "else": p.otherwise}
                return p
            if field in ("p.then", "p.else"):
                return getattr(p, "then" if field == "p.then" else "otherwise", None)
            if field == "cost":
                return {"median": cost.median, "p90": cost.p90} if cost.p90 else cost.median
            if field == "cost.median":
                return cost.median
            if field == "cost.p90":
                return cost.p90
            return getattr(e, field)
    return None


def state_path(roadmap_path: str | Path) -> Path:
    """Where `derisk record` keeps outcomes: `<roadmap file>.state.json` beside it."""
    p = Path(roadmap_path)
    return p.with_name(p.name + ".state.json")


def load_state(roadmap: Roadmap, path: Path) -> dict[str, dict]:
    """Recorded outcomes {id: {"outcome": "success"|"failure", "spent": float}}."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        outcomes = data["outcomes"]
        if not isinstance(outcomes, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise StateFileError(
            f"{path}: not a derisk state file (expected JSON with "
            "`outcomes`); delete it to start over"
        ) from None
    ids = set(roadmap.ids)
    for eid, rec in outcomes.items():
        if eid not in ids:
            raise StateFileError(
                f"{path}: records `{eid}`, which is not in {roadmap.source}; "
                "fix or delete the state file"
            )
        if (
            not isinstance(rec, dict)
            or rec.get("outcome") not in ("success", "failure")
            or not _amount_ok(rec.get("spent"))
        ):
            raise StateFileError(
                f"{path}: bad record for `{eid}` (expected outcome success|failure and "
                f"`spent`, a finite non-negative number); fix or delete the state file"
            )
    problem = _inconsistent(roadmap, outcomes)
    if problem:
        raise StateFileError(
            f"{path}: {problem}, which cannot happen; fix the file, or clear it with "
            "`derisk record FILE ID=untried`"
        )
    return outcomes


def _inconsistent(roadmap: Roadmap, outcomes: dict) -> str | None:
    """Why a set of recorded outcomes cannot have happened (None when it can): an
    experiment only runs once a prerequisite of each of its clauses has succeeded."""
    for eid in outcomes:
        for clause in roadmap.experiment(eid).requires:
            if not any(outcomes.get(a, {}).get("outcome") == "success" for a in clause):
                need = clause[0] if len(clause) == 1 else "one of " + ", ".join(clause)
                return f"`{eid}` is recorded but its prerequisite {need} did not succeed"
    return None


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on the folder of `path` (POSIX flock) for a
    read-modify-write, so that concurrent writers queue instead of losing updates. The
    lock is on the folder itself, so nothing is left behind."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock available
        yield
        return
    fd = os.open(Path(path).parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _amount_ok(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def record_outcomes(
    roadmap: Roadmap, path: Path, updates: dict[str, tuple[str, float | None]]
) -> dict[str, dict]:
    """Validate and merge outcome updates, then write the state file atomically.

    `updates` maps id -> (outcome, spent); outcome "untried" clears a record; spent None
    means the experiment's median cost, so `roadmap` must be resolved when a recorded
    experiment's cost comes from `train:` (a `StateFileError` says so otherwise). The
    read-merge-write holds a lock, so two `derisk record` at once both land. Spending
    more than the budget in total is allowed (it happens) but warned about with a
    `DeriskWarning`.
    """
    for eid, (_, spent) in updates.items():
        if eid not in roadmap.ids:
            close = difflib.get_close_matches(eid, list(roadmap.ids), n=1)
            raise StateFileError(
                f"no experiment `{eid}` in {roadmap.source}"
                + (f"; did you mean `{close[0]}`?" if close else "")
            )
        if spent is not None and not _amount_ok(spent):
            raise StateFileError(
                f"--spent for `{eid}` must be a finite non-negative number, got {spent}"
            )
        # An unresolved `train:` cost reads as 0: booking it would overstate the budget
        # left in every later plan.
        pending = "cost" in roadmap.experiment(eid).pending
        if spent is None and updates[eid][0] != "untried" and pending:
            raise StateFileError(
                f"the cost of `{eid}` comes from its `train:` block and is not resolved "
                "yet (derisk.estimators.resolve); resolve the roadmap first, or give the "
                "compute actually spent (--spent)"
            )
    try:
        with locked(path):
            state = dict(load_state(roadmap, path))
            for eid, (outcome, spent) in updates.items():
                if outcome == "untried":
                    state.pop(eid, None)
                    continue
                median = roadmap.experiment(eid).cost.median
                state[eid] = {"outcome": outcome, "spent": median if spent is None else spent}
            problem = _inconsistent(roadmap, state)
            if problem:
                raise StateFileError(
                    f"cannot record that: {problem} (record the prerequisite first)"
                )
            body = {"version": 1, "roadmap": roadmap.name, "outcomes": state}
            write_atomic(path, json.dumps(body, indent=2) + "\n")
    except PermissionError as exc:
        raise StateFileError(f"{path}: cannot write the state file ({exc.strerror})") from None
    total = sum(rec["spent"] for rec in state.values())
    if total > roadmap.budget * (1 + 1e-9):
        unit = roadmap.unit_label()
        u = f" {unit}" if unit else ""
        warnings.warn(
            f"{path}: the recorded experiments spent {total:,.6g}{u} in total, more than the "
            f"budget of {roadmap.budget:,.6g}{u}; planning continues with nothing left (raise "
            "`budget:` in the roadmap if more compute is available, or fix --spent)",
            DeriskWarning,
            stacklevel=2,
        )
    return state


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: never half a file.

    The file keeps the permission bits it had; a new file gets the umask's (mkstemp
    would leave 0600).
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        mode = 0o666 & ~mask
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
