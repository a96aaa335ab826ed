#!/usr/bin/env bash
# Issue 28 item 4 / issue 27: the speed of the shipped 16-pass D-MMD student (weights/student16.pt)
# on one CUDA GPU:
#   bash dev/gpu_plan_i28_bench.sh "$OUT"          (CKPT=... for another student)
# 1. bench.py --sample --compile --cuda-graph at batch 1..256: the student at its stored setting
#    (16 passes) beside the graphed AR baseline and the bare passes, in one process (the timing,
#    alone on the GPU);
# 2. then, with TEST_LIMIT=SECONDS, issue 27's GPU test of the compiled sparse cache, alone (its CPU
#    fixture trains a tiny run). Off by default: the sweep gets up to BENCH_LIMIT=400 s of the
#    call's 600 (the teacher's three-setting sweep of 2026-12-07 did not fit 240 s past batch 16).
# Three files come back: the sweep's log (the device and the student's sha256 first) and JSONL, the test's log.
set -uo pipefail
out=${1:-assets/runs}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
ckpt=${CKPT:-weights/student16.pt}
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
tag=$(echo "$gpu" | grep -o 'H[0-9]00' | head -1 | tr A-Z a-z); tag=${tag:-gpu}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__)"; sha256sum "$ckpt"; } > "$out/i28_student_sample_$tag.txt"
timeout ${BENCH_LIMIT:-400} python bench.py --sample --ckpt "$ckpt" --compile --cuda-graph --batch-sizes 1,4,16,64,256 \
    --settings default --jsonl "$out/i28_student_sample_$tag.jsonl" 2>&1 | tee -a "$out/i28_student_sample_$tag.txt"
if [ "${TEST_LIMIT:-0}" -gt 0 ]; then
    timeout ${TEST_LIMIT} python -m pytest -q -rs --durations=5 tests/test_sparse_buckets.py \
        -k compiled_sparse_generation_on_cuda > "$out/i27_sparse_compile_test_$tag.txt" 2>&1
    tail -n 15 "$out/i27_sparse_compile_test_$tag.txt"
fi
echo "done in ${SECONDS}s"
