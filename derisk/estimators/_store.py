"""The run store (one SQLite file) and resumable sweeps.

Every write is one `BEGIN IMMEDIATE` transaction, and every connection waits up to
`BUSY_MS` for another process's write instead of failing with "database is locked".
A run's key (a hash of its model, training setting and corpus) is claimed atomically:
the claim inserts the row as "running" with its owner (pid, host, process start time)
or finds it there. A finished (or diverged: training is deterministic) point is reported,
not re-run; a point "running" in a live process is left to it; a "running" row whose
process is gone (killed), or a "failed" one, is retaken in place, keeping its id. So a
killed sweep leaves at most the run in flight to redo, two identical runs at once never
clobber each other, and nothing finished is ever rewritten (unless `retrain=True`).

A store is marked as derisk's (`PRAGMA application_id`); readers open it read-only
(`mode=ro`) and change nothing on disk, and no command writes into an SQLite file that
is not a derisk store. Stores written by earlier versions (no marker, no owner columns)
are recognised by their `runs` table and upgraded in place by the first writer.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import difflib
import hashlib
import io
import itertools
import json
import math
import os
import re
import socket
import sqlite3
import time
import warnings
from pathlib import Path

from derisk._paths import data_path
from derisk.errors import DataError, DeriskError, DeriskWarning, Problem, RoadmapError
from derisk.estimators._model import ModelConfig, flops_per_token, param_counts
from derisk.estimators._train import RunResult, TrainConfig
from derisk.scaling import PredictPoint
from derisk.scaling._predict import count_key

APP_ID = 0x64657273  # "ders" in the file header: this SQLite file is a derisk run store
SCHEMA_VERSION = 2  # 1: no marker, owner, heartbeat or error columns (still read)
BUSY_MS = 30_000  # how long a connection waits for another process's write
HEARTBEAT_S = 30  # a running trainer refreshes its row this often
STALE_S = 600  # a run owned on another host with no heartbeat for this long is retaken
MAX_BAD_ROW_WARNINGS = 5

# (name, declaration); the first block is the version-1 schema, which old stores have.
COLUMNS = [
    ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("key", "TEXT UNIQUE NOT NULL"),
    ("arch", "TEXT NOT NULL"),
    ("model", "TEXT NOT NULL"),
    ("train", "TEXT NOT NULL"),
    ("params", "INTEGER"),
    ("active_params", "INTEGER"),
    ("non_embedding", "INTEGER"),
    ("experts", "INTEGER"),
    ("granularity", "INTEGER"),
    ("tokens", "INTEGER"),
    ("val_loss", "REAL"),
    ("best_val_loss", "REAL"),
    ("curve", "TEXT"),
    ("flops", "REAL"),
    ("wall_s", "REAL"),
    ("tokens_per_s", "REAL"),
    ("mfu", "REAL"),
    ("device", "TEXT"),
    ("corpus", "TEXT"),
    ("corpus_hash", "TEXT"),
    ("version", "TEXT"),
    ("status", "TEXT NOT NULL"),
    ("started", "REAL"),
    ("finished", "REAL"),
    # version 2: who is training a running row, when it last said so, why a run failed
    ("owner", "TEXT"),
    ("heartbeat", "REAL"),
    ("error", "TEXT"),
]
V1_COLUMNS = {name for name, _ in COLUMNS[:25]}
SCHEMA = "CREATE TABLE runs (\n    " + ",\n    ".join(f"{n} {d}" for n, d in COLUMNS) + "\n)"
_NUMBER_COLUMNS = [
    "params",
    "active_params",
    "non_embedding",
    "experts",
    "granularity",
    "tokens",
    "val_loss",
    "best_val_loss",
    "flops",
    "wall_s",
    "tokens_per_s",
    "mfu",
    "started",
    "finished",
    "heartbeat",
]
_COUNT_COLUMNS = {"params", "active_params", "non_embedding", "experts", "granularity", "tokens"}
_TEXT_COLUMNS = "key arch model train curve device corpus corpus_hash version status owner error"
_TEXT_COLUMNS = _TEXT_COLUMNS.split()

# Keys this process is training now: a "running" row it owns but is not training (left by
# an earlier call in the same process) is stale, like one of a dead process.
_IN_FLIGHT: set[tuple[str, str]] = set()


def default_store() -> Path:
    """$DERISK_STORE, else ~/.local/share/derisk/runs.sqlite (XDG_DATA_HOME respected)."""
    return data_path("DERISK_STORE", "runs.sqlite")


def _non_default(obj) -> dict:
    """Fields that differ from their defaults: adding a new defaulted field to a config
    must not change the key of any run already in a store."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.default is dataclasses.MISSING or value != f.default:
            out[f.name] = value
    return out


def run_key(model: ModelConfig, tc: TrainConfig, corpus_hash: str) -> str:
    spec = {"model": _non_default(model), "train": _non_default(tc), "corpus": corpus_hash}
    spec["model"].pop("impl", None)  # the same run whichever kernel computes it
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------- owners


def _process_start(pid: int) -> tuple[int | None, bool]:
    """(start time in clock ticks since boot, is a zombie) from /proc; (None, False) where
    there is no /proc. The start time tells a live process from a later one given the
    same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, False
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in (...) may hold spaces
    try:
        return int(fields[19]), fields[0] in ("Z", "X")
    except (IndexError, ValueError):
        return None, False


def _me() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": _process_start(os.getpid())[0],
    }


def _owner_of(text) -> dict | None:
    try:
        owner = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _is_done(status: str) -> bool:
    """A result that re-running would only repeat (training is deterministic)."""
    return status == "finished" or status.startswith("diverged")


@dataclasses.dataclass(frozen=True)
class Claim:
    """What claiming a run key found.

    `state`: "claimed" (this process now trains it; `previous` is the status of a row it
    retook, or None), "done" (already finished or diverged: `status`), "busy" (running in
    the live process `owner`).
    """

    state: str
    id: int
    status: str
    previous: str | None = None
    owner: dict | None = None

    def describe_owner(self) -> str:
        o = self.owner or {}
        return f"process {o.get('pid')} on {o.get('host')}"


# ----------------------------------------------------------------------------- the store


def _header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(100)


class RunStore:
    """SQLite-backed store of training runs.

    `create=False` opens an existing store read-only (`derisk runs`, `predict --run`,
    exports): a missing, damaged or foreign file is a `DataError` naming it and the fix,
    and nothing on disk is created or changed. `create=True` (train, sweep) creates the
    store and its folder if needed and upgrades a version-1 store.
    """

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        self.readonly = not create
        self.db = None
        try:
            self._open()
        except OSError as exc:
            self.close()
            raise DataError(
                f"{self.path}: cannot open the run store ({exc.strerror or exc}); pass "
                "--store a path you can write to"
            ) from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening

    def _fail(self, what: str, fix: str = "pass --store another path") -> DataError:
        return DataError(f"{self.path}: {what}; {fix}")

    def _open(self) -> None:
        p = self.path
        if p.is_dir():
            raise self._fail("is a folder, not a run store", "pass --store a file path")
        anc = p.parent
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
        if not anc.is_dir():
            raise self._fail(
                f"no store can be there: {anc} is a file, not a folder",
                "pass --store a path inside a folder",
            )
        if self.readonly:
            if not p.exists():
                raise DataError(f"no run store at {p} (train or sweep first)")
        else:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._fail(
                    f"cannot create the folder {p.parent} ({exc.strerror or exc})",
                    "create it yourself or pass --store a writable path",
                ) from None
            # SQLite writes a journal beside the store: the folder must be writable too.
            if not os.access(p.parent, os.W_OK | os.X_OK):
                raise self._fail(
                    f"cannot write in the folder {p.parent} (permission denied)",
                    "fix its permissions or pass --store a writable path",
                )
            if p.exists() and not os.access(p, os.R_OK | os.W_OK):
                raise self._fail(
                    "the store is not writable (permission denied)",
                    f"fix its permissions (chmod u+rw {p}) or pass --store another path",
                )
        if p.exists():
            if not p.is_file():
                raise self._fail("is not a regular file")
            head = _header(p)
            if head and not head.startswith(b"SQLite format 3\0"):
                raise self._fail(
                    f"not an SQLite database (it starts with {head[:16]!r})",
                    "pass --store a derisk run store or a new path, or move this file away",
                )
            if head and len(head) < 100:
                raise self._damaged("truncated to a few bytes")
        self.db = self._connect()
        with self._guard():
            check = [r[0] for r in self.db.execute("PRAGMA quick_check(5)").fetchall()]
            if check != ["ok"]:
                raise self._damaged("; ".join(str(c) for c in check)[:200])
            if self.readonly:
                self._identify(self.db)
            else:
                with self._write() as db:
                    self._identify(db)
        self.db.row_factory = sqlite3.Row

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            # mode=ro: never create, convert or journal anything
            target, uri = f"{self.path.resolve().as_uri()}?mode=ro", True
        else:
            target, uri = str(self.path), False
        try:
            db = sqlite3.connect(target, timeout=BUSY_MS / 1000, isolation_level=None, uri=uri)
            db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        except sqlite3.Error as exc:
            raise self._classify(exc) from None
        except UnicodeDecodeError as exc:
            raise self._damaged(f"undecodable bytes: {exc.object[:80]!r}") from None
        # a text cell that is not UTF-8 is read with replacement characters, so its row is
        # reported as unreadable instead of failing the whole query
        db.text_factory = lambda b: b.decode("utf-8", "replace")
        return db

    def _damaged(self, detail: str) -> DataError:
        return self._fail(
            f"the store is damaged ({detail})",
            f"recover its readable rows with `sqlite3 {self.path} .recover | sqlite3 "
            "recovered.sqlite` and pass --store recovered.sqlite, or move it away",
        )

    def _classify(self, exc: sqlite3.Error) -> DataError:
        msg = str(exc)
        low = msg.lower()
        if "malformed" in low or "not a database" in low or "disk i/o" in low:
            return self._damaged(msg)
        if "locked" in low or "busy" in low:
            return self._fail(
                f"the store stayed locked by another process for {BUSY_MS // 1000} s ({msg})",
                "retry when that process is done",
            )
        if "readonly" in low or "read-only" in low:
            return self._fail(
                f"cannot write the store ({msg})",
                "fix the permissions of the file and its folder, or pass --store another path",
            )
        if "unable to open" in low:
            return self._fail(f"cannot open the store ({msg})", "check the path and permissions")
        if "no such column" in low or "no such table" in low or "has no column" in low:
            return self._fail(
                f"its `runs` table is not a derisk run store's ({msg})",
                "pass --store a derisk run store or a new path",
            )
        return self._fail(f"the store cannot be used ({msg})", "pass --store another path")

    @contextlib.contextmanager
    def _guard(self):
        """sqlite3 errors as one-line `DataError`s naming the store and the fix."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._classify(exc) from None
        except UnicodeDecodeError as exc:  # sqlite3 decoding a message that quotes junk
            raise self._damaged(f"undecodable bytes: {exc.object[:80]!r}") from None

    @contextlib.contextmanager
    def _write(self):
        """One write transaction, holding the store's write lock from its first statement
        (BEGIN IMMEDIATE), so a read-check-write in it is atomic across processes."""
        with self._guard():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
                raise
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
                raise

    def _identify(self, db) -> None:
        """Refuse a file that is not a derisk store; create or upgrade one when writing
        (inside the caller's write transaction: two processes creating one store at once
        see each other's work)."""
        app = db.execute("PRAGMA application_id").fetchall()[0][0]
        tables = [
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        if app not in (0, APP_ID):
            raise self._fail(
                f"an SQLite database of another program (application_id {app:#x}), not a "
                "derisk run store",
                "derisk does not write into other programs' files: pass --store another path",
            )
        if not tables and app == 0:
            if self.readonly:
                raise self._fail(
                    "an empty SQLite file, not a run store yet", "train or sweep into it first"
                )
            db.execute(SCHEMA)
            db.execute(f"PRAGMA application_id = {APP_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        if "runs" not in tables:
            raise self._fail(
                "an SQLite database that is not a derisk run store (its tables: "
                + ", ".join(sorted(tables))[:200]
                + ")",
                "derisk does not write into other programs' files: pass --store another path",
            )
        cols = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
        missing = sorted(V1_COLUMNS - cols)
        if missing:
            raise self._fail(
                "its `runs` table is not a derisk run store's (missing columns: "
                + ", ".join(missing)
                + ")",
                "pass --store a derisk run store or a new path",
            )
        if app == 0 and len(tables) > 1:
            raise self._fail(
                "an SQLite database with tables besides a `runs` table ("
                + ", ".join(sorted(set(tables) - {"runs"}))[:200]
                + "), not a derisk run store",
                "derisk does not write into other programs' files: pass --store another path",
            )
        self.columns = cols
        if self.readonly:
            return
        for name, decl in COLUMNS:
            if name not in cols:  # upgrade a version-1 store in place
                db.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
        if app == 0:
            db.execute(f"PRAGMA application_id = {APP_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self):
        if self.db is not None:
            self.db.close()
            self.db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ writing

    def _alive(self, key: str, owner: dict | None, heartbeat) -> bool:
        """Is the process that owns a running row still training it?"""
        if owner is None:
            return False  # a version-1 row: its writer never said who it was
        me = _me()
        if owner.get("host") != me["host"]:  # cannot see the process: trust its heartbeat
            return isinstance(heartbeat, int | float) and time.time() - heartbeat < STALE_S
        pid = owner["pid"]
        if pid == me["pid"]:
            return (str(self.path.resolve()), key) in _IN_FLIGHT
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except (PermissionError, OverflowError, ValueError):
            return pid > 0  # exists, someone else's
        since, zombie = _process_start(pid)
        if zombie:
            return False
        return not (since is not None and owner.get("since") not in (None, since))

    def claim(self, key: str, model: ModelConfig, tc: TrainConfig, corpus, *, retrain=False):
        """Atomically take the run `key` for this process, or say who has it: a `Claim`.

        A new key is inserted as running; a running row of a dead process or a failed row
        is retaken in place (same id); a finished or diverged one is left as it is
        (`retrain=True` retakes it too); a running row of a live process is left to it.
        """
        from derisk import __version__

        counts = param_counts(model)
        me = _me()
        now = time.time()
        fields = {
            "arch": model.arch,
            "model": json.dumps(dataclasses.asdict(model)),
            "train": json.dumps(dataclasses.asdict(tc)),
            "params": counts["total"],
            "active_params": counts["active"],
            "non_embedding": counts["non_embedding"],
            "experts": model.n_experts,
            "granularity": model.granularity,
            "tokens": tc.tokens,
            "corpus": str(corpus.source),
            "corpus_hash": corpus.digest,
            "version": __version__,
            "status": "running",
            "started": now,
            "owner": json.dumps(me),
            "heartbeat": now,
            # a retaken row forgets its earlier outcome
            **dict.fromkeys(
                [
                    "val_loss",
                    "best_val_loss",
                    "curve",
                    "flops",
                    "wall_s",
                    "tokens_per_s",
                    "mfu",
                    "device",
                    "finished",
                    "error",
                ]
            ),
        }
        with self._write() as db:
            rows = db.execute(
                "SELECT id, status, owner, heartbeat FROM runs WHERE key = ?", (key,)
            ).fetchall()
            row = rows[0] if rows else None
            if row is None:
                names = ["key", *fields]
                cur = db.execute(
                    f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                    (key, *fields.values()),
                )
                claim = Claim("claimed", int(cur.lastrowid), "running")
            else:
                run_id, status, owner_text, heartbeat = row
                status = str(status)
                owner = _owner_of(owner_text)
                if status == "running" and self._alive(key, owner, heartbeat):
                    return Claim("busy", int(run_id), status, owner=owner)
                if _is_done(status) and not retrain:
                    return Claim("done", int(run_id), status)
                if status == "running":
                    status = "running (its process is gone)"
                db.execute(
                    f"UPDATE runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                    (*fields.values(), run_id),
                )
                claim = Claim("claimed", int(run_id), "running", previous=status)
        _IN_FLIGHT.add((str(self.path.resolve()), key))
        return claim

    def start(self, key: str, model: ModelConfig, tc: TrainConfig, corpus) -> Claim:
        """`claim`, for callers that train whatever it says (scripts, tests)."""
        return self.claim(key, model, tc, corpus)

    def _mine(self) -> str:
        return json.dumps(_me())

    def heartbeat(self, key: str) -> None:
        """Say this process is still training `key` (a no-op if it no longer owns it)."""
        with self._write() as db:
            db.execute(
                "UPDATE runs SET heartbeat = ? WHERE key = ? AND status = 'running' AND owner = ?",
                (time.time(), key, self._mine()),
            )

    def finish(self, key: str, r: RunResult) -> bool:
        """Record a run's result; False (and a warning) if another process retook it."""

        def num(x):
            return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x

        try:
            with self._write() as db:
                cur = db.execute(
                    "UPDATE runs SET tokens = ?, val_loss = ?, best_val_loss = ?, curve = ?, "
                    "flops = ?, wall_s = ?, tokens_per_s = ?, mfu = ?, device = ?, status = ?, "
                    "finished = ?, heartbeat = ? WHERE key = ? AND status = 'running' "
                    "AND owner = ?",
                    (
                        r.tokens,
                        num(r.final_val_loss),
                        num(r.best_val_loss),
                        json.dumps(r.curve),
                        num(r.flops),
                        num(r.wall_s),
                        num(r.tokens_per_s),
                        num(r.mfu),
                        r.device,
                        r.status,
                        time.time(),
                        time.time(),
                        key,
                        self._mine(),
                    ),
                )
        finally:
            _IN_FLIGHT.discard((str(self.path.resolve()), key))
        if cur.rowcount == 0:
            warnings.warn(
                f"{self.path}: run {key} was retaken by another process while this one "
                "trained it; this result was not saved",
                DeriskWarning,
                stacklevel=2,
            )
            return False
        return True

    def fail(self, key: str, error: str) -> None:
        """Mark a run this process was training as failed, with why (retaken next time)."""
        try:
            with self._write() as db:
                db.execute(
                    "UPDATE runs SET status = ?, error = ?, finished = ? WHERE key = ? "
                    "AND status = 'running' AND owner = ?",
                    (f"failed: {error}"[:500], error, time.time(), key, self._mine()),
                )
        finally:
            _IN_FLIGHT.discard((str(self.path.resolve()), key))

    # ------------------------------------------------------------------ reading

    def id_of(self, key: str) -> int | None:
        """The integer id (what `derisk predict --run ID` takes) of the run with this key."""
        with self._guard():
            rows = self.db.execute("SELECT id FROM runs WHERE key = ?", (key,)).fetchall()
        return int(rows[0][0]) if rows else None

    def status(self, key: str) -> str | None:
        with self._guard():
            rows = self.db.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchall()
        return str(rows[0][0]) if rows else None

    def stale(self, run: dict) -> bool:
        """A run marked running whose process is gone (it is retaken by the next run)."""
        return run["status"] == "running" and not self._alive(
            run["key"], _owner_of(run.get("owner")), run.get("heartbeat")
        )

    def _rows(self, where: str = "", args: tuple = ()) -> list[tuple[int, dict | str]]:
        """(id, decoded run) or (id, why it cannot be read), in id order."""
        with self._guard():
            rows = self.db.execute(f"SELECT * FROM runs {where} ORDER BY id", args).fetchall()
        out = []
        for row in rows:
            try:
                out.append((row["id"], _decode(row)))
            except ValueError as exc:
                out.append((row["id"], str(exc)))
        return out

    def runs(self) -> list[dict]:
        """Every readable run. A row that cannot be read (bad JSON, a text where a number
        belongs) is skipped with a `DeriskWarning` naming its id: one damaged row must not
        hide the others, and the warning says which one to fix or delete."""
        good, bad = [], []
        for run_id, run in self._rows():
            (good if isinstance(run, dict) else bad).append(
                run if isinstance(run, dict) else (run_id, run)
            )
        for run_id, why in bad[:MAX_BAD_ROW_WARNINGS]:
            warnings.warn(
                f"{self.path}: skipped run {run_id}, which cannot be read ({why}); delete it "
                f'with `sqlite3 {self.path} "DELETE FROM runs WHERE id = {run_id}"` and '
                "train the point again",
                DeriskWarning,
                stacklevel=2,
            )
        if len(bad) > MAX_BAD_ROW_WARNINGS:
            warnings.warn(
                f"{self.path}: skipped {len(bad) - MAX_BAD_ROW_WARNINGS} more unreadable runs",
                DeriskWarning,
                stacklevel=2,
            )
        return good

    def get(self, run_id: int | str) -> dict:
        """One run by id; `DataError` naming the store when there is none or it is bad."""
        try:
            rid = int(str(run_id).strip())
        except ValueError:
            raise DataError(
                f"run id {run_id!r} is not a number; `derisk runs` lists the ids"
            ) from None
        if not -(2**63) <= rid < 2**63:
            raise DataError(f"{self.path}: no run with id {run_id}; `derisk runs` lists the ids")
        rows = self._rows("WHERE id = ?", (rid,))
        if not rows:
            raise DataError(f"{self.path}: no run with id {run_id}; `derisk runs` lists the ids")
        run = rows[0][1]
        if not isinstance(run, dict):
            raise DataError(
                f"{self.path}: run {rid} cannot be read ({run}); delete it with `sqlite3 "
                f'{self.path} "DELETE FROM runs WHERE id = {rid}"` and train it again'
            )
        return run

    def export_csv(self, *, arch: str | None = None) -> str:
        """Finished runs as the CSV `derisk fit` reads (params = non-embedding)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        setting = ["d_model", "n_layer", "n_head", "seq_len", "top_k", "batch_size", "lr"]
        w.writerow(
            ["params", "tokens", "loss", "experts", "granularity", "active_params", "arch"]
            + setting
            + ["corpus_hash"]
        )
        for r in self.runs():
            if r["status"] != "finished" or r["val_loss"] is None or (arch and r["arch"] != arch):
                continue
            m, t = r["model"], r["train"]
            active = param_counts(ModelConfig(**m))["non_embedding_active"]
            conf = {**m, **t}
            if m["arch"] == "dense":
                conf["top_k"] = ""  # no router
            w.writerow(
                [
                    r["non_embedding"],
                    r["tokens"],
                    r["val_loss"],
                    r["experts"],
                    r["granularity"],
                    active,
                    r["arch"],
                ]
                + [conf[k] for k in setting]
                + [r["corpus_hash"]]
            )
        return buf.getvalue()


def _config(cls, text, what: str):
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"its {what} is not a JSON object")
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in value.items() if k in names})
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ValueError(f"its {what} is not valid: {exc}") from None


def _decode(row) -> dict:
    """A stored row as a run dict; `ValueError` saying what is wrong with it."""
    d = {k: row[k] for k in row.keys()}  # noqa: SIM118 (sqlite3.Row)
    for c in _NUMBER_COLUMNS:
        v = d.get(c)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ValueError(f"its {c} is {str(v)[:40]!r}, not a number")
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"its {c} is {v}")
        if c in _COUNT_COLUMNS and v is not None and v < 0:
            raise ValueError(f"its {c} is negative ({v})")
    for c in _TEXT_COLUMNS:
        v = d.get(c)
        if v is not None and not isinstance(v, str):
            raise ValueError(f"its {c} is {str(v)[:40]!r}, not text")
    if not d.get("status"):
        raise ValueError("it has no status")
    try:
        model = _config(ModelConfig, d["model"], "model")
        tc = _config(TrainConfig, d["train"], "training setting")
        curve = json.loads(d["curve"]) if d.get("curve") else []
    except (ValueError, TypeError, RecursionError) as exc:
        raise ValueError(str(exc) if "its " in str(exc) else f"bad JSON: {exc}"[:200]) from None
    if not isinstance(curve, list):
        raise ValueError("its curve is not a JSON list")
    if d["arch"] != model.arch:
        raise ValueError(f"its arch {d['arch']!r} is not its model's ({model.arch!r})")
    d["model"], d["train"], d["curve"] = dataclasses.asdict(model), dataclasses.asdict(tc), curve
    return d


def law_point(run: dict, fit) -> PredictPoint:
    """A finished stored run as a point on a fitted law's axes (N as the law counts it:
    total or active non-embedding parameters), with its measured loss and setting."""
    if run["status"] != "finished":
        raise DataError(f"run {run['id']} is {run['status']}, not finished: nothing to compare")
    if run["val_loss"] is None or not run["tokens"]:
        raise DataError(
            f"run {run['id']} is finished but records no "
            f"{'loss' if run['val_loss'] is None else 'tokens'}: the store's row is damaged; "
            "retrain it (`derisk train`) or leave it out"
        )
    loss = run["val_loss"]
    if not (isinstance(loss, int | float) and math.isfinite(loss) and loss > 0):
        raise DataError(
            f"run {run['id']} records a loss of {loss!r}, not a positive number: the store's "
            "row is damaged; retrain it (`derisk train`) or leave it out"
        )
    counts = param_counts(ModelConfig(**run["model"]))
    setting = {**run["model"], **run["train"], "corpus_hash": run["corpus_hash"]}
    if run["arch"] == "dense":
        setting.pop("top_k", None)  # no router
    return PredictPoint(
        params=counts[count_key(fit)],
        tokens=run["tokens"],
        experts=run["experts"] or 1,
        granularity=run["granularity"] or 1,
        run=int(run["id"]),
        observed=run["val_loss"],
        setting=setting,
    )


# ----------------------------------------------------------------------------- sweeps

MODEL_KEYS = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "impl"]
TRAIN_KEYS = [f.name for f in dataclasses.fields(TrainConfig)]
# num_cpus / num_gpus: what each point's task asks of a Ray cluster (`sweep --ray`)
RESOURCE_KEYS = ["num_cpus", "num_gpus"]
SWEEP_KEYS = MODEL_KEYS + TRAIN_KEYS + ["max_flops", "corpus", "max_bytes", "lr_by_d_model"]
SWEEP_KEYS += RESOURCE_KEYS
MAX_POINTS = 10_000  # a grid larger than this is a typo, not a sweep
MAX_TOKENS = 10**15  # a run of more tokens would not finish (and overflows SQLite's int64)

# What each key takes: (kind, low, high); kinds: "int", "float", a tuple of choices, "path".
# low/high bound the value (float bounds are open where the name says "above").
_INT_MAX = 2**31 - 1
_FIELD = {
    "arch": (("dense", "moe"), None, None),
    "compute_dtype": (("float32", "bfloat16"), None, None),
    "d_model": ("int", 8, _INT_MAX),
    "n_layer": ("int", 1, _INT_MAX),
    "n_head": ("int", 1, _INT_MAX),
    "seq_len": ("int", 2, _INT_MAX),
    "experts": ("int", 1, _INT_MAX),
    "top_k": ("int", 1, _INT_MAX),
    "granularity": ("int", 1, _INT_MAX),
    "tokens": ("int", 1, MAX_TOKENS),
    "batch_size": ("int", 1, _INT_MAX),
    "seed": ("int", 0, 2**32 - 1),
    "eval_every": ("int", 0, _INT_MAX),
    "eval_batches": ("int", 1, _INT_MAX),
    "max_bytes": ("int", 1, 2**40),
    "ffn_mult": ("float", "above 0", 1e6),
    "aux_loss": ("float", 0.0, 1e6),
    "lr": ("float", "above 0", 1e3),
    "warmup": ("float", 0.0, "below 1"),
    "weight_decay": ("float", 0.0, 1e3),
    "divergence": ("float", "above 1", 1e12),
    "max_flops": ("float", "above 0", math.inf),
    "corpus": ("path", None, None),
    "num_cpus": ("float", 0.0, 1e6),
    "num_gpus": ("float", 0.0, 1e4),
}
_SCALAR_ONLY = {"max_flops", "corpus", "max_bytes", "lr_by_d_model", *RESOURCE_KEYS}
_NUM_RE = re.compile(r"^[+-]?(\d[\d_]*\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _as_number(value) -> float | int | None:
    """An int or float from YAML; PyYAML reads `3e6` as a string, so numeric strings count."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and _NUM_RE.match(value.strip()):
        text = value.strip().replace("_", "")
        try:
            return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        except (ValueError, OverflowError):
            return None
    return None


def check_value(name: str, value):
    """The value of sweep key (or training flag) `name`, converted; `ValueError` saying
    what is expected."""
    kind, lo, hi = _FIELD[name]
    if isinstance(kind, tuple):
        if value not in kind:
            raise ValueError(f"must be one of {', '.join(kind)}, got {value!r}")
        return value
    if kind == "path":
        if not isinstance(value, str) or not value or "\0" in value:
            raise ValueError(f"must be a file or folder path, got {value!r}")
        return value
    x = _as_number(value)
    if x is None:
        raise ValueError(f"must be a number, got {str(value)[:40]!r}")
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError(f"must be a finite number, got {x}")
    if kind == "int":
        if isinstance(x, float):
            if x != int(x):
                raise ValueError(f"must be a whole number, got {x:g}")
            x = int(x)
        if not lo <= x <= hi:
            raise ValueError(f"must be between {lo:,} and {hi:,}, got {x:,}")
        return x
    x = float(x)
    low_ok = x > 0 if lo == "above 0" else x > 1 if lo == "above 1" else x >= lo
    high_ok = x < 1 if hi == "below 1" else x <= hi
    if not (low_ok and high_ok):
        low = lo if isinstance(lo, str) else f"at least {lo:g}"
        high = hi if isinstance(hi, str) else f"at most {hi:g}"
        raise ValueError(f"must be {low} and {high}, got {x:g}")
    return x


def check_sweep(spec, source: str = "<sweep>", *, require_tokens: bool = False) -> dict:
    """A sweep spec validated: a plain dict of converted values (lists for grid axes).
    `RoadmapError` listing every problem as file:line:col (when the spec was parsed with
    positions, as `load_sweep` does). A spec file must say `tokens` (`require_tokens`):
    a default length nobody wrote is not a sweep anyone asked for."""
    problems = []

    def bad(mark, message, key=None):
        """Record a problem at `mark`, else at the value (or name) of `key`."""
        if mark is None and key is not None:
            mark = getattr(spec, "value_marks", {}).get(key) or getattr(spec, "key_marks", {}).get(
                key
            )
        problems.append(
            Problem(source, getattr(mark, "line", None), getattr(mark, "col", None), message)
        )

    if not isinstance(spec, dict):
        mark = getattr(spec, "mark", None)
        bad(mark, "a sweep spec is a mapping like `d_model: [32, 64]` (lists are grid axes)")
        raise RoadmapError(problems)
    if not spec:
        bad(getattr(spec, "mark", None), "the sweep spec is empty; give at least `tokens`")
        raise RoadmapError(problems)
    out = {}
    for key, value in spec.items():
        kmark = getattr(spec, "key_marks", {}).get(key)
        if key not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(key), SWEEP_KEYS, n=1)
            bad(
                kmark,
                f"unknown key `{str(key)[:40]}`"
                + (f"; did you mean `{close[0]}`?" if close else "")
                + f" (allowed: {', '.join(SWEEP_KEYS)})",
            )
            continue
        if key == "lr_by_d_model":
            if not isinstance(value, dict) or not value:
                bad(None, "lr_by_d_model must be a mapping like {16: 0.006, 32: 0.003}", key)
                continue
            table = {}
            for w, lr in value.items():
                wm = getattr(value, "value_marks", {}).get(w)
                try:
                    table[check_value("d_model", w)] = check_value("lr", lr)
                except ValueError as exc:
                    bad(wm, f"lr_by_d_model: entry {str(w)[:20]}: {exc}", None if wm else key)
            out[key] = table
            continue
        if isinstance(value, dict):
            bad(None, f"{key} must be a value or a list of values, got a mapping", key)
            continue
        if isinstance(value, list) and key in _SCALAR_ONLY:
            bad(None, f"{key} takes one value, not a list", key)
            continue
        items = value if isinstance(value, list) else [value]
        if not items:
            bad(None, f"{key} is an empty list: a grid axis needs at least one value", key)
            continue
        item_marks = getattr(value, "item_marks", None)
        vals = []
        for i, item in enumerate(items):
            try:
                vals.append(check_value(key, item))
            except ValueError as exc:
                where = item_marks[i] if item_marks else None
                bad(where, f"{key}: {exc}", None if where else key)
        out[key] = vals if isinstance(value, list) else (vals[0] if vals else None)
    if require_tokens and "tokens" not in spec and not problems:
        bad(
            getattr(spec, "mark", None),
            "say how long to train each point: add `tokens:` (e.g. `tokens: [1e5, 1e6]`)",
        )
    gpus = out.get("num_gpus")
    if isinstance(gpus, float) and gpus > 1 and gpus != int(gpus):
        # Ray shares a GPU between tasks (fractions below 1) but not parts of several
        bad(None, f"num_gpus: a number above 1 must be whole, got {gpus:g}", "num_gpus")
    if "lr" in spec and "lr_by_d_model" in spec:
        bad(None, "give lr or lr_by_d_model, not both", "lr")
    if not problems:
        size = math.prod(len(v) for k, v in out.items() if isinstance(v, list))
        if size > MAX_POINTS:
            bad(
                None,
                f"the grid has {size:,} points, more than {MAX_POINTS:,}; "
                "use fewer values per axis",
            )
    if problems:
        raise RoadmapError(problems)
    return out


def sweep_points(spec: dict, source: str = "<sweep>"):
    """Expand a sweep spec into (ModelConfig, TrainConfig) points, cheapest first.

    Lists are grid axes, scalars are fixed; `max_flops` caps the total training compute
    (points are taken cheapest first until the next would pass the cap). The spec is
    validated first (`check_sweep`).
    """
    spec = check_sweep(spec, source)
    axes = {
        k: (v if isinstance(v, list) else [v])
        for k, v in spec.items()
        if k in MODEL_KEYS + TRAIN_KEYS
    }
    points = []
    for combo in itertools.product(*axes.values()):
        kw = dict(zip(axes, combo, strict=True))
        mk = {k: v for k, v in kw.items() if k in MODEL_KEYS}
        tk = {k: v for k, v in kw.items() if k in TRAIN_KEYS}
        if "lr_by_d_model" in spec:  # the best learning rate falls with width
            table = spec["lr_by_d_model"]
            width = int(mk.get("d_model", ModelConfig().d_model))
            if width not in table:
                raise DeriskError(f"{source}: lr_by_d_model has no entry for d_model {width}")
            tk["lr"] = table[width]
        if mk.get("arch", "dense") == "dense":  # MoE-only axes mean nothing for dense
            for k in ("experts", "top_k", "granularity"):
                mk.pop(k, None)
        try:
            m, t = ModelConfig(**mk), TrainConfig(**tk)
        except (TypeError, ValueError) as exc:
            raise DeriskError(f"{source}: point {kw}: {exc}") from None
        points.append((m, t))
    unique = list({(m, t): None for m, t in points})
    unique.sort(key=lambda p: flops_per_token(p[0]) * p[1].tokens)
    cap = float(spec.get("max_flops", math.inf))
    kept, total = [], 0.0
    for m, t in unique:
        f = flops_per_token(m) * t.tokens
        if total + f > cap:
            break
        kept.append((m, t))
        total += f
    return kept, len(unique) - len(kept)


MAX_SPEC_BYTES = 1_000_000


def load_sweep(path: str | Path) -> dict:
    """Read and validate a sweep spec (YAML or JSON): a plain dict, or `RoadmapError`
    with every problem as file:line:col."""
    from derisk.graphs._load import parse_text

    path = Path(path)
    source = str(path)

    def fail(message):
        return RoadmapError([Problem(source, None, None, message)])

    if not path.exists():
        raise fail("no such sweep spec")
    if path.is_dir():
        raise fail("is a folder, expected a sweep spec (YAML)")
    if not path.is_file():
        raise fail("is not a regular file, expected a sweep spec (YAML)")
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise fail(f"is over {MAX_SPEC_BYTES:,} bytes: not a sweep spec")
        data = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}") from None
    if b"\0" in data:
        raise fail("is a binary file, expected a sweep spec (YAML text)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return check_sweep(parse_text(text, source), source, require_tokens=True)
