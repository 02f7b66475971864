#!/usr/bin/env python3
"""The table of BENCHMARKS.md "Latest results" from one bench/matrix.sh output dir.

    python3 bench/matrix-table.py /tmp/bm/out4 [/tmp/bm/matrix4.log]

Reads the merged lines and per-round shares that stepcache-bench printed
(lookups-N.txt, working-set-N.txt, writes-N.txt) and ML Metadata's JSON lines
(mlmd-N.txt on a SQLite file, mlmd-memory-N.txt in memory), each ML Metadata
figure with stepcache's as a multiple of it; with the matrix's log (its
stderr), also the server starts.
"""
import json
import re
import sys
from pathlib import Path

LINE = re.compile(
    r"stepcache stored=(\d+)\s+(\S+)\s+c=(\d+)\s+(\d+)/s\s+p50\s+([\d.]+) ms\s+p90\s+([\d.]+) ms\s+"
    r"p99\s+([\d.]+) ms.*?server rss (\d+) MiB \(peak (\d+)\).*?\((\d+) / (\d+) us per op\)"
)
SHARE = re.compile(r"^\s+(\S+)\s+c=(\d+)\s+([\d.]+)% of floor \(rounds: ([\d.]+)%\.\.([\d.]+)%")


def runs(path):
    """(merged results by (workload, c), per-round p99s by (workload, c), shares)."""
    merged, p99s, shares = {}, {}, {}
    if not path.exists():
        return merged, p99s, shares
    text = path.read_text()
    rounds, _, tail = text.partition("merged over")
    for m in LINE.finditer(rounds):
        p99s.setdefault((m[2], int(m[3])), []).append(float(m[7]))
    for m in LINE.finditer(tail or rounds):
        merged[(m[2], int(m[3]))] = {
            "tput": int(m[4]), "p50": float(m[5]), "p99": float(m[7]),
            "rss": int(m[8]), "peak": int(m[9]), "srv": int(m[10]), "bench": int(m[11]),
        }
    for line in text.splitlines():
        m = SHARE.match(line)
        if m:
            shares[(m[1], int(m[2]))] = (float(m[3]), float(m[4]), float(m[5]))
    return merged, p99s, shares


def mlmd(path):
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                out[r["workload"]] = r
    return out


def main():
    out = Path(sys.argv[1])
    sizes = sorted(int(p.stem.split("-")[1]) for p in out.glob("lookups-*.txt"))
    cols = {n: {} for n in sizes}
    for n in sizes:
        look, p99s, shares = runs(out / f"lookups-{n}.txt")
        ws, _, ws_shares = runs(out / f"working-set-{n}.txt")
        wr, _, _ = runs(out / f"writes-{n}.txt")
        c = cols[n]
        fl, hit = look.get(("floor", 64)), look.get(("lookup-hit", 64))
        c["floor"] = fl and f"{fl['tput']:,} /s · p99 {fl['p99']:.2f} ms"
        if hit:
            s = shares.get(("lookup-hit", 64))
            rp = " / ".join(f"{x:.2f}" for x in p99s.get(("lookup-hit", 64), []))
            c["hit"] = (f"{hit['tput']:,} /s · p99 {hit['p99']:.2f} ms (rounds {rp}) · "
                        f"**{s[0]:.1f}% of floor** ({s[1]:.1f}-{s[2]:.1f}%)" if s else "")
            c["cpu"] = f"{hit['srv']} / {hit['bench']} us ({fl['srv']} / {fl['bench']})" if fl else ""
            c["rss"] = f"{hit['rss']} MiB"
        w = ws.get(("lookup-hit", 64))
        if w:
            s = ws_shares.get(("lookup-hit", 64))
            c["ws"] = f"{w['tput']:,} /s · p99 {w['p99']:.2f} ms · {s[0]:.1f}%" if s else ""
        miss = look.get(("lookup-miss", 64))
        c["miss"] = miss and f"{miss['tput']:,} /s"
        put, pipe = wr.get(("put", 64)), wr.get(("pipeline", 64))
        c["put"] = put and f"{put['tput']:,} /s · {put['srv']} us server CPU · peak RSS {put['peak']} MiB"
        c["pipeline"] = pipe and f"{pipe['tput']:,} tasks/s"
        h1, f1 = look.get(("lookup-hit", 1)), look.get(("floor", 1))
        c["c1"] = h1 and f1 and f"{h1['p50']:.3f} ms ({f1['p50']:.3f})"
        for backend, suffix in (("sqlite", ""), ("memory", "-memory")):
            m = mlmd(out / f"mlmd{suffix}-{n}.txt")
            for workload, ours in (("put", put), ("lookup-filter", hit), ("lookup-hit", hit)):
                r = m.get(workload)
                if not r:
                    continue
                times = f" · ours **{ours['tput'] / r['throughput']:.1f}x**" if ours else ""
                c[f"{backend} {workload}"] = (f"{r['throughput']:,.1f} /s · p50 {r['p50_ms']:.3f} ms"
                                              f"{times}")
    rows = [
        ("floor (Health/Check), c=64", "floor"),
        ("lookup-hit, uniform over all stored, c=64", "hit"),
        ("lookup-hit, newest 10k", "ws"),
        ("lookup-miss, c=64", "miss"),
        ("server / load generator CPU per lookup-hit (floor)", "cpu"),
        ("server RSS after lookups", "rss"),
        ("put (durable), c=64", "put"),
        ("pipeline", "pipeline"),
        ("lookup-hit c=1 p50 (floor)", "c1"),
        ("ML Metadata, SQLite file: put (durable), one client", "sqlite put"),
        ("ML Metadata, SQLite file: lookup by filter query", "sqlite lookup-filter"),
        ("ML Metadata, SQLite file: lookup with its outputs", "sqlite lookup-hit"),
        ("ML Metadata, in memory: put", "memory put"),
        ("ML Metadata, in memory: lookup by filter query", "memory lookup-filter"),
        ("ML Metadata, in memory: lookup with its outputs", "memory lookup-hit"),
    ]
    print("| workload | " + " | ".join(f"{n:,} stored" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for label, k in rows:
        if any(cols[n].get(k) for n in sizes):
            print(f"| {label} | " + " | ".join(cols[n].get(k) or "" for n in sizes) + " |")
    if len(sys.argv) > 2:
        starts = re.findall(r"started in ([\d.]+) s \(data dir \S+sc1000000",
                            Path(sys.argv[2]).read_text())
        if starts:
            print(f"\nstarts on the 1M dir: {min(map(float, starts)):.2f}-{max(map(float, starts)):.2f} s "
                  f"({len(starts)} starts)")


if __name__ == "__main__":
    main()
