#!/usr/bin/env bash
# Issue 30, item 1: the block-diffusion spectrum at one budget, each point early-stopped at its
# best validation step (train.py --patience), then both protocols paired with the AR and the
# full-window model. One CUDA machine, one or more calls:
#   bash dev/gpu_plan_i30_spectrum.sh OUT MINUTES SEED POINT...      # train, then evaluate
#   EVAL_ONLY=1 bash dev/gpu_plan_i30_spectrum.sh OUT MINUTES SEED   # evaluate what OUT/runs holds
# POINT: ar (the shipped AR recipe, --preset gpu-ar), full (--preset gpu, L' = 256), b4, b16, b64
# (--preset gpu --objective block --block_len L'); DROPOUT=0.1 (say) overrides the preset's dropout
# of the block and full points, for the small regularisation search. Each point trains for at most
# MINUTES of wall time on a GPU of its own: with several GPUs the points run at once, one per GPU;
# with one, one after another (never two on one GPU: the budget is a whole GPU's). A run that
# exists continues (--resume), so a budget longer than one call is split over calls.
# Evaluation: every best.pt at --context 0 and 128, 4 mask draws, paired with ar and full.
set -uo pipefail
out=${1:?OUT}; minutes=${2:?MINUTES}; seed=${3:?SEED}; shift 3
mkdir -p "$out/runs"
export TINY_SHAKESPEARE=${TINY_SHAKESPEARE:-data/tiny_shakespeare.txt} PYTHONUNBUFFERED=1
ngpu=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/i30_device.txt"

flags() {  # flags POINT: its recipe
    local common="--time_budget $minutes --max_steps 1000000 --patience ${PATIENCE:-4} --seed $seed"
    local drop=${DROPOUT:+--dropout $DROPOUT}
    case $1 in
        ar) echo "--preset gpu-ar $common" ;;  # its own recipe (evaluates every 250 steps)
        full) echo "--preset gpu --eval_interval 500 $drop $common" ;;
        b*) echo "--preset gpu --objective block --block_len ${1#b} --eval_interval 500 $drop $common" ;;
        *) echo "unknown point $1" >&2; return 1 ;;
    esac
}

train_point() {  # train_point POINT GPU
    local dir="$out/runs/i30_$1_s$seed${DROPOUT:+_d$DROPOUT}" resume=""
    [ -f "$dir/last.pt" ] && resume="--resume"
    CUDA_VISIBLE_DEVICES=$2 python train.py $(flags "$1") --out_dir "$dir" $resume \
        >> "$out/i30_$1_s$seed${DROPOUT:+_d$DROPOUT}.txt" 2>&1
}

if [ -z "${EVAL_ONLY:-}" ]; then
    i=0
    for point in "$@"; do
        train_point "$point" $((i % ngpu)) &
        i=$((i + 1))
        [ $((i % ngpu)) -eq 0 ] && wait  # one run per GPU at a time
    done
    wait
fi

for ctx in 0 128; do
    for dir in "$out"/runs/i30_*_s"$seed"*; do
        [ -f "$dir/best.pt" ] || continue
        for ref in ar full; do
            other="$out/runs/i30_${ref}_s$seed/best.pt"
            [ -f "$other" ] && [ "$dir" != "$out/runs/i30_${ref}_s$seed" ] || continue
            echo "== $(basename "$dir") vs $ref, context $ctx"
            python evaluate.py --ckpt "$dir/best.pt" --paired "$other" --context "$ctx" --mc 4 --no-progress
        done
    done
done 2>&1 | tee "$out/i30_eval_s$seed.txt"
