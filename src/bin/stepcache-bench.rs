//! `stepcache-bench`: a loopback load generator for stepcache (issue 7).
//!
//! By default it spawns the real `stepcache serve` binary (the sibling of this
//! executable, or `--server-bin`) on 127.0.0.1:0 as a child process, so that the
//! server's RSS and CPU can be read from /proc/PID and are not mixed with the
//! load generator's, and the server is exactly what a deployment runs. Before the
//! server starts, `--preload N` writes N executions straight into the data dir
//! with the library's `Store::put_executions` (one transaction and one flush per
//! batch): minutes for 1M instead of hours over RPC. A data dir that already
//! holds a preload (see `stepcache-bench.json` in it) is reused and topped up.
//! With `--addr` it targets a running server instead; `--preload` then goes
//! over PutExecution with 64 concurrent writers (idempotent by external_id).
//!
//! Workloads: floor (grpc.health.v1.Health/Check), lookup-hit, lookup-miss,
//! put (durable PutExecution COMPLETE, 2 input artifacts, 2 outputs), pipeline
//! (a 5-task DAG per run: lookup, then put on a miss; 90% of runs repeat an
//! earlier run), or all of them back to back with ratios to the floor.
//!
//!     cargo build --release
//!     cargo run --release --bin stepcache-bench -- --preload 100000 all

/// The allocator of the `stepcache` server, so that in-process store work
/// (preloads, queries) costs what it costs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use prost_types::value::Kind;
use prost_types::Value;
use serde::{Deserialize, Serialize};
use stepcache::backend::Backend;
use stepcache::clock::SystemClock;
use stepcache::pg::PgStore;
use stepcache::proto::cache_service_client::CacheServiceClient;
use stepcache::proto::get_cached_execution_request::Target;
use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache::proto::{
    Artifact, ArtifactIds, ArtifactList, ContainerSpec, Execution, ExecutionState,
    GetCachedExecutionRequest, Outcome, OutputArtifact, PutArtifactsRequest, PutExecutionRequest,
    TaskInterface,
};
use stepcache::store::{ExecutionFilter, Store, StoreConfig};
use stepcache::validate::{self, Limits};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

mod common;
use common::Rng;

const NAMESPACE: &str = "default";
/// Input artifacts that generated tasks read.
const INPUT_POOL: usize = 1000;
const MARKER: &str = "stepcache-bench.json";
/// Bump when the generated interfaces change: a preload of another version is
/// not reused.
const GENERATOR_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Workload {
    Floor,
    LookupHit,
    LookupMiss,
    Put,
    Pipeline,
    /// floor, lookup-hit, lookup-miss, put, pipeline, then ratios to the floor.
    All,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Floor => "floor",
            Workload::LookupHit => "lookup-hit",
            Workload::LookupMiss => "lookup-miss",
            Workload::Put => "put",
            Workload::Pipeline => "pipeline",
            Workload::All => "all",
        }
    }

    /// Whether the workload writes to the store (puts; the pipeline's misses).
    fn writes(self) -> bool {
        matches!(self, Workload::Put | Workload::Pipeline)
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "stepcache-bench",
    about = "Loopback load generator for stepcache: floor, lookup-hit, lookup-miss, put, pipeline"
)]
struct Args {
    /// Workloads to run back to back (all = every one, then ratios to the floor).
    #[arg(value_enum, required = true)]
    workloads: Vec<Workload>,
    /// Target a running server (http://host:port) instead of spawning one.
    #[arg(long)]
    addr: Option<String>,
    /// With --addr: the server's PID, to report its RSS and CPU.
    #[arg(long, requires = "addr")]
    server_pid: Option<u32>,
    /// The `stepcache` binary to spawn (default: next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Data dir of the spawned server (default: a temporary dir, removed at exit).
    /// A dir holding an earlier preload is reused. With --addr: the dir the
    /// running server serves, holding a preload of at least --preload
    /// executions; only its record of the preload is read (nothing is written).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Serve from this PostgreSQL database (postgres://user@host/db, empty or
    /// holding an earlier preload) instead of sled: the preload writes into
    /// it directly and the spawned server gets `--store URL`.
    #[arg(long)]
    store: Option<String>,
    /// sled page cache of the spawned server, in MiB (the server's default).
    #[arg(long, default_value_t = 32)]
    cache_capacity_mb: u64,
    /// lookup-hit draws from the newest N preloaded executions (0 = all of
    /// them, uniformly): the working set a driver re-asks about.
    #[arg(long, default_value_t = 0)]
    working_set: u64,
    /// The spawned server's --hot-hits (in-memory hits; 0 = off).
    #[arg(long, default_value_t = 20_000)]
    hot_hits: usize,
    /// More arguments for the spawned `stepcache serve` (repeatable), e.g.
    /// `--server-arg=--read-threads=0`.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// The spawned server's --worker-threads (0: its default, one per core).
    /// Default: half the cores, at least 1, so that the server and the load
    /// generator each run on cores of their own instead of time-slicing each
    /// other's threads (BENCHMARKS.md, "Worker threads").
    #[arg(long)]
    server_workers: Option<usize>,
    /// Worker threads of the load generator. Default: the cores the spawned
    /// server's workers leave, at least 1; with --addr, one per core.
    #[arg(long)]
    client_workers: Option<usize>,
    /// Executions stored before measuring (lookup-hit draws from them).
    #[arg(long, default_value_t = 10_000)]
    preload: u64,
    /// Executions per preload transaction (direct path).
    #[arg(long, default_value_t = 500)]
    preload_batch: usize,
    /// Concurrent clients; a comma list runs every workload at each.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    concurrency: Vec<usize>,
    /// HTTP/2 connections the clients share (default: min(concurrency, 4)).
    #[arg(long)]
    connections: Option<usize>,
    /// Measured seconds per workload.
    #[arg(long, default_value_t = 10.0, conflicts_with = "count")]
    duration: f64,
    /// Measured operations per workload instead of a duration.
    #[arg(long)]
    count: Option<u64>,
    /// Unmeasured warm-up seconds before each workload.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Repeat the whole sequence of workloads this many times, interleaved, and
    /// report merged figures and the median per-round ratio to the floor: on a
    /// shared, noisy machine this compares like with like.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Seed of the generated choices.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Also print one JSON line per result (for tables).
    #[arg(long)]
    json: bool,
    /// lookup-hit and lookup-miss decode the whole reply, the original
    /// execution's interface included. By default they decode what a driver
    /// uses from a hit (`HitReply`: outcome, execution ID, the output
    /// artifacts) and skip the interface the caller sent: the load generator
    /// shares the cores with the server.
    #[arg(long)]
    full_replies: bool,
}

/// How many tokio worker threads the spawned server and the load generator
/// get: on a shared machine, cores of their own.
struct Split {
    /// None: the server's default.
    server: Option<usize>,
    client: usize,
}

impl Split {
    fn of(args: &Args, spawns_server: bool) -> Split {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Split::of_cores(
            cores,
            args.server_workers,
            args.client_workers,
            spawns_server,
        )
    }

    fn of_cores(
        cores: usize,
        server_workers: Option<usize>,
        client_workers: Option<usize>,
        spawns_server: bool,
    ) -> Split {
        if !spawns_server {
            return Split {
                server: None,
                client: client_workers.unwrap_or(cores).max(1),
            };
        }
        let server = match server_workers {
            Some(0) => None,
            Some(n) => Some(n),
            None => Some((cores / 2).max(1)),
        };
        let client = client_workers
            .unwrap_or(cores.saturating_sub(server.unwrap_or(0)))
            .max(1);
        Split { server, client }
    }
}

// ---------------------------------------------------------------------------
// Generated tasks

fn num(x: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(x)),
    }
}

fn text(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// What the preload left in the data dir, so that runs can reuse it.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Marker {
    generator: u32,
    executions: u64,
    inputs: Vec<i64>,
}

/// Deterministic tasks: task `i` of `salt` always has the same interface, so a
/// preload (salt 0) can be looked up by a later process.
struct Gen {
    inputs: Vec<i64>,
}

impl Gen {
    /// A realistic interface: container spec, 3 parameters, 2 input artifacts,
    /// 2 declared outputs.
    fn interface(&self, i: u64, salt: u64) -> TaskInterface {
        let p = self.inputs.len() as u64;
        let component = format!("component-{}", i % 5);
        let ids = |j: u64| ArtifactIds {
            ids: vec![self.inputs[((2 * i + j) % p) as usize]],
        };
        let mut parameters = BTreeMap::from([
            ("learning_rate".to_string(), num((i % 1000) as f64 / 1000.0)),
            ("epochs".to_string(), num(10.0)),
            ("task".to_string(), text(format!("task-{i}"))),
        ]);
        if salt != 0 {
            parameters.insert("salt".into(), text(format!("{salt:016x}")));
        }
        TaskInterface {
            component: component.clone(),
            cache_version: "1".into(),
            container: Some(ContainerSpec {
                image: "ghcr.io/example/steps:1.4.2".into(),
                command: vec!["python".into(), "-m".into(), "steps".into()],
                args: vec!["--component".into(), component],
                env: [("PYTHONUNBUFFERED".to_string(), "1".to_string())].into(),
                ..Default::default()
            }),
            parameters,
            input_artifacts: [("in0".to_string(), ids(0)), ("in1".to_string(), ids(1))].into(),
            output_artifacts: [
                ("out0".to_string(), "system.Dataset".to_string()),
                ("out1".to_string(), "system.Model".to_string()),
            ]
            .into(),
            ..Default::default()
        }
    }

    fn lookup(ti: TaskInterface) -> GetCachedExecutionRequest {
        GetCachedExecutionRequest {
            namespace: NAMESPACE.into(),
            target: Some(Target::Interface(ti)),
            ..Default::default()
        }
    }

    /// A durable PutExecution COMPLETE with two new output artifacts.
    fn put(ti: TaskInterface, external_id: String, uri: &str) -> PutExecutionRequest {
        let out = |name: &str| OutputArtifact {
            name: name.into(),
            artifact: Some(Artifact {
                uri: format!("{uri}/{name}"),
                ..Default::default()
            }),
        };
        PutExecutionRequest {
            execution: Some(Execution {
                namespace: NAMESPACE.into(),
                external_id,
                interface: Some(ti),
                state: ExecutionState::Complete as i32,
                output_parameters: [("accuracy".to_string(), num(0.93))].into(),
                ..Default::default()
            }),
            outputs: vec![out("out0"), out("out1")],
            ..Default::default()
        }
    }

    fn preload_put(&self, i: u64) -> PutExecutionRequest {
        Self::put(
            self.interface(i, 0),
            format!("bench-{i}"),
            &format!("gs://bench/preload/{i}"),
        )
    }

    fn input_artifacts() -> Vec<Artifact> {
        (0..INPUT_POOL)
            .map(|j| Artifact {
                namespace: NAMESPACE.into(),
                r#type: "system.Dataset".into(),
                uri: format!("gs://bench/inputs/{j}"),
                external_id: format!("bench-input-{j}"),
                ..Default::default()
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Preload

fn read_marker(dir: &Path) -> Option<Marker> {
    let m: Marker = serde_json::from_slice(&std::fs::read(dir.join(MARKER)).ok()?).ok()?;
    (m.generator == GENERATOR_VERSION).then_some(m)
}

/// The generator of the preload of at least `n` executions in `dir`, which a
/// running server serves: nothing is written.
fn served_preload(dir: &Path, n: u64) -> anyhow::Result<Gen> {
    let marker = read_marker(dir).with_context(|| {
        format!(
            "{} has no {MARKER} of generator {GENERATOR_VERSION}",
            dir.display()
        )
    })?;
    if marker.executions < n {
        bail!(
            "{} holds a preload of {} executions, not {n}",
            dir.display(),
            marker.executions
        );
    }
    eprintln!(
        "# {}: served preload of {} executions",
        dir.display(),
        marker.executions
    );
    Ok(Gen {
        inputs: marker.inputs,
    })
}

/// Writes executions `[have, n)` straight into the store at `dir` (no server
/// may run on it). One thread generates and validates, this one writes.
fn preload_direct(dir: &Path, url: Option<&str>, n: u64, batch: usize) -> anyhow::Result<Gen> {
    std::fs::create_dir_all(dir)?;
    let store: Arc<dyn Backend> = match url {
        Some(url) => Arc::new(PgStore::open(url, Arc::new(SystemClock))?),
        None => Arc::new(Store::open(
            dir,
            &StoreConfig::default(),
            Arc::new(SystemClock),
        )?),
    };
    let mut marker = match read_marker(dir) {
        Some(m) => m,
        None => {
            let filter = ExecutionFilter {
                namespace: NAMESPACE.into(),
                ..Default::default()
            };
            if !store.list_executions(&filter, 1, None)?.items.is_empty() {
                bail!(
                    "{} holds a store without a {MARKER} of generator {GENERATOR_VERSION}: \
                     use a fresh --data-dir",
                    dir.display()
                );
            }
            let inputs = store.put_artifacts(Gen::input_artifacts())?;
            Marker {
                generator: GENERATOR_VERSION,
                executions: 0,
                inputs,
            }
        }
    };
    let gen = Arc::new(Gen {
        inputs: marker.inputs.clone(),
    });
    let have = marker.executions;
    if have >= n {
        eprintln!(
            "# {}: reusing a preload of {have} executions",
            dir.display()
        );
        // A clean close keeps the hits file for the server.
        store.fill_hits_file()?;
        store.close()?;
        return Ok(Gen {
            inputs: marker.inputs,
        });
    }
    eprintln!("# preloading executions {have}..{n} into {}", dir.display());
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<_>>(4);
    let producer = {
        let gen = gen.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let limits = Limits::default();
            let mut i = have;
            while i < n {
                let end = (i + batch as u64).min(n);
                let writes = (i..end)
                    .map(|i| validate::execution_write(gen.preload_put(i), &limits))
                    .collect::<Result<Vec<_>, _>>()?;
                if tx.send(writes).is_err() {
                    break;
                }
                i = end;
            }
            Ok(())
        })
    };
    let start = Instant::now();
    let mut done = have;
    let mut next_report = have + 100_000;
    for writes in rx {
        store.put_executions(&writes)?;
        done += writes.len() as u64;
        if done >= next_report {
            let rate = (done - have) as f64 / start.elapsed().as_secs_f64();
            eprintln!("#   {done} executions ({rate:.0}/s)");
            next_report += 100_000;
            // Record progress so that an interrupted 1M preload resumes.
            marker.executions = done;
            std::fs::write(dir.join(MARKER), serde_json::to_vec(&marker)?)?;
        }
    }
    producer
        .join()
        .map_err(|_| anyhow!("preload generator panicked"))??;
    // Closing checkpoints: the first server start replays no preload log.
    // The hits file is filled as a server that has run a while would have it
    // (each key read once; `Store::warm_hits`).
    store.fill_hits_file()?;
    store.close()?;
    marker.executions = done;
    std::fs::write(dir.join(MARKER), serde_json::to_vec(&marker)?)?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "# preloaded {} executions in {secs:.1} s ({:.0}/s)",
        done - have,
        (done - have) as f64 / secs
    );
    Ok(Gen {
        inputs: marker.inputs,
    })
}

/// The preload over RPC, for `--addr`: idempotent by external_id.
async fn preload_rpc(channels: &[Channel], n: u64) -> anyhow::Result<Gen> {
    let mut meta = MetadataStoreServiceClient::new(channels[0].clone());
    let inputs = meta
        .put_artifacts(PutArtifactsRequest {
            artifacts: Gen::input_artifacts(),
        })
        .await?
        .into_inner()
        .artifact_ids;
    let gen = Arc::new(Gen { inputs });
    if n > 0 {
        let start = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|w| {
                let (gen, next) = (gen.clone(), next.clone());
                let mut meta =
                    MetadataStoreServiceClient::new(channels[w % channels.len()].clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return anyhow::Ok(());
                        }
                        meta.put_execution(gen.preload_put(i)).await?;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!("# preloaded {n} executions over RPC in {secs:.1} s");
    }
    Ok(Arc::try_unwrap(gen).unwrap_or_else(|g| Gen {
        inputs: g.inputs.clone(),
    }))
}

// ---------------------------------------------------------------------------
// The server

struct ServerProc {
    child: Child,
    addr: String,
    startup: Duration,
}

impl ServerProc {
    fn server_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
        if let Some(p) = given {
            return Ok(p.to_path_buf());
        }
        let me = std::env::current_exe()?;
        let bin = me.with_file_name("stepcache");
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build --release) or pass --server-bin",
                bin.display()
            );
        }
        let older = |a: &Path, b: &Path| -> Option<bool> {
            Some(a.metadata().ok()?.modified().ok()? < b.metadata().ok()?.modified().ok()?)
        };
        if older(&bin, &me) == Some(true) {
            eprintln!(
                "# warning: {} is older than this benchmark: run cargo build --release",
                bin.display()
            );
        }
        Ok(bin)
    }

    /// Spawns `stepcache serve` on 127.0.0.1:0 and waits until Health/Check
    /// answers SERVING. `startup` is spawn-to-serving.
    async fn spawn(
        bin: &Path,
        data_dir: &Path,
        store: Option<&str>,
        cache_mb: u64,
        hot_hits: usize,
        extra: &[String],
    ) -> anyhow::Result<ServerProc> {
        let start = Instant::now();
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(store.iter().flat_map(|url| ["--store", url]))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--cache-capacity-mb")
            .arg(cache_mb.to_string())
            .arg("--hot-hits")
            .arg(hot_hits.to_string())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Read the log for the bound address, then keep draining it.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(tx) = tx.take_if(|_| line.contains("\"serving\"")) {
                    let addr = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v["fields"]["addr"].as_str().map(str::to_string));
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match tokio::time::timeout(Duration::from_secs(600), rx).await {
            Ok(Ok(Some(a))) => a,
            _ => {
                let _ = child.kill();
                bail!("the server did not log its address (see its stderr)");
            }
        };
        let addr: SocketAddr = addr.parse()?;
        let url = format!("http://{addr}");
        loop {
            if let Ok(ch) = Endpoint::from_shared(url.clone())?.connect().await {
                let ok = HealthClient::new(ch)
                    .check(HealthCheckRequest::default())
                    .await
                    .is_ok();
                if ok {
                    break;
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!("the server exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(ServerProc {
            child,
            addr: url,
            startup: start.elapsed(),
        })
    }

    /// SIGTERM (graceful: in-flight requests finish, the store is flushed and
    /// checkpointed); returns how long the server took to exit.
    fn stop(mut self) -> anyhow::Result<Duration> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if self.child.try_wait()?.is_some() {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        bail!("the server did not stop within 60 s of SIGTERM; killed")
    }
}

/// The number after `name` in a /proc file of `name: value [unit]` lines.
fn proc_value<T: std::str::FromStr>(text: &str, name: &str) -> Option<T> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident and peak memory of a process, in MiB.
fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mib = |name: &str| Some(proc_value::<f64>(&s, name)? / 1024.0);
    Some((mib("VmRSS:")?, mib("VmHWM:")?))
}

/// Bytes a process has sent to the storage layer so far (`write_bytes` of
/// /proc/PID/io: its writes to files, counted as it dirties the page cache;
/// not its socket writes).
fn storage_writes(pid: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    proc_value(&s, "write_bytes:")
}

/// What the server and the load generator have used so far; a window's use
/// is the difference of two samples.
#[derive(Default)]
struct Usage {
    server_cpu: Option<f64>,
    server_writes: Option<u64>,
    bench_cpu: Option<f64>,
}

impl Usage {
    fn of(server_pid: Option<&str>) -> Usage {
        Usage {
            server_cpu: server_pid.and_then(cpu_secs),
            server_writes: server_pid.and_then(storage_writes),
            bench_cpu: cpu_secs("self"),
        }
    }
}

/// User+system CPU seconds of a process so far (clock ticks of 1/100 s).
fn cpu_secs(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

// ---------------------------------------------------------------------------
// Workers

#[derive(Default)]
struct Counts {
    ops: u64,
    tasks: u64,
    hits: u64,
    misses: u64,
    errors: u64,
}

/// What every worker of a pipeline run shares: the seeds of finished runs.
#[derive(Default)]
struct PipelineState {
    seeds: Mutex<Vec<u64>>,
}

struct Worker {
    workload: Workload,
    gen: Arc<Gen>,
    preloaded: u64,
    working_set: u64,
    salt: u64,
    rng: Rng,
    health: HealthClient<Channel>,
    cache: CacheServiceClient<Channel>,
    /// The same channel, for lookups decoded as `HitReply`.
    lookups: tonic::client::Grpc<Channel>,
    full_replies: bool,
    meta: MetadataStoreServiceClient<Channel>,
    next_put: Arc<AtomicU64>,
    pipeline: Arc<PipelineState>,
    /// Latency of each operation (a pipeline: of each task), ns.
    hist: Histogram<u64>,
    /// Pipeline only: latency of each whole run, ns.
    run_hist: Histogram<u64>,
    counts: Counts,
}

/// GetCachedExecutionResponse as a driver reads a hit: the original
/// execution's ID (field 1 of `Execution`; its echoed interface is skipped on
/// the wire), the outputs whole.
#[derive(Clone, PartialEq, prost::Message)]
struct HitReply {
    #[prost(int32, tag = "1")]
    outcome: i32,
    #[prost(message, optional, tag = "3")]
    execution: Option<ExecutionId>,
    #[prost(btree_map = "string, message", tag = "4")]
    output_artifacts: BTreeMap<String, ArtifactList>,
    #[prost(string, tag = "7")]
    reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExecutionId {
    #[prost(int64, tag = "1")]
    id: i64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("valid bounds")
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().clamp(1_000, 120_000_000_000) as u64
}

impl Worker {
    /// One operation; records its latencies when `record`.
    async fn op(&mut self, record: bool) -> anyhow::Result<()> {
        let t0 = Instant::now();
        match self.workload {
            Workload::Floor => {
                self.health.check(HealthCheckRequest::default()).await?;
                self.counts.tasks += 1;
            }
            Workload::LookupHit | Workload::LookupMiss => {
                let ti = if self.workload == Workload::LookupHit {
                    let i = match self.working_set {
                        0 => self.rng.below(self.preloaded),
                        ws => self.preloaded - 1 - self.rng.below(ws.min(self.preloaded)),
                    };
                    self.gen.interface(i, 0)
                } else {
                    let i = self.rng.below(1 << 40);
                    self.gen.interface(i, self.salt ^ 0x5eed)
                };
                let r = self.lookup(Gen::lookup(ti)).await?;
                let hit = r.outcome == Outcome::Hit as i32;
                if hit != (self.workload == Workload::LookupHit) {
                    bail!("unexpected outcome {} ({})", r.outcome, r.reason);
                }
                if hit && (r.output_artifacts.len() != 2 || r.execution.is_none_or(|e| e.id == 0)) {
                    bail!("a hit without its execution ID and its 2 outputs");
                }
                self.counts.tasks += 1;
                if hit {
                    self.counts.hits += 1;
                } else {
                    self.counts.misses += 1;
                }
            }
            Workload::Put => {
                let i = self.next_put.fetch_add(1, Ordering::Relaxed);
                let ti = self.gen.interface(i, self.salt);
                let req = Gen::put(ti, String::new(), &format!("gs://bench/put/{i}"));
                let r = self.meta.put_execution(req).await?.into_inner();
                if !r.published || r.output_artifact_ids.len() != 2 {
                    bail!("a put that did not publish 2 outputs");
                }
                self.counts.tasks += 1;
            }
            Workload::Pipeline => {
                self.pipeline_run(record).await?;
                if record {
                    self.run_hist.record(ns(t0.elapsed()))?;
                }
                self.counts.ops += 1;
                return Ok(());
            }
            Workload::All => unreachable!("expanded"),
        }
        if record {
            self.hist.record(ns(t0.elapsed()))?;
        }
        self.counts.ops += 1;
        Ok(())
    }

    /// GetCachedExecution, its reply decoded as a `HitReply` (with
    /// --full-replies: decoded whole, then cut down to one).
    async fn lookup(&mut self, req: GetCachedExecutionRequest) -> anyhow::Result<HitReply> {
        if self.full_replies {
            let r = self.cache.get_cached_execution(req).await?.into_inner();
            return Ok(HitReply {
                outcome: r.outcome,
                execution: r.execution.map(|e| ExecutionId { id: e.id }),
                output_artifacts: r.output_artifacts,
                reason: r.reason,
            });
        }
        self.lookups.ready().await?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/stepcache.v1.CacheService/GetCachedExecution",
        );
        let codec = tonic_prost::ProstCodec::<GetCachedExecutionRequest, HitReply>::default();
        Ok(self
            .lookups
            .unary(tonic::Request::new(req), path, codec)
            .await?
            .into_inner())
    }

    /// A 5-task DAG: ingest -> (clean, featurize) -> train -> evaluate. Inputs
    /// are the upstream outputs' artifact IDs, so a run that repeats an earlier
    /// one hits all the way down, and a new one misses all the way down.
    async fn pipeline_run(&mut self, record: bool) -> anyhow::Result<()> {
        let earlier = {
            let seeds = self.pipeline.seeds.lock().expect("not poisoned");
            (!seeds.is_empty() && self.rng.chance(0.9))
                .then(|| seeds[self.rng.below(seeds.len() as u64) as usize])
        };
        let seed = earlier.unwrap_or_else(|| self.rng.next());
        let raw = self.gen.inputs[(seed % self.gen.inputs.len() as u64) as usize];
        let ingest = self
            .task(
                "ingest",
                seed,
                &[("raw", raw), ("schema", self.gen.inputs[0])],
                record,
            )
            .await?;
        let clean = self
            .task(
                "clean",
                0,
                &[("data", ingest[0]), ("stats", ingest[1])],
                record,
            )
            .await?;
        let feat = self
            .task(
                "featurize",
                0,
                &[("data", ingest[1]), ("stats", ingest[0])],
                record,
            )
            .await?;
        let train = self
            .task(
                "train",
                0,
                &[("train", clean[0]), ("features", feat[0])],
                record,
            )
            .await?;
        self.task(
            "evaluate",
            0,
            &[("model", train[0]), ("test", clean[1])],
            record,
        )
        .await?;
        if earlier.is_none() {
            self.pipeline.seeds.lock().expect("not poisoned").push(seed);
        }
        Ok(())
    }

    /// A driver's task: look up; on a miss "run" it and record it. Returns the
    /// output artifact IDs [out0, out1].
    async fn task(
        &mut self,
        component: &str,
        seed: u64,
        inputs: &[(&str, i64)],
        record: bool,
    ) -> anyhow::Result<[i64; 2]> {
        let t0 = Instant::now();
        let mut ti = self.gen.interface(0, 0);
        ti.component = component.into();
        ti.container.as_mut().expect("set").args = vec!["--component".into(), component.into()];
        ti.parameters = [("seed".to_string(), text(format!("{seed:016x}")))].into();
        ti.input_artifacts = inputs
            .iter()
            .map(|(name, id)| (name.to_string(), ArtifactIds { ids: vec![*id] }))
            .collect();
        let r = self
            .cache
            .get_cached_execution(Gen::lookup(ti.clone()))
            .await?
            .into_inner();
        let ids = if r.outcome == Outcome::Hit as i32 {
            self.counts.hits += 1;
            let id = |name: &str| -> anyhow::Result<i64> {
                r.output_artifacts
                    .get(name)
                    .and_then(|l| l.artifacts.first())
                    .map(|a| a.id)
                    .ok_or_else(|| anyhow!("a hit without output {name}"))
            };
            [id("out0")?, id("out1")?]
        } else {
            self.counts.misses += 1;
            let uri = format!("gs://bench/pipeline/{component}/{}", r.cache_key);
            let put = self
                .meta
                .put_execution(Gen::put(ti, String::new(), &uri))
                .await?
                .into_inner();
            match put.output_artifact_ids[..] {
                [a, b] => [a, b],
                _ => bail!("a put without 2 outputs"),
            }
        };
        self.counts.tasks += 1;
        if record {
            self.hist.record(ns(t0.elapsed()))?;
        }
        Ok(ids)
    }
}

/// How long (or how much) to run.
#[derive(Clone, Copy)]
enum Limit {
    Duration { warmup: Duration, measure: Duration },
    Count { warmup: u64, count: u64 },
}

struct Result1 {
    round: usize,
    workload: Workload,
    concurrency: usize,
    secs: f64,
    counts: Counts,
    hist: Histogram<u64>,
    run_hist: Histogram<u64>,
    server_rss: Option<(f64, f64)>,
    server_cores: Option<f64>,
    bench_cores: Option<f64>,
    /// Bytes the server sent to storage over the window (its data dir).
    server_writes: Option<u64>,
    first_error: Option<String>,
}

struct Ctx {
    channels: Vec<Channel>,
    full_replies: bool,
    gen: Arc<Gen>,
    preloaded: u64,
    working_set: u64,
    salt: u64,
    next_put: Arc<AtomicU64>,
    server_pid: Option<u32>,
    seed: u64,
}

async fn run_workload(
    ctx: &Ctx,
    workload: Workload,
    concurrency: usize,
    limit: Limit,
) -> anyhow::Result<Result1> {
    let pipeline = Arc::new(PipelineState::default());
    let started = Instant::now();
    let (warm_until, stop_at) = match limit {
        Limit::Duration { warmup, measure } => {
            (Some(started + warmup), Some(started + warmup + measure))
        }
        Limit::Count { .. } => (None, None),
    };
    // Count mode: a shared budget of unmeasured, then measured, operations.
    let (warm_ops, total_ops) = match limit {
        Limit::Count { warmup, count } => (warmup, warmup + count),
        Limit::Duration { .. } => (0, u64::MAX),
    };
    let taken = Arc::new(AtomicU64::new(0));
    let measure_start = Arc::new(Mutex::new(None::<Instant>));
    let server_pid = ctx.server_pid.map(|p| p.to_string());
    let usage_now = || Usage::of(server_pid.as_deref());
    let mut usage0 = Usage::default();

    let mut handles = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let ch = ctx.channels[w % ctx.channels.len()].clone();
        let mut worker = Worker {
            workload,
            gen: ctx.gen.clone(),
            preloaded: ctx.preloaded,
            working_set: ctx.working_set,
            salt: ctx.salt,
            rng: Rng(ctx.seed ^ (w as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F)),
            health: HealthClient::new(ch.clone()),
            cache: CacheServiceClient::new(ch.clone()),
            lookups: tonic::client::Grpc::new(ch.clone()),
            full_replies: ctx.full_replies,
            meta: MetadataStoreServiceClient::new(ch),
            next_put: ctx.next_put.clone(),
            pipeline: pipeline.clone(),
            hist: histogram(),
            run_hist: histogram(),
            counts: Counts::default(),
        };
        let taken = taken.clone();
        let measure_start = measure_start.clone();
        handles.push(tokio::spawn(async move {
            let mut first_error = None;
            let mut measuring = false;
            let mut last = Instant::now();
            loop {
                let now = Instant::now();
                let record = match (warm_until, stop_at) {
                    (Some(warm), Some(stop)) => {
                        if now >= stop {
                            break;
                        }
                        now >= warm
                    }
                    _ => {
                        let n = taken.fetch_add(1, Ordering::Relaxed);
                        if n >= total_ops {
                            break;
                        }
                        if n == warm_ops {
                            *measure_start.lock().expect("not poisoned") = Some(now);
                        }
                        n >= warm_ops
                    }
                };
                if record && !measuring {
                    // Counts cover only the measured window.
                    measuring = true;
                    worker.counts = Counts::default();
                }
                if let Err(e) = worker.op(record).await {
                    worker.counts.errors += 1;
                    first_error.get_or_insert_with(|| format!("{e:#}"));
                    if worker.counts.errors > 100 {
                        break;
                    }
                }
                last = Instant::now();
            }
            (worker, first_error, last)
        }));
        if w == 0 {
            usage0 = usage_now();
        }
    }
    // CPU is sampled over the measured window only (duration mode).
    if let Some(warm) = warm_until {
        tokio::time::sleep_until(warm.into()).await;
        usage0 = usage_now();
    }
    let mut hist = histogram();
    let mut run_hist = histogram();
    let mut counts = Counts::default();
    let mut first_error = None;
    let mut ended = started;
    for h in handles {
        let (w, err, last) = h.await?;
        hist.add(&w.hist)?;
        run_hist.add(&w.run_hist)?;
        counts.ops += w.counts.ops;
        counts.tasks += w.counts.tasks;
        counts.hits += w.counts.hits;
        counts.misses += w.counts.misses;
        counts.errors += w.counts.errors;
        if first_error.is_none() {
            first_error = err;
        }
        ended = ended.max(last);
    }
    let begin = warm_until
        .or(*measure_start.lock().expect("not poisoned"))
        .unwrap_or(started);
    let secs = ended.saturating_duration_since(begin).as_secs_f64();
    let usage1 = usage_now();
    let cores = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / secs);
    Ok(Result1 {
        round: 0,
        workload,
        concurrency,
        secs,
        server_cores: cores(usage0.server_cpu, usage1.server_cpu),
        bench_cores: cores(usage0.bench_cpu, usage1.bench_cpu),
        server_writes: usage1
            .server_writes
            .zip(usage0.server_writes)
            .map(|(end, start)| end.saturating_sub(start)),
        counts,
        hist,
        run_hist,
        server_rss: ctx.server_pid.and_then(rss_mib),
        first_error,
    })
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e6
}

impl Result1 {
    /// Tasks per second (an RPC, or a pipeline task of lookup [+ put]).
    fn throughput(&self) -> f64 {
        self.counts.tasks as f64 / self.secs
    }

    /// KiB the server sent to storage per task over the window.
    fn writes_kib_per_op(&self) -> Option<f64> {
        Some(self.server_writes? as f64 / 1024.0 / self.counts.tasks.max(1) as f64)
    }

    /// CPU time per task of a process that used `cores` over the window.
    fn cpu_us_per_op(&self, cores: f64) -> f64 {
        cores * self.secs * 1e6 / self.counts.tasks.max(1) as f64
    }

    fn print(&self, stored: u64, json: bool) {
        let h = &self.hist;
        let rss = self
            .server_rss
            .map(|(r, peak)| format!("  server rss {r:.0} MiB (peak {peak:.0})"))
            .unwrap_or_default();
        let cpu = match (self.server_cores, self.bench_cores) {
            (Some(s), Some(b)) => format!(
                "  cpu server {s:.2} / bench {b:.2} cores ({:.0} / {:.0} us per op)",
                self.cpu_us_per_op(s),
                self.cpu_us_per_op(b)
            ),
            (None, Some(b)) => format!("  cpu bench {b:.2} cores"),
            _ => String::new(),
        };
        // Only workloads that write (reads write nothing but sled's own
        // housekeeping), and only a server that writes files itself (on
        // PostgreSQL, the database server writes).
        let writes = match self.writes_kib_per_op() {
            Some(kib) if self.workload.writes() && kib > 0.0 => {
                format!("  server writes {kib:.1} KiB per op")
            }
            _ => String::new(),
        };
        println!(
            "stepcache stored={stored:<8} {:<12} c={:<3} {:>8.0}/s  p50 {:7.3} ms  p90 {:7.3} ms  \
             p99 {:7.3} ms  max {:8.3} ms  n={}  errors={}{rss}{cpu}{writes}",
            self.workload.name(),
            self.concurrency,
            self.throughput(),
            ms(h, 0.5),
            ms(h, 0.9),
            ms(h, 0.99),
            h.max() as f64 / 1e6,
            self.counts.tasks,
            self.counts.errors,
        );
        if self.workload == Workload::Pipeline {
            let r = &self.run_hist;
            let lookups = (self.counts.hits + self.counts.misses).max(1);
            println!(
                "    pipeline: {:.0} runs/s, hit rate {:.1}%, run latency p50 {:.3} ms p99 {:.3} ms",
                self.counts.ops as f64 / self.secs,
                100.0 * self.counts.hits as f64 / lookups as f64,
                ms(r, 0.5),
                ms(r, 0.99),
            );
        }
        if let Some(e) = &self.first_error {
            println!("    first error: {e}");
        }
        if json {
            let v = serde_json::json!({
                "system": "stepcache",
                "workload": self.workload.name(),
                "stored": stored,
                "concurrency": self.concurrency,
                "seconds": self.secs,
                "count": self.counts.tasks,
                "runs": self.counts.ops,
                "hits": self.counts.hits,
                "misses": self.counts.misses,
                "errors": self.counts.errors,
                "throughput": self.throughput(),
                "p50_ms": ms(h, 0.5),
                "p90_ms": ms(h, 0.9),
                "p99_ms": ms(h, 0.99),
                "max_ms": h.max() as f64 / 1e6,
                "server_rss_mib": self.server_rss.map(|r| r.0),
                "server_peak_rss_mib": self.server_rss.map(|r| r.1),
                "server_cores": self.server_cores,
                "server_cpu_us_per_op": self.server_cores.map(|c| self.cpu_us_per_op(c)),
                "bench_cpu_us_per_op": self.bench_cores.map(|c| self.cpu_us_per_op(c)),
                "server_writes_kib_per_op": self.writes_kib_per_op(),
                "rounds": self.round + 1,
                "bench_cores": self.bench_cores,
            });
            println!("{v}");
        }
    }
}

// ---------------------------------------------------------------------------

fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("stepcache-bench-{}-{nanos}", std::process::id()))
}

async fn connect(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        let ch = Endpoint::from_shared(addr.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        channels.push(ch);
    }
    Ok(channels)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut workloads: Vec<Workload> = Vec::new();
    for w in &args.workloads {
        if *w == Workload::All {
            workloads.extend([
                Workload::Floor,
                Workload::LookupHit,
                Workload::LookupMiss,
                Workload::Put,
                Workload::Pipeline,
            ]);
        } else {
            workloads.push(*w);
        }
    }
    if workloads.contains(&Workload::LookupHit) && args.preload == 0 {
        bail!("lookup-hit needs --preload > 0");
    }

    // The direct preload runs before the server (and its runtime) starts.
    let (temp, data_dir) = match (&args.addr, &args.data_dir) {
        (Some(_), _) => (false, None),
        (None, Some(d)) => (false, Some(d.clone())),
        (None, None) => (true, Some(temp_dir())),
    };
    let direct_gen = match (&data_dir, &args.addr, &args.data_dir) {
        (Some(d), _, _) => Some(preload_direct(
            d,
            args.store.as_deref(),
            args.preload,
            args.preload_batch.max(1),
        )?),
        (None, Some(_), Some(served)) => Some(served_preload(served, args.preload)?),
        _ => None,
    };

    let split = Split::of(&args, data_dir.is_some());
    let mut server_args = args.server_arg.clone();
    if let Some(n) = split.server {
        server_args.push(format!("--worker-threads={n}"));
    }
    // One worker: the current-thread scheduler, as in the server (its
    // `service_runtime`).
    let rt = if split.client == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(split.client)
            .enable_all()
            .build()?
    };
    let result = rt.block_on(async {
        let server = match &data_dir {
            Some(d) => {
                let bin = ServerProc::server_bin(args.server_bin.as_deref())?;
                let s = ServerProc::spawn(
                    &bin,
                    d,
                    args.store.as_deref(),
                    args.cache_capacity_mb,
                    args.hot_hits,
                    &server_args,
                )
                .await?;
                eprintln!(
                    "# server {} pid {} on {} started in {:.3} s (data dir {}, {:.0} MiB on disk)",
                    bin.display(),
                    s.child.id(),
                    s.addr,
                    s.startup.as_secs_f64(),
                    d.display(),
                    dir_size(d) as f64 / (1 << 20) as f64,
                );
                eprintln!(
                    "# worker threads: server {}, load generator {}",
                    split
                        .server
                        .map_or("one per core".to_string(), |n| n.to_string()),
                    split.client,
                );
                Some(s)
            }
            None => None,
        };
        let addr = server
            .as_ref()
            .map(|s| s.addr.clone())
            .or(args.addr.clone())
            .expect("an address");
        let max_c = args.concurrency.iter().copied().max().unwrap_or(1);
        let channels = connect(&addr, args.connections.unwrap_or(max_c.min(4)).max(1)).await?;
        let gen = match direct_gen {
            Some(g) => g,
            None => preload_rpc(&channels, args.preload).await?,
        };
        let salt = Rng(args.seed ^ std::process::id() as u64 ^ now_nanos()).next() | 1;
        let ctx = Ctx {
            channels,
            full_replies: args.full_replies,
            gen: Arc::new(gen),
            preloaded: args.preload,
            working_set: args.working_set,
            salt,
            next_put: Arc::new(AtomicU64::new(0)),
            server_pid: server.as_ref().map(|s| s.child.id()).or(args.server_pid),
            seed: args.seed,
        };
        let limit = match args.count {
            Some(count) => Limit::Count {
                warmup: (count / 10).min(1000),
                count,
            },
            None => Limit::Duration {
                warmup: Duration::from_secs_f64(args.warmup),
                measure: Duration::from_secs_f64(args.duration),
            },
        };
        if let Some(pid) = ctx.server_pid {
            if let Some((rss, peak)) = rss_mib(pid) {
                eprintln!("# server rss before load {rss:.0} MiB (peak {peak:.0})");
            }
        }
        let mut results = Vec::new();
        for round in 0..args.rounds.max(1) {
            if args.rounds > 1 {
                println!("round {}/{}", round + 1, args.rounds);
            }
            for &c in &args.concurrency {
                for &w in &workloads {
                    let mut r = run_workload(&ctx, w, c.max(1), limit).await?;
                    r.round = round;
                    r.print(args.preload, args.json && args.rounds == 1);
                    results.push(r);
                }
            }
        }
        if args.rounds > 1 {
            println!("merged over {} rounds:", args.rounds);
            for r in merge_rounds(&results)? {
                r.print(args.preload, args.json);
            }
        }
        print_ratios(&results);
        // The connections close, and the server's graceful stop waits for
        // them, while this runtime (one thread, with one client worker) runs.
        drop(ctx);
        if let Some(s) = server {
            let stopped = tokio::task::spawn_blocking(move || s.stop()).await??;
            println!(
                "server stopped in {:.2} s (SIGTERM to exit)",
                stopped.as_secs_f64()
            );
        }
        anyhow::Ok(())
    });
    if temp {
        if let Some(d) = &data_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
    result
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn dir_size(d: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(d) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The results of all rounds of each (workload, concurrency), merged.
fn merge_rounds(results: &[Result1]) -> anyhow::Result<Vec<Result1>> {
    let mut merged: BTreeMap<(usize, Workload), Result1> = BTreeMap::new();
    for r in results {
        let m = merged
            .entry((r.concurrency, r.workload))
            .or_insert_with(|| Result1 {
                round: r.round,
                workload: r.workload,
                concurrency: r.concurrency,
                secs: 0.0,
                counts: Counts::default(),
                hist: histogram(),
                run_hist: histogram(),
                server_rss: None,
                server_cores: Some(0.0),
                bench_cores: Some(0.0),
                server_writes: Some(0),
                first_error: None,
            });
        // Cores are averaged over time: weight each round by its length.
        let weigh = |acc: Option<f64>, x: Option<f64>| Some(acc? + x? * r.secs);
        m.server_cores = weigh(m.server_cores, r.server_cores);
        m.bench_cores = weigh(m.bench_cores, r.bench_cores);
        m.server_writes = m.server_writes.zip(r.server_writes).map(|(a, b)| a + b);
        m.round = m.round.max(r.round);
        m.secs += r.secs;
        m.counts.ops += r.counts.ops;
        m.counts.tasks += r.counts.tasks;
        m.counts.hits += r.counts.hits;
        m.counts.misses += r.counts.misses;
        m.counts.errors += r.counts.errors;
        m.hist.add(&r.hist)?;
        m.run_hist.add(&r.run_hist)?;
        m.server_rss = r.server_rss.or(m.server_rss);
        if m.first_error.is_none() {
            m.first_error = r.first_error.clone();
        }
    }
    Ok(merged
        .into_values()
        .map(|mut m| {
            m.server_cores = m.server_cores.map(|c| c / m.secs);
            m.bench_cores = m.bench_cores.map(|c| c / m.secs);
            m
        })
        .collect())
}

/// Each workload's throughput as a share of the floor's at the same
/// concurrency in the same round; with several rounds, the median and range.
fn print_ratios(results: &[Result1]) {
    let floors: BTreeMap<(usize, usize), f64> = results
        .iter()
        .filter(|r| r.workload == Workload::Floor)
        .map(|r| ((r.round, r.concurrency), r.throughput()))
        .collect();
    let mut ratios: BTreeMap<(usize, Workload), Vec<f64>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.workload != Workload::Floor) {
        if let Some(f) = floors.get(&(r.round, r.concurrency)) {
            ratios
                .entry((r.concurrency, r.workload))
                .or_default()
                .push(r.throughput() / f);
        }
    }
    if ratios.is_empty() {
        return;
    }
    println!("throughput as a share of the floor (same round, same concurrency):");
    for ((c, w), mut xs) in ratios {
        xs.sort_by(f64::total_cmp);
        let median = xs[xs.len() / 2];
        let range = if xs.len() > 1 {
            format!(
                " (rounds: {:.1}%..{:.1}%, n={})",
                100.0 * xs[0],
                100.0 * xs[xs.len() - 1],
                xs.len()
            )
        } else {
            String::new()
        };
        println!(
            "  {:<12} c={c:<3} {:5.1}% of floor{range}",
            w.name(),
            100.0 * median
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_spawned_server_and_the_load_generator_split_the_cores() {
        let split = |cores, server, client, spawns| {
            let s = Split::of_cores(cores, server, client, spawns);
            (s.server, s.client)
        };
        assert_eq!(split(2, None, None, true), (Some(1), 1));
        assert_eq!(split(8, None, None, true), (Some(4), 4));
        assert_eq!(split(1, None, None, true), (Some(1), 1), "never 0 threads");
        assert_eq!(split(3, None, None, true), (Some(1), 2));
        // 0: the server's own default (a worker per core), the client every core.
        assert_eq!(split(2, Some(0), None, true), (None, 2));
        assert_eq!(split(2, Some(0), Some(2), true), (None, 2));
        assert_eq!(split(4, Some(3), None, true), (Some(3), 1));
        assert_eq!(split(4, None, Some(0), true), (Some(2), 1));
        // A server at --addr is not ours to size.
        assert_eq!(split(4, Some(1), None, false), (None, 4));
    }

    #[test]
    fn storage_writes_count_what_a_process_writes_to_files() {
        let before = storage_writes("self").expect("/proc/self/io");
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
        let after = storage_writes("self").unwrap();
        assert!(after >= before + (1 << 20), "{before} -> {after}");
        assert_eq!(storage_writes("0"), None, "no such process");
    }
}
