"""Exact backward induction over layers of the state space (numpy reference solver)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from derisk.planner import _native
from derisk.planner._backup import action_value, continuation
from derisk.planner._problem import PlanningProblem
from derisk.planner._states import StateSpace, _small_pages, outcome_free
from derisk.planner._table import Table, reachable_top

# Rows per block: each (rows x levels) temporary is ~4 MB and stays in cache; measured
# 2.8x faster than 32k-row blocks on a 1M-state roadmap (BENCHMARKS.md).
BLOCK_ELEMENTS = 1 << 19


def _block_rows(levels: int) -> int:
    return max(64, BLOCK_ELEMENTS // max(levels, 1))


def layer_blocks(layer: np.ndarray, levels: int, top: np.ndarray | None = None) -> list:
    """A layer's cache-sized blocks as (rows, W): W = `levels`, or with `top` (each
    state's reachable levels) the block's widest top + 1, the layer sorted by top so
    that a block's rows are alike."""
    if top is not None:
        layer = layer[np.argsort(-top[layer], kind="stable")]
    block = _block_rows(levels)
    out = []
    for k in range(0, len(layer), block):
        rows = layer[k : k + block]
        out.append((rows, levels if top is None else int(top[rows].max()) + 1))
    return out


TIE = 1e-9  # an action replaces a lower-index one (or stop) only if better by this much
WIDTH_MIN_WORK = 1 << 24  # pairs x levels past which blocks are cut to reachable levels
FUSED_MIN_WORK = 1 << 27  # pairs x levels past which the compiled solver pays (`_fused`)
# Tables under this many bytes are left on numpy's huge-page advice (`_states._small_pages`
# explains why larger ones are not): the C loop's first solve of E (88 MB) takes 90 ms
# on huge pages against 150 ms on 4 KiB ones, D2's (11 MB) 13 ms against 20 (BENCHMARKS.md).
HUGE_PAGES_MAX_BYTES = 1 << 28


def solve_exact(
    problem: PlanningProblem, space: StateSpace, progress=None, *, threads=None, engine="auto"
):
    """Optimal values and policy (int8, -1 = stop) as (S, L) `Table`s.

    Row s is stored for the budget levels it can be entered with from the start
    (`_table.reachable_top`); every question asked from the start reads only those.

    engine: "numpy" (this function's own loop, the reference), "native" (the same loop in
    C, `_native`, where the install built it: equal bit for bit, 3-6x faster), "xla"
    (`_fused`: the same induction compiled into fused loops, 2-2.5x faster than numpy
    past a second of compilation), or "auto": xla past `FUSED_MIN_WORK` (state,
    experiment) pairs x levels, else native where built, else numpy.

    States with fewer untried nodes are solved first; every successor of a state lies
    in an earlier layer, so one pass is exact (no iteration to convergence). The blocks
    of one layer are independent (they read earlier layers, write their own rows), so
    they run on `threads` threads (default: the CPUs this process may use); numpy
    releases the GIL inside each block's array operations.
    """
    S, L = space.size, problem.levels + 1
    if engine not in ("auto", "numpy", "native", "xla"):
        raise ValueError(f"engine must be auto, numpy, native or xla, got {engine!r}")
    work = space.pairs * L  # (state, experiment, level) triples
    if engine == "auto":
        engine = auto_engine(work)
    if engine == "native" and S * L * 9 < HUGE_PAGES_MAX_BYTES:  # values and policy
        return _solve_native(problem, space, work, progress)
    with _small_pages():
        if engine == "xla":
            from derisk.planner._fused import solve_fused

            return solve_fused(problem, space, progress)
        if engine == "native":
            return _solve_native(problem, space, work, progress)
        return _solve_numpy(problem, space, work, progress, threads)


def _reachable(problem: PlanningProblem, space: StateSpace, work: int):
    """(cut, top): each state's reachable top (`_table.reachable_top`) past
    WIDTH_MIN_WORK, else None: past it a block computes only up to its widest reachable
    level (E: a third faster); below, finding those levels costs more than it saves
    (D2), and every level is kept (all are the MDP's values). top: what the tables keep,
    the cut or every level."""
    if work >= WIDTH_MIN_WORK:
        cut = reachable_top(problem, space)
        return cut, cut
    return None, np.full(space.size, problem.levels, dtype=np.int32)


def _solve_native(problem: PlanningProblem, space: StateSpace, work: int, progress):
    cut, top = _reachable(problem, space, work)
    V, policy = _native.solve_native(problem, space, cut, TIE, progress)
    return Table.over(V, top, np.nan), Table.over(policy, top, -1)


def _solve_numpy(problem: PlanningProblem, space: StateSpace, work: int, progress, threads):
    """The reference loop (`solve_exact`, engine "numpy")."""
    S, L = space.size, problem.levels + 1
    cut, top = _reachable(problem, space, work)
    V = np.zeros((S, L))
    policy = np.full((S, L), -1, dtype=np.int8)
    price = -problem.price_per_unit
    same = outcome_free(problem)  # success and failure lead to one state: one gather

    def backup(rows, W):  # one block of rows of a layer, levels 0..W-1
        best = np.zeros((len(rows), W))  # stopping is worth 0
        act = np.full((len(rows), W), -1, dtype=np.int8)
        for i in range(problem.n):
            avail = space.avail[rows, i]
            sel = np.flatnonzero(avail)
            if not len(sel):
                continue
            every = len(sel) == len(rows)
            st = rows if every else rows[sel]
            units = problem.cost_units[i]
            # Successor tables may be int32 (memory); gathers index with intp, the
            # type numpy's fancy indexing takes without a per-element cast.
            cur = best if every else best[sel]
            a = act if every else act[sel]
            if len(units) == 1:
                # Deterministic cost: compare the continuation's columns with the
                # best's shifted columns as views (no shifted copy); below the cost
                # the run cannot start and nothing changes.
                c = int(units[0])
                if c < W:
                    if same[i]:  # p (gain + x) + (1 - p) x = x + p gain
                        q = V[space.succ_s[st, i].astype(np.intp), : W - c]
                        if problem.reward[i]:
                            q += (problem.reward[i] * space.p[st, i])[:, None]
                    else:
                        q = continuation(
                            space.p[st, i],
                            V[space.succ_s[st, i].astype(np.intp), : W - c],
                            V[space.succ_f[st, i].astype(np.intp), : W - c],
                            gain=problem.reward[i],
                        )
                    if price and c:
                        q += price * c
                    tail = cur[:, c:]
                    better = q > tail + TIE
                    np.maximum(tail, q, out=tail)
                    np.copyto(a[:, c:], i, where=better)
            else:
                d = space.succ_d[st, i]
                q = action_value(
                    problem,
                    i,
                    space.p[st, i],
                    V[space.succ_s[st, i].astype(np.intp), :W],
                    V[space.succ_f[st, i].astype(np.intp), :W],
                    V[d, 0] if d[0] >= 0 else None,
                    gain=problem.reward[i],
                    spend_weight=price,
                )
                better = q > cur + TIE  # must beat stop and every earlier node by TIE
                np.maximum(cur, q, out=cur)
                a[better] = i
            if not every:
                best[sel] = cur
                act[sel] = a
        V[rows, :W] = best
        policy[rows, :W] = act

    workers = threads or _cpus()
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for layer in space.layers():
            blocks = layer_blocks(layer, L, cut)
            if pool is not None and len(blocks) > 1:
                list(pool.map(lambda b: backup(*b), blocks))  # list(): re-raise errors
            else:
                for rows, W in blocks:
                    backup(rows, W)
            if progress is not None:
                progress(len(layer))
    finally:
        if pool is not None:
            pool.shutdown()
    # Read in place: compacting costs more than it saves at the sizes this engine takes
    # (the memory guard counts every cell for them, `_states.enumerate_states`).
    return Table.over(V, top, np.nan), Table.over(policy, top, -1)


def auto_engine(work: int) -> str:
    """The engine `solve_exact` picks for `work` (state, experiment, level) triples:
    "xla" past `FUSED_MIN_WORK`, else "native" where the C loop was built, else "numpy"."""
    if work >= FUSED_MIN_WORK:
        return "xla"
    return "native" if _native.available() else "numpy"


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
