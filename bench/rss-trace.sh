#!/usr/bin/env bash
# Durable puts on a fresh copy of a settled data dir, with the server's RSS
# printed every second (during the round and 4 s after it), to see how
# memory moves under writes rather than only where it ends.
#
#   bench/rss-trace.sh SETTLED_DIR N SERVER_BIN SECONDS [SERVER_ARGS...]
#
# SETTLED_DIR holds a preload of N executions (as for bench/ab-put.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
settled=$1 n=$2 server=$3 secs=$4
shift 4
work=${WORK_DIR:-$settled.rss}
port=${PORT:-50999}
rm -rf "$work" && cp -a "$settled" "$work"
"$server" serve --data-dir "$work" --listen "127.0.0.1:$port" --worker-threads 1 "$@" \
  >/dev/null 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
sleep 1
target/release/stepcache-bench --addr "http://127.0.0.1:$port" --server-pid "$pid" \
  --data-dir "$work" --preload "$n" --rounds 1 --duration "$secs" --warmup 0.5 \
  --concurrency 64 put | grep " put " &
bench=$!
echo -n "rss MiB each second:"
for _ in $(seq $((secs + 4))); do
  sleep 1
  echo -n " $(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$pid/status")"
done
echo
wait "$bench"
