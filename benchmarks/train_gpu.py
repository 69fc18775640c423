"""Training throughput on a GPU: dense vs MoE with the Pallas kernel vs MoE with the
reference (ragged_dot) layer, same model, same run; then a small GPU sweep.

    PYTHONPATH=. python benchmarks/train_gpu.py --out $OUT [--sweep-seconds 150]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax

from derisk.estimators import (
    ModelConfig,
    RunStore,
    TrainConfig,
    load_corpus,
    run_key,
    sweep_points,
    train,
)

BASE = dict(
    d_model=512,
    n_layer=4,
    n_head=8,
    seq_len=512,
    ffn_mult=4.0,
    compute_dtype="bfloat16",
    experts=8,
    top_k=2,
)


def throughput(corpus, steps=40, batch_size=32):
    rows = []
    for name, kw in [
        ("dense", dict(arch="dense")),
        ("moe, Pallas kernel", dict(arch="moe", impl="pallas")),
        ("moe, reference (ragged_dot)", dict(arch="moe", impl="reference")),
    ]:
        cfg = ModelConfig(**BASE, **kw)
        tc = TrainConfig(
            tokens=steps * batch_size * cfg.seq_len,
            batch_size=batch_size,
            eval_every=10**9,
            eval_batches=1,
        )
        for sync in (1, 16):  # loss read back every step (old trainer) vs every 16
            rows.append(_row(name, sync, train(cfg, tc, corpus, sync_every=sync)))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _row(name, sync, r):
    return {
        "model": name,
        "sync_every": sync,
        "status": r.status,
        "tokens_per_s": r.tokens_per_s,
        "mfu": r.mfu,
        "params": r.params,
        "loss": r.curve[-1][1] if r.curve else None,
        "device": r.device,
    }


SWEEP = {
    "arch": ["dense", "moe"],
    "d_model": [128, 256, 512],
    "n_layer": 4,
    "n_head": 4,
    "seq_len": 256,
    "ffn_mult": 4.0,
    "compute_dtype": "bfloat16",
    "experts": 8,
    "top_k": 2,
    "tokens": [2e6, 6e6],
    "batch_size": 32,
    "lr": 2e-3,
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sweep-seconds", type=float, default=150)
    args = ap.parse_args()
    corpus = load_corpus(max_bytes=30_000_000)
    info = {
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "corpus": corpus.digest,
        "date": time.strftime("%Y-%m-%d"),
        "base": BASE,
    }
    print(json.dumps(info), flush=True)
    rows = throughput(corpus)
    with open(os.path.join(args.out, "train_gpu.json"), "w") as fh:
        json.dump({"info": info, "throughput": rows}, fh, indent=1)
    store = RunStore(os.path.join(args.out, "runs_gpu.sqlite"))
    points, _ = sweep_points(SWEEP)
    t0 = time.time()
    for model, tc in points:
        if time.time() - t0 > args.sweep_seconds:
            break
        key = run_key(model, tc, corpus.digest)
        store.start(key, model, tc, corpus)
        r = train(model, tc, corpus)
        store.finish(key, r)
        print(
            json.dumps(
                {
                    "arch": model.arch,
                    "d": model.d_model,
                    "tokens": tc.tokens,
                    "val": r.final_val_loss,
                    "tok/s": r.tokens_per_s,
                    "mfu": r.mfu,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
