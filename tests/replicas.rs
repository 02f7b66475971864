//! Two stepcache replicas on one PostgreSQL database (issue 10): reservations
//! stay exclusive across replicas, a publish through one wakes waiters on the
//! other (LISTEN/NOTIFY, not polling), external_id retries meet the original.
//! Runs only with STEPCACHE_TEST_POSTGRES set (see scripts/ci-postgres.sh).

mod common;

use std::time::{Duration, Instant};

use common::*;
use stepcache::proto::*;
use tonic::Code;

fn dur(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Two servers on one fresh database; None (after saying so) without PostgreSQL.
async fn two_replicas(name: &str) -> Option<(TestServer, TestServer, Vec<tempfile::TempDir>)> {
    let (url, _) = fresh_database(&format!("r_{name}")).await?;
    let dirs = vec![tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = server_on(&url, dirs[0].path()).await;
    let b = server_on(&url, dirs[1].path()).await;
    Some((a, b, dirs))
}

fn reserve(ti: &TaskInterface, owner: &str, lease_ms: i64) -> GetCachedExecutionRequest {
    let mut req = lookup_req("default", ti);
    req.reservation = Some(ReservationRequest {
        owner: owner.into(),
        lease: Some(dur(lease_ms)),
    });
    req
}

fn wait(key: &str, timeout_ms: i64) -> WaitForCachedExecutionRequest {
    WaitForCachedExecutionRequest {
        namespace: "default".into(),
        cache_key: key.into(),
        timeout: Some(dur(timeout_ms)),
        reservation: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_reservations_across_two_replicas_grant_one() {
    let Some((a, b, _dirs)) = two_replicas("reserve").await else {
        return;
    };
    let ti = iface("train", &[("lr", num(0.1))], &[]);
    let clients = [a.cache().await, b.cache().await];
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut c = clients[i % 2].clone();
        let req = reserve(&ti, &format!("driver-{i}"), 60_000);
        tasks.push(tokio::spawn(async move {
            let r = c.get_cached_execution(req).await.unwrap().into_inner();
            (i, r)
        }));
    }
    let mut reserved = Vec::new();
    let mut in_progress = Vec::new();
    let mut key = String::new();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        key = r.cache_key.clone();
        match Outcome::try_from(r.outcome).unwrap() {
            Outcome::Reserved => reserved.push(i),
            Outcome::InProgress => in_progress.push(i),
            other => panic!("driver {i}: {other:?}"),
        }
    }
    assert_eq!(reserved.len(), 1, "exactly one RESERVED: {reserved:?}");
    assert_eq!(in_progress.len(), 63);
    let winner = reserved[0];

    // The 63 others wait on their own replica; the winner publishes through its own.
    let mut waiters = Vec::new();
    for i in &in_progress {
        let mut c = clients[i % 2].clone();
        let req = wait(&key, 30_000);
        waiters.push(tokio::spawn(async move {
            c.wait_for_cached_execution(req).await.unwrap().into_inner()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut put = put_req("default", &ti, ExecutionState::Complete, "mem://model");
    put.reservation_owner = format!("driver-{winner}");
    let published_at = Instant::now();
    let mut meta = if winner % 2 == 0 {
        a.meta().await
    } else {
        b.meta().await
    };
    let out = meta.put_execution(put).await.unwrap().into_inner();
    for w in waiters {
        let r = w.await.unwrap();
        assert_eq!(Outcome::try_from(r.outcome).unwrap(), Outcome::Hit);
        assert_eq!(
            outputs_by_name_wait(&r),
            vec![out.output_artifact_ids[0]],
            "every waiter gets the published outputs"
        );
    }
    let took = published_at.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "waiters woke {took:?} after the publish (lease 60 s, wait 30 s)"
    );
    // And the key is free: a new lookup on either replica hits.
    for c in &clients {
        let r = c
            .clone()
            .get_cached_execution(reserve(&ti, "late", 60_000))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(Outcome::try_from(r.outcome).unwrap(), Outcome::Hit);
    }
    a.stop().await;
    b.stop().await;
}

fn outputs_by_name_wait(r: &WaitForCachedExecutionResponse) -> Vec<i64> {
    r.output_artifacts["out"]
        .artifacts
        .iter()
        .map(|a| a.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_on_replica_two_wakes_on_a_publish_through_replica_one() {
    let Some((a, b, _dirs)) = two_replicas("wake").await else {
        return;
    };
    let ti = iface("prep", &[("n", num(1.0))], &[]);
    let mut ca = a.cache().await;
    let r = ca
        .get_cached_execution(reserve(&ti, "holder", 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(Outcome::try_from(r.outcome).unwrap(), Outcome::Reserved);
    let key = r.cache_key.clone();

    let mut cb = b.cache().await;
    let waiter = tokio::spawn(async move {
        let r = cb.wait_for_cached_execution(wait(&key, 30_000)).await;
        (r.map(|r| r.into_inner()), Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiter.is_finished(),
        "the waiter waits while the task runs"
    );

    let mut put = put_req("default", &ti, ExecutionState::Complete, "mem://prep");
    put.reservation_owner = "holder".into();
    let published_at = Instant::now();
    let out = a
        .meta()
        .await
        .put_execution(put)
        .await
        .unwrap()
        .into_inner();
    let (r, woke_at) = waiter.await.unwrap();
    let r = r.unwrap();
    assert_eq!(Outcome::try_from(r.outcome).unwrap(), Outcome::Hit);
    assert_eq!(r.execution.as_ref().unwrap().id, out.execution_id);
    let latency = woke_at.duration_since(published_at);
    // Woken by NOTIFY: far sooner than the lease (60 s) or the wait (30 s).
    assert!(latency < Duration::from_secs(2), "woke after {latency:?}");
    eprintln!("replica 2 woke {latency:?} after the publish through replica 1");

    // A release through replica 2 wakes a waiter on replica 1 the same way.
    let ti2 = iface("prep2", &[], &[]);
    let r = b
        .cache()
        .await
        .get_cached_execution(reserve(&ti2, "holder2", 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(Outcome::try_from(r.outcome).unwrap(), Outcome::Reserved);
    let key2 = r.cache_key.clone();
    let mut ca2 = a.cache().await;
    let k2 = key2.clone();
    let waiter = tokio::spawn(async move {
        let mut req = wait(&k2, 30_000);
        req.reservation = Some(ReservationRequest {
            owner: "taker".into(),
            lease: Some(dur(60_000)),
        });
        ca2.wait_for_cached_execution(req)
            .await
            .map(|r| r.into_inner())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released_at = Instant::now();
    b.cache()
        .await
        .release_reservation(ReleaseReservationRequest {
            namespace: "default".into(),
            cache_key: key2,
            owner: "holder2".into(),
        })
        .await
        .unwrap();
    let r = waiter.await.unwrap().unwrap();
    assert_eq!(Outcome::try_from(r.outcome).unwrap(), Outcome::Reserved);
    assert!(released_at.elapsed() < Duration::from_secs(2));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_external_id_retry_on_the_other_replica_returns_the_original() {
    let Some((a, b, _dirs)) = two_replicas("extid").await else {
        return;
    };
    let ti = iface("eval", &[], &[]);
    let mut put = put_req("default", &ti, ExecutionState::Complete, "mem://eval");
    put.execution.as_mut().unwrap().external_id = "run-7/eval".into();
    let first = a
        .meta()
        .await
        .put_execution(put.clone())
        .await
        .unwrap()
        .into_inner();
    let retry = b
        .meta()
        .await
        .put_execution(put.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.execution_id, retry.execution_id);
    assert_eq!(first.output_artifact_ids, retry.output_artifact_ids);

    // Different content under the same external_id: ALREADY_EXISTS on either.
    let mut other = put.clone();
    other.outputs[0].artifact.as_mut().unwrap().uri = "mem://other".into();
    for s in [&a, &b] {
        let err = s
            .meta()
            .await
            .put_execution(other.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    }

    // Concurrent first attempts on both replicas: one execution.
    let mut fresh = put.clone();
    fresh.execution.as_mut().unwrap().external_id = "run-8/eval".into();
    let (ma, mb) = (a.meta().await, b.meta().await);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut m = if i % 2 == 0 { ma.clone() } else { mb.clone() };
        let req = fresh.clone();
        tasks.push(tokio::spawn(async move {
            m.put_execution(req)
                .await
                .unwrap()
                .into_inner()
                .execution_id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    a.stop().await;
    b.stop().await;
}
