//! The replies of GetCachedExecution and WaitForCachedExecution, written by
//! hand instead of generated (`build.rs` compiles the generated ones out).
//!
//! They have the fields of the proto messages, plus `encoded_hit`: a hit's
//! `execution` (field 3) and `output_artifacts` (field 4) already encoded, as
//! the store builds them from a stored hit record's bytes
//! (`store::entry::encoded_hit`). Encoding appends those bytes as they are, so
//! a hit is served without decoding the record and encoding it again (most of
//! a hit's CPU after h2). Protobuf lets fields come in any order, so the bytes
//! on the wire are a valid message; decoding them (a client, a test) fills
//! `execution` and `output_artifacts` and leaves `encoded_hit` empty.

use std::collections::BTreeMap;

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{btree_map, int32, message, skip_field, string, DecodeContext, WireType};
use prost::{DecodeError, Message};

use super::decoding::merge_optional;
use super::{ArtifactList, Execution, Outcome, Reservation};

macro_rules! lookup_reply {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Default, Debug)]
        pub struct $name {
            pub outcome: i32,
            pub cache_key: String,
            /// On a HIT: the original execution.
            pub execution: Option<Execution>,
            /// On a HIT: its output artifacts by output name.
            pub output_artifacts: BTreeMap<String, ArtifactList>,
            /// On a HIT with record_cached_execution: the new CACHED execution.
            pub cached_execution: Option<Execution>,
            /// RESERVED: the caller's reservation; IN_PROGRESS: the holder's.
            pub reservation: Option<Reservation>,
            /// Why the lookup missed or was disabled, in words.
            pub reason: String,
            /// Fields 3 and 4 of a HIT, encoded; set instead of `execution`
            /// and `output_artifacts` (never both), written as they are.
            pub encoded_hit: Bytes,
        }

        impl $name {
            /// `outcome` as the enum (UNSPECIFIED when unknown).
            pub fn outcome(&self) -> Outcome {
                Outcome::try_from(self.outcome).unwrap_or_default()
            }
        }

        impl Message for $name {
            fn encode_raw(&self, buf: &mut impl BufMut) {
                if self.outcome != 0 {
                    int32::encode(1, &self.outcome, buf);
                }
                if !self.cache_key.is_empty() {
                    string::encode(2, &self.cache_key, buf);
                }
                if let Some(e) = &self.execution {
                    message::encode(3, e, buf);
                }
                btree_map::encode(
                    string::encode,
                    string::encoded_len,
                    message::encode,
                    message::encoded_len,
                    4,
                    &self.output_artifacts,
                    buf,
                );
                buf.put_slice(&self.encoded_hit);
                if let Some(e) = &self.cached_execution {
                    message::encode(5, e, buf);
                }
                if let Some(r) = &self.reservation {
                    message::encode(6, r, buf);
                }
                if !self.reason.is_empty() {
                    string::encode(7, &self.reason, buf);
                }
            }

            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: WireType,
                buf: &mut impl Buf,
                ctx: DecodeContext,
            ) -> Result<(), DecodeError> {
                let at = |field| super::decoding::at(stringify!($name), field);
                match tag {
                    1 => int32::merge(wire_type, &mut self.outcome, buf, ctx)
                        .map_err(at("outcome")),
                    2 => string::merge(wire_type, &mut self.cache_key, buf, ctx)
                        .map_err(at("cache_key")),
                    3 => merge_optional(&mut self.execution, wire_type, buf, ctx)
                        .map_err(at("execution")),
                    4 => btree_map::merge(
                        string::merge,
                        message::merge,
                        &mut self.output_artifacts,
                        buf,
                        ctx,
                    )
                    .map_err(at("output_artifacts")),
                    5 => merge_optional(&mut self.cached_execution, wire_type, buf, ctx)
                        .map_err(at("cached_execution")),
                    6 => merge_optional(&mut self.reservation, wire_type, buf, ctx)
                        .map_err(at("reservation")),
                    7 => string::merge(wire_type, &mut self.reason, buf, ctx)
                        .map_err(at("reason")),
                    _ => skip_field(wire_type, tag, buf, ctx),
                }
            }

            fn encoded_len(&self) -> usize {
                (if self.outcome != 0 {
                    int32::encoded_len(1, &self.outcome)
                } else {
                    0
                }) + (if self.cache_key.is_empty() {
                    0
                } else {
                    string::encoded_len(2, &self.cache_key)
                }) + self
                    .execution
                    .as_ref()
                    .map_or(0, |e| message::encoded_len(3, e))
                    + btree_map::encoded_len(
                        string::encoded_len,
                        message::encoded_len,
                        4,
                        &self.output_artifacts,
                    )
                    + self.encoded_hit.len()
                    + self
                        .cached_execution
                        .as_ref()
                        .map_or(0, |e| message::encoded_len(5, e))
                    + self
                        .reservation
                        .as_ref()
                        .map_or(0, |r| message::encoded_len(6, r))
                    + (if self.reason.is_empty() {
                        0
                    } else {
                        string::encoded_len(7, &self.reason)
                    })
            }

            fn clear(&mut self) {
                *self = Self::default();
            }
        }
    };
}

lookup_reply!(
    /// The answer to GetCachedExecution.
    GetCachedExecutionResponse
);
lookup_reply!(
    /// The answer to WaitForCachedExecution (the same fields).
    WaitForCachedExecutionResponse
);

impl From<GetCachedExecutionResponse> for WaitForCachedExecutionResponse {
    fn from(r: GetCachedExecutionResponse) -> Self {
        WaitForCachedExecutionResponse {
            outcome: r.outcome,
            cache_key: r.cache_key,
            execution: r.execution,
            output_artifacts: r.output_artifacts,
            cached_execution: r.cached_execution,
            reservation: r.reservation,
            reason: r.reason,
            encoded_hit: r.encoded_hit,
        }
    }
}

/// A hit's execution and outputs as fields 3 and 4 of a lookup reply; what
/// `encoded_hit` holds. Built from the stored bytes of each message.
pub fn encode_hit_fields<'a>(
    execution: &[u8],
    outputs: impl IntoIterator<Item = (&'a str, Vec<&'a [u8]>)>,
) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint};
    fn delimited_len(len: usize) -> usize {
        1 + encoded_len_varint(len as u64) + len
    }
    fn delimited(tag: u32, len: usize, buf: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
    }
    let mut buf = Vec::with_capacity(execution.len() + 16);
    delimited(3, execution.len(), &mut buf);
    buf.extend_from_slice(execution);
    for (name, artifacts) in outputs {
        // A map entry: key (1) the name, value (2) an ArtifactList whose
        // field 1 repeats the artifacts.
        let list_len: usize = artifacts.iter().map(|a| delimited_len(a.len())).sum();
        let entry_len = delimited_len(name.len()) + delimited_len(list_len);
        delimited(4, entry_len, &mut buf);
        delimited(1, name.len(), &mut buf);
        buf.extend_from_slice(name.as_bytes());
        delimited(2, list_len, &mut buf);
        for a in artifacts {
            delimited(1, a.len(), &mut buf);
            buf.extend_from_slice(a);
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Artifact;

    fn hit() -> GetCachedExecutionResponse {
        let artifacts = |ids: &[i64]| ArtifactList {
            artifacts: ids
                .iter()
                .map(|id| Artifact {
                    id: *id,
                    uri: format!("mem://{id}"),
                    ..Default::default()
                })
                .collect(),
        };
        GetCachedExecutionResponse {
            outcome: Outcome::Hit as i32,
            cache_key: "ab".repeat(32),
            execution: Some(Execution {
                id: 3,
                namespace: "ns".into(),
                ..Default::default()
            }),
            output_artifacts: BTreeMap::from([
                ("a".to_string(), artifacts(&[1, 2])),
                ("b".to_string(), artifacts(&[4])),
                ("c".to_string(), artifacts(&[])),
            ]),
            cached_execution: Some(Execution {
                id: 9,
                ..Default::default()
            }),
            reason: "why".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_reply_round_trips_like_the_generated_message() {
        let r = hit();
        let bytes = r.encode_to_vec();
        assert_eq!(bytes.len(), r.encoded_len());
        assert_eq!(GetCachedExecutionResponse::decode(&bytes[..]).unwrap(), r);
        let wait: WaitForCachedExecutionResponse = r.clone().into();
        assert_eq!(wait.encode_to_vec(), bytes);
        assert_eq!(wait.outcome(), Outcome::Hit);
        // Unknown fields are skipped; a cut-off message is an error.
        let mut extra = bytes.clone();
        extra.extend_from_slice(&[0x40, 0x01]); // field 8, varint 1
        assert_eq!(GetCachedExecutionResponse::decode(&extra[..]).unwrap(), r);
        let err = GetCachedExecutionResponse::decode(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(
            err.to_string().contains("GetCachedExecutionResponse"),
            "{err}"
        );
    }

    #[test]
    fn spliced_hit_fields_read_back_as_the_fields_they_replace() {
        let full = hit();
        let execution = full.execution.as_ref().unwrap().encode_to_vec();
        let encoded: Vec<(String, Vec<Vec<u8>>)> = full
            .output_artifacts
            .iter()
            .map(|(name, list)| {
                let arts = list.artifacts.iter().map(|a| a.encode_to_vec()).collect();
                (name.clone(), arts)
            })
            .collect();
        let fields = encode_hit_fields(
            &execution,
            encoded
                .iter()
                .map(|(n, arts)| (n.as_str(), arts.iter().map(|a| &a[..]).collect())),
        );
        let spliced = GetCachedExecutionResponse {
            execution: None,
            output_artifacts: BTreeMap::new(),
            encoded_hit: fields.into(),
            ..full.clone()
        };
        let bytes = spliced.encode_to_vec();
        assert_eq!(bytes.len(), spliced.encoded_len());
        assert_eq!(
            GetCachedExecutionResponse::decode(&bytes[..]).unwrap(),
            full
        );
    }
}
