"""The exact backward induction as one compiled loop (XLA), for large state spaces.

The same algorithm as `_exact.solve_exact` (one pass over the layers of the state space,
fewest untried experiments first), written so that XLA fuses each step: the numpy solver
makes ~13 passes over every (state, experiment, budget level) element (gather the two
successor rows, the Bellman arithmetic, compare, max, scatter); here the (state,
experiment) pairs are processed in chunks of `CHUNK` pairs by a `fori_loop`, and each
chunk's gathers, arithmetic and reductions run as a few fused loops. On a 2-core CPU this
is 2-2.5x faster than the numpy solver on the benchmark's large cases (BENCHMARKS.md),
after a compilation of about a second, so `solve_exact` uses it only past
`_exact.FUSED_MIN_WORK` pair-levels.

Chunks hold whole states and never cross a layer, so a chunk reads only values that are
final (earlier layers). Its states are solved in a small block: a state's value is the
max over its pairs (scatter-max onto 0, the value of stopping), then its action is the
lowest-indexed experiment within `TIE` of that value (stop when the value is within
`TIE` of 0). That is the JAX sweep solver's rule; the numpy solver's sequential rule
(a later experiment replaces an earlier one only if better by `TIE`) can differ from it
only among actions within a few `TIE` of each other, and the values agree to rounding.
The block's rows are then copied into the tables, which hold each state's reachable
levels only (`_table`). `tests/test_exact_speed.py` checks values and policies against
the numpy solver.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from derisk.planner._exact import TIE
from derisk.planner._jax import _x64
from derisk.planner._problem import PlanningProblem
from derisk.planner._states import StateSpace, _release_freed_memory
from derisk.planner._table import SolvePairs, Table, reachable_top

CHUNK = 1024  # (state, experiment) pairs per step: (CHUNK, levels) temporaries, ~1.6 MB
STEPS_PER_CALL = 512  # chunks per compiled call: the progress bar moves between calls
NO_ACTION = 127
WIDTH_CLASSES = 4  # chunk widths L/4, L/2, 3L/4, L: F computes 45% of its pair-levels


def chunk_layout(layer: np.ndarray, pairs: np.ndarray, chunk: int, n: int):
    """Place the (state, experiment) pairs of states in solve order into chunks.

    layer: (S,) untried count of each state, nondecreasing (states sorted by layer);
    pairs: (S,) each state's pair count (at most n). A state's pairs take consecutive
    slots of an (n_chunks * chunk) layout, starting at first_slot[state]; a state's
    pairs stay in one chunk and no chunk holds two layers. Returns (first_slot,
    n_chunks, chunk_of_state); states without pairs get -1 for both. Everything is
    computed per state (S values), not per pair (`pair_slots` expands).
    """
    if chunk < 2 * n:
        raise ValueError(f"chunk {chunk} must hold at least 2 x {n} pairs")
    pairs = np.asarray(pairs, dtype=np.int64)
    total = int(pairs.sum())
    if total == 0:
        none = np.full(len(pairs), -1, dtype=np.int64)
        return none, 0, none.copy()
    first = np.cumsum(pairs) - pairs  # each state's first pair
    new_layer = np.r_[True, layer[1:] != layer[:-1]]
    layer_id = np.cumsum(new_layer) - 1
    layer_first = first[new_layer]
    layer_size = np.diff(np.r_[layer_first, total])
    # A state goes to the chunk its first pair's position falls in, on a grid of
    # `chunk - n + 1` slots, so a chunk's states (at most n pairs each) always fit.
    step = chunk - n + 1
    per_layer = -(-layer_size // step)
    offset = np.r_[0, np.cumsum(per_layer)[:-1]]
    cid = offset[layer_id] + (first - layer_first[layer_id]) // step
    has = pairs > 0
    n_chunks = int(per_layer.sum())
    chunk_first = np.full(n_chunks, total, dtype=np.int64)
    np.minimum.at(chunk_first, cid[has], first[has])
    first_slot = cid * chunk + first - chunk_first[np.minimum(cid, n_chunks - 1)]
    return np.where(has, first_slot, -1), n_chunks, np.where(has, cid, -1)


def pair_slots(first_slot: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Slot of every pair, for states listed in any order with their pairs consecutive:
    first_slot and pairs (per state, in that order) from `chunk_layout`."""
    pairs = np.asarray(pairs, dtype=np.int64)
    first = np.cumsum(pairs) - pairs
    return np.repeat(first_slot - first, pairs) + np.arange(int(pairs.sum()))


def solve_fused(problem: PlanningProblem, space: StateSpace, progress=None, *, chunk=CHUNK):
    """Optimal values (float64) and policy (int8, -1 = stop) as `Table`s, each state's
    row stored for its reachable levels only (`reachable_top`)."""
    S, L, n = space.size, problem.levels + 1, problem.n
    sp = SolvePairs.of(space)  # states in solve order, and their pairs in that order
    top = reachable_top(problem, space, sp)
    # Width classes: a chunk computes only the first `_width(class)` levels, enough for
    # each of its states' reachable levels; within a layer states go by class, so a
    # chunk's states share one. `sp` keeps its order; `order` is the solve order.
    cls = _width_class(top[sp.order], L)
    perm = np.lexsort((cls, space.untried[sp.order]))  # position in `sp` of each
    order, cls, counts = sp.order[perm], cls[perm], sp.counts[perm]
    idle = np.flatnonzero(~space.avail.any(axis=1))  # nothing to run: worth 0, stop
    # Flat layout of the tables: L cells of padding, the idle states' rows, then every
    # other state's row in solve order, then L cells of padding. A state's row is
    # written as L cells at once and spills past its top only into rows solved later
    # (overwritten then), never into a row already final; a successor's row read from
    # c cells before its start never leaves the array.
    width = top.astype(np.int64) + 1
    start = np.empty(S, dtype=np.int64)
    for group, base in ((idle, L), (order, L + int(width[idle].sum()))):
        start[group] = base + np.cumsum(width[group]) - width[group]
    size = L + int(width.sum()) + L
    index = np.int32 if size < 2**31 else np.int64
    del width
    group = space.untried[order].astype(np.int64) * (WIDTH_CLASSES + 1) + cls
    first_slot, n_chunks, cid = chunk_layout(group, counts, chunk, n)
    del group
    tot = n_chunks * chunk
    per_chunk = np.bincount(cid, minlength=n_chunks)
    chunk_first = np.cumsum(per_chunk) - per_chunk  # position in `order` of its first state
    M = int(per_chunk.max()) if n_chunks else 1  # states in the fullest chunk
    chunk_class = cls[chunk_first] if n_chunks else cls[:0]
    # runs of chunks of one class, cut every STEPS_PER_CALL chunks: one call each
    cuts = np.union1d(
        np.flatnonzero(np.diff(chunk_class)) + 1, np.arange(0, n_chunks, STEPS_PER_CALL)
    )
    calls = [
        (int(a), int(b), _width(int(chunk_class[a]), L))
        for a, b in zip(cuts, np.r_[cuts[1:], n_chunks], strict=True)
        if b > a
    ]
    K = max(len(c) for c in problem.cost_units)
    cu = np.zeros((n, K), dtype=np.int32)
    cq = np.zeros((n, K))
    for i, (c, q) in enumerate(zip(problem.cost_units, problem.cost_probs, strict=True)):
        cu[i, : len(c)], cq[i, : len(c)] = c, q
    consts = dict(
        cu=cu,
        cq=cq,
        lo=np.asarray(problem.min_cost, dtype=np.int32),
        reward=np.asarray(problem.reward, dtype=np.float64),
        p_node=np.asarray(problem.p_table[:, 0], dtype=np.float64),
    )
    price = -float(problem.price_per_unit)
    # Compile each width's loop on a thread while the pairs are laid out below (the
    # compiler releases the GIL; numpy's copies leave the second core to it).
    spec = jax.ShapeDtypeStruct
    specs = dict(loc=(tot, np.int32), node=(tot, np.int32), ss=(tot, index), sf=(tot, index))
    if stochastic := any(len(c) > 1 for c in problem.cost_units):
        specs["sd"] = (tot, index)
    if problem.hypotheses:
        specs["p"] = (tot, np.float64)
    specs.update(row=(len(order), index), first=(n_chunks, np.int32), count=(n_chunks, np.int32))

    def compile_width(W):
        with _x64():
            return _steps.lower(
                spec((size,), np.float64),
                spec((size,), np.int8),
                (spec((M + 1, W), np.float64), spec((M + 1, W), np.int8)),
                {k: spec((m,), t) for k, (m, t) in specs.items()},
                {k: spec(v.shape, v.dtype) for k, v in consts.items()},
                0,
                0,
                chunk=chunk,
                L=L,
                W=W,
                K=K,
                M=M,
                price=price,
            ).compile()

    compiler = ThreadPoolExecutor(1)
    compiled = {W: compiler.submit(compile_width, W) for W in dict.fromkeys(w for *_, w in calls)}
    compiler.shutdown(wait=False)

    def laid(values, fill, dtype):
        out = np.full(tot, fill, dtype=dtype)
        out[slot] = values
        return out

    # The pairs stay in `sp`'s order; each goes straight to its slot (no reordering).
    back = np.empty_like(perm)
    back[perm] = np.arange(len(perm))  # solve-order position of each of `sp`'s states
    slot = pair_slots(first_slot[back], sp.counts)
    local = (np.arange(len(order)) - chunk_first[cid]).astype(np.int32)[back]
    pairs = dict(
        loc=laid(local[sp.rows], M, np.int32),  # the pair's state's row in its chunk's block
        node=laid(sp.node, 0, np.int32),
        ss=laid(start[sp.succ_s], L, index),
        sf=laid(start[sp.succ_f], L, index),
    )
    del local, back, perm, first_slot
    if stochastic:  # cut-offs
        d = space.succ_d[sp.order[sp.rows], sp.node]
        pairs["sd"] = laid(np.where(d < 0, 0, start[np.maximum(d, 0)]), 0, index)
    if problem.hypotheses:
        pairs["p"] = laid(space.p[sp.order[sp.rows], sp.node], 0.0, np.float64)
    pairs["row"] = start[order].astype(index)  # where each solved state's row goes
    pairs["first"] = chunk_first.astype(np.int32)
    pairs["count"] = per_chunk.astype(np.int32)
    del sp, order, cid, cls, chunk_class
    slot = None  # free the (pairs,) temporaries before the tables exist
    with _x64():
        dev = {k: jnp.asarray(v) for k, v in pairs.items()}
        cst = {k: jnp.asarray(v) for k, v in consts.items()}
        del pairs
        _release_freed_memory()  # the host-side layout, before the tables exist
        V = jnp.zeros(size, dtype=jnp.float64)
        pol = jnp.full(size, NO_ACTION, dtype=jnp.int8)
        blocks = {}  # each width's block of rows, reused from call to call
        for a, b, W in calls:
            if W not in blocks:
                blocks[W] = (jnp.zeros((M + 1, W)), jnp.full((M + 1, W), NO_ACTION, jnp.int8))
            V, pol, blocks[W] = compiled[W].result()(V, pol, blocks[W], dev, cst, a, b)
            if progress is not None:  # calls return at once (asynchronous dispatch):
                V.block_until_ready()  # report what is done, not what is queued
                progress(int(per_chunk[a:b].sum()))
        pol = jax.block_until_ready(_finish(pol))
        # Views of the XLA buffers on a CPU (no copy); read-only, like every solution.
        values = Table(np.asarray(V), start, top, L, np.nan)
        policy = Table(np.asarray(pol), start, top, L, -1)
    del dev, blocks
    _release_freed_memory()
    if progress is not None:  # the states with nothing to run (no pairs)
        progress(S - int(per_chunk.sum()))
    return values, policy


@partial(jax.jit, donate_argnums=0)
def _finish(pol):
    return jnp.where(pol == NO_ACTION, jnp.int8(-1), pol)  # in place (donated)


def _width_class(top: np.ndarray, L: int) -> np.ndarray:
    """1..WIDTH_CLASSES: the class whose width holds levels 0..top."""
    return -(-(top.astype(np.int64) + 1) * WIDTH_CLASSES // L)


def _width(cls: int, L: int) -> int:
    return -(-cls * L // WIDTH_CLASSES)


@partial(jax.jit, static_argnames=("chunk", "L", "W", "K", "M", "price"), donate_argnums=(0, 1, 2))
def _steps(V, pol, block, dev, cst, start, stop, *, chunk, L, W, K, M, price):
    """Chunks start..stop, each computing levels 0..W-1 of its states (W <= L)."""
    lv = jnp.arange(W)

    def body(k, carry):
        V, pol, (best, act) = carry
        sl = lambda a: lax.dynamic_slice_in_dim(a, k * chunk, chunk)  # noqa: E731
        loc, nd, ss, sf = sl(dev["loc"]), sl(dev["node"]), sl(dev["ss"]), sl(dev["sf"])
        p = sl(dev["p"]) if "p" in dev else cst["p_node"][nd]
        R = cst["reward"][nd]
        # A row of the flat values read as one window: a successor's row read from c
        # cells before its start is that row shifted right by c (the first c entries,
        # from the row before, are masked below), with no shift of its own.
        read = jax.vmap(lambda at: lax.dynamic_slice(V, (at,), (W,)))
        if K == 1:  # deterministic cost c: q[b] reads the successors at b - c
            c = jnp.minimum(cst["cu"][nd, 0], L).astype(ss.dtype)
            q = (R[:, None] + read(ss - c)) * p[:, None] + read(sf - c) * (1.0 - p)[:, None]
            if price:
                q = q + price * c[:, None]
        else:
            cont = (R[:, None] + read(ss)) * p[:, None] + read(sf) * (1.0 - p)[:, None]
            vd0 = V[sl(dev["sd"])] if "sd" in dev else jnp.zeros(chunk)
            q = jnp.zeros((chunk, W))
            for j in range(K):
                c = cst["cu"][nd, j]
                idx = lv[None, :] - c[:, None]
                val = jnp.take_along_axis(cont, jnp.maximum(idx, 0), axis=1) + price * c[:, None]
                cut = vd0[:, None] + price * lv[None, :]
                q = q + cst["cq"][nd, j][:, None] * jnp.where(idx >= 0, val, cut)
        ok = (lv[None, :] >= cst["lo"][nd][:, None]) & (loc != M)[:, None]
        q = jnp.where(ok, q, -jnp.inf)
        # The chunk's states in a small block (row M: the empty slots): each state's
        # value is the max over its pairs onto 0 (stop), then its action the lowest
        # experiment within TIE of it.
        best = best.at[loc].set(0.0).at[loc].max(q)
        v = best[loc]
        pick = (q >= v - TIE) & (v > TIE)
        act = act.at[loc].set(NO_ACTION)
        act = act.at[loc].min(jnp.where(pick, nd[:, None], NO_ACTION).astype(jnp.int8))
        first = dev["first"][k]

        def put(r, tables):  # rows in solve order: a row's spill is overwritten later
            V, pol = tables
            at = dev["row"][first + r]
            return (
                lax.dynamic_update_slice(V, best[r], (at,)),
                lax.dynamic_update_slice(pol, act[r], (at,)),
            )

        V, pol = lax.fori_loop(0, dev["count"][k], put, (V, pol))
        return V, pol, (best, act)

    return lax.fori_loop(start, stop, body, (V, pol, block))
