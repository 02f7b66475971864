#!/usr/bin/env bash
# Durable puts, one round per server binary, each on a fresh copy of the same
# settled data dir, so that no round sees the executions an earlier one added.
#
#   bench/ab-put.sh SETTLED_DIR N SERVER_A SERVER_B [SERVER_A SERVER_B ...]
#
# SETTLED_DIR holds a preload of N executions (stepcache-bench --preload N
# --data-dir SETTLED_DIR ..., then stepcache check --data-dir SETTLED_DIR).
# Give the binaries alternating: this machine's speed drifts within minutes.
# BENCH_ARGS adds options to every round's stepcache-bench (for instance
# "--cache-capacity-mb 128": call once per setting, alternating).
set -euo pipefail
cd "$(dirname "$0")/.."
settled=$1 n=$2
shift 2
work=${WORK_DIR:-$settled.ab}
source bench/pin.sh
trap 'kill ${pinner:-} 2>/dev/null || true' EXIT
for server in "$@"; do
  rm -rf "$work" && cp -a "$settled" "$work"
  pin "$work.pin" "$work/db" || { echo "the data file did not pin" >&2; exit 1; }
  echo "== $server"
  target/release/stepcache-bench --server-bin "$server" --data-dir "$work" --preload "$n" \
    --rounds 1 --duration 5 --warmup 0.5 --concurrency 64 ${BENCH_ARGS:-} put | grep " put "
  kill "$pinner" && wait "$pinner" 2>/dev/null || true
done
rm -rf "$work" "$work.pin"
