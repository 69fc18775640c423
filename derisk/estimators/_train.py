"""Training one small language model: optax AdamW, warmup + cosine, held-out evaluation."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax

from derisk.estimators._data import Corpus, batch, check_corpus
from derisk.estimators._model import (
    ModelConfig,
    flops_per_token,
    init_params,
    loss_fn,
    param_counts,
)

# Dense bf16 peak FLOP/s by device kind, for model FLOPs utilisation (None: unknown).
PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
}


# The learning rate that trains these small models well falls with width, ~1/d_model
# (probes in BENCHMARKS.md); the shipped sweep and `derisk train` use lr = this / d_model.
LR_X_D_MODEL = 0.096


def lr_for_width(d_model: int) -> float:
    return LR_X_D_MODEL / d_model


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train. CLI flags map one to one onto these fields."""

    tokens: int = 2_000_000  # training tokens (bytes)
    batch_size: int = 16
    lr: float = 3e-3
    warmup: float = 0.05  # fraction of steps
    weight_decay: float = 0.1
    seed: int = 0
    eval_every: int = 0  # steps between evaluations (0: 10 evaluations per run)
    eval_batches: int = 8
    divergence: float = 3.0  # stop if the train loss exceeds this multiple of its start

    def __post_init__(self):
        errs = []

        def need(ok, name, what):
            value = getattr(self, name)
            if not ok:
                errs.append(f"{name} must be {what}, got {value!r}")

        def real(x):
            return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

        def whole(x, lo, hi):
            return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi

        need(whole(self.tokens, 1, 10**15), "tokens", "a whole number from 1 to 1e15")
        need(whole(self.batch_size, 1, 2**31 - 1), "batch_size", "a positive whole number")
        need(real(self.lr) and self.lr > 0, "lr", "a finite number above 0")
        need(real(self.warmup) and 0 <= self.warmup < 1, "warmup", "a fraction in [0, 1)")
        need(real(self.weight_decay) and self.weight_decay >= 0, "weight_decay", ">= 0")
        need(whole(self.seed, 0, 2**32 - 1), "seed", "a whole number from 0 to 2**32 - 1")
        need(whole(self.eval_every, 0, 2**31 - 1), "eval_every", "a whole number >= 0")
        need(whole(self.eval_batches, 1, 2**31 - 1), "eval_batches", "a whole number >= 1")
        need(real(self.divergence) and self.divergence > 1, "divergence", "a number above 1")
        if errs:
            raise ValueError("; ".join(errs))


@dataclass
class RunResult:
    status: str  # "finished" or "diverged: ..." (never raised: a failed run is data)
    final_val_loss: float
    best_val_loss: float
    curve: list = field(default_factory=list)  # (tokens, train_loss, val_loss)
    tokens: int = 0
    flops: float = 0.0
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    mfu: float | None = None
    device: str = ""
    params: dict = field(default_factory=dict)

    def as_dict(self):
        return asdict(self)


def _step_fn(cfg: ModelConfig, opt):
    """The whole training step (forward, backward, clipping, AdamW) as one jitted program.

    params and opt_state are donated: the step updates them in place on the device instead
    of allocating a second copy of the weights and Adam moments each step. The caller must
    not reuse the arrays it passed in.
    """

    def step(params, opt_state, tokens):
        (loss, ce), grads = jax.value_and_grad(lambda p: loss_fn(cfg, p, tokens), has_aux=True)(
            params
        )
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, ce

    return jax.jit(step, donate_argnums=(0, 1))


def training_bytes(model: ModelConfig, tc: TrainConfig) -> int:
    """Rough peak memory of a training step: fp32 weights, gradients and two Adam moments
    (16 bytes a parameter), plus activations kept for the backward pass (~24 fp32 values
    per token, layer and model width, and the attention scores)."""
    tokens = tc.batch_size * model.seq_len
    acts = model.n_layer * tokens * (24 * model.d_model + 2 * model.n_head * model.seq_len)
    return 16 * param_counts(model)["total"] + 4 * acts + 4 * tokens * 256 * 3


def train(
    model: ModelConfig, tc: TrainConfig, corpus: Corpus, *, progress=None, sync_every: int = 16
) -> RunResult:
    """Train to `tc.tokens` and return the result; divergence ends the run as data.

    The loss is read back to the host every `sync_every` steps (and at each evaluation), not
    every step, so the host keeps the device busy; divergence is still found at the exact
    step, a few steps late at most.
    """
    check_corpus(corpus, model)
    steps = max(1, tc.tokens // (tc.batch_size * model.seq_len))
    warmup = max(1, int(tc.warmup * steps))
    sched = optax.warmup_cosine_decay_schedule(
        0.0,
        tc.lr,
        warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1),  # optax needs a non-empty cosine phase
        end_value=tc.lr * 0.1,
    )
    opt = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=tc.weight_decay),
    )
    params = init_params(model, jax.random.PRNGKey(tc.seed))
    opt_state = opt.init(params)
    step = _step_fn(model, opt)
    eval_loss = jax.jit(lambda p, t: loss_fn(model, p, t)[1])
    every = tc.eval_every or max(1, steps // 10)

    def evaluate(p):
        losses = [
            float(
                eval_loss(
                    p,
                    jnp.asarray(
                        batch(
                            corpus.valid,
                            batch_size=tc.batch_size,
                            seq_len=model.seq_len,
                            step=i,
                            seed=10_000 + tc.seed,
                        )
                    ),
                )
            )
            for i in range(tc.eval_batches)
        ]
        return float(np.mean(losses))

    fpt = flops_per_token(model)
    device = jax.devices()[0].device_kind
    curve, best, status, first = [], math.inf, "finished", None
    t0 = time.perf_counter()
    per_step = tc.batch_size * model.seq_len
    train_time, tick = 0.0, None
    seen = 0
    val = math.nan
    pending = []  # train losses still on the device: read every `sync_every` steps
    for i in range(steps):
        x = jnp.asarray(
            batch(
                corpus.train, batch_size=tc.batch_size, seq_len=model.seq_len, step=i, seed=tc.seed
            )
        )
        params, opt_state, ce = step(params, opt_state, x)
        pending.append(ce)
        evaluate_now = (i + 1) % every == 0 or i == steps - 1
        if not (i == 0 or evaluate_now or len(pending) >= sync_every):
            continue  # keep dispatching: the host runs ahead of the device
        losses = [float(v) for v in jax.device_get(pending)]
        now = time.perf_counter()
        if tick is not None:  # step 0 includes compilation; evaluations are not training
            train_time += now - tick
        tick = now
        first_step = i + 1 - len(pending)
        pending = []
        first = losses[0] if first is None else first
        for k, ce in enumerate(losses):
            if not math.isfinite(ce) or ce > tc.divergence * first:
                status = (
                    f"diverged: train loss {ce:.3g} at step {first_step + k} "
                    f"(started at {first:.3g})"
                )
                seen = (first_step + k + 1) * per_step
                break
        if status != "finished":
            break
        seen = (i + 1) * per_step
        if evaluate_now:
            val = evaluate(params)
            best = min(best, val)
            curve.append((seen, ce, val))
            tick = time.perf_counter()
        if progress is not None:
            rate = (seen - per_step) / train_time if train_time else 0.0
            progress(i + 1, steps, ce, rate)
    wall = time.perf_counter() - t0
    rate = (seen - per_step) / train_time if train_time > 0 else 0.0
    peak = PEAK_FLOPS.get(device)
    return RunResult(
        status=status,
        final_val_loss=val if status == "finished" else math.nan,
        best_val_loss=best,
        curve=curve,
        tokens=seen,
        flops=fpt * seen,
        wall_s=wall,
        tokens_per_s=rate,
        mfu=(rate * fpt / peak) if peak and rate else None,
        device=device,
        params=param_counts(model),
    )
