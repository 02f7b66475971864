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

mod args;
mod preload;
mod procfs;
mod report;
mod run;
mod server;
mod tasks;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use stepcache_bench::Rng;
use tonic::transport::{Channel, Endpoint};

use args::{Args, Split, Workload};
use preload::{preload_direct, preload_rpc, served_preload};
use procfs::rss_mib;
use report::{merge_rounds, print_ratios};
use run::{run_workload, Ctx, Limit};
use server::ServerProc;

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
        let salt = Rng(args.seed ^ std::process::id() as u64 ^ now_nanos()).next_u64() | 1;
        let ctx = Ctx {
            channels,
            full_replies: args.full_replies,
            gen: Arc::new(gen),
            preloaded: args.preload,
            working_set: args.working_set,
            salt,
            next_put: Arc::new(AtomicU64::new(0)),
            server_pid: server.as_ref().map(|s| s.child.id()).or(args.server_pid),
            postgres: args.store.is_some(),
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
