//! One workload at one concurrency: workers started, warmed up, measured,
//! their counts and latencies merged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stepcache::proto::cache_service_client::CacheServiceClient;
use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache_bench::Rng;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use crate::args::Workload;
use crate::procfs::{rss_mib, Usage};
use crate::report::Result1;
use crate::tasks::Gen;
use crate::worker::{histogram, Counts, PipelineState, Worker};

/// How long (or how much) to run.
#[derive(Clone, Copy)]
pub enum Limit {
    Duration { warmup: Duration, measure: Duration },
    Count { warmup: u64, count: u64 },
}

pub struct Ctx {
    pub channels: Vec<Channel>,
    pub full_replies: bool,
    pub gen: Arc<Gen>,
    pub preloaded: u64,
    pub working_set: u64,
    pub salt: u64,
    pub next_put: Arc<AtomicU64>,
    pub server_pid: Option<u32>,
    /// The store is PostgreSQL: its CPU is measured too.
    pub postgres: bool,
    pub seed: u64,
}

pub async fn run_workload(
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
    let usage_now = || Usage::of(server_pid.as_deref(), ctx.postgres);
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
        postgres_cores: cores(usage0.postgres_cpu, usage1.postgres_cpu),
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
