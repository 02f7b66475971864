//! Property tests: the key is invariant under map/env/volume order and changes
//! with any hashed field; no input makes validation or the key panic.

use proptest::prelude::*;
use prost::Message;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::{json, Map};
use stepcache::json;
use stepcache::key::cache_key;
use stepcache::proto::*;
use stepcache::validate::{self, Limits};

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_.é-]{0,8}"
}

fn finite() -> impl Strategy<Value = f64> {
    prop::num::f64::NORMAL | prop::num::f64::ZERO | prop::num::f64::SUBNORMAL
}

fn scalar() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        finite().prop_map(|x| json!(x)),
        ".{0,6}".prop_map(serde_json::Value::String),
    ]
}

/// A protojson TaskInterface as a list of (key, value) pairs per map, so the
/// test decides the order in which the JSON object lists them.
#[derive(Debug, Clone)]
struct Spec {
    component: String,
    image: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    volumes: Vec<String>,
    params: Vec<(String, serde_json::Value)>,
    inputs: Vec<(String, Vec<i64>)>,
    outputs: Vec<(String, String)>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        name(),
        ".{0,10}",
        prop::collection::vec(".{0,5}", 0..4),
        prop::collection::btree_map(name(), ".{0,5}", 0..5),
        prop::collection::vec(name(), 0..5),
        prop::collection::btree_map(name(), scalar(), 0..6),
        prop::collection::btree_map(name(), prop::collection::vec(1i64..1_000_000, 0..4), 0..4),
        prop::collection::btree_map(name(), name(), 0..4),
    )
        .prop_map(
            |(component, image, command, env, volumes, params, inputs, outputs)| Spec {
                component,
                image,
                command,
                env: env.into_iter().collect(),
                volumes,
                params: params.into_iter().collect(),
                inputs: inputs.into_iter().collect(),
                outputs: outputs.into_iter().collect(),
            },
        )
}

fn object<V: Clone>(
    pairs: &[(String, V)],
    f: impl Fn(&V) -> serde_json::Value,
) -> serde_json::Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(k.clone(), f(v));
    }
    serde_json::Value::Object(m)
}

fn to_json(s: &Spec) -> serde_json::Value {
    json!({
        "component": s.component,
        "container": {
            "image": s.image,
            "command": s.command,
            "env": object(&s.env, |v| json!(v)),
            "volumes": s.volumes,
        },
        "parameters": object(&s.params, |v| v.clone()),
        "inputArtifacts": object(&s.inputs, |ids| json!({ "ids": ids })),
        "output_artifacts": object(&s.outputs, |v| json!(v)),
    })
}

fn key_of(v: &serde_json::Value) -> String {
    let ti: TaskInterface = json::from_value("stepcache.v1.TaskInterface", v).unwrap();
    cache_key(&ti).unwrap().to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn order_of_maps_env_and_volumes_does_not_matter(s in spec(), seed in any::<u64>()) {
        let mut shuffled = s.clone();
        let rot = |n: usize| if n == 0 { 0 } else { (seed as usize) % n };
        let r = rot(shuffled.env.len()); shuffled.env.rotate_left(r);
        let r = rot(shuffled.params.len()); shuffled.params.rotate_left(r);
        shuffled.params.reverse();
        let r = rot(shuffled.inputs.len()); shuffled.inputs.rotate_left(r);
        shuffled.outputs.reverse();
        shuffled.volumes.reverse();
        if let Some(v) = s.volumes.first() { shuffled.volumes.push(v.clone()); }
        prop_assert_eq!(key_of(&to_json(&s)), key_of(&to_json(&shuffled)));
    }

    #[test]
    fn any_change_to_a_hashed_field_changes_the_key(s in spec(), which in 0usize..9, extra in "[a-z]{1,4}", x in finite()) {
        let before = key_of(&to_json(&s));
        let mut t = s.clone();
        match which {
            0 => t.component.push_str(&extra),
            1 => t.image.push_str(&extra),
            2 => t.command.push(extra.clone()),
            3 => t.env.push((format!("NEW_{extra}"), extra.clone())),
            4 => t.volumes.push(format!("vol-new-{extra}")),
            5 => t.params.push((format!("new_{extra}"), json!(x))),
            6 => t.inputs.push((format!("new_{extra}"), vec![7])),
            7 => t.outputs.push((format!("new_{extra}"), extra.clone())),
            _ => match t.inputs.first_mut() {
                Some((_, ids)) => ids.push(1_000_001),
                None => t.inputs.push(("only".into(), vec![])),
            },
        }
        prop_assert_ne!(before, key_of(&to_json(&t)));
    }
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value { kind: None }),
        any::<f64>().prop_map(|x| Value {
            kind: Some(Kind::NumberValue(x))
        }),
        ".{0,4}".prop_map(|s| Value {
            kind: Some(Kind::StringValue(s))
        }),
        any::<bool>().prop_map(|b| Value {
            kind: Some(Kind::BoolValue(b))
        }),
        any::<i32>().prop_map(|n| Value {
            kind: Some(Kind::NullValue(n))
        }),
    ];
    leaf.prop_recursive(6, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|values| Value {
                kind: Some(Kind::ListValue(ListValue { values }))
            }),
            prop::collection::btree_map(".{0,3}", inner, 0..4).prop_map(|fields| Value {
                kind: Some(Kind::StructValue(Struct { fields }))
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Arbitrary structured requests (any f64 including NaN, any enum number,
    /// any ID, deep values): validation answers Ok or an error, never panics.
    #[test]
    fn validation_never_panics_on_structured_input(
        component in ".{0,6}",
        params in prop::collection::btree_map(".{0,3}", value(), 0..4),
        ids in prop::collection::vec(any::<i64>(), 0..4),
        state in any::<i32>(),
        id in any::<i64>(),
        ns in ".{0,6}",
        outputs in prop::collection::vec((".{0,3}", any::<i64>(), any::<i32>()), 0..3),
        ttl in (any::<i64>(), any::<i32>()),
    ) {
        let ti = TaskInterface {
            component,
            parameters: params,
            input_artifacts: [("in".to_string(), ArtifactIds { ids })].into(),
            output_artifacts: [("out".to_string(), "t".to_string())].into(),
            ..Default::default()
        };
        let _ = cache_key(&ti);
        let req = PutExecutionRequest {
            execution: Some(Execution {
                id,
                namespace: ns,
                interface: Some(ti),
                state,
                cache_ttl: Some(prost_types::Duration { seconds: ttl.0, nanos: ttl.1 }),
                ..Default::default()
            }),
            outputs: outputs
                .into_iter()
                .map(|(name, id, st)| OutputArtifact { name, artifact: Some(Artifact { id, state: st, ..Default::default() }) })
                .collect(),
            ..Default::default()
        };
        let _ = validate::execution_write(req, &Limits::default());
    }

    /// Arbitrary bytes decoded as requests, then validated: never a panic.
    #[test]
    fn validation_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(req) = PutExecutionRequest::decode(bytes.as_slice()) {
            let _ = validate::execution_write(req, &Limits::default());
        }
        if let Ok(ti) = TaskInterface::decode(bytes.as_slice()) {
            let _ = validate::interface(&ti, "interface", &Limits::default());
        }
        if let Ok(a) = Artifact::decode(bytes.as_slice()) {
            let _ = validate::artifact(a, "artifact", &Limits::default());
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = validate::parse_page_token(&text);
        let _ = validate::namespace(&text);
        let _ = text.parse::<stepcache::key::CacheKey>();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The key from an interface's bytes (`validate::interface_bytes`, the
    /// lookups' fast path) is given for every generated interface (scalar
    /// parameters) and equals decoding and validating; for any edit of those
    /// bytes it is either that same answer or left to the full path.
    #[test]
    fn keys_from_bytes_agree_with_decoding(
        s in spec(),
        ignore_some in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..4),
    ) {
        let mut ti: TaskInterface = json::from_value("stepcache.v1.TaskInterface", &to_json(&s)).unwrap();
        if ignore_some {
            ti.ignore_inputs = s.params.iter().map(|p| p.0.clone()).take(1)
                .chain(s.inputs.iter().map(|i| i.0.clone()).take(1))
                .chain(["not-an-input".to_string()])
                .collect();
        }
        let limits = Limits::default();
        let slow = |b: &[u8]| {
            TaskInterface::decode(b).ok().and_then(|ti| validate::interface(&ti, "interface", &limits).ok())
        };
        let bytes = ti.encode_to_vec();
        let fast = validate::interface_bytes(&bytes, &limits);
        prop_assert!(fast.is_some(), "a generated interface takes the fast path");
        prop_assert_eq!(fast, slow(&bytes));
        let mut edited = bytes.clone();
        for (at, byte, op) in edits {
            if edited.is_empty() {
                break;
            }
            let i = at.index(edited.len());
            match op {
                0 => edited[i] = byte,
                1 => { edited.remove(i); }
                _ => edited.insert(i, byte),
            }
        }
        if let Some(k) = validate::interface_bytes(&edited, &limits) {
            prop_assert_eq!(Some(k), slow(&edited));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// The same with any parameter values (any f64, NaN included, any null
    /// enum number, lists and structs nested up to 6 deep): the fast path's
    /// key, whenever it gives one, is that of decoding and validating.
    #[test]
    fn keys_from_bytes_agree_with_decoding_on_any_values(
        params in prop::collection::btree_map(".{0,3}", value(), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let ti = TaskInterface {
            component: "c".into(),
            parameters: params,
            ..Default::default()
        };
        let limits = Limits::default();
        let slow = |b: &[u8]| {
            TaskInterface::decode(b).ok().and_then(|ti| validate::interface(&ti, "interface", &limits).ok())
        };
        let bytes = ti.encode_to_vec();
        let fast = validate::interface_bytes(&bytes, &limits);
        prop_assert_eq!(fast, slow(&bytes));
        let cut = &bytes[..cut.index(bytes.len() + 1)];
        if let Some(k) = validate::interface_bytes(cut, &limits) {
            prop_assert_eq!(Some(k), slow(cut));
        }
    }
}
