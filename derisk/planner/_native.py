"""The exact solver's and policy evaluation's loops in C (`_bellman.c`, through ctypes).

`pip install` compiles it as an optional extension; without a C compiler the install
goes on and the numpy loops run, the references these are tested against bit for bit
(tests/test_native.py).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from derisk.errors import DeriskWarning
from derisk.planner._problem import PlanningProblem
from derisk.planner._states import StateSpace, outcome_free
from derisk.planner._table import SolvePairs

VERSION = 3  # derisk_bellman_version() of the library this module can call
_i64 = ctypes.POINTER(ctypes.c_int64)
_f64 = ctypes.POINTER(ctypes.c_double)
_ptr = ctypes.c_void_p


class _Problem(ctypes.Structure):
    _fields_ = [
        ("n_nodes", ctypes.c_int64),
        ("wide", ctypes.c_int64),
        ("cost_first", _i64),
        ("cost_units", _i64),
        ("cost_probs", _f64),
        ("gain", _f64),
        ("same", ctypes.POINTER(ctypes.c_uint8)),
        ("price", ctypes.c_double),
        ("tie", ctypes.c_double),
    ]


@functools.cache
def _library():
    """The built extension, or None where it was not built (or was built from another
    version of `_bellman.c`: then it says so, once)."""
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_bellman{suffix}"
        if not path.exists():
            continue
        try:
            lib = ctypes.CDLL(str(path))
            lib.derisk_bellman_version.restype = ctypes.c_int64
            built = lib.derisk_bellman_version()
        except (OSError, AttributeError) as e:
            why = f"could not be loaded ({e})"
        else:
            why = None if built == VERSION else "was built from another version of _bellman.c"
        if why is not None:
            warnings.warn(
                f"{path.name} {why}; the planner runs its numpy loops until it is rebuilt "
                "(pip install -e .)",
                DeriskWarning,
                stacklevel=2,
            )
            return None
        head = [ctypes.POINTER(_Problem), ctypes.c_int64] + [_ptr] * 11
        lib.derisk_backup.argtypes = head
        lib.derisk_evaluate.argtypes = head + [_ptr]
        lib.derisk_backup.restype = lib.derisk_evaluate.restype = None
        return lib
    return None


def available() -> bool:
    """Whether the C loops were built (`pip install` with a C compiler)."""
    return _library() is not None


def _addr(a: np.ndarray | None):
    return None if a is None else a.ctypes.data_as(_ptr)


@dataclass(frozen=True, eq=False)
class Layout:
    """What the C loops read for one space and problem, laid out once: the pairs in
    solve order (`_table.SolvePairs`, successors as the space holds them), each pair's p,
    the cost outcomes, and the layer ends (one call per layer: the progress unit)."""

    wide: int  # successor indices are int64 (1) or int32 (0), as the space holds them
    same: np.ndarray  # (n,) uint8: experiments whose outcomes lead to one state
    stopped: np.ndarray  # states with nothing to run
    order: np.ndarray
    first: np.ndarray
    tables: tuple  # node, succ_s, succ_f, succ_d (None: no stochastic cost), p
    cost: tuple  # cost_first, cost_units, cost_probs
    ends: np.ndarray  # where each layer's states end in `order`
    sizes: np.ndarray  # each layer's states, those with nothing to run too
    idle: int  # states in layers where nothing can run at all

    @classmethod
    def of(cls, problem: PlanningProblem, space: StateSpace) -> Layout:
        if problem.n > 127:  # int8 policies; the C loops' node table has 128 entries
            raise ValueError(f"the exact loops take at most 127 experiments, not {problem.n}")
        pairs = SolvePairs.of(space)
        i64 = functools.partial(np.ascontiguousarray, dtype=np.int64)
        stochastic = any(len(u) > 1 for u in problem.cost_units)
        index = space.succ_s.dtype  # int32 or int64: the C loops read either, uncopied
        if space.p.strides[0] == 0:  # no hypotheses: the prior, one row for every state
            p = space.p[0][pairs.node]
        else:
            p = space.p[pairs.order[pairs.rows], pairs.node]
        tables = (
            i64(pairs.node),
            np.ascontiguousarray(pairs.succ_s, dtype=index),
            np.ascontiguousarray(pairs.succ_f, dtype=index),
            np.ascontiguousarray(space.succ_d[pairs.order[pairs.rows], pairs.node], dtype=index)
            if stochastic
            else None,
            np.ascontiguousarray(p, dtype=np.float64),
        )
        units = [np.asarray(u, dtype=np.int64) for u in problem.cost_units]
        cost = (
            i64(np.r_[0, np.cumsum([len(u) for u in units])]),
            i64(np.concatenate(units)),
            np.ascontiguousarray(np.concatenate(problem.cost_probs), dtype=np.float64),
        )
        untried = space.untried[pairs.order]
        heads = np.r_[0, np.flatnonzero(np.diff(untried)) + 1] if len(untried) else []
        sizes = np.bincount(space.untried)
        idle = np.setdiff1d(np.flatnonzero(sizes), untried)
        runs = np.zeros(space.size, dtype=bool)
        runs[pairs.order] = True  # the states with pairs; the others can only stop
        return cls(
            wide=int(index == np.int64),
            same=np.ascontiguousarray(outcome_free(problem), dtype=np.uint8),
            stopped=np.flatnonzero(~runs),
            order=i64(pairs.order),
            first=i64(np.r_[0, np.cumsum(pairs.counts)]),
            tables=tables,
            cost=cost,
            ends=np.r_[heads[1:], len(untried)].astype(np.int64) if len(heads) else heads,
            sizes=sizes[untried[heads]] if len(heads) else heads,
            idle=int(sizes[idle].sum()),
        )

    def spec(self, problem: PlanningProblem, gain, price: float, tie: float = 0.0):
        """The C `Problem` for these gains and this price (kept alive by the caller)."""
        gain = np.ascontiguousarray(gain, dtype=np.float64)
        first, units, probs = self.cost
        spec = _Problem(
            problem.n,
            self.wide,
            first.ctypes.data_as(_i64),
            units.ctypes.data_as(_i64),
            probs.ctypes.data_as(_f64),
            gain.ctypes.data_as(_f64),
            self.same.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
            float(price),
            float(tie),
        )
        return spec, gain  # the array `spec` points into beside the layout's: keep it alive

    def run(self, fn, spec, tail: list, progress=None) -> None:
        """`fn` over every layer in solve order; `tail` the arguments after the pairs."""
        if progress is not None and self.idle:
            progress(self.idle)
        args = [_addr(a) for a in self.tables] + tail
        lo = 0
        for hi, size in zip(self.ends, self.sizes, strict=True):
            fn(
                ctypes.byref(spec),
                int(hi - lo),
                _addr(self.order[lo:]),
                _addr(self.first[lo:]),
                *args,
            )
            if progress is not None:
                progress(int(size))
            lo = hi


def _need():
    lib = _library()
    if lib is None:
        raise RuntimeError("the C loops were not built (reinstall with a C compiler)")
    return lib


def _widths(S: int, L: int, top: np.ndarray | None) -> np.ndarray:
    return np.ascontiguousarray(
        np.full(S, L) if top is None else np.minimum(top, L - 1) + 1, dtype=np.int64
    )


def solve_native(
    problem: PlanningProblem, space: StateSpace, top: np.ndarray | None, tie: float, progress=None
) -> tuple[np.ndarray, np.ndarray]:
    """Dense (S, L) values and int8 policy, levels 0..top[s] of each row computed (every
    level where `top` is None), layer by layer. One thread: splitting a layer over this
    machine's two was slower (BENCHMARKS.md)."""
    lib = _need()
    S, L = space.size, problem.levels + 1
    layout = Layout.of(problem, space)
    spec, alive = layout.spec(problem, problem.reward, -problem.price_per_unit, tie)
    V = np.zeros((S, L))
    policy = np.full((S, L), -1, dtype=np.int8)
    start = np.arange(S, dtype=np.int64) * L
    width = _widths(S, L, top)
    tail = [_addr(start), _addr(width), _addr(V), _addr(policy)]
    layout.run(lib.derisk_backup, spec, tail, progress)
    del alive  # (held until the calls are done)
    return V, policy


def evaluate_native(
    problem: PlanningProblem,
    space: StateSpace,
    layout: Layout,
    policy: np.ndarray | None,
    gains,
    spend: float,
    top: np.ndarray | None,
    X: np.ndarray,
) -> np.ndarray:
    """One backward channel of a fixed policy into X (S, L) (`_evaluate._channel`):
    policy dense (S, L) int8 (-1 = stop) or None (uniformly random); levels past each
    row's top are left as they are."""
    lib = _need()
    S, L = space.size, problem.levels + 1
    if X.shape != (S, L) or not X.flags.c_contiguous or X.dtype != np.float64:
        raise ValueError(f"X must be a C-contiguous float64 ({S}, {L}) array")
    if policy is not None:
        policy = np.ascontiguousarray(policy, dtype=np.int8)
        if policy.shape != (S, L):
            raise ValueError(f"policy must be ({S}, {L}), got {policy.shape}")
    X[layout.stopped] = 0.0  # stopping is all they can do; the C loop reads, never writes them
    spec, alive = layout.spec(problem, gains, spend)
    start = np.arange(S, dtype=np.int64) * L
    width = _widths(S, L, top)
    tally = np.zeros(L)  # the random policy's count of choices at each level
    tail = [_addr(start), _addr(width), _addr(policy), _addr(X), _addr(tally)]
    layout.run(lib.derisk_evaluate, spec, tail)
    del alive  # (held until the calls are done)
    return X
