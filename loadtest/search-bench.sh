#!/usr/bin/env bash
# Search benchmarks for issues 14 and 19 (BENCHMARKS.md "Search: modes and throughput"). Run it
# under the training lock, never while a model trains:
#   npx tsc -p tsconfig.json && flock /tmp/catskim-train.lock bash loadtest/search-bench.sh [OUT_DIR]
# Builds what is missing: var/search (HNSW M 16, the default) and var/search-m32 (M 32), each with
# the sparse index, and measures Recall@10 vs exact per ef in process. For the SIMD rows it needs
# var/native/hnswlib-avx2 (npm run build:native). Results: OUT_DIR (default var/bench/search)/*.json
# and summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-var/bench/search}
mkdir -p "$OUT"
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295}
log() { echo "$@" | tee -a "$OUT/summary.txt"; }
rest() { # name, args...
  local name=$1; shift
  node dist/loadtest/search-rest.js "$@" --json "$OUT/rest-$name.json" | tail -7 | tee -a "$OUT/summary.txt"
}
: > "$OUT/summary.txt"
log "== $(date -u +%FT%TZ) $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
Q=models/skim/work/recall_queries.json
# 1. indexes + in-process HNSW Recall@10 vs exact per ef (1,000 held-out lemmas)
for M in 16 32; do
  DIR=var/search; [ "$M" = 32 ] && DIR=var/search-m32
  log "-- HNSW M $M ($DIR): build (or reuse) + Recall@10 vs exact in process"
  node dist/src/index/build-cli.js --model skim --out "$DIR" --M "$M" --recall "$Q" --recall-limit 1000 --recall-out "$OUT/hnsw-m$M.json" 2>&1 | grep -E "built|up to date|k 10 ef" | tee -a "$OUT/summary.txt"
done
# 2. in process, one query at a time, each mode; AVX2 hnswlib build vs the package build (SSE)
log "-- in process, each mode, M 32, hnswlib avx2 (where built)"
node dist/loadtest/search-modes.js --queries 1000 --repeat 3 --ef 64 --cache-dir var/search-m32 --json "$OUT/modes-m32.json" | tee -a "$OUT/summary.txt"
log "-- in process, each mode, M 32, package hnswlib build (SSE)"
CATSKIM_HNSW_SIMD=0 node dist/loadtest/search-modes.js --queries 1000 --repeat 3 --ef 64 --cache-dir var/search-m32 --json "$OUT/modes-m32-sse.json" | grep -E "^(dense|sparse|hybrid|in process)" | tee -a "$OUT/summary.txt"
# 3. REST, closed loop, 8 connections, k=10, dense (Recall@10 vs exact)
log "-- REST closed loop 8 connections, dense, M 16 ef 256, gate off"
rest m16-ef256-nogate --mode closed --concurrency 8 --count 40000 --duration 15 --ef 256 --no-gate
for ef in 64 96 128; do
  log "-- REST closed loop 8 connections, dense, M 32 ef $ef, gate off"
  rest m32-ef$ef-nogate --mode closed --concurrency 8 --count 40000 --duration 15 --ef $ef --no-gate --cache-dir var/search-m32
done
log "-- REST closed loop 8 connections, dense, M 32 ef 96, OOD gate on (npm start's default)"
rest m32-ef96-gate --mode closed --concurrency 8 --count 40000 --duration 15 --ef 96 --cache-dir var/search-m32
log "-- REST closed loop 8 connections, hybrid (the default mode), M 32 ef 96, gate off"
rest m32-hybrid-nogate --mode closed --concurrency 8 --count 40000 --duration 15 --ef 96 --search-mode hybrid --no-gate --cache-dir var/search-m32
log "-- REST batch route, 16 queries per request, closed loop 8 connections, dense, M 32 ef 96, gate off"
rest m32-batch16-nogate --mode closed --concurrency 8 --count 5000 --duration 15 --ef 96 --batch 16 --no-gate --cache-dir var/search-m32
# 4. open loop at half the closed-loop rate: p99
HALF=$(node -e "const r=require('./$OUT/rest-m32-ef96-nogate.json');console.log(Math.max(50,Math.round(r.qps/2)))")
log "-- REST open loop at $HALF req/s (half the closed-loop rate), dense, M 32 ef 96, gate off"
rest m32-half-nogate --rate "$HALF" --count $((HALF * 15)) --duration 15 --ef 96 --no-gate --cache-dir var/search-m32
log "== done $(date -u +%FT%TZ)"
