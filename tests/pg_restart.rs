//! A PostgreSQL restart under two replicas in mid-traffic: the calls in
//! flight fail UNAVAILABLE, both replicas serve again without a restart of
//! their own, no acknowledged write is lost, and reservations and waiters
//! carry on. Its own test binary: stopping the cluster would fail any test
//! running beside it. Runs only with STEPCACHE_TEST_POSTGRES and
//! STEPCACHE_TEST_PG_CTL set (scripts/ci-postgres.sh sets both).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use stepcache::proto::*;
use tonic::Code;

/// Runs `$STEPCACHE_TEST_PG_CTL <args>` (pg_ctl on the test cluster).
async fn pg_ctl(ctl: &str, args: &[&str]) {
    let (ctl, args) = (
        ctl.to_string(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(ctl)
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "pg_ctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Puts of new tasks in a loop until `stop`: the execution IDs acknowledged
/// (with their interfaces), and the codes of the failures.
async fn puts_until(
    server: &TestServer,
    writer: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<(i64, TaskInterface)>, Vec<Code>) {
    let mut meta = server.meta().await;
    let (mut acked, mut failures) = (Vec::new(), Vec::new());
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let ti = iface(
            "restart",
            &[("w", num(writer as f64)), ("n", num(n as f64))],
            &[],
        );
        match meta
            .put_execution(put_req("default", &ti, ExecutionState::Complete, "mem://r"))
            .await
        {
            Ok(r) => acked.push((r.into_inner().execution_id, ti)),
            Err(s) => failures.push(s.code()),
        }
    }
    (acked, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_restart_mid_traffic_fails_unavailable_and_loses_no_acknowledged_write() {
    let Some(ctl) = test_env(
        "STEPCACHE_TEST_PG_CTL",
        "restarting PostgreSQL needs pg_ctl on the test cluster; scripts/ci-postgres.sh sets it",
    ) else {
        return;
    };
    let Some((url, _)) = fresh_database("restart").await else {
        return;
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = server_on(&url, dirs[0].path()).await;
    let b = server_on(&url, dirs[1].path()).await;

    // A task reserved through replica 1, a waiter for it on replica 2.
    let held = iface("held", &[], &[]);
    let mut req = lookup_req("default", &held);
    req.reservation = Some(ReservationRequest {
        owner: "holder".into(),
        lease: Some(prost_types::Duration {
            seconds: 120,
            nanos: 0,
        }),
    });
    let r = a
        .cache()
        .await
        .get_cached_execution(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), Outcome::Reserved);
    let mut wb = b.cache().await;
    let key = r.cache_key.clone();
    let waiter = tokio::spawn(async move {
        wb.wait_for_cached_execution(WaitForCachedExecutionRequest {
            namespace: "default".into(),
            cache_key: key,
            timeout: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            reservation: None,
        })
        .await
    });

    // Writes through both replicas while PostgreSQL stops and starts again.
    let stop = Arc::new(AtomicBool::new(false));
    let (a, b) = (Arc::new(a), Arc::new(b));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (s, stop) = (if w % 2 == 0 { a.clone() } else { b.clone() }, stop.clone());
            tokio::spawn(async move { puts_until(&s, w, stop).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg_ctl(&ctl, &["stop", "-m", "fast"]).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    pg_ctl(&ctl, &["start"]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut acked, mut failures) = (Vec::new(), Vec::new());
    for w in writers {
        let (ack, fail) = w.await.unwrap();
        acked.extend(ack);
        failures.extend(fail);
    }
    assert!(
        !failures.is_empty(),
        "no write failed while PostgreSQL was down"
    );
    assert!(
        failures.iter().all(|c| *c == Code::Unavailable),
        "failures while PostgreSQL restarted: {failures:?}"
    );
    eprintln!(
        "{} puts acknowledged, {} failed UNAVAILABLE across the restart",
        acked.len(),
        failures.len()
    );

    // Both replicas serve again without a restart, and every acknowledged
    // write is there.
    for s in [&a, &b] {
        let mut meta = s.meta().await;
        let mut cache = s.cache().await;
        let ids: Vec<i64> = acked.iter().map(|(id, _)| *id).collect();
        let got = meta
            .get_executions(GetExecutionsRequest {
                ids: ids.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .executions;
        assert_eq!(got.len(), ids.len());
        let (last_id, last_ti) = acked.last().unwrap();
        let r = cache
            .get_cached_execution(lookup_req("default", last_ti))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outcome(), Outcome::Hit);
        assert_eq!(r.execution.unwrap().id, *last_id);
    }

    // The reservation outlived the restart: another caller still sees it
    // held; the holder's publish through replica 1 wakes the waiter on
    // replica 2 (its LISTEN connection came back).
    let mut other = lookup_req("default", &held);
    other.reservation = Some(ReservationRequest {
        owner: "other".into(),
        lease: None,
    });
    let r = b
        .cache()
        .await
        .get_cached_execution(other)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), Outcome::InProgress, "{}", r.reason);
    assert!(
        !waiter.is_finished(),
        "the waiter waits through the restart"
    );
    let mut put = put_req("default", &held, ExecutionState::Complete, "mem://held");
    put.reservation_owner = "holder".into();
    let published = a
        .meta()
        .await
        .put_execution(put)
        .await
        .unwrap()
        .into_inner();
    assert!(published.reservation_released);
    let r = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter wakes on the publish")
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), Outcome::Hit);
    assert_eq!(r.execution.unwrap().id, published.execution_id);
    for s in [a, b] {
        Arc::try_unwrap(s).ok().unwrap().stop().await;
    }
}
