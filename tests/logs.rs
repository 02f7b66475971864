//! What the server logs: one debug line per call with method, code and
//! latency; client errors and misses never at error level; no credentials.
//! (Its own test binary: it installs the process-wide log subscriber.)

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use stepcache::proto::*;
use tonic::metadata::MetadataValue;

const SECRET: &str = "Bearer s3cr3t-t0ken";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn one_debug_line_per_call_and_no_secrets() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .init();

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut cache = server.cache().await;
    let mut meta = server.meta().await;
    fn with_token<T>(msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut()
            .insert("authorization", MetadataValue::from_static(SECRET));
        req
    }
    let ti = iface("logged", &[("x", num(1.0))], &[]);
    let r = cache
        .get_cached_execution(with_token(lookup_req("l", &ti)))
        .await
        .unwrap();
    assert_eq!(r.into_inner().outcome, Outcome::Miss as i32);
    let e = meta
        .get_executions(with_token(GetExecutionsRequest {
            ids: vec![424_242],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = cache
        .get_cached_execution(with_token(lookup_req("l", &iface("", &[], &[]))))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    server.stop().await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rpc_lines: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "rpc")
        .collect();
    let calls: Vec<(String, String)> = rpc_lines
        .iter()
        .map(|l| {
            assert_eq!(l["level"], "DEBUG");
            assert!(l["fields"]["latency_ms"].as_f64().is_some(), "{l}");
            (
                l["fields"]["method"].as_str().unwrap().to_string(),
                l["fields"]["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        vec![
            (
                "/stepcache.v1.CacheService/GetCachedExecution".to_string(),
                "OK".to_string()
            ),
            (
                "/stepcache.v1.MetadataStoreService/GetExecutions".to_string(),
                "NOT_FOUND".to_string()
            ),
            (
                "/stepcache.v1.CacheService/GetCachedExecution".to_string(),
                "INVALID_ARGUMENT".to_string()
            ),
        ]
    );
    for l in &lines {
        assert_ne!(l["level"], "ERROR", "{l}");
        assert_ne!(l["level"], "WARN", "{l}");
    }
    assert!(!text.contains("s3cr3t"), "a credential was logged:\n{text}");
    assert!(!text.to_lowercase().contains("authorization"), "{text}");
}
