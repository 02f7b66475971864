//! The value of a cache-index entry.
//!
//! Its first byte says VALID or INVALIDATED. An entry published by the write
//! that created its execution also carries a *hit record*: the execution and
//! its output artifact IDs, so that a lookup reads the index leaf and the
//! output artifacts instead of also the execution and its OUTPUT events (two
//! more leaves, which on a store much larger than sled's cache are two more
//! page-ins per hit). An execution never changes once COMPLETE, so the copy
//! stays true; artifacts may change (state, properties), so they are read at
//! every hit. Entries without a record (published by an update, or written by
//! an older version) are served by reading the execution and its events.

use std::collections::BTreeMap;

use prost::Message;

use crate::error::{Error, Result};
use crate::proto::Execution;

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
}

/// The artifacts of one output name, in index order.
#[derive(Clone, PartialEq, Message)]
pub struct HitOutputs {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int64, repeated, tag = "2")]
    pub artifact_ids: Vec<i64>,
}

/// A VALID entry with the hit record of `execution` and its outputs.
pub fn with_record(execution: &Execution, outputs: &BTreeMap<String, Vec<i64>>) -> Vec<u8> {
    let record = HitRecord {
        execution: Some(execution.clone()),
        outputs: outputs
            .iter()
            .map(|(name, ids)| HitOutputs {
                name: name.clone(),
                artifact_ids: ids.clone(),
            })
            .collect(),
    };
    let mut v = Vec::with_capacity(2 + record.encoded_len());
    v.extend_from_slice(&[VALID, RECORD_V1]);
    record.encode(&mut v).unwrap_or_default();
    v
}

pub fn is_invalidated(v: &[u8]) -> bool {
    v.first() == Some(&INVALIDATED)
}

/// The hit record of a VALID entry, if it has one.
pub fn record(v: &[u8]) -> Result<Option<HitRecord>> {
    match v {
        [VALID, RECORD_V1, rest @ ..] => HitRecord::decode(rest)
            .map(Some)
            .map_err(|e| Error::Storage(format!("damaged hit record in the cache index: {e}"))),
        _ => Ok(None),
    }
}

impl HitRecord {
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
        let v = with_record(&exec, &outputs);
        assert!(!is_invalidated(&v));
        let rec = record(&v).unwrap().unwrap();
        assert_eq!(rec.execution, Some(exec));
        assert_eq!(rec.output_ids(), outputs);
        assert_eq!(record(&[VALID]).unwrap(), None);
        assert_eq!(record(&[INVALIDATED]).unwrap(), None);
        assert!(is_invalidated(&[INVALIDATED]));
    }

    #[test]
    fn a_damaged_record_is_a_storage_error_not_a_panic() {
        let err = record(&[VALID, RECORD_V1, 0xff, 0xff]).unwrap_err();
        assert!(matches!(err, Error::Storage(_)), "{err:?}");
    }
}
