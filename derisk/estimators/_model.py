"""A small decoder-only transformer in plain JAX, dense or Mixture-of-Experts.

Pre-norm (RMSNorm) blocks, rotary positions, causal multi-head attention and a SwiGLU
feed-forward; in the MoE variant the feed-forward is E experts behind a top-k softmax
router, dropless, run through `derisk.kernels.moe_ffn` (the Pallas kernel on a GPU), with
the Switch-Transformer load-balancing loss. Byte-level vocabulary (256).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from derisk.kernels import combine, moe_ffn, route_top_k, sort_by_expert

VOCAB = 256


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Model shape. Hashable: it is a static argument of the jitted step."""

    arch: str = "dense"  # "dense" or "moe"
    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    seq_len: int = 128
    ffn_mult: float = 8 / 3  # SwiGLU hidden = ffn_mult x d_model (LLaMA's 2/3 x 4)
    experts: int = 8
    top_k: int = 2
    granularity: int = 1  # G: experts are G times narrower (and G times more, top_k x G)
    aux_loss: float = 0.01  # load-balancing loss weight
    impl: str = "auto"  # kernel dispatch for the MoE layer
    compute_dtype: str = "float32"  # "bfloat16": bf16 matmuls, fp32 weights/norms/loss

    def __post_init__(self):
        errs = []
        if self.compute_dtype not in ("float32", "bfloat16"):
            errs.append(f"compute_dtype must be float32 or bfloat16, got {self.compute_dtype!r}")
        if self.arch not in ("dense", "moe"):
            errs.append(f"arch must be dense or moe, got {self.arch!r}")
        if self.d_model < 8 or self.n_layer < 1 or self.n_head < 1 or self.seq_len < 2:
            errs.append("d_model >= 8, n_layer >= 1, n_head >= 1 and seq_len >= 2 are required")
        elif self.d_model % self.n_head:
            errs.append(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        elif (self.d_model // self.n_head) % 2:
            errs.append(
                f"head size d_model/n_head = {self.d_model // self.n_head} must be even "
                "(rotary positions rotate pairs)"
            )
        if self.arch == "moe":
            if self.experts < 1 or self.granularity < 1:
                errs.append("experts and granularity must be at least 1")
            elif not 1 <= self.top_k <= self.experts:
                errs.append(f"top_k ({self.top_k}) must be between 1 and experts ({self.experts})")
        if errs:
            raise ValueError("; ".join(errs))

    @property
    def d_ff(self) -> int:
        """Hidden width of one expert (or of the dense FFN), a multiple of 16."""
        width = self.ffn_mult * self.d_model / (self.granularity if self.arch == "moe" else 1)
        return max(16, int(round(width / 16)) * 16)

    @property
    def n_experts(self) -> int:
        return self.experts * self.granularity if self.arch == "moe" else 1

    @property
    def k_active(self) -> int:
        return self.top_k * self.granularity if self.arch == "moe" else 1


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """total, active (per token) and non-embedding parameter counts."""
    d, L = cfg.d_model, cfg.n_layer
    attn = 4 * d * d
    norms = 2 * d
    ffn_one = 3 * d * cfg.d_ff
    if cfg.arch == "moe":
        ffn_total = cfg.n_experts * ffn_one + d * cfg.n_experts  # experts + router
        ffn_active = cfg.k_active * ffn_one + d * cfg.n_experts
    else:
        ffn_total = ffn_active = ffn_one
    embed = VOCAB * d * 2  # input embedding and untied output head
    block_total = L * (attn + norms + ffn_total) + d  # + final norm
    block_active = L * (attn + norms + ffn_active) + d
    return {
        "total": embed + block_total,
        "active": embed + block_active,
        "non_embedding": block_total,
        "non_embedding_active": block_active,
    }


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token: 3 x forward (backward costs twice the forward).

    Forward, per token: 2 x (active non-embedding matmul parameters, router included)
    for the weight matmuls, 2 x d x VOCAB for the output head, and attention's
    QK^T and AV: 2 x 2 x n_layer x seq_len x d_model, halved for the causal mask
    (on average a token attends to (seq_len + 1) / 2 positions).
    """
    d, L = cfg.d_model, cfg.n_layer
    matmul_params = L * (4 * d * d)
    if cfg.arch == "moe":
        matmul_params += L * (cfg.k_active * 3 * d * cfg.d_ff + d * cfg.n_experts)
    else:
        matmul_params += L * 3 * d * cfg.d_ff
    head = d * VOCAB
    attn = 2 * 2 * L * d * (cfg.seq_len + 1) / 2
    return 3.0 * (2 * matmul_params + 2 * head + attn)


def init_params(cfg: ModelConfig, key) -> dict:
    """Weights, scaled like GPT-2 (residual projections by 1/sqrt(2 n_layer))."""
    d, f, E = cfg.d_model, cfg.d_ff, cfg.n_experts
    keys = iter(jax.random.split(key, 4 + 8 * cfg.n_layer))
    std = 0.02
    resid = std / math.sqrt(2 * cfg.n_layer)

    def normal(shape, s):
        return s * jax.random.normal(next(keys), shape, jnp.float32)

    blocks = []
    for _ in range(cfg.n_layer):
        b = {
            "ln1": jnp.ones(d),
            "ln2": jnp.ones(d),
            "wqkv": normal((d, 3 * d), std),
            "wo": normal((d, d), resid),
        }
        if cfg.arch == "moe":
            b |= {
                "router": normal((d, E), std),
                "w_gate": normal((E, d, f), std),
                "w_up": normal((E, d, f), std),
                "w_down": normal((E, f, d), resid),
            }
        else:
            b |= {
                "w_gate": normal((d, f), std),
                "w_up": normal((d, f), std),
                "w_down": normal((f, d), resid),
            }
        blocks.append(b)
    return {
        "embed": normal((VOCAB, d), std),
        "head": normal((d, VOCAB), std),
        "ln_f": jnp.ones(d),
        "blocks": blocks,
    }


def _rms_norm(x, w, eps=1e-6):
    x32 = x.astype(jnp.float32)  # normalise in fp32 whatever the compute dtype
    out = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps) * w
    return out.astype(x.dtype)


def _rotary(x):
    """Rotary position embedding on (B, T, H, hd) (Su et al. 2021)."""
    T, hd = x.shape[1], x.shape[-1]
    freqs = 1.0 / (10000.0 ** (jnp.arange(0, hd, 2) / hd))  # (hd/2,)
    ang = jnp.arange(T)[:, None] * freqs[None, :]  # (T, hd/2)
    cos, sin = jnp.cos(ang)[None, :, None, :], jnp.sin(ang)[None, :, None, :]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).reshape(x.shape)


def _attention(cfg, b, x):
    B, T, d = x.shape
    H = cfg.n_head
    qkv = x @ b["wqkv"]  # (B, T, 3d)
    q, k, v = (t.reshape(B, T, H, d // H) for t in jnp.split(qkv, 3, axis=-1))
    q, k = _rotary(q), _rotary(k)
    att = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
    att = att / math.sqrt(d // H)  # (B, H, T, T), fp32
    mask = jnp.tril(jnp.ones((T, T), bool))
    att = jax.nn.softmax(jnp.where(mask, att, -1e30), axis=-1).astype(v.dtype)
    y = jnp.einsum("bhts,bshd->bthd", att, v).reshape(B, T, d)
    return y @ b["wo"]


def _moe(cfg, b, x):
    """Top-k routed experts; returns (output, load-balancing loss)."""
    B, T, d = x.shape
    flat = x.reshape(B * T, d)
    logits = jnp.dot(flat, b["router"], preferred_element_type=jnp.float32)  # (N, E)
    weights, index = route_top_k(logits, cfg.k_active)
    order, token, sizes = sort_by_expert(index, cfg.n_experts)
    y_sorted = moe_ffn(flat[token], b["w_gate"], b["w_up"], b["w_down"], sizes, impl=cfg.impl)
    y = combine(y_sorted, order, token, weights, B * T)
    # Switch Transformer (Fedus et al. 2021) eq. 4: E x sum_e f_e P_e.
    probs = jax.nn.softmax(logits, axis=-1)
    frac = sizes / (B * T * cfg.k_active)
    aux = cfg.n_experts * jnp.sum(jax.lax.stop_gradient(frac) * probs.mean(axis=0))
    return y.reshape(B, T, d), aux


def forward(cfg: ModelConfig, params, tokens):
    """tokens (B, T) int -> logits (B, T, VOCAB) float32, auxiliary loss (scalar)."""
    dt = jnp.dtype(cfg.compute_dtype)
    # Mixed precision: fp32 master weights, cast for the matmuls; norms stay fp32.
    params = jax.tree_util.tree_map(lambda w: w if w.ndim == 1 else w.astype(dt), params)
    x = params["embed"][tokens]  # (B, T, d)
    aux = jnp.zeros(())
    for b in params["blocks"]:
        x = x + _attention(cfg, b, _rms_norm(x, b["ln1"]))
        h = _rms_norm(x, b["ln2"])
        if cfg.arch == "moe":
            y, a = _moe(cfg, b, h)
            aux = aux + a
        else:
            y = (jax.nn.silu(h @ b["w_gate"]) * (h @ b["w_up"])) @ b["w_down"]
        x = x + y
    logits = jnp.dot(
        _rms_norm(x, params["ln_f"]), params["head"], preferred_element_type=jnp.float32
    )
    return logits, aux / cfg.n_layer


def loss_fn(cfg: ModelConfig, params, tokens):
    """Next-byte cross-entropy (nats) + aux_loss x load balancing; returns (total, ce)."""
    logits, aux = forward(cfg, params, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()
    return ce + (cfg.aux_loss * aux if cfg.arch == "moe" else 0.0), ce
