#!/bin/sh
# Regenerate both OOD detectors: data, 2 domains x 4 methods, evaluation report, ONNX exports,
# manifests and parity fixtures (npm run models:detector). Extra arguments go to pipeline.py.
# Training is serialised with the other models' jobs through /tmp/catskim-train.lock.
set -eu
cd "$(dirname "$0")/../.."
PY=/usr/bin/python3
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=2
if [ -f /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 ]; then
  export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1
fi
"$PY" -c 'import torch, onnx, numpy, matplotlib' || {
  echo "models:detector needs Debian's python3-torch python3-onnx python3-numpy python3-matplotlib for /usr/bin/python3" >&2
  exit 1
}
flock /tmp/catskim-train.lock sh -c '"$0" models/detector/data.py && "$0" models/detector/pipeline.py "$@"' "$PY" "$@"
# Serving latency through the TypeScript engine (needs the build; skipped with a note otherwise).
if [ -f dist/src/engine/detector.js ]; then
  node models/detector/latency.mjs > /dev/null && echo "latency: written to models/detector/eval.json and EVAL.md"
else
  echo "latency: skipped (build first: npx tsc -p tsconfig.json, then node models/detector/latency.mjs)"
fi
