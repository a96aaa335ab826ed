#!/usr/bin/env bash
# Issue 28, item 3: the copula sampler (copula.py) against the frontier, on one CUDA GPU, one call
# (about 5 minutes on an H100; each part has a time limit, the whole stays under 8):
#   bash dev/gpu_plan_i28_copula.sh "$OUT"
# 1. quality.py, 64 prompts, seeds 0,1,2, at 8/16/24/32 passes: the frontier's best setting per pass
#    count (RESULTS.md 2026-12-03: spread order, temperature 0.9, linear schedule, remask 0 at 8 and
#    16, 0.5 at 24 and 32) plain, with copula=ar and with copula=l2r; one process per pass count, all
#    on the GPU at once (their chars/s are not a speed measurement: part 2 is). The 16-pass process
#    also runs the paper's own order (l2r, no remasking: with nothing on the right the copula's
#    text is the copula's, so copula=ar should score as the AR model at temperature 0.9, which it runs too).
#    Each row's NFE cell reads "16 +1843 ar +210 ref": diffusion passes, copula passes, left readings.
# 2. Wall time of one generation at batch 1 (prompt of 32 characters, 224 written, bf16, eager, one
#    warm-up), each setting alone on the GPU: sample.py --stats, 16 passes first; a run that would
#    end past 7m30s is skipped.
# Then, here: the quality rows against the frontier table, words % against passes and against
# seconds per generation.
set -uo pipefail
out=${1:-assets/runs}
mkdir -p "$out"
export TINY_SHAKESPEARE=${TINY_SHAKESPEARE:-data/tiny_shakespeare.txt} PYTHONUNBUFFERED=1
best() {  # best N: the frontier's setting at N passes
    local remask=0; [ "$1" -ge 24 ] && remask=0.5
    echo "steps=$1,order=spread,remask=$remask,temperature=0.9,schedule=linear"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/i28_copula_device.txt"
for n in 8 16 24 32; do
    extra=""
    [ "$n" = 16 ] && extra="ar,temperature=0.9 steps=16,order=l2r,remask=0,temperature=0.9,schedule=linear,copula=ar
        steps=16,order=l2r,remask=0,temperature=0.9,schedule=linear,copula=l2r"
    timeout ${LIMIT:-270} python quality.py --prompts 64 --seeds 0,1,2 --device cuda \
        --settings "$(best $n)" "$(best $n),copula=ar" "$(best $n),copula=l2r" $extra \
        --jsonl "$out/i28_copula_${n}.jsonl" > "$out/i28_copula_${n}.txt" 2>&1 &
done
wait
prompt="KING RICHARD III:\nNow is the win"  # 32 characters, as quality.py's prompts
flags() {  # flags N: best N as sample.py's flags
    local remask=0; [ "$1" -ge 24 ] && remask=0.5
    echo "--steps $1 --order spread --remask $remask --temperature 0.9 --schedule linear"
}
for n in 16 8 32 24; do for copula in none ar l2r; do
    [ $SECONDS -gt 420 ] && { echo "== $n passes, copula $copula: skipped (time)" >> "$out/i28_copula_latency.txt"; continue; }
    echo "== $n passes, copula $copula" >> "$out/i28_copula_latency.txt"
    timeout 30 python sample.py --device cuda --prompt "$prompt" --length 256 --seed 0 --warmup 1 --stats \
        $(flags $n) --copula $copula 2>> "$out/i28_copula_latency.txt" > /dev/null
done; done
tail -n 12 "$out"/i28_copula_*.txt
