//! Reservations over a real socket: only the first of identical in-flight tasks
//! runs, the others wait for its result (issue 5).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use stepcache::clock::{timestamp_ms, ManualClock};
use stepcache::proto::cache_service_client::CacheServiceClient;
use stepcache::proto::*;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::Code;

fn dur(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

fn ask(owner: &str, lease_ms: i64) -> Option<ReservationRequest> {
    Some(ReservationRequest {
        owner: owner.into(),
        lease: Some(dur(lease_ms)),
    })
}

fn reserve_req(
    ns: &str,
    ti: &TaskInterface,
    owner: &str,
    lease_ms: i64,
) -> GetCachedExecutionRequest {
    let mut req = lookup_req(ns, ti);
    req.reservation = ask(owner, lease_ms);
    req
}

fn wait_req(
    ns: &str,
    key: &str,
    timeout_ms: i64,
    reservation: Option<ReservationRequest>,
) -> WaitForCachedExecutionRequest {
    WaitForCachedExecutionRequest {
        namespace: ns.into(),
        cache_key: key.into(),
        timeout: Some(dur(timeout_ms)),
        reservation,
    }
}

fn outcome(o: i32) -> Outcome {
    Outcome::try_from(o).unwrap()
}

type Waiter = JoinHandle<(
    String,
    Result<WaitForCachedExecutionResponse, tonic::Status>,
    Instant,
)>;

/// A waiter on its own connection; returns its owner name, answer and when it came.
fn spawn_waiter(
    cache: &CacheServiceClient<Channel>,
    owner: &str,
    req: WaitForCachedExecutionRequest,
) -> Waiter {
    let mut cache = cache.clone();
    let owner = owner.to_string();
    tokio::spawn(async move {
        let r = cache
            .wait_for_cached_execution(req)
            .await
            .map(|r| r.into_inner());
        (owner, r, Instant::now())
    })
}

/// Waits for the first of `waiters` to finish; returns it and the rest.
async fn first_done(
    mut waiters: Vec<Waiter>,
    within: Duration,
) -> (
    (
        String,
        Result<WaitForCachedExecutionResponse, tonic::Status>,
        Instant,
    ),
    Vec<Waiter>,
) {
    let start = Instant::now();
    loop {
        if let Some(i) = waiters.iter().position(|w| w.is_finished()) {
            let done = waiters.swap_remove(i).await.unwrap();
            return (done, waiters);
        }
        assert!(
            start.elapsed() < within,
            "no waiter answered within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_first_of_64_identical_lookups_runs_and_all_waiters_hit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let ti = iface("train", &[("lr", num(0.1))], &[]);

    // 64 drivers on 8 connections look the same task up at once.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(server.cache().await);
    }
    let lookups: Vec<_> = (0..64)
        .map(|i| {
            let mut c = clients[i % clients.len()].clone();
            let req = reserve_req("", &ti, &format!("driver-{i}"), 60_000);
            tokio::spawn(
                async move { (i, c.get_cached_execution(req).await.unwrap().into_inner()) },
            )
        })
        .collect();
    let mut answers = Vec::new();
    for l in lookups {
        answers.push(l.await.unwrap());
    }
    let reserved: Vec<_> = answers
        .iter()
        .filter(|(_, r)| outcome(r.outcome) == Outcome::Reserved)
        .collect();
    assert_eq!(reserved.len(), 1, "exactly one RESERVED");
    let (winner_i, winner) = reserved[0];
    let winner_owner = format!("driver-{winner_i}");
    assert_eq!(winner.reservation.as_ref().unwrap().owner, winner_owner);
    let key = winner.cache_key.clone();
    let in_progress: Vec<_> = answers
        .iter()
        .filter(|(_, r)| outcome(r.outcome) == Outcome::InProgress)
        .collect();
    assert_eq!(in_progress.len(), 63, "63 IN_PROGRESS");
    for (_, r) in &in_progress {
        assert_eq!(r.reservation.as_ref().unwrap().owner, winner_owner);
        assert_eq!(r.cache_key, key);
    }

    // The 63 wait (asking to take over should the winner give up).
    let waiters: Vec<Waiter> = in_progress
        .iter()
        .map(|(i, _)| {
            let owner = format!("driver-{i}");
            spawn_waiter(
                &clients[i % clients.len()],
                &owner,
                wait_req("", &key, 30_000, ask(&owner, 60_000)),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(waiters.iter().all(|w| !w.is_finished()), "they wait");

    // The winner runs the task and records it.
    let mut meta = server.meta().await;
    let mut put = put_req("", &ti, ExecutionState::Complete, "mem://model");
    put.reservation_owner = winner_owner.clone();
    let put = meta.put_execution(put).await.unwrap().into_inner();
    let put_replied = Instant::now();
    assert!(put.published && put.reservation_released);

    let mut delays = Vec::new();
    for w in waiters {
        let (owner, r, at) = w.await.unwrap();
        let r = r.unwrap();
        assert_eq!(outcome(r.outcome), Outcome::Hit, "{owner}: {r:?}");
        assert_eq!(r.execution.as_ref().unwrap().id, put.execution_id);
        assert_eq!(
            r.output_artifacts["out"].artifacts[0].id,
            put.output_artifact_ids[0]
        );
        assert!(r.reservation.is_none(), "a HIT never reserves");
        delays.push(at.saturating_duration_since(put_replied));
    }
    delays.sort();
    println!(
        "wake-up delay of 63 waiters after the PutExecution reply: p50 {:?}, p90 {:?}, max {:?}",
        percentile(&delays, 0.5),
        percentile(&delays, 0.9),
        delays[delays.len() - 1]
    );
    assert!(
        delays[delays.len() - 1] < Duration::from_secs(1),
        "waiters woke late: {delays:?}"
    );

    // A later lookup hits and reserves nothing.
    let mut cache = server.cache().await;
    let r = cache
        .get_cached_execution(reserve_req("", &ti, "late", 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(r.outcome), Outcome::Hit);
    assert!(r.reservation.is_none());
    server.stop().await;
}

#[tokio::test]
async fn a_crashed_holder_is_taken_over_by_one_waiter_after_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut cache = server.cache().await;
    let ti = iface("crashy", &[], &[]);

    // The holder reserves with a short lease, then "crashes" (no heartbeat).
    // The lease runs from the server's grant, which comes after the request
    // is sent and before the (flushed) reply arrives: count from the send.
    let sent_at = Instant::now();
    let held = cache
        .get_cached_execution(reserve_req("", &ti, "holder", 300))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(held.outcome), Outcome::Reserved);
    let key = held.cache_key.clone();

    let waiters: Vec<Waiter> = (0..4)
        .map(|i| {
            let owner = format!("waiter-{i}");
            spawn_waiter(
                &cache,
                &owner,
                wait_req("", &key, 10_000, ask(&owner, 60_000)),
            )
        })
        .collect();
    let ((new_owner, r, at), rest) = first_done(waiters, Duration::from_secs(5)).await;
    let r = r.unwrap();
    assert_eq!(outcome(r.outcome), Outcome::Reserved, "{r:?}");
    assert_eq!(r.reservation.as_ref().unwrap().owner, new_owner);
    let after = at.duration_since(sent_at);
    println!("taken over {after:?} after a 300 ms lease");
    // The store's clock counts whole milliseconds: allow it one.
    assert!(after >= Duration::from_millis(299), "{after:?}");
    assert!(after < Duration::from_secs(3), "{after:?}");

    // The others keep waiting, now on the new holder.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rest.iter().all(|w| !w.is_finished()), "one waiter only");
    let late = cache
        .wait_for_cached_execution(wait_req("", &key, 200, ask("late", 60_000)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(late.outcome), Outcome::InProgress);
    assert_eq!(late.reservation.unwrap().owner, new_owner);

    // The crashed holder cannot come back to it.
    let err = cache
        .extend_reservation(ExtendReservationRequest {
            cache_key: key.clone(),
            owner: "holder".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // The new holder completes: the rest receive its result.
    let mut meta = server.meta().await;
    let mut put = put_req("", &ti, ExecutionState::Complete, "mem://ok");
    put.reservation_owner = new_owner.clone();
    let put = meta.put_execution(put).await.unwrap().into_inner();
    for w in rest {
        let (owner, r, _) = w.await.unwrap();
        let r = r.unwrap();
        assert_eq!(outcome(r.outcome), Outcome::Hit, "{owner}");
        assert_eq!(
            r.output_artifacts["out"].artifacts[0].id,
            put.output_artifact_ids[0]
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_failed_holder_is_taken_over_at_once_and_a_release_hands_it_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let ti = iface("fragile", &[], &[]);
    let held = cache
        .get_cached_execution(reserve_req("", &ti, "holder", 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(held.outcome), Outcome::Reserved);
    let key = held.cache_key.clone();
    let waiters: Vec<Waiter> = (0..3)
        .map(|i| {
            let owner = format!("waiter-{i}");
            spawn_waiter(
                &cache,
                &owner,
                wait_req("", &key, 20_000, ask(&owner, 60_000)),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The holder records FAILED: one waiter takes over, long before the 60 s lease.
    let mut failed = put_req("", &ti, ExecutionState::Failed, "");
    failed.reservation_owner = "holder".into();
    let put = meta.put_execution(failed).await.unwrap().into_inner();
    let failed_at = Instant::now();
    assert!(!put.published && put.reservation_released);
    let ((second, r, at), rest) = first_done(waiters, Duration::from_secs(5)).await;
    let r = r.unwrap();
    assert_eq!(outcome(r.outcome), Outcome::Reserved);
    assert_eq!(r.reservation.unwrap().owner, second);
    let after = at.saturating_duration_since(failed_at);
    println!("taken over {after:?} after the holder recorded FAILED");
    assert!(after < Duration::from_secs(1), "{after:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rest.iter().all(|w| !w.is_finished()), "one waiter only");

    // The second holder gives up with ReleaseReservation: the next one takes over.
    cache
        .release_reservation(ReleaseReservationRequest {
            cache_key: key.clone(),
            owner: second.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let ((third, r, _), rest) = first_done(rest, Duration::from_secs(5)).await;
    let r = r.unwrap();
    assert_eq!(outcome(r.outcome), Outcome::Reserved);
    assert_ne!(third, second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rest.len(), 1);
    assert!(!rest[0].is_finished());

    // A FAILED write naming a lapsed owner is recorded but releases nothing.
    let mut stale = put_req("", &ti, ExecutionState::Failed, "");
    stale.reservation_owner = "holder".into();
    let put = meta.put_execution(stale).await.unwrap().into_inner();
    assert!(!put.reservation_released);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!rest[0].is_finished());

    // CANCELED by the third holder (an update without the interface) hands it on.
    let running = meta
        .put_execution(put_req("", &ti, ExecutionState::Running, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(!running.reservation_released, "RUNNING releases nothing");
    let mut cancel = put_req("", &ti, ExecutionState::Canceled, "");
    cancel.execution.as_mut().unwrap().id = running.execution_id;
    cancel.execution.as_mut().unwrap().interface = None;
    cancel.reservation_owner = third.clone();
    let put = meta.put_execution(cancel).await.unwrap().into_inner();
    assert!(put.reservation_released);
    let ((fourth, r, _), _) = first_done(rest, Duration::from_secs(5)).await;
    assert_eq!(outcome(r.unwrap().outcome), Outcome::Reserved, "{fourth}");
    server.stop().await;
}

#[tokio::test]
async fn distinct_keys_and_namespaces_never_block_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let blocked = iface("slow", &[], &[]);
    let held = cache
        .get_cached_execution(reserve_req("", &blocked, "holder", 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(held.outcome), Outcome::Reserved);
    let waiter = spawn_waiter(
        &cache,
        "w",
        wait_req("", &held.cache_key, 20_000, ask("w", 60_000)),
    );

    // The same task in another namespace is free.
    let r = cache
        .get_cached_execution(reserve_req("other", &blocked, "x", 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(r.outcome), Outcome::Reserved);

    let start = Instant::now();
    for i in 0..20 {
        let ti = iface("fast", &[("i", num(f64::from(i)))], &[]);
        let owner = format!("o{i}");
        let r = cache
            .get_cached_execution(reserve_req("", &ti, &owner, 60_000))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(outcome(r.outcome), Outcome::Reserved);
        let mut put = put_req("", &ti, ExecutionState::Complete, "mem://fast");
        put.reservation_owner = owner;
        let put = meta.put_execution(put).await.unwrap().into_inner();
        let r = cache
            .wait_for_cached_execution(wait_req("", &r.cache_key, 20_000, None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(outcome(r.outcome), Outcome::Hit);
        assert_eq!(r.execution.unwrap().id, put.execution_id);
    }
    // Waiting on a key nobody holds answers at once: RESERVED when asked, else MISS.
    let free = iface("free", &[], &[]);
    let key = cache
        .compute_cache_key(ComputeCacheKeyRequest {
            interface: Some(free.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .cache_key;
    let r = cache
        .wait_for_cached_execution(wait_req("", &key, 20_000, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(r.outcome), Outcome::Miss);
    let r = cache
        .wait_for_cached_execution(wait_req("", &key, 20_000, ask("me", 60_000)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(r.outcome), Outcome::Reserved);
    assert_eq!(r.reservation.unwrap().owner, "me");
    println!(
        "20 other keys reserved, published and waited on in {:?}",
        start.elapsed()
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(!waiter.is_finished(), "the blocked key still waits");
    waiter.abort();
    server.stop().await;
}

#[tokio::test]
async fn extend_release_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let server = TestServer::start_with_clock(dir.path(), clock.clone()).await;
    let mut cache = server.cache().await;
    let ti = iface("heartbeat", &[], &[]);
    let r = cache
        .get_cached_execution(reserve_req("", &ti, "a", 10_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(r.outcome), Outcome::Reserved);
    let key = r.cache_key.clone();
    let expire = |r: &Reservation| timestamp_ms(r.expire_time.as_ref().unwrap());
    assert_eq!(expire(r.reservation.as_ref().unwrap()), 1_700_000_010_000);

    let extend = |owner: &str, lease_ms: i64| ExtendReservationRequest {
        namespace: String::new(),
        cache_key: key.clone(),
        owner: owner.into(),
        lease: Some(dur(lease_ms)),
    };
    let release = |owner: &str| ReleaseReservationRequest {
        namespace: String::new(),
        cache_key: key.clone(),
        owner: owner.into(),
    };
    // Wrong owner: FAILED_PRECONDITION, both ways.
    let e = cache
        .extend_reservation(extend("b", 10_000))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("held by \"a\""), "{}", e.message());
    let e = cache.release_reservation(release("b")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // Another namespace has no such reservation.
    let mut other_ns = extend("a", 10_000);
    other_ns.namespace = "other".into();
    let e = cache.extend_reservation(other_ns).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // The holder's heartbeat moves its expiry; asking again is idempotent.
    clock.advance_ms(5_000);
    let r = cache
        .extend_reservation(extend("a", 20_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expire(r.reservation.as_ref().unwrap()), 1_700_000_025_000);
    let r = cache
        .get_cached_execution(reserve_req("", &ti, "a", 20_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(r.outcome), Outcome::Reserved);
    assert_eq!(expire(r.reservation.as_ref().unwrap()), 1_700_000_025_000);

    // A restart keeps it: b still sees a.
    server.stop().await;
    let server = TestServer::start_with_clock(dir.path(), clock.clone()).await;
    let mut cache = server.cache().await;
    let r = cache
        .get_cached_execution(reserve_req("", &ti, "b", 10_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(r.outcome), Outcome::InProgress);
    assert_eq!(r.reservation.as_ref().unwrap().owner, "a");
    // ... until its lease runs out; then a cannot extend it, and b gets it.
    clock.advance_ms(20_000);
    let e = cache
        .extend_reservation(extend("a", 10_000))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("expired"), "{}", e.message());
    let r = cache
        .get_cached_execution(reserve_req("", &ti, "b", 10_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(r.outcome), Outcome::Reserved);
    assert_eq!(r.reservation.as_ref().unwrap().owner, "b");

    // b releases: a waiter takes over at once; nobody holds it after a release.
    let waiter = spawn_waiter(&cache, "c", wait_req("", &key, 20_000, ask("c", 10_000)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    let released_at = Instant::now();
    cache.release_reservation(release("b")).await.unwrap();
    let (_, r, at) = waiter.await.unwrap();
    let r = r.unwrap();
    assert_eq!(outcome(r.outcome), Outcome::Reserved);
    assert_eq!(r.reservation.unwrap().owner, "c");
    assert!(at.saturating_duration_since(released_at) < Duration::from_secs(1));
    cache.release_reservation(release("c")).await.unwrap();
    let e = cache.release_reservation(release("c")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("nobody"), "{}", e.message());
    server.stop().await;
}

#[tokio::test]
async fn hits_and_disabled_lookups_never_reserve() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let ti = iface("policy", &[], &[]);
    let mut req = reserve_req("", &ti, "manual", 60_000);
    req.policy = Some(CachePolicy {
        trigger: Trigger::Manual as i32,
        ..Default::default()
    });
    let r = cache.get_cached_execution(req).await.unwrap().into_inner();
    assert_eq!(outcome(r.outcome), Outcome::Disabled);
    assert!(r.reservation.is_none());
    // So another driver gets it; a plain lookup (no reservation asked) says MISS.
    let r = cache
        .get_cached_execution(reserve_req("", &ti, "pipeline", 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(r.outcome), Outcome::Reserved);
    let r = cache
        .get_cached_execution(lookup_req("", &ti))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(r.outcome), Outcome::Miss);
    // A COMPLETE from anyone publishes and releases.
    let put = meta
        .put_execution(put_req("", &ti, ExecutionState::Complete, "mem://p"))
        .await
        .unwrap()
        .into_inner();
    assert!(put.published && put.reservation_released);
    let r = cache
        .get_cached_execution(reserve_req("", &ti, "third", 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(r.outcome), Outcome::Hit);
    assert!(r.reservation.is_none());
    let e = cache
        .release_reservation(ReleaseReservationRequest {
            cache_key: r.cache_key,
            owner: "pipeline".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test]
async fn bad_leases_timeouts_and_owners_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let ti = iface("args", &[], &[]);
    let key = "ab".repeat(32);
    let before = snapshot(&mut meta, "default").await;
    let zero = prost_types::Duration::default();
    let negative = dur(-1_000);
    let too_long = dur(3_600_001);

    let bad_reservations = [
        (
            ReservationRequest {
                owner: String::new(),
                lease: None,
            },
            "reservation.owner",
        ),
        (
            ReservationRequest {
                owner: "o".into(),
                lease: Some(zero),
            },
            "reservation.lease",
        ),
        (
            ReservationRequest {
                owner: "o".into(),
                lease: Some(negative),
            },
            "reservation.lease",
        ),
        (
            ReservationRequest {
                owner: "o".into(),
                lease: Some(too_long),
            },
            "reservation.lease",
        ),
    ];
    for (bad, field) in &bad_reservations {
        let mut req = lookup_req("", &ti);
        req.reservation = Some(bad.clone());
        let e = cache.get_cached_execution(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
        assert!(e.message().contains(field), "{}", e.message());
        let e = cache
            .wait_for_cached_execution(wait_req("", &key, 1_000, Some(bad.clone())))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
        assert!(e.message().contains(field), "{}", e.message());
    }
    for timeout in [zero, negative, too_long] {
        let mut req = wait_req("", &key, 1_000, None);
        req.timeout = Some(timeout);
        let e = cache.wait_for_cached_execution(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("timeout"), "{}", e.message());
    }
    let e = cache
        .wait_for_cached_execution(wait_req("", "nothex", 1_000, None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    for (owner, lease, field) in [
        ("", None, "owner"),
        ("o", Some(zero), "lease"),
        ("o", Some(too_long), "lease"),
    ] {
        let e = cache
            .extend_reservation(ExtendReservationRequest {
                cache_key: key.clone(),
                owner: owner.into(),
                lease,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(field), "{}", e.message());
    }
    let e = cache
        .release_reservation(ReleaseReservationRequest {
            cache_key: key.clone(),
            owner: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Nothing was reserved by the bad calls: a good one gets it.
    let r = cache
        .get_cached_execution(reserve_req("", &ti, "good", 1_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(r.outcome), Outcome::Reserved);
    assert_eq!(snapshot(&mut meta, "default").await, before);
    server.stop().await;
}

#[tokio::test]
async fn a_server_shutting_down_answers_its_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut cache = server.cache().await;
    let ti = iface("long", &[], &[]);
    let r = cache
        .get_cached_execution(reserve_req("", &ti, "holder", 60_000))
        .await
        .unwrap()
        .into_inner();
    let waiters: Vec<Waiter> = (0..3)
        .map(|i| {
            let owner = format!("w{i}");
            spawn_waiter(
                &cache,
                &owner,
                wait_req("", &r.cache_key, 60_000, ask(&owner, 60_000)),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("shutdown does not hang on waiters");
    println!("stopped with 3 waiters in {:?}", stopped.elapsed());
    for w in waiters {
        let (_, r, _) = w.await.unwrap();
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("shutting down"), "{}", e.message());
    }
}
