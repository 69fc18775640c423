"""The exact solver's loop in C (`_bellman.c`, called through ctypes), where it was built.

`pip install` compiles it as an optional extension; without a C compiler the install
goes on and `solve_exact` runs its numpy loop, the reference this one is tested against
bit for bit (tests/test_native.py).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import warnings
from pathlib import Path

import numpy as np

from derisk.errors import DeriskWarning
from derisk.planner._problem import PlanningProblem
from derisk.planner._states import StateSpace, outcome_free
from derisk.planner._table import SolvePairs

VERSION = 1  # derisk_bellman_version() of the library this module can call
_i64 = ctypes.POINTER(ctypes.c_int64)
_f64 = ctypes.POINTER(ctypes.c_double)


class _Problem(ctypes.Structure):
    _fields_ = [
        ("n_nodes", ctypes.c_int64),
        ("cost_first", _i64),
        ("cost_units", _i64),
        ("cost_probs", _f64),
        ("gain", _f64),
        ("same", ctypes.POINTER(ctypes.c_uint8)),
        ("price", ctypes.c_double),
        ("tie", ctypes.c_double),
    ]


@functools.cache
def _kernel():
    """`derisk_backup` from the built extension, or None where it was not built (or was
    built from another version of `_bellman.c`: then it says so, once)."""
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_bellman{suffix}"
        if path.exists():
            try:
                lib = ctypes.CDLL(str(path))
                lib.derisk_bellman_version.restype = ctypes.c_int64
                built = lib.derisk_bellman_version()
                fn = lib.derisk_backup
            except (OSError, AttributeError):
                built = None
            if built != VERSION:
                warnings.warn(
                    f"{path.name} was built from another version of _bellman.c; the exact "
                    "solver runs its numpy loop until it is rebuilt (pip install -e .)",
                    DeriskWarning,
                    stacklevel=2,
                )
                return None
            fn.restype = None
            fn.argtypes = [ctypes.POINTER(_Problem), ctypes.c_int64] + [ctypes.c_void_p] * 11
            return fn
    return None


def available() -> bool:
    """Whether the C loop was built (`pip install` with a C compiler)."""
    return _kernel() is not None


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.c_void_p)


def solve_native(
    problem: PlanningProblem,
    space: StateSpace,
    top: np.ndarray | None,
    tie: float,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Dense (S, L) values and int8 policy, levels 0..top[s] of each row computed (every
    level where `top` is None), layer by layer (the progress unit)."""
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError("the C solver was not built (reinstall with a C compiler)")
    S, L = space.size, problem.levels + 1
    pairs = SolvePairs.of(space)
    st = pairs.order[pairs.rows]
    i64 = functools.partial(np.ascontiguousarray, dtype=np.int64)
    node, succ_s, succ_f = i64(pairs.node), i64(pairs.succ_s), i64(pairs.succ_f)
    stochastic = any(len(u) > 1 for u in problem.cost_units)
    succ_d = i64(space.succ_d[st, pairs.node]) if stochastic else None  # None: NULL
    p = np.ascontiguousarray(space.p[st, pairs.node], dtype=np.float64)
    first = i64(np.r_[0, np.cumsum(pairs.counts)])
    order = i64(pairs.order)
    start = np.arange(S, dtype=np.int64) * L
    width = i64(np.full(S, L) if top is None else np.minimum(top, L - 1) + 1)
    units = [np.asarray(u, dtype=np.int64) for u in problem.cost_units]
    cost_first = i64(np.r_[0, np.cumsum([len(u) for u in units])])
    cost_units = i64(np.concatenate(units))
    cost_probs = np.ascontiguousarray(np.concatenate(problem.cost_probs), dtype=np.float64)
    gain = np.ascontiguousarray(problem.reward, dtype=np.float64)
    same = np.ascontiguousarray(outcome_free(problem), dtype=np.uint8)
    spec = _Problem(
        problem.n,
        cost_first.ctypes.data_as(_i64),
        cost_units.ctypes.data_as(_i64),
        cost_probs.ctypes.data_as(_f64),
        gain.ctypes.data_as(_f64),
        same.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
        -float(problem.price_per_unit),
        float(tie),
    )
    V = np.zeros((S, L))
    policy = np.full((S, L), -1, dtype=np.int8)
    # one call per layer (states of one untried count); progress counts every state of
    # it, those with nothing to run too (a layer may have only those)
    untried = space.untried[pairs.order]
    ends = np.r_[np.flatnonzero(np.diff(untried)) + 1, len(order)]
    sizes = np.bincount(space.untried)
    if progress is not None:
        idle = np.setdiff1d(np.flatnonzero(sizes), untried)
        if len(idle):
            progress(int(sizes[idle].sum()))
    tables = [_ptr(a) if a is not None else None for a in (node, succ_s, succ_f, succ_d, p)]
    tables += [_ptr(start), _ptr(width), _ptr(V), _ptr(policy)]
    # One thread: splitting a layer over this machine's two was slower (BENCHMARKS.md).
    lo = 0
    for hi in ends if len(order) else []:
        kernel(ctypes.byref(spec), int(hi - lo), _ptr(order[lo:]), _ptr(first[lo:]), *tables)
        if progress is not None:
            progress(int(sizes[untried[lo]]))
        lo = hi
    return V, policy
