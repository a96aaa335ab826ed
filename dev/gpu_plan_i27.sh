#!/usr/bin/env bash
# Issue 27 on one CUDA GPU (H200): the AR sampler's and bench.py's GPU tests, the sampling sweep
# (diffusion default and sparse cache, the AR baseline; each with --compile --cuda-graph, and
# eager for scale) and its plot. About 6 minutes. Logs go to $1 (default assets/runs).
#     bash dev/gpu_plan_i27.sh "$OUT"
set -euo pipefail
out=${1:-assets/runs}
mkdir -p "$out"
export TINY_SHAKESPEARE=${TINY_SHAKESPEARE:-data/tiny_shakespeare.txt}
sizes=1,4,16,64,256
python -m pytest -q tests/test_ar_sampler.py tests/test_bench.py 2>&1 | tee "$out/i27_tests_h200.txt"
python bench.py --sample --compile --cuda-graph --batch-sizes $sizes --settings default cache=sparse \
    --jsonl "$out/i27_sample_graph_h200.jsonl" 2>&1 | tee "$out/i27_sample_graph_h200.txt"
python bench.py --sample --cuda-graph --batch-sizes $sizes --settings default \
    --jsonl "$out/i27_sample_graph_nocompile_h200.jsonl" 2>&1 | tee "$out/i27_sample_graph_nocompile_h200.txt"
python bench.py --sample --batch-sizes $sizes --settings default cache=sparse --runs 3 --warmup 1 \
    --jsonl "$out/i27_sample_eager_h200.jsonl" 2>&1 | tee "$out/i27_sample_eager_h200.txt"
python bench.py --plot "$out"/i27_sample_*_h200.jsonl --out "$out/i27_speed_h200.png"
