#!/usr/bin/env bash
# Issue 15's GPU measurements in one device call (H100/H200, jax 0.11, PyTorch, Triton):
# the kernel benchmark (correctness of both backends first, then ours beside every peer),
# then the trainer's MFU. Each part has a time budget and saves its rows as it goes, so a
# run cut short keeps what it measured. At most 400 s: room for a rerun in 15 minutes.
#
#   ScatterMoE's source must travel in build/peers (ignored, never committed); here:
#   mkdir -p build/peers && git --git-dir=<fetched scattermoe repo> archive HEAD scattermoe \
#       LICENSE | tar -x -C build/peers
#   then: run(command="bash benchmarks/gpu_issue15.sh", carry=["build/peers"], timeout_s=420)
set -uo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
timeout 210 python3 benchmarks/moe_kernel.py --out "$OUT" --scattermoe build/peers \
    --budget-s 160 2>&1 | tee "$OUT/moe_kernel.log"
timeout 190 python3 benchmarks/train_gpu.py --out "$OUT" --steps 8 --batch-size 8 \
    --budget-s 120 2>&1 | tee "$OUT/train_gpu.log"
