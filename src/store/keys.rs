//! Key layout of the one sled tree. Every record kind has a one-byte prefix;
//! integers are big-endian so that ranges sort; strings are length-prefixed so
//! that no byte is reserved. "rev" numbers are `u64::MAX - n`: newest first.

use crate::error::Error;
use crate::key::CacheKey;
use crate::proto::{ArtifactState, ExecutionState};

pub const ARTIFACT: u8 = b'a';
/// Like `EXEC_BY_NS`, for artifacts (`artifact_by_ns_prefixes`).
pub const ARTIFACT_BY_NS: u8 = b'b';
pub const CACHE: u8 = b'c';
pub const EXECUTION: u8 = b'e';
pub const EXEC_BY_KEY: u8 = b'k';
/// Written by stores before the namespace indexes became the union of the
/// state indexes (`exec_by_ns_prefixes`): no longer read, deleted with their
/// execution.
pub const EXEC_BY_NS: u8 = b'l';
pub const EXEC_BY_COMPONENT: u8 = b'm';
pub const RESERVATION: u8 = b'r';
pub const EVENT_BY_EXEC: u8 = b'v';
pub const EVENT_BY_ARTIFACT: u8 = b'w';
pub const EXTERNAL_ID: u8 = b'x';
// Store-wide settings are whole keys under the prefix `~`, which no other
// key uses: the `META_` keys below.

/// Every ID at or below this u64 (BE) was handed out before an import (see
/// `backup`): new IDs are generated above it.
pub const META_ID_FLOOR: &[u8] = b"~id-floor";
/// The epoch of the hits file's index written at the last clean close
/// (`hitlog`); removed at open.
pub const META_HIT_LOG_EPOCH: &[u8] = b"~hit-log-epoch";
/// The artifacts a prune in progress means to delete (u64 BE IDs): written
/// before its first batch, removed after its last; a prune that finds it
/// (the last one was killed) deletes those left without events.
pub const META_PRUNE_PENDING: &[u8] = b"~prune-pending";
pub const CONTEXT: u8 = b'g';
/// (namespace, type, name) -> context id.
pub const CONTEXT_BY_NAME: u8 = b'h';
pub const CONTEXT_BY_NS: u8 = b'i';
pub const CONTEXT_BY_TYPE: u8 = b'j';
/// Associations: (context, rev execution id).
pub const EXEC_BY_CONTEXT: u8 = b'n';
/// Attributions: (context, rev artifact id).
pub const ARTIFACT_BY_CONTEXT: u8 = b'o';
/// The reverse of EXEC_BY_CONTEXT, (execution, context), for prune.
pub const CONTEXTS_OF_EXEC: u8 = b'p';
/// The reverse of ARTIFACT_BY_CONTEXT, (artifact, context), for prune.
pub const CONTEXTS_OF_ARTIFACT: u8 = b'q';
/// (namespace, state, rev execution id); moves when the state changes.
pub const EXEC_BY_STATE: u8 = b's';
/// (namespace, type, rev artifact id); moves when an update changes the type.
pub const ARTIFACT_BY_TYPE: u8 = b't';
/// (namespace, state, rev artifact id); moves when the state changes.
pub const ARTIFACT_BY_STATE: u8 = b'u';

/// Kinds of records an external_id names.
pub const KIND_ARTIFACT: u8 = b'a';
pub const KIND_EXECUTION: u8 = b'e';

/// The namespace of a key that starts with `prefix` then a length-prefixed
/// namespace (cache entries, reservations, external ids, ...).
pub fn namespace_of(k: &[u8]) -> Result<&str, Error> {
    let len = read_u32(k, 1)? as usize;
    k.get(5..5 + len)
        .and_then(|b| std::str::from_utf8(b).ok())
        .ok_or_else(|| corrupt(k))
}

/// A builder for composite keys.
pub struct KeyBuf(Vec<u8>);

impl KeyBuf {
    pub fn new(prefix: u8) -> Self {
        let mut v = Vec::with_capacity(64);
        v.push(prefix);
        KeyBuf(v)
    }
    pub fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    pub fn id(self, id: i64) -> Self {
        // IDs are positive; the cast keeps their order.
        self.u64(id as u64)
    }
    pub fn rev(self, n: u64) -> Self {
        self.u64(u64::MAX - n)
    }
    pub fn rev_id(self, id: i64) -> Self {
        self.rev(id as u64)
    }
    pub fn byte(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }
    pub fn u32(mut self, n: u32) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }
    pub fn str(mut self, s: &str) -> Self {
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn cache_key(mut self, k: &CacheKey) -> Self {
        self.0.extend_from_slice(k.as_bytes());
        self
    }
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    pub fn done(self) -> Vec<u8> {
        self.0
    }
}

pub fn artifact(id: i64) -> Vec<u8> {
    record(ARTIFACT, id)
}

pub fn execution(id: i64) -> Vec<u8> {
    record(EXECUTION, id)
}

/// The record of an ID of one kind (`ARTIFACT`, `EXECUTION`, `CONTEXT`, an
/// execution's `EVENT_BY_EXEC` list): the prefix, then the ID;
/// `RECORD_KEY_LEN` bytes.
pub fn record(kind: u8, id: i64) -> Vec<u8> {
    KeyBuf::new(kind).id(id).done()
}

pub const RECORD_KEY_LEN: usize = 9;

/// Cache index entries of (namespace, key): newest completion first, and the
/// newest execution first within one millisecond.
pub fn cache_prefix(ns: &str, key: &CacheKey) -> Vec<u8> {
    KeyBuf::new(CACHE).str(ns).cache_key(key).done()
}

pub fn cache_entry(ns: &str, key: &CacheKey, completed_ms: i64, exec_id: i64) -> Vec<u8> {
    KeyBuf::new(CACHE)
        .str(ns)
        .cache_key(key)
        .rev(completed_ms.max(0) as u64)
        .rev_id(exec_id)
        .done()
}

/// (completed_ms, execution id) from what follows a cache prefix.
pub fn parse_cache_suffix(suffix: &[u8]) -> Result<(i64, i64), Error> {
    let (a, b) = (read_u64(suffix, 0)?, read_u64(suffix, 8)?);
    Ok(((u64::MAX - a) as i64, (u64::MAX - b) as i64))
}

/// A whole cache-index key read back: (cache key, completed_ms, execution id).
pub fn parse_cache_entry(k: &[u8]) -> Result<(CacheKey, i64, i64), Error> {
    let ns_len = read_u32(k, 1)? as usize;
    let key_at = 1 + 4 + ns_len;
    let key: [u8; 32] = k
        .get(key_at..key_at + 32)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt(k))?;
    let (completed_ms, exec_id) = parse_cache_suffix(k.get(key_at + 32..).unwrap_or_default())?;
    Ok((CacheKey(key), completed_ms, exec_id))
}

/// The event of an execution; `rest` of the key (after the prefix and the
/// execution id) is shared with the by-artifact index.
pub fn event_tail(event_type: i32, name: &str, index: i32) -> Vec<u8> {
    KeyBuf::new(event_type.clamp(0, 255) as u8)
        .str(name)
        .u32(index.max(0) as u32)
        .done()
}

/// A legacy per-event record of an execution (see `events`).
pub fn event_by_exec(exec_id: i64, artifact_id: i64, tail: &[u8]) -> Vec<u8> {
    KeyBuf::new(EVENT_BY_EXEC)
        .id(exec_id)
        .raw(tail)
        .id(artifact_id)
        .done()
}

/// `w`, artifact id, event type, execution id, tail (which repeats the type):
/// the events of one type on an artifact (its producers, or its consumers) are
/// one prefix.
pub fn event_by_artifact(artifact_id: i64, exec_id: i64, tail: &[u8]) -> Vec<u8> {
    KeyBuf::new(EVENT_BY_ARTIFACT)
        .id(artifact_id)
        .byte(tail.first().copied().unwrap_or(0))
        .id(exec_id)
        .raw(tail)
        .done()
}

/// The events of one type on an artifact.
pub fn events_of_artifact_typed(artifact_id: i64, event_type: i32) -> Vec<u8> {
    KeyBuf::new(EVENT_BY_ARTIFACT)
        .id(artifact_id)
        .byte(event_type.clamp(0, 255) as u8)
        .done()
}

/// The execution id of an event-by-artifact key.
pub fn event_by_artifact_exec(k: &[u8]) -> Result<i64, Error> {
    Ok(read_u64(k, 10)? as i64)
}

/// The events of an execution, one record (see `events`); also the prefix
/// of its legacy per-event records (`event_by_exec`).
pub fn event_list(exec_id: i64) -> Vec<u8> {
    record(EVENT_BY_EXEC, exec_id)
}

/// The length of an `event_list` key (legacy per-event keys are longer).
pub const EVENT_LIST_LEN: usize = RECORD_KEY_LEN;

pub fn events_of_artifact(artifact_id: i64) -> Vec<u8> {
    KeyBuf::new(EVENT_BY_ARTIFACT).id(artifact_id).done()
}

/// (artifact id, execution id, tail) of an event-by-artifact key.
pub fn parse_event_by_artifact(k: &[u8]) -> Result<(i64, i64, &[u8]), Error> {
    let art = read_u64(k, 1)?;
    let exec = read_u64(k, 10)?;
    let tail = k.get(18..).ok_or_else(|| corrupt(k))?;
    Ok((art as i64, exec as i64, tail))
}

pub fn external_id(ns: &str, kind: u8, external_id: &str) -> Vec<u8> {
    KeyBuf::new(EXTERNAL_ID)
        .str(ns)
        .byte(kind)
        .str(external_id)
        .done()
}

/// The reservation of (namespace, key): value = expiry ms (BE) + owner.
pub fn reservation(ns: &str, key: &CacheKey) -> Vec<u8> {
    KeyBuf::new(RESERVATION).str(ns).cache_key(key).done()
}

/// The legacy by-namespace index entry of an execution (see `EXEC_BY_NS`).
pub fn legacy_exec_by_ns(ns: &str, id: i64) -> Vec<u8> {
    with_rev_id(&KeyBuf::new(EXEC_BY_NS).str(ns).done(), id)
}

/// A namespace's executions: one by-state index per state, which together
/// hold each execution once.
pub fn exec_by_ns_prefixes(ns: &str) -> Vec<Vec<u8>> {
    every_value(|s| ExecutionState::try_from(s).is_ok())
        .map(|s| exec_by_state_prefix(ns, s))
        .collect()
}

pub fn exec_by_component_prefix(ns: &str, component: &str) -> Vec<u8> {
    KeyBuf::new(EXEC_BY_COMPONENT).str(ns).str(component).done()
}

pub fn exec_by_key_prefix(ns: &str, key: &CacheKey) -> Vec<u8> {
    KeyBuf::new(EXEC_BY_KEY).str(ns).cache_key(key).done()
}

/// The legacy by-namespace index entry of an artifact (see `ARTIFACT_BY_NS`).
pub fn legacy_artifact_by_ns(ns: &str, id: i64) -> Vec<u8> {
    with_rev_id(&KeyBuf::new(ARTIFACT_BY_NS).str(ns).done(), id)
}

/// A namespace's artifacts: the union of its by-state indexes.
pub fn artifact_by_ns_prefixes(ns: &str) -> Vec<Vec<u8>> {
    every_value(|s| ArtifactState::try_from(s).is_ok())
        .map(|s| artifact_by_state_prefix(ns, s))
        .collect()
}

/// The values of a proto enum whose values run from 0 without a gap (writes
/// are validated against the enum, so no record holds another).
fn every_value(known: impl Fn(i32) -> bool) -> impl Iterator<Item = i32> {
    (0..).take_while(move |s| known(*s))
}

pub fn exec_by_state_prefix(ns: &str, state: i32) -> Vec<u8> {
    KeyBuf::new(EXEC_BY_STATE).str(ns).u32(state as u32).done()
}

pub fn artifact_by_type_prefix(ns: &str, artifact_type: &str) -> Vec<u8> {
    KeyBuf::new(ARTIFACT_BY_TYPE)
        .str(ns)
        .str(artifact_type)
        .done()
}

pub fn artifact_by_state_prefix(ns: &str, state: i32) -> Vec<u8> {
    KeyBuf::new(ARTIFACT_BY_STATE)
        .str(ns)
        .u32(state as u32)
        .done()
}

pub fn context(id: i64) -> Vec<u8> {
    record(CONTEXT, id)
}

pub fn context_by_name(ns: &str, context_type: &str, name: &str) -> Vec<u8> {
    KeyBuf::new(CONTEXT_BY_NAME)
        .str(ns)
        .str(context_type)
        .str(name)
        .done()
}

pub fn context_by_ns_prefix(ns: &str) -> Vec<u8> {
    KeyBuf::new(CONTEXT_BY_NS).str(ns).done()
}

pub fn context_by_type_prefix(ns: &str, context_type: &str) -> Vec<u8> {
    KeyBuf::new(CONTEXT_BY_TYPE)
        .str(ns)
        .str(context_type)
        .done()
}

/// The executions associated with a context, newest first.
pub fn exec_by_context_prefix(context_id: i64) -> Vec<u8> {
    KeyBuf::new(EXEC_BY_CONTEXT).id(context_id).done()
}

/// The artifacts attributed to a context, newest first.
pub fn artifact_by_context_prefix(context_id: i64) -> Vec<u8> {
    KeyBuf::new(ARTIFACT_BY_CONTEXT).id(context_id).done()
}

pub fn contexts_of_exec_prefix(exec_id: i64) -> Vec<u8> {
    KeyBuf::new(CONTEXTS_OF_EXEC).id(exec_id).done()
}

pub fn contexts_of_artifact_prefix(artifact_id: i64) -> Vec<u8> {
    KeyBuf::new(CONTEXTS_OF_ARTIFACT).id(artifact_id).done()
}

/// The context id at the end of a contexts-of key.
pub fn id_suffix(k: &[u8]) -> Result<i64, Error> {
    let at = k.len().checked_sub(8).ok_or_else(|| corrupt(k))?;
    Ok(read_u64(k, at)? as i64)
}

/// An ID-ordered index entry: `prefix` then the reversed ID.
pub fn with_rev_id(prefix: &[u8], id: i64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&(u64::MAX - id as u64).to_be_bytes());
    k
}

/// The ID at the end of an ID-ordered index key.
pub fn rev_id_suffix(k: &[u8]) -> Result<i64, Error> {
    let at = k.len().checked_sub(8).ok_or_else(|| corrupt(k))?;
    Ok((u64::MAX - read_u64(k, at)?) as i64)
}

pub fn read_u32(b: &[u8], at: usize) -> Result<u32, Error> {
    let bytes: [u8; 4] = b
        .get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| corrupt(b))?;
    Ok(u32::from_be_bytes(bytes))
}

pub fn read_u64(b: &[u8], at: usize) -> Result<u64, Error> {
    let bytes: [u8; 8] = b
        .get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| corrupt(b))?;
    Ok(u64::from_be_bytes(bytes))
}

fn corrupt(k: &[u8]) -> Error {
    Error::Storage(format!("malformed index key {}", hex::encode(k)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_entries_sort_newest_first() {
        let k = CacheKey([7; 32]);
        let older = cache_entry("ns", &k, 1_000, 5);
        let newer = cache_entry("ns", &k, 2_000, 9);
        assert!(newer < older);
        // In the same millisecond, the later execution comes first.
        assert!(cache_entry("ns", &k, 1_000, 6) < older);
        assert!(older.starts_with(&cache_prefix("ns", &k)));
        let p = cache_prefix("ns", &k).len();
        assert_eq!(parse_cache_suffix(&newer[p..]).unwrap(), (2_000, 9));
        assert_eq!(parse_cache_entry(&newer).unwrap(), (k, 2_000, 9));
        assert!(parse_cache_entry(&newer[..newer.len() - 1]).is_err());
    }

    #[test]
    fn namespaces_do_not_share_prefixes() {
        let k = CacheKey([1; 32]);
        assert!(!cache_entry("ab", &k, 1, 1).starts_with(&cache_prefix("a", &k)));
        for (ab, a) in exec_by_ns_prefixes("ab")
            .iter()
            .zip(exec_by_ns_prefixes("a"))
        {
            assert!(!with_rev_id(ab, 1).starts_with(&a));
        }
    }

    #[test]
    fn a_namespace_index_is_one_state_index_per_state() {
        let execs = exec_by_ns_prefixes("n");
        assert_eq!(execs.len(), 7);
        assert_eq!(
            execs[3],
            exec_by_state_prefix("n", ExecutionState::Complete as i32)
        );
        let arts = artifact_by_ns_prefixes("n");
        assert_eq!(arts.len(), 6);
        assert_eq!(
            arts[5],
            artifact_by_state_prefix("n", ArtifactState::Abandoned as i32)
        );
    }

    #[test]
    fn event_indexes_point_at_each_other() {
        let tail = event_tail(2, "model", 1);
        let by_art = event_by_artifact(42, 7, &tail);
        assert_eq!(
            parse_event_by_artifact(&by_art).unwrap(),
            (42, 7, tail.as_slice())
        );
        assert_eq!(event_by_artifact_exec(&by_art).unwrap(), 7);
        assert!(by_art.starts_with(&events_of_artifact_typed(42, 2)));
        assert!(!by_art.starts_with(&events_of_artifact_typed(42, 1)));
        // An execution's list sorts before its legacy per-event records.
        let list = event_list(7);
        assert_eq!(list.len(), EVENT_LIST_LEN);
        let legacy = event_by_exec(7, 42, &tail);
        assert!(legacy.starts_with(&list) && legacy.len() > EVENT_LIST_LEN);
        assert!(!event_by_exec(70, 42, &tail).starts_with(&list));
        assert!(with_rev_id(b"p", 10) < with_rev_id(b"p", 9));
        assert_eq!(rev_id_suffix(&with_rev_id(b"p", 10)).unwrap(), 10);
    }

    #[test]
    fn namespace_of_reads_it_back() {
        let k = CacheKey([3; 32]);
        assert_eq!(namespace_of(&reservation("team-a", &k)).unwrap(), "team-a");
        assert!(namespace_of(b"r").is_err());
    }
}
