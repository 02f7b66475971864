//! The preload: executions stored before measuring, written straight into
//! the store (no server running) or over RPC (`--addr`), and recorded in a
//! marker file so that a later run reuses them.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use stepcache::backend::Backend;
use stepcache::clock::SystemClock;
use stepcache::domain::ExecutionFilter;
use stepcache::pg::PgStore;
use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache::proto::PutArtifactsRequest;
use stepcache::store::{Store, StoreConfig};
use stepcache::validate::{self, Limits};
use tonic::transport::Channel;

use crate::tasks::{Gen, NAMESPACE};

pub const MARKER: &str = "stepcache-bench.json";
/// Bump when the generated interfaces change: a preload of another version is
/// not reused.
const GENERATOR_VERSION: u32 = 1;

/// What the preload left in the data dir, so that runs can reuse it.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Marker {
    pub generator: u32,
    pub executions: u64,
    pub inputs: Vec<i64>,
}

pub fn read_marker(dir: &Path) -> Option<Marker> {
    let m: Marker = serde_json::from_slice(&std::fs::read(dir.join(MARKER)).ok()?).ok()?;
    (m.generator == GENERATOR_VERSION).then_some(m)
}

/// The generator of the preload of at least `n` executions in `dir`, which a
/// running server serves: nothing is written.
pub fn served_preload(dir: &Path, n: u64) -> anyhow::Result<Gen> {
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
pub fn preload_direct(dir: &Path, url: Option<&str>, n: u64, batch: usize) -> anyhow::Result<Gen> {
    std::fs::create_dir_all(dir)?;
    let store: Arc<dyn Backend> = match url {
        Some(url) => Arc::new(PgStore::open(url, Arc::new(SystemClock), 0)?),
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
pub async fn preload_rpc(channels: &[Channel], n: u64) -> anyhow::Result<Gen> {
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
