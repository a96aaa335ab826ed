#!/usr/bin/env bash
# Issue 27, the remaining GPU work, on one CUDA GPU (an H200), in one call of at most 8 minutes:
#   bash dev/gpu_plan_i27_final.sh "$OUT"      (data/tiny_shakespeare.txt carried, or $TINY_SHAKESPEARE)
# 1. the sweep, alone on the GPU (it is the timing): bench.py --sample --compile --cuda-graph at batch
#    1..256 for the default (64 passes), fast32 (32 passes, in band), sparse2 (the sparse cache nearest
#    the band) and the AR baseline, in ONE process: the sparse passes' buckets keep its compiled
#    shapes to ~30 graphs of the step (limit 64; past it a warning line, which we grep for);
# 2. then, side by side (neither is a timing): the GPU tests of the graph and compile paths, and
#    quality.py (64 prompts x seeds 0,1,2) for the sparse cache at refresh 2 and 4 x temperature
#    0.9/0.95 x remask 0.6/0.7, the 32-pass setting, and the sparse cache at the 32-pass setting.
# Each part is cut by `timeout` so the whole ends inside DEADLINE seconds (default 465). Six files
# come back (the device's limit is 8). Then, here:
#   python bench.py --plot "$OUT"/i27_final_sample_*.jsonl assets/runs/i27_cpu_sample.jsonl --out assets/speed.png
set -uo pipefail
out=${1:-assets/runs}
mkdir -p "$out"
export TINY_SHAKESPEARE=${TINY_SHAKESPEARE:-data/tiny_shakespeare.txt} PYTHONUNBUFFERED=1
deadline=$((SECONDS + ${DEADLINE:-465}))
left() {  # left CAP [RESERVE]: seconds for the next part, at most CAP, leaving RESERVE to the deadline (>= 10)
    local t=$((deadline - SECONDS - ${2:-0})); [ "$t" -gt "$1" ] && t=$1; [ "$t" -lt 10 ] && t=10; echo "$t"; }
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
tag=$(echo "$gpu" | grep -o 'H[0-9]00' | head -1 | tr A-Z a-z); tag=${tag:-gpu}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__)"; } | tee "$out/i27_final_device_$tag.txt"

# 1. the sweep: about 40 compiles (the step per shape and batch, the AR step, the bare passes) and
#    the timed runs; expected 4-5 minutes, cut so that 2 minutes stay for part 2
timeout "$(left 330 130)" python bench.py --sample --compile --cuda-graph --batch-sizes 1,4,16,64,256 \
    --settings default fast32 sparse2 --jsonl "$out/i27_final_sample_$tag.jsonl" 2>&1 \
    | tee "$out/i27_final_sample_$tag.txt"
grep -c "recompile limit" "$out/i27_final_sample_$tag.txt" | sed 's/^/recompile-limit warnings in the sweep: /'

# 2. tests and quality side by side, each with what is left (expected 1-2 minutes each)
t=$(left 200 5)
timeout "$t" python -m pytest -q -rs --durations=12 tests/test_sparse_buckets.py tests/test_sampler.py \
    tests/test_ar_sampler.py tests/test_bench.py tests/test_block.py -k "cuda or gpu or compiled or graph" \
    > "$out/i27_final_tests_$tag.txt" 2>&1 &
sparse=""
for refresh in 2 4; do for temperature in 0.9 0.95; do for remask in 0.6 0.7; do
    sparse="$sparse cache=sparse,refresh=$refresh,temperature=$temperature,remask=$remask"
done; done; done
timeout "$t" python quality.py --prompts 64 --seeds 0,1,2 --device cuda --settings default fast32 sparse2 $sparse \
    fast32,cache=sparse,refresh=2 fast32,cache=sparse,refresh=4 \
    --jsonl "$out/i27_final_quality_$tag.jsonl" > "$out/i27_final_quality_$tag.txt" 2>&1 &
wait
tail -n 20 "$out/i27_final_tests_$tag.txt"
cat "$out/i27_final_quality_$tag.txt"
echo "done in ${SECONDS}s"
