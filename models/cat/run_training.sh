#!/usr/bin/env bash
# Train dense, then the adaptive CAT (decoder warm-started from that dense model), in resumable
# segments of SEGMENT seconds, each under the shared training lock (released between segments
# so other short jobs can run). Rerunning it continues where it stopped (train.py --resume).
#   DENSE_STEPS / CAT_STEPS   step targets (the LR schedules follow them; raising one later
#                             and rerunning continues the schedule to the new total)
#   NARROW_STEPS              the dense baseline at the compressor's width (eval only; 0 = skip)
#   C_PROBS / CAT_LR          the CAT's chunk-size mix (C=4,8,16,32) and peak learning rate
#   DENSE_INIT                where the dense run starts (default: the committed dense model.pt,
#                             if it is not already the output of this recipe)
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3
LOCK=/tmp/catskim-train.lock
W=models/cat/work
mkdir -p "$W"
SEGMENT=${SEGMENT:-600}
DENSE_STEPS=${DENSE_STEPS:-250}
CAT_STEPS=${CAT_STEPS:-4300}
DEVICE=${DEVICE:-cpu}
COMMON=(--batch 8 --context 1024 --name-frac 0.3 --answer-weight 4 --device "$DEVICE"
        --segment-seconds "$SEGMENT")

run_phase() {  # kind steps extra-args...   (RUN_NAME: checkpoint/log name, default the kind)
  local kind=$1 steps=$2; shift 2
  local name=${RUN_NAME:-$kind}
  while true; do
    # step targets may be changed while it runs: work/targets.env (DENSE_STEPS=.. CAT_STEPS=..)
    if [ -f "$W/targets.env" ]; then
      # shellcheck disable=SC1091
      . "$W/targets.env"
      case $name in dense) steps=$DENSE_STEPS ;; adaptive) steps=$CAT_STEPS ;; esac
    fi
    flock "$LOCK" env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=2 \
      LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
      MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 \
      $PY models/cat/train.py --kind "$kind" --steps "$steps" --ckpt "$W/${name}_ckpt.pt" --resume \
      "${COMMON[@]}" "$@" 2>&1 | tee -a "$W/train_${name}.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] && return 0
    [ "$rc" = 3 ] || { echo "train.py $kind failed (exit $rc)"; return "$rc"; }
    sleep 2  # let a waiting job take the lock
  done
}

# a later session: continue from the committed models when they are this recipe's checkpoints
for kind in dense adaptive dense_narrow; do
  if [ ! -f "$W/${kind}_ckpt.pt" ] && $PY -c 'import sys, torch; ck = torch.load(sys.argv[1], map_location="cpu"); sys.exit(0 if "optimizer" in ck else 1)' "models/cat/$kind/model.pt" 2>/dev/null; then
    cp "models/cat/$kind/model.pt" "$W/${kind}_ckpt.pt"
    echo "continuing $kind from the committed models/cat/$kind/model.pt"
  fi
done

DENSE_INIT=${DENSE_INIT:-models/cat/dense/model.pt}
INIT=()
[ -f "$DENSE_INIT" ] && INIT=(--init-from "$DENSE_INIT")
[ -f "$W/dense_ckpt.pt" ] && INIT=()  # resuming: the checkpoint has it
run_phase dense "$DENSE_STEPS" --lr 2e-3 --warmup 30 "${INIT[@]}" || exit $?
run_phase adaptive "$CAT_STEPS" --lr ${CAT_LR:-3e-3} --compressor-lr-mult 2 --warmup 50 \
  --c-probs ${C_PROBS:-0.6,0.25,0.1,0.05} --init-from models/cat/dense/model.pt || exit $?
# The paper's comparison, for eval.py only (not served): a dense model as wide as the compressor
# (D=64), same data and recipe, from scratch. NARROW_STEPS=0 skips it.
NARROW_STEPS=${NARROW_STEPS:-600}
if [ "$NARROW_STEPS" -gt 0 ]; then
  RUN_NAME=dense_narrow run_phase dense "$NARROW_STEPS" --lr 3e-3 --warmup 30 --d-model 64 \
    --out models/cat/dense_narrow/model.pt || exit $?
fi
echo "== training done"
