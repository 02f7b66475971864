#!/usr/bin/env bash
# Lookups at two history sizes with both servers up at once: issue 7's
# "lookup throughput at 1M stored executions at least 90% of that at 10k",
# measured in slices of a second or two that alternate between the servers,
# so that this VM's drift (its speed swings by a third within minutes) falls
# on both sides alike. bench/growth.sh starts a server per run instead, ~10 s
# apart; this keeps each server (and its memory tier) warm throughout.
#
#   bench/growth-live.sh SMALL_DIR LARGE_DIR [PAIRS] [OUT_DIR]
#   e.g. bench/growth-live.sh /tmp/bm/sc10000 /tmp/bm/sc1000000 30 /tmp/bm/live
#
# Both data dirs must hold a settled preload (bench/matrix.sh makes them).
# Each server runs `stepcache serve --worker-threads 1` and the load
# generator one worker thread, as stepcache-bench's own split does on 2
# cores. A pair is a lookup-hit run (64 callers, DURATION seconds, default 1,
# after 0.2 s of warm-up) against one server, then the other, the order
# swapping from pair to pair. Both runs of a pair draw the same keys, each
# pair others (its own --seed): with one seed for all, every run would ask
# for the same ~75k keys again, which a memory tier of that size answers.
# Both data files stay in the page cache (bench/pin-pages.py). It prints the
# per-pair ratio of the large dir's lookups/s to the small one's and their
# median. BENCH_ARGS adds arguments to every stepcache-bench run (e.g.
# "--working-set 10000"), SERVER_ARGS to both servers (e.g. "--hot-hits 0"),
# SERVER another server binary (an A/B of two builds). Run nothing else
# meanwhile. bench/growth-live-perf.sh runs it under perf and says where the
# extra CPU of a lookup at LARGE goes.
set -euo pipefail
cd "$(dirname "$0")/.."
small=${1:?SMALL_DIR}
large=${2:?LARGE_DIR}
pairs=${3:-30}
out=${4:-/tmp/bm/growth-live}
duration=${DURATION:-1}
read -r -a extra <<<"${BENCH_ARGS:-}"
read -r -a server_extra <<<"${SERVER_ARGS:-}"
bench=target/release/stepcache-bench
server=${SERVER:-target/release/stepcache}
mkdir -p "$out"


source bench/pin.sh
pids=()
stop() { # SIGTERM: the servers close their stores cleanly (and keep the hits files' index)
  kill ${pinner:-} "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop EXIT
PIN_TRIES=1200 pin_dirs "$out/pin.txt" "$small" "$large" || { echo "the data files did not pin" >&2; exit 1; }
echo "# $(cat "$out/pin.txt")"

declare -A port pid n
for d in "$small" "$large"; do
  n[$d]=$(stored "$d")
  port[$d]=$(free_port)
  "$server" serve --data-dir "$d" --listen "127.0.0.1:${port[$d]}" --worker-threads 1 \
    "${server_extra[@]}" >"$out/server-${n[$d]}.log" 2>&1 &
  pid[$d]=$!
  pids+=("${pid[$d]}")
done
for d in "$small" "$large"; do # until both listen
  for _ in $(seq 600); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()' \
      "${port[$d]}" 2>/dev/null && break
    kill -0 "${pid[$d]}" 2>/dev/null || { cat "$out/server-${n[$d]}.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "# server pid ${pid[$d]} on port ${port[$d]}: $d (${n[$d]} stored)"
done

one() { # one DIR PAIR: a lookup-hit run against DIR's server
  local r
  r=$("$bench" --addr "http://127.0.0.1:${port[$1]}" --server-pid "${pid[$1]}" --data-dir "$1" \
    --preload "${n[$1]}" --client-workers 1 --rounds 1 --duration "$duration" --warmup 0.2 \
    --concurrency 64 --seed "$((1000 + $2))" "${extra[@]}" --json lookup-hit 2>>"$out/bench.log") ||
    { tail -5 "$out/bench.log" >&2; exit 1; }
  grep '^{' <<<"$r" | sed "s/^{/{\"pair\":$2,/" >>"$out/results.jsonl"
}
: >"$out/results.jsonl"
# Pair 0 warms both servers (their memory tiers fill) and is not counted.
for p in $(seq 0 "$pairs"); do
  if [ $((p % 2)) -eq 1 ]; then one "$small" "$p"; one "$large" "$p"; else
    one "$large" "$p"; one "$small" "$p"; fi
done

python3 - "$out/results.jsonl" "${n[$small]}" "${n[$large]}" <<'EOF'
import json, statistics, sys
path, small, large = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = {}
for line in open(path):
    r = json.loads(line)
    runs.setdefault(r["pair"], {})[r["stored"]] = r
ratios, extra = [], []
print(f"pair  lookup-hit/s {small} / {large} stored  ratio   server CPU us/hit   p99 ms")
for p in sorted(runs):
    s, l = runs[p].get(small), runs[p].get(large)
    if p == 0:
        continue
    if not s or not l:
        continue
    ratios.append(l["throughput"] / s["throughput"])
    extra.append(l["server_cpu_us_per_op"] - s["server_cpu_us_per_op"])
    print(f"{p:>4}  {s['throughput']:8.0f} / {l['throughput']:8.0f}         {100 * ratios[-1]:6.1f}%  "
          f"{s['server_cpu_us_per_op']:5.1f} / {l['server_cpu_us_per_op']:5.1f}       "
          f"{s['p99_ms']:.1f} / {l['p99_ms']:.1f}")
if ratios:
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    print(f"median over {len(ratios)} pairs: {large} stored at {100 * statistics.median(ratios):.1f}% "
          f"of {small} (quartiles {100 * q[0]:.1f}-{100 * q[2]:.1f}%); a lookup at {large} "
          f"costs the server {statistics.median(extra):.2f} us of CPU more (median over pairs)")
EOF
