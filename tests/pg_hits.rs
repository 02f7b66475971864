//! Hits served from memory on PostgreSQL, safe across replicas (issue 42,
//! point 5): a write answered through one replica is seen at once by a
//! lookup through the other, also after a lost LISTEN connection.
//!
//! Each case first shows that the other replica does serve the key from
//! memory: the test flags the entry invalidated behind the servers' backs
//! (no replica hears of it), and the replica still answers HIT. It then
//! unflags it, writes through replica A, and looks up through replica B.
//! Runs only with STEPCACHE_TEST_POSTGRES set (see scripts/ci-postgres.sh).

mod common;

use std::time::{Duration, Instant};

use common::*;
use stepcache::proto::*;
use tonic::transport::Channel;

type Cache = cache_service_client::CacheServiceClient<Channel>;
type Meta = metadata_store_service_client::MetadataStoreServiceClient<Channel>;

/// Two servers on one fresh database, once both serve from memory.
async fn two_replicas(
    name: &str,
) -> Option<(String, TestServer, TestServer, Vec<tempfile::TempDir>)> {
    let (url, _) = fresh_database(&format!("h_{name}")).await?;
    let dirs = vec![tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = server_on(&url, dirs[0].path()).await;
    let b = server_on(&url, dirs[1].path()).await;
    registered(&url, 2, &[]).await;
    Some((url, a, b, dirs))
}

/// Waits until `n` replicas hold a lease, none of them as a row of `old`;
/// their rows.
async fn registered(url: &str, n: usize, old: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = url.to_string();
        // An error until the servers have created the table.
        let rows = tokio::task::spawn_blocking(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).ok()?;
            let rows = c
                .query(
                    "SELECT id FROM replicas WHERE lease_until_ms > \
                     (extract(epoch from clock_timestamp()) * 1000)::bigint",
                    &[],
                )
                .ok()?;
            Some(
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap()
        .unwrap_or_default();
        if rows.len() == n && !rows.iter().any(|r| old.contains(r)) {
            return rows;
        }
        assert!(Instant::now() < deadline, "{n} replicas never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn lookup(cache: &mut Cache, ti: &TaskInterface) -> GetCachedExecutionResponse {
    cache
        .get_cached_execution(lookup_req("default", ti))
        .await
        .unwrap()
        .into_inner()
}

fn out_id(r: &GetCachedExecutionResponse) -> i64 {
    r.output_artifacts["out"].artifacts[0].id
}

/// Runs `ti` through `a`, then has `b` keep its hit in memory, and shows it
/// does: `b` still hits while the entry is flagged invalidated behind the
/// servers' backs. Returns the key and the output id.
async fn held_in_memory(
    url: &str,
    (a_cache, a_meta): (&mut Cache, &mut Meta),
    b: &mut Cache,
    ti: &TaskInterface,
) -> (String, i64) {
    let (outcome, out) = run_task(a_cache, a_meta, "default", ti, None).await;
    assert_eq!(outcome, Outcome::Miss);
    for _ in 0..2 {
        let r = lookup(b, ti).await;
        assert_eq!(Outcome::try_from(r.outcome), Ok(Outcome::Hit));
        assert_eq!(out_id(&r), out);
    }
    let key = lookup(b, ti).await.cache_key;
    let flag =
        |v: bool| format!("UPDATE cache_entries SET invalidated = {v} WHERE cache_key = '{key}'");
    pg_batch(url, &flag(true)).await;
    let r = lookup(b, ti).await;
    assert_eq!(
        Outcome::try_from(r.outcome),
        Ok(Outcome::Hit),
        "replica B serves the key from memory"
    );
    pg_batch(url, &flag(false)).await;
    (key, out)
}

async fn invalidate(cache: &mut Cache, key: &str) -> i64 {
    cache
        .invalidate_cache(InvalidateCacheRequest {
            namespace: "default".into(),
            selector: Some(invalidate_cache_request::Selector::CacheKey(key.into())),
        })
        .await
        .unwrap()
        .into_inner()
        .invalidated
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalidation_through_one_replica_is_seen_at_once_on_the_other() {
    let Some((url, a, b, _dirs)) = two_replicas("invalidate").await else {
        return;
    };
    let (mut a_cache, mut a_meta, mut b_cache) = (a.cache().await, a.meta().await, b.cache().await);
    // Rounds of 8 keys held in B's memory, invalidated through A at once,
    // each looked up through B as soon as A has answered.
    for round in 0..6 {
        let mut held = Vec::new();
        for i in 0..8 {
            let ti = iface(&format!("inv{round}_{i}"), &[("i", num(i as f64))], &[]);
            let (key, _) =
                held_in_memory(&url, (&mut a_cache, &mut a_meta), &mut b_cache, &ti).await;
            held.push((ti, key));
        }
        let mut tasks = Vec::new();
        for (ti, key) in held {
            let (mut a, mut b) = (a_cache.clone(), b_cache.clone());
            tasks.push(tokio::spawn(async move {
                assert_eq!(invalidate(&mut a, &key).await, 1);
                lookup(&mut b, &ti).await
            }));
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(
                Outcome::try_from(r.outcome),
                Ok(Outcome::Miss),
                "round {round}: replica B served a hit replica A had invalidated"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_result_or_a_deleted_output_through_one_replica_is_seen_at_once_on_the_other() {
    let Some((url, a, b, _dirs)) = two_replicas("supersede").await else {
        return;
    };
    let (mut a_cache, mut a_meta, mut b_cache) = (a.cache().await, a.meta().await, b.cache().await);
    for i in 0..15 {
        let ti = iface(&format!("sup{i}"), &[("i", num(i as f64))], &[]);
        let (_, first) = held_in_memory(&url, (&mut a_cache, &mut a_meta), &mut b_cache, &ti).await;
        // A run that did not ask the cache publishes a newer result.
        let newer = a_meta
            .put_execution(put_req(
                "default",
                &ti,
                ExecutionState::Complete,
                "mem://newer",
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(newer.published);
        let second = newer.output_artifact_ids[0];
        assert_ne!(second, first);
        let r = lookup(&mut b_cache, &ti).await;
        assert_eq!(Outcome::try_from(r.outcome), Ok(Outcome::Hit));
        assert_eq!(
            out_id(&r),
            second,
            "round {i}: replica B served the result replica A had superseded"
        );
        // B holds the newer one now; its output deleted through A.
        assert_eq!(out_id(&lookup(&mut b_cache, &ti).await), second);
        set_artifact_state(&mut a_meta, second, ArtifactState::Deleted).await;
        let r = lookup(&mut b_cache, &ti).await;
        assert_ne!(
            r.output_artifacts.get("out").map(|l| l.artifacts[0].id),
            Some(second),
            "round {i}: replica B served an output replica A had deleted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_listen_connection_trusts_nothing_learned_before_it() {
    let Some((url, a, b, _dirs)) = two_replicas("lost").await else {
        return;
    };
    let (mut a_cache, mut a_meta, mut b_cache) = (a.cache().await, a.meta().await, b.cache().await);
    let mut rows = registered(&url, 2, &[]).await;
    for i in 0..3 {
        let ti = iface(&format!("lost{i}"), &[("i", num(i as f64))], &[]);
        let (key, _) = held_in_memory(&url, (&mut a_cache, &mut a_meta), &mut b_cache, &ti).await;
        // Both replicas lose their LISTEN connections; the invalidation
        // commits while they reconnect, so its NOTIFY reaches neither.
        let listeners = format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = '{}' AND datname = current_database()",
            stepcache::pg::LISTEN_APPLICATION_NAME
        );
        let terminated = pg_rows(&url, &listeners).await;
        assert_eq!(terminated.len(), 2, "both replicas' LISTEN connections");
        assert_eq!(invalidate(&mut a_cache, &key).await, 1);
        for (who, cache) in [("B", &mut b_cache), ("A", &mut a_cache)] {
            let r = lookup(cache, &ti).await;
            assert_eq!(
                Outcome::try_from(r.outcome),
                Ok(Outcome::Miss),
                "round {i}: replica {who} served a hit invalidated while it reconnected"
            );
        }
        // Both serve from memory again once registered anew.
        rows = registered(&url, 2, &rows).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_never_acknowledges_holds_writes_only_until_its_lease_ends() {
    let Some((url, a, _b, _dirs)) = two_replicas("ghost").await else {
        return;
    };
    let (mut a_cache, mut a_meta) = (a.cache().await, a.meta().await);
    let ti = iface("ghost", &[], &[]);
    let (outcome, _) = run_task(&mut a_cache, &mut a_meta, "default", &ti, None).await;
    assert_eq!(outcome, Outcome::Miss);
    let key = lookup(&mut a_cache, &ti).await.cache_key;
    // A replica that died without leaving: registered, 2 s of lease left,
    // no LISTEN loop to acknowledge anything.
    pg_batch(
        &url,
        "INSERT INTO replicas (id, lease_until_ms) VALUES \
         ('ghost', (extract(epoch from clock_timestamp()) * 1000)::bigint + 2000)",
    )
    .await;
    let started = Instant::now();
    assert_eq!(invalidate(&mut a_cache, &key).await, 1);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
        "the write answered after {waited:?}, not when the ghost's lease ended"
    );
    // Its lease ended: the next write does not wait for it.
    let started = Instant::now();
    let (outcome, _) = run_task(&mut a_cache, &mut a_meta, "default", &ti, None).await;
    assert_eq!(outcome, Outcome::Miss);
    assert!(started.elapsed() < Duration::from_millis(1500));
}
