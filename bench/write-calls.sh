#!/usr/bin/env bash
# Write system calls per cache hit, for each server binary given: a server on
# a fresh copy of a settled data dir, perf counting its write, writev and
# sendto entries over a lookup-hit run of the load generator.
#
#   bench/write-calls.sh DATA_DIR N SERVER [SERVER ...]
#
# DATA_DIR holds a preload of N executions. Needs perf with syscall
# tracepoints (`perf stat -e syscalls:sys_enter_sendto true`).
set -euo pipefail
cd "$(dirname "$0")/.."
settled=$1 n=$2
shift 2
source bench/pin.sh
work=${WORK_DIR:-$settled.calls}
trap 'kill ${server_pid:-} 2>/dev/null || true; rm -rf "$work"' EXIT
for server in "$@"; do
  rm -rf "$work" && cp -a "$settled" "$work"
  port=$(free_port)
  "$server" serve --listen "127.0.0.1:$port" --data-dir "$work" --worker-threads 1 >"$work.log" 2>&1 &
  server_pid=$!
  sleep 1.5
  perf stat -o "$work.perf" -p "$server_pid" \
    -e 'syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto' &
  perf_pid=$!
  out=$(target/release/stepcache-bench --addr "http://127.0.0.1:$port" --server-pid "$server_pid" \
    --data-dir "$work" --preload "$n" --rounds 1 --duration 4 --warmup 0 --concurrency 64 lookup-hit |
    grep '^stepcache')
  kill -INT "$perf_pid"
  wait "$perf_pid" 2>/dev/null || true
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  hits=$(sed -E 's/.*n=([0-9]+).*/\1/' <<<"$out")
  calls=$(awk '/syscalls:/ {gsub(",", "", $1); s += $1} END {print s}' "$work.perf")
  echo "$server: $calls write calls for $hits hits ($(python3 -c "print(round($calls / $hits, 2))") per hit)"
  echo "  $out"
done
