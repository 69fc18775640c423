"""Quiz sessions in one SQLite file, and the progress statistics read from it.

Like the run store: every write is one `BEGIN IMMEDIATE` transaction, connections wait
`BUSY_MS` for another process's write, the file is marked as derisk's quiz history
(`PRAGMA application_id`), reading opens it read-only (`mode=ro`) and changes nothing,
and a file that is not a quiz history is refused with the fix, never written into.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from derisk._paths import data_path
from derisk.quiz._rounds import RULES, STOP, QuizError
from derisk.quiz._score import Scored

APP_ID = 0x6471757A  # "dquz" in the file header: a derisk quiz history
SCHEMA_VERSION = 1
BUSY_MS = 30_000
CALIBRATION_BINS = 10  # stated probabilities in [0, 0.1), ..., [0.9, 1]

SCHEMA = (
    """CREATE TABLE sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    mode TEXT NOT NULL,
    level INTEGER,
    seed INTEGER,
    source TEXT,
    version TEXT
)""",
    """CREATE TABLE answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session INTEGER NOT NULL REFERENCES sessions(id),
    round INTEGER NOT NULL,
    level INTEGER,
    roadmap TEXT NOT NULL,
    answer TEXT NOT NULL,
    optimal TEXT NOT NULL,
    optimal_set TEXT NOT NULL,
    value REAL NOT NULL,
    regret REAL NOT NULL,
    regret_pct REAL,
    heuristics TEXT NOT NULL,
    top TEXT,
    stated_p REAL,
    exact_p REAL,
    brier REAL,
    log_loss REAL,
    at REAL NOT NULL
)""",
)
TABLES = {"sessions", "answers"}


class QuizStoreError(QuizError):
    """The quiz history file cannot be used."""


def default_db() -> Path:
    """$DERISK_QUIZ, else ~/.local/share/derisk/quiz.sqlite (XDG_DATA_HOME respected)."""
    return data_path("DERISK_QUIZ", "quiz.sqlite")


class QuizStore:
    """The quiz history. `create=False` opens it read-only (a missing file is an error:
    use `read_history`, which treats it as no history)."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        self.readonly = not create
        self.db: sqlite3.Connection | None = None
        try:
            self._open()
        except OSError as exc:
            self.close()
            raise self._fail(f"cannot open it ({exc.strerror or exc})") from None
        except BaseException:
            self.close()
            raise

    def _fail(self, what: str, fix: str = "pass --db another path") -> QuizStoreError:
        return QuizStoreError(f"{self.path}: {what}; {fix}")

    def _open(self) -> None:
        p = self.path
        if p.is_dir():
            raise self._fail("is a folder, not a quiz history", "pass --db a file path")
        if self.readonly:
            if not p.exists():
                raise self._fail("no quiz history there", "play a round with `derisk quiz`")
        else:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._fail(
                    f"cannot create the folder {p.parent} ({exc.strerror or exc})"
                ) from None
            if not os.access(p.parent, os.W_OK | os.X_OK):
                raise self._fail(f"cannot write in the folder {p.parent} (permission denied)")
        if p.exists():
            if not p.is_file():
                raise self._fail("is not a regular file")
            with open(p, "rb") as f:
                head = f.read(100)
            if head and not head.startswith(b"SQLite format 3\0"):
                raise self._fail(
                    f"not an SQLite database (it starts with {head[:16]!r})",
                    "pass --db a quiz history or a new path, or move this file away",
                )
        try:
            if self.readonly:
                target, uri = f"{p.resolve().as_uri()}?mode=ro", True
            else:
                target, uri = str(p), False
            self.db = sqlite3.connect(target, timeout=BUSY_MS / 1000, isolation_level=None, uri=uri)
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
        except sqlite3.Error as exc:
            raise self._classify(exc) from None
        with self._guard():
            if self.readonly:
                self._identify(self.db)
            else:
                with self._write() as db:
                    self._identify(db)
        self.db.row_factory = sqlite3.Row

    def _classify(self, exc: sqlite3.Error) -> QuizStoreError:
        msg = str(exc)
        low = msg.lower()
        if "malformed" in low or "not a database" in low or "disk i/o" in low:
            return self._fail(f"the quiz history is damaged ({msg})", "move it away")
        if "locked" in low or "busy" in low:
            return self._fail(
                f"locked by another process for {BUSY_MS // 1000} s ({msg})", "retry later"
            )
        if "readonly" in low or "read-only" in low:
            return self._fail(f"cannot write it ({msg})", "fix its permissions")
        return self._fail(f"cannot use it ({msg})")

    @contextlib.contextmanager
    def _guard(self):
        try:
            yield
        except sqlite3.Error as exc:
            raise self._classify(exc) from None

    @contextlib.contextmanager
    def _write(self):
        """One write transaction, holding the write lock from its first statement."""
        with self._guard():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _identify(self, db) -> None:
        app = db.execute("PRAGMA application_id").fetchall()[0][0]
        tables = {
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        if app == 0 and not tables and not self.readonly:
            for statement in SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA application_id = {APP_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            return
        if app != APP_ID or not tables >= TABLES:
            what = "an empty SQLite file" if not tables else "an SQLite database"
            raise self._fail(
                f"{what} that is not a derisk quiz history",
                "derisk does not write into other programs' files: pass --db another path",
            )

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ writing

    def start_session(
        self,
        *,
        mode: str,
        level: int | None = None,
        seed: int | None = None,
        source: str | None = None,
        started: float | None = None,
    ) -> int:
        from derisk import __version__

        with self._write() as db:
            cur = db.execute(
                "INSERT INTO sessions (started, mode, level, seed, source, version) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (time.time() if started is None else started, mode, level, seed, source,
                 __version__),
            )  # fmt: skip
            return int(cur.lastrowid)

    def add(self, session: int, answers: list[Scored], *, at: float | None = None) -> None:
        """Store answered rounds of a session, all in one transaction."""
        now = time.time() if at is None else at
        with self._write() as db:
            for s in answers:
                r = s.round
                sc = s.scores or {}
                db.execute(
                    "INSERT INTO answers (session, round, level, roadmap, answer, optimal, "
                    "optimal_set, value, regret, regret_pct, heuristics, top, stated_p, "
                    "exact_p, brier, log_loss, at) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        session, r.number, r.level, r.roadmap.name, s.answer, r.optimal,
                        json.dumps(list(r.optimal_set)), r.value, s.regret, s.regret_pct,
                        json.dumps(r.heuristics), r.top, s.stated_p,
                        r.p_top if s.stated_p is not None else None,
                        sc.get("brier"), sc.get("log"), now,
                    ),
                )  # fmt: skip

    # ------------------------------------------------------------------ reading

    def history(self) -> tuple[list[dict], list[dict]]:
        """(sessions, answers) as plain dicts, oldest first."""
        with self._guard():
            sessions = [dict(r) for r in self.db.execute("SELECT * FROM sessions ORDER BY id")]
            answers = []
            for row in self.db.execute("SELECT * FROM answers ORDER BY id"):
                a = dict(row)
                try:
                    a["optimal_set"] = json.loads(a["optimal_set"])
                    a["heuristics"] = json.loads(a["heuristics"])
                except (TypeError, ValueError):
                    continue  # an unreadable row is left out of the statistics
                answers.append(a)
        return sessions, answers


def read_history(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(sessions, answers) stored at `path`; none when there is no file yet."""
    if not Path(path).exists():
        return [], []
    with QuizStore(path, create=False) as store:
        return store.history()


@dataclass(frozen=True)
class QuizStats:
    """Progress over stored sessions.

    sessions: per session (oldest first) its time, level, rounds, mean regret (reward and
    % of the optimal value) and share of optimal answers. calibration: per bin of the
    stated probability, the count, mean stated and mean exact probability, and the mean
    Brier and log scores (with the best achievable). agreement: the share of answers in
    the optimal set and equal to each rule's pick, overall and on the rounds where the
    rule is wrong; plays_like: the rule agreed with most.
    """

    sessions: list[dict]
    calibration: dict
    agreement: dict
    plays_like: str | None
    answers: int

    def as_dict(self) -> dict:
        return {
            "answers": self.answers,
            "sessions": self.sessions,
            "calibration": self.calibration,
            "agreement": self.agreement,
            "plays_like": self.plays_like,
        }


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def quiz_stats(sessions: list[dict], answers: list[dict]) -> QuizStats:
    """Statistics of a stored history (`QuizStore.history`)."""
    by_session: dict[int, list[dict]] = {}
    for a in answers:
        by_session.setdefault(a["session"], []).append(a)
    rows = []
    for s in sessions:
        mine = by_session.get(s["id"], [])
        if not mine:
            continue  # a session quit before its first answer
        rows.append(
            {
                "id": s["id"],
                "started": s["started"],
                "mode": s["mode"],
                "level": s["level"],
                "seed": s["seed"],
                "source": s["source"],
                "rounds": len(mine),
                "mean_regret": _mean(a["regret"] for a in mine),
                "mean_regret_pct": _mean(a["regret_pct"] for a in mine),
                "optimal": sum(a["answer"] in a["optimal_set"] for a in mine) / len(mine),
            }
        )
    cal = [a for a in answers if a["stated_p"] is not None and a["exact_p"] is not None]
    bins = []
    for k in range(CALIBRATION_BINS):
        lo, hi = k / CALIBRATION_BINS, (k + 1) / CALIBRATION_BINS
        inside = [
            a
            for a in cal
            if lo <= a["stated_p"] < hi or (k == CALIBRATION_BINS - 1 and a["stated_p"] == hi)
        ]
        bins.append(
            {
                "lo": lo,
                "hi": hi,
                "count": len(inside),
                "stated": _mean(a["stated_p"] for a in inside),
                "exact": _mean(a["exact_p"] for a in inside),
            }
        )

    def best(a, kind):
        p = a["exact_p"]
        if kind == "brier":
            return p * (1 - p)
        q = min(max(p, 1e-3), 1 - 1e-3)
        return -(p * math.log(q) + (1 - p) * math.log(1 - q))

    calibration = {
        "count": len(cal),
        "brier": _mean(a["brier"] for a in cal),
        "log": _mean(a["log_loss"] for a in cal),
        "brier_best": _mean(best(a, "brier") for a in cal),
        "log_best": _mean(best(a, "log") for a in cal),
        "bins": bins,
    }
    n = len(answers)
    rules = {}
    for rule in RULES:
        picks = [(a, a["heuristics"].get(rule) or STOP) for a in answers if rule in a["heuristics"]]
        wrong = [(a, p) for a, p in picks if p not in a["optimal_set"]]
        rules[rule] = {
            "agree": _mean(float(a["answer"] == p) for a, p in picks),
            "count": len(picks),
            "agree_when_wrong": _mean(float(a["answer"] == p) for a, p in wrong),
            "wrong_rounds": len(wrong),
        }
    agreement = {
        "optimal": _mean(float(a["answer"] in a["optimal_set"]) for a in answers),
        "rules": rules,
    }
    ranked = [r for r in RULES if rules[r]["agree"]]  # a rule never followed is no match
    plays_like = (
        max(ranked, key=lambda r: (rules[r]["agree"], rules[r]["agree_when_wrong"] or 0.0))
        if ranked
        else None
    )
    return QuizStats(
        sessions=rows, calibration=calibration, agreement=agreement, plays_like=plays_like,
        answers=n,
    )  # fmt: skip
