"""What-if overrides and the recorded-outcomes state file beside a roadmap."""

from __future__ import annotations

import difflib
import json
import os
import tempfile
from pathlib import Path

import yaml

from derisk.errors import Problem, RoadmapError, StateFileError
from derisk.graphs._load import TOP_KEYS, _locate, parse_text, roadmap_from_dict
from derisk.graphs._model import Roadmap

OVERRIDABLE = ("p", "cost", "reward", "title")


def load_with_overrides(path: str | Path, sets: list[str]) -> Roadmap:
    """Load a roadmap after applying `id.field=value` / `key=value` overrides.

    Overrides are applied to the raw file content, so they are validated like the file.
    Values are YAML: `pilot.p=0.5`, `big.cost={median: 900, p90: 1400}`, `budget=3000`.
    """
    path = Path(path)
    if not path.exists():
        raise RoadmapError([Problem(str(path), None, None, "no such file")])
    data = parse_text(path.read_text(encoding="utf-8"), str(path))
    for text in sets:
        _apply(data, text, str(path))
    return roadmap_from_dict(data, source=str(path))


def _apply(data, text: str, source: str) -> None:
    def fail(msg):
        raise RoadmapError([Problem(source, None, None, f"--set {text!r}: {msg}")])

    if "=" not in text:
        fail("expected `id.field=value` (e.g. pilot.p=0.5) or `key=value` (e.g. budget=3000)")
    key, raw = text.split("=", 1)
    try:
        value = _locate(yaml.safe_load(raw))
    except yaml.YAMLError:
        fail(f"cannot parse the value {raw!r}")
    if not isinstance(data, dict):
        fail("the roadmap is not a mapping")
    if "." not in key:
        if key not in TOP_KEYS or key in ("experiments", "hypotheses"):
            fail(
                f"unknown setting `{key}`; expected budget, resolution or compute_price, or "
                "`id.field` for an experiment"
            )
        data[key] = value
        return
    eid, field = key.rsplit(".", 1)
    if field not in OVERRIDABLE:
        fail(f"cannot set `{field}`; settable fields: {', '.join(OVERRIDABLE)}")
    exps = data.get("experiments") or []
    for e in exps:
        if isinstance(e, dict) and str(e.get("id")) == eid:
            e[field] = value
            return
    ids = [str(e.get("id")) for e in exps if isinstance(e, dict)]
    close = difflib.get_close_matches(eid, ids, n=1)
    fail(f"no experiment `{eid}`" + (f"; did you mean `{close[0]}`?" if close else ""))


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
            or not isinstance(rec.get("spent"), int | float)
        ):
            raise StateFileError(
                f"{path}: bad record for `{eid}` (expected outcome "
                "success|failure and a number `spent`)"
            )
    return outcomes


def record_outcomes(
    roadmap: Roadmap, path: Path, updates: dict[str, tuple[str, float | None]]
) -> dict[str, dict]:
    """Validate and merge outcome updates, then write the state file atomically.

    `updates` maps id -> (outcome, spent); outcome "untried" clears a record; spent None
    means the experiment's median cost.
    """
    state = dict(load_state(roadmap, path))
    for eid, (outcome, spent) in updates.items():
        if eid not in roadmap.ids:
            close = difflib.get_close_matches(eid, list(roadmap.ids), n=1)
            raise StateFileError(
                f"no experiment `{eid}` in {roadmap.source}"
                + (f"; did you mean `{close[0]}`?" if close else "")
            )
        if outcome == "untried":
            state.pop(eid, None)
            continue
        if spent is not None and spent < 0:
            raise StateFileError(f"--spent for `{eid}` must not be negative, got {spent}")
        state[eid] = {
            "outcome": outcome,
            "spent": roadmap.experiment(eid).cost.median if spent is None else spent,
        }
    for eid in state:
        e = roadmap.experiment(eid)
        for clause in e.requires:
            if not any(state.get(a, {}).get("outcome") == "success" for a in clause):
                need = clause[0] if len(clause) == 1 else "one of " + ", ".join(clause)
                raise StateFileError(
                    f"cannot record `{eid}`: its prerequisite {need} has not "
                    "been recorded as a success"
                )
    write_atomic(
        path,
        json.dumps({"version": 1, "roadmap": roadmap.name, "outcomes": state}, indent=2) + "\n",
    )
    return state


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: never half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
