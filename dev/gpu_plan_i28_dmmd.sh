#!/usr/bin/env bash
# Issue 28, item 2: D-MMD (train.py --distill_method dmmd, dmmd.py) against the frontier, on one CUDA
# GPU, one call of under 9 minutes (each part has a time limit):
#   bash dev/gpu_plan_i28_dmmd.sh "$OUT"
# 1. Three distillations of weights/model.pt at once on the one GPU (5m30s at most): rounds of 800
#    steps of 128 sequences, the student learning 16 passes, then 8 (--distill_start_passes 32
#    --distill_rounds 2), spread order, no dropout, wsd schedule:
#      n16      --noise_dim 16 --lr 1e-4   (the paper's noise input)
#      n16_lr3  --noise_dim 16 --lr 3e-4
#      n0       no noise input, --lr 1e-4  (a factorised step: what the noise input is worth)
#    The auxiliary model learns at 4x the student's rate (--dmmd_aux_lr_mult's default). A run the
#    limit stops keeps the students of the rounds it finished.
# 2. quality.py, 64 prompts, seeds 0,1,2: each student<N>.pt at N passes, and the teacher at 16 and 8,
#    with the frontier's setting at 8 and 16 (spread, remask 0, temperature 0.9, linear; RESULTS.md
#    2026-12-03), the same at temperature 1.0 (the students' training temperature), and random order at
#    temperature 1.0 (the paper's ancestral order); one process per checkpoint, all at once (their chars/s
#    are not a speed measurement).
# 3. Beside 2: evaluate.py, the n16 students' val NELBO at context 0 and 128 (4 mask draws, as the SDTT
#    rows of RESULTS.md 2026-12-01; a student's noise input is drawn afresh at every pass).
# Writes five files to "$1" (the checkpoints stay in $SCRATCH): i28_dmmd_train.txt (device, the runs'
# progress lines), i28_dmmd_logs.txt (their log.jsonl rows), i28_dmmd_quality.txt / .jsonl, i28_dmmd_eval.txt.
set -uo pipefail
out=${1:-assets/runs}
scratch=${SCRATCH:-/tmp/i28_dmmd}
mkdir -p "$out" "$scratch"
export TINY_SHAKESPEARE=${TINY_SHAKESPEARE:-data/tiny_shakespeare.txt} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$scratch/device.txt"
common="--distill_from weights/model.pt --distill_method dmmd --distill_start_passes 32 --distill_rounds 2
    --distill_round_steps ${ROUND_STEPS:-800} --batch_size 128 --warmup_steps 50 --schedule wsd --cooldown 0.1
    --dropout 0 --attn_dropout 0 --embd_dropout 0 --distill_order spread --eval_interval ${ROUND_STEPS:-800}
    --eval_mc 1 --log_interval 100 --save_interval 60 --device cuda --overwrite --data $TINY_SHAKESPEARE"
declare -A runs=([n16]="--noise_dim 16 --lr 1e-4" [n16_lr3]="--noise_dim 16 --lr 3e-4" [n0]="--lr 1e-4")
for run in "${!runs[@]}"; do
    timeout ${TRAIN_LIMIT:-330} python train.py $common ${runs[$run]} --out_dir "$scratch/$run" \
        > "$scratch/train_$run.txt" 2>&1 &
done
wait
{ cat "$scratch/device.txt"; for run in n16 n16_lr3 n0; do
    echo "== $run: python train.py $common ${runs[$run]}" | tr -s ' \n' ' '; echo; cat "$scratch/train_$run.txt"
done; } > "$out/i28_dmmd_train.txt"
for run in n16 n16_lr3 n0; do
    echo "== $run"; cat "$scratch/$run/log.jsonl" 2>/dev/null
done > "$out/i28_dmmd_logs.txt"
settings() {  # settings N: the frontier's setting at N passes, at temperature 1.0, and random order
    echo "steps=$1,order=spread,remask=0,temperature=0.9,schedule=linear"
    echo "steps=$1,order=spread,remask=0,temperature=1.0,schedule=linear"
    echo "steps=$1,order=random,remask=0,temperature=1.0,schedule=linear"
}
score() {  # score CKPT NAME SETTINGS...: one quality.py process, its table and rows in $scratch
    local ckpt=$1 name=$2; shift 2
    timeout ${QUALITY_LIMIT:-150} python quality.py --ckpt "$ckpt" --data "$TINY_SHAKESPEARE" --prompts 64 --seeds 0,1,2 --device cuda \
        --settings "$@" --jsonl "$scratch/quality_$name.jsonl" > "$scratch/quality_$name.txt" 2>&1
}
score weights/model.pt teacher $(settings 16) $(settings 8) &
for run in n16 n16_lr3 n0; do for n in 16 8; do
    if [ -f "$scratch/$run/student$n.pt" ]; then
        cp "$scratch/$run/student$n.pt" "$scratch/dmmd_${run}_student$n.pt"  # the file name is the rows' ckpt
        score "$scratch/dmmd_${run}_student$n.pt" "${run}_$n" $(settings $n) &
    fi
done; done
for n in 16 8; do for context in 0 128; do  # beside the scoring (eager sampling leaves the GPU room)
    if [ -f "$scratch/n16/student$n.pt" ]; then
        timeout ${QUALITY_LIMIT:-150} python evaluate.py --ckpt "$scratch/n16/student$n.pt" --data "$TINY_SHAKESPEARE" --context $context \
            --mc 4 --device cuda --no-progress > "$scratch/eval_${n}_$context.txt" 2>&1 &
    fi
done; done
wait
for f in "$scratch"/quality_*.txt; do echo "== $(basename "$f" .txt)"; cat "$f"; done > "$out/i28_dmmd_quality.txt"
cat "$scratch"/quality_*.jsonl > "$out/i28_dmmd_quality.jsonl" 2>/dev/null
for f in "$scratch"/eval_*.txt; do echo "== n16 $(basename "$f" .txt)"; cat "$f"; done > "$out/i28_dmmd_eval.txt"
grep -h "^| steps" "$out/i28_dmmd_quality.txt" | head -40
echo "total ${SECONDS}s"
