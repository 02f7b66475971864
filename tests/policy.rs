//! Cache policy and invalidation over a real socket, with an injected clock:
//! staleness, TTL, dead outputs, invalidation, explain, stats, gc and prune.

mod common;

use std::sync::Arc;

use common::*;
use prost_types::Duration;
use stepcache::clock::ManualClock;
use stepcache::proto::cache_service_client::CacheServiceClient;
use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache::proto::*;
use tonic::transport::Channel;
use tonic::Code;

const T0: i64 = 1_700_000_000_000;
const DAY_MS: i64 = 86_400_000;

fn secs(s: i64) -> Duration {
    Duration {
        seconds: s,
        nanos: 0,
    }
}

struct Env {
    clock: Arc<ManualClock>,
    server: TestServer,
    cache: CacheServiceClient<Channel>,
    meta: MetadataStoreServiceClient<Channel>,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let server = TestServer::start_with_clock(dir.path(), clock.clone()).await;
    let (cache, meta) = (server.cache().await, server.meta().await);
    Env {
        clock,
        server,
        cache,
        meta,
        _dir: dir,
    }
}

impl Env {
    /// Records a COMPLETE execution of `ti`; returns (execution id, output artifact id).
    async fn complete(
        &mut self,
        ns: &str,
        ti: &TaskInterface,
        ttl: Option<Duration>,
    ) -> (i64, i64) {
        let mut req = put_req(ns, ti, ExecutionState::Complete, "mem://out");
        req.execution.as_mut().unwrap().cache_ttl = ttl;
        let r = self.meta.put_execution(req).await.unwrap().into_inner();
        (r.execution_id, r.output_artifact_ids[0])
    }

    async fn lookup(
        &mut self,
        ns: &str,
        ti: &TaskInterface,
        max_staleness: Option<Duration>,
    ) -> GetCachedExecutionResponse {
        let mut req = lookup_req(ns, ti);
        req.policy = Some(CachePolicy {
            max_staleness,
            ..Default::default()
        });
        self.cache
            .get_cached_execution(req)
            .await
            .unwrap()
            .into_inner()
    }

    async fn set_state(&mut self, artifact_id: i64, state: ArtifactState) {
        set_artifact_state(&mut self.meta, artifact_id, state).await;
    }

    async fn invalidate(&mut self, ns: &str, selector: invalidate_cache_request::Selector) -> i64 {
        self.cache
            .invalidate_cache(InvalidateCacheRequest {
                namespace: ns.into(),
                selector: Some(selector),
            })
            .await
            .unwrap()
            .into_inner()
            .invalidated
    }
}

fn served(r: &GetCachedExecutionResponse) -> Option<i64> {
    (r.outcome == Outcome::Hit as i32).then(|| r.execution.as_ref().unwrap().id)
}

#[tokio::test]
async fn staleness_boundary_and_newest_eligible_wins() {
    let mut e = env().await;
    let ti = iface("stale", &[], &[]);
    let (old, _) = e.complete("", &ti, None).await;
    e.clock.advance_ms(5_000);
    let (new, _) = e.complete("", &ti, None).await;

    assert_eq!(
        served(&e.lookup("", &ti, None).await),
        Some(new),
        "newest wins"
    );
    e.clock.advance_ms(10_000);
    // new completed 10 s ago, old 15 s ago.
    assert_eq!(
        served(&e.lookup("", &ti, Some(secs(10))).await),
        Some(new),
        "exactly at the limit"
    );
    assert_eq!(served(&e.lookup("", &ti, Some(secs(15))).await), Some(new));
    e.clock.advance_ms(1);
    let r = e.lookup("", &ti, Some(secs(10))).await;
    assert_eq!(r.outcome, Outcome::Miss as i32);
    assert!(r.reason.contains("stale"), "{}", r.reason);
    // A looser limit still serves the newest.
    assert_eq!(served(&e.lookup("", &ti, Some(secs(11))).await), Some(new));
    // No limit at all: served.
    assert_eq!(served(&e.lookup("", &ti, None).await), Some(new));
    let _ = old;
    e.server.stop().await;
}

#[tokio::test]
async fn ttl_expiry_falls_through_to_an_older_entry() {
    let mut e = env().await;
    let ti = iface("ttl", &[], &[]);
    let (forever, _) = e.complete("", &ti, None).await;
    e.clock.advance_ms(1_000);
    let (short, _) = e.complete("", &ti, Some(secs(60))).await;
    assert_eq!(served(&e.lookup("", &ti, None).await), Some(short));
    e.clock.advance_ms(60_000);
    assert_eq!(
        served(&e.lookup("", &ti, None).await),
        Some(short),
        "at completion + ttl"
    );
    e.clock.advance_ms(1);
    assert_eq!(
        served(&e.lookup("", &ti, None).await),
        Some(forever),
        "past its ttl"
    );

    let only = iface("ttl-only", &[], &[]);
    e.complete("", &only, Some(secs(1))).await;
    e.clock.advance_ms(1_001);
    let r = e.lookup("", &only, None).await;
    assert_eq!(r.outcome, Outcome::Miss as i32);
    assert!(r.reason.contains("ttl expired"), "{}", r.reason);
    e.server.stop().await;
}

#[tokio::test]
async fn outputs_not_live_are_never_served() {
    let mut e = env().await;
    let ti = iface("dead", &[], &[]);
    let (older, older_out) = e.complete("", &ti, None).await;
    e.clock.advance_ms(1);
    let (newer, newer_out) = e.complete("", &ti, None).await;
    assert_eq!(served(&e.lookup("", &ti, None).await), Some(newer));

    e.set_state(newer_out, ArtifactState::Deleted).await;
    assert_eq!(
        served(&e.lookup("", &ti, None).await),
        Some(older),
        "falls through"
    );
    e.set_state(older_out, ArtifactState::MarkedForDeletion)
        .await;
    let r = e.lookup("", &ti, None).await;
    assert_eq!(r.outcome, Outcome::Miss as i32);
    assert!(
        r.reason.contains("outputs deleted") && r.reason.contains("2 recorded"),
        "{}",
        r.reason
    );
    // Back to LIVE: served again.
    e.set_state(older_out, ArtifactState::Live).await;
    assert_eq!(served(&e.lookup("", &ti, None).await), Some(older));
    e.server.stop().await;
}

#[tokio::test]
async fn each_invalidate_selector() {
    use invalidate_cache_request::Selector::*;
    let mut e = env().await;
    let a = iface("inv-a", &[("x", num(1.0))], &[]);
    let a2 = iface("inv-a", &[("x", num(2.0))], &[]);
    let b = iface("inv-b", &[], &[]);

    // By key: both entries of the key.
    let (_, _) = e.complete("", &a, None).await;
    let (_, _) = e.complete("", &a, None).await;
    let key = e.lookup("", &a, None).await.cache_key;
    assert_eq!(e.invalidate("", CacheKey(key.clone())).await, 2);
    let r = e.lookup("", &a, None).await;
    assert_eq!(r.outcome, Outcome::Miss as i32);
    assert!(r.reason.contains("invalidated"), "{}", r.reason);
    assert_eq!(
        e.invalidate("", CacheKey(key)).await,
        0,
        "already invalidated"
    );

    // By execution: only that one; the older one serves.
    let (first, _) = e.complete("", &b, None).await;
    let (second, second_out) = e.complete("", &b, None).await;
    assert_eq!(e.invalidate("", ExecutionId(second)).await, 1);
    assert_eq!(served(&e.lookup("", &b, None).await), Some(first));

    // By artifact: every entry whose outputs include it (a later execution that
    // re-published an existing artifact as its output counts too).
    let mut reuse = put_req("", &b, ExecutionState::Complete, "");
    reuse.outputs[0].artifact.as_mut().unwrap().id = second_out;
    let reused = e.meta.put_execution(reuse).await.unwrap().into_inner();
    assert_eq!(reused.output_artifact_ids, vec![second_out]);
    assert_eq!(
        served(&e.lookup("", &b, None).await),
        Some(reused.execution_id)
    );
    assert_eq!(
        e.invalidate("", ArtifactId(second_out)).await,
        1,
        "second was already invalidated"
    );
    assert_eq!(served(&e.lookup("", &b, None).await), Some(first));

    // By component: every key of it.
    e.complete("", &a2, None).await;
    e.complete("", &a, None).await;
    e.complete("other-ns", &a, None).await;
    assert_eq!(e.invalidate("", Component("inv-a".into())).await, 2);
    assert_eq!(e.lookup("", &a, None).await.outcome, Outcome::Miss as i32);
    assert_eq!(e.lookup("", &a2, None).await.outcome, Outcome::Miss as i32);
    assert_eq!(
        e.lookup("other-ns", &a, None).await.outcome,
        Outcome::Hit as i32,
        "namespaces apart"
    );
    assert_eq!(
        served(&e.lookup("", &b, None).await),
        Some(first),
        "other components untouched"
    );

    // Errors.
    let err = e
        .cache
        .invalidate_cache(InvalidateCacheRequest {
            namespace: "".into(),
            selector: Some(ExecutionId(987_654)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = e
        .cache
        .invalidate_cache(InvalidateCacheRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    e.server.stop().await;
}

#[tokio::test]
async fn explain_names_the_new_upstream_artifact_id() {
    let mut e = env().await;
    let (mut cache, mut meta) = (e.cache.clone(), e.meta.clone());
    let prepare = iface("prepare", &[], &[]);
    let (_, data1) = run_task(&mut cache, &mut meta, "", &prepare, None).await;
    let train1 = iface("train", &[("lr", num(0.1))], &[("data", vec![data1])]);
    let (_, _) = run_task(&mut cache, &mut meta, "", &train1, None).await;
    let manual = Some(CachePolicy {
        trigger: Trigger::Manual as i32,
        ..Default::default()
    });
    let (_, data2) = run_task(&mut cache, &mut meta, "", &prepare, manual).await;
    assert_ne!(data1, data2);

    let train2 = iface("train", &[("lr", num(0.1))], &[("data", vec![data2])]);
    assert_eq!(
        e.lookup("", &train2, None).await.outcome,
        Outcome::Miss as i32
    );
    let ex = e
        .cache
        .explain_cache_miss(ExplainCacheMissRequest {
            namespace: "".into(),
            interface: Some(train2.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ex.nearest.as_ref().unwrap().interface.as_ref(),
        Some(&train1)
    );
    assert_eq!(
        ex.differences,
        vec![format!("input_artifacts.data: [{data1}] -> [{data2}]")]
    );

    let train3 = iface("train", &[("lr", num(0.01))], &[("data", vec![data1])]);
    let ex = e
        .cache
        .explain_cache_miss(ExplainCacheMissRequest {
            namespace: "".into(),
            interface: Some(train3),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ex.differences,
        vec!["parameters.lr: 0.1 -> 0.01".to_string()]
    );

    let none = e
        .cache
        .explain_cache_miss(ExplainCacheMissRequest {
            namespace: "".into(),
            interface: Some(iface("never", &[], &[])),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.nearest.is_none() && none.differences.is_empty());
    e.server.stop().await;
}

#[tokio::test]
async fn stats_match_the_calls_made() {
    let mut e = env().await;
    let ti = iface("s", &[], &[]);
    for _ in 0..3 {
        e.lookup("st", &ti, None).await; // misses
    }
    e.complete("st", &ti, None).await;
    e.complete("st", &iface("s2", &[], &[]), None).await;
    for _ in 0..4 {
        e.lookup("st", &ti, None).await; // hits
    }
    let mut req = lookup_req("st", &ti);
    req.policy = Some(CachePolicy {
        trigger: Trigger::Resume as i32,
        ..Default::default()
    });
    let r = e
        .cache
        .get_cached_execution(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, Outcome::Disabled as i32);
    assert!(r.reason.contains("RESUME"), "{}", r.reason);
    e.lookup("elsewhere", &ti, None).await;

    let s = e
        .cache
        .get_cache_stats(GetCacheStatsRequest {
            namespace: "st".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.entries, s.hits, s.misses, s.disabled), (2, 4, 3, 1));
    let key = e.lookup("st", &ti, None).await.cache_key;
    e.invalidate("st", invalidate_cache_request::Selector::CacheKey(key))
        .await;
    let s = e
        .cache
        .get_cache_stats(GetCacheStatsRequest {
            namespace: "st".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.entries, s.hits, s.in_progress), (1, 5, 0));
    // A reserved key counts as in progress until its lease runs out.
    let mut req = lookup_req("st", &iface("s3", &[], &[]));
    req.reservation = Some(ReservationRequest {
        owner: "w1".into(),
        lease: Some(secs(30)),
    });
    let r = e
        .cache
        .get_cached_execution(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, Outcome::Reserved as i32);
    let s = e
        .cache
        .get_cache_stats(GetCacheStatsRequest {
            namespace: "st".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.misses, s.in_progress), (4, 1));
    e.clock.advance_ms(30_001);
    let s = e
        .cache
        .get_cache_stats(GetCacheStatsRequest {
            namespace: "st".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.in_progress, 0);
    e.server.stop().await;
}

#[tokio::test]
async fn gc_drops_invalidated_and_expired_entries_only() {
    let mut e = env().await;
    let keep = iface("keep", &[], &[]);
    let expire = iface("expire", &[], &[]);
    let inv = iface("inv", &[], &[]);
    e.complete("g", &keep, Some(secs(3600))).await;
    e.complete("g", &expire, Some(secs(10))).await;
    e.complete("g", &inv, None).await;
    e.complete("g2", &inv, None).await;
    let key = e.lookup("g", &inv, None).await.cache_key;
    e.invalidate("g", invalidate_cache_request::Selector::CacheKey(key))
        .await;
    e.clock.advance_ms(11_000);
    let removed = e
        .cache
        .garbage_collect_cache(GarbageCollectCacheRequest {
            namespace: "g".into(),
            all_namespaces: false,
        })
        .await
        .unwrap()
        .into_inner()
        .removed;
    assert_eq!(removed, 2);
    let s = e
        .cache
        .get_cache_stats(GetCacheStatsRequest {
            namespace: "g".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.entries, 1);
    assert_eq!(
        e.lookup("g", &keep, None).await.outcome,
        Outcome::Hit as i32
    );
    assert_eq!(
        e.lookup("g2", &inv, None).await.outcome,
        Outcome::Hit as i32
    );
    // The executions themselves stay.
    assert_eq!(snapshot(&mut e.meta, "g").await.executions.len(), 3);
    e.server.stop().await;
}

#[tokio::test]
async fn prune_leaves_no_dangling_event_or_entry() {
    let mut e = env().await;
    let (mut cache, mut meta) = (e.cache.clone(), e.meta.clone());
    // Old run: prepare -> train, plus an old execution whose output a new run consumes.
    let prepare = iface("prepare", &[], &[]);
    let (_, old_data) = run_task(&mut cache, &mut meta, "r", &prepare, None).await;
    let train = iface("train", &[], &[("data", vec![old_data])]);
    let (_, old_model) = run_task(&mut cache, &mut meta, "r", &train, None).await;
    let shared_src = iface("source", &[], &[]);
    let (_, shared_out) = run_task(&mut cache, &mut meta, "r", &shared_src, None).await;
    e.complete("other", &prepare, None).await;

    e.clock.advance_ms(40 * DAY_MS);
    let consumer = iface("consumer", &[], &[("src", vec![shared_out])]);
    let (_, new_out) = run_task(&mut cache, &mut meta, "r", &consumer, None).await;
    let before = snapshot(&mut meta, "r").await;
    assert_eq!(before.executions.len(), 4);

    let prune = |dry_run| PruneExecutionsRequest {
        namespace: "r".into(),
        older_than: Some(secs(30 * 86_400)),
        dry_run,
    };
    let dry = meta
        .prune_executions(prune(true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        snapshot(&mut meta, "r").await,
        before,
        "a dry run deletes nothing"
    );
    let done = meta
        .prune_executions(prune(false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry, done);
    // 3 old executions; events: prepare OUT, train IN+OUT, source OUT = 4;
    // artifacts: old_data and old_model (shared_out is still consumed); 3 entries.
    assert_eq!(
        (
            done.executions_deleted,
            done.events_deleted,
            done.artifacts_deleted,
            done.cache_entries_deleted
        ),
        (3, 4, 2, 3)
    );

    let after = snapshot(&mut meta, "r").await;
    assert_eq!(after.executions.len(), 1);
    let live: Vec<i64> = after.artifacts.iter().map(|a| a.id).collect();
    assert!(live.contains(&shared_out) && live.contains(&new_out));
    assert!(!live.contains(&old_data) && !live.contains(&old_model));
    for ev in &after.events {
        assert!(
            live.contains(&ev.artifact_id),
            "event points at a pruned artifact: {ev:?}"
        );
    }
    for id in [old_data, old_model] {
        let err = meta
            .get_artifacts(GetArtifactsRequest {
                ids: vec![id],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    // No index entry survives its execution: the old keys miss, the new one hits.
    assert_eq!(
        e.lookup("r", &prepare, None).await.outcome,
        Outcome::Miss as i32
    );
    assert_eq!(
        e.lookup("r", &consumer, None).await.outcome,
        Outcome::Hit as i32
    );
    let s = e
        .cache
        .get_cache_stats(GetCacheStatsRequest {
            namespace: "r".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.entries, 1);
    // Other namespaces are untouched.
    assert_eq!(
        e.lookup("other", &prepare, None).await.outcome,
        Outcome::Hit as i32
    );
    let err = meta
        .prune_executions(PruneExecutionsRequest {
            namespace: "r".into(),
            older_than: None,
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    e.server.stop().await;
}
