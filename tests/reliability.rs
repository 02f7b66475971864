//! Reliability and security over real sockets: crashes (SIGKILL of the real
//! binary), idempotent retries, limits, load shedding, auth and TLS.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rand::Rng;
use stepcache::admission::AdmissionLimits;
use stepcache::auth::Tokens;
use stepcache::proto::cache_service_client::CacheServiceClient;
use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache::proto::*;
use stepcache::server::{Config, TlsPem};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_stepcache");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_server(dir: &std::path::Path, port: u16, extra: &[&str]) -> Child {
    Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn connect(port: u16) -> Channel {
    for _ in 0..500 {
        if let Ok(c) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("server on {port} did not come up");
}

/// One acknowledged write: what the server promised to keep.
struct Acked {
    ti: TaskInterface,
    put: PutExecutionResponse,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_write_and_leaves_nothing_partial() {
    if on_postgres("the SIGKILL test crashes a server on a sled data directory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<Acked> = Vec::new();
    let mut input_id = 0;
    let mut attempts = 0usize;
    for round in 0..4 {
        let port = free_port();
        // Every other round on one worker thread (--worker-threads 1).
        let workers: &[&str] = if round % 2 == 1 {
            &["--worker-threads", "1"]
        } else {
            &[]
        };
        let mut child = spawn_server(dir.path(), port, workers);
        let channel = connect(port).await;
        let mut meta = MetadataStoreServiceClient::new(channel.clone());
        if round == 0 {
            input_id = meta
                .put_artifacts(PutArtifactsRequest {
                    artifacts: vec![Artifact {
                        uri: "mem://in".into(),
                        ..Default::default()
                    }],
                })
                .await
                .unwrap()
                .into_inner()
                .artifact_ids[0];
        }
        // 16 writers; the server dies at a random moment while they write.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut writers = Vec::new();
        for w in 0..16 {
            let (mut meta, tx) = (meta.clone(), tx.clone());
            writers.push(tokio::spawn(async move {
                let mut sent = 0usize;
                for i in 0.. {
                    let ti = iface(
                        &format!("crash-{round}-{w}"),
                        &[("i", num(i as f64))],
                        &[("in", vec![input_id])],
                    );
                    sent += 1;
                    match meta
                        .put_execution(put_req("", &ti, ExecutionState::Complete, "mem://o"))
                        .await
                    {
                        Ok(r) => {
                            let _ = tx.send(Acked {
                                ti,
                                put: r.into_inner(),
                            });
                        }
                        Err(_) => return sent,
                    }
                }
                sent
            }));
        }
        drop(tx);
        let kill_after = rand::rng().random_range(50..400);
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for w in writers {
            attempts += w.await.unwrap();
        }
        while let Some(a) = rx.recv().await {
            acked.push(a);
        }
    }
    assert!(
        acked.len() > 50,
        "the writers got writes acknowledged: {}",
        acked.len()
    );

    // Offline integrity check of the whole store.
    let out = Command::new(BIN)
        .args(["check", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "integrity check failed:\n{report}");
    assert!(report.contains(" 0 problems"), "{report}");

    // Every acknowledged execution is there, with its events and a hit.
    let port = free_port();
    let mut child = spawn_server(dir.path(), port, &[]);
    let channel = connect(port).await;
    let (mut cache, mut meta) = (
        CacheServiceClient::new(channel.clone()),
        MetadataStoreServiceClient::new(channel),
    );
    let mut found = 0;
    for a in &acked {
        let e = meta
            .get_executions(GetExecutionsRequest {
                ids: vec![a.put.execution_id],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .executions
            .remove(0);
        assert_eq!(e.state, ExecutionState::Complete as i32);
        let events = meta
            .get_events(GetEventsRequest {
                execution_ids: vec![e.id],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        assert_eq!(events.len(), 2, "INPUT and OUTPUT of {}", e.id);
        let hit = cache
            .get_cached_execution(lookup_req("", &a.ti))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hit.outcome, Outcome::Hit as i32);
        assert_eq!(
            hit.output_artifacts["out"].artifacts[0].id,
            a.put.output_artifact_ids[0]
        );
        found += 1;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    println!(
        "crash test: attempted={attempts} acknowledged={} found={found} partial=0",
        acked.len()
    );
    assert_eq!(found, acked.len());
}

/// More concurrent writers than write threads: the writes beyond the pool
/// queue, and every one is applied once (a pool whose threads all waited for
/// a queued write would hang here). Also with the pool off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_beyond_the_write_pool_queue_and_all_complete() {
    for threads in [1, 3, 0] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path());
        config.write_threads = threads;
        let server = TestServer::start_with(config).await;
        let (meta, cache) = (server.meta().await, server.cache().await);
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let (mut m, mut c) = (meta.clone(), cache.clone());
                tokio::spawn(async move {
                    let ti = iface(&format!("w{i}"), &[], &[]);
                    // A lookup that claims the key (a write) and the put that fills it.
                    let mut look = lookup_req("wp", &ti);
                    look.reservation = Some(ReservationRequest {
                        owner: format!("worker-{i}"),
                        lease: None,
                    });
                    let r = c.get_cached_execution(look).await.unwrap().into_inner();
                    assert_eq!(r.outcome(), Outcome::Reserved);
                    let put = put_req("wp", &ti, ExecutionState::Complete, &format!("mem://{i}"));
                    m.put_execution(put).await.unwrap().into_inner()
                })
            })
            .collect();
        let mut ids = std::collections::BTreeSet::new();
        for t in tasks {
            let r = tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("writes finish")
                .unwrap();
            assert!(ids.insert(r.execution_id), "distinct executions");
        }
        let mut meta = meta;
        let snap = snapshot(&mut meta, "wp").await;
        assert_eq!(snap.executions.len(), 40, "write_threads={threads}");
        let mut cache = cache;
        let hit = cache
            .get_cached_execution(lookup_req("wp", &iface("w7", &[], &[])))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hit.outcome(), Outcome::Hit);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_an_external_id_never_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let meta = server.meta().await;
    let ti = iface("retry", &[], &[]);
    let mut req = put_req("rt", &ti, ExecutionState::Complete, "mem://r");
    req.execution.as_mut().unwrap().external_id = "run-1/retry".into();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (mut m, r) = (meta.clone(), req.clone());
            tokio::spawn(async move { m.put_execution(r).await.unwrap().into_inner() })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let mut meta = meta;
    results.push(meta.put_execution(req.clone()).await.unwrap().into_inner());
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "every retry got the original IDs"
    );
    let snap = snapshot(&mut meta, "rt").await;
    assert_eq!(snap.executions.len(), 1);
    assert_eq!(snap.artifacts.len(), 1);

    // The same for artifacts.
    let art = Artifact {
        namespace: "rt".into(),
        uri: "mem://a".into(),
        external_id: "ds-1".into(),
        ..Default::default()
    };
    let a1 = meta
        .put_artifacts(PutArtifactsRequest {
            artifacts: vec![art.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    let a2 = meta
        .put_artifacts(PutArtifactsRequest {
            artifacts: vec![art.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a1, a2);
    let err = meta
        .put_artifacts(PutArtifactsRequest {
            artifacts: vec![Artifact {
                uri: "mem://other".into(),
                ..art
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(snapshot(&mut meta, "rt").await.artifacts.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn limits_reject_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.limits.max_message_bytes = 64 * 1024;
    config.limits.max_interface_entries = 100;
    config.limits.max_string_bytes = 1024;
    let server = TestServer::start_with(config).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    meta.put_execution(put_req(
        "lim",
        &iface("ok", &[], &[]),
        ExecutionState::Complete,
        "mem://ok",
    ))
    .await
    .unwrap();
    let before = snapshot(&mut meta, "lim").await;

    let big = iface("big", &[("blob", text(&"x".repeat(100 * 1024)))], &[]);
    let err = meta
        .put_execution(put_req("lim", &big, ExecutionState::Complete, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("too large"), "{}", err.message());

    let params: Vec<(String, prost_types::Value)> =
        (0..101).map(|i| (format!("p{i}"), num(i as f64))).collect();
    let mut many = iface("many", &[], &[]);
    many.parameters = params.into_iter().collect();
    let err = meta
        .put_execution(put_req("lim", &many, ExecutionState::Complete, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_interface_entries"),
        "{}",
        err.message()
    );
    let err = cache
        .get_cached_execution(lookup_req("lim", &many))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let long = iface(&"c".repeat(2000), &[], &[]);
    let err = meta
        .put_execution(put_req("lim", &long, ExecutionState::Complete, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("max_string_bytes"),
        "{}",
        err.message()
    );

    let err = meta
        .put_execution(put_req(
            "lim",
            &iface("neg", &[], &[("x", vec![-5])]),
            ExecutionState::Complete,
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(snapshot(&mut meta, "lim").await, before);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_quickly_and_health_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path());
    config.admission = AdmissionLimits {
        max_in_flight: 8,
        max_waiters: 4,
        ..Default::default()
    };
    let server = TestServer::start_with(config).await;
    let channel = server.channel().await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut meta = MetadataStoreServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut shed) = (0u32, 0u32);
            let mut i = 0;
            while tokio::time::Instant::now() < deadline {
                i += 1;
                let ti = iface(&format!("load-{w}"), &[("i", num(i as f64))], &[]);
                let call =
                    meta.put_execution(put_req("", &ti, ExecutionState::Complete, "mem://l"));
                match tokio::time::timeout(Duration::from_secs(5), call).await {
                    Err(_) => panic!("a request hung"),
                    Ok(Ok(_)) => ok += 1,
                    Ok(Err(s))
                        if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) =>
                    {
                        shed += 1
                    }
                    Ok(Err(s)) => panic!("unexpected error {s:?}"),
                }
            }
            (ok, shed)
        }));
    }
    // The health service is outside the limit: it answers during the load.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let mut health_ok = 0;
    while tokio::time::Instant::now() < deadline {
        let r = tokio::time::timeout(
            Duration::from_secs(2),
            health.check(tonic_health::pb::HealthCheckRequest::default()),
        )
        .await
        .expect("health answered in time")
        .unwrap();
        assert_eq!(r.into_inner().status, 1);
        health_ok += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        let (o, s) = t.await.unwrap();
        ok += o;
        shed += s;
    }
    println!("overload: ok={ok} shed={shed} health_checks={health_ok}");
    assert!(
        ok > 0 && shed > 0,
        "some served, some shed: ok={ok} shed={shed}"
    );
    assert!(health_ok > 5);

    // Waiters have their own limit.
    let mut waits = Vec::new();
    for _ in 0..5 {
        let mut cache = CacheServiceClient::new(channel.clone());
        waits.push(tokio::spawn(async move {
            cache
                .wait_for_cached_execution(WaitForCachedExecutionRequest {
                    cache_key: "0".repeat(64),
                    timeout: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 300_000_000,
                    }),
                    reservation: None,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().outcome)
                .map_err(|s| s.code())
        }));
    }
    for w in waits {
        let r = w.await.unwrap();
        assert!(matches!(r, Ok(_) | Err(Code::ResourceExhausted)), "{r:?}");
    }

    // A client deadline (grpc-timeout) is honoured: a long wait ends at the deadline.
    let mut cache = CacheServiceClient::new(channel.clone());
    let mut holder = lookup_req("", &iface("deadline", &[], &[]));
    holder.reservation = Some(ReservationRequest {
        owner: "h".into(),
        lease: None,
    });
    let key = cache
        .get_cached_execution(holder)
        .await
        .unwrap()
        .into_inner()
        .cache_key;
    let mut req = tonic::Request::new(WaitForCachedExecutionRequest {
        cache_key: key,
        timeout: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        ..Default::default()
    });
    req.set_timeout(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let err = cache.wait_for_cached_execution(req).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the deadline cut the wait"
    );
    assert!(
        matches!(err.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{err:?}"
    );
    server.stop().await;
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn auth_outcomes(channel: Channel) {
    let mut cache = CacheServiceClient::new(channel.clone());
    let mut meta = MetadataStoreServiceClient::new(channel.clone());
    let ti = iface("auth", &[], &[]);
    let err = cache
        .get_cached_execution(lookup_req("team-a", &ti))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = cache
        .get_cached_execution(with_token(lookup_req("team-a", &ti), "wrong"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(!err.message().contains("wrong"), "the token is not echoed");
    let r = cache
        .get_cached_execution(with_token(lookup_req("team-a", &ti), "tok-a"))
        .await
        .unwrap();
    assert_eq!(r.into_inner().outcome, Outcome::Miss as i32);
    let err = cache
        .get_cached_execution(with_token(lookup_req("team-b", &ti), "tok-a"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = meta
        .put_execution(with_token(
            put_req("team-b", &ti, ExecutionState::Complete, "mem://x"),
            "tok-a",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let put = meta
        .put_execution(with_token(
            put_req("team-a", &ti, ExecutionState::Complete, "mem://x"),
            "tok-a",
        ))
        .await
        .unwrap()
        .into_inner();
    // A record of a namespace the token may not use is NOT_FOUND by ID, as
    // an ID that does not exist is: IDs do not reveal other namespaces.
    let missing = put.execution_id + 1000;
    for (id, other) in [(put.execution_id, missing), (missing, put.execution_id)] {
        let get = |id| {
            with_token(
                GetExecutionsRequest {
                    ids: vec![id],
                    ..Default::default()
                },
                "tok-b",
            )
        };
        let err = meta.get_executions(get(id)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let other_err = meta.get_executions(get(other)).await.unwrap_err();
        assert_eq!(
            err.message().replace(&id.to_string(), "ID"),
            other_err.message().replace(&other.to_string(), "ID"),
            "the same answer for another namespace's ID and a missing one"
        );
    }
    let artifacts = GetArtifactsRequest {
        ids: put.output_artifact_ids.clone(),
        ..Default::default()
    };
    let err = meta
        .get_artifacts(with_token(artifacts, "tok-b"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let events = GetEventsRequest {
        execution_ids: vec![put.execution_id],
        ..Default::default()
    };
    let err = meta
        .get_events(with_token(events, "tok-b"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let ok = meta
        .get_executions(with_token(
            GetExecutionsRequest {
                ids: vec![put.execution_id],
                ..Default::default()
            },
            "tok-all",
        ))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().executions.len(), 1);
    let lineage = GetLineageRequest {
        start: Some(get_lineage_request::Start::ExecutionId(put.execution_id)),
        ..Default::default()
    };
    let err = meta
        .get_lineage(with_token(lineage, "tok-b"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(meta.get_lineage(with_token(lineage, "tok-a")).await.is_ok());
    let list = ListContextsRequest {
        namespace: "team-a".into(),
        ..Default::default()
    };
    let err = meta
        .list_contexts(with_token(list, "tok-b"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Health stays open for probes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
}

fn auth_config(dir: &std::path::Path) -> Config {
    let mut config = Config::new(dir);
    config.auth = Some(Arc::new(
        Tokens::parse("tok-a team-a\ntok-b team-b\ntok-all *\n").unwrap(),
    ));
    config
}

#[tokio::test]
async fn auth_over_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(auth_config(dir.path())).await;
    auth_outcomes(server.channel().await).await;
    server.stop().await;
}

#[tokio::test]
async fn auth_over_tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    let mut config = auth_config(dir.path());
    config.tls = Some(TlsPem {
        cert: cert_pem.clone().into_bytes(),
        key: key_pem.into_bytes(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(stepcache::server::run(listener, config, async {
        let _ = stopped.await;
    }));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cert_pem))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    auth_outcomes(channel).await;
    // A plaintext client cannot talk to the TLS port.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let mut cache = CacheServiceClient::new(plain);
        assert!(cache
            .get_cached_execution(lookup_req("team-a", &iface("x", &[], &[])))
            .await
            .is_err());
    }
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}

#[test]
fn a_damaged_store_is_refused_with_restore_advice() {
    if on_postgres("damages a sled data directory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    // A real store, written and closed.
    let out = Command::new(BIN)
        .args(["check", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let conf = data.join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    for b in bytes.iter_mut().step_by(3) {
        *b ^= 0xFF;
    }
    std::fs::write(&conf, bytes).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the server refuses to serve");
    assert!(err.contains("restore it from a backup"), "{err}");
}

/// sled's snapshot files in a data dir (named by the log position they cover).
fn sled_snapshots(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snap."))
        .collect();
    names.sort();
    names
}

/// A graceful stop checkpoints the store: the next open has no log to replay.
/// sled writes a new snapshot whenever its open replayed log written since the
/// last one, so an open that writes none replayed nothing.
#[tokio::test]
async fn a_graceful_stop_leaves_nothing_to_replay_at_the_next_start() {
    if on_postgres("sled's log and snapshot") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let tasks: Vec<TaskInterface> = (0..20)
        .map(|i| iface("train", &[("seed", num(f64::from(i)))], &[]))
        .collect();
    let mut outputs = Vec::new();
    for ti in &tasks {
        let (outcome, out) = run_task(&mut cache, &mut meta, "ckpt", ti, None).await;
        assert_eq!(outcome, Outcome::Miss);
        outputs.push(out);
    }
    server.stop().await;

    let after_stop = sled_snapshots(dir.path());
    assert_eq!(after_stop.len(), 1, "{after_stop:?}");
    drop(sled::open(dir.path()).unwrap());
    assert_eq!(
        sled_snapshots(dir.path()),
        after_stop,
        "opening the stopped store replayed log: the stop did not checkpoint"
    );

    // Everything written is still served.
    let server = TestServer::start(dir.path()).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    for (ti, out) in tasks.iter().zip(&outputs) {
        assert_eq!(
            run_task(&mut cache, &mut meta, "ckpt", ti, None).await,
            (Outcome::Hit, *out)
        );
    }
    server.stop().await;
}

/// With `--worker-threads 1` the service runs on tokio's current-thread
/// scheduler: waiters parked on that one thread still let the holder's write
/// through and receive its result, concurrent writes all complete, and SIGTERM
/// stops it cleanly while clients are still connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_serves_waiters_writes_and_a_graceful_stop() {
    if on_postgres("the spawned binary serves a sled data directory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_server(dir.path(), port, &["--worker-threads", "1"]);
    let channel = connect(port).await;
    let mut cache = CacheServiceClient::new(channel.clone());
    let mut meta = MetadataStoreServiceClient::new(channel.clone());
    let lease = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });

    let ti = iface("one-worker", &[("lr", num(0.1))], &[]);
    let mut req = lookup_req("w1", &ti);
    req.reservation = Some(ReservationRequest {
        owner: "holder".into(),
        lease,
    });
    let reserved = cache.get_cached_execution(req).await.unwrap().into_inner();
    assert_eq!(reserved.outcome, Outcome::Reserved as i32);

    // Waiters, each on a connection of its own.
    let mut waiters = Vec::new();
    for _ in 0..8 {
        let mut c = CacheServiceClient::new(connect(port).await);
        let req = WaitForCachedExecutionRequest {
            namespace: "w1".into(),
            cache_key: reserved.cache_key.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
            reservation: None,
        };
        waiters.push(tokio::spawn(async move {
            c.wait_for_cached_execution(req).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "a waiter answered before the write"
    );

    // Writes of other tasks go through while the waiters wait.
    let writes: Vec<_> = (0..32)
        .map(|i| {
            let mut meta = meta.clone();
            tokio::spawn(async move {
                let ti = iface("one-worker", &[("lr", num(f64::from(i)))], &[]);
                meta.put_execution(put_req("w1", &ti, ExecutionState::Complete, "mem://w"))
                    .await
            })
        })
        .collect();
    for w in writes {
        assert!(w.await.unwrap().unwrap().into_inner().published);
    }
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "a waiter answered before the write"
    );

    let mut put = put_req("w1", &ti, ExecutionState::Complete, "mem://held");
    put.reservation_owner = "holder".into();
    let put = meta.put_execution(put).await.unwrap().into_inner();
    assert!(put.reservation_released);
    for w in waiters {
        let r = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("a waiter was not answered")
            .unwrap()
            .unwrap()
            .into_inner();
        assert_eq!(r.outcome, Outcome::Hit as i32);
        assert_eq!(r.execution.unwrap().id, put.execution_id);
    }

    // SIGTERM with this client still connected: a clean exit.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut status = None;
    for _ in 0..300 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(status) = status else {
        child.kill().unwrap();
        panic!("the one-worker server did not stop within 15 s of SIGTERM");
    };
    assert!(status.success(), "{status:?}");
    drop(channel);

    // What it acknowledged is served by the next start.
    let mut child = spawn_server(dir.path(), port, &[]);
    let mut cache = CacheServiceClient::new(connect(port).await);
    let hit = cache
        .get_cached_execution(lookup_req("w1", &ti))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hit.outcome, Outcome::Hit as i32);
    assert_eq!(hit.execution.unwrap().id, put.execution_id);
    child.kill().unwrap();
    let _ = child.wait();
}
