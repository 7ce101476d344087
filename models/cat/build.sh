#!/usr/bin/env bash
# Regenerate everything for models/cat (npm run models:cat): training text, dense training, the
# adaptive CAT warm-started from it, ONNX export, fixtures, eval report, tests. Training runs in
# resumable ~10-minute segments under /tmp/catskim-train.lock (run_training.sh); rerunning this
# command continues an interrupted run from models/cat/work/*_ckpt.pt.
#   DENSE_STEPS / CAT_STEPS   step targets (defaults in run_training.sh)
#   DEVICE=cuda               train on a GPU (bf16 autocast; written for it, untested here)
#   CAT_SKIP_TRAIN=1          reuse the committed model.pt files (export + fixtures + report + tests)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3
LOCK=/tmp/catskim-train.lock
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=2
mkdir -p models/cat/work

echo "== data (bible-kjv, sword-text-web, dict-gcide, fortunes -> models/cat/work/)"
$PY models/cat/corpus.py

if [ "${CAT_SKIP_TRAIN:-0}" != "1" ]; then
  echo "== train dense, then the adaptive CAT (segments under $LOCK)"
  bash models/cat/run_training.sh
fi

echo "== export"
$PY models/cat/export.py --kind both
node models/cat/check_onnx.mjs | tail -1
echo "== fixtures"
flock $LOCK $PY models/cat/fixtures.py
echo "== eval"
flock $LOCK env LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 $PY models/cat/eval.py
echo "== tests"
$PY -m unittest discover -s models/cat -p 'test_*.py'
du -sh models
