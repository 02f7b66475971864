//! The value of a cache-index entry.
//!
//! Its first byte says VALID or INVALIDATED. An entry published by the write
//! that created its execution also carries a *hit record*: the execution, its
//! output artifact IDs and, when that write created every output too, the
//! output artifacts themselves. A lookup then reads one leaf of the index
//! instead of also the execution, its OUTPUT events and its artifacts (more
//! leaves, which on a store much larger than sled's cache are more page-ins per
//! hit). An execution never changes once COMPLETE, so its copy stays true. An
//! artifact may change (state, properties): `PutArtifacts` rewrites the copy in
//! the record of the execution that created it, in the same transaction
//! (`Store::put_artifacts`); an output that existed before the publishing write
//! is never copied, only named, and read at every hit. Entries without a record
//! (published by an update, or written by an older version) are served by
//! reading the execution and its events. A lookup reads a whole record without
//! decoding it (`encoded_hit`): the reply carries its bytes.

use std::collections::BTreeMap;

use prost::bytes::Bytes;
use prost::Message;

use crate::error::{Error, Result};
use crate::proto::{encode_hit_fields, Artifact, ArtifactState, Execution};

/// An entry that must never be served again.
pub const INVALIDATED: u8 = 1;
pub const VALID: u8 = 0;
/// Follows VALID when a hit record follows.
const RECORD_V1: u8 = 1;

#[derive(Clone, PartialEq, Message)]
pub struct HitRecord {
    #[prost(message, optional, tag = "1")]
    pub execution: Option<Execution>,
    #[prost(message, repeated, tag = "2")]
    pub outputs: Vec<HitOutputs>,
    /// Copies of the output artifacts, in the order of `outputs` (by name,
    /// then index); empty when some output existed before the write.
    #[prost(message, repeated, tag = "3")]
    pub artifacts: Vec<Artifact>,
}

/// The artifacts of one output name, in index order.
#[derive(Clone, PartialEq, Message)]
pub struct HitOutputs {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int64, repeated, tag = "2")]
    pub artifact_ids: Vec<i64>,
}

/// A VALID entry with the hit record of `execution` and its outputs, with
/// copies of the output artifacts when `artifacts` has all of them in order.
pub fn with_record(
    execution: &Execution,
    outputs: &BTreeMap<String, Vec<i64>>,
    artifacts: Vec<Artifact>,
) -> Vec<u8> {
    HitRecord {
        execution: Some(execution.clone()),
        outputs: outputs
            .iter()
            .map(|(name, ids)| HitOutputs {
                name: name.clone(),
                artifact_ids: ids.clone(),
            })
            .collect(),
        artifacts,
    }
    .to_value()
}

pub fn is_invalidated(v: &[u8]) -> bool {
    v.first() == Some(&INVALIDATED)
}

fn damaged(e: prost::DecodeError) -> Error {
    Error::Storage(format!("damaged hit record in the cache index: {e}"))
}

/// The hit record of a VALID entry, if it has one.
pub fn record(v: &[u8]) -> Result<Option<HitRecord>> {
    match v {
        [VALID, RECORD_V1, rest @ ..] => HitRecord::decode(rest).map(Some).map_err(damaged),
        _ => Ok(None),
    }
}

/// Whether a record's copies (their IDs, in order) are one of each output,
/// in index order, and there is at least one: then the record is the whole
/// answer of a hit.
fn copies_complete(outputs: &[HitOutputs], copy_ids: impl Iterator<Item = i64>) -> bool {
    let mut copy_ids = copy_ids.peekable();
    copy_ids.peek().is_some()
        && copy_ids.eq(outputs.iter().flat_map(|o| o.artifact_ids.iter().copied()))
}

/// A hit record read with its execution and artifacts left encoded: the
/// same fields as `HitRecord`, as bytes.
#[derive(Clone, PartialEq, Message)]
struct RecordBytes {
    #[prost(bytes = "bytes", tag = "1")]
    execution: Bytes,
    #[prost(message, repeated, tag = "2")]
    outputs: Vec<HitOutputs>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    artifacts: Vec<Bytes>,
}

/// The fields of an execution that judge a hit; decoding skips the rest.
#[derive(Clone, PartialEq, Message)]
struct ExecutionHead {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(string, tag = "2")]
    namespace: String,
    #[prost(message, optional, tag = "9")]
    cache_ttl: Option<prost_types::Duration>,
}

/// The fields of an artifact that judge a hit.
#[derive(Clone, PartialEq, Message)]
struct ArtifactHead {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(enumeration = "ArtifactState", tag = "8")]
    state: i32,
}

/// A hit record with a copy of every output, read without decoding the
/// execution or the artifacts: what judges it, and the lookup reply's fields
/// built from the stored bytes.
#[derive(Debug, Clone)]
pub struct EncodedHit {
    pub execution_id: i64,
    pub namespace: String,
    pub cache_ttl: Option<prost_types::Duration>,
    /// Every output artifact is LIVE.
    pub outputs_live: bool,
    /// Fields 3 (execution) and 4 (output_artifacts) of a lookup reply.
    pub fields: Bytes,
}

/// The entry's hit record as an `EncodedHit`, when it has one with a copy of
/// every output (`copies_complete`); else None (read it the long way).
pub fn encoded_hit(v: sled::IVec) -> Result<Option<EncodedHit>> {
    if !v.starts_with(&[VALID, RECORD_V1]) {
        return Ok(None);
    }
    // The record's own bytes are shared, not copied, by what decodes them.
    let mut bytes = Bytes::from_owner(v);
    let rec = RecordBytes::decode(bytes.split_off(2)).map_err(damaged)?;
    let heads = rec
        .artifacts
        .iter()
        .map(|a| ArtifactHead::decode(a.as_ref()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(damaged)?;
    if !copies_complete(&rec.outputs, heads.iter().map(|h| h.id)) {
        return Ok(None);
    }
    let head = ExecutionHead::decode(rec.execution.as_ref()).map_err(damaged)?;
    let mut copies = rec.artifacts.iter().map(|a| a.as_ref());
    let outputs = rec.outputs.iter().map(|o| {
        let arts = copies.by_ref().take(o.artifact_ids.len()).collect();
        (o.name.as_str(), arts)
    });
    let fields = encode_hit_fields(&rec.execution, outputs).into();
    Ok(Some(EncodedHit {
        execution_id: head.id,
        namespace: head.namespace,
        cache_ttl: head.cache_ttl,
        outputs_live: heads.iter().all(|h| h.state == ArtifactState::Live as i32),
        fields,
    }))
}

impl HitRecord {
    /// The entry value that carries this record.
    pub fn to_value(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(2 + self.encoded_len());
        v.extend_from_slice(&[VALID, RECORD_V1]);
        self.encode(&mut v).unwrap_or_default();
        v
    }

    /// The copied output artifacts, when the record has a copy of each.
    #[cfg(test)]
    pub fn copied_artifacts(&self) -> Option<&[Artifact]> {
        copies_complete(&self.outputs, self.artifacts.iter().map(|a| a.id))
            .then_some(self.artifacts.as_slice())
    }

    /// Replaces the copy of `artifact` (same ID); false when there is none.
    pub fn replace_artifact(&mut self, artifact: &Artifact) -> bool {
        match self.artifacts.iter_mut().find(|a| a.id == artifact.id) {
            Some(slot) => {
                *slot = artifact.clone();
                true
            }
            None => false,
        }
    }

    /// The output artifact IDs by name.
    pub fn output_ids(&self) -> BTreeMap<String, Vec<i64>> {
        self.outputs
            .iter()
            .map(|o| (o.name.clone(), o.artifact_ids.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_plain_values_have_none() {
        let exec = Execution {
            id: 7,
            namespace: "ns".into(),
            cache_key: "k".into(),
            ..Default::default()
        };
        let outputs = BTreeMap::from([
            ("model".to_string(), vec![9, 10]),
            ("metrics".to_string(), vec![11]),
        ]);
        let v = with_record(&exec, &outputs, Vec::new());
        assert!(!is_invalidated(&v));
        let rec = record(&v).unwrap().unwrap();
        assert_eq!(rec.execution, Some(exec));
        assert_eq!(rec.output_ids(), outputs);
        assert_eq!(record(&[VALID]).unwrap(), None);
        assert_eq!(record(&[INVALIDATED]).unwrap(), None);
        assert!(is_invalidated(&[INVALIDATED]));
        assert_eq!(rec.copied_artifacts(), None);
    }

    #[test]
    fn artifact_copies_count_only_when_complete_and_in_order() {
        let exec = Execution {
            id: 1,
            ..Default::default()
        };
        let art = |id: i64| Artifact {
            id,
            uri: format!("mem://{id}"),
            ..Default::default()
        };
        let outputs = BTreeMap::from([("a".to_string(), vec![2, 3]), ("b".to_string(), vec![4])]);
        let full = record(&with_record(&exec, &outputs, vec![art(2), art(3), art(4)]))
            .unwrap()
            .unwrap();
        assert_eq!(full.copied_artifacts().map(|a| a.len()), Some(3));
        let partial = record(&with_record(&exec, &outputs, vec![art(2), art(3)]))
            .unwrap()
            .unwrap();
        assert_eq!(partial.copied_artifacts(), None);
        let v = with_record(&exec, &outputs, vec![art(2), art(3), art(4)]);
        let fields = encoded_hit(v.into()).unwrap().unwrap().fields;
        let reply = crate::proto::GetCachedExecutionResponse::decode(fields).unwrap();
        assert_eq!(reply.execution, Some(exec.clone()));
        let outs = reply.output_artifacts;
        let ids = |name: &str| {
            outs[name]
                .artifacts
                .iter()
                .map(|a| a.id)
                .collect::<Vec<_>>()
        };
        assert_eq!((ids("a"), ids("b")), (vec![2, 3], vec![4]));
        let shuffled = record(&with_record(&exec, &outputs, vec![art(3), art(2), art(4)]))
            .unwrap()
            .unwrap();
        assert_eq!(shuffled.copied_artifacts(), None);

        let mut rec = full;
        let mut changed = art(3);
        changed.uri = "mem://moved".into();
        assert!(rec.replace_artifact(&changed));
        assert!(!rec.replace_artifact(&art(99)));
        let back = record(&rec.to_value()).unwrap().unwrap();
        assert_eq!(back.copied_artifacts().unwrap()[1].uri, "mem://moved");
    }

    #[test]
    fn a_damaged_record_is_a_storage_error_not_a_panic() {
        let err = record(&[VALID, RECORD_V1, 0xff, 0xff]).unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "{err:?}");
        let err = encoded_hit([VALID, RECORD_V1, 0xff, 0xff][..].into()).unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "{err:?}");
        // An artifact copy that is not an artifact.
        let bad = RecordBytes {
            execution: Bytes::new(),
            outputs: vec![HitOutputs {
                name: "a".into(),
                artifact_ids: vec![1],
            }],
            artifacts: vec![Bytes::from_static(&[0x08])],
        };
        let mut v = vec![VALID, RECORD_V1];
        bad.encode(&mut v).unwrap();
        let err = encoded_hit(v.into()).unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "{err:?}");
    }

    #[test]
    fn an_encoded_hit_decodes_to_the_record_and_is_judged_like_it() {
        use crate::proto::GetCachedExecutionResponse;
        let exec = Execution {
            id: 7,
            namespace: "ns".into(),
            cache_key: "k".into(),
            cache_ttl: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..Default::default()
        };
        let art = |id: i64, state: ArtifactState| Artifact {
            id,
            uri: format!("mem://{id}"),
            state: state as i32,
            ..Default::default()
        };
        let outputs = BTreeMap::from([
            ("metrics".to_string(), vec![11]),
            ("model".to_string(), vec![9, 10]),
            ("none".to_string(), vec![]),
        ]);
        let live = vec![
            art(11, ArtifactState::Live),
            art(9, ArtifactState::Live),
            art(10, ArtifactState::Live),
        ];
        let v = with_record(&exec, &outputs, live.clone());
        let hit = encoded_hit(v.clone().into()).unwrap().unwrap();
        assert_eq!((hit.execution_id, hit.namespace.as_str()), (7, "ns"));
        assert_eq!(hit.cache_ttl, exec.cache_ttl);
        assert!(hit.outputs_live);
        let reply = GetCachedExecutionResponse::decode(hit.fields.clone()).unwrap();
        assert_eq!(reply.execution, Some(exec.clone()));
        let list = |artifacts: &[Artifact]| crate::proto::ArtifactList {
            artifacts: artifacts.to_vec(),
        };
        let outs = BTreeMap::from([
            ("metrics".to_string(), list(&live[..1])),
            ("model".to_string(), list(&live[1..])),
            ("none".to_string(), list(&[])),
        ]);
        assert_eq!(reply.output_artifacts, outs);
        assert_eq!(reply.output_artifacts["model"].artifacts[1].id, 10);

        // One output not LIVE: still whole, judged not servable.
        let mut dead = live.clone();
        dead[1].state = ArtifactState::Deleted as i32;
        let hit = encoded_hit(with_record(&exec, &outputs, dead).into()).unwrap();
        assert!(!hit.unwrap().outputs_live);
        // Copies missing, out of order, or none: read the long way.
        for copies in [
            live[..2].to_vec(),
            vec![live[1].clone(), live[0].clone(), live[2].clone()],
            vec![],
        ] {
            let v = with_record(&exec, &outputs, copies);
            assert!(encoded_hit(v.into()).unwrap().is_none());
        }
        for plain in [vec![VALID], vec![INVALIDATED], vec![]] {
            assert!(encoded_hit(plain.into()).unwrap().is_none());
        }
    }
}
