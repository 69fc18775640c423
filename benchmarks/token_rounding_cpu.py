"""Token rounding's effect on the loss: the same small MoE trained on the CPU with the
router's group sizes left alone and rounded to multiples of the GPU kernel's tile.

    python benchmarks/token_rounding_cpu.py [--tokens 2000000] [--seeds 0,1] [--out DIR]

Rounding to the tile (`ModelConfig(round_to=...)`, `derisk.kernels.round_groups`) makes
every kernel tile hold one expert's rows: on a GPU it removes the straddled tiles that cost
up to 49% extra work at 64 experts. What it costs is routing quality: some assignments are
dropped (the lowest-scoring ones of an expert rounded down) and some added (the next-best
tokens of an expert rounded up). This script measures that cost as held-out loss.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax

from derisk.estimators import ModelConfig, TrainConfig, load_corpus, lr_for_width, train

MODEL = dict(arch="moe", d_model=64, n_layer=2, n_head=2, seq_len=128, experts=8, top_k=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2_000_000)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--round-to", default="0,64,128", help="0 = no rounding")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    corpus = load_corpus(max_bytes=20_000_000)
    info = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "model": MODEL,
        "tokens": args.tokens,
        "batch_size": 16,
        "rows_per_expert_per_step": 16 * MODEL["seq_len"] * MODEL["top_k"] // MODEL["experts"],
    }
    print(json.dumps(info), flush=True)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for r in (int(x) for x in args.round_to.split(",")):
            cfg = ModelConfig(**MODEL, round_to=r)
            tc = TrainConfig(
                tokens=args.tokens,
                batch_size=16,
                lr=lr_for_width(cfg.d_model),
                seed=seed,
                eval_every=10**9,  # one evaluation, at the end
                eval_batches=32,
            )
            res = train(cfg, tc, corpus)
            rows.append(
                {
                    "seed": seed,
                    "round_to": r,
                    "status": res.status,
                    "val_loss": res.final_val_loss,
                    "tokens_per_s": res.tokens_per_s,
                    "wall_s": res.wall_s,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "token_rounding_cpu.json"), "w") as fh:
        json.dump({"info": info, "rows": rows}, fh, indent=1)
    print("| seed | round_to | held-out loss (nats/byte) | tokens/s |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['round_to']} | {r['val_loss']:.4f} | {r['tokens_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
