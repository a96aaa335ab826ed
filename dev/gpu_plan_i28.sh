#!/usr/bin/env bash
# Issue 28, item 1 (the frontier) and issue 27's in-band sparse setting, on one CUDA GPU, one call:
#   bash dev/gpu_plan_i28.sh "$OUT"
# For each pass count N in 8 16 24 32 48 64 a quality.py grid over order x remask x temperature x
# schedule (48 settings, 64 prompts, seeds 0,1,2), one process per N, all on the one GPU at once
# (eager batch-64 sampling is launch-bound, so they share it well; their chars/s columns are not a
# speed measurement). Beside them, the sparse cache at refresh 2 and 4 against temperature and
# remasking (issue 27: which setting keeps it in the band). Then, here:
#   python quality.py --plot assets/runs/i28_frontier_*_h200.jsonl --out assets/frontier.png
set -uo pipefail
out=${1:-assets/runs}
mkdir -p "$out"
export TINY_SHAKESPEARE=${TINY_SHAKESPEARE:-data/tiny_shakespeare.txt} PYTHONUNBUFFERED=1
LIMIT=${LIMIT:-540}
grid() {  # grid N: the 48 settings at N passes
    for order in spread random confidence noisy; do for remask in 0 0.5; do
    for temperature in 0.8 0.9 1.0; do for schedule in cosine linear; do
        echo "steps=$1,order=$order,remask=$remask,temperature=$temperature,schedule=$schedule"
    done; done; done; done
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/i28_device_h200.txt"
for n in ${NS:-8 16 24 32 48 64}; do
    timeout $LIMIT python quality.py --prompts 64 --seeds 0,1,2 --device cuda --settings $(grid $n) \
        --jsonl "$out/i28_frontier_${n}_h200.jsonl" > "$out/i28_frontier_${n}_h200.txt" 2>&1 &
done
sparse=""
for refresh in 2 4; do for temperature in 0.9 1.0 1.1; do for remask in 0.5 0.75; do for order in spread random; do
    sparse="$sparse cache=sparse,refresh=$refresh,temperature=$temperature,remask=$remask,order=$order"
done; done; done; done
timeout $LIMIT python quality.py --prompts 64 --seeds 0,1,2 --device cuda --settings default $sparse \
    --jsonl "$out/i27_quality_sparse_grid_h200.jsonl" > "$out/i27_quality_sparse_grid_h200.txt" 2>&1 &
wait
tail -n 3 "$out"/i28_frontier_*_h200.txt "$out/i27_quality_sparse_grid_h200.txt"
