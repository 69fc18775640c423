"""Load and validate roadmap files (YAML, or JSON, which YAML reads too).

Validation reports every problem in one pass, each with the file, line and
column of the offending value, so a user fixes a file in one round trip.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import json
import math
import re
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from derisk.errors import DeriskWarning, Problem, RoadmapError
from derisk.graphs._model import (
    MAX_LEVELS,
    Categorical,
    ComputeDefaults,
    Conditional,
    Cost,
    Experiment,
    Roadmap,
    SuccessSpec,
    TrainSpec,
)

TOP_KEYS = (
    "name",
    "description",
    "budget",
    "resolution",
    "compute_price",
    "hypotheses",
    "experiments",
    "flops_per_gpu_hour",
    "hardware",
    "mfu",
    "usd_per_gpu_hour",
)
EXPERIMENT_KEYS = ("id", "title", "notes", "after", "p", "cost", "reward", "train", "success")
TRAIN_KEYS = {
    "arch": str,
    "experts": int,
    "top_k": int,
    "granularity": float,
    "params": float,
    "active_params": float,
    "tokens": float,
    "d_model": int,
    "layers": int,
    "heads": int,
    "seq_len": int,
    "vocab": int,
    "hardware": "name",
    "mfu": "mfu",
}
SUCCESS_KEYS = ("loss_below", "law", "beats")

# Canonical unit, and the factor that converts one of the given unit into it. Keys are
# normalised by `_unit_key` (lower case, spaces and dashes as underscores), so the labels
# derisk prints (`GPU-h`, `GPU-days`, `FLOP`) read back as input.
UNITS = {
    **dict.fromkeys(
        ("gpu_hours", "gpu_hour", "gpu_h", "gpuh", "gpuhours"),
        ("gpu_hours", 1.0),
    ),
    **dict.fromkeys(("gpu_days", "gpu_day", "gpu_d", "gpud", "gpudays"), ("gpu_hours", 24.0)),
    **dict.fromkeys(("flops", "flop"), ("flops", 1.0)),
    **dict.fromkeys(("usd", "dollars", "dollar", "$"), ("usd", 1.0)),
}
UNITS_HELP = "gpu_hours (or GPU-h), gpu_days (or GPU-days), flops (or FLOP), usd, or no unit"


def _unit_key(text: str) -> str:
    return re.sub(r"[\s\-]+", "_", text.strip().lower())


class _Mark:
    __slots__ = ("line", "col")

    def __init__(self, line: int | None, col: int | None):
        self.line, self.col = line, col


class _FlagMark(_Mark):
    """Where a value came from a command-line flag (`--set pilot.p=0.3`), not the file."""

    __slots__ = ("flag",)

    def __init__(self, flag: str):
        super().__init__(None, None)
        self.flag = flag


class LDict(dict):
    """A dict that remembers where it and each of its keys/values came from."""

    mark: _Mark
    key_marks: dict
    value_marks: dict


class LList(list):
    mark: _Mark
    item_marks: list


def _mark(node: yaml.Node) -> _Mark:
    return _Mark(node.start_mark.line + 1, node.start_mark.column + 1)


# Limits that keep loading linear in the file's size whatever the file says. A roadmap
# nests about 6 deep; YAML aliases (`*name`) may repeat content, but a "billion laughs"
# file of a few lines expands to 1e9 values, so the values aliases add are counted.
MAX_DEPTH = 64
MAX_ALIAS_VALUES = 100_000

# The C parser (libyaml) is ~20x faster than the pure-Python one on large files; the
# composer below is ours either way, so both give the same nodes and limits.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LimitError(Exception):
    """A loading limit was hit; carries the position and the message."""

    def __init__(self, mark, message: str):
        self.mark, self.message = mark, message


def _compose(loader) -> yaml.Node | None:
    """Compose the single document of a stream, iteratively, with depth and alias limits.

    PyYAML's own composer recurses once per nesting level (a RecursionError at ~300
    levels) and lets aliases point into themselves (`&a [*a]`) or multiply (billion
    laughs); this one refuses both with the position of the offending value.
    """
    ev = yaml.events
    loader.get_event()  # StreamStart
    if loader.check_event(ev.StreamEndEvent):
        return None
    loader.get_event()  # DocumentStart
    anchors: dict[str, yaml.Node] = {}
    sizes: dict[int, int] = {}  # id(node) -> values it expands to, aliases included
    open_nodes: set[int] = set()  # collections still being composed (for `&a [*a]`)
    stack: list[list] = []  # [node, size so far, pending mapping key or None]
    alias_values = 0
    root = None
    while root is None:
        event = loader.get_event()
        node = None
        if isinstance(event, ev.AliasEvent):
            target = anchors.get(event.anchor)
            if target is None:
                raise _LimitError(event.start_mark, f"unknown alias `*{event.anchor}`")
            if id(target) in open_nodes:
                raise _LimitError(
                    event.start_mark,
                    f"alias `*{event.anchor}` refers to a value that contains it "
                    "(a recursive alias); write the value out",
                )
            alias_values += sizes[id(target)]
            if alias_values > MAX_ALIAS_VALUES:
                raise _LimitError(
                    event.start_mark,
                    f"aliases expand to more than {MAX_ALIAS_VALUES:,} values (at "
                    f"`*{event.anchor}`); a roadmap needs far fewer: write the values out "
                    "or use fewer aliases",
                )
            node, size = target, sizes[id(target)]
        elif isinstance(event, ev.ScalarEvent):
            tag = event.tag
            if tag is None or tag == "!":
                tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
            node = yaml.ScalarNode(
                tag, event.value, event.start_mark, event.end_mark, style=event.style
            )
            size = 1
        elif isinstance(event, ev.SequenceStartEvent | ev.MappingStartEvent):
            seq = isinstance(event, ev.SequenceStartEvent)
            kind = yaml.SequenceNode if seq else yaml.MappingNode
            tag = event.tag
            if tag is None or tag == "!":
                tag = loader.resolve(kind, None, event.implicit)
            coll = kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
            if len(stack) >= MAX_DEPTH:
                raise _LimitError(
                    event.start_mark,
                    f"values nested more than {MAX_DEPTH} deep; a roadmap nests about 6 "
                    "deep: check the brackets and indentation",
                )
            if event.anchor is not None:
                anchors[event.anchor] = coll
                open_nodes.add(id(coll))
            stack.append([coll, 1, None])
            continue
        else:  # SequenceEnd / MappingEnd
            node, size, _ = stack.pop()
            node.end_mark = event.end_mark
            open_nodes.discard(id(node))
        if getattr(event, "anchor", None) is not None and not isinstance(event, ev.AliasEvent):
            anchors[event.anchor] = node
        sizes[id(node)] = size
        if not stack:
            root = node
            break
        frame = stack[-1]
        frame[1] += size
        parent = frame[0]
        if isinstance(parent, yaml.SequenceNode):
            parent.value.append(node)
        elif frame[2] is None:
            frame[2] = (node,)
        else:
            parent.value.append((frame[2][0], node))
            frame[2] = None
    loader.get_event()  # DocumentEnd
    if not loader.check_event(ev.StreamEndEvent):
        event = loader.get_event()
        raise _LimitError(
            event.start_mark,
            "a second document (`---`); a roadmap file holds one: remove the rest",
        )
    return root


def _construct(node: yaml.Node, loader) -> Any:
    """LDict/LList values with positions; scalars through the safe constructor."""
    if isinstance(node, yaml.MappingNode):
        out = LDict()
        out.mark, out.key_marks, out.value_marks = _mark(node), {}, {}
        out.duplicates = []
        for knode, vnode in node.value:
            key = _construct(knode, loader)
            if not isinstance(key, str | int | float | bool) or key is None:
                key = str(key)
            if key in out:
                out.duplicates.append((key, _mark(knode)))
            out[key] = _construct(vnode, loader)
            out.key_marks[key] = _mark(knode)
            out.value_marks[key] = _mark(vnode)
        return out
    if isinstance(node, yaml.SequenceNode):
        out = LList(_construct(n, loader) for n in node.value)
        out.mark = _mark(node)
        out.item_marks = [_mark(n) for n in node.value]
        return out
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        raise _LimitError(
            node.start_mark, f"{exc.problem}; remove the tag or write a plain value"
        ) from None
    except (ValueError, TypeError, OverflowError):
        tag = node.tag.rsplit(":", 1)[-1]
        digits = sum(ch.isdigit() for ch in node.value)
        what = (
            f"a number of {digits:,} digits is too large to read; write large numbers "
            "in scientific notation (e.g. 3e21)"
            if digits > 1000
            else f"`{_clip(node.value)}` is not a valid `!!{tag}`"
            + "; fix the value or remove the tag"
        )
        raise _LimitError(node.start_mark, what) from None


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while building many acyclic objects.

    Each collection walks every live object, and building a large file triggers one
    every 700 allocations: time grows with the square of the file's size (a 6 MB file
    took 9 s to read, 1.5 s without). Nothing built here forms a cycle.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def parse_text(text: str, source: str) -> Any:
    """Parse YAML/JSON text into LDict/LList values carrying positions."""
    if source.endswith(".json"):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise RoadmapError(
                [Problem(source, exc.lineno, exc.colno, f"invalid JSON: {exc.msg}")]
            ) from None
        except (ValueError, RecursionError):
            pass  # too deep or a huge integer: the YAML reader below says where
    try:
        loader = _Loader(text)
        try:
            with _gc_paused():
                node = _compose(loader)
                if node is None:
                    raise RoadmapError([Problem(source, 1, 1, "the file is empty")])
                return _construct(node, loader)
        finally:
            loader.dispose()
    except _LimitError as exc:
        m = exc.mark
        line, col = (m.line + 1, m.column + 1) if m else (None, None)
        raise RoadmapError([Problem(source, line, col, exc.message)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        msg = f"invalid YAML: {exc.problem or exc.context}"
        raise RoadmapError([Problem(source, line, col, msg)]) from None
    except yaml.YAMLError as exc:
        raise RoadmapError([Problem(source, None, None, f"invalid YAML: {exc}")]) from None


def load_roadmap(path: str | Path) -> Roadmap:
    """Load and validate a roadmap file; raise `RoadmapError` listing every problem.

    Legal but suspicious content (an unearnable reward, p = 0, a dead-end node)
    is reported through `warnings.warn(..., DeriskWarning)`.
    """
    source = str(path)
    return roadmap_from_dict(parse_text(read_text(path), source), source=source)


def read_text(path: str | Path) -> str:
    """A roadmap file's text; `RoadmapError` when it is missing or unreadable."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise RoadmapError(
            [Problem(source, None, None, "no such file; `derisk examples` lists bundled ones")]
        )
    if path.is_dir():
        raise RoadmapError([Problem(source, None, None, "is a directory, expected a roadmap file")])
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RoadmapError([Problem(source, None, None, f"cannot read: {exc}")]) from None


class _Checker:
    def __init__(self, source: str):
        self.source = source
        self.problems: list[Problem] = []
        self.fuzzy_budget = 20_000  # candidate comparisons for "did you mean" hints

    def err(self, mark: _Mark | None, msg: str) -> None:
        if isinstance(mark, _FlagMark):  # blame the flag, not the file
            self.problems.append(Problem(mark.flag, None, None, msg))
            return
        line, col = (mark.line, mark.col) if mark else (None, None)
        self.problems.append(Problem(self.source, line, col, msg))

    def suggest(self, word: str, candidates: Collection[str]) -> str | None:
        """The closest candidate to a misspelt word, or None.

        Fuzzy matching costs one comparison per candidate, so a file with thousands of
        misspelt references to thousands of ids would take quadratic time; past a
        budget of comparisons there are no more hints.
        """
        if len(candidates) > self.fuzzy_budget:
            return None
        self.fuzzy_budget -= len(candidates)
        close = difflib.get_close_matches(word, list(candidates), n=1)
        return close[0] if close else None

    def unknown_keys(self, d: LDict, allowed: tuple[str, ...] | list[str], what: str) -> None:
        for key in d:
            if key not in allowed:
                close = self.suggest(str(key), allowed)
                hint = f"; did you mean `{close}`?" if close else ""
                self.err(
                    d.key_marks.get(key),
                    f"unknown key `{key}` in {what}{hint} (allowed: {', '.join(allowed)})",
                )
        for key, m in getattr(d, "duplicates", []):
            self.err(m, f"duplicate key `{key}` in {what}")


# A number (thousands separators allowed, as derisk prints them: `9,910`), then a unit.
_NUM_RE = re.compile(
    r"^\s*([-+]?(?:\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"\s*([A-Za-z][A-Za-z_\- ]*?)?\s*$"
)


def _float(value: int | float | str) -> float:
    """float(), except that an integer too large for a float becomes inf (checked later)."""
    try:
        return float(value.replace(",", "") if isinstance(value, str) else value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _number(value: Any) -> float | None:
    """A real number from YAML (PyYAML reads 3e21 as a string, so parse those too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _float(value)
    if isinstance(value, str):
        m = _NUM_RE.match(value)
        if m and not m.group(2):
            return _float(m.group(1))
    return None


def _quantity(ck: _Checker, value: Any, mark: _Mark | None, what: str):
    """Parse `40`, `40 gpu_hours`, `3e21 flops`, `10 GPU-h` into (amount, canonical unit).

    Returns None after reporting the problem to `ck`. Units are read case-insensitively,
    with the labels derisk prints accepted too (see `UNITS`).
    """
    if isinstance(value, bool) or value is None:
        ck.err(mark, f"{what} must be a number with an optional unit, got {value!r}")
        return None
    if isinstance(value, int | float):
        amount, unit = _float(value), None
    elif isinstance(value, str) and (m := _NUM_RE.match(value)):
        amount, unit_text = _float(m.group(1)), m.group(2)
        unit = None
        if unit_text:
            key = _unit_key(unit_text)
            if key not in UNITS:
                close = ck.suggest(key, UNITS)
                hint = f"; did you mean `{close}`?" if close else ""
                ck.err(mark, f"unknown unit `{unit_text}` in {what}{hint} (expected {UNITS_HELP})")
                return None
            unit, factor = UNITS[key]
            amount *= factor
    else:
        ck.err(
            mark,
            f"{what} must be a number with an optional unit (e.g. `40 gpu_hours`), "
            f"got {_clip(repr(value))}",
        )
        return None
    if not math.isfinite(amount):
        ck.err(mark, f"{what} must be a finite number below 1e308, got {_clip(str(value))}")
        return None
    return amount, unit


def _probability(ck: _Checker, value: Any, mark: _Mark | None, what: str) -> float | None:
    x = _number(value)
    if x is None:
        ck.err(mark, f"{what} must be a number in [0, 1], got {value!r}")
        return None
    if not 0.0 <= x <= 1.0:
        ck.err(mark, f"{what} must be in [0, 1], got {x:g}")
        return None
    return x


def roadmap_from_dict(data: Any, *, source: str = "<roadmap>") -> Roadmap:
    """Validate parsed roadmap data (plain dicts work; LDicts add positions).

    Raises `RoadmapError` listing every problem, each located when `data` came from
    `parse_text`. Legal but suspicious content is reported as a `DeriskWarning`.
    """
    with _gc_paused():
        roadmap = _validate(data, source)
    for message in suspicious(roadmap):
        warnings.warn(message, DeriskWarning, stacklevel=2)
    return roadmap


def _validate(data: Any, source: str) -> Roadmap:
    data = _locate(data)
    ck = _Checker(source)
    if not isinstance(data, dict):
        ck.err(
            getattr(data, "mark", None),
            "a roadmap must be a mapping with `budget` and `experiments`",
        )
        raise RoadmapError(ck.problems)
    ck.unknown_keys(data, TOP_KEYS, "the roadmap")
    vm = data.value_marks

    name = data.get("name", Path(source).stem)
    if not isinstance(name, str):
        ck.err(vm.get("name"), f"`name` must be a string, got {name!r}")
        name = str(name)

    # Units: everything is converted to the budget's unit (or the first unit seen).
    quantities: list[tuple[str, float, str | None, _Mark | None]] = []

    def quantity(value, mark, what, *, nonneg=True):
        q = _quantity(ck, value, mark, what)
        if q is None:
            return None
        if nonneg and q[0] < 0:
            ck.err(mark, f"{what} must not be negative, got {value!r}")
            return None
        quantities.append((what, q[0], q[1], mark))
        return q

    budget_q = None
    if "budget" not in data:
        ck.err(data.mark, "missing `budget` (e.g. `budget: 2000 gpu_hours`)")
    else:
        budget_q = quantity(data["budget"], vm.get("budget"), "`budget`")
    resolution_q = None
    if "resolution" in data:
        resolution_q = quantity(data["resolution"], vm.get("resolution"), "`resolution`")
        if resolution_q is not None and resolution_q[0] <= 0:
            ck.err(vm.get("resolution"), "`resolution` must be positive")
            resolution_q = None
    price = 0.0
    if "compute_price" in data:
        price = _number(data["compute_price"])
        if price is None or price < 0 or not math.isfinite(price):
            ck.err(
                vm.get("compute_price"),
                "`compute_price` must be a non-negative number "
                f"(reward lost per unit of compute), got {data['compute_price']!r}",
            )
            price = 0.0
    fpgh = None
    if "flops_per_gpu_hour" in data:
        fpgh = _number(data["flops_per_gpu_hour"])
        if fpgh is None or not (math.isfinite(fpgh) and fpgh > 0):
            ck.err(
                vm.get("flops_per_gpu_hour"),
                "`flops_per_gpu_hour` must be a positive number (peak FLOP/s x utilisation x 3600)",
            )
            fpgh = None
    usd_rate = None
    if "usd_per_gpu_hour" in data:
        usd_rate = _number(data["usd_per_gpu_hour"])
        if usd_rate is None or not (math.isfinite(usd_rate) and usd_rate > 0):
            ck.err(
                vm.get("usd_per_gpu_hour"),
                "`usd_per_gpu_hour` must be a positive number (the price of one GPU-hour), "
                f"got {data['usd_per_gpu_hour']!r}",
            )
            usd_rate = None
    hardware = None
    if "hardware" in data:
        hardware = _name(ck, data["hardware"], vm.get("hardware"), "`hardware`")
    mfu = _mfu(ck, data["mfu"], vm.get("mfu"), "`mfu`") if "mfu" in data else None
    compute = ComputeDefaults(
        hardware=hardware,
        mfu=mfu,
        usd_per_gpu_hour=usd_rate,
        flops_per_gpu_hour=fpgh,
        marks={
            k: _pos(vm.get(k))
            for k in ("hardware", "mfu", "usd_per_gpu_hour", "flops_per_gpu_hour")
            if k in data
        },
    )

    hypotheses: dict[str, float] = {}
    categories: dict[str, dict[str, float]] = {}
    hyp_marks: dict[str, _Mark] = {}
    if "hypotheses" in data:
        hyp = data["hypotheses"]
        if not isinstance(hyp, dict):
            ck.err(
                vm.get("hypotheses"),
                "`hypotheses` must map names to prior probabilities, e.g. `routing_stable: 0.6` "
                "(or, for a hypothesis with several values, `arch: {a: 0.5, b: 0.3, c: 0.2}`)",
            )
        else:
            for key, value in hyp.items():
                if isinstance(value, dict):
                    table = _categories(ck, value, hyp.value_marks.get(key), str(key))
                    hyp_marks[str(key)] = hyp.key_marks.get(key)  # declared, even if bad
                    if table is not None:
                        categories[str(key)] = table
                    continue
                prior = _probability(
                    ck, value, hyp.value_marks.get(key), f"prior of hypothesis `{key}`"
                )
                hyp_marks[str(key)] = hyp.key_marks.get(key)  # declared, even if bad
                if prior is not None:
                    hypotheses[str(key)] = prior

    # Experiments.
    raw = data.get("experiments")
    experiments_raw: list[tuple[LDict, _Mark | None]] = []
    if raw is None:
        ck.err(data.mark, "missing `experiments` (a list of experiments with `id`, `p`, `cost`)")
    elif not isinstance(raw, list):
        ck.err(vm.get("experiments"), "`experiments` must be a list")
    elif not raw:
        ck.err(vm.get("experiments"), "`experiments` is empty; a roadmap needs at least one")
    else:
        for item, m in zip(raw, raw.item_marks, strict=True):
            if not isinstance(item, dict):
                ck.err(m, f"each experiment must be a mapping with an `id`, got {item!r}")
            else:
                experiments_raw.append((item, m))

    ids: dict[str, _Mark | None] = {}
    for item, m in experiments_raw:
        if "id" not in item:
            ck.err(m, "experiment without `id`")
            continue
        eid = item["id"]
        if not isinstance(eid, str | int) or isinstance(eid, bool):
            ck.err(item.value_marks.get("id"), f"`id` must be a string, got {eid!r}")
            continue
        eid = str(eid)
        if eid in ids:
            first = ids[eid]
            where = f" (first defined on line {first.line})" if first and first.line else ""
            ck.err(item.value_marks.get("id"), f"duplicate experiment id `{eid}`{where}")
        else:
            ids[eid] = item.value_marks.get("id")

    parsed: list[dict] = []
    priced: list = []  # (TrainSpec, mark, what) of runs whose cost the estimators set
    for item, m in experiments_raw:
        if "id" not in item or not isinstance(item["id"], str | int):
            continue
        eid = str(item["id"])
        what = f"experiment `{eid}`"
        ck.unknown_keys(item, EXPERIMENT_KEYS, what)
        ivm = item.value_marks
        exp: dict[str, Any] = {"id": eid, "line": m.line if m else None}
        title = item.get("title", "")
        exp["title"] = str(title) if title is not None else ""

        # after
        requires: list[tuple[str, ...]] = []
        if "after" in item:
            requires = _requires(ck, item["after"], ivm.get("after"), eid, ids)
        exp["requires"] = tuple(requires)

        # train / success
        train = item.get("train")
        success = item.get("success")
        before = len(ck.problems)
        if train is not None:
            _check_train(ck, train, ivm.get("train"), what)
        if success is not None:
            _check_success(ck, success, ivm.get("success"), what, ids)
            if train is None:
                ck.err(
                    ivm.get("success"),
                    f"{what} has `success:` but no `train:`: the law predicts the loss of a "
                    "training run, e.g. `train: {arch: dense, params: 1e9, tokens: 2e10}`",
                )
            if "p" in item:
                ck.err(
                    ivm.get("p"),
                    f"{what} has both `p` and `success`: give one (the law's probability, "
                    "or your own)",
                )
        pending = []
        if success is not None and "p" not in item and train is not None:
            pending.append("p")
        if train is not None and "cost" not in item:
            pending.append("cost")
        exp["pending"] = tuple(pending)
        exp["train_spec"] = exp["success_spec"] = None
        if train is not None and len(ck.problems) == before:
            exp["train_spec"] = _train_spec(ck, train, ivm.get("train"))
        if success is not None and len(ck.problems) == before:
            exp["success_spec"] = _success_spec(success, ivm.get("success"))

        # p
        if "p" in item:
            exp["p"] = _p(ck, item["p"], ivm.get("p"), what, hypotheses, hyp_marks, categories)
        elif success is not None:
            exp["p"] = 0.0  # pending: the estimators set it from the law
        else:
            ck.err(m, f"{what} has no `p` (its probability of success, e.g. `p: 0.7`)")

        # cost
        if "cost" in item:
            exp["cost"] = _cost(ck, item["cost"], ivm.get("cost"), what, quantity)
        elif train is not None:
            exp["cost"] = ((0.0, None), None)  # pending: priced from the run's FLOPs
            if exp["train_spec"] is not None:
                priced.append((exp["train_spec"], ivm.get("train"), what))
        else:
            ck.err(m, f"{what} has no `cost` (e.g. `cost: 40 gpu_hours`)")

        # reward
        if "reward" in item:
            r = _number(item["reward"])
            if r is None or not math.isfinite(r) or r < 0:
                ck.err(
                    ivm.get("reward"),
                    f"`reward` of {what} must be a non-negative number, got {item['reward']!r}",
                )
            else:
                exp["reward"] = r
        parsed.append(exp)

    # Cycles (only over known ids; unknown ones were reported already).
    g = nx.DiGraph()
    g.add_nodes_from(e["id"] for e in parsed)
    for e in parsed:
        for clause in e["requires"]:
            for pre in clause:
                if pre in ids:
                    g.add_edge(pre, e["id"])
    for cycle_nodes in _cycles(g):
        loop = " -> ".join([*cycle_nodes, cycle_nodes[0]])
        ck.err(
            ids.get(cycle_nodes[0]),
            f"prerequisites form a cycle: {loop}; a roadmap must be acyclic",
        )

    # Units.
    unit = budget_q[1] if budget_q else None
    if unit is None:
        unit = next((u for _, _, u, _ in quantities if u is not None), None)

    def conv(q):
        """(amount, unit) in the roadmap's unit, or None if it cannot be converted."""
        amount, u = q
        if u is None or u == unit:
            return amount
        if fpgh is not None and {u, unit} == {"flops", "gpu_hours"}:
            return amount / fpgh if u == "flops" else amount * fpgh
        if usd_rate is not None and {u, unit} == {"usd", "gpu_hours"}:
            return amount * usd_rate if u == "gpu_hours" else amount / usd_rate
        return None

    for what, amount, u, mark in quantities:
        if conv((amount, u)) is None:
            ck.err(
                mark,
                f"{what} is in {u} but the roadmap's budget is in {unit}; give it in "
                f"{unit}, or add `flops_per_gpu_hour:` (peak FLOP/s x utilisation x 3600) "
                "at the top level so derisk can convert",
            )

    # A top-level pricing default that was given but is invalid has its own error; every
    # node that would use it is not blamed for lacking it too (one mistake, one message).
    broken_default = any(
        key in data and getattr(compute, key) is None
        for key in ("hardware", "mfu", "usd_per_gpu_hour", "flops_per_gpu_hour")
    )
    for spec, mark, what in priced:
        problem = None if broken_default else _pricing_problem(unit, spec, compute)
        if problem:
            ck.err(mark, f"the training cost of {what} {problem}")

    if budget_q is not None and resolution_q is not None:
        b, r = conv(budget_q), conv(resolution_q)
        if b is not None and r is not None and b / r > MAX_LEVELS:
            flag = vm.get("budget")  # a `--set budget=` made it: blame the flag
            ck.err(
                flag if isinstance(flag, _FlagMark) else vm.get("resolution"),
                f"`resolution` {r:g} splits the budget {b:g} into {b / r:,.3g} steps; at most "
                f"{MAX_LEVELS:,}: give a resolution of at least {b / MAX_LEVELS:.3g}, or leave "
                "it out to let derisk choose one",
            )

    if ck.problems:
        raise RoadmapError(sorted(ck.problems, key=lambda p: (p.line or 0, p.col or 0)))

    budget = conv(budget_q)
    resolution = conv(resolution_q) if resolution_q else None
    experiments = []
    for e in parsed:
        c = e["cost"]
        cost = Cost(median=conv(c[0]), p90=conv(c[1]) if c[1] is not None else None)
        experiments.append(
            Experiment(
                id=e["id"],
                title=e["title"],
                requires=e["requires"],
                p=e["p"],
                cost=cost,
                reward=e.get("reward", 0.0),
                train=e["train_spec"],
                success=e["success_spec"],
                pending=e["pending"],
                line=e["line"],
            )
        )
    return Roadmap(
        name=name,
        experiments=tuple(experiments),
        budget=budget,
        unit=unit,
        resolution=resolution,
        compute_price=price,
        hypotheses=hypotheses,
        categories=categories,
        source=source,
        compute=compute,
    )


def _pos(mark) -> tuple:
    return (getattr(mark, "line", None), getattr(mark, "col", None))


def _name(ck, value, mark, what) -> str | None:
    if not isinstance(value, str) or not value.strip():
        ck.err(mark, f"{what} must be an accelerator name such as `h100`, got {value!r}")
        return None
    return value.strip()


def _mfu(ck, value, mark, what) -> tuple[float, float] | None:
    """Model FLOPs utilisation: a fraction in (0, 1], or [lo, hi], its 80% interval."""
    if isinstance(value, list):
        xs = [_number(v) for v in value]
        if len(xs) != 2 or any(x is None for x in xs):
            ck.err(mark, f"{what} as a range must be [lo, hi], e.g. `[0.3, 0.45]`, got {value!r}")
            return None
        lo, hi = xs
    else:
        lo = hi = _number(value)
        if lo is None:
            ck.err(mark, f"{what} must be a fraction in (0, 1] or [lo, hi], got {value!r}")
            return None
    if not (0 < lo <= hi <= 1):
        ck.err(
            mark,
            f"{what} must lie in (0, 1] (model FLOPs utilisation, e.g. 0.4), with lo <= hi, "
            f"got {value!r}",
        )
        return None
    return (float(lo), float(hi))


def _train_spec(ck, train, mark) -> TrainSpec:
    """A validated `train:` block (`_check_train` found no problem) as a TrainSpec that
    remembers where each key was."""
    vm = train.value_marks
    kw = {}
    for k, v in train.items():
        kind = TRAIN_KEYS.get(k)
        if kind is None:
            continue
        if kind in ("name", str):
            kw[k] = str(v).strip()
        elif kind == "mfu":
            kw[k] = _mfu(ck, v, vm.get(k), f"`train.{k}`")
        elif kind is int:
            kw[k] = int(_number(v))
        else:
            kw[k] = float(_number(v))
    return TrainSpec(**kw, mark=_pos(mark), marks={k: _pos(vm.get(k)) for k in train})


def _success_spec(success, mark) -> SuccessSpec:
    vm = success.value_marks
    law = success.get("law")
    below = success.get("loss_below")
    return SuccessSpec(
        loss_below=None if below is None else float(_number(below)),
        beats=None if success.get("beats") is None else str(success["beats"]),
        law=None if law is None else str(law),
        mark=_pos(mark),
        marks={k: _pos(vm.get(k)) for k in success},
    )


def _pricing_problem(unit, spec: TrainSpec, compute: ComputeDefaults) -> str | None:
    """Why a run's FLOPs cannot be priced in the roadmap's unit (None: they can)."""
    has_hw = (spec.hardware or compute.hardware) is not None
    has_mfu = (spec.mfu or compute.mfu) is not None
    to_hours = compute.flops_per_gpu_hour is not None or (has_hw and has_mfu)
    if unit == "flops":
        return None
    if has_hw and not has_mfu:
        return "names its hardware but no `mfu` (model FLOPs utilisation, e.g. `mfu: 0.4`)"
    if unit is None:
        return (
            "is in FLOPs but the roadmap has no unit; give the budget a unit (e.g. "
            "`budget: 2000 gpu_hours`, or `1e21 flops`)"
        )
    if unit == "gpu_hours" and not to_hours:
        return (
            "is in FLOPs but the budget is in GPU-hours; give `hardware:` (e.g. h100) and "
            "`mfu:` (e.g. 0.4) in the run or at the top level, or `flops_per_gpu_hour:`"
        )
    if unit == "usd" and not (to_hours and compute.usd_per_gpu_hour is not None):
        return (
            "is in FLOPs but the budget is in usd; give `hardware:` and `mfu:` (or "
            "`flops_per_gpu_hour:`) and `usd_per_gpu_hour:` at the top level"
        )
    return None


def _locate(data: Any, depth: int = 0) -> Any:
    """Wrap plain dicts/lists (from code, not files) so positions are simply absent."""
    if isinstance(data, LDict | LList):
        return data
    if isinstance(data, dict | list | tuple) and depth >= MAX_DEPTH:
        raise RoadmapError(
            [Problem("<roadmap>", None, None, f"values nested more than {MAX_DEPTH} deep")]
        )
    if isinstance(data, dict):
        out = LDict()
        out.mark, out.key_marks, out.value_marks, out.duplicates = None, {}, {}, []
        for k, v in data.items():
            out[k] = _locate(v, depth + 1)
        return out
    if isinstance(data, list | tuple):
        out = LList(_locate(v, depth + 1) for v in data)
        out.mark, out.item_marks = None, [None] * len(out)
        return out
    return data


def _cycles(g: nx.DiGraph) -> list[list[str]]:
    out = []
    for comp in nx.strongly_connected_components(g):
        if len(comp) > 1 or any(g.has_edge(n, n) for n in comp):
            sub = g.subgraph(comp)
            cyc = nx.find_cycle(sub)
            out.append([u for u, _ in cyc])
    return out


def _requires(ck, value, mark, eid, ids) -> list[tuple[str, ...]]:
    def ref(x, m) -> str | None:
        if not isinstance(x, str | int) or isinstance(x, bool):
            ck.err(m, f"prerequisite of `{eid}` must be an experiment id, got {x!r}")
            return None
        x = str(x)
        if x not in ids:
            close = ck.suggest(x, ids)
            hint = f"; did you mean `{close}`?" if close else ""
            ck.err(m, f"`{eid}` needs unknown experiment `{x}`{hint}")
            return None
        if x == eid:
            ck.err(m, f"`{eid}` cannot need itself")
            return None
        return x

    def clause(x, m) -> tuple[str, ...] | None:
        if isinstance(x, dict):
            if set(x) != {"any"} or not isinstance(x["any"], list) or not x["any"]:
                ck.err(
                    m,
                    f"an alternatives group in `{eid}`'s `after` must be `{{any: [id, id, ...]}}`",
                )
                return None
            alts = [ref(a, am) for a, am in zip(x["any"], x["any"].item_marks, strict=True)]
            return tuple(dict.fromkeys(a for a in alts if a is not None)) or None
        r = ref(x, m)
        return (r,) if r is not None else None

    if isinstance(value, list):
        items = list(zip(value, value.item_marks, strict=True))
    else:
        items = [(value, mark)]
    return [c for c in (clause(x, m) for x, m in items) if c is not None]


def _categories(ck, value, mark, name) -> dict[str, float] | None:
    """A categorical hypothesis's priors {value: prior}, summing to 1."""
    if len(value) < 2:
        ck.err(mark, f"hypothesis `{name}` needs at least two values with priors")
        return None
    out = {}
    for k, v in value.items():
        prior = _probability(ck, v, value.value_marks.get(k), f"prior of `{name}` = `{k}`")
        if prior is None:
            return None
        out[str(k)] = prior
    total = sum(out.values())
    if abs(total - 1) > 1e-6:
        ck.err(mark, f"the priors of hypothesis `{name}` must sum to 1, got {total:g}")
        return None
    return out


def _p(ck, value, mark, what, hypotheses, hyp_marks, categories=None):
    categories = categories or {}
    if (
        isinstance(value, dict)
        and str(value.get("if")) in hyp_marks
        and not (str(value.get("if")) in categories or str(value.get("if")) in hypotheses)
    ):
        return 0.0  # its hypothesis is declared but invalid: reported there already
    if isinstance(value, dict) and str(value.get("if")) in categories:
        h = str(value["if"])
        ck.unknown_keys(value, ("if", *categories[h]), f"`p` of {what}")
        missing = [k for k in categories[h] if k not in value]
        if missing:
            ck.err(
                mark,
                f"`p` of {what} depends on `{h}` and needs a p for each of its values "
                f"(missing: {', '.join(missing)})",
            )
            return 0.0
        table = []
        for k in categories[h]:
            q = _probability(ck, value[k], value.value_marks.get(k), f"`p.{k}` of {what}")
            table.append((k, q if q is not None else 0.0))
        return Categorical(hypothesis=h, table=tuple(table))
    if isinstance(value, dict):
        ck.unknown_keys(value, ("if", "then", "else"), f"`p` of {what}")
        missing = [k for k in ("if", "then", "else") if k not in value]
        if missing:
            ck.err(
                mark,
                f"conditional `p` of {what} needs `if`, `then` and `else` "
                f"(missing: {', '.join(missing)})",
            )
            return 0.0
        h = value["if"]
        if str(h) not in hypotheses:
            close = ck.suggest(str(h), [*hypotheses, *categories])
            hint = (
                f"; did you mean `{close}`?"
                if close
                else ("; declare it under `hypotheses:` with a prior" if not hypotheses else "")
            )
            ck.err(
                value.value_marks.get("if"),
                f"`p` of {what} depends on unknown hypothesis `{h}`{hint}",
            )
        then = _probability(ck, value["then"], value.value_marks.get("then"), f"`p.then` of {what}")
        other = _probability(
            ck, value["else"], value.value_marks.get("else"), f"`p.else` of {what}"
        )
        return Conditional(hypothesis=str(h), then=then or 0.0, otherwise=other or 0.0)
    p = _probability(ck, value, mark, f"`p` of {what}")
    return p if p is not None else 0.0


def _cost(ck, value, mark, what, quantity):
    if isinstance(value, dict):
        ck.unknown_keys(value, ("median", "p90"), f"`cost` of {what}")
        if "median" not in value or "p90" not in value:
            ck.err(
                mark,
                f"a stochastic `cost` of {what} needs `median` and `p90`, "
                "e.g. `{median: 40 gpu_hours, p90: 80 gpu_hours}`",
            )
            return ((0.0, None), None)
        med = quantity(value["median"], value.value_marks.get("median"), f"`cost.median` of {what}")
        p90 = quantity(value["p90"], value.value_marks.get("p90"), f"`cost.p90` of {what}")
        # a plain number is in the roadmap's unit (as a `--set` median usually is)
        same_unit = p90 and med and (p90[1] == med[1] or None in (p90[1], med[1]))
        if med and p90 and same_unit and p90[0] < med[0]:
            ck.err(
                value.value_marks.get("p90"),
                f"`cost.p90` of {what} must be at least its "
                f"median ({value['median']}), got {value['p90']}",
            )
        if med and p90 and med[0] <= 0 and p90[0] > 0:
            ck.err(
                value.value_marks.get("median"),
                f"`cost.median` of {what} must be positive when p90 is given",
            )
        return (med or (0.0, None), p90)
    q = quantity(value, mark, f"`cost` of {what}")
    return (q or (0.0, None), None)


def _check_train(ck, train, mark, what):
    if not isinstance(train, dict):
        ck.err(mark, f"`train` of {what} must be a mapping, e.g. `{{arch: moe, experts: 8}}`")
        return
    ck.unknown_keys(train, list(TRAIN_KEYS), f"`train` of {what}")
    for key, value in train.items():
        kind = TRAIN_KEYS.get(key)
        m = train.value_marks.get(key)
        if kind is str:
            if value not in ("dense", "moe"):
                ck.err(m, f"`train.arch` of {what} must be `dense` or `moe`, got {value!r}")
        elif kind == "name":
            _name(ck, value, m, f"`train.hardware` of {what}")
        elif kind == "mfu":
            _mfu(ck, value, m, f"`train.mfu` of {what}")
        elif kind is not None:
            x = _number(value)
            if x is None or x <= 0 or (kind is int and not float(x).is_integer()):
                ck.err(
                    m,
                    f"`train.{key}` of {what} must be a positive "
                    f"{'integer' if kind is int else 'number'}, got {value!r}",
                )
    if "tokens" not in train:
        ck.err(mark, f"`train` of {what} needs `tokens` (training tokens)")
    sized = "params" in train or "active_params" in train
    if not sized and not ("d_model" in train and "layers" in train):
        ck.err(
            mark,
            f"`train` of {what} needs its size: `params` (`active_params` for an MoE) or "
            "its shape, `d_model` and `layers`",
        )
    if train.get("arch") == "moe" and isinstance(train.get("experts"), int):
        top_k = train.get("top_k")
        if isinstance(top_k, int) and top_k > train["experts"]:
            ck.err(
                train.value_marks.get("top_k"),
                f"`train.top_k` of {what} ({top_k}) exceeds `experts` ({train['experts']})",
            )


def _check_success(ck, success, mark, what, ids=None):
    if not isinstance(success, dict):
        ck.err(mark, f"`success` of {what} must be a mapping like `{{loss_below: 2.45}}`")
        return
    ck.unknown_keys(success, SUCCESS_KEYS, f"`success` of {what}")
    if ("loss_below" in success) == ("beats" in success):
        ck.err(
            mark,
            f"`success` of {what} needs one of `loss_below` (a target loss) or `beats` (an "
            "experiment whose run's loss this run must beat)",
        )
    elif "loss_below" in success and (
        _number(success["loss_below"]) is None or _number(success["loss_below"]) <= 0
    ):
        ck.err(
            success.value_marks.get("loss_below"),
            f"`success.loss_below` of {what} must be a positive number",
        )
    elif "beats" in success and ids is not None:
        other = success["beats"]
        if not isinstance(other, str | int) or str(other) not in ids:
            close = ck.suggest(str(other), ids)
            hint = f"; did you mean `{close}`?" if close else ""
            ck.err(
                success.value_marks.get("beats"),
                f"`success.beats` of {what} names no experiment: {other!r}{hint}",
            )


def suspicious(roadmap: Roadmap) -> list[str]:
    """Messages for legal but suspicious roadmaps (never errors). A roadmap whose
    estimates are pending gets none: its p and costs are not known yet (the estimators
    run this again once they are)."""
    out = []
    if roadmap.pending:
        return out
    g = roadmap.graph()
    exps = {e.id: e for e in roadmap.experiments}
    # Cheapest total cost to reach and run each node (any-groups take the cheapest branch).
    cheapest: dict[str, float] = {}
    for nid in nx.topological_sort(g):
        e = exps[nid]
        total = e.cost.median
        for clause in e.requires:
            total += min(cheapest[a] for a in clause)
        cheapest[nid] = total
    hyp_users: dict[str, int] = {}
    for e in roadmap.experiments:
        if isinstance(e.p, Conditional | Categorical):
            hyp_users[e.p.hypothesis] = hyp_users.get(e.p.hypothesis, 0) + 1
    where = roadmap.source
    for e in roadmap.experiments:
        at = f"{where}:{e.line}" if e.line else where
        if e.reward > 0 and cheapest[e.id] > roadmap.budget:
            out.append(
                f"{at}: reward of `{e.id}` cannot be earned within the budget "
                f"(cheapest path costs {cheapest[e.id]:g}, budget is {roadmap.budget:g})"
            )
        elif e.cost.median > roadmap.budget and not e.cost.stochastic:
            out.append(
                f"{at}: `{e.id}` costs {e.cost.median:g}, more than the whole budget "
                f"({roadmap.budget:g}); it can never run"
            )
        if isinstance(e.p, float | int) and e.p == 0:
            out.append(f"{at}: `{e.id}` has p = 0 and can never succeed")
        latent = isinstance(e.p, Conditional | Categorical)
        informative = latent and hyp_users[e.p.hypothesis] > 1
        if e.reward == 0 and g.out_degree(e.id) == 0 and not informative:
            out.append(
                f"{at}: nothing depends on `{e.id}` and it earns nothing; the planner "
                "will never run it"
            )
    return out
