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

from derisk import _flops
from derisk._flops import TRAINER_VOCAB, Shape
from derisk.kernels import (
    combine,
    combine_rows,
    moe_ffn,
    round_groups,
    route_top_k,
    sort_by_expert,
)

VOCAB = TRAINER_VOCAB


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
    # Token rounding: round each expert's row count to a multiple of this many rows (the
    # kernel's tile) by dropping its lowest-scoring or adding its next-best tokens; 0: off.
    round_to: int = 0
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
        if not (isinstance(self.round_to, int) and self.round_to >= 0):
            errs.append(f"round_to must be a whole number >= 0, got {self.round_to!r}")
        if errs:
            raise ValueError("; ".join(errs))

    @property
    def d_ff(self) -> int:
        """Hidden width of one expert (or of the dense FFN), a multiple of 16."""
        return shape(self).d_ff

    @property
    def n_experts(self) -> int:
        return shape(self).n_experts

    @property
    def k_active(self) -> int:
        return shape(self).k_active


def shape(cfg: ModelConfig) -> Shape:
    """The model's shape, for the one FLOP and parameter count (`derisk._flops`)."""
    return Shape(
        d_model=cfg.d_model,
        layers=cfg.n_layer,
        seq_len=cfg.seq_len,
        vocab=VOCAB,
        arch=cfg.arch,
        experts=cfg.experts,
        top_k=cfg.top_k,
        granularity=cfg.granularity,
        ffn_mult=cfg.ffn_mult,
    )


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """total, active (per token) and non-embedding parameter counts (`derisk._flops`)."""
    return _flops.param_counts(shape(cfg))


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token: 3 x forward, attention, router and output head included
    (`derisk._flops`, which roadmap costs and `optimal --exact` use too)."""
    return _flops.flops_per_token(shape(cfg))


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


def attention_impl(dtype, head_dim: int) -> str:
    """cuDNN's fused attention on a GPU for the types and head sizes it takes, else XLA's."""
    fused_ok = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if jax.default_backend() == "gpu" and fused_ok and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    return "xla"


def _causal_attention_reference(q, k, v):
    """Plain causal softmax attention on (B, T, H, hd), softmax in fp32."""
    T = q.shape[1]
    att = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
    att = att / math.sqrt(q.shape[-1])  # (B, H, T, T), fp32
    mask = jnp.tril(jnp.ones((T, T), bool))
    att = jax.nn.softmax(jnp.where(mask, att, -1e30), axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", att, v)


def _causal_attention(q, k, v):
    """jax.nn.dot_product_attention: cuDNN's fused kernel where available (no [T, T]
    scores in memory), XLA's otherwise; the same maths as the reference above."""
    impl = attention_impl(q.dtype, q.shape[-1])
    if impl == "cudnn":
        try:
            return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")
        except (ValueError, NotImplementedError, RuntimeError):  # cuDNN missing or too old
            pass
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")


def _attention(cfg, b, x):
    B, T, d = x.shape
    H = cfg.n_head
    qkv = x @ b["wqkv"]  # (B, T, 3d)
    q, k, v = (t.reshape(B, T, H, d // H) for t in jnp.split(qkv, 3, axis=-1))
    q, k = _rotary(q), _rotary(k)
    y = _causal_attention(q, k, v).reshape(B, T, d)
    return y @ b["wo"]


def _moe(cfg, b, x):
    """Top-k routed experts; returns (output, load-balancing loss)."""
    B, T, d = x.shape
    flat = x.reshape(B * T, d)
    logits = jnp.dot(flat, b["router"], preferred_element_type=jnp.float32)  # (N, E)
    weights, index = route_top_k(logits, cfg.k_active)
    order, token, sizes = sort_by_expert(index, cfg.n_experts)
    probs = jax.nn.softmax(logits, axis=-1)
    ws = (b["w_gate"], b["w_up"], b["w_down"])
    if cfg.round_to:  # token rounding: whole tiles per expert
        rows, row_w, rounded = round_groups(probs, index, cfg.round_to)
        y_sorted = moe_ffn(flat[rows], *ws, rounded, impl=cfg.impl)
        y = combine_rows(y_sorted, rows, row_w, B * T)
    else:
        y_sorted = moe_ffn(flat[token], *ws, sizes, impl=cfg.impl)
        y = combine(y_sorted, order, token, weights, B * T)
    # Switch Transformer (Fedus et al. 2021) eq. 4: E x sum_e f_e P_e (f: before rounding).
    frac = sizes / (B * T * cfg.k_active)
    aux = cfg.n_experts * jnp.sum(jax.lax.stop_gradient(frac) * probs.mean(axis=0))
    return y.reshape(B, T, d), aux


def _block(cfg, x, b):
    """One pre-norm block: (x, its load-balancing loss, 0 for dense)."""
    x = x + _attention(cfg, b, _rms_norm(x, b["ln1"]))
    h = _rms_norm(x, b["ln2"])
    if cfg.arch == "moe":
        y, aux = _moe(cfg, b, h)
    else:
        y = (jax.nn.silu(h @ b["w_gate"]) * (h @ b["w_up"])) @ b["w_down"]
        aux = jnp.zeros((), jnp.float32)
    return x + y, aux.astype(jnp.float32)


def forward(cfg: ModelConfig, params, tokens):
    """tokens (B, T) int -> logits (B, T, VOCAB) float32, auxiliary loss (scalar)."""
    dt = jnp.dtype(cfg.compute_dtype)
    # Mixed precision: fp32 master weights, cast for the matmuls; norms stay fp32.
    params = jax.tree_util.tree_map(lambda w: w if w.ndim == 1 else w.astype(dt), params)
    x = params["embed"][tokens]  # (B, T, d)
    blocks = params["blocks"]
    if len(blocks) == 1:
        x, aux = _block(cfg, x, blocks[0])
    else:
        # One traced layer, scanned over the stacked weights: the compile time no longer
        # grows with depth (a 24-layer model compiles like a 1-layer one).
        stacked = jax.tree_util.tree_map(lambda *ws: jnp.stack(ws), *blocks)
        x, auxes = jax.lax.scan(lambda h, b: _block(cfg, h, b), x, stacked)
        aux = jnp.sum(auxes)
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
