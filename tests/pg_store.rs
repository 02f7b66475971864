//! What the PostgreSQL store asks of the database: a lookup is one round
//! trip (one statement, prepared once per connection), a put a few, in one
//! transaction; IDs come from the sequence, and a database made with the
//! `id_clock` row migrates. Runs only with STEPCACHE_TEST_POSTGRES set
//! (scripts/ci-postgres.sh).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use stepcache::proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay in front of PostgreSQL that counts round trips: each time a
/// client sends after the server has answered it.
struct Relay {
    addr: SocketAddr,
    turns: Arc<AtomicUsize>,
}

async fn relay(target: SocketAddr) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let turns = Arc::new(AtomicUsize::new(0));
    let t = turns.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(target).await.unwrap();
            tokio::spawn(pipe(client, server, t.clone()));
        }
    });
    Relay { addr, turns }
}

async fn pipe(client: TcpStream, server: TcpStream, turns: Arc<AtomicUsize>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let answered = Arc::new(AtomicBool::new(true));
    let a = answered.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = cr.read(&mut buf).await {
            if a.swap(false, Ordering::SeqCst) {
                turns.fetch_add(1, Ordering::SeqCst);
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n @ 1..) = sr.read(&mut buf).await {
            answered.store(true, Ordering::SeqCst);
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// `url` with its host:port replaced by `addr`; and the host:port it had.
fn via(url: &str, addr: SocketAddr) -> (String, SocketAddr) {
    let at = url.find('@').unwrap() + 1;
    let slash = at + url[at..].find('/').unwrap();
    let target = url[at..slash].parse().unwrap();
    (format!("{}{addr}{}", &url[..at], &url[slash..]), target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lookup_is_one_round_trip_and_a_put_a_few() {
    let Some((url, _)) = fresh_database("rt").await else {
        return;
    };
    let (_, target) = via(&url, "127.0.0.1:1".parse().unwrap());
    let relay = relay(target).await;
    let (relayed, _) = via(&url, relay.addr);
    let dir = tempfile::tempdir().unwrap();
    // Hits from PostgreSQL, not from memory (those take no round trip).
    let mut config = stepcache::server::Config::new(dir.path());
    config.store_url = Some(relayed.clone());
    config.store.hot_hits = 0;
    let server = TestServer::start_with(config).await;
    let mut meta = server.meta().await;
    let mut cache = server.cache().await;
    let ti = |n: usize| iface("rt", &[("n", num(n as f64))], &[]);
    let put = |n: usize| put_req("default", &ti(n), ExecutionState::Complete, "mem://rt");
    // Warm up: every statement prepared on the connection a serial client uses.
    for n in 0..3 {
        meta.put_execution(put(n)).await.unwrap();
        cache
            .get_cached_execution(lookup_req("default", &ti(n)))
            .await
            .unwrap();
    }

    let before = relay.turns.load(Ordering::SeqCst);
    for _ in 0..50 {
        let r = cache
            .get_cached_execution(lookup_req("default", &ti(1)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outcome(), Outcome::Hit);
        assert_eq!(outputs_by_name(&r).len(), 1);
    }
    let lookups = relay.turns.load(Ordering::SeqCst) - before;
    assert_eq!(lookups, 50, "round trips of 50 hits");

    // A miss that reserves: the lookup; BEGIN with the key's lock and the
    // lookup again; the reservation's row; its write with COMMIT. Four each
    // (a little slack: see the puts below).
    let reserve = |n: usize| {
        let mut req = lookup_req("default", &ti(n));
        req.reservation = Some(ReservationRequest {
            owner: "me".into(),
            lease: None,
        });
        req
    };
    cache.get_cached_execution(reserve(200)).await.unwrap();
    let before = relay.turns.load(Ordering::SeqCst);
    for n in 201..211 {
        let r = cache.get_cached_execution(reserve(n)).await.unwrap();
        assert_eq!(r.into_inner().outcome(), Outcome::Reserved);
    }
    let reserving = relay.turns.load(Ordering::SeqCst) - before;
    assert!(
        reserving <= 10 * 4 + 4,
        "round trips of 10 misses that reserve: {reserving}"
    );

    let before = relay.turns.load(Ordering::SeqCst);
    for n in 100..120 {
        meta.put_execution(put(n)).await.unwrap();
    }
    let puts = relay.turns.load(Ordering::SeqCst) - before;
    eprintln!("50 hits: {lookups} round trips; 10 reserving misses: {reserving}; 20 puts: {puts}");
    // Three each: BEGIN with the locks and IDs; the inserts with the read of
    // the key's reservation; COMMIT with the release and NOTIFY. Up to four
    // counted: a pipeline may leave in two writes, and an answer to the first
    // arriving before the second counts as a turn here. (Before pipelining:
    // about fifteen.)
    assert!(puts <= 20 * 4, "round trips of 20 puts: {puts}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_id_clock_database_migrates_to_ids_past_every_id_in_use() {
    let Some((url, _)) = fresh_database("mig").await else {
        return;
    };
    // The schema as version 1 left it, with a row above the sequence.
    pg_batch(
        &url,
        &format!(
            "{}\nCREATE TABLE schema_migrations (version integer PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO schema_migrations (version) VALUES (1);
             UPDATE id_clock SET last_ms = 1700000000000;
             INSERT INTO contexts (id, namespace, type, name, record) \
             VALUES (7000, 'default', 't', 'n', '');",
            include_str!("../migrations/0001_init.sql")
        ),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let server = server_on(&url, dir.path()).await;
    let mut meta = server.meta().await;
    let ids = meta
        .put_artifacts(PutArtifactsRequest {
            artifacts: vec![Artifact {
                uri: "mem://a".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .artifact_ids;
    assert!(ids[0] > 7000, "a new ID below one in use: {ids:?}");
    let got = meta
        .get_artifacts(GetArtifactsRequest {
            ids: ids.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .artifacts;
    assert_eq!(got[0].uri, "mem://a");
    server.stop().await;

    let version: i32 = pg_rows(&url, "SELECT max(version) FROM schema_migrations").await[0].get(0);
    assert_eq!(version, 3);
    let clock: Option<String> =
        pg_rows(&url, "SELECT to_regclass('id_clock')::text").await[0].get(0);
    assert_eq!(clock, None, "the id_clock table is gone");
}
