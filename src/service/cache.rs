//! CacheService.

use std::collections::BTreeMap;

use prost::bytes::Bytes;
use prost::Message;
use tonic::{Request, Response, Status};

use tokio::time::{Duration, Instant};

use super::{Shared, Work};
use crate::auth::Caller;
use crate::backend::Backend;
use crate::clock::timestamp;
use crate::domain::{Claimed, ExecutionFilter, Hit, Lookup, Selector};
use crate::error::{Error, Result};
use crate::key::{self, CacheKey};
use crate::policy::{self, Decision};
use crate::proto::cache_service_server::CacheService;
use crate::proto::get_cached_execution_request::Target;
use crate::proto::invalidate_cache_request::Selector as ProtoSelector;
use crate::proto::{
    ArtifactList, ComputeCacheKeyRequest, ComputeCacheKeyResponse, Execution, ExecutionState,
    ExplainCacheMissRequest, ExplainCacheMissResponse, ExtendReservationRequest,
    ExtendReservationResponse, GarbageCollectCacheRequest, GarbageCollectCacheResponse,
    GetCacheStatsRequest, GetCacheStatsResponse, GetCachedExecutionRequest,
    GetCachedExecutionResponse, InvalidateCacheRequest, InvalidateCacheResponse, Outcome,
    ReleaseReservationRequest, ReleaseReservationResponse, Reservation, TaskInterface,
    WaitForCachedExecutionRequest, WaitForCachedExecutionResponse,
};
use crate::reservations::{self, Holder, Step, Waited};
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
        let mut req = request.into_inner();
        let ns = caller.namespace(&req.namespace)?;
        let record = req.record_cached_execution;
        // The key from the interface's bytes, when they allow it and nothing
        // else needs the interface decoded (recording reads its inputs).
        let fast = if record || req.interface_bytes.is_empty() {
            None
        } else {
            validate::interface_bytes(&req.interface_bytes, &self.shared.limits)
        };
        let key: CacheKey = match fast {
            Some(key) => key,
            None => {
                req.decode_interface()
                    .map_err(|e| Error::invalid(format!("interface: {e}")))?;
                match &req.target {
                    Some(Target::Interface(ti)) => {
                        validate::interface(ti, "interface", &self.shared.limits)?
                    }
                    Some(Target::CacheKey(k)) => validate::cache_key_hex(k, "cache_key")?,
                    None => {
                        return Err(
                            Error::invalid("one of interface or cache_key is required").into()
                        )
                    }
                }
            }
        };
        let decision = policy::decide(req.policy.as_ref())?;
        let max_staleness = policy::duration_ms(
            req.policy.as_ref().and_then(|p| p.max_staleness.as_ref()),
            "policy.max_staleness",
        )?;
        let ask = req
            .reservation
            .as_ref()
            .map(|r| reservations::ask(r, "reservation"))
            .transpose()?;
        if let Decision::Disabled(reason) = decision {
            self.shared.stats.record(&ns, Outcome::Disabled);
            // DISABLED never reserves.
            return Ok(Response::new(GetCachedExecutionResponse {
                outcome: Outcome::Disabled as i32,
                cache_key: key.to_string(),
                reason,
                ..Default::default()
            }));
        }
        let stats_ns = ns.clone();
        let context_ids = validate::ids(&req.context_ids, "context_ids", &self.shared.limits)?;
        // The CACHED execution consumed what the looking-up task names as its
        // inputs (with ignore_inputs, they may differ from the original's).
        let inputs: Option<BTreeMap<String, Vec<i64>>> = match &req.target {
            Some(Target::Interface(ti)) if record => Some(
                ti.input_artifacts
                    .iter()
                    .map(|(k, v)| (k.clone(), v.ids.clone()))
                    .collect(),
            ),
            _ => None,
        };
        // What names the inputs, checked to exist when the lookup does not hit.
        let (target, encoded) = (req.target.take(), std::mem::take(&mut req.interface_bytes));
        // A hit served from memory needs no thread (unless it records); a
        // lookup that neither records nor reserves only reads.
        let hot = (self.shared.store.hits()).and_then(|h| h.lookup_hot(&ns, &key, max_staleness));
        let work = match (hot.is_some(), record || ask.is_some()) {
            (_, true) => Work::Write,
            (true, false) => Work::Inline,
            (false, false) => Work::Read,
        };
        let (claimed, cached) = self
            .shared
            .run(work, move |store| {
                if record {
                    // Fail before the lookup, not after it.
                    for (i, id) in context_ids.iter().enumerate() {
                        store.context(*id, Some(&ns)).map_err(|e| match e {
                            Error::NotFound(m) => Error::NotFound(format!("context_ids[{i}]: {m}")),
                            other => other,
                        })?;
                    }
                }
                // A hit's inputs existed when it was put; any other answer
                // first checks that they exist (before a reservation is taken).
                let claimed = match (hot, &ask) {
                    (Some(Lookup::Hit(hit)), _) => Claimed::Hit(hit),
                    (_, None) => match store.lookup(&ns, &key, max_staleness)? {
                        Lookup::Hit(hit) => Claimed::Hit(hit),
                        miss => {
                            inputs_exist(store, &ns, &target, &encoded)?;
                            miss.into()
                        }
                    },
                    (_, Some(ask)) => {
                        inputs_exist(store, &ns, &target, &encoded)?;
                        store.lookup_or_claim(&ns, &key, max_staleness, Some(ask))?
                    }
                };
                let (claimed, cached) = match (claimed, record) {
                    (Claimed::Hit(hit), true) => {
                        let (execution, outputs) = hit.decoded()?;
                        let inputs = inputs.unwrap_or_else(|| {
                            execution
                                .interface
                                .iter()
                                .flat_map(|ti| ti.input_artifacts.iter())
                                .map(|(k, v)| (k.clone(), v.ids.clone()))
                                .collect()
                        });
                        let cached =
                            store.record_cached(&execution, &outputs, &inputs, &context_ids)?;
                        let execution = Box::new(execution);
                        (
                            Claimed::Hit(Hit::Decoded { execution, outputs }),
                            Some(cached),
                        )
                    }
                    (claimed, _) => (claimed, None),
                };
                Ok((claimed, cached))
            })
            .await?;
        let resp = respond(&key, claimed, cached);
        self.shared.stats.record(
            &stats_ns,
            Outcome::try_from(resp.outcome).unwrap_or_default(),
        );
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
            Waited::Done(claimed) => respond(&key, claimed, None),
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

fn reservation(h: &Holder) -> Reservation {
    Reservation {
        owner: h.owner.clone(),
        expire_time: Some(timestamp(h.expire_ms)),
    }
}

/// The answer to a lookup (GetCachedExecution and WaitForCachedExecution).
fn respond(
    key: &CacheKey,
    claimed: Claimed,
    cached: Option<Execution>,
) -> GetCachedExecutionResponse {
    let mut resp = GetCachedExecutionResponse {
        cache_key: key.to_string(),
        ..Default::default()
    };
    match claimed {
        Claimed::Hit(hit) => {
            resp.outcome = Outcome::Hit as i32;
            match hit {
                Hit::Decoded { execution, outputs } => {
                    resp.execution = Some(*execution);
                    resp.output_artifacts = artifact_lists(outputs);
                }
                Hit::Encoded(fields) => resp.encoded_hit = fields,
            }
            resp.cached_execution = cached;
        }
        Claimed::Miss { reason } => {
            resp.outcome = Outcome::Miss as i32;
            resp.reason = reason;
        }
        Claimed::Granted { holder, reason } => {
            resp.outcome = Outcome::Reserved as i32;
            resp.reason = format!("{reason}; reserved for {:?}", holder.owner);
            resp.reservation = Some(reservation(&holder));
        }
        Claimed::Held { holder, reason } => {
            resp.outcome = Outcome::InProgress as i32;
            resp.reason = format!("{reason}; an identical task runs under {:?}", holder.owner);
            resp.reservation = Some(reservation(&holder));
        }
    }
    resp
}

pub fn artifact_lists(
    outputs: BTreeMap<String, Vec<crate::proto::Artifact>>,
) -> BTreeMap<String, ArtifactList> {
    outputs
        .into_iter()
        .map(|(name, artifacts)| (name, ArtifactList { artifacts }))
        .collect()
}

/// How many recent executions of a component ExplainCacheMiss compares.
const EXPLAIN_WINDOW: usize = 200;

/// NOT_FOUND when a lookup's interface (decoded, or still `encoded`) names an
/// input artifact that does not exist in `ns`.
fn inputs_exist(
    store: &dyn Backend,
    ns: &str,
    target: &Option<Target>,
    encoded: &Bytes,
) -> Result<()> {
    let decoded;
    let ti = match target {
        Some(Target::Interface(ti)) => ti,
        Some(Target::CacheKey(_)) => return Ok(()),
        None if encoded.is_empty() => return Ok(()),
        None => {
            decoded = TaskInterface::decode(encoded.clone())
                .map_err(|e| Error::invalid(format!("interface: {e}")))?;
            &decoded
        }
    };
    for (name, ids) in &ti.input_artifacts {
        for id in &ids.ids {
            store.artifact(*id, Some(ns)).map_err(|e| match e {
                Error::NotFound(m) => {
                    Error::NotFound(format!("interface.input_artifacts.{name}: {m}"))
                }
                other => other,
            })?;
        }
    }
    Ok(())
}
