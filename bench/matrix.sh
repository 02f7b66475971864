#!/usr/bin/env bash
# The issue-7 comparison in one go: stepcache against the gRPC floor and
# against ML Metadata (its embedded store on a SQLite file and in memory) at
# 10k, 100k and 1M stored executions, ML Metadata right after stepcache's
# writes at each size.
#
#   cargo build --release --bins && bench/setup-mlmd.sh
#   bench/matrix.sh [OUT_DIR] [DATA_ROOT]      # defaults: /tmp/bm/out /tmp/bm
#
# Data dirs (DATA_ROOT/sc10000, ...) and ML Metadata databases are preloaded
# on first use and reused; nothing measured writes to them. Lookups add no
# executions and run on the preloaded dir itself; the writes (and the
# restart after them) run on a fresh copy of it (DATA_ROOT/scN.writes,
# removed afterwards), and ML Metadata on a fresh copy of its preloaded
# file, so that every run measures a store of N executions, not N plus what
# earlier runs wrote. The 1M preload and its settling pass take a few
# minutes each, ML Metadata's 1M SQLite file ~25 (once; fsync off, at
# ~600-700 executions/s); ML Metadata in memory is preloaded anew in every
# run (~1,200 executions/s: 13-14 minutes at 1M; MLMD_MEMORY_MAX=100000
# skips the larger sizes); the measured part about 25. Each data file is
# held in the page cache (bench/pin-pages.py) while it is measured: this VM
# reclaims page cache within a minute. Run nothing else meanwhile: the load
# generator and the server share 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/bm/out}
root=${2:-/tmp/bm}
sizes=${SIZES:-10000 100000 1000000}
bench=target/release/stepcache-bench
mkdir -p "$out" "$root"

source bench/pin.sh

# ML Metadata at N stored, right after stepcache's writes at N: ML
# Metadata's put waits for an fsync and this VM's disk speed drifts within
# minutes, so the two puts are measured as close together as they can be.
# On a SQLite file it runs on a copy of its preloaded file, as stepcache's
# writes do; in memory it preloads N executions first.
mlmd() {
  local n=$1 py=bench/.venv/bin/python
  if [ ! -x "$py" ]; then
    echo "no bench/.venv: run bench/setup-mlmd.sh for the ML Metadata side" >&2
    return
  fi
  mkdir -p "$root/mlmd"
  local settled=$root/mlmd/$n.sqlite work=$root/mlmd/$n.work.sqlite
  if [ ! -e "$settled" ]; then
    "$py" bench/mlmd_peer.py --backend sqlite --db "$settled.part" --preload "$n" --workloads ""
    mv "$settled.part" "$settled"
  fi
  cp "$settled" "$work"
  echo "== ML Metadata, SQLite file, $n stored"
  "$py" bench/mlmd_peer.py --backend sqlite --db "$work" \
    --preload "$n" --count 2000 --max-seconds 30 --json | tee "$out/mlmd-$n.txt"
  rm -f "$work"
  if [ "$n" -le "${MLMD_MEMORY_MAX:-1000000}" ]; then
    echo "== ML Metadata, in memory, $n stored (preloaded now)"
    "$py" bench/mlmd_peer.py --backend memory \
      --preload "$n" --count 2000 --max-seconds 30 --json | tee "$out/mlmd-memory-$n.txt"
  fi
}

for n in $sizes; do
  d=$root/sc$n
  echo "== $n stored: preload (reused when present)"
  "$bench" --preload "$n" --data-dir "$d" --rounds 1 --duration 0.2 --warmup 0 floor \
    | tee "$out/preload-$n.txt"
  pin_dirs "$out/pin-$n.txt" "$d"
  if [ ! -e "$d/.checked" ]; then
    # One pass over every record and index (offline) right after the preload:
    # the bulk load leaves some leaves over-full, and sled splits them on their
    # first read, so the first measured lookups would also be writes.
    echo "== $n stored: settle the preload (stepcache check)"
    target/release/stepcache check --data-dir "$d" | tee "$out/check-$n.txt"
    touch "$d/.checked"
  fi
  echo "== $n stored: lookups ($(cat "$out/pin-$n.txt"))"
  "$bench" --preload "$n" --data-dir "$d" --rounds 3 --duration 3 --warmup 0.5 \
    --concurrency 1,64 floor lookup-hit lookup-miss | tee "$out/lookups-$n.txt"
  if [ "$n" -gt 10000 ]; then
    echo "== $n stored: lookups over the newest 10k (a working set)"
    "$bench" --preload "$n" --data-dir "$d" --rounds 3 --duration 3 --warmup 0.5 \
      --working-set 10000 --concurrency 64 floor lookup-hit | tee "$out/working-set-$n.txt"
  fi
  kill "$pinner" 2>/dev/null || true
  wait "$pinner" 2>/dev/null || true
  w=$d.writes
  rm -rf "$w" && cp -a "$d" "$w"
  pin_dirs "$out/pin-$n-writes.txt" "$w"
  echo "== $n stored: writes (on a copy)"
  "$bench" --preload "$n" --data-dir "$w" --rounds 2 --duration 3 --warmup 0.5 \
    --concurrency 64 floor put pipeline | tee "$out/writes-$n.txt"
  mlmd "$n"
  echo "== $n stored: restart after the writes"
  "$bench" --preload "$n" --data-dir "$w" --rounds 1 --duration 1 --warmup 0 \
    floor | tee "$out/restart-$n.txt"
  kill "$pinner" 2>/dev/null || true
  wait "$pinner" 2>/dev/null || true
  rm -rf "$w"
done
