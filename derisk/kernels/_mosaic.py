"""Grouped matmuls on the Pallas Mosaic GPU backend (Hopper: TMA loads, wgmma, a pipeline).

The same contract and the same visit metadata (`_metadata.py`) as the Triton kernels in
`_gmm.py`; only the kernel body differs:

- a persistent kernel: one program per SM (`grid=(num_sms,)`), each looping over the
  (visit, n-tile) work items given to it by `plgpu.nd_loop`, in a planar-snake order that
  keeps `group_m` visits together across the n-tiles (shared weight and x tiles in L2);
- the K loop is `plgpu.emit_pipeline`: TMA copies of the x tile and of the weight tile(s)
  into shared memory, `num_stages` of them in flight, each consumed by an asynchronous
  `wgmma` into fp32 accumulators held in registers (two for gate+up);
- the epilogue (SwiGLU in fp32 for the fused kernel) writes the tile to shared memory and
  stores only the visit's rows [lo, hi) with TMA: a TMA box has a static size, so the
  row count is split into powers of two (at most log2(bm) + 1 stores), each a static box
  at a dynamic offset; two visits that share a straddling tile never touch each other's
  rows, exactly like the masked stores of the Triton kernels;
- rows past sum(group_sizes) (the pseudo-group E) get zeros from the same store path.

The metadata is read from global memory with scalar loads (the Triton backend's
restriction, no scalar prefetch, does not apply here, but one int32 [4, V] array keeps the
two backends on one tested metadata builder).

Interpret mode (`InterpretGPUParams`, public from jax 0.11) runs these kernels on a CPU,
simulating shared memory, TMA and the threads; `lowers_for_cuda` checks on a CPU that the
kernel lowers to Mosaic GPU IR for a CUDA device (what a GPU would compile). fp32 inputs
run as tf32 on the GPU (wgmma has no full-fp32 mode); bf16 and fp16 are the intended types.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from derisk.kernels._metadata import num_visits, visit_metadata

try:  # Mosaic GPU ships in every jax this package supports; interpret mode does not.
    from jax.experimental.pallas import mosaic_gpu as plmgpu
except ImportError:  # pragma: no cover - a jax build without Mosaic GPU
    plmgpu = None

HAS_MOSAIC_GPU = plmgpu is not None
# GPU interpret mode is public (and documented) from jax 0.11; jax 0.10.2 has no public
# entry point for it, so there the Mosaic kernels run only on a GPU.
HAS_MOSAIC_INTERPRET = HAS_MOSAIC_GPU and hasattr(plmgpu, "InterpretGPUParams")


def mosaic_interpret_params():
    if not HAS_MOSAIC_INTERPRET:
        raise RuntimeError(
            f"Mosaic GPU interpret mode needs jax >= 0.11 (this is jax {jax.__version__}): "
            "use impl='triton' on a CPU, or run impl='mosaic' on a Hopper GPU"
        )
    return plmgpu.InterpretGPUParams()


def num_sms(interpret: bool) -> int:
    """Programs of the persistent grid: one per SM on a GPU, two when interpreting."""
    if interpret:
        return 2
    return int(getattr(jax.devices()[0], "core_count", 132) or 132)


def _pad_to(a, axis, multiple):
    extra = (-a.shape[axis]) % multiple
    if not extra:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, extra)
    return jnp.pad(a, pad)


def _kernel(
    meta_gmem,
    x_gmem,
    *refs,
    bm,
    bn,
    bk,
    k_steps,
    stages,
    group_m,
    visits,
    n_tiles,
    num_groups,
    fused,
):
    w_gmems, o_gmem = refs[:-1], refs[-1]

    @plmgpu.nd_loop((visits * n_tiles,), collective_axes="sm")
    def _work(info):
        # group_m visits sweep all n-tiles together (planar snake over (visit, n-tile)).
        v, j = plmgpu.planar_snake(info.index[0], (visits, n_tiles), 0, max(group_m, 1))
        tile, group, lo, hi = meta_gmem[0, v], meta_gmem[1, v], meta_gmem[2, v], meta_gmem[3, v]

        def store_rows(res):
            """Store rows [lo, hi) of the tile (res: [bm, bn] fp32) with TMA."""

            @functools.partial(pl.run_scoped, o_smem=plmgpu.SMEM((bm, bn), o_gmem.dtype))
            def _scope(o_smem):
                o_smem[...] = res.astype(o_smem.dtype)
                plmgpu.commit_smem()
                row = lo - tile * bm  # first row of the visit inside the tile
                size = hi - lo
                width = bm
                while width:  # unrolled: one static-size store per set bit of size

                    @pl.when((size & width) != 0)
                    def _store(row=row, width=width):
                        plmgpu.copy_smem_to_gmem(
                            o_smem.at[pl.ds(row, width)],
                            o_gmem.at[pl.ds(tile * bm + row, width), pl.ds(j * bn, bn)],
                        )

                    row = row + (size & width)
                    width //= 2
                plmgpu.wait_smem_to_gmem(0, wait_read_only=True)

        @pl.when((lo < hi) & (group < num_groups))
        def _compute():
            def acc_scope(*accs):
                def step(_, x_smem, *w_smem):
                    for acc, w in zip(accs, w_smem, strict=True):
                        plmgpu.wgmma(acc, x_smem, w)

                plmgpu.emit_pipeline(
                    step,
                    grid=(k_steps,),
                    in_specs=[
                        plmgpu.BlockSpec((bm, bk), lambda k: (tile, k), delay_release=1),
                        *[
                            plmgpu.BlockSpec((bk, bn), lambda k: (k, j), delay_release=1)
                            for _ in w_gmems
                        ],
                    ],
                    max_concurrent_steps=stages,
                )(x_gmem, *[w.at[group] for w in w_gmems])
                return tuple(acc[...] for acc in accs)

            accs = pl.run_scoped(acc_scope, *[plmgpu.ACC((bm, bn)) for _ in w_gmems])
            if fused:
                g, u = accs
                store_rows(g * jax.nn.sigmoid(g) * u)  # SwiGLU epilogue in fp32
            else:
                store_rows(accs[0])

        @pl.when((lo < hi) & (group == num_groups))
        def _zeros():  # rows past sum(group_sizes)
            store_rows(jnp.zeros((bm, bn), jnp.float32))


@functools.partial(jax.jit, static_argnames=("tiling", "interpret", "fused"))
def gmm_mosaic(x, ws, group_sizes, *, tiling, interpret: bool, fused: bool):
    """out = gmm(x, ws[0]) or silu(x ws[0]) * (x ws[1]) per group, on Mosaic GPU.

    tiling: a `Tiling`; num_stages is the pipeline depth (TMA copies in flight), group_m
    the snake width in visits; num_warps is unused (one warpgroup computes).
    """
    m, _ = x.shape
    E, _, n = ws[0].shape
    t = tiling
    xp = _pad_to(_pad_to(x, 0, t.bm), 1, t.bk)
    wp = tuple(_pad_to(_pad_to(w, 1, t.bk), 2, t.bn) for w in ws)
    mp, kp = xp.shape
    np_ = wp[0].shape[2]
    meta = visit_metadata(group_sizes, mp, t.bm)
    body = functools.partial(
        _kernel,
        bm=t.bm,
        bn=t.bn,
        bk=t.bk,
        k_steps=kp // t.bk,
        stages=t.num_stages,
        group_m=t.group_m,
        visits=num_visits(mp, t.bm, E),
        n_tiles=np_ // t.bn,
        num_groups=E,
        fused=fused,
    )
    body.__name__ = "gmm_swiglu_mosaic" if fused else "gmm_mosaic"
    kernel = plmgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((mp, np_), x.dtype),
        grid=(num_sms(interpret),),
        grid_names=("sm",),
        compiler_params=plmgpu.CompilerParams(
            lowering_semantics=plmgpu.LoweringSemantics.Warpgroup
        ),
        interpret=mosaic_interpret_params() if interpret else None,
    )
    return kernel(meta, xp, *wp)[:m, :n]


def settle(out):
    """Wait for an eagerly called kernel in interpret mode; pass traced values through.

    The GPU interpreter runs the kernel through host callbacks that dispatch JAX work of
    their own; JAX work dispatched behind a running interpreted kernel can deadlock with it
    (seen on a 2-core CPU). On a GPU nothing is interpreted, and waiting costs one sync of
    an eager call (under jit the value is a tracer and passes through untouched).
    """
    concrete = isinstance(out, jax.Array) and not isinstance(out, jax.core.Tracer)
    if concrete and {d.platform for d in out.devices()} == {"cpu"}:
        out.block_until_ready()
    return out


def lowers_for_cuda(fn, *args) -> str:
    """Lower `fn(*args)` (ShapeDtypeStructs welcome) for a CUDA device on any machine and
    return the StableHLO text: Mosaic GPU kernels are lowered to their IR in Python, so a
    lowering error (a missing rule, an unsupported layout, too much shared memory) shows
    on a CPU. It does not compile the PTX: register spills and runtime faults need a GPU."""
    exported = jax.export.export(jax.jit(fn), platforms=["cuda"])(*args)
    return exported.mlir_module()
