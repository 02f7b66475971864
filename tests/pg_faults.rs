//! The PostgreSQL store when its connections fail: calls in flight fail
//! UNAVAILABLE (never INTERNAL), and the server recovers by itself, without a
//! restart. Runs only with STEPCACHE_TEST_POSTGRES set (scripts/ci-postgres.sh).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use stepcache::proto::*;
use tonic::Code;

/// Terminates every connection to database `db` (as an administrator, or a
/// failover, would); how many.
async fn terminate_connections(db: &str) -> usize {
    pg_rows(
        &postgres_base().unwrap(),
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{db}' AND pid <> pg_backend_pid()"
        ),
    )
    .await
    .len()
}

/// Lookups of `ti` in a loop until `stop`: the codes of the failures, and
/// how many hit.
async fn lookups_until(
    server: &TestServer,
    ti: TaskInterface,
    stop: Arc<AtomicBool>,
) -> (Vec<Code>, usize) {
    let mut c = server.cache().await;
    let (mut failures, mut hits) = (Vec::new(), 0);
    while !stop.load(Ordering::SeqCst) {
        match c.get_cached_execution(lookup_req("default", &ti)).await {
            Ok(r) => {
                assert_eq!(
                    Outcome::try_from(r.into_inner().outcome).unwrap(),
                    Outcome::Hit
                );
                hits += 1;
            }
            Err(s) => failures.push(s.code()),
        }
    }
    (failures, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_connections_fail_unavailable_and_the_pool_replaces_them() {
    let Some((url, db)) = fresh_database("kill").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = server_on(&url, dir.path()).await;
    let ti = iface("kill", &[("n", num(1.0))], &[]);
    let mut meta = server.meta().await;
    meta.put_execution(put_req("default", &ti, ExecutionState::Complete, "mem://k"))
        .await
        .unwrap();

    // Lookups in flight on several connections while every connection of
    // the database is terminated.
    let stop = Arc::new(AtomicBool::new(false));
    let server = Arc::new(server);
    let loops: Vec<_> = (0..8)
        .map(|_| {
            let (s, ti, stop) = (server.clone(), ti.clone(), stop.clone());
            tokio::spawn(async move { lookups_until(&s, ti, stop).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = terminate_connections(&db).await;
    // The pool's connections and the LISTEN connection.
    assert!(killed >= 2, "terminated {killed} connections");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let mut failures = Vec::new();
    for l in loops {
        let (f, hits) = l.await.unwrap();
        assert!(hits > 0);
        failures.extend(f);
    }
    assert!(
        failures.iter().all(|c| *c == Code::Unavailable),
        "failures while connections died: {failures:?}"
    );
    eprintln!(
        "{killed} connections terminated; {} lookups failed UNAVAILABLE",
        failures.len()
    );

    // Recovered without a restart: every call succeeds again, writes too.
    let mut cache = server.cache().await;
    for _ in 0..20 {
        let r = cache
            .get_cached_execution(lookup_req("default", &ti))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(Outcome::try_from(r.outcome).unwrap(), Outcome::Hit);
    }
    let ti2 = iface("kill", &[("n", num(2.0))], &[]);
    meta.put_execution(put_req(
        "default",
        &ti2,
        ExecutionState::Complete,
        "mem://k2",
    ))
    .await
    .unwrap();
    let r = cache
        .get_cached_execution(lookup_req("default", &ti2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(Outcome::try_from(r.outcome).unwrap(), Outcome::Hit);
    Arc::try_unwrap(server).ok().unwrap().stop().await;
}
