"""Training throughput and model FLOPs utilisation on a GPU, in one run.

1. The issue-15 models: a ~350M-parameter dense model (d_model 1024, 24 layers, sequence
   1024, bf16 matmuls, fp32 master weights) and its MoE counterpart (8 experts, top-2),
   the MoE layer run by the Pallas kernels (impl="triton" and impl="mosaic") and by the
   reference layer (lax.ragged_dot), same data, same run. The trainer's step is one jitted
   program (forward, backward, clipping, AdamW) with donated buffers, layers scanned,
   attention through jax.nn.dot_product_attention (cuDNN where available), and the loss
   read back every 16 steps, not every step.
2. Optionally (--small), the earlier d_model-512 throughput table, and (--sweep-seconds)
   a small GPU sweep into a run store.

MFU = tokens/s x training FLOPs per token (derisk.estimators.flops_per_token) / peak,
with the peak from --peak-tflops (989: H100/H200 dense bf16).

    PYTHONPATH=. python benchmarks/train_gpu.py --out $OUT [--steps 12] [--budget-s 300]
    PYTHONPATH=. python benchmarks/train_gpu.py --smoke     # tiny, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

import jax

from derisk.estimators import (
    ModelConfig,
    RunStore,
    TrainConfig,
    flops_per_token,
    load_corpus,
    param_counts,
    run_key,
    sweep_points,
    train,
)
from derisk.estimators._model import attention_impl

BIG = dict(
    d_model=1024,
    n_layer=24,
    n_head=16,
    seq_len=1024,
    ffn_mult=3.25,  # d_ff 3328: 346M non-embedding parameters dense
    compute_dtype="bfloat16",
    experts=8,
    top_k=2,
)
SMALL = dict(
    d_model=512,
    n_layer=4,
    n_head=8,
    seq_len=512,
    ffn_mult=4.0,
    compute_dtype="bfloat16",
    experts=8,
    top_k=2,
)
TINY = dict(d_model=32, n_layer=2, n_head=2, seq_len=32, experts=4, top_k=2)
VARIANTS = [
    ("dense", dict(arch="dense")),
    ("moe, Pallas kernel (Triton)", dict(arch="moe", impl="triton")),
    ("moe, Pallas kernel (Mosaic GPU)", dict(arch="moe", impl="mosaic")),
    ("moe, reference (ragged_dot)", dict(arch="moe", impl="reference")),
]


def measure(corpus, base, *, steps, batch_size, peak, deadline, variants=VARIANTS):
    rows = []
    for name, kw in variants:
        if time.time() > deadline:
            rows.append({"model": name, "status": "skipped: out of the time budget"})
            continue
        cfg = ModelConfig(**base, **kw)
        tc = TrainConfig(
            tokens=steps * batch_size * cfg.seq_len,
            batch_size=batch_size,
            eval_every=10**9,
            eval_batches=1,
            lr=3e-4,
        )
        t0 = time.time()
        try:
            r = train(cfg, tc, corpus)
        except Exception:  # noqa: BLE001 - one failure must not cost the other rows
            rows.append({"model": name, "status": "error", "error": traceback.format_exc()[-800:]})
            print(json.dumps(rows[-1]), flush=True)
            continue
        fpt = flops_per_token(cfg)
        rows.append(
            {
                "model": name,
                "status": r.status,
                "params": param_counts(cfg),
                "tokens_per_s": r.tokens_per_s,
                "flops_per_token": fpt,
                "mfu": r.tokens_per_s * fpt / peak if r.tokens_per_s else None,
                "step_ms": 1e3 * batch_size * cfg.seq_len / r.tokens_per_s
                if r.tokens_per_s
                else None,
                "wall_s": time.time() - t0,
                "loss": r.curve[-1][1] if r.curve else None,
                "attention": attention_impl(cfg.compute_dtype, cfg.d_model // cfg.n_head),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


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
    ap.add_argument("--steps", type=int, default=12, help="optimizer steps per model")
    ap.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no model after this")
    ap.add_argument("--small", action="store_true", help="also the d_model-512 table")
    ap.add_argument("--sweep-seconds", type=float, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny models on a CPU")
    args = ap.parse_args()
    deadline = time.time() + args.budget_s
    corpus = load_corpus(max_bytes=2_000_000 if args.smoke else 30_000_000)
    info = {
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "corpus": corpus.digest,
        "date": time.strftime("%Y-%m-%d"),
        "base": TINY if args.smoke else BIG,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "peak_tflops": args.peak_tflops,
    }
    print(json.dumps(info), flush=True)
    os.makedirs(args.out, exist_ok=True)
    out = {"info": info}

    def save():
        with open(os.path.join(args.out, "train_gpu.json"), "w") as fh:
            json.dump(out, fh, indent=1)

    peak = args.peak_tflops * 1e12
    if args.smoke:
        out["big"] = measure(corpus, TINY, steps=3, batch_size=2, peak=peak, deadline=deadline)
        save()
        bad = [r for r in out["big"] if r["status"] != "finished"]
        raise SystemExit(1 if bad else 0)
    out["big"] = measure(
        corpus, BIG, steps=args.steps, batch_size=args.batch_size, peak=peak, deadline=deadline
    )
    save()
    if args.small:
        out["small"] = measure(corpus, SMALL, steps=40, batch_size=32, peak=peak, deadline=deadline)
        save()
    print("| model | params (active), non-embedding | tokens/s | step ms | MFU |")
    print("|---|---|---:|---:|---:|")
    for r in out["big"] + out.get("small", []):
        if r.get("tokens_per_s"):
            p = r["params"]
            print(
                f"| {r['model']} | {p['non_embedding'] / 1e6:.0f}M "
                f"({p['non_embedding_active'] / 1e6:.0f}M) | {r['tokens_per_s']:,.0f} | "
                f"{r['step_ms']:.1f} | {100 * r['mfu']:.1f}% |"
            )
    if args.sweep_seconds <= 0:
        return
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
        print(json.dumps({"arch": model.arch, "d": model.d_model, "val": r.final_val_loss}))


if __name__ == "__main__":
    main()
