//! GetCachedExecution as a decision: the request in domain values
//! (`Asked`, converted at the edge; DISABLED is settled there, by the policy
//! alone), the one function that settles HIT, MISS, RESERVED or IN_PROGRESS
//! on either backend (`decide`; each backend picks a key's newest servable
//! entry by `policy::eligibility`), and the reply (`respond`).

use std::collections::BTreeMap;

use prost::bytes::Bytes;
use prost::Message;

use super::Work;
use crate::backend::Backend;
use crate::clock::timestamp;
use crate::domain::{Claimed, Hit, Lookup};
use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::policy::{self, Decision};
use crate::proto::get_cached_execution_request::Target;
use crate::proto::{
    ArtifactList, Execution, GetCachedExecutionRequest, GetCachedExecutionResponse, Outcome,
    Reservation, TaskInterface,
};
use crate::reservations::{self, Ask, Holder};
use crate::validate::{self, Limits};

/// A GetCachedExecution request, checked, in domain values.
#[derive(Debug)]
pub enum Asked {
    /// The call's policy disables the cache: DISABLED, nothing read or reserved.
    Disabled {
        key: CacheKey,
        reason: String,
    },
    Lookup(Box<Query>),
}

/// A lookup to decide.
#[derive(Debug)]
pub struct Query {
    pub key: CacheKey,
    pub max_staleness_ms: Option<i64>,
    /// The reservation asked for on a miss.
    pub ask: Option<Ask>,
    /// Record a CACHED execution on a hit.
    pub record: bool,
    pub context_ids: Vec<i64>,
    /// What the CACHED execution consumed: the inputs the looking-up task
    /// names (with ignore_inputs they may differ from the original's); None:
    /// the original's.
    pub inputs: Option<BTreeMap<String, Vec<i64>>>,
    /// What names the inputs (decoded, or still `encoded`), checked to exist
    /// when the lookup does not hit.
    pub target: Option<Target>,
    pub encoded: Bytes,
}

impl TryFrom<(GetCachedExecutionRequest, &Limits)> for Asked {
    type Error = Error;

    fn try_from((mut req, limits): (GetCachedExecutionRequest, &Limits)) -> Result<Asked> {
        let record = req.record_cached_execution;
        // The key from the interface's bytes, when they allow it and nothing
        // else needs the interface decoded (recording reads its inputs).
        let fast = if record || req.interface_bytes.is_empty() {
            None
        } else {
            validate::interface_bytes(&req.interface_bytes, limits)
        };
        let key: CacheKey = match fast {
            Some(key) => key,
            None => {
                req.decode_interface()
                    .map_err(|e| Error::invalid(format!("interface: {e}")))?;
                match &req.target {
                    Some(Target::Interface(ti)) => validate::interface(ti, "interface", limits)?,
                    Some(Target::CacheKey(k)) => validate::cache_key_hex(k, "cache_key")?,
                    None => {
                        return Err(Error::invalid("one of interface or cache_key is required"))
                    }
                }
            }
        };
        let decision = policy::decide(req.policy.as_ref())?;
        let max_staleness_ms = policy::duration_ms(
            req.policy.as_ref().and_then(|p| p.max_staleness.as_ref()),
            "policy.max_staleness",
        )?;
        let ask = req
            .reservation
            .as_ref()
            .map(|r| reservations::ask(r, "reservation"))
            .transpose()?;
        if let Decision::Disabled(reason) = decision {
            return Ok(Asked::Disabled { key, reason });
        }
        let context_ids = validate::ids(&req.context_ids, "context_ids", limits)?;
        let inputs = match &req.target {
            Some(Target::Interface(ti)) if record => Some(
                ti.input_artifacts
                    .iter()
                    .map(|(k, v)| (k.clone(), v.ids.clone()))
                    .collect(),
            ),
            _ => None,
        };
        Ok(Asked::Lookup(Box::new(Query {
            key,
            max_staleness_ms,
            ask,
            record,
            context_ids,
            inputs,
            target: req.target.take(),
            encoded: std::mem::take(&mut req.interface_bytes),
        })))
    }
}

impl Query {
    /// Where `decide` runs: a hit served from memory (`hot`) needs no thread
    /// unless it records; a lookup that neither records nor reserves only reads.
    pub fn work(&self, hot: bool) -> Work {
        match (hot, self.record || self.ask.is_some()) {
            (_, true) => Work::Write,
            (true, false) => Work::Inline,
            (false, false) => Work::Read,
        }
    }
}

/// The answer to `q` in `ns` (`hot`: what the backend's hits tier had), and
/// the CACHED execution recorded on a hit when asked for.
pub fn decide(
    store: &dyn Backend,
    ns: &str,
    hot: Option<Lookup>,
    q: Query,
) -> Result<(Claimed, Option<Execution>)> {
    let key = &q.key;
    if q.record {
        // Fail before the lookup, not after it.
        for (i, id) in q.context_ids.iter().enumerate() {
            store.context(*id, Some(ns)).map_err(|e| match e {
                Error::NotFound(m) => Error::NotFound(format!("context_ids[{i}]: {m}")),
                other => other,
            })?;
        }
    }
    // A hit's inputs existed when it was put; any other answer first checks
    // that they exist (before a reservation is taken).
    let claimed = match (hot, &q.ask) {
        (Some(Lookup::Hit(hit)), _) => Claimed::Hit(hit),
        (_, None) => match store.lookup(ns, key, q.max_staleness_ms)? {
            Lookup::Hit(hit) => Claimed::Hit(hit),
            miss => {
                inputs_exist(store, ns, &q.target, &q.encoded)?;
                miss.into()
            }
        },
        (_, Some(ask)) => {
            inputs_exist(store, ns, &q.target, &q.encoded)?;
            store.lookup_or_claim(ns, key, q.max_staleness_ms, Some(ask))?
        }
    };
    match (claimed, q.record) {
        (Claimed::Hit(hit), true) => {
            let (execution, outputs) = hit.decoded()?;
            let inputs = q.inputs.unwrap_or_else(|| {
                execution
                    .interface
                    .iter()
                    .flat_map(|ti| ti.input_artifacts.iter())
                    .map(|(k, v)| (k.clone(), v.ids.clone()))
                    .collect()
            });
            let cached = store.record_cached(&execution, &outputs, &inputs, &q.context_ids)?;
            let execution = Box::new(execution);
            Ok((
                Claimed::Hit(Hit::Decoded { execution, outputs }),
                Some(cached),
            ))
        }
        (claimed, _) => Ok((claimed, None)),
    }
}

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

/// The reply to a DISABLED lookup.
pub fn disabled(key: &CacheKey, reason: String) -> GetCachedExecutionResponse {
    GetCachedExecutionResponse {
        outcome: Outcome::Disabled as i32,
        cache_key: key.to_string(),
        reason,
        ..Default::default()
    }
}

/// The answer to a lookup (GetCachedExecution and WaitForCachedExecution).
pub fn respond(
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

pub fn reservation(h: &Holder) -> Reservation {
    Reservation {
        owner: h.owner.clone(),
        expire_time: Some(timestamp(h.expire_ms)),
    }
}

pub fn artifact_lists(
    outputs: BTreeMap<String, Vec<crate::proto::Artifact>>,
) -> BTreeMap<String, ArtifactList> {
    outputs
        .into_iter()
        .map(|(name, artifacts)| (name, ArtifactList { artifacts }))
        .collect()
}
