#!/usr/bin/env bash
# Issue 29 item 1 on one CUDA GPU, one call (~8 minutes): the step graph's GPU tests, bench.py's
# graph / fast paths of the shipped recipe in one run, then dev/step_variants.py's other levers
# (compiled side by side, timed one at a time). Logs to $1.
set -uo pipefail
out=${1:-assets/runs}; mkdir -p "$out" /tmp/v
export PYTHONUNBUFFERED=1 TINY_SHAKESPEARE=${TINY_SHAKESPEARE:-data/tiny_shakespeare.txt}
dev=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "$dev; $(python -c 'import torch; print("torch", torch.__version__)')" | tee "$out/i29_step_device.txt"
timeout 200 python -m pytest -q -rs tests/test_train_graph.py 2>&1 | tail -15 | tee "$out/i29_step_tests.txt"
timeout 170 python bench.py --paths graph,fast --steps 50 2>&1 | tee "$out/i29_step_bench.txt"
for v in shipped bf16-residual graph-bf16-residual no-attn-dropout no-dropout flash efficient batch512; do
    timeout 170 python dev/step_variants.py --variant $v > /tmp/v/$v.txt 2>&1 &
done; wait
for f in /tmp/v/*.txt; do echo "== $f"; tail -n 3 "$f"; done | tee "$out/i29_step_variants.txt"
