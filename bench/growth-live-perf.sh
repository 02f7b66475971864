#!/usr/bin/env bash
# bench/growth-live.sh with perf recording both servers, then what a lookup
# at the large size costs each function over one at the small size, per
# lookup (bench/perf-diff.py): both servers run under the same VM
# conditions, slice by slice, which separate perf runs minutes apart do not.
#
#   bench/growth-live-perf.sh SMALL_DIR LARGE_DIR [PAIRS] [OUT_DIR]
#
# Needs perf. The samples slow both servers alike; the ratio it prints is
# not the one to judge the target by.
set -euo pipefail
cd "$(dirname "$0")/.."
small=${1:?SMALL_DIR}
large=${2:?LARGE_DIR}
pairs=${3:-20}
out=${4:-/tmp/bm/growth-live-perf}
mkdir -p "$out"
bench/growth-live.sh "$small" "$large" "$pairs" "$out" >"$out/live.txt" 2>&1 &
live=$!
pids=
for _ in $(seq 600); do
  pids=$(awk '/^# server pid/ {print $4}' "$out/live.txt" 2>/dev/null | paste -sd, -)
  [[ $pids == *,* ]] && break
  kill -0 "$live" 2>/dev/null || break
  sleep 0.5
done
[[ $pids == *,* ]] || { cat "$out/live.txt" >&2; exit 1; }
perf record -F 1999 -p "$pids" -o "$out/perf.data" >"$out/perf.log" 2>&1 &
perf=$!
wait "$live"
kill -INT "$perf" 2>/dev/null || true
wait "$perf" 2>/dev/null || true
tail -1 "$out/live.txt"
python3 bench/perf-diff.py "$out" "${pids%,*}" "${pids#*,}"
