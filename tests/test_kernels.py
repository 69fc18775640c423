"""Kernels in interpret mode on CPU against their references (few shapes: compiles dominate)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from derisk.kernels import (
    TOLERANCE,
    Tiling,
    combine,
    gmm,
    gmm_reference,
    gmm_swiglu,
    gmm_swiglu_reference,
    moe_ffn,
    num_visits,
    route_top_k,
    sort_by_expert,
    tgmm,
    tgmm_reference,
    visit_metadata,
)
from derisk.kernels import _gmm as gmm_module
from derisk.kernels import _mosaic as mosaic_module

T16 = Tiling(bm=16, bn=16, bk=16, num_warps=4, num_stages=1)
M, K, N, E = 45, 32, 48, 4  # M is not a multiple of the tile; F > D below


def rel_err(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def numpy_gmm(x, w, gs):
    """Per-group matmul in float64 on the (possibly bf16-rounded) inputs."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    out = np.zeros((x.shape[0], w.shape[2]))
    start = 0
    for e, g in enumerate(np.asarray(gs)):
        out[start : start + g] = x[start : start + g] @ w[e]
        start += g
    return out


GROUPS = {
    "ragged": [10, 3, 20, 12],
    "empty first/middle/last": [0, 25, 0, 0],
    "all in one": [0, 0, 45, 0],
    "small groups, rest zero": [2, 1, 5, 3],
    "tile edges": [16, 16, 0, 13],
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((M, K)).astype(np.float32),
        "w": (rng.standard_normal((E, K, N)) / np.sqrt(K)).astype(np.float32),
        "w2": (rng.standard_normal((E, K, N)) / np.sqrt(K)).astype(np.float32),
        "dy": rng.standard_normal((M, N)).astype(np.float32),
    }


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case", list(GROUPS))
def test_gmm_matches_numpy_and_ragged_dot(data, dtype, case):
    gs = jnp.array(GROUPS[case], jnp.int32)
    x, w = jnp.asarray(data["x"], dtype), jnp.asarray(data["w"], dtype)
    out = gmm(x, w, gs, impl="pallas", tiling=T16, interpret=True)
    assert not jnp.isnan(out.astype(jnp.float32)).any(), "a row was never written"
    ref = numpy_gmm(x.astype(jnp.float32), w.astype(jnp.float32), gs)
    assert rel_err(out, ref) < TOLERANCE[jnp.dtype(dtype)]
    assert rel_err(out, gmm_reference(x, w, gs)) < TOLERANCE[jnp.dtype(dtype)]
    total = int(gs.sum())
    assert np.all(np.asarray(out[total:], np.float32) == 0), "rows past sum(gs) must be zero"


def test_every_output_row_is_written(data, monkeypatch):
    """Poison: in interpret mode an unwritten output row is NaN; make sure none is."""
    gs = jnp.array([7, 0, 9, 29], jnp.int32)
    x = jnp.asarray(data["x"])
    out = gmm(x, jnp.asarray(data["w"]), gs, impl="pallas", tiling=T16, interpret=True)
    assert np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gmm_swiglu(data, dtype):
    gs = jnp.array(GROUPS["ragged"], jnp.int32)
    x = jnp.asarray(data["x"], dtype)
    wg, wu = jnp.asarray(data["w"], dtype), jnp.asarray(data["w2"], dtype)
    out = gmm_swiglu(x, wg, wu, gs, impl="pallas", tiling=T16, interpret=True)
    g = numpy_gmm(x.astype(jnp.float32), wg.astype(jnp.float32), gs)
    u = numpy_gmm(x.astype(jnp.float32), wu.astype(jnp.float32), gs)
    ref = g / (1 + np.exp(-g)) * u
    assert rel_err(out, ref) < TOLERANCE[jnp.dtype(dtype)]
    assert rel_err(out, gmm_swiglu_reference(x, wg, wu, gs)) < TOLERANCE[jnp.dtype(dtype)]


@pytest.mark.parametrize("case", ["ragged", "empty first/middle/last"])
def test_tgmm(data, case):
    gs = jnp.array(GROUPS[case], jnp.int32)
    x, dy = jnp.asarray(data["x"]), jnp.asarray(data["dy"])
    out = tgmm(x, dy, gs, impl="pallas", tiling=T16, interpret=True)
    ref = tgmm_reference(x, dy, gs)
    assert rel_err(out, ref) < 1e-5
    # dw[e] is x_e^T dy_e: check one group by hand in float64
    s = int(gs[0])
    np.testing.assert_allclose(
        np.asarray(out[0]),
        data["x"][:s].T.astype(np.float64) @ data["dy"][:s],
        rtol=1e-4,
        atol=1e-4,
    )


def test_swizzled_grid_gives_the_same_result(data):
    gs = jnp.array(GROUPS["ragged"], jnp.int32)
    x, w = jnp.asarray(data["x"]), jnp.asarray(data["w"])
    swz = Tiling(bm=16, bn=16, bk=16, num_warps=4, num_stages=1, group_m=3)
    out = gmm(x, w, gs, impl="pallas", tiling=swz, interpret=True)
    assert rel_err(out, numpy_gmm(x, w, gs)) < 1e-5


def test_single_expert_and_f_smaller_than_d(data):
    x = jnp.asarray(data["x"][:, :32])
    w = jnp.asarray(data["w"][:1, :, :16])  # E = 1, N < K
    gs = jnp.array([40], jnp.int32)
    out = gmm(x, w, gs, impl="pallas", tiling=T16, interpret=True)
    assert rel_err(out, numpy_gmm(x, w, gs)) < 1e-5


def test_no_recompile_when_group_sizes_change(data):
    x, w = jnp.asarray(data["x"]), jnp.asarray(data["w"])
    gmm_module._gmm_pallas.clear_cache()
    for sizes in ([10, 3, 20, 12], [0, 40, 5, 0], [45, 0, 0, 0]):
        gmm(x, w, jnp.array(sizes, jnp.int32), impl="pallas", tiling=T16, interpret=True)
    assert gmm_module._gmm_pallas._cache_size() == 1


def test_moe_ffn_gradients_match_reference():
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

    vp, gp = jax.value_and_grad(loss("pallas"), argnums=(0, 1, 2, 3))(x, *ws)
    vr, gr = jax.value_and_grad(loss("reference"), argnums=(0, 1, 2, 3))(x, *ws)
    assert float(vp) == pytest.approx(float(vr), rel=1e-5)
    for a, b in zip(gp, gr, strict=True):
        assert rel_err(a, b) < 1e-4
    assert np.abs(np.asarray(gp[0][34:])).max() == 0  # rows past sum(gs) get no gradient


_metadata = jax.jit(visit_metadata, static_argnums=(1, 2))


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=9, max_size=9), bm=st.sampled_from([1, 4, 16, 64])
)
def test_visit_metadata_covers_every_row_once(sizes, bm):
    # Fixed M and E (sizes include empty groups) so that only bm triggers compiles.
    gs = np.array(sizes, np.int32)
    m = 400
    tile, group, lo, hi = np.asarray(_metadata(jnp.asarray(gs), m, bm))
    assert len(tile) == num_visits(m, bm, len(gs))
    owner = np.full(m, -1)
    starts = np.concatenate([[0], np.cumsum(gs)])
    for t, g, a, b in zip(tile, group, lo, hi, strict=True):
        if a == b:
            continue
        assert t * bm <= a < b <= (t + 1) * bm, "a visit stays inside its tile"
        assert np.all(owner[a:b] == -1), "a row is covered twice"
        owner[a:b] = g
    expect = np.searchsorted(starts[1:], np.arange(m), side="right")  # group of each row
    expect[np.arange(m) >= gs.sum()] = len(gs)  # the zero pseudo-group
    np.testing.assert_array_equal(owner, expect)


def test_routing_round_trip():
    rng = np.random.default_rng(2)
    T, D, Ex, k = 12, 8, 4, 2
    x = jnp.asarray(rng.standard_normal((T, D)), jnp.float32)
    logits = jnp.asarray(rng.standard_normal((T, Ex)), jnp.float32)
    weights, index = route_top_k(logits, k)
    order, token, gs = sort_by_expert(index, Ex)
    assert int(gs.sum()) == T * k
    sorted_experts = np.asarray(index.reshape(-1)[order])
    assert np.all(np.diff(sorted_experts) >= 0)
    # identity "experts": combine must return sum_k w_k x = x (weights are normalised)
    y = combine(x[token], order, token, weights, T)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="top_k"):
        route_top_k(logits, 5)


def test_bad_arguments_are_clear():
    x, w = jnp.ones((4, 16)), jnp.ones((2, 16, 16))
    with pytest.raises(ValueError, match="group_sizes"):
        gmm(x, w, jnp.ones((3,), jnp.int32))
    with pytest.raises(TypeError, match="bfloat16"):
        gmm(x, w.astype(jnp.bfloat16), jnp.ones((2,), jnp.int32))
    with pytest.raises(ValueError, match="impl"):
        gmm(x, w, jnp.ones((2,), jnp.int32), impl="cuda")


# ------------------------------------------------------------------ Mosaic GPU (any jax)
# The interpret-mode tests of the Mosaic kernels are in test_kernels_mosaic.py (jax >= 0.11);
# lowering them for a CUDA device works on a CPU with every supported jax, so it runs here.


def test_impl_dispatch(monkeypatch):
    assert gmm_module._resolve("pallas") == "triton"  # a CPU is no Hopper GPU
    assert gmm_module._resolve("triton") == "triton"
    assert gmm_module._resolve("mosaic") == "mosaic"
    if jax.default_backend() != "gpu":
        assert gmm_module._resolve("auto") == "reference"
    monkeypatch.setattr(gmm_module, "is_hopper", lambda: True)
    assert gmm_module._resolve("pallas") == "triton"  # Mosaic unchecked on a GPU: opt-in
    monkeypatch.setenv("DERISK_PALLAS", "mosaic")
    want = "mosaic" if gmm_module._mosaic.HAS_MOSAIC_GPU else "triton"
    assert gmm_module._resolve("pallas") == want


S = jax.ShapeDtypeStruct
BENCH_SHAPES = {  # (M, E, D, F) of benchmarks/moe_kernel.py
    "S1": (16384, 8, 1024, 4096),
    "S2": (16384, 64, 2048, 1024),
    "S3": (8192, 8, 4096, 14336),
    "decode": (512, 8, 4096, 14336),
    "fine": (32768, 128, 2048, 512),
}


@pytest.mark.parametrize("shape", list(BENCH_SHAPES))
def test_mosaic_kernels_lower_for_cuda_with_the_gpu_tilings(shape):
    """The GPU tilings lower to Mosaic GPU IR (rules, layouts, shared memory) for each
    projection of the benchmark shapes: gate+up fused, and down."""
    m, e, d, f = BENCH_SHAPES[shape]
    for fused, (k, n) in ((True, (d, f)), (False, (f, d))):
        t = gmm_module.default_mosaic_tiling(m, k, n, e, fused=fused, on_gpu=True)
        fn = functools.partial(mosaic_module.gmm_mosaic, tiling=t, interpret=False, fused=fused)
        ws = (S((e, k, n), jnp.bfloat16),) * (2 if fused else 1)
        text = mosaic_module.lowers_for_cuda(fn, S((m, k), jnp.bfloat16), ws, S((e,), jnp.int32))
        assert "mosaic_gpu" in text


def test_mosaic_lowering_check_catches_an_oversized_tiling():
    """The check above can fail: 8 stages of 256 x 128 tiles need 1.5 MB of shared memory."""
    t = Tiling(bm=256, bn=256, bk=128, num_stages=8)
    fn = functools.partial(mosaic_module.gmm_mosaic, tiling=t, interpret=False, fused=True)
    ws = (S((8, 1024, 4096), jnp.bfloat16),) * 2
    with pytest.raises(ValueError, match="shared memory"):
        mosaic_module.lowers_for_cuda(fn, S((4096, 1024), jnp.bfloat16), ws, S((8,), jnp.int32))
