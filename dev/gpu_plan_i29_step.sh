#!/usr/bin/env bash
# Issue 29 item 1 on one CUDA GPU, one call (~3 minutes): bench.py's fast path of the shipped
# recipe, then dev/step_variants.py's levers, one process at a time (compiling beside a timing
# slows a host-paced step). Logs to $1. RESULTS.md, 2026-12-07: training step levers.
set -uo pipefail
out=${1:-assets/runs}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 TINY_SHAKESPEARE=${TINY_SHAKESPEARE:-data/tiny_shakespeare.txt}
dev=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "$dev; $(python -c 'import torch; print("torch", torch.__version__)')" | tee "$out/i29_step_device.txt"
timeout 100 python bench.py --paths fast --steps 50 2>&1 | grep -v Warning | tee "$out/i29_step_bench.txt"
for v in ${VARIANTS:-shipped bf16-residual bf16-weights bf16-weights-residual no-dropout bound}; do
    timeout 60 python dev/step_variants.py --variant $v 2>&1 | tail -1
done | tee "$out/i29_step_variants.txt"
