#!/usr/bin/env bash
# The issue-19 targets measured in one quiet invocation (BENCHMARKS.md "Issue 19, quiet re-run").
# Run it under the training lock, never while a model trains, after `npm run build`:
#   flock /tmp/catskim-train.lock bash loadtest/issue19.sh [OUT_DIR]
# Servers are separate `node dist/src/main.js` processes on 127.0.0.1 (as `npm start` runs them,
# same GLIBC_TUNABLES); each load generator is its own process and stops by itself (bounded by
# --count and --duration). Results: OUT_DIR (default bench/results/issue19)/*.json and summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/issue19}
DUR=${DUR:-15}                                    # seconds per search row (DUR=1: a smoke run)
SECTIONS=${SECTIONS:-search,prefix,batching,rss}  # which parts to run
on() { [[ ",$SECTIONS," == *",$1,"* ]]; }
mkdir -p "$OUT"
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295}
log() { echo "$@" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"
log "== $(date -u +%FT%TZ) $(nproc) cores;$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2); load $(cut -d' ' -f1-3 /proc/loadavg)"

PORT=18480
SERVER=
start_server() { # env assignments...
  env "$@" CATSKIM_HTTP_PORT=$PORT CATSKIM_GRPC_PORT=$((PORT + 1)) CATSKIM_LOG_LEVEL=warn \
    node dist/src/main.js > "$OUT/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:$PORT/readyz" > /dev/null 2>&1 && return 0
    kill -0 "$SERVER" 2> /dev/null || { tail -20 "$OUT/server.log"; return 1; }
    sleep 0.5
  done
  return 1
}
stop_server() { kill -TERM "$SERVER" 2> /dev/null || true; wait "$SERVER" 2> /dev/null || true; }
trap stop_server EXIT
rest() { # name, args...
  local name=$1; shift
  node dist/loadtest/search-rest.js --target "http://127.0.0.1:$PORT" "$@" --json "$OUT/rest-$name.json" | tail -7 | tee -a "$OUT/summary.txt"
}

# 1. search through REST, 8 connections, k 10 (Recall@10 against exact search on the same server).
#    The load generator names model skim, so every query goes to skim's workers.
row() { # name, server env..., then -- load args...
  local name=$1; shift
  local env=()
  while [ "$1" != "--" ]; do env+=("$1"); shift; done
  shift
  start_server "${env[@]}"
  log "-- REST $name: $*"
  rest "$name" "$@"
  stop_server
}
CL=(--mode closed --concurrency 8 --count 40000 --duration "$DUR" --ef 64)
if on search; then
row npm-start-defaults -- "${CL[@]}"
row gate-off-1worker CATSKIM_DETECTOR_ENABLED=false -- "${CL[@]}"
row gate-off-2workers CATSKIM_DETECTOR_ENABLED=false CATSKIM_SEARCH_WORKERS=2 -- "${CL[@]}"
qps() { node -e "console.log(JSON.parse(require('fs').readFileSync(process.argv[1],'utf8')).qps)" "$OUT/rest-$1.json"; }
best=1; WORKERS=gate-off-1worker
if node -e "process.exit(+process.argv[1] > +process.argv[2] ? 0 : 1)" "$(qps gate-off-2workers)" "$(qps gate-off-1worker)"; then best=2; WORKERS=gate-off-2workers; fi
HALF=$(node -e "console.log(Math.max(50, Math.round(+process.argv[1] / 2)))" "$(qps $WORKERS)")
row half-rate CATSKIM_DETECTOR_ENABLED=false CATSKIM_SEARCH_WORKERS=$best -- --rate "$HALF" --count $((HALF * DUR)) --duration "$DUR" --ef 64
row batch16 CATSKIM_DETECTOR_ENABLED=false CATSKIM_SEARCH_WORKERS=$best -- --mode closed --concurrency 8 --count 5000 --duration "$DUR" --ef 64 --batch 16
fi

# 2. prefix cache: TTFT cached vs cold (engine in process)
if on prefix; then
  log "-- prefix cache (2 KB prefix), 7 pairs"
  node dist/loadtest/prefix-cache.js --runs 7 --prefix 2048 --chunk 16 | tee -a "$OUT/summary.txt"
fi

# 3. continuous batching: gRPC GenerateStream at concurrency 1..64 (bench section)
if on batching; then
  log "-- continuous batching"
  node dist/loadtest/bench.js --only batching --out "$OUT/batching" 2>&1 | tail -12 | tee -a "$OUT/summary.txt"
fi

# 4. memory: RSS after start and 10 s after a burst of 16 dense ~4k-byte generations (the idle trim
#    runs 5 s after the last one: generation.idleTrimMs)
if on rss; then
  log "-- RSS (npm start defaults)"
  node dist/loadtest/rss.js --variants full,no-search --burst 16 --concurrency 8 --settle 10 --json "$OUT/rss.json" | tee -a "$OUT/summary.txt"
fi
log "== done $(date -u +%FT%TZ)"
