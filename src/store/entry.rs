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
//! reading the execution and its events.

use std::collections::BTreeMap;

use prost::Message;

use crate::error::{Error, Result};
use crate::proto::{Artifact, Execution};

/// Output artifacts by output name, in index order.
pub type Outputs = BTreeMap<String, Vec<Artifact>>;

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
    /// The entry value that carries this record.
    pub fn to_value(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(2 + self.encoded_len());
        v.extend_from_slice(&[VALID, RECORD_V1]);
        self.encode(&mut v).unwrap_or_default();
        v
    }

    /// The copied output artifacts, when the record has a copy of each.
    pub fn copied_artifacts(&self) -> Option<&[Artifact]> {
        let mut ids = self.outputs.iter().flat_map(|o| o.artifact_ids.iter());
        let complete = self.artifacts.len()
            == self
                .outputs
                .iter()
                .map(|o| o.artifact_ids.len())
                .sum::<usize>()
            && self.artifacts.iter().all(|a| ids.next() == Some(&a.id));
        (complete && !self.artifacts.is_empty()).then_some(self.artifacts.as_slice())
    }

    /// The execution and its outputs by name, when the record has a copy of
    /// every output; else the record back (its outputs must be read).
    pub fn into_hit(mut self) -> std::result::Result<(Execution, Outputs), Box<HitRecord>> {
        if self.copied_artifacts().is_none() {
            return Err(Box::new(self));
        }
        let mut copies = std::mem::take(&mut self.artifacts).into_iter();
        let outputs = self
            .outputs
            .iter()
            .map(|o| {
                let arts = copies.by_ref().take(o.artifact_ids.len()).collect();
                (o.name.clone(), arts)
            })
            .collect();
        Ok((self.execution.unwrap_or_default(), outputs))
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
        assert!(partial.clone().into_hit().is_err(), "outputs to read");
        let (e, outs) = full.clone().into_hit().unwrap();
        assert_eq!(e, exec);
        let ids = |name: &str| outs[name].iter().map(|a| a.id).collect::<Vec<_>>();
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
    }
}
