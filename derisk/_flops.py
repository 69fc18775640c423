"""One FLOP count for every part of derisk: the trainer, roadmap costs, `optimal --exact`
and `predict --d-model`.

The count is the trainer's, exact for the model `derisk train` builds (a pre-norm decoder:
attention with four d x d projections, a SwiGLU feed-forward of width d_ff, RMS norms,
rotary positions, untied input and output embeddings; an MoE replaces the feed-forward
by `experts x granularity` narrower experts and a router, of which `top_k x granularity`
run per token). Training FLOPs per token are 3 x the forward (the backward costs twice
the forward):

- weight matmuls: 2 x the active non-embedding matmul parameters (router included);
- the output head: 2 x d_model x vocab;
- attention's scores and values: 2 x 2 x layers x d_model x (seq_len + 1) / 2 (causal:
  a token attends to (seq_len + 1) / 2 positions on average).

Norm weights, softmax and elementwise work are left out (under 1% at any size here).

Given only a parameter count N (non-embedding, active for an MoE), the shape is taken
from N = 12 layers d_model^2 with d_model = 128 x layers (a usual aspect ratio), as a
real-valued shape: it prices the attention term, which is small at scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRAINER_VOCAB = 256  # `derisk train` models bytes
ASPECT = 128.0  # d_model / layers when only a parameter count is given


@dataclass(frozen=True, kw_only=True)
class Shape:
    """A decoder's shape, as `derisk train` builds it."""

    d_model: int
    layers: int
    seq_len: int = 2048
    vocab: int = TRAINER_VOCAB
    arch: str = "dense"  # "dense" or "moe"
    experts: int = 1
    top_k: int = 1
    granularity: int = 1  # experts G times narrower, G times more of them
    ffn_mult: float = 8 / 3  # SwiGLU hidden = ffn_mult x d_model (LLaMA's 2/3 x 4)

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


def param_counts(shape: Shape) -> dict[str, int]:
    """Parameter counts: total, active (per token), non_embedding, non_embedding_active.

    >>> param_counts(Shape(d_model=64, layers=2))["non_embedding"]
    100672
    """
    d, n_layer = shape.d_model, shape.layers
    attn = 4 * d * d
    norms = 2 * d
    ffn_one = 3 * d * shape.d_ff
    if shape.arch == "moe":
        ffn_total = shape.n_experts * ffn_one + d * shape.n_experts  # experts + router
        ffn_active = shape.k_active * ffn_one + d * shape.n_experts
    else:
        ffn_total = ffn_active = ffn_one
    embed = shape.vocab * d * 2  # input embedding and untied output head
    block_total = n_layer * (attn + norms + ffn_total) + d  # + final norm
    block_active = n_layer * (attn + norms + ffn_active) + d
    return {
        "total": embed + block_total,
        "active": embed + block_active,
        "non_embedding": block_total,
        "non_embedding_active": block_active,
    }


def flops_per_token(shape: Shape) -> float:
    """Training FLOPs per token of `shape` (see the module docstring).

    >>> flops_per_token(Shape(d_model=64, layers=2, seq_len=128))
    799488.0
    """
    d, n_layer = shape.d_model, shape.layers
    matmul = n_layer * 4 * d * d
    if shape.arch == "moe":
        matmul += n_layer * (shape.k_active * 3 * d * shape.d_ff + d * shape.n_experts)
    else:
        matmul += n_layer * 3 * d * shape.d_ff
    head = d * shape.vocab
    attn = 2 * 2 * n_layer * d * (shape.seq_len + 1) / 2
    return 3.0 * (2 * matmul + 2 * head + attn)


def flops_per_token_from_params(
    params, *, seq_len: int = 2048, vocab: int = TRAINER_VOCAB, aspect: float = ASPECT
) -> float:
    """Training FLOPs per token given only the active non-embedding parameters N: the
    same count on the shape N = 12 layers d_model^2, d_model = aspect x layers (real
    valued), with the weight matmuls taken as exactly N (norm weights are negligible).
    Works elementwise on arrays."""
    layers = np.cbrt(np.asarray(params, dtype=np.float64) / (12 * aspect**2))
    d = aspect * layers
    attn = 2 * 2 * layers * d * (seq_len + 1) / 2
    return 3.0 * (2 * params + 2 * d * vocab + attn)


def training_flops(
    tokens: float,
    *,
    shape: Shape | None = None,
    params: float | None = None,
    seq_len: int = 2048,
    vocab: int = TRAINER_VOCAB,
) -> float:
    """Training FLOPs of a run over `tokens`: from its `shape`, else from `params` (the
    active non-embedding parameters)."""
    if shape is not None:
        return tokens * flops_per_token(shape)
    if params is None:
        raise ValueError("give a shape or a parameter count")
    return tokens * flops_per_token_from_params(params, seq_len=seq_len, vocab=vocab)
