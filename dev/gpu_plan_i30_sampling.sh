#!/usr/bin/env bash
# Issue 30, items 2 and 3, on one CUDA machine: a block model's text quality against passes per
# block (the sampler re-chosen within blocks), then the exact cache's speed beside the
# full-window model and the graphed AR model in one bench.py run.
#
#   bash dev/gpu_plan_i30_sampling.sh OUT CKPT...    # block models, e.g. ARMS/runs/b16_s1/best.pt
#
# Quality: quality.py --prompts ${PROMPTS:-64} --seeds 0,1,2 per model, --cache exact, at P passes per block
# (PASSES="1 2 4 8", each <= L'), steps = P x 256 / L', every combination of order (spread,
# confidence), temperature (0.9, 1.0) and remask (0, 0.5): OUT/i30_quality_NAME.{txt,jsonl}, NAME
# the run folder's name. A model whose quality file exists is skipped, so a second call goes on
# where a first stopped (each model's grid is ~32 settings: give it its own call if it is slow).
# Speed (SPEED=1, after the grids): bench.py --sample --compile --cuda-graph --batch-sizes 1,64
# with the full-window teacher's default, each block model at 2 and 4 passes per block with the
# exact cache, and the AR baseline: OUT/i30_speed.{txt,jsonl}.
set -uo pipefail
out=${1:?OUT}; shift
[ $# -gt 0 ] || { echo "give at least one block-model checkpoint" >&2; exit 2; }
mkdir -p "$out"
export TINY_SHAKESPEARE=${TINY_SHAKESPEARE:-data/tiny_shakespeare.txt} PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo cpu; } \
    > "$out/i30_sampling_device.txt"

block_len() {  # block_len CKPT: its L' (0: not a block model)
    python -c "import sys; from checkpoint import read_checkpoint as r; c = r(sys.argv[1])['config']; \
print(c.get('block_len', 0) if c.get('objective') == 'block' else 0)" "$1"
}

speed=()
for ckpt in "$@"; do
    L=$(block_len "$ckpt") || exit 2
    [ "$L" -gt 0 ] || { echo "$ckpt is not a block model" >&2; exit 2; }
    name=$(basename "$(dirname "$ckpt")")
    speed+=("ckpt=$ckpt,steps=$((2 * 256 / L)),cache=exact" "ckpt=$ckpt,steps=$((4 * 256 / L)),cache=exact")
    [ -f "$out/i30_quality_$name.jsonl" ] && continue
    settings=()
    for p in ${PASSES:-1 2 4 8}; do
        [ "$p" -le "$L" ] || continue
        for order in spread confidence; do for t in 0.9 1.0; do for r in 0 0.5; do
            settings+=("steps=$((p * 256 / L)),cache=exact,order=$order,temperature=$t,remask=$r")
        done; done; done
    done
    python quality.py --ckpt "$ckpt" --prompts ${PROMPTS:-64} --seeds 0,1,2 --no-progress --settings "${settings[@]}" \
        --jsonl "$out/i30_quality_$name.jsonl.part" > "$out/i30_quality_$name.txt" 2>&1 \
        && mv "$out/i30_quality_$name.jsonl.part" "$out/i30_quality_$name.jsonl"
done
if [ -n "${SPEED:-}" ]; then
    python bench.py --sample --ckpt weights/model.pt --compile --cuda-graph --batch-sizes 1,64 \
        --settings default "${speed[@]}" --jsonl "$out/i30_speed.jsonl" 2>&1 | grep -v Warning | tee "$out/i30_speed.txt"
fi
