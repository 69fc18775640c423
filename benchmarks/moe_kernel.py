"""MoE expert-FFN benchmark on one GPU: correctness, then timing, ours beside the field.

Every variant computes the whole expert FFN y = (silu(x Wg[e]) * (x Wu[e])) Wd[e] on the
same bf16 inputs, rows sorted by expert:

- ours_triton / ours_mosaic: derisk.kernels.moe_ffn(impl="triton" / "mosaic") (fused
  gate+up+SwiGLU kernel, then the down grouped matmul; custom VJP for the backward);
  ours_triton_<tiling>: the same with a narrower tile (decode-like shapes).
- ragged_dot: jax.lax.ragged_dot on x [Wg|Wu], silu*mul in XLA, ragged_dot for down.
- capacity: capacity-padded einsum, C = the largest group (dropless, same semantics),
  rows gathered to [E, C, D] and scattered back; "capacity_core" the einsums alone.
- mgpu: JAX's own Mosaic-GPU ragged_dot_mgpu, XLA silu*mul between.
- torch_gmm: PyTorch's grouped GEMM (torch._grouped_mm, the CUTLASS path torchtitan uses)
  with PyTorch's SwiGLU between the projections; autograd for the backward.
- scattermoe: ScatterMoE's Triton kernels (parallel_linear, grouped in and out) with
  PyTorch's SwiGLU between; its source is read from --scattermoe DIR at run time (the GPU
  machine has no internet, and its code is not part of this repository).
- dense3: three XLA dense matmuls with the FFN's FLOPs (the ceiling).

Before a variant is timed, its output is checked against the reference (ragged_dot, or
the capacity einsum where ragged_dot would take seconds), and for forward+backward its
gradients against the capacity einsum's autodiff; a variant that fails is not timed.
Timing (../shared/kernels-brief.md section 7): 3 warm-ups, then 5 batches of back-to-back
calls (10, or fewer when a call takes over 5 ms), each ended by a device sync; the median
per call. Results are written after every row, so a run cut short keeps what it measured.

    PYTHONPATH=. python benchmarks/moe_kernel.py --out DIR [--scattermoe build/peers]
    PYTHONPATH=. python benchmarks/moe_kernel.py --check     # correctness only
    PYTHONPATH=. python benchmarks/moe_kernel.py --smoke     # CPU, interpret mode, tiny
"""

from __future__ import annotations

import os

# PyTorch shares the GPU: JAX must not take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from derisk.kernels import TOLERANCE, Tiling, gmm, gmm_swiglu, moe_ffn, tgmm  # noqa: E402
from derisk.kernels import _mosaic as mosaic_module  # noqa: E402

SHAPES = {
    # name: (M rows = tokens x top-k, E, D, F)
    "S1": (16384, 8, 1024, 4096),
    "S2": (16384, 64, 2048, 1024),
    "S3": (8192, 8, 4096, 14336),  # Mixtral-like
    "decode": (512, 8, 4096, 14336),
    "fine": (32768, 128, 2048, 512),
    # SonicMoE's configurations (arXiv 2512.14080, H100): d_model 768-1536 with d_ff 1024,
    # 32 experts, top-2; d_model 4096 with 128 experts, top-8 (its README's example,
    # 32768 tokens); fine-grained, 128 experts with d_ff 256. T = tokens, M = T x top-k.
    "sonic_d1536": (65536, 32, 1536, 1024),  # T 32768, top-2
    "sonic_d4096": (262144, 128, 4096, 1024),  # T 32768, top-8
    "sonic_fine": (131072, 128, 1536, 256),  # T 16384, top-8
}
# (shape, routing, forward+backward too?) in the order they are run (most wanted first:
# a run cut short by --budget-s keeps the rows it finished).
PLAN = [
    ("S1", "uniform", True),
    ("S3", "uniform", True),
    ("decode", "uniform", False),
    ("S2", "dirichlet", True),
    ("S2", "dirichlet+round128", False),
    ("fine", "uniform", False),
    ("fine", "uniform+round128", False),
    ("sonic_d1536", "uniform", True),
    ("sonic_fine", "uniform", True),
    ("sonic_d4096", "uniform", True),
    ("S1", "dirichlet", False),
    ("S1", "half", False),
    ("S2", "uniform", False),
]
# Narrower tiles tried on the decode-like shape (weight-streaming: t ~ 64 rows per expert).
DECODE_TILINGS = {
    "bm16": Tiling(bm=16, bn=128, bk=64, num_warps=4, num_stages=4),
    "bm32": Tiling(bm=32, bn=128, bk=64, num_warps=4, num_stages=4),
    "bm64_bn64": Tiling(bm=64, bn=64, bk=64, num_warps=4, num_stages=4),
}
# bm = 64 for 64-128 experts (t ~ 256 rows per expert: less straddling waste).
WIDE_TILINGS = {
    "bm64_bn128": Tiling(bm=64, bn=128, bk=64, num_warps=8, num_stages=3, group_m=8),
    "bm64_bn256": Tiling(bm=64, bn=256, bk=64, num_warps=8, num_stages=3, group_m=8),
}
SMOKE_TILING = Tiling(bm=16, bn=16, bk=16, num_warps=4, num_stages=2)


def group_sizes_for(routing: str, m: int, e: int, rng) -> np.ndarray:
    """Rows per expert summing to m. "NAME+roundT": NAME's sizes rounded to multiples of T
    (token rounding in the router), then nudged by T at a time to sum to m again."""
    if "+round" in routing:
        base, tile = routing.split("+round")
        tile = int(tile)
        sizes = np.round(group_sizes_for(base, m, e, rng) / tile).astype(np.int64) * tile
        while sizes.sum() > m:
            sizes[np.argmax(sizes)] -= tile
        while sizes.sum() + tile <= m:
            sizes[np.argmin(sizes)] += tile
        sizes[np.argmin(sizes)] += m - sizes.sum()  # m not a multiple of the tile
        return sizes.astype(np.int32)
    if routing == "uniform":
        p = np.full(e, 1 / e)
    elif routing == "dirichlet":
        p = rng.dirichlet(np.full(e, 0.3))
    elif routing == "half":
        p = np.full(e, 0.5 / (e - 1))
        p[rng.integers(e)] = 0.5
    elif routing == "empty25":
        p = rng.dirichlet(np.ones(e))
        p[rng.choice(e, e // 4, replace=False)] = 0
        p /= p.sum()
    else:
        raise ValueError(routing)
    return rng.multinomial(m, p).astype(np.int32)


def make_inputs(m, e, d, f, seed=0, dtype=jnp.bfloat16):
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    x = jax.random.normal(k[0], (m, d), jnp.float32).astype(dtype)
    wg = (jax.random.normal(k[1], (e, d, f), jnp.float32) / np.sqrt(d)).astype(dtype)
    wu = (jax.random.normal(k[2], (e, d, f), jnp.float32) / np.sqrt(d)).astype(dtype)
    wd = (jax.random.normal(k[3], (e, f, d), jnp.float32) / np.sqrt(f)).astype(dtype)
    dy = jax.random.normal(k[4], (m, d), jnp.float32).astype(dtype)
    return x, wg, wu, wd, dy


# ------------------------------------------------------------------ JAX variants


def ffn_ragged(x, wgu, wd, gs):
    f = wd.shape[1]
    gu = jax.lax.ragged_dot(x, wgu, gs, preferred_element_type=jnp.float32)
    h = (jax.nn.silu(gu[:, :f]) * gu[:, f:]).astype(x.dtype)
    return jax.lax.ragged_dot(h, wd, gs, preferred_element_type=jnp.float32).astype(x.dtype)


def capacity_index(gs, m, cap):
    """[E, C] row ids (m = padding row) of each expert's rows, from group sizes."""
    starts = jnp.cumsum(gs) - gs
    c = jnp.arange(cap)
    return jnp.where(c[None, :] < gs[:, None], starts[:, None] + c[None, :], m)


def ffn_capacity(x, wg, wu, wd, gs, *, cap):
    m = x.shape[0]
    idx = capacity_index(gs, m, cap)
    xp = jnp.concatenate([x, jnp.zeros((1, x.shape[1]), x.dtype)])
    y = capacity_core(xp[idx], wg, wu, wd)  # [E, C, D]
    return jnp.zeros((m + 1, x.shape[1]), x.dtype).at[idx].set(y)[:m]


def capacity_core(xc, wg, wu, wd):
    g = jnp.einsum("ecd,edf->ecf", xc, wg, preferred_element_type=jnp.float32)
    u = jnp.einsum("ecd,edf->ecf", xc, wu, preferred_element_type=jnp.float32)
    h = (jax.nn.silu(g) * u).astype(xc.dtype)
    return jnp.einsum("ecf,efd->ecd", h, wd, preferred_element_type=jnp.float32).astype(xc.dtype)


def dense3(x, w1, w2, h, w3):
    """The ceiling: three dense matmuls with the FFN's FLOPs and no activation."""
    a = jnp.dot(x, w1, preferred_element_type=jnp.float32).astype(x.dtype)
    b = jnp.dot(x, w2, preferred_element_type=jnp.float32).astype(x.dtype)
    c = jnp.dot(h, w3, preferred_element_type=jnp.float32).astype(x.dtype)
    return a, b, c


def mgpu_ffn():
    from jax.experimental.pallas.ops.gpu import ragged_dot_mgpu as rdm

    kw = dict(block_m=128, block_n=128, block_k=64, max_concurrent_steps=4, grid_block_n=1)

    def ffn(x, wgu, wd, gs):
        f = wd.shape[1]
        gu = rdm.ragged_dot(x, wgu, group_sizes=gs, **kw).astype(jnp.float32)
        h = (jax.nn.silu(gu[:, :f]) * gu[:, f:]).astype(x.dtype)
        return rdm.ragged_dot(h, wd, group_sizes=gs, **kw)

    return ffn


# ------------------------------------------------------------------ PyTorch peers


def load_torch():
    """torch, or None where it is missing (the CPU smoke run)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def load_scattermoe(path):
    """ScatterMoE's parallel_linear from a source checkout (a folder holding `scattermoe/`)."""
    if not path:
        raise RuntimeError("not run: pass --scattermoe DIR (a folder holding scattermoe/)")
    sys.path.insert(0, os.path.abspath(path))
    from scattermoe.parallel_experts import parallel_linear

    return parallel_linear


def to_torch(torch, a):
    return torch.from_dlpack(a)


def to_jax(torch, t):
    if t.device.type == "cuda":
        torch.cuda.synchronize()
    return jax.dlpack.from_dlpack(t.contiguous())


def torch_gmm_ffn(torch, x, wgu, wd, offs):
    """torch._grouped_mm for gate|up, PyTorch's SwiGLU, torch._grouped_mm for down."""
    f = wd.shape[1]
    gu = torch._grouped_mm(x, wgu, offs=offs)
    h = torch.nn.functional.silu(gu[:, :f]) * gu[:, f:]
    return torch._grouped_mm(h, wd, offs=offs)


def scatter_ffn(torch, parallel_linear, x, wgu, wd, meta):
    expert_of_row, rows, ends = meta
    f = wd.shape[1]
    kw = dict(grouped_in=True, grouped_out=True)
    gu = parallel_linear(x, wgu, 1, expert_of_row, rows, ends, **kw)
    h = torch.nn.functional.silu(gu[:, :f]) * gu[:, f:]
    return parallel_linear(h, wd, 1, expert_of_row, rows, ends, **kw)


# ------------------------------------------------------------------ timing and checks


def jax_sync(out):
    jax.block_until_ready(out)


def bench(fn, args, sync=jax_sync, *, warmup=3, batches=5, per_batch=10):
    """Median milliseconds per call (batches of back-to-back calls, each ended by sync)."""
    for _ in range(warmup):
        out = fn(*args)
        sync(out)
    t0 = time.perf_counter()
    sync(fn(*args))
    one = time.perf_counter() - t0
    n = max(1, min(per_batch, int(0.05 / max(one, 1e-9))))  # ~50 ms batches at most
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(n):
            out = fn(*args)
        sync(out)
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times) * 1e3


def rel_err(a, b):
    """max |a - b| / max |b|, computed on the device (the arrays may be gigabytes)."""
    a = jnp.asarray(a).astype(jnp.float32)
    b = jnp.asarray(b).astype(jnp.float32)
    if not bool(jnp.isfinite(a).all()):
        return float("inf")
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))


TOL = TOLERANCE[jnp.dtype(jnp.bfloat16)]  # forward; gradients get twice this


def check(m, e, d, f, routing, *, impl="triton", seed=0, tiling=None, interpret=None):
    """Every kernel of one backend against the ragged_dot reference (fp32 accumulation)."""
    rng = np.random.default_rng(seed)
    gs = jnp.asarray(group_sizes_for(routing, m, e, rng))
    x, wg, wu, wd, dy = make_inputs(m, e, d, f, seed)
    kw = dict(impl=impl, tiling=tiling, interpret=interpret)
    res = {"impl": impl}
    res["gmm"] = rel_err(gmm(x, wg, gs, **kw), gmm(x, wg, gs, impl="reference"))
    res["gmm_swiglu"] = rel_err(
        gmm_swiglu(x, wg, wu, gs, **kw), gmm_swiglu(x, wg, wu, gs, impl="reference")
    )
    h = gmm_swiglu(x, wg, wu, gs, impl="reference")
    res["tgmm"] = rel_err(tgmm(h, dy, gs, **kw), tgmm(h, dy, gs, impl="reference"))
    res["moe_ffn"] = rel_err(
        moe_ffn(x, wg, wu, wd, gs, **kw), moe_ffn(x, wg, wu, wd, gs, impl="reference")
    )

    def loss(impl_):
        def f_(*a):
            y = moe_ffn(*a, gs, impl=impl_, tiling=tiling, interpret=interpret)
            return jnp.sum(y.astype(jnp.float32) * dy.astype(jnp.float32))

        return f_

    gp = jax.grad(loss(impl), argnums=(0, 1, 2, 3))(x, wg, wu, wd)
    gr = jax.grad(loss("reference"), argnums=(0, 1, 2, 3))(x, wg, wu, wd)
    for name, a, b in zip(("dx", "dwg", "dwu", "dwd"), gp, gr, strict=True):
        res[name] = rel_err(a, b)
    res["ok"] = all(
        v < TOL * (2 if k.startswith("d") else 1) for k, v in res.items() if isinstance(v, float)
    )
    return res


class Row:
    """One (shape, routing) row: variants checked, then timed, results in a dict."""

    def __init__(self, row, deadline, per_batch=10):
        self.row = row
        self.deadline = deadline
        self.per_batch = per_batch

    def run(self, key, make, ref=None, sync=jax_sync, tol=TOL, timed=True):
        """make() -> (fn, args, to_jax_outputs); check against ref, then time."""
        if time.time() > self.deadline:
            self.row[f"{key}_error"] = "skipped: out of the time budget"
            return
        try:
            fn, args, outputs = make()
            if ref is not None:
                out = fn(*args)
                sync(out)  # interpret mode: nothing may be dispatched behind a running kernel
                got = outputs(out)
                errs = [rel_err(a, b) for a, b in zip(got, ref, strict=True)]
                self.row[f"{key}_err"] = max(errs)
                if not max(errs) < tol:
                    self.row[f"{key}_error"] = f"wrong result: rel err {max(errs):.3g}"
                    return
            if timed:
                self.row[f"{key}_ms"] = bench(fn, args, sync, per_batch=self.per_batch)
        except Exception as exc:  # noqa: BLE001 - report it, keep benchmarking
            self.row[f"{key}_error"] = repr(exc)[:300]


def run_shape(name, routing, *, seed=0, fwd_bwd=True, deadline=float("inf"), opts=None):
    opts = opts or {}
    m, e, d, f = opts.get("shapes", SHAPES)[name]
    interpret = opts.get("interpret")
    tiling = opts.get("tiling")
    rng = np.random.default_rng(seed)
    gs_np = group_sizes_for(routing, m, e, rng)
    gs = jnp.asarray(gs_np)
    cap = int(-(-gs_np.max() // 128) * 128)
    x, wg, wu, wd, dy = make_inputs(m, e, d, f, seed)
    wgu = jnp.concatenate([wg, wu], axis=2)
    flops = 6 * m * d * f
    row = {
        "shape": name,
        "M": m,
        "E": e,
        "D": d,
        "F": f,
        "routing": routing,
        "max_group": int(gs_np.max()),
        "capacity": cap,
        "gflop": flops / 1e9,
    }
    R = Row(row, deadline, per_batch=1 if interpret else 10)
    ragged_ok = e * flops < 3e13  # ragged_dot does E times the work: skip it where it takes s
    # References: the forward by ragged_dot (or the capacity einsum, dropless, where
    # ragged_dot is too slow); gradients by autodiff of the capacity einsum.
    cap_fn = jax.jit(functools.partial(ffn_capacity, cap=cap))
    ref = (jax.jit(ffn_ragged)(x, wgu, wd, gs) if ragged_ok else cap_fn(x, wg, wu, wd, gs),)
    jax.block_until_ready(ref)
    ident = lambda out: (out,)  # noqa: E731
    impls = opts.get("impls", ("triton", "mosaic"))

    def ours(impl, t=None):
        fn = jax.jit(functools.partial(moe_ffn, impl=impl, tiling=t, interpret=interpret))
        return lambda: (fn, (x, wg, wu, wd, gs), ident)

    for impl in impls:
        R.run(f"ours_{impl}", ours(impl, tiling), ref)
    extra = DECODE_TILINGS if name == "decode" else WIDE_TILINGS if e >= 64 else {}
    if not opts.get("smoke"):
        for tname, t in extra.items():
            R.run(f"ours_triton_{tname}", ours("triton", t), ref)
    if ragged_ok:
        R.run("ragged_dot", lambda: (jax.jit(ffn_ragged), (x, wgu, wd, gs), ident), ref)
    R.run("capacity", lambda: (cap_fn, (x, wg, wu, wd, gs), ident), ref)
    xc = jnp.zeros((e, cap, d), x.dtype) + x[:1]
    R.run("capacity_core", lambda: (jax.jit(capacity_core), (xc, wg, wu, wd), ident))
    h_dense = jnp.ones((m, f), x.dtype) * x[0, 0]
    R.run("dense3", lambda: (jax.jit(dense3), (x, wg[0], wu[0], h_dense, wd[0]), ident))
    if not opts.get("smoke"):
        R.run("mgpu", lambda: (jax.jit(mgpu_ffn()), (x, wgu, wd, gs), ident), ref)

    torch = opts.get("torch")
    on_cuda = torch is not None and torch.cuda.is_available()
    if torch is not None:
        xt, wgut, wdt = (to_torch(torch, a) for a in (x, wgu, wd))
        if not on_cuda:
            xt, wgut, wdt = (t.to("cpu") for t in (xt, wgut, wdt))
        ends = torch.cumsum(torch.as_tensor(gs_np, device=xt.device), 0)
        offs = ends.to(torch.int32)
        sync = (lambda _: torch.cuda.synchronize()) if on_cuda else (lambda _: None)
        back = functools.partial(lambda t, out: (to_jax(torch, out),), torch)

        gmm_args = [xt, wgut, wdt, offs]

        def torch_gmm():
            fn = functools.partial(torch_gmm_ffn, torch)
            try:
                fn(*gmm_args)
            except RuntimeError:  # a build that wants the weights column-major (K fastest)
                cm = [w.transpose(-2, -1).contiguous().transpose(-2, -1) for w in gmm_args[1:3]]
                gmm_args[1:3] = cm
            return fn, tuple(gmm_args), back

        R.run("torch_gmm", torch_gmm, ref, sync=sync)
        if on_cuda:
            sizes_t = torch.as_tensor(gs_np, device=xt.device)
            # ScatterMoE's routing metadata for rows already grouped by expert: the expert
            # of each row, the identity permutation, the cumulative group ends.
            smeta = (
                torch.repeat_interleave(torch.arange(e, device=xt.device), sizes_t),
                torch.arange(m, device=xt.device),
                ends,
            )

            def scatter():
                pl_ = load_scattermoe(opts.get("scattermoe"))
                fn = functools.partial(scatter_ffn, torch, pl_)
                return fn, (xt, wgut, wdt, smeta), back

            R.run("scattermoe", scatter, ref, sync=sync)
        else:
            row["scattermoe_error"] = "not run: needs a CUDA device (Triton)"

    if not fwd_bwd:
        return row

    # ------------------------------------------------------------ forward + backward
    # Reference gradients: autodiff of the capacity einsum (dropless, plain XLA).
    def grads_of(fn_):
        def go(*a):
            _, pull = jax.vjp(fn_, *a)
            return pull(dy)

        return jax.jit(go)

    cap_grads = grads_of(lambda a, b, c, d_: ffn_capacity(a, b, c, d_, gs, cap=cap))
    gref = cap_grads(x, wg, wu, wd)
    jax.block_until_ready(gref)
    ref4 = tuple(gref)
    tol_b = 2 * TOL
    for impl in impls:
        fb = grads_of(
            lambda a, b, c, d_, impl=impl: moe_ffn(
                a, b, c, d_, gs, impl=impl, tiling=tiling, interpret=interpret
            )
        )
        R.run(f"ours_{impl}_fb", lambda fb=fb: (fb, (x, wg, wu, wd), tuple), ref4, tol=tol_b)
    R.run("capacity_fb", lambda: (cap_grads, (x, wg, wu, wd), tuple), ref4, tol=tol_b)
    ref3 = (gref[0], jnp.concatenate([gref[1], gref[2]], axis=2), gref[3])  # for [Wg|Wu]
    if ragged_ok and name in ("S1", "tiny") and routing != "half":  # 120-180 ms a call
        rg = grads_of(lambda a, b, c: ffn_ragged(a, b, c, gs))
        R.run("ragged_dot_fb", lambda: (rg, (x, wgu, wd), tuple), ref3, tol=tol_b)
    if torch is not None:
        dyt = to_torch(torch, dy)
        if not on_cuda:
            dyt = dyt.to("cpu")

        def torch_fb(forward):
            def go(xt_, wgut_, wdt_, *rest):
                leaves = [t.detach().requires_grad_() for t in (xt_, wgut_, wdt_)]
                y = forward(*leaves, *rest)
                return torch.autograd.grad(y, leaves, dyt)

            return go

        def back3(gs_):
            return tuple(to_jax(torch, g) for g in gs_)

        R.run(
            "torch_gmm_fb",
            lambda: (
                torch_fb(functools.partial(torch_gmm_ffn, torch)),
                tuple(gmm_args),
                back3,
            ),
            ref3,
            sync=sync,
            tol=tol_b,
        )
        if on_cuda:

            def scatter_fb():
                fn = functools.partial(scatter_ffn, torch, load_scattermoe(opts.get("scattermoe")))
                return torch_fb(fn), (xt, wgut, wdt, smeta), back3

            R.run("scattermoe_fb", scatter_fb, ref3, sync=sync, tol=tol_b)
    return row


# ------------------------------------------------------------------ report

PEERS = ("capacity", "mgpu", "torch_gmm", "scattermoe")


def best_ours(r, suffix=""):
    keys = [k for k in r if k.startswith("ours_") and k.endswith(f"{suffix}_ms")]
    if suffix == "":
        keys = [k for k in keys if not k.endswith("_fb_ms")]
    return min(((r[k], k[5:-3]) for k in keys), default=(None, None))


def table(rows):
    head = (
        "| shape (M,E,D,F) | routing | ceiling | ours triton / mosaic (best: which, TF/s, "
        "% ceiling) | ragged_dot | capacity | mgpu | torch_gmm | scattermoe | best ours vs "
        "best peer | fwd+bwd: ours best / capacity / torch_gmm / scattermoe |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:

        def ms(k, r=r):
            v = r.get(f"{k}_ms")
            return f"{v:.3f}" if v is not None else "-"

        p, which = best_ours(r)
        dense = r.get("dense3_ms")
        tf = f"{r['gflop'] / p:.0f}" if p else "-"
        frac = f"{100 * dense / p:.0f}%" if p and dense else "-"
        peers = [r[f"{k}_ms"] for k in PEERS if r.get(f"{k}_ms")]
        vs = f"{min(peers) / p:.2f}x" if p and peers else "-"
        pb, _ = best_ours(r, "_fb")
        lines.append(
            f"| {r['M']},{r['E']},{r['D']},{r['F']} | {r['routing']} | {ms('dense3')} | "
            f"{ms('ours_triton')} / {ms('ours_mosaic')} ({which}, {tf}, {frac}) | "
            f"{ms('ragged_dot')} | {ms('capacity')} | {ms('mgpu')} | {ms('torch_gmm')} | "
            f"{ms('scattermoe')} | {vs} | "
            f"{f'{pb:.3f}' if pb else '-'} / {ms('capacity_fb')} / {ms('torch_gmm_fb')} / "
            f"{ms('scattermoe_fb')} |"
        )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="correctness only, moderate sizes")
    ap.add_argument("--smoke", action="store_true", help="CPU interpret mode, tiny sizes")
    ap.add_argument("--shapes", default="", help="comma list of shape names (default: PLAN)")
    ap.add_argument("--scattermoe", default="", help="folder holding ScatterMoE's scattermoe/")
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop timing after this")
    ap.add_argument("--impls", default="triton,mosaic", help="our backends to run")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args(argv)
    torch = load_torch()
    info = {
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "torch": getattr(torch, "__version__", None),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(info), flush=True)
    deadline = time.time() + args.budget_s
    if args.smoke:
        return smoke(torch, args)
    if jax.default_backend() != "gpu":
        sys.exit("no GPU: run with --smoke on a CPU")
    checks = []
    for impl in args.impls.split(","):
        for shp, routing in [
            ((1024, 8, 256, 512), "dirichlet"),
            ((1000, 8, 256, 512), "half"),
            ((2048, 64, 512, 256), "empty25"),
        ]:
            try:
                res = check(*shp, routing, impl=impl)
            except Exception:  # noqa: BLE001
                res = {"impl": impl, "ok": False, "error": traceback.format_exc()[-1500:]}
            res["case"] = f"{shp} {routing}"
            checks.append(res)
            print(json.dumps(res), flush=True)
    if args.check:
        sys.exit(0 if all(c["ok"] for c in checks) else 1)
    os.makedirs(args.out, exist_ok=True)
    rows = []

    def save():
        with open(os.path.join(args.out, "moe_kernel.json"), "w") as fh:
            json.dump({"info": info, "checks": checks, "rows": rows}, fh, indent=1)

    plan = PLAN
    if args.shapes:
        wanted = args.shapes.split(",")
        plan = [p for p in PLAN if p[0] in wanted]
    # A backend whose kernels failed the checks is not timed.
    impls = tuple(
        i for i in args.impls.split(",") if any(c["ok"] for c in checks if c["impl"] == i)
    )
    opts = {"torch": torch, "scattermoe": args.scattermoe, "impls": impls}
    for name, routing, fb in plan:
        try:
            row = run_shape(name, routing, fwd_bwd=fb, deadline=deadline, opts=opts)
        except Exception:  # noqa: BLE001
            row = {"shape": name, "routing": routing, "error": traceback.format_exc()[-800:]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        save()
    print(table([r for r in rows if "error" not in r]))


def smoke(torch, args):
    """The whole harness at a tiny size in interpret mode: every check and every variant
    that runs on a CPU (Mosaic where this jax interprets it, PyTorch where installed)."""
    t = SMOKE_TILING
    impls = tuple(args.impls.split(","))
    if not mosaic_module.HAS_MOSAIC_INTERPRET:  # jax < 0.11: Mosaic runs on a GPU only
        impls = tuple(i for i in impls if i != "mosaic")
    checks = [check(64, 4, 32, 64, "dirichlet", impl=i, tiling=t, interpret=True) for i in impls]
    print(json.dumps(checks))
    opts = {
        "shapes": {"tiny": (64, 4, 32, 64)},
        "interpret": True,
        "tiling": t,
        "impls": impls,
        "torch": torch,
        "smoke": True,
    }
    row = run_shape("tiny", "dirichlet", fwd_bwd=True, opts=opts)
    print(json.dumps(row))
    print(table([row]))
    if args.out and args.out != ".":
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "moe_kernel_smoke.json"), "w") as fh:
            json.dump({"checks": checks, "rows": [row]}, fh, indent=1)
    failed = [k for k in row if k.endswith("_error") and "not run" not in row[k]]
    ok = all(c["ok"] for c in checks) and not failed
    print("smoke:", "ok" if ok else f"FAILED {failed}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
