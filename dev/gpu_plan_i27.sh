#!/usr/bin/env bash
# Issue 27 on one CUDA GPU (H200), in two calls (each well inside 10 minutes). Logs go to $2.
#   bash dev/gpu_plan_i27.sh tests "$OUT"   # GPU tests, the --cuda-graph sweep, the sparse cache's quality
#   bash dev/gpu_plan_i27.sh compile "$OUT" # the --compile --cuda-graph sweep
# then, here: python bench.py --plot assets/runs/i27_sample_*_h200.jsonl --out assets/runs/i27_speed_h200.png
# Sweep: bench.py --sample at batch 1..256, diffusion (default; sparse cache) and the AR
# baseline, each on the engine given. Quality: quality.py on 64 prompts x 3 seeds, the
# default against the sparse cache at refresh 2, 4, 8, 16 (which refresh stays in the band).
set -uo pipefail
part=$1 out=${2:-assets/runs}
mkdir -p "$out"
export TINY_SHAKESPEARE=${TINY_SHAKESPEARE:-data/tiny_shakespeare.txt} PYTHONUNBUFFERED=1
sizes=1,4,16,64,256
sweep() {  # sweep NAME FLAGS...: one bench.py --sample run, its log and its JSONL
    local name=$1; shift
    python bench.py --sample --batch-sizes $sizes --settings default cache=sparse "$@" \
        --jsonl "$out/i27_sample_${name}_h200.jsonl" 2>&1 | tee "$out/i27_sample_${name}_h200.txt"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/i27_device_h200.txt"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$out/i27_device_h200.txt"
if [ "$part" = tests ]; then
    timeout 200 python -m pytest -q -rs tests/test_ar_sampler.py tests/test_bench.py \
        tests/test_sampler.py tests/test_block.py -k "cuda or gpu or compiled" 2>&1 | tail -40 | tee "$out/i27_tests_h200.txt"
    timeout 200 bash -c "$(declare -f sweep); out=$out sizes=$sizes; sweep graph --cuda-graph"
    timeout 150 python quality.py --prompts 64 --seeds 0,1,2 --device cuda --settings default \
        cache=sparse,refresh=2 cache=sparse,refresh=4 cache=sparse,refresh=8 cache=sparse,refresh=16 \
        --jsonl "$out/i27_quality_sparse_h200.jsonl" 2>&1 | tee "$out/i27_quality_sparse_h200.txt"
else
    timeout 480 bash -c "$(declare -f sweep); out=$out sizes=$sizes; sweep compile_graph --compile --cuda-graph"
fi
