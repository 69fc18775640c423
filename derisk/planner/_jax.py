"""Value iteration in JAX: synchronous (Jacobi) Bellman sweeps over all states at once.

A different algorithm from the exact solver's layered backward induction, so the two
cross-check each other: starting from V = 0, sweep k is exact for every state within
k steps of the end, so the sweeps reach the fixed point after at most (depth + 1)
sweeps, and the loop stops when a sweep changes nothing. Runs on CPU or GPU.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from derisk.planner._exact import TIE
from derisk.planner._problem import PlanningProblem
from derisk.planner._states import StateSpace

TARGET_CHUNK_ELEMENTS = 1 << 22  # pairs x levels per chunk: bounds device temporaries


def _x64():
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older jax

    return enable_x64()


def solve_jax(problem: PlanningProblem, space: StateSpace, progress=None):
    """Optimal values (S, L) float64, policy (S, L) int8 (-1 = stop), sweeps used."""
    S, L, n = space.size, problem.levels + 1, problem.n
    st, node = np.nonzero(space.avail)
    P = len(st)
    # Shapes are padded to powers of two so that similar problems share one compilation.
    S_pad = _pow2(S + 1)  # row S (and beyond) is a dummy state whose value stays 0
    chunk = _pow2(max(1, min(max(P, 1), TARGET_CHUNK_ELEMENTS // L)))
    chunk = min(chunk, _pow2(P))
    n_chunks = _pow2(-(-max(P, 1) // chunk))
    pad = n_chunks * chunk - P

    def padded(a, fill):
        return np.concatenate([a, np.full(pad, fill, dtype=a.dtype)])

    def dummy(a):  # -1 (no successor) -> row S, which always holds zeros
        return np.where(a < 0, S, a)

    K = _pow2(max(len(c) for c in problem.cost_units))
    n_pad = _pow2(n)
    cu = np.zeros((n_pad, K), dtype=np.int64)
    cq = np.zeros((n_pad, K))
    for i, (c, q) in enumerate(zip(problem.cost_units, problem.cost_probs, strict=True)):
        cu[i, : len(c)], cq[i, : len(c)] = c, q
    lo = np.zeros(n_pad, dtype=np.int64)
    lo[:n] = problem.min_cost
    reward = np.zeros(n_pad)
    reward[:n] = problem.reward
    arrays = dict(
        st=padded(st, S),
        node=padded(node, 0),
        ss=padded(dummy(space.succ_s[st, node]), S),
        sf=padded(dummy(space.succ_f[st, node]), S),
        sd=padded(dummy(space.succ_d[st, node]), S),
        p=padded(space.p[st, node], 0.0),
    )
    with _x64():
        dev = {k: jnp.asarray(v) for k, v in arrays.items()}
        consts = dict(
            cu=jnp.asarray(cu),
            cq=jnp.asarray(cq),
            lo=jnp.asarray(lo),
            reward=jnp.asarray(reward),
            price=jnp.asarray(float(problem.price_per_unit)),
            dummy=jnp.asarray(S),
            max_sweeps=jnp.asarray(int(space.untried.max()) + 2),
        )
        V, sweeps, policy = _run(dev, consts, S_pad=S_pad, L=L, chunk=chunk, n_chunks=n_chunks, K=K)
        V = np.asarray(jax.device_get(V))[:S]
        policy = np.asarray(jax.device_get(policy))[:S]
    if progress is not None:
        progress(S)
    return V, policy.astype(np.int8), int(sweeps)


def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


NO_ACTION = 1 << 30


@partial(jax.jit, static_argnames=("S_pad", "L", "chunk", "n_chunks", "K"))
def _run(dev, consts, *, S_pad, L, chunk, n_chunks, K):
    b = jnp.arange(L)

    def q_chunk(V, k):
        sl = lambda a: lax.dynamic_slice_in_dim(a, k * chunk, chunk)  # noqa: E731
        st, node, ss, sf, sd, p = (sl(dev[x]) for x in ("st", "node", "ss", "sf", "sd", "p"))
        R = consts["reward"][node]
        cont = p[:, None] * (R[:, None] + V[ss]) + (1 - p)[:, None] * V[sf]  # (C, L)
        vd0 = V[sd, 0]
        out = jnp.zeros((chunk, L), dtype=V.dtype)
        for j in range(K):
            c = consts["cu"][node, j]
            idx = b[None, :] - c[:, None]
            val = jnp.take_along_axis(cont, jnp.maximum(idx, 0), axis=1)
            val = val - consts["price"] * c[:, None]
            cut = vd0[:, None] - consts["price"] * b[None, :]
            out = out + consts["cq"][node, j][:, None] * jnp.where(idx >= 0, val, cut)
        out = jnp.where(b[None, :] >= consts["lo"][node][:, None], out, -jnp.inf)
        return st, node, out

    def sweep(V):
        def body(k, Vn):
            st, _, q = q_chunk(V, k)
            return Vn.at[st].max(q)

        Vn = lax.fori_loop(0, n_chunks, body, jnp.zeros_like(V))
        return Vn.at[consts["dummy"]].set(0.0)

    def cond(carry):
        _, changed, it = carry
        return changed & (it < consts["max_sweeps"])

    def step(carry):
        V, _, it = carry
        Vn = sweep(V)
        return Vn, jnp.any(Vn != V), it + 1

    V0 = jnp.zeros((S_pad, L), dtype=jnp.float64)
    V, _, sweeps = lax.while_loop(cond, step, (V0, jnp.array(True), jnp.array(0)))

    def pol_body(k, pol):
        st, node, q = q_chunk(V, k)
        v = V[st]
        cand = jnp.where((q >= v - TIE) & (v > TIE), node[:, None], NO_ACTION)
        return pol.at[st].min(cand)

    init = jnp.full((S_pad, L), NO_ACTION, dtype=dev["node"].dtype)
    pol = lax.fori_loop(0, n_chunks, pol_body, init)
    pol = jnp.where(pol == NO_ACTION, -1, pol)
    return V, sweeps, pol
