#!/usr/bin/env bash
# Training arms at one budget on a CUDA machine, chained over calls, then each finished run scored
# under both protocols paired with the AR arm: issue 29 item 2 (the likelihood levers at the full
# budget, two seeds) and issue 30 item 1 (the block-diffusion spectrum, early-stopped).
#
#   bash dev/gpu_plan_arms.sh OUT MINUTES SEED ARM...      # train (or go on training), then score
#   python dev/run_table.py OUT                             # the run table, from what OUT holds
#
# ARM: a name below, or NAME=FLAGS for any other recipe on top of --preset gpu (or of the --preset
# FLAGS names first), quoted:
#   ar        the shipped AR recipe (--preset gpu-ar: 3,000 steps, best.pt its best evaluation)
#   full      the shipped diffusion recipe (--preset gpu: L' = 256, --prefix_prob 0.2)
#   lwnone    full with --loss_weights none          mixed     full with --objective mixed (--ar_fraction 0.25)
#   prefix0   full with --prefix_prob 0              prefix0.5 full with --prefix_prob 0.5
#   b4 b16 b64   full with --objective block --block_len L', evaluated every ${EVAL_INTERVAL:-500}
#             steps and stopped after ${PATIENCE:-4} evaluations without a new best (they over-fit)
#   e.g. 'combo=--loss_weights none --prefix_prob 0.5', 'ar20=--preset gpu-ar --max_steps 4000 --dropout 0.3'
# Every arm trains for at most MINUTES (--time_budget, counted across resumes; the schedule follows
# whichever of it and --max_steps ends the run first) on a GPU of its own: one arm per GPU at a
# time, never two on one GPU (the budget is a whole GPU's). best.pt is each run's best evaluation. A call stops its runs with
# SIGTERM before CALL_SECONDS (default 540) run out (each saves last.pt) and the next call with the
# same OUT resumes them, and starts the arms no GPU was free for. So a 15-minute budget takes two
# calls on a warm machine; keep OUT on the machine between them ($HOME/arms, not $OUT, which is
# emptied) and copy the logs out at the end of each call.
#
# Scoring (each finished run once, in the same call if time is left, else the next):
#   evaluate.py --context 0 and 128, --mc ${MC:-32} --seed 1, NELBO (NLL for AR), paired with the ar
#   arm of the same seed (when ar is among the ARMs, a run is scored once the ar run is finished) (CONTEXTS="0 128" by default); plain and mixed diffusion runs also --order l2r (exact, left to right)
#   paired with ar; mixed runs also --as-ar. One file per run: OUT/eval_NAME_sSEED.txt.
set -uo pipefail
out=${1:?OUT}; minutes=${2:?MINUTES}; seed=${3:?SEED}; shift 3
[ $# -gt 0 ] || { echo "give at least one ARM" >&2; exit 2; }
deadline=$((SECONDS + ${CALL_SECONDS:-540}))
mkdir -p "$out/runs"
export TINY_SHAKESPEARE=${TINY_SHAKESPEARE:-data/tiny_shakespeare.txt} PYTHONUNBUFFERED=1
if command -v nvidia-smi > /dev/null; then
    ngpu=$(nvidia-smi -L | wc -l)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/device.txt"
else  # a CPU dry run of the plan (with SMOKE_FLAGS for a tiny model)
    ngpu=1; echo "cpu" > "$out/device.txt"
fi
python -c 'import torch; print("torch", torch.__version__)' >> "$out/device.txt"

flags() {  # flags ARM: its recipe
    local cap="--time_budget $minutes --seed $seed"
    local early="--eval_interval ${EVAL_INTERVAL:-500} --patience ${PATIENCE:-4}"
    case $1 in
        *=--preset*) echo "$cap ${1#*=}" ;;
        *=*) echo "--preset gpu $cap ${1#*=}" ;;
        ar) echo "--preset gpu-ar $cap" ;;
        full) echo "--preset gpu $cap" ;;
        lwnone) echo "--preset gpu $cap --loss_weights none" ;;
        mixed) echo "--preset gpu $cap --objective mixed" ;;
        prefix0|prefix0.5) echo "--preset gpu $cap --prefix_prob ${1#prefix}" ;;
        b[0-9]*) echo "--preset gpu $cap --objective block --block_len ${1#b} $early" ;;
        *) echo "unknown arm $1" >&2; return 1 ;;
    esac
}

name_of() { echo "${1%%=*}_s$seed"; }

train_arm() {  # train_arm ARM GPU: until the run ends (a FINISHED mark) or the call's deadline
    local name dir resume="" left
    name=$(name_of "$1"); dir="$out/runs/$name"
    [ -f "$dir/FINISHED" ] && return 0
    [ -f "$dir/last.pt" ] && resume="--resume"
    left=$((deadline - SECONDS - ${EVAL_RESERVE:-0}))
    [ "$left" -gt 60 ] || return 0
    echo "$(date +%T) $name: $(flags "$1") ${SMOKE_FLAGS:-} $resume" >> "$out/plan.log"
    # SIGTERM: the step in progress ends, last.pt is saved, exit 130; KILL 60 s later if it hangs
    CUDA_VISIBLE_DEVICES=$2 timeout -k 60 "$left" python train.py $(flags "$1") ${SMOKE_FLAGS:-} \
        --out_dir "$dir" $resume >> "$out/$name.txt" 2>&1
    local rc=$?
    [ $rc -eq 0 ] && touch "$dir/FINISHED"
    echo "$(date +%T) $name: exit $rc" >> "$out/plan.log"
}

score() {  # score ARM: every protocol of a finished run, into OUT/eval_NAME.txt (whole or not at all)
    local name dir ar file part
    name=$(name_of "$1"); dir="$out/runs/$name"; ar="$out/runs/ar_s$seed"
    file="$out/eval_$name.txt"; part="$file.part"
    [ -f "$dir/FINISHED" ] && [ -f "$dir/best.pt" ] && [ ! -f "$file" ] || return 0
    local paired=""
    [ "$name" != "ar_s$seed" ] && [ -f "$ar/FINISHED" ] && paired="--paired $ar/best.pt"
    # an ar arm in this call's list: wait for it, so that every row is paired; without one, unpaired
    case " $ARMS " in *" ar "*) [ "$name" = "ar_s$seed" ] || [ -n "$paired" ] || return 0 ;; esac
    local f
    f=$(flags "$1")
    : > "$part"
    for ctx in ${CONTEXTS:-0 128}; do
        local how=("--order any")
        case "$f" in *"--objective block"*) ;; *"--objective mixed"*) how+=("--order l2r" "--as-ar") ;;
                     *"gpu-ar"*) ;; *) how+=("--order l2r") ;; esac
        for h in "${how[@]}"; do
            left=$((deadline - SECONDS))
            [ "$left" -gt 20 ] || { rm -f "$part"; return 0; }
            echo "== context $ctx $h" >> "$part"
            local p=$paired
            [ "$h" = "--as-ar" ] && p=""  # its AR reading is for the record, unpaired
            timeout "$left" python evaluate.py --ckpt "$dir/best.pt" $p --context "$ctx" --mc "${MC:-32}" --seed 1 \
                $h --no-progress >> "$part" 2>&1 || { echo "$(date +%T) $name: scoring failed, context $ctx $h:" \
                "$(tail -1 "$part")" >> "$out/plan.log"; rm -f "$part"; return 0; }
        done
    done
    mv "$part" "$file"
}

ARMS="$*"
# one arm per GPU at a time; a wave ends when its arms end or the deadline stops them
i=0
pending=()
for arm in "$@"; do
    flags "$arm" > /dev/null || exit 2
    [ -f "$out/runs/$(name_of "$arm")/FINISHED" ] || pending+=("$arm")
done
while [ ${#pending[@]} -gt 0 ] && [ $((deadline - SECONDS)) -gt 60 ]; do
    wave=("${pending[@]:0:$ngpu}"); pending=("${pending[@]:$ngpu}")
    i=0
    for arm in "${wave[@]}"; do
        train_arm "$arm" $((i % ngpu)) &
        i=$((i + 1))
    done
    wait
done
for arm in ar "$@"; do score "$arm"; done  # ar first: every other row is paired with it
echo "$(date +%T) call done: $(ls "$out"/runs/*/FINISHED 2>/dev/null | wc -l) runs finished, $(ls "$out"/eval_*.txt 2>/dev/null | wc -l) scored" \
    | tee -a "$out/plan.log"
