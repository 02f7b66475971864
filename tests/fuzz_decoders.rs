//! Fuzzing, bounded for CI: the hand-written decoders (`proto::lookup_request`,
//! `proto::lookup_reply`) and the key's wire path (`key::wire`, through
//! `validate::interface_bytes`) over arbitrary bytes and over random edits of
//! valid encodings. None may panic; the wire path's key, when it gives one,
//! is the one decoding and validating gives; whatever decodes re-encodes to
//! its own length.

use proptest::prelude::*;
use prost::Message;
use stepcache::proto::get_cached_execution_request::Target;
use stepcache::proto::*;
use stepcache::validate::{self, Limits};

/// A few valid interfaces' encodings, of every field kind.
fn seeds() -> Vec<Vec<u8>> {
    let num = |x: f64| prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(x)),
    };
    let nested = prost_types::Value {
        kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
            fields: [("a".to_string(), num(1.0))].into(),
        })),
    };
    let full = TaskInterface {
        component: "train".into(),
        cache_version: "2".into(),
        container: Some(ContainerSpec {
            image: "python:3.11".into(),
            command: vec!["python".into(), "-m".into()],
            args: vec!["x".into()],
            env: [("K".to_string(), "V".to_string())].into(),
            volumes: vec!["/data".into()],
        }),
        parameters: [("lr".to_string(), num(0.1)), ("cfg".to_string(), nested)].into(),
        input_artifacts: [("data".to_string(), ArtifactIds { ids: vec![3, 1, 2] })].into(),
        output_artifacts: [("out".to_string(), "system.Dataset".to_string())].into(),
        output_parameters: [("acc".to_string(), "double".to_string())].into(),
        ignore_inputs: vec!["data".into()],
    };
    let small = TaskInterface {
        component: "c".into(),
        ..Default::default()
    };
    vec![full.encode_to_vec(), small.encode_to_vec(), Vec::new()]
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Edit::Flip(i, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Edit::Insert(i, x)),
        any::<usize>().prop_map(Edit::Remove),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match *e {
            Edit::Flip(i, x) if !b.is_empty() => {
                let i = at(i, b.len());
                b[i] ^= x;
            }
            Edit::Insert(i, x) => {
                let i = at(i, b.len() + 1);
                b.insert(i, x);
            }
            Edit::Remove(i) if !b.is_empty() => {
                let i = at(i, b.len());
                b.remove(i);
            }
            Edit::Truncate(i) => b.truncate(at(i, b.len() + 1)),
            _ => {}
        }
    }
    b
}

/// The properties every interface encoding must have.
fn check_interface(bytes: &[u8]) -> Result<(), TestCaseError> {
    let limits = Limits::default();
    let wire = validate::interface_bytes(bytes, &limits);
    if let Some(key) = wire {
        let ti = TaskInterface::decode(bytes);
        prop_assert!(ti.is_ok(), "the wire path keyed bytes that do not decode");
        let decoded = validate::interface(&ti.unwrap(), "interface", &limits);
        prop_assert_eq!(decoded.ok(), Some(key), "the two paths' keys differ");
    }
    // As a lookup's interface field: the request decodes it lazily.
    let req = GetCachedExecutionRequest {
        namespace: "ns".into(),
        interface_bytes: bytes.to_vec().into(),
        ..Default::default()
    };
    let encoded = req.encode_to_vec();
    prop_assert_eq!(encoded.len(), req.encoded_len());
    check_request(&encoded)
}

fn check_request(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(mut r) = GetCachedExecutionRequest::decode(bytes) {
        prop_assert_eq!(r.encode_to_vec().len(), r.encoded_len());
        if r.decode_interface().is_ok() {
            prop_assert_eq!(r.encode_to_vec().len(), r.encoded_len());
            if let Some(Target::Interface(ti)) = &r.target {
                let _ = validate::interface(ti, "interface", &Limits::default());
            }
        }
    }
    Ok(())
}

fn check_replies(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(r) = GetCachedExecutionResponse::decode(bytes) {
        prop_assert_eq!(r.encode_to_vec().len(), r.encoded_len());
        let _ = r.outcome();
    }
    if let Ok(r) = WaitForCachedExecutionResponse::decode(bytes) {
        prop_assert_eq!(r.encode_to_vec().len(), r.encoded_len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_interface(&bytes)?;
        check_request(&bytes)?;
        check_replies(&bytes)?;
    }

    #[test]
    fn edits_of_valid_encodings(
        seed in 0usize..3,
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let bytes = apply(seeds()[seed].clone(), &edits);
        check_interface(&bytes)?;
        check_request(&bytes)?;
        check_replies(&bytes)?;
    }

    /// Requests made of parts: interface fields repeated, mixed with cache
    /// keys and other fields, as a client may concatenate encodings.
    #[test]
    fn concatenated_request_parts(
        parts in prop::collection::vec((0usize..3, any::<bool>(), prop::collection::vec(edit(), 0..2)), 1..8),
    ) {
        let mut body = Vec::new();
        for (seed, key, edits) in parts {
            let part = if key {
                GetCachedExecutionRequest {
                    target: Some(Target::CacheKey("ab".repeat(32))),
                    context_ids: vec![1, 2],
                    ..Default::default()
                }
                .encode_to_vec()
            } else {
                GetCachedExecutionRequest {
                    interface_bytes: seeds()[seed].clone().into(),
                    ..Default::default()
                }
                .encode_to_vec()
            };
            body.extend(apply(part, &edits));
        }
        check_request(&body)?;
    }
}
