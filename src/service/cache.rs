//! CacheService.

use tonic::{Request, Response, Status};

use tokio::time::{Duration, Instant};

use super::lookup::{self, reservation, Asked};
use super::{Shared, Work};
use crate::auth::Caller;
use crate::domain::{Claimed, ExecutionFilter, Selector};
use crate::error::{Error, Result};
use crate::key;
use crate::proto::cache_service_server::CacheService;
use crate::proto::invalidate_cache_request::Selector as ProtoSelector;
use crate::proto::{
    ComputeCacheKeyRequest, ComputeCacheKeyResponse, ExecutionState, ExplainCacheMissRequest,
    ExplainCacheMissResponse, ExtendReservationRequest, ExtendReservationResponse,
    GarbageCollectCacheRequest, GarbageCollectCacheResponse, GetCacheStatsRequest,
    GetCacheStatsResponse, GetCachedExecutionRequest, GetCachedExecutionResponse,
    InvalidateCacheRequest, InvalidateCacheResponse, Outcome, ReleaseReservationRequest,
    ReleaseReservationResponse, WaitForCachedExecutionRequest, WaitForCachedExecutionResponse,
};
use crate::reservations::{self, Step, Waited};
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
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ns = caller.namespace(&req.namespace)?;
        let q = match Asked::try_from((req, &*self.shared.limits))? {
            Asked::Disabled { key, reason } => {
                self.shared.stats.record(&ns, Outcome::Disabled);
                return Ok(Response::new(lookup::disabled(&key, reason)));
            }
            Asked::Lookup(q) => *q,
        };
        let (key, stats_ns) = (q.key, ns.clone());
        let hits = self.shared.store.hits();
        let hot = hits.and_then(|h| h.lookup_hot(&ns, &key, q.max_staleness_ms));
        let work = q.work(hot.is_some());
        let (claimed, cached) = self
            .shared
            .run(work, move |store| lookup::decide(store, &ns, hot, q))
            .await?;
        let resp = lookup::respond(&key, claimed, cached);
        let outcome = Outcome::try_from(resp.outcome).unwrap_or_default();
        self.shared.stats.record(&stats_ns, outcome);
        Ok(Response::new(resp))
    }

    async fn wait_for_cached_execution(
        &self,
        request: Request<WaitForCachedExecutionRequest>,
    ) -> Result<Response<WaitForCachedExecutionResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ns = caller.namespace(&req.namespace)?;
        let key = validate::cache_key_hex(&req.cache_key, "cache_key")?;
        let timeout_ms = reservations::bounded_ms(
            req.timeout.as_ref(),
            reservations::DEFAULT_WAIT_MS,
            "timeout",
        )?;
        let ask = req
            .reservation
            .as_ref()
            .map(|r| reservations::ask(r, "reservation"))
            .transpose()?;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms.unsigned_abs());
        let mut sub = self.shared.waiters.subscribe(&ns, &key);
        let mut shutdown = self.shared.shutdown.clone();
        let store = self.shared.store.clone();
        let waited = reservations::wait(
            &mut sub,
            deadline,
            || store.now_ms(),
            &mut shutdown,
            || {
                let (shared, ns, ask) = (self.shared.clone(), ns.clone(), ask.clone());
                async move {
                    let work = if ask.is_some() {
                        Work::Write
                    } else {
                        Work::Read
                    };
                    let claimed = shared
                        .run(work, move |s| {
                            s.lookup_or_claim(&ns, &key, None, ask.as_ref())
                        })
                        .await?;
                    Ok(match claimed {
                        Claimed::Held { holder, .. } => Step::Held(holder),
                        other => Step::Done(other),
                    })
                }
            },
        )
        .await?;
        drop(sub);
        let resp = match waited {
            Waited::Done(claimed) => lookup::respond(&key, claimed, None),
            Waited::TimedOut(holder) => GetCachedExecutionResponse {
                outcome: Outcome::InProgress as i32,
                cache_key: key.to_string(),
                reason: format!(
                    "still reserved by {:?} after waiting {timeout_ms} ms",
                    holder.owner
                ),
                reservation: Some(reservation(&holder)),
                ..Default::default()
            },
            Waited::ShuttingDown(_) => {
                return Err(Error::Unavailable(
                    "the server is shutting down: call WaitForCachedExecution again once it \
                     is back (reservations are kept)"
                        .into(),
                )
                .into())
            }
        };
        Ok(Response::new(resp.into()))
    }

    async fn extend_reservation(
        &self,
        request: Request<ExtendReservationRequest>,
    ) -> Result<Response<ExtendReservationResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ns = caller.namespace(&req.namespace)?;
        let key = validate::cache_key_hex(&req.cache_key, "cache_key")?;
        let owner = reservations::owner(&req.owner, "owner")?;
        let lease_ms =
            reservations::bounded_ms(req.lease.as_ref(), reservations::DEFAULT_LEASE_MS, "lease")?;
        let holder = self
            .shared
            .write(move |s| s.extend_reservation(&ns, &key, &owner, lease_ms))
            .await?;
        Ok(Response::new(ExtendReservationResponse {
            reservation: Some(reservation(&holder)),
        }))
    }

    async fn release_reservation(
        &self,
        request: Request<ReleaseReservationRequest>,
    ) -> Result<Response<ReleaseReservationResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ns = caller.namespace(&req.namespace)?;
        let key = validate::cache_key_hex(&req.cache_key, "cache_key")?;
        let owner = reservations::owner(&req.owner, "owner")?;
        let ns2 = ns.clone();
        self.shared
            .write(move |s| s.release_reservation(&ns2, &key, &owner))
            .await?;
        self.shared.waiters.notify(&ns, &key);
        Ok(Response::new(ReleaseReservationResponse {}))
    }

    async fn invalidate_cache(
        &self,
        request: Request<InvalidateCacheRequest>,
    ) -> Result<Response<InvalidateCacheResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ns = caller.namespace(&req.namespace)?;
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
            .write(move |s| s.invalidate(&ns, &selector))
            .await?;
        Ok(Response::new(InvalidateCacheResponse { invalidated }))
    }

    async fn explain_cache_miss(
        &self,
        request: Request<ExplainCacheMissRequest>,
    ) -> Result<Response<ExplainCacheMissResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ns = caller.namespace(&req.namespace)?;
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
            .read(move |s| s.list_executions(&filter, EXPLAIN_WINDOW, None))
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
        let ns = Caller::of(&request).namespace(&request.into_inner().namespace)?;
        let counts = self.shared.stats.get(&ns);
        let (entries, in_progress) = self
            .shared
            .read(move |s| Ok((s.count_entries(&ns)?, s.count_reservations(&ns)?)))
            .await?;
        Ok(Response::new(GetCacheStatsResponse {
            entries,
            hits: counts.hits,
            misses: counts.misses,
            disabled: counts.disabled,
            in_progress,
        }))
    }

    async fn garbage_collect_cache(
        &self,
        request: Request<GarbageCollectCacheRequest>,
    ) -> Result<Response<GarbageCollectCacheResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ns = if req.all_namespaces {
            caller.allow_all()?;
            None
        } else {
            Some(caller.namespace(&req.namespace)?)
        };
        let removed = self
            .shared
            .write(move |s| s.collect_garbage(ns.as_deref()))
            .await?;
        Ok(Response::new(GarbageCollectCacheResponse { removed }))
    }
}

/// How many recent executions of a component ExplainCacheMiss compares.
const EXPLAIN_WINDOW: usize = 200;
