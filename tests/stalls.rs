//! Clients that stall or idle through raw HTTP/2 and TCP: they hold no
//! admission capacity, their calls and connections end, and normal clients
//! and health keep being served.

mod common;

use std::time::Duration;

use common::*;
use h2::client::{ResponseFuture, SendRequest};
use h2::SendStream;
use prost::bytes::Bytes;
use stepcache::proto::*;
use stepcache::server::Config;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::Code;

fn host(server: &TestServer) -> String {
    server.addr.trim_start_matches("http://").to_string()
}

/// An HTTP/2 connection; its driver runs in the background.
async fn h2_connect(server: &TestServer) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(host(server)).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn grpc_request(server: &TestServer, path: &str) -> http::Request<()> {
    http::Request::post(format!("{}{path}", server.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// A GetExecutions call that sends the 5-byte prefix of a 1000-byte message,
/// then nothing.
async fn stalled_call(
    server: &TestServer,
    send: &SendRequest<Bytes>,
) -> (ResponseFuture, SendStream<Bytes>) {
    let mut send = send.clone().ready().await.unwrap();
    let req = grpc_request(server, "/stepcache.v1.MetadataStoreService/GetExecutions");
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(Bytes::from_static(&[0, 0, 0, 0x03, 0xe8]), false)
        .unwrap();
    (resp, body)
}

async fn health_ok(server: &TestServer) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(r.into_inner().status, 1, "SERVING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_calls_hold_no_admission_and_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.admission.max_in_flight = 4;
    config.admission.body_timeout = Duration::from_secs(2);
    let server = TestServer::start_with(config).await;
    // 2 connections x 10 calls that never finish their message.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let send = h2_connect(&server).await;
        for _ in 0..10 {
            stalled.push(stalled_call(&server, &send).await);
        }
    }
    // Let the server see their headers.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Five times the admission limit of normal calls, one after another.
    let mut meta = server.meta().await;
    for _ in 0..20 {
        let err = meta
            .get_executions(GetExecutionsRequest {
                ids: vec![12_345],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    health_ok(&server).await;

    // Each stalled call is answered DEADLINE_EXCEEDED after body_timeout.
    for (resp, _body) in stalled {
        let resp = tokio::time::timeout(Duration::from_secs(30), resp)
            .await
            .expect("a stalled call is answered")
            .unwrap();
        let status = resp.headers().get("grpc-status").map(|v| v.as_bytes());
        assert_eq!(status, Some(&b"4"[..]), "{resp:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_connection_carries_at_most_max_streams_calls() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.connections.max_streams_per_connection = 7;
    let server = TestServer::start_with(config).await;
    let tcp = TcpStream::connect(host(&server)).await.unwrap();
    let (send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // One health call brings the server's SETTINGS.
    let call = async {
        let mut send = send.ready().await.unwrap();
        let req = grpc_request(&server, "/grpc.health.v1.Health/Check");
        let (resp, mut body) = send.send_request(req, false).unwrap();
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .unwrap();
        resp.await.unwrap()
    };
    let resp = tokio::select! {
        r = call => r,
        _ = &mut conn => panic!("the connection ended"),
    };
    assert_eq!(resp.status(), 200);
    assert_eq!(conn.max_concurrent_send_streams(), 7);
    drop(conn);
    server.stop().await;
}

/// Whether the server closes `stream` within `within` (EOF or an error).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // the server's SETTINGS
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_excess_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.connections.max_connections = 2;
    config.connections.idle_timeout = Duration::from_secs(4);
    let server = TestServer::start_with(config).await;
    // The start-up probe's connection is gone once health answers on another.
    health_ok(&server).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Two connections that never speak take the two places...
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(host(&server)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so a third is closed as soon as it is accepted, long before the
    // idle timeout.
    let mut third = TcpStream::connect(host(&server)).await.unwrap();
    assert!(closed_within(&mut third, Duration::from_secs(2)).await);
    // The idle ones are closed after the idle timeout.
    for s in &mut idle {
        assert!(closed_within(s, Duration::from_secs(20)).await);
    }
    // Then normal clients and health are served again.
    health_ok(&server).await;
    let err = server
        .meta()
        .await
        .get_executions(GetExecutionsRequest {
            ids: vec![1],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await;
}
