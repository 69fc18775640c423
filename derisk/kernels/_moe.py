"""The expert feed-forward with a custom VJP, and the routing glue around it."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from derisk.kernels._gmm import Tiling, _resolve, gmm, gmm_swiglu, tgmm
from derisk.kernels._metadata import group_offsets


def moe_ffn_reference(x, w_gate, w_up, w_down, group_sizes):
    """ragged_dot-based expert FFN; JAX differentiates it on its own."""
    h = gmm_swiglu(x, w_gate, w_up, group_sizes, impl="reference")
    return gmm(h, w_down, group_sizes, impl="reference")


def moe_ffn(
    x,
    w_gate,
    w_up,
    w_down,
    group_sizes,
    *,
    impl: str = "auto",
    tiling: Tiling | None = None,
    interpret: bool | None = None,
):
    """y = (silu(x w_gate[e]) * (x w_up[e])) w_down[e] for the rows of each expert e.

    x: [M, D] rows sorted by expert; w_gate, w_up: [E, D, F]; w_down: [E, F, D];
    group_sizes: [E] int. Rows past sum(group_sizes) come out as zeros. Differentiable:
    the Pallas path has a custom VJP built from the same kernels (dx by gmm against the
    transposed weights, dw by tgmm, a Triton kernel for both backends). impl: "auto",
    "pallas" (best available), "triton", "mosaic" or "reference" (see `gmm`).
    """
    backend = _resolve(impl)
    if backend == "reference":
        return moe_ffn_reference(x, w_gate, w_up, w_down, group_sizes)
    return _moe_pallas(x, w_gate, w_up, w_down, group_sizes, backend, tiling, interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _moe_pallas(x, w_gate, w_up, w_down, group_sizes, backend, tiling, interpret):
    kw = dict(impl=backend, tiling=tiling, interpret=interpret)
    h = gmm_swiglu(x, w_gate, w_up, group_sizes, **kw)
    return gmm(h, w_down, group_sizes, **kw)


def _moe_fwd(x, w_gate, w_up, w_down, group_sizes, backend, tiling, interpret):
    kw = dict(impl=backend, tiling=tiling, interpret=interpret)
    h = gmm_swiglu(x, w_gate, w_up, group_sizes, **kw)
    y = gmm(h, w_down, group_sizes, **kw)
    # Keep h (bf16, [M, F]); gate and up pre-activations are recomputed in the backward
    # pass rather than stored ([M, 2F] fp32 would dominate activation memory).
    return y, (x, w_gate, w_up, w_down, group_sizes, h)


def _moe_bwd(backend, tiling, interpret, res, dy):
    x, w_gate, w_up, w_down, gs, h = res
    kw = dict(impl=backend, tiling=tiling, interpret=interpret)
    dy = dy.astype(x.dtype)
    dh = gmm(dy, jnp.swapaxes(w_down, 1, 2), gs, **kw)  # [M, F]
    dw_down = tgmm(h, dy, gs, **kw)  # [E, F, D]
    g = gmm(x, w_gate, gs, **kw).astype(jnp.float32)
    u = gmm(x, w_up, gs, **kw).astype(jnp.float32)
    s = jax.nn.sigmoid(g)
    dh = dh.astype(jnp.float32)
    dg = (dh * u * s * (1 + g * (1 - s))).astype(x.dtype)  # d silu(g) = s (1 + g (1 - s))
    du = (dh * g * s).astype(x.dtype)
    dx = (
        gmm(dg, jnp.swapaxes(w_gate, 1, 2), gs, **kw).astype(jnp.float32)
        + gmm(du, jnp.swapaxes(w_up, 1, 2), gs, **kw).astype(jnp.float32)
    ).astype(x.dtype)
    dw_gate = tgmm(x, dg, gs, **kw)
    dw_up = tgmm(x, du, gs, **kw)
    return dx, dw_gate, dw_up, dw_down, None


_moe_pallas.defvjp(_moe_fwd, _moe_bwd)


def sort_by_expert(expert_index, num_experts: int):
    """Top-k assignments -> rows sorted by expert.

    Args:
        expert_index: [T, k] int, the experts each token is sent to.
    Returns:
        order: [T*k] positions into the flattened assignments, sorted by expert (stable);
        token: [T*k] the token of each sorted row (gather x[token] to build the input);
        group_sizes: [E] int32 rows per expert.
    """
    flat = expert_index.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    k = expert_index.shape[1]
    token = order // k
    group_sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    return order, token, group_sizes


def combine(y_sorted, order, token, weights, num_tokens: int):
    """Sorted expert outputs -> [T, D], each weighted by its router probability and summed."""
    w = weights.reshape(-1)[order].astype(jnp.float32)
    out = jnp.zeros((num_tokens, y_sorted.shape[1]), jnp.float32)
    return out.at[token].add(y_sorted.astype(jnp.float32) * w[:, None]).astype(y_sorted.dtype)


def route_top_k(logits, top_k: int, *, normalize: bool = True):
    """Softmax router: (weights [T, k], expert index [T, k]) of the k most probable experts."""
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k must be in [1, {logits.shape[-1]}], got {top_k}")
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, index = jax.lax.top_k(probs, top_k)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, index


def round_groups(probs, index, tile: int, *, normalize: bool = True):
    """Token rounding (SonicMoE's idea): each expert's row count rounded to the nearest
    multiple of `tile` (ties up), so that every kernel tile holds one expert's rows and no
    tile is cut by a group boundary. Rounding down drops that expert's lowest-scoring
    assignments; rounding up adds the highest-scoring tokens not yet routed to it.

    Args:
        probs: [T, E] router probabilities (softmax of the logits).
        index: [T, k] the top-k experts of each token (from `route_top_k`).
        tile: rows per tile (the kernel's bm), >= 1.
        normalize: weigh each row by probs / (sum of the token's top-k probs), as
            `route_top_k(normalize=True)` does, so kept assignments keep their weights.
    Returns:
        token: [R] the token of each row, rows sorted by expert (0 past the last group);
        weight: [R] float32 combine weight of each row (0 past the last group);
        group_sizes: [E] int32 rows per expert, multiples of `tile` (unless an expert
            would need more rows than there are tokens);
        with R = T k + E (tile // 2) rounded up to a tile: a static bound on the rows.
    """
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    T, E = probs.shape
    k = index.shape[1]
    probs = probs.astype(jnp.float32)
    assigned = jnp.zeros((T, E), bool).at[jnp.arange(T)[:, None], index].set(True)
    counts = assigned.sum(axis=0, dtype=jnp.int32)
    sizes = jnp.minimum((counts + tile // 2) // tile * tile, T).astype(jnp.int32)
    # Per expert, tokens ranked: its own assignments first (by probability), then the rest.
    rank = jnp.argsort(-jnp.where(assigned, 2.0 + probs, probs), axis=0, stable=True)  # [T, E]
    rows = -(-(T * k + E * (tile // 2)) // tile) * tile
    starts, ends = group_offsets(sizes)
    r = jnp.arange(rows, dtype=jnp.int32)
    expert = jnp.minimum(jnp.searchsorted(ends, r, side="right"), E - 1)
    valid = r < ends[-1]
    pos = jnp.clip(r - starts[expert], 0, T - 1)
    token = jnp.where(valid, rank[pos, expert], 0)
    w = probs[token, expert]
    if normalize:
        w = w / jnp.take_along_axis(probs, index, axis=1).sum(axis=1)[token]
    return token, jnp.where(valid, w, 0.0), sizes


def combine_rows(y_sorted, token, weight, num_tokens: int):
    """Rows -> [T, D]: sum over each token's rows of weight x row (rows of weight 0 add 0)."""
    out = jnp.zeros((num_tokens, y_sorted.shape[1]), jnp.float32)
    w = weight.astype(jnp.float32)[:, None]
    return out.at[token].add(y_sorted.astype(jnp.float32) * w).astype(y_sorted.dtype)
