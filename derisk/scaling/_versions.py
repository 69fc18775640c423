"""Law versions: a refit never overwrites a law silently.

A law has a name and a line of versions 1, 2, 3, ... The **current** version is the one
`load_law(NAME)` loads: `laws_dir()/NAME.json` when that exists, else the shipped
`NAME.json` (derisk/estimators/data/laws). Saving a new version with `save_version`

1. copies the current user file, if any, to `laws_dir()/NAME@K.json` (K its version;
   an archive that is already there is never replaced), then
2. writes the new version to `laws_dir()/NAME.json` (atomically), with
   `provenance.law_version` = the highest version known + 1 and `provenance.previous` =
   the version it replaces (`{"version", "path", "sha256"}`).

Shipped files are never written: the first refit of the shipped `cpu-dense` becomes
`laws_dir()/cpu-dense.json`, version 2, which shadows the shipped version 1 (still loadable
as `cpu-dense@1`, as every older version is as `NAME@K`). A law file without
`provenance.law_version` (one `derisk fit --save` wrote, or a shipped one) is version 1.
The steps run under a lock on the laws folder, so two refits at once queue. Readers always
see a whole current file (it is replaced by rename, never truncated).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from derisk.errors import DataError

VERSION_KEY = "law_version"  # in a law's provenance: its place in the law's line
VERSIONED = re.compile(r"(?P<name>[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199})@(?P<version>[0-9]{1,9})")


@dataclass(frozen=True)
class LawVersion:
    """One saved version of a law, read without loading its fit.

    `where` is "user" (in `laws_dir()`) or "shipped"; `current` says `load_law(name)`
    loads this one. `error` is set (and the rest mostly None) for a file that cannot be
    read as JSON.
    """

    name: str
    version: int
    path: Path
    where: str
    current: bool
    law: str | None = None  # the law's form (chinchilla, moe_experts, ...)
    runs: int | None = None  # fitted runs
    source: str | None = None  # where its runs came from
    saved: str | None = None  # UTC time a versioned save wrote it (None: unknown)
    previous: dict | None = None  # {"version", "path", "sha256"} of the version it replaced
    added_run: dict | None = None  # the run a loop refit added (see derisk.estimators._loop)
    refit: dict | None = None  # the options of that refit
    error: str | None = None

    @property
    def label(self) -> str:
        """How to load exactly this version: `NAME@K`."""
        return f"{self.name}@{self.version}"

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "label": self.label,
            "path": str(self.path),
            "where": self.where,
            "current": self.current,
            "law": self.law,
            "runs": self.runs,
            "source": self.source,
            "saved": self.saved,
            "previous": self.previous,
            "added_run": self.added_run,
            "refit": self.refit,
            "error": self.error,
        }


def split_version(text: str) -> tuple[str, int | None]:
    """`cpu-dense@2` -> ("cpu-dense", 2); a name without `@K` -> (name, None)."""
    m = VERSIONED.fullmatch(text)
    if m is None:
        return text, None
    return m["name"], int(m["version"])


def _dirs() -> tuple[Path, Path]:
    from derisk.scaling._optimal import laws_dir, packaged_laws_dir

    return laws_dir(), packaged_laws_dir()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _read(name: str, path: Path, where: str, current: bool, fallback: int) -> LawVersion:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return LawVersion(
            name=name, version=fallback, path=path, where=where, current=current, error=str(exc)
        )
    prov = d.get("provenance") if isinstance(d.get("provenance"), dict) else {}
    data = d.get("data") if isinstance(d.get("data"), dict) else {}
    version = prov.get(VERSION_KEY)
    if not (isinstance(version, int) and not isinstance(version, bool) and version >= 1):
        version = fallback
    runs = data.get("runs", d.get("n"))
    return LawVersion(
        name=name,
        version=version,
        path=path,
        where=where,
        current=current,
        law=d.get("law") if isinstance(d.get("law"), str) else None,
        runs=runs if isinstance(runs, int) else None,
        source=data.get("source") if isinstance(data.get("source"), str) else None,
        saved=prov.get("saved") if isinstance(prov.get("saved"), str) else None,
        previous=prov.get("previous") if isinstance(prov.get("previous"), dict) else None,
        added_run=prov.get("added_run") if isinstance(prov.get("added_run"), dict) else None,
        refit=prov.get("refit") if isinstance(prov.get("refit"), dict) else None,
    )


def law_versions(name: str) -> tuple[LawVersion, ...]:
    """Every saved version of the law `name`, oldest first (shipped before user on a tie).

    Raises DataError when there is none.
    """
    user_dir, shipped_dir = _dirs()
    found: list[LawVersion] = []
    user_current = user_dir / f"{name}.json"
    shipped = shipped_dir / f"{name}.json"
    if shipped.is_file():
        found.append(_read(name, shipped, "shipped", not user_current.is_file(), 1))
    if user_dir.is_dir():
        for p in user_dir.glob(f"{glob_escape(name)}@*.json"):
            base, k = split_version(p.stem)
            if base == name and k is not None:
                found.append(_read(name, p, "user", False, k))
    if user_current.is_file():
        found.append(_read(name, user_current, "user", True, 1))
    if not found:
        raise DataError(
            f"no law `{name}` in {user_dir} or the shipped laws; `derisk laws` lists them"
        )
    return tuple(sorted(found, key=lambda v: (v.version, v.current, v.where == "user")))


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def list_laws() -> dict[str, tuple[LawVersion, ...]]:
    """Every law, shipped and user, with its versions: {name: versions, oldest first}."""
    user_dir, shipped_dir = _dirs()
    names = set()
    for folder in (shipped_dir, user_dir):
        if folder.is_dir():
            names |= {split_version(p.stem)[0] for p in folder.glob("*.json")}
    return {n: law_versions(n) for n in sorted(names)}


def current_version(name: str) -> LawVersion:
    """The version `load_law(name)` loads."""
    return next(v for v in law_versions(name) if v.current)


def version_path(text: str) -> Path | None:
    """The file of `NAME@K` (a user archive or the current file, or the shipped law when
    it is version K); None when there is no such version."""
    name, k = split_version(text)
    if k is None:
        return None
    try:
        versions = law_versions(name)
    except DataError:
        return None
    # the user's own files first, as for a plain name
    for v in sorted(versions, key=lambda v: v.where != "user"):
        if v.version == k:
            return v.path
    return None


@contextlib.contextmanager
def _lock(folder: Path):
    from derisk.graphs._edit import locked

    with locked(folder / "x"):  # locks the folder itself
        yield


def save_version(fit, name: str, *, provenance: dict | None = None) -> LawVersion:
    """Save `fit` as the next version of the law `name` (see the module docstring).

    The current user file, if any, is kept as `NAME@K.json` first; `provenance` gains
    `law_version`, `previous` and `saved`. Returns the new version.

    Raises DataError for a name that is not a plain law name, a laws folder that cannot be
    written, or an archive `NAME@K.json` that exists with other content (fix by hand:
    derisk never replaces a saved version).
    """
    from derisk.graphs import write_atomic
    from derisk.scaling._optimal import check_law_destination, save_law

    if split_version(name)[1] is not None or name.endswith(".json"):
        raise DataError(
            f"cannot save a new version as {name!r}: give the law's plain name (versions "
            "are numbered for you)"
        )
    dest = check_law_destination(name)  # checks the name; makes the folder
    with _lock(dest.parent):
        try:
            versions = law_versions(name)
        except DataError:
            versions = ()
        current = next((v for v in versions if v.current), None)
        top = max((v.version for v in versions), default=0)
        if current is not None and current.where == "user":
            archive = dest.parent / f"{name}@{current.version}.json"
            text = current.path.read_text(encoding="utf-8")
            if archive.exists():
                if archive.read_text(encoding="utf-8") != text:
                    raise DataError(
                        f"cannot keep version {current.version} of `{name}`: {archive} "
                        f"already holds another law; move it away, then refit again"
                    )
            else:
                write_atomic(archive, text)
        prov = dict(provenance or {})
        prov[VERSION_KEY] = top + 1
        prov["previous"] = (
            None
            if current is None
            else {
                "version": current.version,
                "path": str(
                    dest.parent / f"{name}@{current.version}.json"
                    if current.where == "user"
                    else current.path
                ),
                "sha256": file_sha256(current.path),
            }
        )
        prov["saved"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        save_law(fit, name, prov)
    return current_version(name)


__all__ = [
    "VERSION_KEY",
    "LawVersion",
    "current_version",
    "law_versions",
    "list_laws",
    "save_version",
    "split_version",
    "version_path",
]
