"""MoE expert-FFN benchmark on one GPU: correctness, then timing, in one process.

Variants of the whole expert FFN y = (silu(x Wg[e]) * (x Wu[e])) Wd[e], bf16, same inputs,
all under jit:

- pallas: derisk.kernels.moe_ffn (fused gate+up+SwiGLU kernel, then the down gmm).
- ragged_dot: jax.lax.ragged_dot on x [Wg|Wu], silu*mul in XLA, ragged_dot for down.
- capacity: capacity-padded einsum, capacity C = the largest group (dropless, same
  semantics), rows gathered to [E, C, D] and scattered back; also timed without the
  gather/scatter ("capacity core").
- mgpu: JAX's own Mosaic-GPU ragged_dot_mgpu (gate/up on concatenated weights, XLA
  silu*mul, down).
- dense: three XLA dense matmuls with the same FLOPs (the ceiling).

Forward and forward+backward (pallas custom VJP vs autodiff of ragged_dot and capacity).
Timing (../shared/kernels-brief.md section 7): 3 warm-ups, then 5 batches of 10
back-to-back calls, each batch ended by block_until_ready; the median per call.

    PYTHONPATH=. python benchmarks/moe_kernel.py --check     # quick correctness only
    PYTHONPATH=. python benchmarks/moe_kernel.py --out DIR   # everything
    python benchmarks/moe_kernel.py --smoke                  # CPU, interpret mode, tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from derisk.kernels import TOLERANCE, Tiling, gmm, gmm_swiglu, moe_ffn, tgmm
from derisk.kernels._gmm import default_tiling

SHAPES = {
    # name: (M, E, D, F)
    "S1": (16384, 8, 1024, 4096),
    "S2": (16384, 64, 2048, 1024),
    "S3": (8192, 8, 4096, 14336),
    "decode": (512, 8, 4096, 14336),
    "fine": (32768, 128, 2048, 512),
}
ROUTINGS = {
    "S1": ("uniform", "dirichlet", "half"),
    "S2": ("uniform", "dirichlet", "half"),
    "S3": ("uniform", "dirichlet"),
    "decode": ("uniform",),
    "fine": ("uniform", "dirichlet"),
}


def group_sizes_for(routing: str, m: int, e: int, rng) -> np.ndarray:
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
    key = jax.random.PRNGKey(seed)
    k = jax.random.split(key, 5)
    x = jax.random.normal(k[0], (m, d), jnp.float32).astype(dtype)
    wg = (jax.random.normal(k[1], (e, d, f), jnp.float32) / np.sqrt(d)).astype(dtype)
    wu = (jax.random.normal(k[2], (e, d, f), jnp.float32) / np.sqrt(d)).astype(dtype)
    wd = (jax.random.normal(k[3], (e, f, d), jnp.float32) / np.sqrt(f)).astype(dtype)
    dy = jax.random.normal(k[4], (m, d), jnp.float32).astype(dtype)
    return x, wg, wu, wd, dy


# ------------------------------------------------------------------ variants


def ffn_ragged(x, wgu, wd, gs):
    f = wd.shape[1]
    gu = jax.lax.ragged_dot(x, wgu, gs, preferred_element_type=jnp.float32)
    h = (jax.nn.silu(gu[:, :f]) * gu[:, f:]).astype(x.dtype)
    return jax.lax.ragged_dot(h, wd, gs, preferred_element_type=jnp.float32).astype(x.dtype)


def capacity_index(gs, m, cap):
    """[E, C] row ids (m = padding row) of each expert's rows, from group sizes."""
    starts = jnp.cumsum(gs) - gs
    c = jnp.arange(cap)
    idx = starts[:, None] + c[None, :]
    return jnp.where(c[None, :] < gs[:, None], idx, m)


def ffn_capacity(x, wg, wu, wd, gs, *, cap):
    m = x.shape[0]
    idx = capacity_index(gs, m, cap)
    xp = jnp.concatenate([x, jnp.zeros((1, x.shape[1]), x.dtype)])
    xc = xp[idx]  # [E, C, D]
    y = capacity_core(xc, wg, wu, wd)
    out = jnp.zeros((m + 1, x.shape[1]), x.dtype).at[idx].set(y)
    return out[:m]


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


def ffn_dense(x, w1, w2, w3):
    g = jnp.dot(x, w1, preferred_element_type=jnp.float32)
    u = jnp.dot(x, w2, preferred_element_type=jnp.float32)
    h = (jax.nn.silu(g) * u).astype(x.dtype)
    return jnp.dot(h, w3, preferred_element_type=jnp.float32).astype(x.dtype)


def mgpu_ffn():
    from jax.experimental.pallas.ops.gpu import ragged_dot_mgpu as rdm

    kw = dict(block_m=128, block_n=128, block_k=64, max_concurrent_steps=4, grid_block_n=1)

    def ffn(x, wgu, wd, gs):
        f = wd.shape[1]
        gu = rdm.ragged_dot(x, wgu, group_sizes=gs, **kw).astype(jnp.float32)
        h = (jax.nn.silu(gu[:, :f]) * gu[:, f:]).astype(x.dtype)
        return rdm.ragged_dot(h, wd, group_sizes=gs, **kw)

    return ffn


# ------------------------------------------------------------------ timing


def bench(fn, *args, warmup=3, batches=5, per_batch=10):
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / per_batch)
    return statistics.median(times) * 1e3  # ms


def rel_err(a, b):
    a = np.asarray(a.astype(jnp.float32))
    b = np.asarray(b.astype(jnp.float32))
    if not np.isfinite(a).all():
        return float("inf")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def check(m, e, d, f, routing, *, seed=0, tiling=None, interpret=None, grads=True):
    """Correctness of every kernel against the ragged_dot reference (fp32 accumulation)."""
    rng = np.random.default_rng(seed)
    gs = jnp.asarray(group_sizes_for(routing, m, e, rng))
    x, wg, wu, wd, dy = make_inputs(m, e, d, f, seed)
    kw = dict(impl="pallas", tiling=tiling, interpret=interpret)
    tol = TOLERANCE[jnp.dtype(x.dtype)]
    res = {}
    res["gmm"] = rel_err(gmm(x, wg, gs, **kw), gmm(x, wg, gs, impl="reference"))
    res["gmm_swiglu"] = rel_err(
        gmm_swiglu(x, wg, wu, gs, **kw), gmm_swiglu(x, wg, wu, gs, impl="reference")
    )
    h = gmm_swiglu(x, wg, wu, gs, impl="reference")
    res["tgmm"] = rel_err(
        tgmm(h, dy, gs, **kw),
        jax.lax.ragged_dot_general(
            h,
            dy,
            gs,
            jax.lax.RaggedDotDimensionNumbers(
                dot_dimension_numbers=(((0,), (0,)), ((), ())),
                lhs_ragged_dimensions=[0],
                rhs_group_dimensions=[],
            ),
            preferred_element_type=jnp.float32,
        ),
    )
    y = moe_ffn(x, wg, wu, wd, gs, **kw)
    res["moe_ffn"] = rel_err(y, moe_ffn(x, wg, wu, wd, gs, impl="reference"))
    if grads:

        def loss(impl):
            return lambda *a: jnp.sum(
                moe_ffn(*a, gs, impl=impl, tiling=tiling, interpret=interpret).astype(jnp.float32)
                * dy.astype(jnp.float32)
            )

        gp = jax.grad(loss("pallas"), argnums=(0, 1, 2, 3))(x, wg, wu, wd)
        gr = jax.grad(loss("reference"), argnums=(0, 1, 2, 3))(x, wg, wu, wd)
        for name, a, b in zip(("dx", "dwg", "dwu", "dwd"), gp, gr, strict=True):
            res[name] = rel_err(a, b)
    res["ok"] = all(v < tol * (2 if k.startswith("d") else 1) for k, v in res.items())
    return res


def run_shape(name, routing, *, seed=0, variants=None):
    m, e, d, f = SHAPES[name]
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
    ours = jax.jit(functools.partial(moe_ffn, impl="pallas"))
    t8 = dataclasses.replace(default_tiling(m, d, f, e, fused=True), group_m=8)
    ours_g8 = jax.jit(functools.partial(moe_ffn, impl="pallas", tiling=t8))
    h_dense = jnp.ones((m, f), x.dtype) * x[0, 0]
    fns = {
        "pallas": (ours, (x, wg, wu, wd, gs)),
        "pallas_g8": (ours_g8, (x, wg, wu, wd, gs)),
        "dense3": (jax.jit(dense3), (x, wg[0], wu[0], h_dense, wd[0])),
        "ragged_dot": (jax.jit(ffn_ragged), (x, wgu, wd, gs)),
        "capacity": (jax.jit(functools.partial(ffn_capacity, cap=cap)), (x, wg, wu, wd, gs)),
        "capacity_core": (
            jax.jit(capacity_core),
            (jnp.zeros((e, cap, d), x.dtype) + x[:1], wg, wu, wd),
        ),
        "dense": (jax.jit(ffn_dense), (x, wg[0], wu[0], wd[0])),
    }
    try:
        fns["mgpu"] = (jax.jit(mgpu_ffn()), (x, wgu, wd, gs))
    except Exception as exc:  # noqa: BLE001 - report, do not stop the benchmark
        row["mgpu_error"] = repr(exc)[:200]
    ref = ffn_ragged(x, wgu, wd, gs)
    for key, (fn, args) in fns.items():
        if variants and key not in variants:
            continue
        try:
            if key not in ("capacity_core", "dense", "dense3"):
                err = rel_err(fn(*args), ref)
                row[f"{key}_err"] = err
            row[f"{key}_ms"] = bench(fn, *args)
        except Exception as exc:  # noqa: BLE001
            row[f"{key}_error"] = repr(exc)[:300]
    # forward + backward
    cot = dy

    def vjp_of(f_, *args):
        def go(*a):
            y, pull = jax.vjp(f_, *a)
            return pull(cot)

        return jax.jit(go), args

    bw = {
        "pallas_fb": vjp_of(
            lambda a, b, c, d_: moe_ffn(a, b, c, d_, gs, impl="pallas"), x, wg, wu, wd
        ),
        "ragged_dot_fb": vjp_of(lambda a, b, c: ffn_ragged(a, b, c, gs), x, wgu, wd),
        "capacity_fb": vjp_of(
            lambda a, b, c, d_: ffn_capacity(a, b, c, d_, gs, cap=cap), x, wg, wu, wd
        ),
    }
    for key, (fn, args) in bw.items():
        if variants and key not in variants:
            continue
        if key == "ragged_dot_fb" and not (routing == "uniform" and name in ("S1", "S3")):
            row[f"{key}_error"] = "skipped: 120-180 ms a call (and out of memory at E=128)"
            continue
        try:
            row[f"{key}_ms"] = bench(fn, *args)
        except Exception as exc:  # noqa: BLE001
            row[f"{key}_error"] = repr(exc)[:300]
    return row


def tiling_sweep(name="S1"):
    """A few tilings of each kernel on one shape (forward only)."""
    m, e, d, f = SHAPES[name]
    rng = np.random.default_rng(0)
    gs = jnp.asarray(group_sizes_for("uniform", m, e, rng))
    x, wg, wu, wd, _ = make_inputs(m, e, d, f)
    h = gmm_swiglu(x, wg, wu, gs, impl="reference")
    out = []
    configs = [(128, 128, 64, 8, 3, g) for g in (0, 4, 8, 16)]
    configs += [
        (64, 128, 64, 8, 3, 8),
        (64, 256, 64, 8, 3, 8),
        (128, 256, 64, 8, 3, 8),
        (128, 128, 64, 8, 4, 8),
    ]
    for bm, bn, bk, w, s, g in configs:
        t = Tiling(bm=bm, bn=bn, bk=bk, num_warps=w, num_stages=s, group_m=g)
        rec = {"shape": name, "tiling": f"bm{bm} bn{bn} bk{bk} w{w} s{s} g{g}"}
        for kname, fn, args, fl in [
            (
                "swiglu",
                jax.jit(functools.partial(gmm_swiglu, impl="pallas", tiling=t)),
                (x, wg, wu, gs),
                4 * m * d * f,
            ),
            (
                "down",
                jax.jit(functools.partial(gmm, impl="pallas", tiling=t)),
                (h, wd, gs),
                2 * m * d * f,
            ),
        ]:
            try:
                ms = bench(fn, *args)
                rec[f"{kname}_ms"] = ms
                rec[f"{kname}_tflops"] = fl / ms / 1e9
            except Exception as exc:  # noqa: BLE001
                rec[f"{kname}_error"] = repr(exc)[:200]
        out.append(rec)
    return out


def table(rows):
    lines = [
        "| shape (M,E,D,F) | routing | 3-matmul ceiling ms | pallas default / group-8 ms "
        "(best: TF/s, % ceiling) | ragged_dot "
        "ms | capacity ms (core) | mgpu ms | pallas vs best other | fwd+bwd pallas / "
        "ragged / capacity ms |",
        "|" + "---|" * 9,
    ]
    for r in rows:

        def ms(k, r=r):
            v = r.get(f"{k}_ms")
            return f"{v:.3f}" if v is not None else "err"

        p = (
            min(v for v in (r.get("pallas_ms"), r.get("pallas_g8_ms")) if v)
            if r.get("pallas_ms") or r.get("pallas_g8_ms")
            else None
        )
        dense = r.get("dense3_ms")
        tf = f"{r['gflop'] / p:.0f}" if p else "-"
        frac = f"{100 * dense / p:.0f}%" if p and dense else "-"
        others = [r[k] for k in ("capacity_ms", "mgpu_ms") if r.get(k)]
        best = f"{min(others) / p:.2f}x" if p and others else "-"
        lines.append(
            f"| {r['M']},{r['E']},{r['D']},{r['F']} | {r['routing']} | {ms('dense3')} | "
            f"{ms('pallas')} / {ms('pallas_g8')} ({tf}, {frac}) | {ms('ragged_dot')} | "
            f"{ms('capacity')} "
            f"({ms('capacity_core')}) | {ms('mgpu')} | {best} | {ms('pallas_fb')} / "
            f"{ms('ragged_dot_fb')} / {ms('capacity_fb')} |"
        )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="correctness only, moderate sizes")
    ap.add_argument("--smoke", action="store_true", help="CPU interpret mode, tiny sizes")
    ap.add_argument("--shapes", default="S1,S3,S2,fine,decode")
    ap.add_argument("--sweep", action="store_true", help="also sweep tilings on S1")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    info = {
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(info), flush=True)
    if args.smoke:
        t = Tiling(bm=16, bn=16, bk=16, num_warps=4, num_stages=1)
        res = check(64, 4, 32, 64, "dirichlet", tiling=t, interpret=True)
        print(json.dumps(res))
        sys.exit(0 if res["ok"] else 1)
    if jax.default_backend() != "gpu":
        sys.exit("no GPU: run with --smoke on a CPU")
    checks = []
    for shp, routing in [
        ((1024, 8, 256, 512), "dirichlet"),
        ((1000, 8, 256, 512), "half"),
        ((2048, 64, 512, 256), "empty25"),
        ((512, 8, 1024, 2048), "uniform"),
    ]:
        try:
            res = check(*shp, routing)
        except Exception:  # noqa: BLE001
            res = {"ok": False, "error": traceback.format_exc()[-1500:]}
        res["case"] = f"{shp} {routing}"
        checks.append(res)
        print(json.dumps(res), flush=True)
    if args.check:
        sys.exit(0 if all(c["ok"] for c in checks) else 1)
    os.makedirs(args.out, exist_ok=True)
    rows, sweep = [], []

    def save():
        with open(os.path.join(args.out, "moe_kernel.json"), "w") as fh:
            json.dump({"info": info, "checks": checks, "rows": rows, "sweep": sweep}, fh, indent=1)

    for name in args.shapes.split(","):
        for routing in ROUTINGS[name]:
            try:
                row = run_shape(name, routing)
            except Exception:  # noqa: BLE001
                row = {"shape": name, "routing": routing, "error": traceback.format_exc()[-800:]}
            rows.append(row)
            print(json.dumps(row), flush=True)
            save()
    if args.sweep:
        for shape in ("S1", "S2"):
            for rec in tiling_sweep(shape):
                sweep.append(rec)
                print(json.dumps(rec), flush=True)
                save()
    print(table([r for r in rows if "error" not in r]))


if __name__ == "__main__":
    main()
