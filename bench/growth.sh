#!/usr/bin/env bash
# Lookups at two history sizes, interleaved: issue 7's "lookup throughput at
# 1M stored executions at least 90% of that at 10k", measured so that the
# machine's drift falls on both sides alike.
#
#   bench/growth.sh SMALL_DIR LARGE_DIR [PAIRS] [OUT_DIR]
#   e.g. bench/growth.sh /tmp/bm/sc10000 /tmp/bm/sc1000000 6 /tmp/bm/growth
#
# Both data dirs must hold a settled preload (bench/matrix.sh makes them).
# Each pair starts a server on one dir, then on the other (the order swaps
# from pair to pair), and runs the floor and lookup-hit at 64 callers for
# DURATION seconds (default 3) each. Both data files are held in the page
# cache the whole time (bench/pin-pages.py). It prints, per pair and as the
# median over pairs, the large dir's lookup throughput over the small one's,
# raw and as shares of the floor measured by the same server. BENCH_ARGS
# adds arguments to every stepcache-bench run (e.g. "--hot-hits 0": both
# sizes served from the hits file). Run nothing else meanwhile: the load
# generator and the server share 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
small=${1:?SMALL_DIR}
large=${2:?LARGE_DIR}
pairs=${3:-6}
out=${4:-/tmp/bm/growth}
duration=${DURATION:-3}
read -r -a extra <<<"${BENCH_ARGS:-}"
bench=target/release/stepcache-bench
mkdir -p "$out"

source bench/pin.sh
n_small=$(stored "$small")
n_large=$(stored "$large")

trap 'kill ${pinner:-} 2>/dev/null || true' EXIT
PIN_TRIES=1200 pin_dirs "$out/pin.txt" "$small" "$large" || { echo "the data files did not pin" >&2; exit 1; }
echo "# $(cat "$out/pin.txt")"

one() { # one DIR N PAIR: a server on DIR, floor then lookup-hit
  "$bench" --preload "$2" --data-dir "$1" --rounds 1 --duration "$duration" --warmup 0.5 \
    --concurrency 64 "${extra[@]}" --json floor lookup-hit | tee "$out/pair$3-$2.txt"
}
: >"$out/results.jsonl"
for p in $(seq "$pairs"); do
  if [ $((p % 2)) -eq 1 ]; then order="$small:$n_small $large:$n_large"; else
    order="$large:$n_large $small:$n_small"; fi
  for run in $order; do
    echo "== pair $p: ${run#*:} stored"
    one "${run%%:*}" "${run#*:}" "$p" | grep '^{' | sed "s/^{/{\"pair\":$p,/" >>"$out/results.jsonl"
  done
done

python3 - "$out/results.jsonl" "$n_small" "$n_large" <<'EOF'
import json, statistics, sys
path, small, large = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = {}
for line in open(path):
    r = json.loads(line)
    runs.setdefault(r["pair"], {}).setdefault(r["stored"], {})[r["workload"]] = r
raw, share = [], []
print(f"pair  lookup-hit {small} / {large} stored  (share of floor)  raw ratio  share ratio  p99 ms")
for p in sorted(runs):
    s, l = runs[p].get(small), runs[p].get(large)
    if not s or not l or "lookup-hit" not in s or "lookup-hit" not in l:
        continue
    sh, lh = s["lookup-hit"], l["lookup-hit"]
    s_share = sh["throughput"] / s["floor"]["throughput"]
    l_share = lh["throughput"] / l["floor"]["throughput"]
    raw.append(lh["throughput"] / sh["throughput"])
    share.append(l_share / s_share)
    print(f"{p:>4}  {sh['throughput']:8.0f} / {lh['throughput']:8.0f}/s   "
          f"({100 * s_share:4.1f}% / {100 * l_share:4.1f}%)   {100 * raw[-1]:6.1f}%     "
          f"{100 * share[-1]:6.1f}%   {sh['p99_ms']:.1f} / {lh['p99_ms']:.1f}")
if raw:
    print(f"median over {len(raw)} pairs: {large} stored at {100 * statistics.median(raw):.1f}% "
          f"of {small} (raw), {100 * statistics.median(share):.1f}% (as shares of the floor); "
          f"min {100 * min(raw):.1f}%, max {100 * max(raw):.1f}%")
EOF
