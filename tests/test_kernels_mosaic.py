"""Mosaic GPU kernels in interpret mode on CPU against numpy and the references.

GPU interpret mode (`jax.experimental.pallas.mosaic_gpu.InterpretGPUParams`) is public from
jax 0.11, which needs Python >= 3.12; jax 0.10.2, the newest pip gives Python 3.11, has no
public entry point for it. So this module runs under the second job of `.ci/run` (a
Python 3.12 venv with jax >= 0.11) and is skipped as a whole under 3.11. The lowering of the
same kernels for a CUDA device is checked under every jax in test_kernels.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from derisk.kernels import TOLERANCE, Tiling, gmm, gmm_swiglu, moe_ffn
from derisk.kernels import _mosaic as mosaic_module

if not mosaic_module.HAS_MOSAIC_INTERPRET:
    pytest.skip(
        f"Mosaic GPU interpret mode is public from jax 0.11; this is jax {jax.__version__} "
        "(.ci/run's Python 3.12 job runs these tests)",
        allow_module_level=True,
    )

from test_kernels import GROUPS, E, K, M, N, numpy_gmm, rel_err  # noqa: E402

T16 = Tiling(bm=16, bn=16, bk=16, num_stages=2)
MOSAIC = dict(impl="mosaic", tiling=T16, interpret=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((M, K)).astype(np.float32),
        "w": (rng.standard_normal((E, K, N)) / np.sqrt(K)).astype(np.float32),
        "w2": (rng.standard_normal((E, K, N)) / np.sqrt(K)).astype(np.float32),
    }


@pytest.mark.parametrize("case", list(GROUPS))
def test_mosaic_gmm_matches_numpy(data, case):
    gs = jnp.array(GROUPS[case], jnp.int32)
    x, w = jnp.asarray(data["x"], jnp.bfloat16), jnp.asarray(data["w"], jnp.bfloat16)
    out = gmm(x, w, gs, **MOSAIC)
    # Interpret mode fills unwritten memory with NaN: every row must have been stored.
    assert np.isfinite(np.asarray(out, np.float32)).all(), "a row was never written"
    ref = numpy_gmm(x.astype(jnp.float32), w.astype(jnp.float32), gs)
    assert rel_err(out, ref) < TOLERANCE[jnp.dtype(jnp.bfloat16)]
    total = int(gs.sum())
    assert np.all(np.asarray(out[total:], np.float32) == 0), "rows past sum(gs) must be zero"


def test_mosaic_gmm_fp32_is_exact_in_interpret_mode(data):
    """fp32 (interpret mode computes it in full fp32, the GPU in tf32): any misplaced row or
    column shows far above the 1e-5 tolerance."""
    gs = jnp.array(GROUPS["ragged"], jnp.int32)
    x, w = jnp.asarray(data["x"]), jnp.asarray(data["w"])
    assert rel_err(gmm(x, w, gs, **MOSAIC), numpy_gmm(x, w, gs)) < 1e-5


def test_mosaic_gmm_swiglu(data):
    gs = jnp.array(GROUPS["empty first/middle/last"], jnp.int32)
    x = jnp.asarray(data["x"], jnp.bfloat16)
    wg, wu = jnp.asarray(data["w"], jnp.bfloat16), jnp.asarray(data["w2"], jnp.bfloat16)
    out = gmm_swiglu(x, wg, wu, gs, **MOSAIC)
    g = numpy_gmm(x.astype(jnp.float32), wg.astype(jnp.float32), gs)
    u = numpy_gmm(x.astype(jnp.float32), wu.astype(jnp.float32), gs)
    assert rel_err(out, g / (1 + np.exp(-g)) * u) < TOLERANCE[jnp.dtype(jnp.bfloat16)]
    assert np.all(np.asarray(out[25:], np.float32) == 0)


def test_mosaic_snake_order_and_a_deeper_pipeline_give_the_same_result(data):
    gs = jnp.array(GROUPS["ragged"], jnp.int32)
    x, w = jnp.asarray(data["x"]), jnp.asarray(data["w"])
    t = Tiling(bm=16, bn=16, bk=16, num_stages=3, group_m=3)
    out = gmm(x, w, gs, impl="mosaic", tiling=t, interpret=True)
    assert rel_err(out, numpy_gmm(x, w, gs)) < 1e-5


def test_mosaic_no_recompile_when_group_sizes_change(data):
    x, w = jnp.asarray(data["x"]), jnp.asarray(data["w"])
    mosaic_module.gmm_mosaic.clear_cache()
    for sizes in ([10, 3, 20, 12], [0, 40, 5, 0]):
        out = gmm(x, w, jnp.array(sizes, jnp.int32), **MOSAIC)
        assert rel_err(out, numpy_gmm(x, w, np.array(sizes))) < 1e-5
    assert mosaic_module.gmm_mosaic._cache_size() == 1


def test_mosaic_moe_ffn_forward_and_gradients_match_reference():
    rng = np.random.default_rng(1)
    m, d, f, e = 40, 16, 32, 3
    x = jnp.asarray(rng.standard_normal((m, d)) * 0.5, jnp.float32)
    ws = [
        jnp.asarray(rng.standard_normal(s) * 0.3, jnp.float32)
        for s in ((e, d, f), (e, d, f), (e, f, d))
    ]
    gs = jnp.array([12, 0, 22], jnp.int32)

    def loss(impl):
        def f_(*a):
            y = moe_ffn(*a, gs, impl=impl, tiling=T16, interpret=True)
            return jnp.sum(jnp.sin(y))

        return f_

    vp, gp = jax.value_and_grad(loss("mosaic"), argnums=(0, 1, 2, 3))(x, *ws)
    vr, gr = jax.value_and_grad(loss("reference"), argnums=(0, 1, 2, 3))(x, *ws)
    assert float(vp) == pytest.approx(float(vr), rel=1e-5)
    for a, b in zip(gp, gr, strict=True):
        assert rel_err(a, b) < 1e-4
    assert np.abs(np.asarray(gp[0][34:])).max() == 0  # rows past sum(gs) get no gradient
