//! Rules of the storage layer that do not depend on how records are stored:
//! both backends apply them, so they answer alike.

use prost::Message;

use crate::clock::{timestamp, timestamp_ms};
use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::proto::{Artifact, ArtifactState, Execution, ExecutionState};

use super::ExecutionWrite;

/// A stored record, decoded (a damaged one is a storage fault).
pub fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M> {
    Ok(M::decode(bytes)?)
}

/// NOT_FOUND naming the record (and the namespace it was looked for in).
pub fn not_found(kind: &str, id: i64, ns: Option<&str>) -> Error {
    match ns {
        Some(ns) => Error::not_found(format!("{kind} {id} does not exist in namespace {ns:?}")),
        None => Error::not_found(format!("{kind} {id} does not exist")),
    }
}

/// The digest of a record's content, for external_id idempotency.
pub fn content_digest<M: Message>(m: &M) -> [u8; 32] {
    *blake3::hash(&m.encode_to_vec()).as_bytes()
}

/// May `req` update the stored execution `old` in namespace `ns`? NOT_FOUND
/// when `old` belongs to another namespace; FAILED_PRECONDITION when it is
/// terminal or the update changes what is immutable. Every backend asks this.
pub fn check_execution_update(old: &Execution, req: &Execution, ns: &str) -> Result<()> {
    if old.namespace != ns {
        return Err(not_found("execution.id: execution", req.id, Some(ns)));
    }
    if is_terminal(old.state) {
        return Err(Error::precondition(format!(
            "execution {} is {} (terminal): it cannot change",
            old.id,
            state_name(old.state)
        )));
    }
    if req.interface.is_some() && req.interface != old.interface {
        return Err(Error::precondition(format!(
            "execution {}: interface is immutable once set",
            old.id
        )));
    }
    if !req.external_id.is_empty() && req.external_id != old.external_id {
        return Err(Error::precondition(format!(
            "execution {}: external_id cannot change once set",
            old.id
        )));
    }
    Ok(())
}

pub fn is_terminal(state: i32) -> bool {
    [
        ExecutionState::Complete,
        ExecutionState::Failed,
        ExecutionState::Cached,
        ExecutionState::Canceled,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

pub fn state_name(state: i32) -> &'static str {
    ExecutionState::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("an unknown state")
}

/// Creation time of an execution record.
pub fn create_ms(e: &Execution) -> i64 {
    created_ms(e.create_time.as_ref())
}

/// A record's creation time in ms (0 when it has none).
pub fn created_ms(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map(timestamp_ms).unwrap_or(0)
}

/// What an external_id names: the kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    Artifact,
    Execution,
}

/// The ID of the record `external_id` names in `ns`, stored with `stored`
/// as its content digest, for a new record whose content has `digest`: a
/// retry (same content) gets the original; ALREADY_EXISTS when it differs.
pub fn same_content(
    named: Named,
    ns: &str,
    external_id: &str,
    id: i64,
    stored: Option<&[u8]>,
    digest: &[u8; 32],
) -> Result<i64> {
    if stored == Some(digest.as_slice()) {
        return Ok(id);
    }
    let what = match named {
        Named::Artifact => "an artifact",
        Named::Execution => "an execution",
    };
    Err(Error::AlreadyExists(format!(
        "external_id {external_id:?} already names {what} ({id}) in namespace {ns:?} \
         with different content"
    )))
}

/// A new artifact as stored: its ID, LIVE unless said, created now.
pub fn new_artifact(a: &mut Artifact, id: i64, now: i64) {
    a.id = id;
    if a.state == ArtifactState::Unspecified as i32 {
        a.state = ArtifactState::Live as i32;
    }
    a.create_time = Some(timestamp(now));
    a.update_time = Some(timestamp(now));
}

/// An update `a` of the stored artifact `old` (None: there is none), as
/// stored: NOT_FOUND when it does not exist in `a`'s namespace;
/// FAILED_PRECONDITION when it changes the external_id. `field` names the
/// artifact in the request.
pub fn updated_artifact(
    a: &mut Artifact,
    old: Option<Artifact>,
    now: i64,
    field: &str,
) -> Result<()> {
    let Some(old) = old else {
        return Err(Error::not_found(format!(
            "{field}.id: artifact {} does not exist",
            a.id
        )));
    };
    if old.namespace != a.namespace {
        return Err(Error::not_found(format!(
            "{field}.id: artifact {} does not exist in namespace {:?}",
            a.id, a.namespace
        )));
    }
    if a.external_id.is_empty() {
        a.external_id = old.external_id;
    } else if a.external_id != old.external_id {
        return Err(Error::precondition(format!(
            "{field}.external_id cannot change once set (it is {:?})",
            old.external_id
        )));
    }
    if a.state == ArtifactState::Unspecified as i32 {
        a.state = old.state;
    }
    a.create_time = old.create_time;
    a.update_time = Some(timestamp(now));
    Ok(())
}

/// A new execution as stored: the request with its ID and key, created now.
pub fn new_execution(w: &ExecutionWrite, id: i64, now: i64) -> Execution {
    let mut exec = w.execution.clone();
    exec.id = id;
    exec.cache_key = w.key.map(|k| k.to_string()).unwrap_or_default();
    exec.create_time = Some(timestamp(now));
    exec.update_time = Some(timestamp(now));
    exec
}

/// The CACHED execution that records a lookup served from `original`: its
/// interface, key and output parameters, created now.
pub fn cached_execution(original: &Execution, id: i64, now: i64) -> Execution {
    Execution {
        id,
        namespace: original.namespace.clone(),
        external_id: String::new(),
        interface: original.interface.clone(),
        cache_key: original.cache_key.clone(),
        state: ExecutionState::Cached as i32,
        output_parameters: original.output_parameters.clone(),
        cached_from_execution_id: original.id,
        cache_ttl: None,
        properties: Default::default(),
        create_time: Some(timestamp(now)),
        update_time: Some(timestamp(now)),
    }
}

/// The stored execution `old` after the update `req` (which
/// `check_execution_update` allowed): the new state, parameters and
/// properties merged in, the TTL when given.
pub fn updated_execution(mut old: Execution, req: &Execution, now: i64) -> Execution {
    old.state = req.state;
    old.output_parameters.extend(req.output_parameters.clone());
    old.properties.extend(req.properties.clone());
    if req.cache_ttl.is_some() {
        old.cache_ttl = req.cache_ttl;
    }
    old.update_time = Some(timestamp(now));
    old
}

/// The key a write of `exec` settles: the request's, or for an update that
/// left the interface out, the recorded one.
pub fn settled_key(w: &ExecutionWrite, exec: &Execution) -> Option<CacheKey> {
    w.key.or_else(|| exec.cache_key.parse::<CacheKey>().ok())
}

/// Whether the write publishes `exec` as a cache entry under `key`.
pub fn publishes(w: &ExecutionWrite, exec: &Execution, key: Option<&CacheKey>) -> bool {
    exec.state == ExecutionState::Complete as i32 && !w.skip_publish && key.is_some()
}

/// Whether `exec`'s state ends its task (a reservation need not outlive it).
pub fn ends_task(exec: &Execution) -> bool {
    [
        ExecutionState::Complete,
        ExecutionState::Failed,
        ExecutionState::Canceled,
    ]
    .iter()
    .any(|s| *s as i32 == exec.state)
}
