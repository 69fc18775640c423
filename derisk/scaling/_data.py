"""Training-run data for scaling fits: loading, validation, summaries."""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from derisk.errors import DataError

COLUMNS = ("params", "tokens", "loss", "experts", "granularity")
# How the runs were trained, when the CSV says (`derisk runs --csv` writes these). A law
# fitted to the runs records the values it saw, so a prediction can say when a new run was
# trained differently (another context length, learning rate rule or corpus).
SETTING_COLUMNS = (
    "arch",
    "d_model",
    "n_layer",
    "n_head",
    "seq_len",
    "top_k",
    "batch_size",
    "lr",
    "corpus_hash",
)


@dataclass(frozen=True, eq=False)
class RunData:
    """One row per training run. experts/granularity default to 1 (dense)."""

    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    experts: np.ndarray
    granularity: np.ndarray
    source: str = "<data>"
    setting: dict[str, list[str]] = field(default_factory=dict)  # column -> value per run
    params_col: str = "params"  # the file's column `params` came from (e.g. active_params)

    @property
    def n(self) -> int:
        return len(self.loss)

    def require(self, law) -> None:
        """Raise DataError if this data cannot identify `law`'s parameters."""
        n_params = len(law.params)
        if self.n < n_params + 1:
            raise DataError(
                f"{self.source}: {self.n} runs cannot fit the {law.name} law's "
                f"{n_params} parameters; give at least {n_params + 1} runs "
                "(a few dozen for useful intervals)"
            )
        if len(np.unique(self.params)) < 3:
            raise DataError(
                f"{self.source}: all runs use {len(np.unique(self.params))} model "
                "size(s); the parameter exponent needs at least 3 distinct `params`"
            )
        if len(np.unique(self.tokens)) < 3:
            raise DataError(
                f"{self.source}: the token exponent needs at least 3 distinct `tokens` values"
            )
        if "granularity" in law.inputs and len(np.unique(self.granularity)) < 2:
            raise DataError(
                f"{self.source}: the moe law needs runs at 2 or more granularities "
                "(column `granularity`)"
            )
        if "experts" in law.inputs and len(np.unique(self.experts)) < 2:
            raise DataError(
                f"{self.source}: the moe_experts law needs runs with 2 or more "
                "expert counts (column `experts`)"
            )

    def summary(self) -> dict:
        return {
            "runs": self.n,
            "source": self.source,
            "params": [float(self.params.min()), float(self.params.max())],
            "tokens": [float(self.tokens.min()), float(self.tokens.max())],
            "loss": [float(self.loss.min()), float(self.loss.max())],
            "experts": sorted({float(x) for x in self.experts}),
            "granularity": sorted({float(x) for x in self.granularity}),
            "setting": training_setting(self.setting),
            "params_col": self.params_col,
        }

    def subset(self, mask: np.ndarray) -> RunData:
        return RunData(
            params=self.params[mask],
            tokens=self.tokens[mask],
            loss=self.loss[mask],
            experts=self.experts[mask],
            granularity=self.granularity[mask],
            source=self.source,
            params_col=self.params_col,
            setting={
                k: [v for v, m in zip(vals, mask, strict=True) if m]
                for k, vals in self.setting.items()
            },
        )


def run_data(
    params, tokens, loss, *, experts=None, granularity=None, source: str = "<data>"
) -> RunData:
    """Validated RunData from arrays (positive finite values)."""
    arrays = {
        "params": params,
        "tokens": tokens,
        "loss": loss,
        "experts": np.ones(len(loss)) if experts is None else experts,
        "granularity": np.ones(len(loss)) if granularity is None else granularity,
    }
    out = {}
    for name, a in arrays.items():
        a = np.asarray(a, dtype=np.float64)
        bad = ~np.isfinite(a) | (a <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{source}: `{name}` must be a positive finite number; row {i + 1} "
                f"has {a[i]!r} ({int(bad.sum())} bad value(s) in all)"
            )
        out[name] = a
    if len({len(a) for a in out.values()}) != 1:
        raise DataError(f"{source}: columns have different lengths")
    return RunData(source=source, **out)


def load_runs_csv(path: str | Path, *, columns: dict[str, str] | None = None) -> RunData:
    """Read a CSV with columns params, tokens, loss (+ experts, granularity).

    `columns` maps our names to the file's (e.g. {"params": "N", "tokens": "D"}); with
    {"flops": NAME} the file gives training compute instead of tokens, and tokens are
    C / (6 N) (the convention of Hoffmann et al.'s and Epoch's data).
    Errors name the file, the row (1-based, header = row 1) and the column.
    """
    path = Path(path)
    columns = dict(columns or {})
    flops_col = columns.pop("flops", None)
    mapping = {k: k for k in COLUMNS} | columns
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give a CSV file of runs")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x}); save the CSV as UTF-8"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: empty file; expected a header line `params,tokens,loss`")
    lines = text.splitlines()
    reader = csv.DictReader(lines)
    try:
        header = reader.fieldnames or []
    except csv.Error as exc:
        raise DataError(_csv_error(path, lines, 1, exc)) from None
    need = ("params", "loss") if flops_col else ("params", "tokens", "loss")
    missing = [mapping[k] for k in need if mapping[k] not in header]
    if flops_col and flops_col not in header:
        missing.append(flops_col)
    if missing:
        want = ", ".join(f"`{m}`" for m in missing)
        found = ", ".join(f"`{h[:40]}`" for h in header[:20]) or "none"
        raise DataError(
            f"{path}:1: missing column(s) {want}; found {found}"
            ". Map other names with --params-col/--tokens-col/--loss-col (or --flops-col "
            "for training compute, tokens = C / 6N)"
        )
    cols = {k: [] for k in COLUMNS}
    setting: dict[str, list[str]] = {}
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(_csv_error(path, lines, reader.reader.line_num, exc)) from None
        row_no = reader.line_num
        for k in COLUMNS:
            name = flops_col if (k == "tokens" and flops_col) else mapping[k]
            if name not in header:
                cols[k].append(1.0)
                continue
            raw = (row.get(name) or "").strip()
            try:
                v = float(raw)
            except ValueError:
                raise DataError(
                    f"{path}:{row_no}: column `{name}` is {_short(raw)}, expected a number"
                ) from None
            if not math.isfinite(v) or v <= 0:
                raise DataError(
                    f"{path}:{row_no}: column `{name}` is {_short(raw)}, expected a "
                    "positive finite number"
                )
            cols[k].append(v)
        if flops_col:  # the column read as tokens was compute: D = C / (6 N)
            cols["tokens"][-1] = cols["tokens"][-1] / (6.0 * cols["params"][-1])
        for k in SETTING_COLUMNS:
            if k in header:
                setting.setdefault(k, []).append((row.get(k) or "").strip())
    if not cols["loss"]:
        raise DataError(f"{path}: no data rows")
    data = run_data(
        cols["params"],
        cols["tokens"],
        cols["loss"],
        experts=cols["experts"],
        granularity=cols["granularity"],
        source=str(path),
    )
    return dataclasses.replace(
        data, setting=setting, params_col=(columns or {}).get("params", "params")
    )


def _short(raw: str) -> str:
    return repr(raw) if len(raw) <= 40 else f"{raw[:20]!r}... ({len(raw):,} characters)"


def _csv_error(path: Path, lines: list[str], line_no: int, exc: csv.Error) -> str:
    """A located message for what the csv module refused (an over-long field, a NUL)."""
    line = lines[line_no - 1] if 0 < line_no <= len(lines) else ""
    header = next(csv.reader(lines[:1]), []) if line_no > 1 else []
    where = f"{path}:{line_no}"
    limit = csv.field_size_limit()
    if "field larger than field limit" in str(exc):
        fields = line.split(",")
        big = next((i for i, f in enumerate(fields) if len(f) > limit), None)
        col = "" if big is None else f" column {big + 1}"
        if big is not None and big < len(header):
            col = f" column `{header[big][:40]}`"
        return f"{where}:{col} has a field longer than {limit:,} characters; expected a number"
    return f"{where}: not a valid CSV line ({exc})"


def training_setting(setting: dict[str, list[str]]) -> dict:
    """The distinct values of each setting column; the learning rate as lr x d_model, the
    width-scaled rate the shipped sweeps hold fixed (lr ~ 1/d_model)."""
    out: dict = {}
    for k, vals in setting.items():
        if k in ("lr", "d_model"):
            continue
        seen = sorted(set(vals) - {""})  # "": not applicable (a dense run's top_k)
        if seen:
            out[k] = seen
    if "lr" in setting and "d_model" in setting:
        try:
            scaled = [
                float(lr) * float(d)
                for lr, d in zip(setting["lr"], setting["d_model"], strict=True)
            ]
            out["lr_x_d_model"] = [min(scaled), max(scaled)]
        except ValueError:
            pass
    return out
