//! A scrape of /metrics after known traffic: exact counts per RPC and code,
//! lookups per namespace and outcome, reservations held, store size, write
//! batches and flushes.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::*;
use stepcache::proto::*;
use stepcache::server::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GET_CACHED: &str = "/stepcache.v1.CacheService/GetCachedExecution";
const PUT_EXECUTION: &str = "/stepcache.v1.MetadataStoreService/PutExecution";
const GET_EXECUTIONS: &str = "/stepcache.v1.MetadataStoreService/GetExecutions";

/// GET `path` over plain HTTP/1.1: (status line, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Sample lines as "name{labels}" -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn rpc(name: &str, method: &str, code: &str) -> String {
    format!("{name}{{method=\"{method}\",code=\"{code}\"}}")
}

/// A server with metrics on; the metrics listener's address.
async fn start_with_metrics(mut config: Config) -> (TestServer, SocketAddr) {
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let bound = config.metrics_addr.clone();
    let server = TestServer::start_with(config).await;
    // The gRPC listener accepts before `run` gets to bind the metrics one.
    for _ in 0..500 {
        if let Some(addr) = bound.get().copied() {
            return (server, addr);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the metrics listener is not bound");
}

#[tokio::test]
async fn scrape_after_traffic_counts_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = start_with_metrics(Config::new(dir.path())).await;
    let mut cache = server.cache().await;
    let mut meta = server.meta().await;

    // 1 PutExecution, then 2 hits, 1 miss, 1 disabled, 1 reserved (a miss).
    let ti = iface("train", &[("lr", num(0.1))], &[]);
    meta.put_execution(put_req("m", &ti, ExecutionState::Complete, "mem://a"))
        .await
        .unwrap();
    for _ in 0..2 {
        let r = cache
            .get_cached_execution(lookup_req("m", &ti))
            .await
            .unwrap();
        assert_eq!(r.into_inner().outcome, Outcome::Hit as i32);
    }
    let other = iface("train", &[("lr", num(0.2))], &[]);
    let r = cache
        .get_cached_execution(lookup_req("m", &other))
        .await
        .unwrap();
    assert_eq!(r.into_inner().outcome, Outcome::Miss as i32);
    let mut manual = lookup_req("m", &ti);
    manual.policy = Some(CachePolicy {
        trigger: Trigger::Manual as i32,
        ..Default::default()
    });
    let r = cache.get_cached_execution(manual).await.unwrap();
    assert_eq!(r.into_inner().outcome, Outcome::Disabled as i32);
    let mut reserve = lookup_req("m", &other);
    reserve.reservation = Some(ReservationRequest {
        owner: "worker-1".into(),
        lease: Some(prost_types::Duration {
            seconds: 600,
            nanos: 0,
        }),
    });
    let r = cache.get_cached_execution(reserve).await.unwrap();
    assert_eq!(r.into_inner().outcome, Outcome::Reserved as i32);
    // One hit in another namespace.
    meta.put_execution(put_req("n", &ti, ExecutionState::Complete, "mem://b"))
        .await
        .unwrap();
    cache
        .get_cached_execution(lookup_req("n", &ti))
        .await
        .unwrap();
    // Errors: NOT_FOUND twice, INVALID_ARGUMENT once.
    for _ in 0..2 {
        let e = meta
            .get_executions(GetExecutionsRequest {
                ids: vec![987_654],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }
    let e = cache
        .get_cached_execution(lookup_req("m", &iface("", &[], &[])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    let (status, body) = http_get(addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(body.trim_end().ends_with("# EOF"), "OpenMetrics text");
    let s = samples(&body);
    let get = |k: &str| {
        *s.get(k)
            .unwrap_or_else(|| panic!("no sample {k} in\n{body}"))
    };
    let req = "stepcache_grpc_requests_total";
    assert_eq!(get(&rpc(req, PUT_EXECUTION, "OK")), 2.0);
    assert_eq!(get(&rpc(req, GET_CACHED, "OK")), 6.0);
    assert_eq!(get(&rpc(req, GET_CACHED, "INVALID_ARGUMENT")), 1.0);
    assert_eq!(get(&rpc(req, GET_EXECUTIONS, "NOT_FOUND")), 2.0);
    let hist = "stepcache_grpc_request_duration_seconds_count";
    assert_eq!(get(&rpc(hist, GET_CACHED, "OK")), 6.0);
    assert_eq!(get(&rpc(hist, GET_EXECUTIONS, "NOT_FOUND")), 2.0);
    assert!(
        s.keys().any(
            |k| k.starts_with("stepcache_grpc_request_duration_seconds_bucket{")
                && k.contains("le=\"+Inf\"")
        ),
        "{body}"
    );
    let lookups = |ns: &str, outcome: &str| {
        get(&format!(
            "stepcache_cache_lookups_total{{namespace=\"{ns}\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(lookups("m", "hit"), 2.0);
    assert_eq!(lookups("m", "miss"), 2.0);
    assert_eq!(lookups("m", "disabled"), 1.0);
    assert_eq!(lookups("n", "hit"), 1.0);
    assert_eq!(get("stepcache_reservations_held{namespace=\"m\"}"), 1.0);
    assert!(get("stepcache_store_size_bytes") > 0.0);
    // The write path: 2 PutExecutions so far, each acknowledged after a flush.
    let sled = postgres_base().is_none();
    if sled {
        assert_eq!(get("stepcache_write_batch_writes_total"), 2.0);
        let batches = get("stepcache_write_batches_total");
        assert!((1.0..=2.0).contains(&batches), "{batches}");
        assert!(get("stepcache_write_batch_seconds_total") > 0.0);
        assert!(get("stepcache_store_flushes_total") >= 1.0);
        assert!(get("stepcache_store_flush_seconds_total") > 0.0);
    } else {
        assert!(!body.contains("stepcache_write_batches"), "{body}");
    }

    // The scrape itself is not a gRPC call; other paths are 404.
    let (status, _) = http_get(addr, "/").await;
    assert!(status.contains("404"), "{status}");

    // Releasing the reservation shows at the next scrape.
    let key = meta
        .put_execution(put_req("m", &other, ExecutionState::Complete, "mem://c"))
        .await
        .unwrap()
        .into_inner()
        .cache_key;
    assert!(!key.is_empty());
    let (_, body) = http_get(addr, "/metrics").await;
    let s = samples(&body);
    assert_eq!(s.get("stepcache_reservations_held{namespace=\"m\"}"), None);
    assert_eq!(s[&rpc(req, PUT_EXECUTION, "OK")], 3.0);
    if sled {
        assert_eq!(s["stepcache_write_batch_writes_total"], 3.0);
    }
    server.stop().await;
}

#[tokio::test]
async fn metrics_are_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path());
    let bound = config.metrics_addr.clone();
    let server = TestServer::start_with(config).await;
    assert!(bound.get().is_none());
    server.stop().await;
}

/// Sends `body` as the request message of `path`, as it is.
async fn raw_call(server: &TestServer, path: &'static str, body: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .unwrap_err()
}

/// Encodes a request as the bytes given; decodes no reply (none is expected).
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<()>;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        Default::default()
    }
}

#[tokio::test]
async fn undecodable_requests_are_invalid_argument_and_no_fault() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = start_with_metrics(Config::new(dir.path())).await;
    // A field number 0, a truncated varint, a length past the end.
    let garbage: [&[u8]; 3] = [&[0x00, 0x01], &[0x08, 0xff], &[0x0a, 0x7f, 0x01]];
    let methods = [
        GET_CACHED,
        PUT_EXECUTION,
        GET_EXECUTIONS,
        "/stepcache.v1.MetadataStoreService/ListExecutions",
        "/stepcache.v1.CacheService/WaitForCachedExecution",
    ];
    for path in methods {
        for body in garbage {
            let s = raw_call(&server, path, body.to_vec()).await;
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{path}: {s:?}");
            assert!(s.message().contains("undecodable"), "{path}: {s:?}");
        }
    }
    let (_, body) = http_get(addr, "/metrics").await;
    let s = samples(&body);
    let req = "stepcache_grpc_requests_total";
    for path in methods {
        assert_eq!(
            s.get(&rpc(req, path, "INVALID_ARGUMENT")),
            Some(&3.0),
            "{body}"
        );
        assert_eq!(s.get(&rpc(req, path, "INTERNAL")), None, "{body}");
    }
    server.stop().await;
}

/// Lookup counts and reservations held, by namespace label, after one
/// reserving lookup in team-a through a token.
async fn namespace_labels(label_with_auth: bool) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.auth = Some(std::sync::Arc::new(
        stepcache::auth::Tokens::parse("tok-a team-a\n").unwrap(),
    ));
    config.metrics_namespaces_with_auth = label_with_auth;
    let (server, addr) = start_with_metrics(config).await;
    let mut req = lookup_req("team-a", &iface("train", &[], &[]));
    req.reservation = Some(ReservationRequest {
        owner: "w".into(),
        lease: None,
    });
    let mut req = tonic::Request::new(req);
    req.metadata_mut()
        .insert("authorization", "Bearer tok-a".parse().unwrap());
    let r = server
        .cache()
        .await
        .get_cached_execution(req)
        .await
        .unwrap();
    assert_eq!(r.into_inner().outcome, Outcome::Reserved as i32);
    let (_, body) = http_get(addr, "/metrics").await;
    server.stop().await;
    samples(&body)
        .into_iter()
        .filter(|(k, _)| k.contains("namespace="))
        .map(|(k, v)| format!("{k} {v}"))
        .collect()
}

#[tokio::test]
async fn with_auth_on_metrics_name_no_namespace_unless_asked() {
    assert_eq!(
        namespace_labels(false).await,
        [
            "stepcache_cache_lookups_total{namespace=\"*\",outcome=\"miss\"} 1",
            "stepcache_reservations_held{namespace=\"*\"} 1",
        ]
    );
    assert_eq!(
        namespace_labels(true).await,
        [
            "stepcache_cache_lookups_total{namespace=\"team-a\",outcome=\"miss\"} 1",
            "stepcache_reservations_held{namespace=\"team-a\"} 1",
        ]
    );
}
