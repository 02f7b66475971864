//! Every vector of tests/data/key-vectors.json (docs/key.md), through the
//! library and through the ComputeCacheKey RPC of a real server.

mod common;

use serde_json::Value;
use stepcache::proto::{ComputeCacheKeyRequest, TaskInterface};
use stepcache::{json, key};

fn vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/key-vectors.json"
    ))
    .unwrap();
    let v: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(v.len() >= 20, "the vector file is complete");
    assert!(
        v.iter().any(|v| v.get("invalid").is_some()),
        "it has invalid cases"
    );
    v
}

fn interface(v: &Value) -> Option<TaskInterface> {
    json::from_value("stepcache.v1.TaskInterface", &v["interface"]).ok()
}

#[test]
fn library_reproduces_every_vector() {
    for v in vectors() {
        let name = v["name"].as_str().unwrap();
        let got = interface(&v)
            .ok_or(())
            .and_then(|ti| key::cache_key(&ti).map_err(|_| ()));
        match v.get("cache_key").and_then(Value::as_str) {
            Some(want) => assert_eq!(
                got.map(|k| k.to_string()),
                Ok(want.to_string()),
                "vector {name}"
            ),
            None => assert!(got.is_err(), "vector {name} must be rejected"),
        }
    }
}

/// The key from an interface's bytes (GetCachedExecution's fast path) gives
/// each valid vector's key and never keys an invalid one.
#[test]
fn keys_from_bytes_reproduce_every_vector() {
    use prost::Message;
    let limits = stepcache::validate::Limits::default();
    let (mut fast, mut valid) = (0, 0);
    for v in vectors() {
        let name = v["name"].as_str().unwrap();
        let Some(ti) = interface(&v) else { continue };
        let got = stepcache::validate::interface_bytes(&ti.encode_to_vec(), &limits);
        match v.get("cache_key").and_then(Value::as_str) {
            Some(want) => {
                valid += 1;
                if let Some(k) = got {
                    fast += 1;
                    assert_eq!(k.to_string(), want, "vector {name}");
                }
            }
            None => assert!(got.is_none(), "vector {name} must be rejected"),
        }
    }
    assert_eq!(fast, valid, "every valid vector takes the fast path");
}

#[tokio::test]
async fn rpc_reproduces_every_vector() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::TestServer::start(dir.path()).await;
    let mut cache = server.cache().await;
    for v in vectors() {
        let name = v["name"].as_str().unwrap();
        let ti = interface(&v).expect("vectors parse as TaskInterface");
        let got = cache
            .compute_cache_key(ComputeCacheKeyRequest {
                interface: Some(ti),
            })
            .await;
        match v.get("cache_key").and_then(Value::as_str) {
            Some(want) => {
                let resp = got
                    .unwrap_or_else(|e| panic!("vector {name}: {e}"))
                    .into_inner();
                assert_eq!(resp.cache_key, want, "vector {name}");
                assert!(resp
                    .canonical_fields
                    .iter()
                    .any(|f| f.starts_with("component=")));
            }
            None => {
                let err = got.expect_err(name);
                assert_eq!(err.code(), tonic::Code::InvalidArgument, "vector {name}");
                assert!(err.message().contains("component"), "{}", err.message());
            }
        }
    }
    server.stop().await;
}
