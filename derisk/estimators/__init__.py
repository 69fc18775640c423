"""Small real trainings (dense and MoE), their FLOP counts, and the run store."""

from derisk.estimators._data import Corpus, batch, check_corpus, load_corpus
from derisk.estimators._model import (
    ModelConfig,
    flops_per_token,
    forward,
    init_params,
    loss_fn,
    param_counts,
)
from derisk.estimators._store import (
    Claim,
    RunStore,
    check_sweep,
    check_value,
    default_store,
    law_point,
    load_sweep,
    run_key,
    sweep_points,
)
from derisk.estimators._train import (
    LR_X_D_MODEL,
    RunResult,
    TrainConfig,
    lr_for_width,
    train,
    training_bytes,
)

__all__ = [
    "LR_X_D_MODEL",
    "Claim",
    "Corpus",
    "ModelConfig",
    "RunResult",
    "RunStore",
    "TrainConfig",
    "batch",
    "check_corpus",
    "check_sweep",
    "check_value",
    "default_store",
    "flops_per_token",
    "forward",
    "init_params",
    "law_point",
    "load_corpus",
    "load_sweep",
    "loss_fn",
    "lr_for_width",
    "param_counts",
    "run_key",
    "sweep_points",
    "train",
    "training_bytes",
]
