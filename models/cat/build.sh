#!/usr/bin/env bash
# Regenerate everything for models/cat: data, training (adaptive CAT, then dense on the same number
# of tokens), ONNX export, fixtures, eval report, tests.   npm run models:cat
#   CAT_SKIP_TRAIN=1   reuse the committed model.pt files (export + fixtures + report + tests only)
#   CAT_STEPS / CAT_SECONDS   adaptive step count / wall budget (defaults 1400 / 1680 s = 28 min)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3
LOCK=/tmp/catskim-train.lock
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=2
export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
export MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1
STEPS=${CAT_STEPS:-1400}
SECONDS_BUDGET=${CAT_SECONDS:-1680}
mkdir -p models/cat/work

echo "== data (bible -f Gen1:1-Rev22:21 -> models/cat/work/kjv_{train,heldout}.txt)"
$PY -c 'import sys; sys.path.insert(0, "models/cat"); import catlib; t, h = catlib.kjv_split("models/cat/work"); print("train", len(t), "held-out", len(h), "bytes")'

if [ "${CAT_SKIP_TRAIN:-0}" != "1" ]; then
  echo "== train adaptive CAT (<= ${SECONDS_BUDGET}s)"
  flock $LOCK $PY models/cat/train.py --kind adaptive --steps "$STEPS" --max-seconds "$SECONDS_BUDGET" \
    --batch 8 --context 1024 | tee models/cat/work/train_adaptive.log
  DSTEPS=$($PY -c 'import json; print(json.load(open("models/cat/adaptive/train_log.json"))["summary"]["steps"])')
  echo "== train dense on the same number of tokens ($DSTEPS steps)"
  flock $LOCK $PY models/cat/train.py --kind dense --steps "$DSTEPS" --batch 8 --context 1024 \
    | tee models/cat/work/train_dense.log
fi

echo "== export"
$PY models/cat/export.py --kind both
node models/cat/check_onnx.mjs | tail -1
echo "== fixtures"
flock $LOCK $PY models/cat/fixtures.py
echo "== eval"
flock $LOCK $PY models/cat/eval.py
echo "== tests"
$PY -m unittest discover -s models/cat -p 'test_*.py'
du -sh models
