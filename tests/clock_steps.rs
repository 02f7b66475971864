//! Clock steps: leases run on monotonic time, and a time stamped while the
//! clock ran far ahead neither carries forward nor keeps entries young.

mod common;

use std::sync::Arc;

use common::*;
use stepcache::clock::{Clock, ManualClock, SteadyClock};
use stepcache::proto::*;
use stepcache::server::Config;

const HOUR_MS: i64 = 3_600_000;
const YEAR_MS: i64 = 365 * 24 * HOUR_MS;

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

fn reserving(ti: &TaskInterface, owner: &str, lease_s: i64) -> GetCachedExecutionRequest {
    let mut req = lookup_req("ns", ti);
    req.reservation = Some(ReservationRequest {
        owner: owner.into(),
        lease: secs(lease_s),
    });
    req
}

#[tokio::test]
async fn leases_ignore_wall_clock_steps_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let wall = ManualClock::new(1_700_000_000_000);
    let mono = Arc::new(ManualClock::new(0));
    let mut config = Config::new(dir.path());
    config.clock = Arc::new(SteadyClock::with(&wall, mono.clone()));
    let server = TestServer::start_with(config).await;
    let mut cache = server.cache().await;
    let (short, long) = (iface("short", &[], &[]), iface("long", &[], &[]));
    let outcome = |r: tonic::Response<GetCachedExecutionResponse>| r.into_inner().outcome();
    let r = cache.get_cached_execution(reserving(&short, "a", 5)).await;
    assert_eq!(outcome(r.unwrap()), Outcome::Reserved);
    let r = cache
        .get_cached_execution(reserving(&long, "a", 3600))
        .await;
    assert_eq!(outcome(r.unwrap()), Outcome::Reserved);

    // The wall clock steps back 2 h while 6 s pass: the 5 s lease is over.
    wall.advance_ms(-2 * HOUR_MS);
    mono.advance_ms(6_000);
    let r = cache.get_cached_execution(reserving(&short, "b", 5)).await;
    assert_eq!(outcome(r.unwrap()), Outcome::Reserved);
    // It steps forward 1 h while 1 s passes: the 1 h lease still holds.
    wall.advance_ms(3 * HOUR_MS);
    mono.advance_ms(1_000);
    let r = cache.get_cached_execution(reserving(&long, "b", 5)).await;
    assert_eq!(outcome(r.unwrap()), Outcome::InProgress);
    server.stop().await;
}

#[tokio::test]
async fn a_time_stamped_far_ahead_neither_carries_forward_nor_stays_young() {
    let dir = tempfile::tempdir().unwrap();
    let start = 1_700_000_000_000;
    let clock = Arc::new(ManualClock::new(start));
    let server = TestServer::start_with_clock(dir.path(), clock.clone()).await;
    let mut meta = server.meta().await;
    let mut cache = server.cache().await;
    let (ahead, after) = (iface("ahead", &[], &[]), iface("after", &[], &[]));

    // Put while the clock runs 10 years ahead, then it comes back.
    clock.advance_ms(10 * YEAR_MS);
    meta.put_execution(put_req("ns", &ahead, ExecutionState::Complete, "mem://a"))
        .await
        .unwrap();
    clock.advance_ms(-10 * YEAR_MS + 1_000);

    // Not young for ever: over a 1 s staleness bound.
    let mut lookup = lookup_req("ns", &ahead);
    lookup.policy = Some(CachePolicy {
        max_staleness: secs(1),
        ..Default::default()
    });
    let r = cache
        .get_cached_execution(lookup)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), Outcome::Miss, "{}", r.reason);

    // The next record takes the clock's time, not the one ahead.
    let put = meta
        .put_execution(put_req("ns", &after, ExecutionState::Complete, "mem://b"))
        .await
        .unwrap()
        .into_inner();
    let e = meta
        .get_executions(GetExecutionsRequest {
            ids: vec![put.execution_id],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .executions
        .remove(0);
    let created = stepcache::clock::timestamp_ms(e.create_time.as_ref().unwrap());
    assert_eq!(created, clock.now_ms());

    // A prune of what is older than 1 h takes the one stamped ahead (as old
    // as it is far ahead) and keeps the new one.
    let p = meta
        .prune_executions(PruneExecutionsRequest {
            namespace: "ns".into(),
            older_than: secs(3600),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.executions_deleted, 1);
    assert!(meta
        .get_executions(GetExecutionsRequest {
            ids: vec![put.execution_id],
            ..Default::default()
        })
        .await
        .is_ok());
    server.stop().await;
}
