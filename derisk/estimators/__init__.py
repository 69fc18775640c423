"""Small real trainings (dense and MoE), their FLOP counts, and the run store."""

from derisk.estimators._data import Corpus, batch, load_corpus
from derisk.estimators._model import (
    ModelConfig,
    flops_per_token,
    forward,
    init_params,
    loss_fn,
    param_counts,
)
from derisk.estimators._store import (
    RunStore,
    default_store,
    load_sweep,
    run_key,
    sweep_points,
)
from derisk.estimators._train import RunResult, TrainConfig, train, training_bytes

__all__ = [
    "Corpus",
    "ModelConfig",
    "RunResult",
    "RunStore",
    "TrainConfig",
    "batch",
    "default_store",
    "flops_per_token",
    "forward",
    "init_params",
    "load_corpus",
    "load_sweep",
    "loss_fn",
    "param_counts",
    "run_key",
    "sweep_points",
    "train",
    "training_bytes",
]
