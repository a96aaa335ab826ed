#!/usr/bin/env bash
# Training arms at one budget on a CUDA machine, chained over calls, then each finished run scored
# under both protocols paired with the AR arm: issue 29 item 2 (the likelihood levers at the full
# budget, two seeds) and issue 30 item 1 (the block-diffusion spectrum, early-stopped).
#
#   bash dev/gpu_plan_arms.sh OUT MINUTES SEEDS ARM...     # train (or go on training), then score
#   e.g. bash dev/gpu_plan_arms.sh out/arms 15 1,2 ar full lwnone mixed   # 8 runs: every arm, every seed
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
#   e.g. 'combo=--loss_weights none --prefix_prob 0.5'; the AR side re-tuned for the same minutes:
#   'ar_d3=--preset gpu-ar --max_steps 1000000 --patience 8 --dropout 0.3 --attn_dropout 0.3 --embd_dropout 0.3'
#   (a schedule on wall time, stopped 8 evaluations past its best; scored like ar, paired with it)
# Every run (an arm at a seed of the comma list SEEDS) trains for at most MINUTES (--time_budget,
# counted across resumes; the schedule follows whichever of it and --max_steps ends the run first)
# on a GPU of its own, never two at once on one GPU (the budget is a whole GPU's): GPU g takes runs
# g, g + n, g + 2n, ... of the list (arms in the order given, each at every seed; the ar runs
# first, which are short and which the others are paired with), one after another. best.pt is
# each run's best evaluation. A call stops its runs with SIGTERM before CALL_SECONDS (default 540)
# run out (each saves last.pt) and the next call with the same OUT resumes them, and starts the
# runs no GPU was free for. So a 15-minute budget takes two calls on a warm machine (the next call
# within its 30 s of warmth): keep OUT on the machine between them (out/arms: git-ignored files stay
# on a warm machine; the run tool's $OUT is emptied); COPY_TO="$OUT" packs everything but the
# checkpoints (logs, log.jsonl files, scores) into COPY_TO/arms_logs.tgz at the end of each call,
# for dev/run_table.py here.
#
# Scoring (each finished run once, on its GPU after its training, or in a later call):
#   evaluate.py at CONTEXTS (default "0 128"), --mc ${MC:-32} --seed 1: NELBO (NLL for AR), paired
#   with the ar run of the same seed, and a lever's run (any arm but ar, full and the AR side's)
#   also with the full run of its seed (when ar or full is among the ARMs a run waits for it, so
#   that every row is paired); plain and mixed diffusion runs also --order l2r (exact, left to
#   right), paired alike; mixed runs also --as-ar. One file per run: OUT/eval_ARM_sSEED.txt.
set -uo pipefail
out=${1:?OUT}; minutes=${2:?MINUTES}; seeds=${3:?SEEDS}; shift 3
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
case " $* " in *" ar "*) with_ar=1 ;; *) with_ar="" ;; esac
case " $* " in *" full "*) with_full=1 ;; *) with_full="" ;; esac

flags() {  # flags ARM SEED: its recipe
    local cap="--time_budget $minutes --seed $2"
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

name_of() { echo "${1%%=*}_s$2"; }  # name_of ARM SEED

train_run() {  # train_run ARM SEED GPU: until the run ends (a FINISHED mark) or the call's deadline
    local name dir resume="" left rc
    name=$(name_of "$1" "$2"); dir="$out/runs/$name"
    [ -f "$dir/FINISHED" ] && return 0
    [ -f "$dir/last.pt" ] && resume="--resume"
    left=$((deadline - SECONDS))
    [ "$left" -gt 60 ] || return 0
    echo "$(date +%T) $name on GPU $3: $(flags "$1" "$2") ${SMOKE_FLAGS:-} $resume" >> "$out/plan.log"
    # SIGTERM: the step in progress ends, last.pt is saved, exit 130; KILL 60 s later if it hangs
    CUDA_VISIBLE_DEVICES=$3 timeout -k 60 "$left" python train.py $(flags "$1" "$2") ${SMOKE_FLAGS:-} \
        --out_dir "$dir" $resume >> "$out/$name.txt" 2>&1
    rc=$?
    [ $rc -eq 0 ] && touch "$dir/FINISHED"
    echo "$(date +%T) $name: exit $rc" >> "$out/plan.log"
}

score_run() {  # score_run ARM SEED GPU: every protocol of a finished run into OUT/eval_NAME.txt, whole or not at all
    local name dir ar base file part paired="" f left
    name=$(name_of "$1" "$2"); dir="$out/runs/$name"; ar="$out/runs/ar_s$2"; base="$out/runs/full_s$2"
    file="$out/eval_$name.txt"; part="$file.part"
    [ -f "$dir/FINISHED" ] && [ -f "$dir/best.pt" ] && [ ! -f "$file" ] || return 0
    [ "$1" != ar ] && [ -f "$ar/FINISHED" ] && paired="$ar/best.pt"
    [ -z "$with_ar" ] || [ "$1" = ar ] || [ -n "$paired" ] || return 0  # wait for the ar run
    case "$1" in ar|full|*"gpu-ar"*) ;; *)  # a lever's run: against its base recipe too, on the same blocks
        [ -z "$with_full" ] || [ -f "$base/FINISHED" ] || return 0
        [ -f "$base/FINISHED" ] && paired="$paired $base/best.pt" ;; esac
    [ -n "$paired" ] && paired="--paired $paired"
    f=$(flags "$1" "$2")
    : > "$part"
    for ctx in ${CONTEXTS:-0 128}; do
        local how=("--order any")
        case "$f" in *"--objective block"*|*"gpu-ar"*) ;; *"--objective mixed"*) how+=("--order l2r" "--as-ar") ;;
                     *) how+=("--order l2r") ;; esac
        for h in "${how[@]}"; do
            left=$((deadline - SECONDS))
            [ "$left" -gt 20 ] || { rm -f "$part"; return 0; }
            echo "== context $ctx $h" >> "$part"
            local p=$paired
            [ "$h" = "--as-ar" ] && p=""  # its AR reading is for the record, unpaired
            CUDA_VISIBLE_DEVICES=$3 timeout "$left" python evaluate.py --ckpt "$dir/best.pt" $p --context "$ctx" \
                --mc "${MC:-32}" --seed 1 $h --no-progress >> "$part" 2>&1 || {
                echo "$(date +%T) $name: scoring failed, context $ctx $h: $(tail -1 "$part")" >> "$out/plan.log"
                rm -f "$part"; return 0; }
        done
    done
    mv "$part" "$file"
}

runs=()  # "ARM SEED", the ar runs first
for arm in "$@"; do
    flags "$arm" 1 > /dev/null || exit 2
    for seed in ${seeds//,/ }; do
        [[ $seed =~ ^[0-9]+$ ]] || { echo "SEEDS: a comma list of integers, got $seeds" >&2; exit 2; }
        if [ "$arm" = ar ]; then runs=("$arm $seed" "${runs[@]}"); else runs+=("$arm $seed"); fi
    done
done

worker() {  # worker G: runs G, G + n, ... on GPU G, each trained then scored; then what is left to score
    local i
    for ((i = $1; i < ${#runs[@]}; i += ngpu)); do
        train_run ${runs[i]} "$1"
        score_run ${runs[i]} "$1"
    done
    for ((i = $1; i < ${#runs[@]}; i += ngpu)); do score_run ${runs[i]} "$1"; done  # those that waited for ar
}
for ((g = 0; g < ngpu; g++)); do worker $g & done
wait
[ -z "${COPY_TO:-}" ] || tar czf "$COPY_TO/arms_logs.tgz" --exclude='*.pt' -C "$out" .
echo "$(date +%T) call done: $(ls "$out"/runs/*/FINISHED 2>/dev/null | wc -l) runs finished, $(ls "$out"/eval_*.txt 2>/dev/null | wc -l) scored" \
    | tee -a "$out/plan.log"
