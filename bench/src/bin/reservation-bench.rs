//! Reservation benchmark (not a test): starts stepcache in-process on
//! 127.0.0.1:0 with a fresh data dir and measures
//! (a) reservation churn: N clients each looping "reserve a fresh key ->
//!     PutExecution COMPLETE -> next" for a fixed time;
//! (b) wake-up latency: K waiters on one key, the holder publishes, over R rounds.
//!
//! `cargo run --release --bin reservation-bench -- --help`

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use prost_types::value::Kind;
use prost_types::Value;
use stepcache::proto::cache_service_client::CacheServiceClient;
use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache::proto::*;
use stepcache::server::{run, Config};
use tonic::transport::Channel;

#[derive(Parser)]
#[command(about = "Benchmarks reservation churn and waiter wake-up latency")]
struct Args {
    /// Concurrent clients in the churn phase.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Length of the churn phase, seconds.
    #[arg(long, default_value_t = 5)]
    churn_secs: u64,
    /// Waiters on the one key of each wake-up round.
    #[arg(long, default_value_t = 64)]
    waiters: usize,
    /// Wake-up rounds.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// gRPC connections the clients share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

fn interface(component: &str, n: u64) -> TaskInterface {
    TaskInterface {
        component: component.into(),
        container: Some(ContainerSpec {
            image: "python:3.11".into(),
            command: vec!["python".into(), "-m".into(), component.into()],
            ..Default::default()
        }),
        parameters: [(
            "n".to_string(),
            Value {
                kind: Some(Kind::NumberValue(n as f64)),
            },
        )]
        .into(),
        output_artifacts: [("out".to_string(), "system.Dataset".to_string())].into(),
        ..Default::default()
    }
}

fn reserve(ti: &TaskInterface, owner: &str) -> GetCachedExecutionRequest {
    GetCachedExecutionRequest {
        target: Some(get_cached_execution_request::Target::Interface(ti.clone())),
        reservation: Some(ReservationRequest {
            owner: owner.into(),
            lease: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
        }),
        ..Default::default()
    }
}

fn complete(ti: &TaskInterface, owner: &str) -> PutExecutionRequest {
    PutExecutionRequest {
        execution: Some(Execution {
            interface: Some(ti.clone()),
            state: ExecutionState::Complete as i32,
            ..Default::default()
        }),
        outputs: vec![OutputArtifact {
            name: "out".into(),
            artifact: Some(Artifact {
                uri: "mem://bench".into(),
                ..Default::default()
            }),
        }],
        reservation_owner: owner.into(),
        ..Default::default()
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(sorted: &[Duration]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
        ms(pct(sorted, 0.5)),
        ms(pct(sorted, 0.9)),
        ms(pct(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default()),
        sorted.len()
    )
}

async fn churn(channels: &[Channel], clients: usize, secs: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let ch = channels[c % channels.len()].clone();
            tokio::spawn(async move {
                let mut cache = CacheServiceClient::new(ch.clone());
                let mut meta = MetadataStoreServiceClient::new(ch);
                let owner = format!("client-{c}");
                let mut reserve_lat = Vec::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let ti = interface("churn", (c as u64) << 32 | n);
                    let t = Instant::now();
                    let r = cache.get_cached_execution(reserve(&ti, &owner)).await?;
                    reserve_lat.push(t.elapsed());
                    if r.get_ref().outcome != Outcome::Reserved as i32 {
                        bail!("fresh key not reserved: {:?}", r.get_ref());
                    }
                    let p = meta.put_execution(complete(&ti, &owner)).await?;
                    if !p.get_ref().reservation_released {
                        bail!("COMPLETE did not release");
                    }
                    n += 1;
                }
                anyhow::Ok((n, reserve_lat))
            })
        })
        .collect();
    let mut total = 0;
    let mut lat = Vec::new();
    for t in tasks {
        let (n, l) = t.await??;
        total += n;
        lat.extend(l);
    }
    let elapsed = start.elapsed();
    lat.sort();
    println!(
        "churn: {clients} clients, {total} reserve->complete cycles in {:.2} s = {:.0} reservations granted/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "churn: GetCachedExecution (granting) latency {}",
        summary(&lat)
    );
    Ok(())
}

async fn wakeups(channels: &[Channel], k: usize, rounds: usize) -> anyhow::Result<()> {
    let mut all = Vec::new();
    let mut from_send = Vec::new();
    let mut puts = Vec::new();
    let mut early = 0;
    for round in 0..rounds {
        let ti = interface("wake", round as u64);
        let mut cache = CacheServiceClient::new(channels[0].clone());
        let r = cache
            .get_cached_execution(reserve(&ti, "holder"))
            .await?
            .into_inner();
        if r.outcome != Outcome::Reserved as i32 {
            bail!("holder not reserved: {r:?}");
        }
        let waiters: Vec<_> = (0..k)
            .map(|i| {
                let mut cache = CacheServiceClient::new(channels[i % channels.len()].clone());
                let req = WaitForCachedExecutionRequest {
                    cache_key: r.cache_key.clone(),
                    timeout: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                    reservation: Some(ReservationRequest {
                        owner: format!("waiter-{i}"),
                        lease: None,
                    }),
                    ..Default::default()
                };
                tokio::spawn(async move {
                    let r = cache.wait_for_cached_execution(req).await?.into_inner();
                    anyhow::Ok((r.outcome, Instant::now()))
                })
            })
            .collect();
        // Let every waiter reach the server and go to sleep.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut meta = MetadataStoreServiceClient::new(channels[0].clone());
        let sent = Instant::now();
        meta.put_execution(complete(&ti, "holder")).await?;
        let replied = Instant::now();
        puts.push(replied - sent);
        for w in waiters {
            let (outcome, at) = w.await??;
            if outcome != Outcome::Hit as i32 {
                bail!("waiter got outcome {outcome}, not HIT");
            }
            if at < replied {
                early += 1;
            }
            all.push(at.saturating_duration_since(replied));
            from_send.push(at.saturating_duration_since(sent));
        }
    }
    all.sort();
    from_send.sort();
    puts.sort();
    println!(
        "wake-up: {k} waiters x {rounds} rounds; delay from the PutExecution reply to each waiter's HIT: {}",
        summary(&all)
    );
    println!(
        "wake-up: {early} of {} HITs arrived before the publisher saw its own reply (counted as 0)",
        all.len()
    );
    println!(
        "wake-up: delay from sending the PutExecution to each waiter's HIT (includes its flush): {}",
        summary(&from_send)
    );
    println!(
        "wake-up: PutExecution (publish + release + flush) latency {}",
        summary(&puts)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.waiters == 0 || args.rounds == 0 || args.connections == 0 {
        bail!("--clients, --waiters, --rounds and --connections must be at least 1");
    }
    let data_dir = std::env::temp_dir().join(format!(
        "stepcache-reservation-bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, Config::new(&data_dir), async {
        let _ = stopped.await;
    }));
    let mut channels = Vec::new();
    for _ in 0..args.connections {
        let mut tries = 0;
        let ch = loop {
            match Channel::from_shared(addr.clone())?.connect().await {
                Ok(ch) => break ch,
                Err(e) if tries > 200 => return Err(e).context("connecting to the server"),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        channels.push(ch);
    }
    println!(
        "reservation-bench: data dir {}, {} cpus, {} connections",
        data_dir.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.connections
    );
    let result = async {
        churn(&channels, args.clients, args.churn_secs).await?;
        wakeups(&channels, args.waiters, args.rounds).await
    }
    .await;
    drop(channels);
    let _ = stop.send(());
    server.await??;
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}
