//! The command line: workloads, targets, sizes, and how the cores are split
//! between the spawned server and the load generator.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::Serialize;
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Floor,
    LookupHit,
    LookupMiss,
    Put,
    Pipeline,
    /// floor, lookup-hit, lookup-miss, put, pipeline, then ratios to the floor.
    All,
}

impl Workload {
    pub fn name(self) -> &'static str {
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
    pub fn writes(self) -> bool {
        matches!(self, Workload::Put | Workload::Pipeline)
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "stepcache-bench",
    about = "Loopback load generator for stepcache: floor, lookup-hit, lookup-miss, put, pipeline"
)]
pub struct Args {
    /// Workloads to run back to back (all = every one, then ratios to the floor).
    #[arg(value_enum, required = true)]
    pub workloads: Vec<Workload>,
    /// Target a running server (http://host:port) instead of spawning one.
    #[arg(long)]
    pub addr: Option<String>,
    /// With --addr: the server's PID, to report its RSS and CPU.
    #[arg(long, requires = "addr")]
    pub server_pid: Option<u32>,
    /// The `stepcache` binary to spawn (default: next to this executable).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Data dir of the spawned server (default: a temporary dir, removed at exit).
    /// A dir holding an earlier preload is reused. With --addr: the dir the
    /// running server serves, holding a preload of at least --preload
    /// executions; only its record of the preload is read (nothing is written).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Serve from this PostgreSQL database (postgres://user@host/db, empty or
    /// holding an earlier preload) instead of sled: the preload writes into
    /// it directly and the spawned server gets `--store URL`.
    #[arg(long)]
    pub store: Option<String>,
    /// sled page cache of the spawned server, in MiB (the server's default).
    #[arg(long, default_value_t = 32)]
    pub cache_capacity_mb: u64,
    /// lookup-hit draws from the newest N preloaded executions (0 = all of
    /// them, uniformly): the working set a driver re-asks about.
    #[arg(long, default_value_t = 0)]
    pub working_set: u64,
    /// The spawned server's --hot-hits (in-memory hits; 0 = off).
    #[arg(long, default_value_t = 20_000)]
    pub hot_hits: usize,
    /// More arguments for the spawned `stepcache serve` (repeatable), e.g.
    /// `--server-arg=--read-threads=0`.
    #[arg(long, allow_hyphen_values = true)]
    pub server_arg: Vec<String>,
    /// The spawned server's --worker-threads (0: its default, one per core).
    /// Default: half the cores, at least 1, so that the server and the load
    /// generator each run on cores of their own instead of time-slicing each
    /// other's threads.
    #[arg(long)]
    pub server_workers: Option<usize>,
    /// Worker threads of the load generator. Default: the cores the spawned
    /// server's workers leave, at least 1; with --addr, one per core.
    #[arg(long)]
    pub client_workers: Option<usize>,
    /// Executions stored before measuring (lookup-hit draws from them).
    #[arg(long, default_value_t = 10_000)]
    pub preload: u64,
    /// Executions per preload transaction (direct path).
    #[arg(long, default_value_t = 500)]
    pub preload_batch: usize,
    /// Concurrent clients; a comma list runs every workload at each.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub concurrency: Vec<usize>,
    /// HTTP/2 connections the clients share (default: min(concurrency, 4)).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Measured seconds per workload.
    #[arg(long, default_value_t = 10.0, conflicts_with = "count")]
    pub duration: f64,
    /// Measured operations per workload instead of a duration.
    #[arg(long)]
    pub count: Option<u64>,
    /// Unmeasured warm-up seconds before each workload.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Repeat the whole sequence of workloads this many times, interleaved, and
    /// report merged figures and the median per-round ratio to the floor: on a
    /// shared, noisy machine this compares like with like.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Seed of the generated choices.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Also print one JSON line per result (for tables).
    #[arg(long)]
    pub json: bool,
    /// lookup-hit and lookup-miss decode the whole reply, the original
    /// execution's interface included. By default they decode what a driver
    /// uses from a hit (`HitReply`: outcome, execution ID, the output
    /// artifacts) and skip the interface the caller sent: the load generator
    /// shares the cores with the server.
    #[arg(long)]
    pub full_replies: bool,
}

/// How many tokio worker threads the spawned server and the load generator
/// get: on a shared machine, cores of their own.
pub struct Split {
    /// None: the server's default.
    pub server: Option<usize>,
    pub client: usize,
}

impl Split {
    pub fn of(args: &Args, spawns_server: bool) -> Split {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Split::of_cores(
            cores,
            args.server_workers,
            args.client_workers,
            spawns_server,
        )
    }

    pub fn of_cores(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
