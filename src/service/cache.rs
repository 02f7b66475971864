//! CacheService.

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};

use super::Shared;
use crate::error::{Error, Result};
use crate::key::{self, CacheKey};
use crate::policy::{self, Decision};
use crate::proto::cache_service_server::CacheService;
use crate::proto::get_cached_execution_request::Target;
use crate::proto::invalidate_cache_request::Selector as ProtoSelector;
use crate::proto::{
    ArtifactList, ComputeCacheKeyRequest, ComputeCacheKeyResponse, ExecutionState,
    ExplainCacheMissRequest, ExplainCacheMissResponse, GarbageCollectCacheRequest,
    GarbageCollectCacheResponse, GetCacheStatsRequest, GetCacheStatsResponse,
    GetCachedExecutionRequest, GetCachedExecutionResponse, InvalidateCacheRequest,
    InvalidateCacheResponse, Outcome,
};
use crate::store::maintenance::Selector;
use crate::store::{ExecutionFilter, Lookup};
use crate::validate;

pub struct Cache {
    pub shared: Shared,
}

#[tonic::async_trait]
impl CacheService for Cache {
    async fn compute_cache_key(
        &self,
        request: Request<ComputeCacheKeyRequest>,
    ) -> Result<Response<ComputeCacheKeyResponse>, Status> {
        let ti = request
            .into_inner()
            .interface
            .ok_or_else(|| Error::invalid("interface is required"))?;
        let key = validate::interface(&ti, "interface", &self.shared.limits)?;
        let canonical_fields = key::readable_fields(&ti)?
            .into_iter()
            .map(|(path, value)| format!("{path}={value}"))
            .collect();
        Ok(Response::new(ComputeCacheKeyResponse {
            cache_key: key.to_string(),
            canonical_fields,
        }))
    }

    async fn get_cached_execution(
        &self,
        request: Request<GetCachedExecutionRequest>,
    ) -> Result<Response<GetCachedExecutionResponse>, Status> {
        let req = request.into_inner();
        let ns = validate::namespace(&req.namespace)?;
        let key: CacheKey = match &req.target {
            Some(Target::Interface(ti)) => {
                validate::interface(ti, "interface", &self.shared.limits)?
            }
            Some(Target::CacheKey(k)) => validate::cache_key_hex(k, "cache_key")?,
            None => return Err(Error::invalid("one of interface or cache_key is required").into()),
        };
        let decision = policy::decide(req.policy.as_ref())?;
        let max_staleness = policy::duration_ms(
            req.policy.as_ref().and_then(|p| p.max_staleness.as_ref()),
            "policy.max_staleness",
        )?;
        let mut resp = GetCachedExecutionResponse {
            cache_key: key.to_string(),
            ..Default::default()
        };
        if let Decision::Disabled(reason) = decision {
            self.shared.stats.record(&ns, Outcome::Disabled);
            resp.outcome = Outcome::Disabled as i32;
            resp.reason = reason;
            return Ok(Response::new(resp));
        }
        let stats_ns = ns.clone();
        let record = req.record_cached_execution;
        let (lookup, cached) = self
            .shared
            .blocking(move |store| {
                let lookup = store.lookup(&ns, &key, max_staleness)?;
                let cached = match (&lookup, record) {
                    (Lookup::Hit { execution, outputs }, true) => {
                        Some(store.record_cached(execution, outputs)?)
                    }
                    _ => None,
                };
                Ok((lookup, cached))
            })
            .await?;
        match lookup {
            Lookup::Hit { execution, outputs } => {
                resp.outcome = Outcome::Hit as i32;
                resp.execution = Some(*execution);
                resp.output_artifacts = artifact_lists(outputs);
                resp.cached_execution = cached;
            }
            Lookup::Miss { reason } => {
                resp.outcome = Outcome::Miss as i32;
                resp.reason = reason;
            }
        }
        self.shared.stats.record(
            &stats_ns,
            Outcome::try_from(resp.outcome).unwrap_or_default(),
        );
        Ok(Response::new(resp))
    }

    async fn invalidate_cache(
        &self,
        request: Request<InvalidateCacheRequest>,
    ) -> Result<Response<InvalidateCacheResponse>, Status> {
        let req = request.into_inner();
        let ns = validate::namespace(&req.namespace)?;
        let selector = match req.selector {
            Some(ProtoSelector::CacheKey(k)) => {
                Selector::Key(validate::cache_key_hex(&k, "cache_key")?)
            }
            Some(ProtoSelector::ExecutionId(id)) => {
                Selector::Execution(validate::positive_id(id, "execution_id")?)
            }
            Some(ProtoSelector::ArtifactId(id)) => {
                Selector::Artifact(validate::positive_id(id, "artifact_id")?)
            }
            Some(ProtoSelector::Component(c)) if !c.is_empty() => Selector::Component(c),
            Some(ProtoSelector::Component(_)) => {
                return Err(Error::invalid("component must not be empty").into())
            }
            None => {
                return Err(Error::invalid(
                    "one of cache_key, execution_id, artifact_id or component is required",
                )
                .into())
            }
        };
        let invalidated = self
            .shared
            .blocking(move |s| s.invalidate(&ns, &selector))
            .await?;
        Ok(Response::new(InvalidateCacheResponse { invalidated }))
    }

    async fn explain_cache_miss(
        &self,
        request: Request<ExplainCacheMissRequest>,
    ) -> Result<Response<ExplainCacheMissResponse>, Status> {
        let req = request.into_inner();
        let ns = validate::namespace(&req.namespace)?;
        let ti = req
            .interface
            .ok_or_else(|| Error::invalid("interface is required"))?;
        let key = validate::interface(&ti, "interface", &self.shared.limits)?;
        let filter = ExecutionFilter {
            namespace: ns,
            component: Some(ti.component.clone()),
            ..Default::default()
        };
        // The newest executions of the component; CACHED ones repeat their originals.
        let recent = self
            .shared
            .blocking(move |s| s.list_executions(&filter, EXPLAIN_WINDOW, None))
            .await?
            .items
            .into_iter()
            .filter(|e| e.state != ExecutionState::Cached as i32 && e.interface.is_some())
            .collect::<Vec<_>>();
        let found = key::nearest(&ti, recent.iter().filter_map(|e| e.interface.as_ref()))?;
        let (nearest, differences) = match found {
            Some((i, d)) => (recent.into_iter().nth(i), d),
            None => (None, Vec::new()),
        };
        Ok(Response::new(ExplainCacheMissResponse {
            cache_key: key.to_string(),
            nearest,
            differences,
        }))
    }

    async fn get_cache_stats(
        &self,
        request: Request<GetCacheStatsRequest>,
    ) -> Result<Response<GetCacheStatsResponse>, Status> {
        let ns = validate::namespace(&request.into_inner().namespace)?;
        let counts = self.shared.stats.get(&ns);
        let entries = self.shared.blocking(move |s| s.count_entries(&ns)).await?;
        Ok(Response::new(GetCacheStatsResponse {
            entries,
            hits: counts.hits,
            misses: counts.misses,
            disabled: counts.disabled,
            in_progress: 0,
        }))
    }

    async fn garbage_collect_cache(
        &self,
        request: Request<GarbageCollectCacheRequest>,
    ) -> Result<Response<GarbageCollectCacheResponse>, Status> {
        let req = request.into_inner();
        let ns = if req.all_namespaces {
            None
        } else {
            Some(validate::namespace(&req.namespace)?)
        };
        let removed = self
            .shared
            .blocking(move |s| s.collect_garbage(ns.as_deref()))
            .await?;
        Ok(Response::new(GarbageCollectCacheResponse { removed }))
    }
}

/// How many recent executions of a component ExplainCacheMiss compares.
const EXPLAIN_WINDOW: usize = 200;

pub fn artifact_lists(
    outputs: BTreeMap<String, Vec<crate::proto::Artifact>>,
) -> BTreeMap<String, ArtifactList> {
    outputs
        .into_iter()
        .map(|(name, artifacts)| (name, ArtifactList { artifacts }))
        .collect()
}
