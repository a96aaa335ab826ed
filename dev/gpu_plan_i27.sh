#!/usr/bin/env bash
# Issue 27 on one CUDA GPU (H200): the AR sampler's and bench.py's GPU tests, then the sampling
# sweep at batch 1..256 (diffusion default and sparse cache, the AR baseline), on three engines:
# --cuda-graph (the reference: bf16, static cache, one graph, no torch.compile), eager,
# and --compile --cuda-graph (last: compilation per batch size is the slow part; cut at 5 min);
# then the plot of every timed row. About 8 minutes. Logs go to $1 (default assets/runs).
#     bash dev/gpu_plan_i27.sh "$OUT"
set -uo pipefail
out=${1:-assets/runs}
mkdir -p "$out"
export TINY_SHAKESPEARE=${TINY_SHAKESPEARE:-data/tiny_shakespeare.txt} PYTHONUNBUFFERED=1
sizes=1,4,16,64,256
sweep() {  # sweep NAME FLAGS...: one bench.py --sample run, its log and its JSONL
    local name=$1; shift
    python bench.py --sample --batch-sizes $sizes --settings default cache=sparse "$@" \
        --jsonl "$out/i27_sample_${name}_h200.jsonl" 2>&1 | tee "$out/i27_sample_${name}_h200.txt"
}
timeout 120 python -m pytest -q tests/test_ar_sampler.py tests/test_bench.py 2>&1 | tee "$out/i27_tests_h200.txt"
sweep graph --cuda-graph
sweep eager --runs 3 --warmup 1
timeout 300 bash -c "$(declare -f sweep); out=$out sizes=$sizes; sweep compile_graph --compile --cuda-graph"
python bench.py --plot "$out"/i27_sample_*_h200.jsonl --out "$out/i27_speed_h200.png"
