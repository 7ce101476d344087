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

# 1. search through REST, 8 connections, k 10 (Recall@10 against exact search on the same server)
for gate in on off; do
  ENV=(); [ "$gate" = off ] && ENV=(CATSKIM_DETECTOR_ENABLED=false)
  start_server "${ENV[@]}" CATSKIM_EXPERIMENTS_ENABLED=false CATSKIM_SEARCH_MODELS=skim
  log "-- REST closed loop, 8 connections, dense, ef 64, OOD gate $gate"
  rest "closed-gate-$gate" --mode closed --concurrency 8 --count 40000 --duration 15 --ef 64
  if [ "$gate" = off ]; then
    HALF=$(node -e "const r=require('./$OUT/rest-closed-gate-off.json');console.log(Math.max(50,Math.round(r.qps/2)))")
    log "-- REST open loop at $HALF req/s (half the closed-loop rate), dense, ef 64, gate off"
    rest half-gate-off --rate "$HALF" --count $((HALF * 15)) --duration 15 --ef 64
    log "-- REST batch route, 16 queries per request, closed loop 8 connections, ef 64, gate off"
    rest batch16-gate-off --mode closed --concurrency 8 --count 5000 --duration 15 --ef 64 --batch 16
  fi
  stop_server
done

# 2. prefix cache: TTFT cached vs cold (engine in process)
log "-- prefix cache (2 KB prefix), 7 pairs"
node dist/loadtest/prefix-cache.js --runs 7 --prefix 2048 --chunk 16 | tee -a "$OUT/summary.txt"

# 3. continuous batching: gRPC GenerateStream at concurrency 1..64 (bench section)
log "-- continuous batching"
node dist/loadtest/bench.js --only batching --out "$OUT/batching" 2>&1 | tail -12 | tee -a "$OUT/summary.txt"

# 4. memory: RSS after start and 10 s after a burst of 16 dense ~4k-byte generations (the idle trim
#    runs 5 s after the last one: generation.idleTrimMs)
log "-- RSS (npm start defaults)"
node dist/loadtest/rss.js --variants full,no-search --burst 16 --concurrency 8 --settle 10 --json "$OUT/rss.json" | tee -a "$OUT/summary.txt"
log "== done $(date -u +%FT%TZ)"
