//! One concurrent client: the operation of each workload, timed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use hdrhistogram::Histogram;
use stepcache::proto::cache_service_client::CacheServiceClient;
use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache::proto::{ArtifactIds, ArtifactList, GetCachedExecutionRequest, Outcome};
use stepcache_bench::Rng;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::args::Workload;
use crate::tasks::{text, Gen};

#[derive(Default)]
pub struct Counts {
    pub ops: u64,
    pub tasks: u64,
    pub hits: u64,
    pub misses: u64,
    pub errors: u64,
}

/// What every worker of a pipeline run shares: the seeds of finished runs.
#[derive(Default)]
pub struct PipelineState {
    pub seeds: Mutex<Vec<u64>>,
}

pub struct Worker {
    pub workload: Workload,
    pub gen: Arc<Gen>,
    pub preloaded: u64,
    pub working_set: u64,
    pub salt: u64,
    pub rng: Rng,
    pub health: HealthClient<Channel>,
    pub cache: CacheServiceClient<Channel>,
    /// The same channel, for lookups decoded as `HitReply`.
    pub lookups: tonic::client::Grpc<Channel>,
    pub full_replies: bool,
    pub meta: MetadataStoreServiceClient<Channel>,
    pub next_put: Arc<AtomicU64>,
    pub pipeline: Arc<PipelineState>,
    /// Latency of each operation (a pipeline: of each task), ns.
    pub hist: Histogram<u64>,
    /// Pipeline only: latency of each whole run, ns.
    pub run_hist: Histogram<u64>,
    pub counts: Counts,
}

/// GetCachedExecutionResponse as a driver reads a hit: the original
/// execution's ID (field 1 of `Execution`; its echoed interface is skipped on
/// the wire), the outputs whole.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HitReply {
    #[prost(int32, tag = "1")]
    pub outcome: i32,
    #[prost(message, optional, tag = "3")]
    pub execution: Option<ExecutionId>,
    #[prost(btree_map = "string, message", tag = "4")]
    pub output_artifacts: BTreeMap<String, ArtifactList>,
    #[prost(string, tag = "7")]
    pub reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecutionId {
    #[prost(int64, tag = "1")]
    pub id: i64,
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("valid bounds")
}

pub fn ns(d: Duration) -> u64 {
    d.as_nanos().clamp(1_000, 120_000_000_000) as u64
}

impl Worker {
    /// One operation; records its latencies when `record`.
    pub async fn op(&mut self, record: bool) -> anyhow::Result<()> {
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
    pub async fn lookup(&mut self, req: GetCachedExecutionRequest) -> anyhow::Result<HitReply> {
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
    pub async fn pipeline_run(&mut self, record: bool) -> anyhow::Result<()> {
        let earlier = {
            let seeds = self.pipeline.seeds.lock().expect("not poisoned");
            (!seeds.is_empty() && self.rng.chance(0.9))
                .then(|| seeds[self.rng.below(seeds.len() as u64) as usize])
        };
        let seed = earlier.unwrap_or_else(|| self.rng.next_u64());
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
    pub async fn task(
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
