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
final (earlier layers) and writes only its own states' rows: a state's value is the max
over its pairs (scatter-max onto 0, the value of stopping), then its action is the
lowest-indexed experiment within `TIE` of that value (stop when the value is within
`TIE` of 0). That is the JAX sweep solver's rule; the numpy solver's sequential rule
(a later experiment replaces an earlier one only if better by `TIE`) can differ from it
only among actions within a few `TIE` of each other, and the values agree to rounding.
`tests/test_exact_speed.py` checks values and policies against the numpy solver.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from derisk.planner._exact import TIE
from derisk.planner._jax import _x64
from derisk.planner._problem import PlanningProblem
from derisk.planner._states import StateSpace, _release_freed_memory

CHUNK = 1024  # (state, experiment) pairs per step: (CHUNK, levels) temporaries, ~1.6 MB
STEPS_PER_CALL = 512  # chunks per compiled call: the progress bar moves between calls
NO_ACTION = 127


def chunk_layout(layer: np.ndarray, pairs: np.ndarray, chunk: int, n: int):
    """Place the (state, experiment) pairs of states in solve order into chunks.

    layer: (S,) untried count of each state, nondecreasing (states sorted by layer);
    pairs: (S,) each state's pair count (at most n). The pairs are numbered in that
    order (a state's together); pair k goes to flat slot slot[k] of an
    (n_chunks * chunk) layout. A state's pairs stay in one chunk and no chunk holds two
    layers. Returns (slot, n_chunks, chunk_of_state); states without pairs get -1.
    Everything is computed per state (S values), not per pair.
    """
    if chunk < 2 * n:
        raise ValueError(f"chunk {chunk} must hold at least 2 x {n} pairs")
    pairs = np.asarray(pairs, dtype=np.int64)
    total = int(pairs.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64), 0, np.full(len(pairs), -1, dtype=np.int64)
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
    shift = cid * chunk - chunk_first[np.minimum(cid, n_chunks - 1)]
    slot = np.repeat(shift[has], pairs[has]) + np.arange(total)
    return slot, n_chunks, np.where(has, cid, -1)


def solve_fused(problem: PlanningProblem, space: StateSpace, progress=None, *, chunk=CHUNK):
    """Optimal values (S, L) float64 and policy (S, L) int8 (-1 = stop)."""
    S, L, n = space.size, problem.levels + 1, problem.n
    # States in solve order (layer by layer; a radix sort of the small counts), and
    # their pairs in that order straight from the availability table.
    by_layer = np.argsort(space.untried.astype(np.int8), kind="stable")
    rows, node = np.nonzero(space.avail[by_layer])
    st = by_layer[rows]
    del rows
    counts = space.avail.sum(axis=1)[by_layer]
    slot, n_chunks, cid = chunk_layout(space.untried[by_layer], counts, chunk, n)
    tot = n_chunks * chunk
    states_per_chunk = np.bincount(cid[cid >= 0], minlength=n_chunks)
    del by_layer, counts, cid

    def laid(values, fill, dtype):
        out = np.full(tot, fill, dtype=dtype)
        out[slot] = values
        return out

    # State s lives in row s + 1 of the compiled solver's values: row 0 is padding, so a
    # successor's row read `cost` columns early (`_steps`) never starts before the
    # array; row S + 1 is a dummy state that the empty slots point at.
    dummy = S + 1
    stochastic = any(len(c) > 1 for c in problem.cost_units)
    pairs = dict(
        st=laid(st + 1, dummy, np.int32),
        node=laid(node, 0, np.int32),
        ss=laid(space.succ_s[st, node] + 1, dummy, np.int32),
        sf=laid(space.succ_f[st, node] + 1, dummy, np.int32),
    )
    if stochastic:
        d = space.succ_d[st, node]
        pairs["sd"] = laid(np.where(d < 0, dummy, d + 1), dummy, np.int32)
    if problem.hypotheses:
        pairs["p"] = laid(space.p[st, node], 0.0, np.float64)
    del st, node
    slot = None  # free the (pairs,) temporaries before the (S, L) arrays exist
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
    with _x64():
        dev = {k: jnp.asarray(v) for k, v in pairs.items()}
        cst = {k: jnp.asarray(v) for k, v in consts.items()}
        del pairs
        _release_freed_memory()  # the host-side layout, before the (S, L) arrays exist
        V = jnp.zeros((S + 2, L), dtype=jnp.float64)
        pol = jnp.full((S + 2, L), NO_ACTION, dtype=jnp.int8)
        for a in range(0, n_chunks, STEPS_PER_CALL):
            b = min(a + STEPS_PER_CALL, n_chunks)
            V, pol = _steps(V, pol, dev, cst, a, b, chunk=chunk, L=L, K=K, price=price)
            if progress is not None:  # calls return at once (asynchronous dispatch):
                V.block_until_ready()  # report what is done, not what is queued
                progress(int(states_per_chunk[a:b].sum()))
        pol = jax.block_until_ready(_finish(pol))
        # Views of the XLA buffers on a CPU (no copy); read-only, like every solution.
        values = np.asarray(V)[1 : S + 1]
        policy = np.asarray(pol)[1 : S + 1]
    del dev
    _release_freed_memory()
    if progress is not None:  # the states with nothing to run (no pairs)
        progress(S - int(states_per_chunk.sum()))
    return values, policy


@partial(jax.jit, donate_argnums=0)
def _finish(pol):
    return jnp.where(pol == NO_ACTION, jnp.int8(-1), pol)  # in place (donated)


@partial(jax.jit, static_argnames=("chunk", "L", "K", "price"), donate_argnums=(0, 1))
def _steps(V, pol, dev, cst, start, stop, *, chunk, L, K, price):
    lv = jnp.arange(L)
    dummy = V.shape[0] - 1
    index = jnp.int32 if V.size < 2**31 else jnp.int64  # flat positions in the values

    def body(k, carry):
        V, pol = carry
        sl = lambda a: lax.dynamic_slice_in_dim(a, k * chunk, chunk)  # noqa: E731
        st, nd, ss, sf = sl(dev["st"]), sl(dev["node"]), sl(dev["ss"]), sl(dev["sf"])
        p = sl(dev["p"]) if "p" in dev else cst["p_node"][nd]
        R = cst["reward"][nd]
        if K == 1:
            # Deterministic cost c: q[b] reads the successors at b - c. The values as
            # one flat array, a successor's row read from c places before its start is
            # that row shifted right (the first c entries, from the row before, are
            # masked below): a contiguous window per pair, no shift of its own.
            c = jnp.minimum(cst["cu"][nd, 0], L)
            flat = V.reshape(-1)
            window = jax.vmap(lambda start: lax.dynamic_slice(flat, (start,), (L,)))
            base = (ss.astype(index) * L - c, sf.astype(index) * L - c)
            q = (R[:, None] + window(base[0])) * p[:, None] + window(base[1]) * (1.0 - p)[:, None]
            if price:
                q = q + price * c[:, None]
        else:
            cont = (R[:, None] + V[ss]) * p[:, None] + V[sf] * (1.0 - p)[:, None]  # (C, L)
            vd0 = V[sl(dev["sd"]), 0] if "sd" in dev else jnp.zeros(chunk)
            q = jnp.zeros((chunk, L))
            for j in range(K):
                c = cst["cu"][nd, j]
                idx = lv[None, :] - c[:, None]
                val = jnp.take_along_axis(cont, jnp.maximum(idx, 0), axis=1) + price * c[:, None]
                cut = vd0[:, None] + price * lv[None, :]
                q = q + cst["cq"][nd, j][:, None] * jnp.where(idx >= 0, val, cut)
        ok = (lv[None, :] >= cst["lo"][nd][:, None]) & (st != dummy)[:, None]
        q = jnp.where(ok, q, -jnp.inf)
        V = V.at[st].max(q)
        v = V[st]
        pick = (q >= v - TIE) & (v > TIE)
        pol = pol.at[st].min(jnp.where(pick, nd[:, None], NO_ACTION).astype(jnp.int8))
        return V, pol

    return lax.fori_loop(start, stop, body, (V, pol))
