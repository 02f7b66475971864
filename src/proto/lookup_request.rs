//! GetCachedExecution's request, written by hand instead of generated
//! (`build.rs` compiles the generated one out), so that a lookup can be keyed
//! from its interface's bytes (`key::wire`) without decoding them.
//!
//! It has the proto message's fields, plus `interface_bytes`: decoding keeps
//! the interface (field 2, of the `target` oneof) there, still encoded, and
//! leaves `target` empty; `decode_interface` moves it into `target` when
//! needed. Encoding writes whichever is set. Code that builds a request sets
//! `target`, as with the generated type.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{bytes, int64, message, skip_field, string, DecodeContext, WireType};
use prost::{DecodeError, Message};

use super::decoding::merge_optional;
use super::get_cached_execution_request::Target;
use super::{CachePolicy, ReservationRequest, TaskInterface};

/// Asks whether a task's result is cached (GetCachedExecution).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct GetCachedExecutionRequest {
    pub namespace: String,
    pub target: Option<Target>,
    pub policy: Option<CachePolicy>,
    /// On a HIT, record a CACHED execution pointing at the original.
    pub record_cached_execution: bool,
    /// On a miss, ask for the reservation of this key.
    pub reservation: Option<ReservationRequest>,
    /// Contexts to associate the CACHED execution with.
    pub context_ids: Vec<i64>,
    /// A decoded request's interface, still encoded: set instead of `target`
    /// (never both). Decoding a request never decodes its interface.
    pub interface_bytes: Bytes,
}

impl GetCachedExecutionRequest {
    /// Moves a decoded request's interface into `target`, decoded (nothing
    /// to do when `interface_bytes` is empty).
    pub fn decode_interface(&mut self) -> Result<(), DecodeError> {
        if !self.interface_bytes.is_empty() {
            let ti = TaskInterface::decode(std::mem::take(&mut self.interface_bytes))?;
            self.target = Some(Target::Interface(ti));
        }
        Ok(())
    }
}

impl Message for GetCachedExecutionRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.namespace.is_empty() {
            string::encode(1, &self.namespace, buf);
        }
        if !self.interface_bytes.is_empty() {
            bytes::encode(2, &self.interface_bytes, buf);
        } else if let Some(t) = &self.target {
            t.encode(buf);
        }
        if let Some(p) = &self.policy {
            message::encode(4, p, buf);
        }
        if self.record_cached_execution {
            prost::encoding::bool::encode(5, &self.record_cached_execution, buf);
        }
        if let Some(r) = &self.reservation {
            message::encode(6, r, buf);
        }
        int64::encode_packed(7, &self.context_ids, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let at = |field| super::decoding::at("GetCachedExecutionRequest", field);
        match tag {
            1 => string::merge(wire_type, &mut self.namespace, buf, ctx).map_err(at("namespace")),
            2 => {
                // The bytes, as `bytes::merge` reads a bytes field. A second
                // interface field merges into the first, as the generated
                // type merges it: decoded, each part into the message, so
                // that a request of many parts decodes in linear time (the
                // parts' bytes concatenated would copy the whole prefix per
                // part). One after a cache_key replaces it.
                let mut more = Bytes::new();
                bytes::merge(wire_type, &mut more, buf, ctx).map_err(at("target"))?;
                let earlier = match self.target.take() {
                    Some(Target::Interface(ti)) => Some(ti),
                    _ if self.interface_bytes.is_empty() => None,
                    _ => Some(
                        TaskInterface::decode(std::mem::take(&mut self.interface_bytes))
                            .map_err(at("target"))?,
                    ),
                };
                match earlier {
                    Some(mut ti) => {
                        ti.merge(more).map_err(at("target"))?;
                        self.target = Some(Target::Interface(ti));
                    }
                    // An empty interface is still the interface target.
                    None if more.is_empty() => {
                        self.target = Some(Target::Interface(TaskInterface::default()));
                    }
                    None => self.interface_bytes = more,
                }
                Ok(())
            }
            3 => {
                self.interface_bytes = Bytes::new();
                if matches!(self.target, Some(Target::Interface(_))) {
                    self.target = None;
                }
                Target::merge(&mut self.target, tag, wire_type, buf, ctx).map_err(at("target"))
            }
            4 => merge_optional(&mut self.policy, wire_type, buf, ctx).map_err(at("policy")),
            5 => {
                prost::encoding::bool::merge(wire_type, &mut self.record_cached_execution, buf, ctx)
                    .map_err(at("record_cached_execution"))
            }
            6 => merge_optional(&mut self.reservation, wire_type, buf, ctx)
                .map_err(at("reservation")),
            7 => int64::merge_repeated(wire_type, &mut self.context_ids, buf, ctx)
                .map_err(at("context_ids")),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let target = if !self.interface_bytes.is_empty() {
            bytes::encoded_len(2, &self.interface_bytes)
        } else {
            self.target.as_ref().map_or(0, Target::encoded_len)
        };
        (if self.namespace.is_empty() {
            0
        } else {
            string::encoded_len(1, &self.namespace)
        }) + target
            + self
                .policy
                .as_ref()
                .map_or(0, |p| message::encoded_len(4, p))
            + (if self.record_cached_execution {
                prost::encoding::bool::encoded_len(5, &self.record_cached_execution)
            } else {
                0
            })
            + self
                .reservation
                .as_ref()
                .map_or(0, |r| message::encoded_len(6, r))
            + int64::encoded_len_packed(7, &self.context_ids)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ti(component: &str) -> TaskInterface {
        TaskInterface {
            component: component.into(),
            parameters: [(
                "lr".to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(0.1)),
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    fn full(target: Option<Target>) -> GetCachedExecutionRequest {
        GetCachedExecutionRequest {
            namespace: "ns".into(),
            target,
            policy: Some(CachePolicy {
                enabled: Some(true),
                ..Default::default()
            }),
            record_cached_execution: true,
            reservation: Some(ReservationRequest {
                owner: "me".into(),
                lease: None,
            }),
            context_ids: vec![3, 4],
            interface_bytes: Bytes::new(),
        }
    }

    #[test]
    fn a_decoded_interface_stays_encoded_until_asked_for() {
        let sent = full(Some(Target::Interface(ti("train"))));
        let bytes = sent.encode_to_vec();
        assert_eq!(bytes.len(), sent.encoded_len());
        let mut got = GetCachedExecutionRequest::decode(&bytes[..]).unwrap();
        assert!(got.target.is_none());
        assert_eq!(got.interface_bytes, ti("train").encode_to_vec());
        // Encoded again from its bytes: the same message.
        assert_eq!(got.encode_to_vec(), bytes);
        assert_eq!(got.encoded_len(), bytes.len());
        got.decode_interface().unwrap();
        assert_eq!(got, sent);

        let by_key = full(Some(Target::CacheKey("ab".into())));
        let got = GetCachedExecutionRequest::decode(&by_key.encode_to_vec()[..]).unwrap();
        assert_eq!(got, by_key);
        let empty = full(Some(Target::Interface(TaskInterface::default())));
        let mut got = GetCachedExecutionRequest::decode(&empty.encode_to_vec()[..]).unwrap();
        got.decode_interface().unwrap();
        assert_eq!(got, empty, "an empty interface is still the target");
    }

    #[test]
    fn the_oneof_keeps_the_last_target_and_merges_interfaces() {
        let a = full(Some(Target::Interface(ti("a")))).encode_to_vec();
        let k = full(Some(Target::CacheKey("ff".into()))).encode_to_vec();
        let version = GetCachedExecutionRequest {
            target: Some(Target::Interface(TaskInterface {
                cache_version: "2".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
        .encode_to_vec();
        // Key then interface: the interface.
        let mut got = GetCachedExecutionRequest::decode(&[&k[..], &a[..]].concat()[..]).unwrap();
        got.decode_interface().unwrap();
        assert_eq!(got.target, Some(Target::Interface(ti("a"))));
        // Interface then key: the key.
        let got = GetCachedExecutionRequest::decode(&[&a[..], &k[..]].concat()[..]).unwrap();
        assert!(got.interface_bytes.is_empty());
        assert_eq!(got.target, Some(Target::CacheKey("ff".into())));
        // Two interfaces: merged, as the generated type merges them.
        let mut got =
            GetCachedExecutionRequest::decode(&[&a[..], &version[..]].concat()[..]).unwrap();
        got.decode_interface().unwrap();
        let mut want = ti("a");
        want.cache_version = "2".into();
        assert_eq!(got.target, Some(Target::Interface(want)));
        // A broken interface fails only when decoded.
        let broken = GetCachedExecutionRequest {
            interface_bytes: Bytes::from_static(&[0x0a, 0x05, b'x']),
            ..Default::default()
        };
        let mut got = GetCachedExecutionRequest::decode(&broken.encode_to_vec()[..]).unwrap();
        assert!(got.decode_interface().is_err());
    }
}
