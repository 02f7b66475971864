#!/usr/bin/env python3
"""Per-lookup CPU by function, the large server against the small one.

    bench/perf-diff.py OUT_DIR SMALL_PID LARGE_PID [ROWS]

OUT_DIR holds a growth-live run's results.jsonl and a perf.data recorded
from both servers (bench/growth-live-perf.sh). Each server's CPU time by
function (the samples' periods: perf's cpu-clock counts nanoseconds) is
divided by the lookups it answered, so the columns are us of CPU per
lookup; rows are sorted by what the large size adds.
"""
import collections
import json
import subprocess
import sys

out, small_pid, large_pid = sys.argv[1:4]
rows = int(sys.argv[4]) if len(sys.argv) > 4 else 25

lookups = collections.Counter()
for line in open(f"{out}/results.jsonl"):
    r = json.loads(line)
    lookups[r["stored"]] += r["count"]
small_n, large_n = min(lookups), max(lookups)

report = subprocess.run(
    ["perf", "report", "-i", f"{out}/perf.data", "--no-children", "--sort", "pid,sym",
     "--stdio", "-F", "period,pid,sym"],
    capture_output=True, text=True, check=True).stdout
nanos = {small_pid: collections.Counter(), large_pid: collections.Counter()}
for line in report.splitlines():
    parts = line.split(None, 2)
    if line.startswith("#") or len(parts) < 3 or not parts[0].isdigit():
        continue
    pid = parts[1].split(":")[0]
    if pid in nanos:
        nanos[pid][parts[2].split(None, 1)[-1].strip()] += int(parts[0])

def per_lookup(pid, n):
    return {sym: ns / 1e3 / lookups[n] for sym, ns in nanos[pid].items()}

a, b = per_lookup(small_pid, small_n), per_lookup(large_pid, large_n)
print(f"us of CPU per lookup: {small_n} stored {sum(a.values()):.2f}, "
      f"{large_n} stored {sum(b.values()):.2f}")
print(f"{'added':>7} {small_n:>9} {large_n:>9}  function")
order = sorted(set(a) | set(b), key=lambda k: b.get(k, 0) - a.get(k, 0), reverse=True)
for sym in order[:rows] + ["..."] + order[-5:]:
    if sym == "...":
        print("    ...")
        continue
    print(f"{b.get(sym, 0) - a.get(sym, 0):+7.3f} {a.get(sym, 0):9.3f} {b.get(sym, 0):9.3f}  {sym[:100]}")
