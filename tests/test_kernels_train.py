"""The GPU-minded training step (fused attention, donated buffers, layers scanned) keeps the
CPU numerics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from derisk.estimators import ModelConfig
from derisk.estimators import _model as model_module
from derisk.estimators._train import _step_fn


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_fused_attention_matches_the_plain_one(dtype, tol):
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 16, 2, 8)), dtype) for _ in range(3))
    got = np.asarray(model_module._causal_attention(q, k, v), np.float32)
    want = np.asarray(model_module._causal_attention_reference(q, k, v), np.float32)
    assert np.abs(got - want).max() / np.abs(want).max() < tol
    # causal: the first position sees only itself, so its output is its own value
    np.testing.assert_allclose(got[:, 0], np.asarray(v[:, 0], np.float32), rtol=tol, atol=tol)


def test_attention_implementation_choice(monkeypatch):
    assert model_module.attention_impl(jnp.bfloat16, 64) == "xla"  # a CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert model_module.attention_impl(jnp.bfloat16, 64) == "cudnn"
    assert model_module.attention_impl(jnp.float32, 64) == "xla"  # cuDNN: bf16/fp16 only
    assert model_module.attention_impl(jnp.bfloat16, 256) == "xla"  # head size over 128


def test_donated_jitted_step_matches_a_plain_step(monkeypatch):
    cfg = ModelConfig(d_model=16, n_layer=1, n_head=2, seq_len=16)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=0.1))
    params = model_module.init_params(cfg, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.integers(0, 256, (4, 17)), jnp.int32) for _ in range(3)]

    # The plain step: no donation, the reference attention.
    @jax.jit
    def plain(params, state, tokens):
        grads, ce = jax.grad(lambda p: model_module.loss_fn(cfg, p, tokens), has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, ce

    with monkeypatch.context() as m:
        m.setattr(model_module, "_causal_attention", model_module._causal_attention_reference)
        p_ref, s_ref = params, opt.init(params)
        ce_ref = []
        for t in batches:
            p_ref, s_ref, ce = plain(p_ref, s_ref, t)
            ce_ref.append(float(ce))

    step = _step_fn(cfg, opt)
    p, s = jax.tree_util.tree_map(jnp.copy, params), opt.init(params)
    ce_new = []
    for t in batches:
        before = jax.tree_util.tree_leaves(p)
        p, s, ce = step(p, s, t)
        ce_new.append(float(ce))
        assert all(leaf.is_deleted() for leaf in before), "params were not donated"
    np.testing.assert_allclose(ce_new, ce_ref, rtol=1e-5)
    # Adam divides by sqrt(v): where a gradient is near zero, float noise moves the update by
    # up to ~lr x 1e-3, hence the absolute tolerance (the weights are ~0.02-0.05).
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(p_ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)


def test_scanned_layers_match_a_python_loop_over_the_blocks():
    cfg = ModelConfig(arch="moe", d_model=16, n_layer=3, n_head=2, seq_len=16, experts=4)
    params = model_module.init_params(cfg, jax.random.PRNGKey(2))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 16)), jnp.int32)
    logits, aux = jax.jit(model_module.forward, static_argnums=0)(cfg, params, tokens)
    x, total = params["embed"][tokens], 0.0
    for b in params["blocks"]:  # layer by layer, in order
        x, a = model_module._block(cfg, x, b)
        total += float(a)
    want = model_module._rms_norm(x, params["ln_f"]) @ params["head"]
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), rtol=1e-4, atol=1e-5)
    assert float(aux) == pytest.approx(total / cfg.n_layer, rel=1e-5)
