"""Grouped matmuls for the MoE feed-forward: Pallas kernels and references.

Two Pallas backends behind one dispatch: the Triton backend here (`impl="triton"`, any
CUDA GPU, interpret mode on a CPU with every supported jax) and Mosaic GPU in
`_mosaic.py` (`impl="mosaic"`: Hopper, TMA + wgmma; interpret mode from jax 0.11).
`impl="pallas"` picks the best available (Triton; Mosaic on a Hopper GPU once opted in
with DERISK_PALLAS=mosaic, until a GPU run has checked it),
`impl="auto"` the Pallas path on a GPU and the reference elsewhere.

Three kernels, each beside a plain-JAX reference with the same signature:

- gmm(x[M,K], w[E,K,N], group_sizes[E]) -> [M,N]: rows sorted by group; rows at or
  past sum(group_sizes) are zeros (`jax.lax.ragged_dot` semantics).
- gmm_swiglu(x, w_gate[E,D,F], w_up[E,D,F], gs) -> silu(x w_gate) * (x w_up): gate
  and up in one pass, two fp32 accumulators, the activation in the epilogue, so the
  [M, 2F] intermediate never touches memory.
- tgmm(x[M,K], dy[M,N], gs) -> [E,K,N]: dw[e] = x[rows of e]^T dy[rows of e], the
  weight gradient.

Design (see ../shared/kernels-brief.md): a 1-D list of (tile, group) visits built in
jnp outside the kernel (`_metadata.py`) and passed as an ordinary int32 input, because
the Triton backend cannot scalar-prefetch; masked stores so that two visits sharing a
straddling tile never read-modify-write each other's rows.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from derisk.kernels import _mosaic
from derisk.kernels._metadata import group_offsets, num_visits, visit_metadata

IMPLS = ("auto", "pallas", "triton", "mosaic", "reference")
# max |err| / max |ref| allowed against the fp32 reference, by input dtype.
TOLERANCE = {
    jnp.dtype(jnp.bfloat16): 2e-2,
    jnp.dtype(jnp.float16): 1e-2,
    jnp.dtype(jnp.float32): 1e-5,
}


@dataclass(frozen=True, kw_only=True)
class Tiling:
    """Block sizes (powers of two, a Triton rule) and launch settings.

    For the Mosaic kernels num_stages is the pipeline depth (TMA copies in flight), group_m
    the width of the planar snake in visits, and num_warps is unused.
    """

    bm: int = 128
    bn: int = 128
    bk: int = 64
    num_warps: int = 8
    num_stages: int = 3
    # 0: a 2-D (visit, n-tile) grid. k >= 1: a 1-D grid in which k consecutive visits
    # sweep all n-tiles together, so their x tiles stay in L2 (Triton's "group-M" order).
    group_m: int = 0


CPU_TILING = Tiling(bm=16, bn=16, bk=16, num_warps=4, num_stages=1)  # interpret mode
CPU_MOSAIC_TILING = Tiling(bm=16, bn=16, bk=16, num_warps=4, num_stages=2)


def default_tiling(m: int, k: int, n: int, num_groups: int, *, fused: bool) -> Tiling:
    """Trace-time pick from the shapes, from the H100 runs in BENCHMARKS.md.

    bm = 64 when groups are small (less straddling waste); the group-8 swizzle paid
    8-18% wherever experts have hundreds of rows, and cost 9% in the decode-like case
    (a few dozen rows per expert, weight-streaming), so it is off there.
    """
    if jax.default_backend() != "gpu":
        return CPU_TILING
    rows_per_group = m / max(num_groups, 1)
    bm = 64 if rows_per_group < 512 else 128
    group_m = 8 if rows_per_group >= 128 else 0
    return Tiling(bm=bm, bn=128, bk=64, num_warps=8, num_stages=3, group_m=group_m)


def default_mosaic_tiling(
    m: int, k: int, n: int, num_groups: int, *, fused: bool, on_gpu: bool | None = None
) -> Tiling:
    """Trace-time pick for the Mosaic kernels (not yet tuned on a GPU: see BENCHMARKS.md).

    One warpgroup holds the fp32 accumulators in registers: bm x bn / 128 registers a
    thread each, so the fused kernel's two accumulators take bm x bn = 128 x 64 (or
    64 x 128), 128 registers in all, like the single 128 x 128 of gmm. Four pipeline
    stages of bk = 64 fit shared memory (128 KB of the 228). on_gpu: the GPU pick even
    on a CPU (None: whether the default backend is a GPU).
    """
    if not (jax.default_backend() == "gpu" if on_gpu is None else on_gpu):
        return CPU_MOSAIC_TILING
    rows_per_group = m / max(num_groups, 1)
    bm = 64 if rows_per_group < 512 else 128
    bn = 64 if fused and bm == 128 else 128
    group_m = 8 if rows_per_group >= 128 else 1
    return Tiling(bm=bm, bn=bn, bk=64, num_warps=4, num_stages=4, group_m=group_m)


def _fit(t: Tiling, k: int, n: int) -> Tiling:
    """Shrink blocks for small K/N (powers of two, at least 16 for tl.dot)."""

    def cap(b, d):
        return max(16, min(b, pl.next_power_of_2(d)))

    return Tiling(
        bm=t.bm,
        bn=cap(t.bn, n),
        bk=cap(t.bk, k),
        num_warps=t.num_warps,
        num_stages=t.num_stages,
        group_m=t.group_m,
    )


def is_hopper() -> bool:
    """Is the default device a Hopper GPU (compute capability 9.x: wgmma and TMA)?"""
    dev = jax.devices()[0]
    if dev.platform != "gpu":
        return False
    cc = str(getattr(dev, "compute_capability", ""))
    return cc.startswith("9.") or any(h in dev.device_kind for h in ("H100", "H200", "H800"))


def best_pallas() -> str:
    """The Pallas backend `impl="pallas"` runs: Triton, or Mosaic GPU on a Hopper GPU when
    `DERISK_PALLAS=mosaic` is set.

    The Mosaic kernels have run only in interpret mode so far (the session that wrote them
    had no GPU); the Triton ones were measured on an H100. Until a GPU run checks the
    Mosaic kernels against their reference (`benchmarks/gpu_issue15.sh`), they are opt-in.
    """
    if os.environ.get("DERISK_PALLAS") == "mosaic" and _mosaic.HAS_MOSAIC_GPU and is_hopper():
        return "mosaic"
    return "triton"


def _resolve(impl: str) -> str:
    """impl -> "triton", "mosaic" or "reference"."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return best_pallas() if jax.default_backend() == "gpu" else "reference"
    if impl == "pallas":
        return best_pallas()
    if impl == "mosaic" and not _mosaic.HAS_MOSAIC_GPU:  # pragma: no cover
        raise ValueError(f"impl='mosaic' needs Mosaic GPU, missing from jax {jax.__version__}")
    return impl


def _check(x, ws, group_sizes, name):
    if x.ndim != 2:
        raise ValueError(f"{name}: x must be 2-D [M, K], got shape {x.shape}")
    for w in ws:
        if w.ndim != 3 or w.shape[1] != x.shape[1]:
            raise ValueError(f"{name}: weights must be [E, {x.shape[1]}, N], got {w.shape}")
        if w.dtype != x.dtype:
            raise TypeError(f"{name}: x is {x.dtype} but a weight is {w.dtype}")
    if ws[0].shape != ws[-1].shape:
        raise ValueError(f"{name}: gate and up weights differ: {ws[0].shape} vs {ws[-1].shape}")
    if group_sizes.ndim != 1 or group_sizes.shape[0] != ws[0].shape[0]:
        raise ValueError(
            f"{name}: group_sizes must be [E={ws[0].shape[0]}], got {group_sizes.shape}"
        )
    if not jnp.issubdtype(group_sizes.dtype, jnp.integer):
        raise TypeError(f"{name}: group_sizes must be integer, got {group_sizes.dtype}")
    for a in (x, *ws):
        if a.size >= 2**31:
            raise ValueError(
                f"{name}: an operand has {a.size} elements; the Triton backend "
                "indexes in int32, so shard the experts below 2**31 elements"
            )


def _precision(dtype):
    # fp32 inputs: full fp32 products (Triton would otherwise use tf32).
    return lax.Precision.HIGHEST if dtype == jnp.float32 else None


def _pad_to(a, axis, multiple):
    size = a.shape[axis]
    extra = (-size) % multiple
    if not extra:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, extra)
    return jnp.pad(a, pad)


# --------------------------------------------------------------------------- references


def gmm_reference(x, w, group_sizes, *, out_dtype=None):
    """lax.ragged_dot with fp32 accumulation."""
    out = lax.ragged_dot(
        x,
        w,
        group_sizes.astype(jnp.int32),
        preferred_element_type=jnp.float32,
        precision=_precision(x.dtype),
    )
    return out.astype(out_dtype or x.dtype)


def gmm_swiglu_reference(x, w_gate, w_up, group_sizes):
    gs = group_sizes.astype(jnp.int32)
    g = lax.ragged_dot(
        x, w_gate, gs, preferred_element_type=jnp.float32, precision=_precision(x.dtype)
    )
    u = lax.ragged_dot(
        x, w_up, gs, preferred_element_type=jnp.float32, precision=_precision(x.dtype)
    )
    return (jax.nn.silu(g) * u).astype(x.dtype)


def tgmm_reference(x, dy, group_sizes, *, out_dtype=None):
    """dw[e] = x[rows of e]^T dy[rows of e], by masking (O(E M K N): small sizes only)."""
    starts, ends = group_offsets(group_sizes)
    rows = jnp.arange(x.shape[0])
    mask = (rows[None, :] >= starts[:, None]) & (rows[None, :] < ends[:, None])  # (E, M)
    xm = jnp.where(mask[:, :, None], x[None].astype(jnp.float32), 0.0)
    out = jnp.einsum("emk,mn->ekn", xm, dy.astype(jnp.float32), precision=lax.Precision.HIGHEST)
    return out.astype(out_dtype or x.dtype)


# --------------------------------------------------------------------------- kernels


def _swizzle(pid, *, visits, n_tiles, group_m):
    """1-D program id -> (visit, n-tile), group_m visits at a time across all n-tiles."""
    width = group_m * n_tiles
    first = (pid // width) * group_m
    size = jnp.minimum(visits - first, group_m)
    return first + (pid % width) % size, (pid % width) // size


def _gmm_kernel(
    meta_ref,
    x_ref,
    *refs,
    bm,
    bn,
    bk,
    k_steps,
    num_groups,
    fused,
    precision,
    visits,
    n_tiles,
    group_m,
):
    if fused:
        wg_ref, wu_ref, o_ref = refs
    else:
        wg_ref, o_ref = refs
        wu_ref = None
    if group_m:
        v, j = _swizzle(pl.program_id(0), visits=visits, n_tiles=n_tiles, group_m=group_m)
    else:
        v, j = pl.program_id(0), pl.program_id(1)
    tile, group, lo, hi = meta_ref[0, v], meta_ref[1, v], meta_ref[2, v], meta_ref[3, v]
    row0 = pl.multiple_of(tile * bm, bm)
    n0 = pl.multiple_of(j * bn, bn)
    rows = row0 + jnp.arange(bm, dtype=jnp.int32)
    mask = jnp.broadcast_to(((rows >= lo) & (rows < hi))[:, None], (bm, bn))
    out = o_ref.at[pl.ds(row0, bm), pl.ds(n0, bn)]

    @pl.when((lo < hi) & (group < num_groups))
    def _compute():
        def body(k, accs):
            k0 = pl.multiple_of(k * bk, bk)
            xt = x_ref[pl.ds(row0, bm), pl.ds(k0, bk)]
            new = [
                accs[0]
                + jnp.dot(
                    xt,
                    wg_ref[group, pl.ds(k0, bk), pl.ds(n0, bn)],
                    preferred_element_type=jnp.float32,
                    precision=precision,
                )
            ]
            if fused:
                new.append(
                    accs[1]
                    + jnp.dot(
                        xt,
                        wu_ref[group, pl.ds(k0, bk), pl.ds(n0, bn)],
                        preferred_element_type=jnp.float32,
                        precision=precision,
                    )
                )
            return tuple(new)

        init = tuple(jnp.zeros((bm, bn), jnp.float32) for _ in range(2 if fused else 1))
        accs = lax.fori_loop(0, k_steps, body, init)
        if fused:
            g, u = accs
            res = g * jax.nn.sigmoid(g) * u  # SwiGLU epilogue in fp32
        else:
            res = accs[0]
        plgpu.store(out, res.astype(o_ref.dtype), mask=mask)

    @pl.when((lo < hi) & (group == num_groups))
    def _zeros():  # rows past sum(group_sizes)
        plgpu.store(out, jnp.zeros((bm, bn), o_ref.dtype), mask=mask)


def _tgmm_kernel(off_ref, x_ref, dy_ref, o_ref, *, bm, bk, bn, precision):
    e = pl.program_id(0)
    k0 = pl.multiple_of(pl.program_id(1) * bk, bk)
    n0 = pl.multiple_of(pl.program_id(2) * bn, bn)
    start, end = off_ref[0, e], off_ref[1, e]
    first = start // bm
    # int32 arithmetic, not jnp.where: an i1 loop bound fails to lower on the GPU.
    steps = jnp.maximum(pl.cdiv(end, bm) - first, 0) * (end > start).astype(jnp.int32)

    def body(t, acc):
        r0 = pl.multiple_of((first + t) * bm, bm)
        rows = r0 + jnp.arange(bm, dtype=jnp.int32)
        keep = (rows >= start) & (rows < end)
        xt = plgpu.load(
            x_ref.at[pl.ds(r0, bm), pl.ds(k0, bk)],
            mask=jnp.broadcast_to(keep[:, None], (bm, bk)),
            other=0,
        )
        dyt = plgpu.load(
            dy_ref.at[pl.ds(r0, bm), pl.ds(n0, bn)],
            mask=jnp.broadcast_to(keep[:, None], (bm, bn)),
            other=0,
        )
        return acc + jnp.dot(xt.T, dyt, preferred_element_type=jnp.float32, precision=precision)

    acc = lax.fori_loop(0, steps, body, jnp.zeros((bk, bn), jnp.float32))
    o_ref[e, pl.ds(k0, bk), pl.ds(n0, bn)] = acc.astype(o_ref.dtype)


def _interpret(interpret):
    return jax.default_backend() != "gpu" if interpret is None else interpret


@functools.partial(jax.jit, static_argnames=("tiling", "interpret", "fused"))
def _gmm_pallas(x, ws, group_sizes, *, tiling: Tiling, interpret: bool, fused: bool):
    m, k = x.shape
    E, _, n = ws[0].shape
    t = tiling
    xp = _pad_to(_pad_to(x, 0, t.bm), 1, t.bk)
    # Weights padded here only when K or N is not a block multiple (never for the
    # benchmark shapes); a training loop should keep them padded once.
    wp = tuple(_pad_to(_pad_to(w, 1, t.bk), 2, t.bn) for w in ws)
    mp, kp = xp.shape
    np_ = wp[0].shape[2]
    meta = visit_metadata(group_sizes, mp, t.bm)
    kernel = functools.partial(
        _gmm_kernel,
        bm=t.bm,
        bn=t.bn,
        bk=t.bk,
        k_steps=kp // t.bk,
        num_groups=E,
        fused=fused,
        precision=_precision(x.dtype),
        visits=num_visits(mp, t.bm, E),
        n_tiles=np_ // t.bn,
        group_m=t.group_m,
    )
    visits, n_tiles = num_visits(mp, t.bm, E), np_ // t.bn
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((mp, np_), x.dtype),
        grid=(visits * n_tiles,) if t.group_m else (visits, n_tiles),
        in_specs=[pl.no_block_spec] * (2 + len(wp)),
        out_specs=pl.no_block_spec,
        compiler_params=plgpu.CompilerParams(num_warps=t.num_warps, num_stages=t.num_stages),
        interpret=interpret,
        name="gmm_swiglu" if fused else "gmm",
    )(meta, xp, *wp)
    return out[:m, :n]


@functools.partial(jax.jit, static_argnames=("tiling", "interpret", "num_groups"))
def _tgmm_pallas(x, dy, group_sizes, *, num_groups, tiling: Tiling, interpret: bool):
    m, k = x.shape
    n = dy.shape[1]
    t = tiling
    xp = _pad_to(_pad_to(x, 0, t.bm), 1, t.bk)
    dyp = _pad_to(_pad_to(dy, 0, t.bm), 1, t.bn)
    starts, ends = group_offsets(group_sizes)
    off = jnp.stack([jnp.minimum(starts, m), jnp.minimum(ends, m)]).astype(jnp.int32)
    kernel = functools.partial(
        _tgmm_kernel, bm=t.bm, bk=t.bk, bn=t.bn, precision=_precision(x.dtype)
    )
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((num_groups, xp.shape[1], dyp.shape[1]), x.dtype),
        grid=(num_groups, xp.shape[1] // t.bk, dyp.shape[1] // t.bn),
        in_specs=[pl.no_block_spec] * 3,
        out_specs=pl.no_block_spec,
        compiler_params=plgpu.CompilerParams(num_warps=t.num_warps, num_stages=t.num_stages),
        interpret=interpret,
        name="tgmm",
    )(off, xp, dyp)
    return out[:, :k, :n]


# --------------------------------------------------------------------------- public API


def gmm(
    x,
    w,
    group_sizes,
    *,
    impl: str = "auto",
    tiling: Tiling | None = None,
    interpret: bool | None = None,
):
    """Grouped matmul: out[rows of group e] = x[rows of e] @ w[e]; zeros past sum(gs).

    >>> import jax.numpy as jnp
    >>> x = jnp.ones((4, 16)); w = jnp.ones((2, 16, 16))
    >>> gmm(x, w, jnp.array([1, 2]), impl="reference")[:, 0].tolist()
    [16.0, 16.0, 16.0, 0.0]
    """
    _check(x, (w,), group_sizes, "gmm")
    backend = _resolve(impl)
    if backend == "reference":
        return gmm_reference(x, w, group_sizes)
    if backend == "mosaic":
        t = _fit(
            tiling or default_mosaic_tiling(*x.shape, w.shape[2], w.shape[0], fused=False),
            x.shape[1],
            w.shape[2],
        )
        return _mosaic.settle(
            _mosaic.gmm_mosaic(
                x, (w,), group_sizes, tiling=t, interpret=_interpret(interpret), fused=False
            )
        )
    t = _fit(
        tiling or default_tiling(*x.shape, w.shape[2], w.shape[0], fused=False),
        x.shape[1],
        w.shape[2],
    )
    return _gmm_pallas(x, (w,), group_sizes, tiling=t, interpret=_interpret(interpret), fused=False)


def gmm_swiglu(
    x,
    w_gate,
    w_up,
    group_sizes,
    *,
    impl: str = "auto",
    tiling: Tiling | None = None,
    interpret: bool | None = None,
):
    """silu(x w_gate[e]) * (x w_up[e]) per group, in one pass (fp32 epilogue)."""
    _check(x, (w_gate, w_up), group_sizes, "gmm_swiglu")
    backend = _resolve(impl)
    if backend == "reference":
        return gmm_swiglu_reference(x, w_gate, w_up, group_sizes)
    if backend == "mosaic":
        t = _fit(
            tiling or default_mosaic_tiling(*x.shape, w_gate.shape[2], w_gate.shape[0], fused=True),
            x.shape[1],
            w_gate.shape[2],
        )
        return _mosaic.settle(
            _mosaic.gmm_mosaic(
                x,
                (w_gate, w_up),
                group_sizes,
                tiling=t,
                interpret=_interpret(interpret),
                fused=True,
            )
        )
    t = _fit(
        tiling or default_tiling(*x.shape, w_gate.shape[2], w_gate.shape[0], fused=True),
        x.shape[1],
        w_gate.shape[2],
    )
    return _gmm_pallas(
        x, (w_gate, w_up), group_sizes, tiling=t, interpret=_interpret(interpret), fused=True
    )


def tgmm(
    x,
    dy,
    group_sizes,
    *,
    impl: str = "auto",
    tiling: Tiling | None = None,
    interpret: bool | None = None,
):
    """Weight gradient of gmm: dw[e] = x[rows of e]^T dy[rows of e], shape [E, K, N].

    One kernel for both Pallas backends: the Triton one (no Mosaic version yet).
    """
    if x.ndim != 2 or dy.ndim != 2 or x.shape[0] != dy.shape[0]:
        raise ValueError(f"tgmm: x [M,K] and dy [M,N] must share M, got {x.shape}, {dy.shape}")
    backend = _resolve(impl)
    if backend == "reference":
        return tgmm_reference(x, dy, group_sizes)
    t = _fit(
        tiling
        or default_tiling(x.shape[0], x.shape[1], dy.shape[1], group_sizes.shape[0], fused=False),
        x.shape[1],
        dy.shape[1],
    )
    t = Tiling(
        bm=min(t.bm, 64),
        bn=min(t.bn, 128),
        bk=min(t.bk, 128) if t.bk >= 64 else t.bk,
        num_warps=t.num_warps,
        num_stages=t.num_stages,
    )
    return _tgmm_pallas(
        x,
        dy,
        group_sizes,
        num_groups=group_sizes.shape[0],
        tiling=t,
        interpret=_interpret(interpret),
    )
