#!/usr/bin/env bash
# Regenerates everything for SKIM search (npm run models:skim):
#   1. the benchmark, generator, SKIM mapping, 3 seeds x (baseline, SKIM, oracle), BM25, and the
#      ONNX export of the seed-0 baseline and SKIM encoders (models/skim/pipeline.py);
#   2. the HNSW label indexes of both encoders into var/search (the server reuses them) and the
#      HNSW-vs-exact Recall@100 measurement (src/index/build-cli.ts);
#   3. models/skim/eval.json, EVAL.md and eval.png (models/skim/report.py).
# Training and index builds run under the shared training lock. Extra args go to pipeline.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=2 MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1
JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
PRELOAD=""
[ -f "$JEMALLOC" ] && PRELOAD="$JEMALLOC"
start=$(date +%s)
flock /tmp/catskim-train.lock env LD_PRELOAD="$PRELOAD" /usr/bin/python3 models/skim/pipeline.py "$@"
npx tsc -p tsconfig.json || echo "tsc reported errors (dist/ is still emitted)" >&2
flock /tmp/catskim-train.lock node dist/src/index/build-cli.js --force \
  --recall models/skim/work/recall_queries.json --recall-out models/skim/work/hnsw_recall.json
/usr/bin/python3 models/skim/report.py
echo "models:skim done in $(( $(date +%s) - start )) s"
