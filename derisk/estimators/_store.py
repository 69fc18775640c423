"""The run store (one SQLite file) and resumable sweeps.

Every write is one transaction. A run is inserted as "running" when it starts and
updated to its final status when it ends, so a killed sweep leaves at most the run in
flight marked "running"; re-running the sweep skips every finished point and re-runs
that one. Nothing finished is ever rewritten.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import io
import itertools
import json
import math
import sqlite3
import time
from pathlib import Path

import yaml

from derisk._paths import data_path
from derisk.errors import DataError, DeriskError
from derisk.estimators._model import ModelConfig, flops_per_token, param_counts
from derisk.estimators._train import RunResult, TrainConfig
from derisk.scaling import PredictPoint, uses_active_params

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT UNIQUE NOT NULL,
    arch TEXT NOT NULL,
    model TEXT NOT NULL,
    train TEXT NOT NULL,
    params INTEGER, active_params INTEGER, non_embedding INTEGER,
    experts INTEGER, granularity INTEGER,
    tokens INTEGER,
    val_loss REAL, best_val_loss REAL,
    curve TEXT,
    flops REAL, wall_s REAL, tokens_per_s REAL, mfu REAL,
    device TEXT, corpus TEXT, corpus_hash TEXT, version TEXT,
    status TEXT NOT NULL,
    started REAL, finished REAL
)
"""


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


class RunStore:
    """SQLite-backed store of training runs.

    `create=False` opens an existing store only (for reading: `derisk runs`, `predict
    --run`); a missing one is a `DataError` and nothing is created on disk.
    """

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=30)
                self.db.execute("PRAGMA journal_mode=WAL")
                with self.db:
                    self.db.execute(SCHEMA)
            else:
                if not self.path.is_file():
                    raise DataError(f"no run store at {self.path} (train or sweep first)")
                # mode=rw: never create the file, even if it vanishes after the check
                self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=rw", uri=True)
                self.db.execute("SELECT 1 FROM runs LIMIT 1")
        except (sqlite3.DatabaseError, OSError) as exc:
            raise DataError(
                f"{self.path}: not a usable run store ({exc}); pass another "
                "--store or move this file away"
            ) from None
        self.db.row_factory = sqlite3.Row

    def close(self):
        self.db.close()

    def id_of(self, key: str) -> int | None:
        """The integer id (what `derisk predict --run ID` takes) of the run with this key."""
        row = self.db.execute("SELECT id FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def status(self, key: str) -> str | None:
        row = self.db.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else row["status"]

    def start(self, key: str, model: ModelConfig, tc: TrainConfig, corpus) -> None:
        from derisk import __version__

        counts = param_counts(model)
        with self.db:
            self.db.execute("DELETE FROM runs WHERE key = ? AND status != 'finished'", (key,))
            self.db.execute(
                "INSERT INTO runs (key, arch, model, train, params, active_params, "
                "non_embedding, experts, granularity, tokens, corpus, corpus_hash, version, "
                "status, started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?)",
                (
                    key,
                    model.arch,
                    json.dumps(dataclasses.asdict(model)),
                    json.dumps(dataclasses.asdict(tc)),
                    counts["total"],
                    counts["active"],
                    counts["non_embedding"],
                    model.n_experts,
                    model.granularity,
                    tc.tokens,
                    corpus.source,
                    corpus.digest,
                    __version__,
                    time.time(),
                ),
            )

    def finish(self, key: str, r: RunResult) -> None:
        def num(x):
            return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x

        with self.db:
            self.db.execute(
                "UPDATE runs SET tokens = ?, val_loss = ?, best_val_loss = ?, curve = ?, "
                "flops = ?, wall_s = ?, tokens_per_s = ?, mfu = ?, device = ?, status = ?, "
                "finished = ? WHERE key = ?",
                (
                    r.tokens,
                    num(r.final_val_loss),
                    num(r.best_val_loss),
                    json.dumps(r.curve),
                    r.flops,
                    r.wall_s,
                    r.tokens_per_s,
                    num(r.mfu),
                    r.device,
                    r.status,
                    time.time(),
                    key,
                ),
            )

    def get(self, run_id: int | str) -> dict:
        """One run by id; `DataError` naming the store when there is none."""
        for r in self.runs():
            if str(r["id"]) == str(run_id):
                return r
        raise DataError(f"{self.path}: no run with id {run_id}; `derisk runs` lists the ids")

    def runs(self) -> list[dict]:
        rows = self.db.execute("SELECT * FROM runs ORDER BY id").fetchall()
        out = []
        for row in rows:
            d = dict(row)
            d["curve"] = json.loads(d["curve"]) if d["curve"] else []
            d["model"] = json.loads(d["model"])
            d["train"] = json.loads(d["train"])
            out.append(d)
        return out

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
            if r["status"] != "finished" or (arch and r["arch"] != arch):
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


def law_point(run: dict, fit) -> PredictPoint:
    """A finished stored run as a point on a fitted law's axes (N as the law counts it:
    total or active non-embedding parameters), with its measured loss and setting."""
    if run["status"] != "finished" or run["val_loss"] is None:
        raise DataError(f"run {run['id']} is {run['status']}, not finished: nothing to compare")
    counts = param_counts(ModelConfig(**run["model"]))
    setting = {**run["model"], **run["train"], "corpus_hash": run["corpus_hash"]}
    if run["arch"] == "dense":
        setting.pop("top_k", None)  # no router
    return PredictPoint(
        params=counts["non_embedding_active" if uses_active_params(fit) else "non_embedding"],
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
SWEEP_KEYS = MODEL_KEYS + TRAIN_KEYS + ["max_flops", "corpus", "max_bytes", "lr_by_d_model"]


def sweep_points(spec: dict, source: str = "<sweep>"):
    """Expand a sweep spec into (ModelConfig, TrainConfig) points, cheapest first.

    Lists are grid axes, scalars are fixed; `max_flops` caps the total training compute
    (points are taken cheapest first until the next would pass the cap).
    """
    if not isinstance(spec, dict):
        raise DeriskError(f"{source}: a sweep spec is a mapping like `d_model: [32, 64]`")
    for k in spec:
        if k not in SWEEP_KEYS:
            close = difflib.get_close_matches(str(k), SWEEP_KEYS, n=1)
            raise DeriskError(
                f"{source}: unknown key `{k}`"
                + (f"; did you mean `{close[0]}`?" if close else "")
                + f" (allowed: {', '.join(SWEEP_KEYS)})"
            )
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
        if "tokens" in tk:
            tk["tokens"] = int(float(tk["tokens"]))
        if "lr_by_d_model" in spec:  # the best learning rate falls with width
            table = {int(k): float(v) for k, v in spec["lr_by_d_model"].items()}
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


def load_sweep(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise DeriskError(f"{path}: no such sweep spec")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DeriskError(f"{path}: invalid YAML: {exc}") from None
    return spec or {}
