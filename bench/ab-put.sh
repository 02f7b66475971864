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
# Each round also prints what the server's metrics say of its write batches
# over 3 s in the middle of the run: batches/s, writes per batch, sled's commit time per
# write ("apply us/write": the one applying thread's cost, the figure least
# moved by this VM's noise) and the group flushes.
set -euo pipefail
cd "$(dirname "$0")/.."
settled=$1 n=$2
shift 2
work=${WORK_DIR:-$settled.ab}
source bench/pin.sh
# writes PORT: the server's write-batch and flush counters, "name value" sorted.
writes() {
  python3 - "$1" <<'PY' | sort
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
for line in text.splitlines():
    if line.startswith(("stepcache_write_batch", "stepcache_store_flush")) and "bucket" not in line:
        print(*line.split()[:2])
PY
}
trap 'kill ${pinner:-} 2>/dev/null || true' EXIT
for server in "$@"; do
  rm -rf "$work" && cp -a "$settled" "$work"
  pin "$work.pin" "$work/db" || { echo "the data file did not pin" >&2; exit 1; }
  echo "== $server"
  port=$(free_port)
  target/release/stepcache-bench --server-bin "$server" --data-dir "$work" --preload "$n" \
    --rounds 1 --duration 6 --warmup 0.5 --concurrency 64 \
    "--server-arg=--metrics-listen=127.0.0.1:$port" ${BENCH_ARGS:-} put >"$work.out" 2>&1 &
  bench=$!
  # 2 to 5 s after the start: well inside the 6.5 s the run takes.
  sleep 2
  writes "$port" >"$work.m1"
  sleep 3
  writes "$port" >"$work.m2"
  wait "$bench" || { cat "$work.out" >&2; exit 1; }
  grep " put " "$work.out"
  join "$work.m1" "$work.m2" | awk '{ d[$1] = ($3 - $2) / 3 }
    END { b = d["stepcache_write_batches_total"]; w = d["stepcache_write_batch_writes_total"]
          f = d["stepcache_store_flushes_total"]
          if (b > 0 && w > 0 && f > 0)
            printf "write batches/s %.0f, writes per batch %.2f, apply us/write %.1f, flushes/s %.0f of %.2f ms\n",
              b, w / b, 1e6 * d["stepcache_write_batch_seconds_total"] / w, f,
              1e3 * d["stepcache_store_flush_seconds_total"] / f }'
  kill "$pinner" && wait "$pinner" 2>/dev/null || true
done
rm -rf "$work" "$work.pin" "$work.out" "$work.m1" "$work.m2"
