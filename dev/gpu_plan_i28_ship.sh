#!/usr/bin/env bash
# Issue 28, item 4: the 16-pass D-MMD student to ship, from one CUDA GPU in one call (about 6 minutes):
#   bash dev/gpu_plan_i28_ship.sh "$OUT"
# 1. The n0 run of dev/gpu_plan_i28_dmmd.sh (no noise input, lr 1e-4: in band at 16 passes on
#    2026-12-07) at two training seeds at once: 1337 (the measured run's) and 2.
# 2. Each student16.pt to bf16 with its sampler setting (tools/export_weights.py --sampler), split in parts of 15 MB for the trip back
#    (join them here: cat dmmd16_s1337.pt.part.* > weights/student16.pt; the sha256 is in the log).
# 3. quality.py on each bf16 student at 16 passes, spread order, temperature 0.9 and 1.0, 64 prompts,
#    seeds 0,1,2 (the protocol of RESULTS.md 2026-12-07).
# Writes 7 files to "$1": 4 parts, i28_ship_log.txt, i28_ship_quality.txt, i28_ship_quality.jsonl
# (SHIP_SEEDS="1337": the parts of that seed's student only, 5 files).
set -uo pipefail
out=${1:-assets/runs}
scratch=${SCRATCH:-out/i28_ship}  # relative: the shipped train_config keeps its out_dir
mkdir -p "$out" "$scratch"
export TINY_SHAKESPEARE=${TINY_SHAKESPEARE:-data/tiny_shakespeare.txt} PYTHONUNBUFFERED=1
log="$out/i28_ship_log.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$log"
common="--distill_from weights/model.pt --distill_method dmmd --distill_start_passes 32 --distill_rounds 2
    --distill_round_steps 800 --batch_size 128 --warmup_steps 50 --schedule wsd --cooldown 0.1
    --dropout 0 --attn_dropout 0 --embd_dropout 0 --distill_order spread --eval_interval 800
    --eval_mc 1 --log_interval 100 --save_interval 60 --device cuda --overwrite --data $TINY_SHAKESPEARE --lr 1e-4"
for seed in 1337 2; do
    timeout ${TRAIN_LIMIT:-300} python train.py $common --seed $seed --out_dir "$scratch/s$seed" > "$scratch/train_s$seed.txt" 2>&1 &
done
wait
for seed in 1337 2; do
    { echo "== seed $seed: python train.py $common --seed $seed" | tr -s ' \n' ' '; echo; cat "$scratch/train_s$seed.txt"; } >> "$log"
    python tools/export_weights.py "$scratch/s$seed/student16.pt" "$scratch/dmmd16_s$seed.pt" \
        --sampler steps=16,order=spread,remask=0,temperature=0.9,schedule=linear >> "$log" 2>&1 &&
        { [[ " ${SHIP_SEEDS:-1337 2} " != *" $seed "* ]] || split -b 15M "$scratch/dmmd16_s$seed.pt" "$out/dmmd16_s$seed.pt.part."; } &&
        (cd "$scratch" && sha256sum "dmmd16_s$seed.pt") >> "$log"
done
for seed in 1337 2; do
    [ -f "$scratch/dmmd16_s$seed.pt" ] && timeout ${QUALITY_LIMIT:-150} python quality.py --ckpt "$scratch/dmmd16_s$seed.pt" \
        --data "$TINY_SHAKESPEARE" --prompts 64 --seeds 0,1,2 --device cuda \
        --settings "steps=16,order=spread,remask=0,temperature=0.9,schedule=linear" \
                   "steps=16,order=spread,remask=0,temperature=1.0,schedule=linear" \
        --jsonl "$scratch/quality_s$seed.jsonl" > "$scratch/quality_s$seed.txt" 2>&1 &
done
wait
for seed in 1337 2; do echo "== student of training seed $seed"; cat "$scratch/quality_s$seed.txt"; done > "$out/i28_ship_quality.txt"
cat "$scratch"/quality_s*.jsonl > "$out/i28_ship_quality.jsonl" 2>/dev/null
cat "$out/i28_ship_quality.txt"; grep "dmmd16" "$log"
echo "total ${SECONDS}s"
