#!/usr/bin/env bash
# Issue 21 on one H200, ~9 minutes in one call (logs to $OUT, default out/i21):
#   A. the shipped weights read left to right (exact NLL) and by NELBO, context 0 and 128, each
#      paired with the AR baseline on the same blocks (~1-2 min);
#   B. the training levers at equal budget: ARMS run concurrently on the one GPU, each
#      --preset gpu --time_budget $BUDGET --seed $SEED (they share the GPU equally, so the budget
#      is equal between them, not equal to a solo run's);
#   C. every arm's best.pt scored like A (NELBO and l2r, context 0 and 128, paired with AR; the
#      mixed arm also --as-ar), the arms in parallel.
# Second seed: SEED=2 bash dev/gpu_plan_i21.sh (another ~8 min). Fewer arms, more budget each:
# ARMS="base bell" BUDGET=6 bash dev/gpu_plan_i21.sh
set -u
OUT=${OUT:-out/i21}
RUNS=${RUNS:-out/i21_runs}     # checkpoints stay here (40+ MB each); KEEP_WEIGHTS=1 copies best.pt to $OUT
SEED=${SEED:-1}
BUDGET=${BUDGET:-4.5}          # minutes per arm, compile included
ARMS=${ARMS:-"base bell noweights mixed"}   # also: clipped
DATA=${DATA:-data/tiny_shakespeare.txt}
AR=weights/ar_baseline.pt
mkdir -p "$OUT" "$RUNS"
[ -f "$DATA" ] || { echo "no $DATA: carry it (the device has no network)" | tee "$OUT/error.txt"; exit 1; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv > "$OUT/gpu.txt" 2>&1

score() {  # score CKPT NAME [extra evaluate.py flags]: NELBO and l2r at context 0 and 128, paired with AR
  local ckpt=$1 name=$2; shift 2
  for ctx in 0 128; do
    for order in any l2r; do
      python evaluate.py --ckpt "$ckpt" --paired "$AR" --context $ctx --order $order --data "$DATA" "$@" \
        > "$OUT/eval_${name}_ctx${ctx}_${order}.txt" 2>&1
    done
  done
}

# A. the shipped weights (only once: with SEED=1)
if [ "$SEED" = 1 ]; then
  t0=$(date +%s)
  score weights/model.pt shipped
  echo "A: $(( $(date +%s) - t0 )) s" >> "$OUT/timing.txt"
fi

# B. the levers (the shipped recipe is --preset gpu: uniform t, ELBO weights, prefix_prob 0.2)
flags_of() {
  case $1 in
    base) echo "" ;;
    bell) echo "--t_dist bell" ;;
    clipped) echo "--t_dist clipped --t_min 0.3 --t_max 0.8" ;;
    noweights) echo "--loss_weights none" ;;
    mixed) echo "--objective mixed --ar_fraction 0.25" ;;
  esac
}
t0=$(date +%s)
for arm in $ARMS; do
  python train.py --preset gpu --time_budget "$BUDGET" --seed "$SEED" --data "$DATA" \
    --out_dir "$RUNS/run_${arm}_s${SEED}" $(flags_of $arm) > "$OUT/train_${arm}_s${SEED}.log" 2>&1 &
done
wait
echo "B (seed $SEED, budget $BUDGET min, arms $ARMS): $(( $(date +%s) - t0 )) s" >> "$OUT/timing.txt"
for arm in $ARMS; do cp "$RUNS/run_${arm}_s${SEED}/log.jsonl" "$OUT/log_${arm}_s${SEED}.jsonl" 2>/dev/null; done

# C. score every arm
t0=$(date +%s)
for arm in $ARMS; do
  ( score "$RUNS/run_${arm}_s${SEED}/best.pt" "${arm}_s${SEED}"
    if [ "$arm" = mixed ]; then
      for ctx in 0 128; do
        python evaluate.py --ckpt "$RUNS/run_${arm}_s${SEED}/best.pt" --as-ar --paired "$AR" --context $ctx \
          --data "$DATA" > "$OUT/eval_${arm}_s${SEED}_ctx${ctx}_asar.txt" 2>&1
      done
    fi ) &
done
wait
echo "C: $(( $(date +%s) - t0 )) s" >> "$OUT/timing.txt"
[ "${KEEP_WEIGHTS:-0}" = 1 ] && for arm in $ARMS; do cp "$RUNS/run_${arm}_s${SEED}/best.pt" "$OUT/best_${arm}_s${SEED}.pt"; done
grep -H "" "$OUT"/eval_*.txt | grep -v "^$" > "$OUT/summary.txt"
cat "$OUT/timing.txt" "$OUT/summary.txt"
