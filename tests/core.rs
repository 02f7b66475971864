//! The core service over a real socket: the seed scenario, states, namespaces,
//! restarts, the error codes of the core RPCs, and hits of every reply size
//! sharing one connection.

mod common;

use common::*;
use stepcache::proto::cache_service_client::CacheServiceClient;
use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache::proto::*;
use tonic::transport::Channel;
use tonic::Code;

fn manual() -> Option<CachePolicy> {
    Some(CachePolicy {
        trigger: Trigger::Manual as i32,
        ..Default::default()
    })
}

fn disabled() -> Option<CachePolicy> {
    Some(CachePolicy {
        enabled: Some(false),
        ..Default::default()
    })
}

/// Pipeline A -> B, B reading A's output. Returns the outcomes and B's input id.
async fn run_pipeline(
    server: &TestServer,
    ns: &str,
    policy_a: Option<CachePolicy>,
) -> (Outcome, Outcome, i64, i64) {
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let a = iface("prepare", &[("rows", num(100.0))], &[]);
    let (out_a, id_a) = run_task(&mut cache, &mut meta, ns, &a, policy_a).await;
    let b = iface("train", &[("lr", num(0.1))], &[("data", vec![id_a])]);
    let (out_b, id_b) = run_task(&mut cache, &mut meta, ns, &b, None).await;
    (out_a, out_b, id_a, id_b)
}

#[tokio::test]
async fn seed_scenario_ids_not_content_drive_downstream_hits() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;

    // Run 1: both miss and are recorded.
    let (a1, b1, ida1, idb1) = run_pipeline(&server, "", None).await;
    assert_eq!((a1, b1), (Outcome::Miss, Outcome::Miss));

    // Run 2: A hits with the same artifact ID, so B's key is unchanged and B hits.
    let (a2, b2, ida2, idb2) = run_pipeline(&server, "", None).await;
    assert_eq!((a2, b2), (Outcome::Hit, Outcome::Hit));
    assert_eq!((ida2, idb2), (ida1, idb1));

    // Run 3: A is run by hand (trigger MANUAL): it records a new artifact ID,
    // B's key differs and B misses.
    let (a3, b3, ida3, idb3) = run_pipeline(&server, "", manual()).await;
    assert_eq!((a3, b3), (Outcome::Disabled, Outcome::Miss));
    assert_ne!(ida3, ida1);
    assert_ne!(idb3, idb1);

    // Run 4: enabled=false has the same effect.
    let (a4, b4, ida4, _) = run_pipeline(&server, "", disabled()).await;
    assert_eq!((a4, b4), (Outcome::Disabled, Outcome::Miss));
    assert_ne!(ida4, ida3);

    // An explicit enabled=true wins over the MANUAL trigger.
    let mut cache = server.cache().await;
    let mut req = lookup_req("", &iface("prepare", &[("rows", num(100.0))], &[]));
    req.policy = Some(CachePolicy {
        trigger: Trigger::Manual as i32,
        enabled: Some(true),
        ..Default::default()
    });
    let resp = cache.get_cached_execution(req).await.unwrap().into_inner();
    assert_eq!(resp.outcome, Outcome::Hit as i32);
    // The newest COMPLETE execution wins.
    assert_eq!(resp.output_artifacts["out"].artifacts[0].id, ida4);
    server.stop().await;
}

#[tokio::test]
async fn disabled_reasons_and_record_cached_execution() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let ti = iface("eval", &[], &[]);
    for (policy, word) in [(manual(), "MANUAL"), (disabled(), "explicitly")] {
        let mut req = lookup_req("", &ti);
        req.policy = policy;
        let r = cache.get_cached_execution(req).await.unwrap().into_inner();
        assert_eq!(r.outcome, Outcome::Disabled as i32);
        assert!(r.reason.contains(word), "{}", r.reason);
    }
    let miss = cache
        .get_cached_execution(lookup_req("", &ti))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(miss.outcome, Outcome::Miss as i32);
    assert!(miss.reason.contains("no entry"), "{}", miss.reason);

    let put = meta
        .put_execution(put_req("", &ti, ExecutionState::Complete, "mem://eval"))
        .await
        .unwrap()
        .into_inner();
    assert!(put.published);
    assert_eq!(put.cache_key, miss.cache_key);

    let mut req = lookup_req("", &ti);
    req.record_cached_execution = true;
    let hit = cache.get_cached_execution(req).await.unwrap().into_inner();
    assert_eq!(hit.outcome, Outcome::Hit as i32);
    let orig = hit.execution.clone().unwrap();
    assert_eq!(orig.id, put.execution_id);
    let cached = hit
        .cached_execution
        .clone()
        .expect("a CACHED execution was recorded");
    assert_eq!(cached.state, ExecutionState::Cached as i32);
    assert_eq!(cached.cached_from_execution_id, put.execution_id);
    assert_eq!(cached.cache_key, put.cache_key);
    assert_ne!(cached.id, orig.id);

    // Its OUTPUT events point at the same artifact IDs.
    let events = meta
        .get_events(GetEventsRequest {
            execution_ids: vec![cached.id],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].r#type, EventType::Output as i32);
    assert_eq!(events[0].artifact_id, put.output_artifact_ids[0]);

    // A CACHED execution is never itself an index entry: the original still serves.
    let again = cache
        .get_cached_execution(lookup_req("", &ti))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.execution.unwrap().id, put.execution_id);

    // Lookup by key gives the same answer.
    let by_key = cache
        .get_cached_execution(GetCachedExecutionRequest {
            target: Some(get_cached_execution_request::Target::CacheKey(
                put.cache_key.clone(),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_key.outcome, Outcome::Hit as i32);
    assert_eq!(outputs_by_name(&by_key), outputs_by_name(&hit));
    server.stop().await;
}

#[tokio::test]
async fn failed_and_canceled_are_never_served_a_later_complete_is() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let ti = iface("flaky", &[], &[]);
    for state in [ExecutionState::Failed, ExecutionState::Canceled] {
        let put = meta
            .put_execution(put_req("", &ti, state, ""))
            .await
            .unwrap()
            .into_inner();
        assert!(!put.published);
        let r = cache
            .get_cached_execution(lookup_req("", &ti))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outcome, Outcome::Miss as i32);
    }
    // RUNNING, then updated to FAILED: still never served.
    let running = meta
        .put_execution(put_req("", &ti, ExecutionState::Running, ""))
        .await
        .unwrap()
        .into_inner();
    let mut fail = put_req("", &ti, ExecutionState::Failed, "");
    fail.execution.as_mut().unwrap().id = running.execution_id;
    fail.execution.as_mut().unwrap().interface = None;
    meta.put_execution(fail).await.unwrap();
    let r = cache
        .get_cached_execution(lookup_req("", &ti))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, Outcome::Miss as i32);

    // RUNNING updated to COMPLETE with its output: served.
    let running = meta
        .put_execution(put_req("", &ti, ExecutionState::Running, ""))
        .await
        .unwrap()
        .into_inner();
    let mut done = put_req("", &ti, ExecutionState::Complete, "mem://ok");
    done.execution.as_mut().unwrap().id = running.execution_id;
    // The update may leave the interface out: the recorded one (and key) apply.
    done.execution.as_mut().unwrap().interface = None;
    let put = meta.put_execution(done).await.unwrap().into_inner();
    assert!(put.published);
    assert_eq!(put.execution_id, running.execution_id);
    let r = cache
        .get_cached_execution(lookup_req("", &ti))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, Outcome::Hit as i32);
    assert_eq!(r.execution.as_ref().unwrap().id, running.execution_id);
    assert_eq!(r.output_artifacts["out"].artifacts[0].uri, "mem://ok");

    // skip_publish records a COMPLETE execution that is not served.
    let other = iface("unpublished", &[], &[]);
    let mut req = put_req("", &other, ExecutionState::Complete, "mem://x");
    req.skip_publish = true;
    let put = meta.put_execution(req).await.unwrap().into_inner();
    assert!(!put.published);
    let r = cache
        .get_cached_execution(lookup_req("", &other))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, Outcome::Miss as i32);
    server.stop().await;
}

#[tokio::test]
async fn namespaces_never_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let ti = iface("shared-name", &[], &[]);
    let put = meta
        .put_execution(put_req("team-a", &ti, ExecutionState::Complete, "mem://a"))
        .await
        .unwrap()
        .into_inner();
    let hit = cache
        .get_cached_execution(lookup_req("team-a", &ti))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hit.outcome, Outcome::Hit as i32);
    for ns in ["team-b", "", "default"] {
        let r = cache
            .get_cached_execution(lookup_req(ns, &ti))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outcome, Outcome::Miss as i32, "namespace {ns:?}");
    }
    // IDs of another namespace do not exist there.
    let e = meta
        .get_executions(GetExecutionsRequest {
            ids: vec![put.execution_id],
            namespace: "team-b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let consumer = iface(
        "consumer",
        &[],
        &[("data", vec![put.output_artifact_ids[0]])],
    );
    let e = meta
        .put_execution(put_req(
            "team-b",
            &consumer,
            ExecutionState::Complete,
            "mem://b",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().contains("input_artifacts.data"),
        "{}",
        e.message()
    );
    let listed = meta
        .list_executions(ListExecutionsRequest {
            namespace: "team-b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.executions.is_empty());
    server.stop().await;
}

/// With the in-memory hot cache off, every repeated hit comes from the hits
/// file (`hits.log`), which a graceful stop keeps for the next start; what
/// it serves must follow every write, before and after the restart.
#[tokio::test]
async fn hits_from_the_hits_file_follow_every_write_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut config = stepcache::server::Config::new(dir.path());
        config.store.hot_hits = 0;
        TestServer::start_with(config)
    };
    let lookup = |cache: &mut CacheServiceClient<Channel>, ti: &TaskInterface| {
        let mut cache = cache.clone();
        let req = lookup_req("ns1", ti);
        async move {
            let r = cache.get_cached_execution(req).await.unwrap().into_inner();
            (r.outcome == Outcome::Hit as i32).then(|| r.execution.unwrap().id)
        }
    };
    let server = start().await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let tis: Vec<_> = (0..6)
        .map(|i| iface("filed", &[("i", num(i as f64))], &[]))
        .collect();
    let mut puts = Vec::new();
    for ti in &tis {
        let put = put_req("ns1", ti, ExecutionState::Complete, "mem://filed");
        puts.push(meta.put_execution(put).await.unwrap().into_inner());
        // Read twice: from sled, then from the hits file.
        for _ in 0..2 {
            assert_eq!(
                lookup(&mut cache, ti).await,
                Some(puts.last().unwrap().execution_id)
            );
        }
    }
    drop((cache, meta));
    server.stop().await;
    if !on_postgres("the hits file is the embedded store's") {
        assert!(
            dir.path().join("hits.idx").exists(),
            "kept at a graceful stop"
        );
    }

    let server = start().await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    for (ti, put) in tis.iter().zip(&puts) {
        assert_eq!(lookup(&mut cache, ti).await, Some(put.execution_id));
    }
    if !on_postgres("the hits file is the embedded store's") {
        assert!(!dir.path().join("hits.idx").exists(), "taken at the start");
    }
    // Invalidation, a deleted output and a newer completion, each seen at once.
    cache
        .invalidate_cache(InvalidateCacheRequest {
            namespace: "ns1".into(),
            selector: Some(invalidate_cache_request::Selector::ExecutionId(
                puts[0].execution_id,
            )),
        })
        .await
        .unwrap();
    assert_eq!(lookup(&mut cache, &tis[0]).await, None);
    set_artifact_state(
        &mut meta,
        puts[1].output_artifact_ids[0],
        ArtifactState::Deleted,
    )
    .await;
    assert_eq!(lookup(&mut cache, &tis[1]).await, None);
    let newer = meta
        .put_execution(put_req("ns1", &tis[2], ExecutionState::Complete, "mem://2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lookup(&mut cache, &tis[2]).await, Some(newer.execution_id));
    for (ti, put) in tis.iter().zip(&puts).skip(3) {
        assert_eq!(lookup(&mut cache, ti).await, Some(put.execution_id));
    }
    drop((cache, meta));
    server.stop().await;

    // The same answers after another restart.
    let server = start().await;
    let mut cache = server.cache().await;
    assert_eq!(lookup(&mut cache, &tis[0]).await, None);
    assert_eq!(lookup(&mut cache, &tis[1]).await, None);
    assert_eq!(lookup(&mut cache, &tis[2]).await, Some(newer.execution_id));
    drop(cache);
    server.stop().await;
}

#[tokio::test]
async fn restart_keeps_every_execution_and_hit() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let mut recorded = Vec::new();
    for i in 0..20 {
        let ti = iface("persist", &[("i", num(i as f64))], &[]);
        let put = meta
            .put_execution(put_req(
                "ns1",
                &ti,
                ExecutionState::Complete,
                &format!("mem://{i}"),
            ))
            .await
            .unwrap()
            .into_inner();
        recorded.push((ti, put));
    }
    let before = snapshot(&mut meta, "ns1").await;
    drop((cache, meta));
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    let (mut cache2, mut meta2) = (server.cache().await, server.meta().await);
    assert_eq!(snapshot(&mut meta2, "ns1").await, before);
    for (ti, put) in &recorded {
        let r = cache2
            .get_cached_execution(lookup_req("ns1", ti))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outcome, Outcome::Hit as i32);
        assert_eq!(r.execution.unwrap().id, put.execution_id);
        assert_eq!(
            r.output_artifacts["out"].artifacts[0].id,
            put.output_artifact_ids[0]
        );
    }
    // New IDs never collide with the old ones.
    let new = meta2
        .put_execution(put_req(
            "ns1",
            &iface("after", &[], &[]),
            ExecutionState::Complete,
            "mem://n",
        ))
        .await
        .unwrap()
        .into_inner();
    let max_old = recorded
        .iter()
        .map(|(_, p)| p.output_artifact_ids[0].max(p.execution_id))
        .max()
        .unwrap();
    assert!(new.execution_id > max_old);
    cache = cache2;
    drop((cache, meta2));
    server.stop().await;
}

#[tokio::test]
async fn list_executions_pages_newest_first_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut meta = server.meta().await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let comp = if i % 2 == 0 { "even" } else { "odd" };
        let state = if i % 5 == 0 {
            ExecutionState::Failed
        } else {
            ExecutionState::Complete
        };
        let put = meta
            .put_execution(put_req(
                "p",
                &iface(comp, &[("i", num(i as f64))], &[]),
                state,
                "mem://x",
            ))
            .await
            .unwrap()
            .into_inner();
        ids.push((put.execution_id, comp, state, put.cache_key));
    }
    let list = |component: &str, state: ExecutionState, key: &str, size: i32, token: String| {
        ListExecutionsRequest {
            namespace: "p".into(),
            component: component.into(),
            state: state as i32,
            cache_key: key.into(),
            page_size: size,
            page_token: token,
            ..Default::default()
        }
    };
    // All, in pages of 10, newest first, each exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = meta
            .list_executions(list("", ExecutionState::Unspecified, "", 10, token))
            .await
            .unwrap()
            .into_inner();
        assert!(r.executions.len() <= 10);
        seen.extend(r.executions.iter().map(|e| e.id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    let mut want: Vec<i64> = ids.iter().map(|x| x.0).collect();
    want.reverse();
    assert_eq!(seen, want);

    let odd_complete = meta
        .list_executions(list(
            "odd",
            ExecutionState::Complete,
            "",
            100,
            String::new(),
        ))
        .await
        .unwrap()
        .into_inner();
    let want: Vec<i64> = ids
        .iter()
        .rev()
        .filter(|x| x.1 == "odd" && x.2 == ExecutionState::Complete)
        .map(|x| x.0)
        .collect();
    assert_eq!(
        odd_complete
            .executions
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>(),
        want
    );

    let by_key = meta
        .list_executions(list(
            "",
            ExecutionState::Unspecified,
            &ids[3].3,
            100,
            String::new(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_key.executions.len(), 1);
    assert_eq!(by_key.executions[0].id, ids[3].0);
    server.stop().await;
}

#[tokio::test]
async fn error_codes_leave_the_store_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let base = iface("base", &[], &[]);
    let done = meta
        .put_execution(put_req("e", &base, ExecutionState::Complete, "mem://b"))
        .await
        .unwrap()
        .into_inner();
    let before = snapshot(&mut meta, "e").await;
    assert_eq!(before.executions.len(), 1);

    let mut cases: Vec<(&str, Code, Result<(), tonic::Status>)> = Vec::new();

    let mut empty = put_req("e", &base, ExecutionState::Complete, "mem://x");
    empty
        .execution
        .as_mut()
        .unwrap()
        .interface
        .as_mut()
        .unwrap()
        .component
        .clear();
    cases.push((
        "empty component",
        Code::InvalidArgument,
        meta.put_execution(empty).await.map(drop),
    ));

    let nan = iface("nan", &[("lr", num(f64::NAN))], &[]);
    cases.push((
        "NaN parameter",
        Code::InvalidArgument,
        meta.put_execution(put_req("e", &nan, ExecutionState::Complete, ""))
            .await
            .map(drop),
    ));
    cases.push((
        "NaN in lookup",
        Code::InvalidArgument,
        cache
            .get_cached_execution(lookup_req("e", &nan))
            .await
            .map(drop),
    ));

    let mut bad_enum = put_req("e", &base, ExecutionState::Complete, "");
    bad_enum.execution.as_mut().unwrap().state = 42;
    cases.push((
        "unknown state",
        Code::InvalidArgument,
        meta.put_execution(bad_enum).await.map(drop),
    ));

    let mut bad_trigger = lookup_req("e", &base);
    bad_trigger.policy = Some(CachePolicy {
        trigger: 9,
        ..Default::default()
    });
    cases.push((
        "unknown trigger",
        Code::InvalidArgument,
        cache.get_cached_execution(bad_trigger).await.map(drop),
    ));

    let bad_hex = GetCachedExecutionRequest {
        namespace: "e".into(),
        target: Some(get_cached_execution_request::Target::CacheKey("XYZ".into())),
        ..Default::default()
    };
    cases.push((
        "bad key hex",
        Code::InvalidArgument,
        cache.get_cached_execution(bad_hex).await.map(drop),
    ));
    let broken = GetCachedExecutionRequest {
        namespace: "e".into(),
        // Field 1 (component) claims 5 bytes and has 1.
        interface_bytes: prost::bytes::Bytes::from_static(&[0x0a, 0x05, b'x']),
        ..Default::default()
    };
    cases.push((
        "an interface that does not decode",
        Code::InvalidArgument,
        cache.get_cached_execution(broken).await.map(drop),
    ));
    cases.push((
        "no target",
        Code::InvalidArgument,
        cache
            .get_cached_execution(GetCachedExecutionRequest::default())
            .await
            .map(drop),
    ));

    cases.push((
        "page_size over 1000",
        Code::InvalidArgument,
        meta.list_executions(ListExecutionsRequest {
            namespace: "e".into(),
            page_size: 1001,
            ..Default::default()
        })
        .await
        .map(drop),
    ));
    cases.push((
        "bad page token",
        Code::InvalidArgument,
        meta.list_executions(ListExecutionsRequest {
            namespace: "e".into(),
            page_token: "nope".into(),
            ..Default::default()
        })
        .await
        .map(drop),
    ));
    cases.push((
        "bad namespace",
        Code::InvalidArgument,
        cache
            .get_cached_execution(lookup_req("no spaces", &base))
            .await
            .map(drop),
    ));

    let mut undeclared = put_req("e", &base, ExecutionState::Complete, "mem://x");
    undeclared.outputs[0].name = "nope".into();
    cases.push((
        "undeclared output",
        Code::InvalidArgument,
        meta.put_execution(undeclared).await.map(drop),
    ));

    // An unknown input artifact fails the whole write, even after earlier parts
    // (a new output artifact) would have been created.
    let missing_input = iface("consumer", &[], &[("data", vec![999_999])]);
    cases.push((
        "unknown input artifact",
        Code::NotFound,
        meta.put_execution(put_req(
            "e",
            &missing_input,
            ExecutionState::Complete,
            "mem://y",
        ))
        .await
        .map(drop),
    ));
    cases.push((
        "unknown execution",
        Code::NotFound,
        meta.get_executions(GetExecutionsRequest {
            ids: vec![999_999],
            ..Default::default()
        })
        .await
        .map(drop),
    ));
    cases.push((
        "unknown artifact",
        Code::NotFound,
        meta.get_artifacts(GetArtifactsRequest {
            ids: vec![999_999],
            ..Default::default()
        })
        .await
        .map(drop),
    ));
    cases.push((
        "events of unknown execution",
        Code::NotFound,
        meta.get_events(GetEventsRequest {
            execution_ids: vec![999_999],
            ..Default::default()
        })
        .await
        .map(drop),
    ));
    let mut update_missing = put_req("e", &base, ExecutionState::Complete, "mem://z");
    update_missing.execution.as_mut().unwrap().id = 999_999;
    cases.push((
        "update unknown execution",
        Code::NotFound,
        meta.put_execution(update_missing).await.map(drop),
    ));
    let mut output_missing = put_req("e", &iface("o", &[], &[]), ExecutionState::Complete, "");
    output_missing.outputs[0].artifact.as_mut().unwrap().id = 999_999;
    cases.push((
        "unknown existing output",
        Code::NotFound,
        meta.put_execution(output_missing).await.map(drop),
    ));

    // COMPLETE is terminal.
    let mut change = put_req("e", &base, ExecutionState::Failed, "");
    change.execution.as_mut().unwrap().id = done.execution_id;
    cases.push((
        "change a COMPLETE execution",
        Code::FailedPrecondition,
        meta.put_execution(change).await.map(drop),
    ));

    let before_running = snapshot(&mut meta, "e").await;
    assert_eq!(before_running, before, "nothing so far wrote anything");
    for (name, code, result) in cases {
        let err = result.expect_err(name);
        assert_eq!(err.code(), code, "{name}: {}", err.message());
        assert!(!err.message().is_empty(), "{name} says why");
    }

    // The interface is immutable once set.
    let running = meta
        .put_execution(put_req(
            "e",
            &iface("r", &[], &[]),
            ExecutionState::Running,
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    let with_running = snapshot(&mut meta, "e").await;
    let mut other = put_req(
        "e",
        &iface("r2", &[], &[]),
        ExecutionState::Complete,
        "mem://r",
    );
    other.execution.as_mut().unwrap().id = running.execution_id;
    let err = meta.put_execution(other).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("immutable"), "{}", err.message());
    assert_eq!(snapshot(&mut meta, "e").await, with_running);

    // external_id reused with different content.
    let mut first = put_req(
        "e",
        &iface("x1", &[], &[]),
        ExecutionState::Complete,
        "mem://1",
    );
    first.execution.as_mut().unwrap().external_id = "run-7/task-1".into();
    let original = meta
        .put_execution(first.clone())
        .await
        .unwrap()
        .into_inner();
    let retry = meta
        .put_execution(first.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        retry, original,
        "an identical retry returns the original IDs"
    );
    let with_ext = snapshot(&mut meta, "e").await;
    let mut clash = first;
    clash.execution.as_mut().unwrap().interface = Some(iface("x2", &[], &[]));
    let err = meta.put_execution(clash).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(snapshot(&mut meta, "e").await, with_ext);
    server.stop().await;
}

/// Hits whose replies fall on both sides of the size at which h2 stops copying
/// a DATA frame into its write buffer (1 KiB on the server's connections,
/// which report no vectored writes: `transport`), many at once on one
/// connection, each arrive whole and as their own execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_hits_of_every_reply_size_arrive_whole_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let channel = server.channel().await;
    let mut meta = MetadataStoreServiceClient::new(channel.clone());
    let pads = [0usize, 300, 500, 600, 700, 900, 3_000, 9_000, 40_000];
    let mut tasks = Vec::new();
    for (i, pad) in pads.iter().enumerate() {
        let ti = iface(
            &format!("sized-{i}"),
            &[("pad", text(&"x".repeat(*pad)))],
            &[],
        );
        let put = meta
            .put_execution(put_req("default", &ti, ExecutionState::Complete, "mem://s"))
            .await
            .unwrap()
            .into_inner();
        tasks.push((ti, put.execution_id, put.output_artifact_ids[0]));
    }

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..8 {
        for (ti, exec_id, out_id) in tasks.iter().cloned() {
            let mut cache = CacheServiceClient::new(channel.clone());
            calls.spawn(async move {
                let resp = cache
                    .get_cached_execution(lookup_req("default", &ti))
                    .await
                    .unwrap()
                    .into_inner();
                (ti, exec_id, out_id, resp)
            });
        }
    }
    let mut sizes = Vec::new();
    while let Some(done) = calls.join_next().await {
        let (ti, exec_id, out_id, resp) = done.unwrap();
        assert_eq!(resp.outcome, Outcome::Hit as i32, "{}", resp.reason);
        let execution = resp.execution.as_ref().unwrap();
        assert_eq!(execution.id, exec_id);
        assert_eq!(execution.interface.as_ref(), Some(&ti));
        assert_eq!(outputs_by_name(&resp)["out"], vec![out_id]);
        sizes.push(prost::Message::encoded_len(&resp));
    }
    assert_eq!(sizes.len(), 8 * pads.len());
    // The replies straddle the threshold, so both of h2's paths ran.
    assert!(sizes.iter().any(|n| *n < 1024) && sizes.iter().any(|n| *n > 1024));
    server.stop().await;
}

/// A lookup's key comes from its interface's bytes when they are the usual
/// encoding, and from decoding them otherwise; either way an encoding of the
/// same interface finds the same entry.
#[tokio::test]
async fn any_encoding_of_an_interface_finds_its_entry() {
    use prost::Message;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let ti = iface("encodings", &[("lr", num(0.2)), ("seed", num(1.0))], &[]);
    let put = meta
        .put_execution(put_req("", &ti, ExecutionState::Complete, "mem://enc"))
        .await
        .unwrap()
        .into_inner();
    let lookup = |bytes: Vec<u8>| GetCachedExecutionRequest {
        interface_bytes: bytes.into(),
        ..Default::default()
    };
    let plain = ti.encode_to_vec();
    // The same interface with an earlier lr that a later entry replaces (the
    // last one counts), and with its fields in reverse order.
    let earlier = iface("encodings", &[("lr", num(0.9))], &[]);
    let mut repeated = TaskInterface {
        parameters: earlier.parameters.clone(),
        ..Default::default()
    }
    .encode_to_vec();
    repeated.extend_from_slice(&plain);
    let mut reversed = Vec::new();
    for part in [
        TaskInterface {
            output_artifacts: ti.output_artifacts.clone(),
            ..Default::default()
        },
        TaskInterface {
            input_artifacts: ti.input_artifacts.clone(),
            parameters: ti.parameters.clone(),
            ..Default::default()
        },
        TaskInterface {
            component: ti.component.clone(),
            container: ti.container.clone(),
            ..Default::default()
        },
    ] {
        reversed.extend_from_slice(&part.encode_to_vec());
    }
    for (name, bytes) in [
        ("plain", plain),
        ("repeated", repeated),
        ("reordered", reversed),
    ] {
        let hit = cache
            .get_cached_execution(lookup(bytes))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hit.outcome, Outcome::Hit as i32, "{name}");
        assert_eq!(hit.cache_key, put.cache_key, "{name}");
        assert_eq!(hit.execution.unwrap().id, put.execution_id, "{name}");
    }
    // A different interface in the same shape misses.
    let miss = cache
        .get_cached_execution(lookup(earlier.encode_to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(miss.outcome, Outcome::Miss as i32);
    server.stop().await;
}
