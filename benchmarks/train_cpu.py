"""Training throughput on this machine's CPU: reading the loss back every step (the old
trainer, the baseline) against every 16 steps (the default), same models, same run.

    python benchmarks/train_cpu.py [--steps 200] [--out benchmarks/results]

Each (model, sync) pair is trained twice, alternating, and the faster of the two is kept,
so a background hiccup does not decide the comparison. The two settings compute the same
thing (tests/test_estimators.py checks the loss curves agree).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax

from derisk.estimators import ModelConfig, TrainConfig, load_corpus, lr_for_width, train

SETTING = dict(n_layer=2, n_head=2, seq_len=64, experts=4, top_k=1)
MODELS = [("dense", 16), ("dense", 64), ("dense", 128), ("moe", 64)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    corpus = load_corpus(max_bytes=20_000_000)
    info = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "steps": args.steps,
    }
    rows = []
    for arch, d in MODELS:
        cfg = ModelConfig(arch=arch, d_model=d, **SETTING)
        tc = TrainConfig(
            tokens=args.steps * 16 * cfg.seq_len,
            lr=lr_for_width(d),
            eval_every=10**9,  # one evaluation, at the end
            eval_batches=1,
        )
        best = {1: 0.0, 16: 0.0}
        for _ in range(2):
            for k in (1, 16):
                best[k] = max(best[k], train(cfg, tc, corpus, sync_every=k).tokens_per_s)
        rows.append(
            {
                "model": f"{arch} d{d}",
                "sync_every_step": best[1],
                "sync_every_16": best[16],
                "speedup": best[16] / best[1],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "train_cpu.json"), "w") as fh:
        json.dump({"info": info, "rows": rows}, fh, indent=1)
    print("| model | tokens/s, sync every step | tokens/s, every 16 | speedup |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['sync_every_step']:,.0f} | {r['sync_every_16']:,.0f} "
            f"| {r['speedup']:.2f}x |"
        )


if __name__ == "__main__":
    main()
