"""Small real trainings (dense and MoE), their FLOP counts, the run store, and the
resolve stage that turns a roadmap's `train:`/`success:` specs into p and cost.

The trainer and the store import JAX; they load on first use (PEP 562), so resolving and
planning a roadmap never import JAX.
"""

import importlib

from derisk.estimators._hardware import ACCELERATORS, Accelerator, accelerator, gpu_hours
from derisk.estimators._resolve import (
    SHIPPED_LAWS,
    Estimate,
    Resolved,
    counted_params,
    price,
    resolve,
    run_flops,
)

_LAZY = {
    "Corpus": "_data",
    "batch": "_data",
    "check_corpus": "_data",
    "load_corpus": "_data",
    "ModelConfig": "_model",
    "flops_per_token": "_model",
    "forward": "_model",
    "init_params": "_model",
    "loss_fn": "_model",
    "param_counts": "_model",
    "Claim": "_store",
    "RunStore": "_store",
    "check_sweep": "_store",
    "check_value": "_store",
    "default_store": "_store",
    "law_point": "_store",
    "load_sweep": "_store",
    "run_key": "_store",
    "sweep_points": "_store",
    "LR_X_D_MODEL": "_train",
    "RunResult": "_train",
    "TrainConfig": "_train",
    "lr_for_width": "_train",
    "train": "_train",
    "training_bytes": "_train",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"derisk.estimators.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'derisk.estimators' has no attribute {name!r}")


__all__ = [
    "ACCELERATORS",
    "SHIPPED_LAWS",
    "Accelerator",
    "Estimate",
    "Resolved",
    "accelerator",
    "counted_params",
    "gpu_hours",
    "price",
    "resolve",
    "run_flops",
    *_LAZY,
]
