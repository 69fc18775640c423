"""A roadmap node's training run -> its probability of success and its compute.

A node with `train: {arch, params | active_params, tokens, ...}` and
`success: {loss_below: x, law: NAME}` gets p = P(loss < x) under the law's predictive
distribution (bootstrap parameters x run-to-run noise) and a cost of the run's training
FLOPs (attention included; for an MoE, the active parameters do the work).
"""

from __future__ import annotations

from dataclasses import dataclass

from derisk.scaling._fit import FitResult
from derisk.scaling._optimal import flops_per_token, load_law
from derisk.scaling._predict import predict_loss, uses_active_params

SHIPPED_LAWS = {"dense": "cpu-dense", "moe": "cpu-moe"}  # the laws fitted to the shipped runs


@dataclass(frozen=True)
class TrainEstimate:
    law: str
    params: float  # what the law takes as N (active or total non-embedding)
    tokens: float
    loss: float  # the law's point prediction
    loss_interval: tuple[float, float] | None  # 80% predictive
    p: float | None  # P(loss < loss_below), None without a `success` block
    flops: float  # training FLOPs
    params_beyond: float = 1.0  # params / the largest fitted run's (> 1: extrapolating)
    tokens_beyond: float = 1.0  # tokens / the most fitted tokens


def law_params(fit: FitResult, train: dict) -> float:
    """The parameter count this law was fitted on, from a `train:` block."""
    dense = train.get("arch", "dense") == "dense"
    active = uses_active_params(fit)
    want = "active_params" if active else "params"
    if want in train:
        return float(train[want])
    if dense and ("params" in train or "active_params" in train):
        return float(train.get("params", train.get("active_params")))
    raise ValueError(
        f"needs `{want}` ({'active' if active else 'total'} non-embedding parameters): "
        "that is what its law was fitted on"
    )


def training_flops(train: dict) -> float:
    """tokens x FLOPs per token: 6N for the matmuls (N = active params) plus attention,
    with d_model and layers when given, else from a fixed aspect ratio."""
    n = float(train.get("active_params", train.get("params", 0.0)))
    d = float(train["tokens"])
    seq = int(train.get("seq_len", 2048))
    if "d_model" in train and "layers" in train:
        per_token = 6.0 * n + 6.0 * int(train["layers"]) * seq * int(train["d_model"])
    else:
        per_token = float(flops_per_token(n, seq_len=seq))
    return d * per_token


def estimate(train: dict, success: dict | None = None) -> TrainEstimate:
    """Resolve one node. Raises DataError for a missing law, ValueError for a spec the law
    cannot read (the loader turns both into a located roadmap problem)."""
    if "tokens" not in train:
        raise ValueError("needs `tokens` (training tokens)")
    if "params" not in train and "active_params" not in train:
        raise ValueError("needs `params` or `active_params`")
    arch = train.get("arch", "dense")
    name = (success or {}).get("law") or SHIPPED_LAWS[arch]
    fit = load_law(str(name))
    n = law_params(fit, train)
    if fit.law == "moe_experts" and "experts" not in train:
        raise ValueError(f"law `{name}` is an experts law: give `experts`")
    pr = predict_loss(
        fit,
        n,
        float(train["tokens"]),
        experts=float(train.get("experts", 1)),
        granularity=float(train.get("granularity", 1)),
        below=None if success is None else float(success["loss_below"]),
    )
    return TrainEstimate(
        law=str(name),
        params=n,
        tokens=float(train["tokens"]),
        loss=pr.loss,
        loss_interval=pr.interval,
        p=pr.p_below,
        flops=training_flops(train),
        params_beyond=pr.params_beyond,
        tokens_beyond=pr.tokens_beyond,
    )
