#!/usr/bin/env python3
"""The ML Metadata peer of `stepcache-bench`: the same put and lookup workloads
against MLMD's embedded store (in memory, or a SQLite file), used the way a
Kubeflow Pipelines driver uses it.

- put: one `put_execution` per task: an execution (type system.ContainerExecution,
  state COMPLETE, a `cache_key` custom property), 2 INPUT events to existing
  artifacts, 2 new output artifacts with OUTPUT events, and the run's context
  (one system.PipelineRun context per 5 tasks, reused when it exists).
- lookup: `get_executions(list_options=ListOptions(filter_query=
  "custom_properties.cache_key.string_value = '<key>'"))`, then, on a hit, the
  outputs a driver hands on: `get_events_by_execution_ids` and
  `get_artifacts_by_id` of the OUTPUT events ("lookup+outputs"). The filter
  alone is reported too ("lookup-filter").

One client per process, sequential (an MLMD store is one connection); with
--processes N, N processes share each workload (PostgreSQL, as KFP's drivers
run: one per task). On PostgreSQL, each result also gives the CPU per
operation of the peer's processes and of PostgreSQL's (every process named
`postgres` on this machine, sampled while the peer's connections are open).
Run with bench/.venv/bin/python (see bench/setup-mlmd.sh).

    bench/.venv/bin/python bench/mlmd_peer.py --backend sqlite --db /tmp/mlmd.sqlite \
        --preload 10000 --count 2000
    bench/.venv/bin/python bench/mlmd_peer.py --backend postgresql \
        --pg-url postgres://postgres@127.0.0.1:5432/mlmd --processes 8 --preload 10000
"""

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time

from ml_metadata.metadata_store import metadata_store
from ml_metadata.metadata_store.metadata_store import ListOptions
from ml_metadata.proto import metadata_store_pb2 as pb
from urllib.parse import urlparse

INPUT_POOL = 1000  # input artifacts that tasks read, created once
BARRIER_S = 120  # how long processes wait for each other beyond the workload


def percentile(sorted_xs, p):
    if not sorted_xs:
        return float("nan")
    i = min(len(sorted_xs) - 1, max(0, int(round(p / 100.0 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[i]


def summary(name, lat_s, wall_s):
    xs = sorted(lat_s)
    n = len(xs)
    return {
        "workload": name,
        "count": n,
        "throughput": n / wall_s if wall_s > 0 else float("nan"),
        "p50_ms": percentile(xs, 50) * 1e3,
        "p90_ms": percentile(xs, 90) * 1e3,
        "p99_ms": percentile(xs, 99) * 1e3,
        "max_ms": (xs[-1] * 1e3) if xs else float("nan"),
    }


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def postgres_cpu_s():
    """User + system CPU seconds of every live process named `postgres`."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if name == "postgres":
            total += int(rest[11]) + int(rest[12])
    return total / tick


class Peer:
    def __init__(self, backend, db_path, pg_url=None):
        config = pb.ConnectionConfig()
        if backend == "memory":
            config.fake_database.SetInParent()
        elif backend == "postgresql":
            u = urlparse(pg_url)
            c = config.postgresql
            c.host = u.hostname or "127.0.0.1"
            c.port = str(u.port or 5432)
            c.user = u.username or "postgres"
            if u.password:
                c.password = u.password
            c.dbname = u.path.lstrip("/") or "mlmd"
        else:
            config.sqlite.filename_uri = db_path
            config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        self.store = metadata_store.MetadataStore(config)
        s = self.store
        et = pb.ExecutionType(name="system.ContainerExecution")
        et.properties["component"] = pb.STRING
        self.exec_type = s.put_execution_type(et)
        self.art_type = s.put_artifact_type(pb.ArtifactType(name="system.Dataset"))
        self.ctx_type = s.put_context_type(pb.ContextType(name="system.PipelineRun"))
        self.inputs = []

    def ensure_inputs(self):
        existing = self.store.get_artifacts_by_type("system.Dataset")
        pool = [a for a in existing if a.uri.startswith("gs://bench/inputs/")]
        if len(pool) < INPUT_POOL:
            arts = []
            for i in range(len(pool), INPUT_POOL):
                a = pb.Artifact(type_id=self.art_type, uri=f"gs://bench/inputs/{i}")
                a.state = pb.Artifact.LIVE
                arts.append(a)
            for a, id_ in zip(arts, self.store.put_artifacts(arts)):
                a.id = id_
                pool.append(a)
        # Whole artifacts: MLMD writes back every artifact put_execution is
        # given, so one passed as id and type only would lose its URI and state.
        self.inputs = pool[:INPUT_POOL]

    def execution_count(self):
        return len(self.store.get_executions_by_type("system.ContainerExecution"))

    def put(self, i, key):
        """Task number i with cache key `key`: what a KFP driver records."""
        e = pb.Execution(type_id=self.exec_type, last_known_state=pb.Execution.COMPLETE)
        e.name = f"task-{i}"
        e.properties["component"].string_value = f"component-{i % 5}"
        e.custom_properties["cache_key"].string_value = key
        e.custom_properties["image"].string_value = "python:3.11"
        aes = []
        for j in range(2):
            a = pb.Artifact()
            a.CopyFrom(self.inputs[(2 * i + j) % len(self.inputs)])
            ev = pb.Event(type=pb.Event.INPUT)
            ev.path.steps.add().key = f"in{j}"
            aes.append((a, ev))
        for j in range(2):
            a = pb.Artifact(type_id=self.art_type, uri=f"gs://bench/out/{i}/out{j}")
            a.state = pb.Artifact.LIVE
            ev = pb.Event(type=pb.Event.OUTPUT)
            ev.path.steps.add().key = f"out{j}"
            aes.append((a, ev))
        ctx = pb.Context(type_id=self.ctx_type, name=f"run-{i // 5}")
        self.store.put_execution(e, aes, [ctx], reuse_context_if_already_exist=True)

    def lookup_filter(self, key):
        return self.store.get_executions(
            list_options=ListOptions(
                filter_query=f"custom_properties.cache_key.string_value = '{key}'"
            )
        )

    def lookup(self, key):
        execs = self.lookup_filter(key)
        if not execs:
            return None
        execs = [e for e in execs if e.last_known_state == pb.Execution.COMPLETE]
        newest = max(execs, key=lambda e: e.create_time_since_epoch)
        events = self.store.get_events_by_execution_ids([newest.id])
        out_ids = [ev.artifact_id for ev in events if ev.type == pb.Event.OUTPUT]
        arts = self.store.get_artifacts_by_id(out_ids)
        return newest, arts


def key_of(i):
    # 64 hex characters, like a stepcache/KFP fingerprint, deterministic per i.
    return ("%016x" % (i * 0x9E3779B97F4A7C15 % (1 << 64))) * 4


def worker(backend, db, pg_url, workload, items, deadline_s, start, done, sampled, out):
    """One process's share of a workload (`--processes`)."""
    peer = Peer(backend, db, pg_url)
    peer.ensure_inputs()  # made by the parent before the fork: found, not made
    f = {"put": lambda i: peer.put(i, key_of(i)), "lookup-hit": peer.lookup,
         "lookup-filter": peer.lookup_filter, "lookup-miss": peer.lookup}[workload]
    start.wait(BARRIER_S)
    cpu0 = time.process_time()
    lat, wall = timed(f, items, deadline_s)
    cpu = time.process_time() - cpu0
    done.wait(deadline_s + BARRIER_S)
    sampled.wait(BARRIER_S)  # the parent has read PostgreSQL's CPU: connections may close
    out.put((lat, wall, cpu))


def parallel(args, workload, items):
    """`items` shared by --processes processes; (latencies, wall, peer CPU s,
    PostgreSQL CPU s or None)."""
    n = args.processes
    ctx = multiprocessing.get_context("fork")
    start, done, sampled = (ctx.Barrier(n + 1) for _ in range(3))
    out = ctx.Queue()
    # Puts go to processes a run at a time (tasks i // 5 share a run
    # context), as one driver records one run: processes that create one
    # context at once fail on its unique name and lose the put.
    share = ((lambda k: [i for i in items if (i // 5) % n == k]) if workload == "put"
             else (lambda k: items[k::n]))
    procs = [ctx.Process(target=worker, args=(args.backend, args.db, args.pg_url, workload,
                                              share(k), args.max_seconds, start, done,
                                              sampled, out))
             for k in range(n)]
    for p in procs:
        p.start()
    # A worker that fails breaks the barriers: the parent fails too, in time.
    start.wait(BARRIER_S)
    pg0, t0 = postgres_cpu_s(), time.perf_counter()
    done.wait(args.max_seconds + BARRIER_S)
    wall, pg1 = time.perf_counter() - t0, postgres_cpu_s()
    sampled.wait(BARRIER_S)
    lat, cpu = [], 0.0
    for _ in procs:
        l, _w, c = out.get()
        lat += l
        cpu += c
    for p in procs:
        p.join()
    pg = pg1 - pg0 if args.backend == "postgresql" else None
    return lat, wall, cpu, pg


def timed(f, args_list, deadline_s):
    lat = []
    start = time.perf_counter()
    for a in args_list:
        t = time.perf_counter()
        f(a)
        lat.append(time.perf_counter() - t)
        if time.perf_counter() - start > deadline_s:
            break
    return lat, time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["memory", "sqlite", "postgresql"], default="memory")
    ap.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432/mlmd",
                    help="PostgreSQL database (--backend postgresql); MLMD creates it if missing")
    ap.add_argument("--processes", type=int, default=1,
                    help="processes sharing each workload and the preload, one connection each")
    ap.add_argument("--db", default="/tmp/stepcache-bench-mlmd.sqlite",
                    help="SQLite file (reused when it already holds the preload)")
    ap.add_argument("--preload", type=int, default=10000, help="executions stored before measuring")
    ap.add_argument("--count", type=int, default=2000, help="operations per measured workload")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="bound on each measured workload")
    ap.add_argument("--workloads", default="put,lookup-filter,lookup-hit,lookup-miss")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--fast-preload", action=argparse.BooleanOptionalAction, default=True,
                    help="preload a SQLite file with fsync disabled (bench/.venv/nofsync.so); "
                         "measured workloads always run with normal fsync")
    ap.add_argument("--json", action="store_true", help="print one JSON line per result")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    shim = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".venv", "nofsync.so")
    if (args.backend == "sqlite" and args.fast_preload and args.preload > 0
            and os.path.exists(shim) and "LD_PRELOAD" not in os.environ):
        # Preload in a child process whose fsyncs are no-ops; measure here,
        # with SQLite's normal durable commits.
        env = dict(os.environ, LD_PRELOAD=shim)
        cmd = [sys.executable, os.path.abspath(__file__), "--backend", "sqlite", "--db", args.db,
               "--preload", str(args.preload), "--workloads", "", "--json"]
        out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
        for line in out.splitlines():
            r = json.loads(line)
            if r["workload"] == "preload":
                print(f"# preloaded {r['count']} executions without fsync in {r['seconds']:.1f} s "
                      f"({r['throughput']:.0f}/s)", file=sys.stderr)
    elif args.backend == "sqlite" and os.path.exists(args.db):
        print(f"# reusing {args.db}", file=sys.stderr)
    peer = Peer(args.backend, args.db, args.pg_url)
    peer.ensure_inputs()
    have = peer.execution_count()
    results = []
    if have < args.preload and args.processes > 1:
        _lat, el, _cpu, _pg = parallel(args, "put", list(range(have, args.preload)))
        results.append({"workload": "preload", "count": args.preload - have,
                        "throughput": (args.preload - have) / el, "seconds": el})
        have = args.preload
    elif have < args.preload:
        t0 = time.perf_counter()
        for i in range(have, args.preload):
            peer.put(i, key_of(i))
            if (i + 1) % 10000 == 0:
                el = time.perf_counter() - t0
                print(f"# preloaded {i + 1}: {(i + 1 - have) / el:.0f}/s", file=sys.stderr)
        el = time.perf_counter() - t0
        results.append({"workload": "preload", "count": args.preload - have,
                        "throughput": (args.preload - have) / el, "seconds": el})
        have = args.preload
    stored = have

    for w in filter(None, args.workloads.split(",")):
        if w == "put":
            # New tasks numbered after everything stored; on the file store this
            # grows it by --count executions (the lookups below ignore them).
            ids = list(range(stored + 10**9, stored + 10**9 + args.count))
            items, f = ids, (lambda i: peer.put(i, key_of(i)))
        elif w in ("lookup-hit", "lookup-filter"):
            keys = [key_of(rng.randrange(args.preload)) for _ in range(args.count)]
            f = peer.lookup if w == "lookup-hit" else peer.lookup_filter
            # The first call warms caches; correctness check on it.
            assert f(keys[0]), "a preloaded key must hit"
            items = keys
        elif w == "lookup-miss":
            keys = [key_of(10**12 + rng.randrange(10**9)) for _ in range(args.count)]
            assert peer.lookup(keys[0]) is None
            items, f = keys, peer.lookup
        else:
            ap.error(f"unknown workload {w}")
        if args.processes > 1 or args.backend == "postgresql":
            lat, wall, cpu, pg = parallel(args, w, items)
        else:
            cpu0 = time.process_time()
            lat, wall = timed(f, items, args.max_seconds)
            cpu, pg = time.process_time() - cpu0, None
        r = summary(w, lat, wall)
        r["peer_cpu_us"] = cpu / max(1, len(lat)) * 1e6
        if pg is not None:
            r["postgres_cpu_us"] = pg / max(1, len(lat)) * 1e6
        results.append(r)

    for r in results:
        r.update({"system": f"mlmd-{args.backend}", "stored": stored, "rss_mib": rss_mib(),
                  "processes": args.processes})
        if args.json:
            print(json.dumps(r))
        elif r["workload"] == "preload":
            print(f"mlmd-{args.backend:6} stored={stored:<8} preload      "
                  f"{r['throughput']:9.0f}/s  ({r['count']} in {r['seconds']:.1f} s)")
        else:
            print(f"mlmd-{args.backend:6} stored={stored:<8} {r['workload']:<13}"
                  f"{r['throughput']:9.0f}/s  p50 {r['p50_ms']:7.3f} ms  p90 {r['p90_ms']:7.3f} ms  "
                  f"p99 {r['p99_ms']:7.3f} ms  max {r['max_ms']:7.3f} ms  n={r['count']}  "
                  f"rss {r['rss_mib']:.0f} MiB  cpu/op {r['peer_cpu_us']:.0f} us"
                  + (f" + postgres {r['postgres_cpu_us']:.0f} us" if "postgres_cpu_us" in r else ""))


if __name__ == "__main__":
    main()
