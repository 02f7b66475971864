//! Contexts, lineage and the list filters over a real socket.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use prost_types::Timestamp;
use stepcache::clock::ManualClock;
use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache::proto::*;
use tonic::transport::Channel;
use tonic::Code;

type Meta = MetadataStoreServiceClient<Channel>;

fn ctx(ns: &str, t: &str, name: &str) -> Context {
    Context {
        namespace: ns.into(),
        r#type: t.into(),
        name: name.into(),
        ..Default::default()
    }
}

async fn put_contexts(meta: &mut Meta, contexts: Vec<Context>) -> Vec<i64> {
    meta.put_contexts(PutContextsRequest { contexts })
        .await
        .unwrap()
        .into_inner()
        .context_ids
}

async fn list_exec_ids(meta: &mut Meta, req: ListExecutionsRequest) -> Vec<i64> {
    let mut out = Vec::new();
    let mut req = req;
    loop {
        let r = meta
            .list_executions(req.clone())
            .await
            .unwrap()
            .into_inner();
        out.extend(r.executions.iter().map(|e| e.id));
        if r.next_page_token.is_empty() {
            return out;
        }
        req.page_token = r.next_page_token;
    }
}

async fn list_art_ids(meta: &mut Meta, req: ListArtifactsRequest) -> Vec<i64> {
    let mut out = Vec::new();
    let mut req = req;
    loop {
        let r = meta.list_artifacts(req.clone()).await.unwrap().into_inner();
        out.extend(r.artifacts.iter().map(|a| a.id));
        if r.next_page_token.is_empty() {
            return out;
        }
        req.page_token = r.next_page_token;
    }
}

fn execs_in(ns: &str, context_id: i64) -> ListExecutionsRequest {
    ListExecutionsRequest {
        namespace: ns.into(),
        context_id,
        ..Default::default()
    }
}

fn arts_in(ns: &str, context_id: i64) -> ListArtifactsRequest {
    ListArtifactsRequest {
        namespace: ns.into(),
        context_id,
        ..Default::default()
    }
}

#[tokio::test]
async fn contexts_put_get_list() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut meta = server.meta().await;
    let ids = put_contexts(
        &mut meta,
        vec![
            ctx("c", "system.Pipeline", "train"),
            ctx("c", "system.PipelineRun", "run-1"),
            ctx("c", "system.PipelineRun", "run-2"),
        ],
    )
    .await;
    assert_eq!(ids.len(), 3);
    // The same (namespace, type, name) gets the same ID, also twice in one request.
    let again = put_contexts(
        &mut meta,
        vec![
            ctx("c", "system.PipelineRun", "run-1"),
            ctx("c", "system.PipelineRun", "run-1"),
        ],
    )
    .await;
    assert_eq!(again, vec![ids[1], ids[1]]);
    // Another type or namespace is another context.
    let other = put_contexts(
        &mut meta,
        vec![
            ctx("c", "system.Experiment", "run-1"),
            ctx("d", "system.PipelineRun", "run-1"),
        ],
    )
    .await;
    assert!(!ids.contains(&other[0]) && !ids.contains(&other[1]));
    assert_ne!(other[0], other[1]);

    // id != 0 updates the properties; type and name stay.
    let mut update = Context {
        id: ids[1],
        namespace: "c".into(),
        ..Default::default()
    };
    update.properties.insert("status".into(), text("done"));
    assert_eq!(
        put_contexts(&mut meta, vec![update.clone()]).await,
        vec![ids[1]]
    );
    let got = meta
        .get_contexts(GetContextsRequest {
            ids: vec![ids[1], ids[0]],
        })
        .await
        .unwrap()
        .into_inner()
        .contexts;
    assert_eq!(got[0].properties["status"], text("done"));
    assert_eq!(
        (got[0].name.as_str(), got[0].r#type.as_str()),
        ("run-1", "system.PipelineRun")
    );
    assert!(got[0].create_time.is_some());
    assert_eq!(got[1].name, "train");

    // Errors name the field; a failed call writes nothing.
    let cases: Vec<(Vec<Context>, Code, &str)> = vec![
        (
            vec![ctx("c", "t", "ok"), ctx("c", "", "x")],
            Code::InvalidArgument,
            "contexts[1].type",
        ),
        (
            vec![ctx("c", "t", "")],
            Code::InvalidArgument,
            "contexts[0].name",
        ),
        (
            vec![Context {
                id: 999_999,
                namespace: "c".into(),
                ..Default::default()
            }],
            Code::NotFound,
            "contexts[0].id",
        ),
        (
            vec![
                ctx("c", "t", "ok"),
                Context {
                    id: ids[1],
                    namespace: "d".into(),
                    ..Default::default()
                },
            ],
            Code::NotFound,
            "contexts[1].id",
        ),
        (
            vec![Context {
                name: "renamed".into(),
                ..update.clone()
            }],
            Code::FailedPrecondition,
            "contexts[0].name",
        ),
    ];
    for (contexts, code, field) in cases {
        let err = meta
            .put_contexts(PutContextsRequest { contexts })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{field}: {}", err.message());
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let err = meta
        .get_contexts(GetContextsRequest {
            ids: vec![ids[0], 424_242],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Lists: newest first, by type, paged; "ok" was never written.
    let list = |t: &str, size: i32, token: String| ListContextsRequest {
        namespace: "c".into(),
        r#type: t.into(),
        page_size: size,
        page_token: token,
    };
    let runs = meta
        .list_contexts(list("system.PipelineRun", 0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        runs.contexts.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = meta
            .list_contexts(list("", 1, token))
            .await
            .unwrap()
            .into_inner();
        assert!(r.contexts.len() <= 1);
        seen.extend(r.contexts.iter().map(|c| c.name.clone()));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(seen, vec!["run-1", "run-2", "run-1", "train"]);
    server.stop().await;
}

#[tokio::test]
async fn put_execution_associates_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let c = put_contexts(
        &mut meta,
        vec![
            ctx("c", "system.PipelineRun", "run-1"),
            ctx("elsewhere", "system.PipelineRun", "run-1"),
            ctx("c", "system.PipelineRun", "run-2"),
        ],
    )
    .await;
    let (run1, foreign, run2) = (c[0], c[1], c[2]);
    let src = meta
        .put_artifacts(PutArtifactsRequest {
            artifacts: vec![Artifact {
                namespace: "c".into(),
                r#type: "system.Dataset".into(),
                uri: "s3://src".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .artifact_ids[0];
    let ti = iface("train", &[], &[("data", vec![src])]);
    let before = snapshot(&mut meta, "c").await;
    for (ids, field) in [
        (vec![run1, foreign], "context_ids[1]"),
        (vec![987_654], "context_ids[0]"),
    ] {
        let mut req = put_req("c", &ti, ExecutionState::Complete, "mem://m");
        req.context_ids = ids;
        let err = meta.put_execution(req).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{}", err.message());
        assert!(err.message().contains(field), "{}", err.message());
    }
    assert_eq!(snapshot(&mut meta, "c").await, before, "nothing written");
    assert!(list_exec_ids(&mut meta, execs_in("c", run1))
        .await
        .is_empty());

    let mut req = put_req("c", &ti, ExecutionState::Complete, "mem://m");
    req.context_ids = vec![run1, run1];
    let put = meta.put_execution(req).await.unwrap().into_inner();
    let out = put.output_artifact_ids[0];
    assert_eq!(
        list_exec_ids(&mut meta, execs_in("c", run1)).await,
        vec![put.execution_id]
    );
    // Inputs and outputs are attributed, newest first.
    assert_eq!(
        list_art_ids(&mut meta, arts_in("c", run1)).await,
        vec![out, src]
    );
    // A context of another namespace is not found in this one.
    let err = meta
        .list_executions(execs_in("c", foreign))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("context_id"), "{}", err.message());

    // The CACHED execution of a lookup is associated with the looking-up run.
    let mut look = lookup_req("c", &ti);
    look.record_cached_execution = true;
    look.context_ids = vec![987_654];
    let err = cache.get_cached_execution(look.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("context_ids[0]"),
        "{}",
        err.message()
    );
    look.context_ids = vec![run2];
    let hit = cache.get_cached_execution(look).await.unwrap().into_inner();
    assert_eq!(hit.outcome, Outcome::Hit as i32);
    let cached = hit.cached_execution.unwrap();
    assert_eq!(
        list_exec_ids(&mut meta, execs_in("c", run2)).await,
        vec![cached.id]
    );
    assert_eq!(
        list_art_ids(&mut meta, arts_in("c", run2)).await,
        vec![out, src]
    );
    // Its events: INPUT from the lookup's inputs, OUTPUT to the original outputs.
    let events = meta
        .get_events(GetEventsRequest {
            execution_ids: vec![cached.id],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let kinds: BTreeSet<(i32, i64)> = events.iter().map(|e| (e.r#type, e.artifact_id)).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            (EventType::Input as i32, src),
            (EventType::Output as i32, out)
        ])
    );
    // Only the failed lookups' executions are missing: two executions in all.
    assert_eq!(snapshot(&mut meta, "c").await.executions.len(), 2);

    // An update that adds a context associates the execution and attributes
    // the outputs recorded before.
    let mut running = put_req("c", &iface("eval", &[], &[]), ExecutionState::Running, "");
    running.outputs = vec![OutputArtifact {
        name: "out".into(),
        artifact: Some(Artifact::default()),
    }];
    let r = meta.put_execution(running).await.unwrap().into_inner();
    let run3 = put_contexts(&mut meta, vec![ctx("c", "system.PipelineRun", "run-3")]).await[0];
    let done = PutExecutionRequest {
        execution: Some(Execution {
            id: r.execution_id,
            namespace: "c".into(),
            state: ExecutionState::Complete as i32,
            ..Default::default()
        }),
        context_ids: vec![run3],
        ..Default::default()
    };
    meta.put_execution(done).await.unwrap();
    assert_eq!(
        list_exec_ids(&mut meta, execs_in("c", run3)).await,
        vec![r.execution_id]
    );
    assert_eq!(
        list_art_ids(&mut meta, arts_in("c", run3)).await,
        r.output_artifact_ids
    );
    server.stop().await;
}

/// One step of a driver: look up (recording a CACHED execution into the run's
/// context); on a miss run it and record it in the context.
/// Returns (the run's execution id, output artifact id, outcome).
async fn step(
    server: &TestServer,
    run: i64,
    ti: &TaskInterface,
    policy: Option<CachePolicy>,
) -> (i64, i64, Outcome) {
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    let mut look = lookup_req("p", ti);
    look.policy = policy;
    look.record_cached_execution = true;
    look.context_ids = vec![run];
    let r = cache.get_cached_execution(look).await.unwrap().into_inner();
    let outcome = Outcome::try_from(r.outcome).unwrap();
    if outcome == Outcome::Hit {
        let cached = r.cached_execution.unwrap();
        return (
            cached.id,
            r.output_artifacts["out"].artifacts[0].id,
            outcome,
        );
    }
    let mut put = put_req(
        "p",
        ti,
        ExecutionState::Complete,
        &format!("mem://{}", ti.component),
    );
    put.context_ids = vec![run];
    let w = meta.put_execution(put).await.unwrap().into_inner();
    (w.execution_id, w.output_artifact_ids[0], outcome)
}

/// A -> B -> C. Returns the run's executions and outputs, in step order.
async fn pipeline(
    server: &TestServer,
    run: i64,
    policy_a: Option<CachePolicy>,
) -> (Vec<i64>, Vec<i64>, Vec<Outcome>) {
    let a = iface("a", &[("rows", num(10.0))], &[]);
    let (ea, oa, xa) = step(server, run, &a, policy_a).await;
    let b = iface("b", &[], &[("data", vec![oa])]);
    let (eb, ob, xb) = step(server, run, &b, None).await;
    let c = iface("c", &[], &[("model", vec![ob])]);
    let (ec, oc, xc) = step(server, run, &c, None).await;
    (vec![ea, eb, ec], vec![oa, ob, oc], vec![xa, xb, xc])
}

fn lineage_req(start: get_lineage_request::Start, dir: Direction) -> GetLineageRequest {
    GetLineageRequest {
        start: Some(start),
        direction: dir as i32,
        ..Default::default()
    }
}

fn ids_of(l: &GetLineageResponse) -> (BTreeSet<i64>, BTreeSet<i64>) {
    for ev in &l.events {
        assert!(
            l.executions.iter().any(|e| e.id == ev.execution_id)
                && l.artifacts.iter().any(|a| a.id == ev.artifact_id),
            "event outside the result: {ev:?}"
        );
    }
    (
        l.executions.iter().map(|e| e.id).collect(),
        l.artifacts.iter().map(|a| a.id).collect(),
    )
}

#[tokio::test]
async fn pipeline_lineage_across_cached_and_uncached_runs() {
    use get_lineage_request::Start::{ArtifactId, ExecutionId};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut meta = server.meta().await;
    let runs = put_contexts(
        &mut meta,
        vec![
            ctx("p", "system.PipelineRun", "r1"),
            ctx("p", "system.PipelineRun", "r2"),
            ctx("p", "system.PipelineRun", "r3"),
        ],
    )
    .await;
    let (e1, o1, x1) = pipeline(&server, runs[0], None).await;
    assert_eq!(x1, vec![Outcome::Miss; 3]);
    let (e2, o2, x2) = pipeline(&server, runs[1], None).await;
    assert_eq!(x2, vec![Outcome::Hit; 3]);
    assert_eq!(o2, o1, "the cached run hands back the original outputs");
    // Run 3 runs A by hand: new outputs all the way down.
    let manual = Some(CachePolicy {
        trigger: Trigger::Manual as i32,
        ..Default::default()
    });
    let (e3, o3, x3) = pipeline(&server, runs[2], manual).await;
    assert_eq!(x3, vec![Outcome::Disabled, Outcome::Miss, Outcome::Miss]);

    // The cached run's C, upstream: the original outputs, produced by both the
    // original executions and the cached ones.
    let l = meta
        .get_lineage(lineage_req(ExecutionId(e2[2]), Direction::Upstream))
        .await
        .unwrap()
        .into_inner();
    assert!(!l.truncated);
    let (execs, arts) = ids_of(&l);
    assert_eq!(arts, BTreeSet::from([o1[0], o1[1]]));
    assert_eq!(execs, BTreeSet::from([e2[2], e1[1], e2[1], e1[0], e2[0]]));
    assert_eq!(l.executions[0].id, e2[2], "the start comes first");
    assert_eq!(l.executions[0].state, ExecutionState::Cached as i32);

    // The original A's output, downstream: both runs' B and C, the original outputs.
    let l = meta
        .get_lineage(lineage_req(ArtifactId(o1[0]), Direction::Downstream))
        .await
        .unwrap()
        .into_inner();
    let (execs, arts) = ids_of(&l);
    assert_eq!(arts, BTreeSet::from([o1[0], o1[1], o1[2]]));
    assert_eq!(execs, BTreeSet::from([e1[1], e2[1], e1[2], e2[2]]));

    // BOTH from the cached B: its upstream and its downstream.
    let l = meta
        .get_lineage(lineage_req(ExecutionId(e2[1]), Direction::Unspecified))
        .await
        .unwrap()
        .into_inner();
    let (execs, arts) = ids_of(&l);
    assert_eq!(arts, BTreeSet::from([o1[0], o1[1], o1[2]]));
    assert_eq!(execs, BTreeSet::from([e2[1], e1[0], e2[0], e1[2], e2[2]]));

    // The uncached run's lineage is its own.
    let l = meta
        .get_lineage(lineage_req(ArtifactId(o3[2]), Direction::Upstream))
        .await
        .unwrap()
        .into_inner();
    let (execs, arts) = ids_of(&l);
    assert_eq!(arts, o3.iter().copied().collect());
    assert_eq!(execs, e3.iter().copied().collect());

    // The runs' contexts: what each run did and touched.
    let mut want = e2.clone();
    want.reverse();
    assert_eq!(list_exec_ids(&mut meta, execs_in("p", runs[1])).await, want);
    let r2: BTreeSet<i64> = list_art_ids(&mut meta, arts_in("p", runs[1]))
        .await
        .into_iter()
        .collect();
    assert_eq!(r2, o1.iter().copied().collect());
    let cached_only = ListExecutionsRequest {
        state: ExecutionState::Cached as i32,
        ..execs_in("p", runs[0])
    };
    assert!(list_exec_ids(&mut meta, cached_only).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn lineage_bounds_and_errors() {
    use get_lineage_request::Start::{ArtifactId, ExecutionId};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut meta = server.meta().await;
    // A chain of 6 steps: s0 -> s1 -> ... -> s5.
    let mut outs = Vec::new();
    let mut execs = Vec::new();
    for i in 0..6 {
        let inputs: Vec<(&str, Vec<i64>)> = match outs.last() {
            Some(prev) => vec![("in", vec![*prev])],
            None => vec![],
        };
        let ti = iface(&format!("s{i}"), &[], &inputs);
        let w = meta
            .put_execution(put_req("b", &ti, ExecutionState::Complete, "mem://x"))
            .await
            .unwrap()
            .into_inner();
        execs.push(w.execution_id);
        outs.push(w.output_artifact_ids[0]);
    }
    let last = outs[5];
    let up = |hops, nodes| GetLineageRequest {
        start: Some(ArtifactId(last)),
        direction: Direction::Upstream as i32,
        max_hops: hops,
        max_nodes: nodes,
    };
    let all = meta.get_lineage(up(0, 0)).await.unwrap().into_inner();
    assert!(!all.truncated);
    assert_eq!(
        (all.executions.len(), all.artifacts.len(), all.events.len()),
        (6, 6, 11)
    );
    // Exactly 11 hops reach s0: not truncated; 10 are not enough.
    let exact = meta.get_lineage(up(11, 0)).await.unwrap().into_inner();
    assert!(!exact.truncated);
    let short = meta.get_lineage(up(10, 0)).await.unwrap().into_inner();
    assert!(short.truncated);
    assert_eq!(short.executions.len(), 5);
    let two = meta.get_lineage(up(2, 0)).await.unwrap().into_inner();
    assert!(two.truncated);
    let (e, a) = ids_of(&two);
    assert_eq!(
        (e, a),
        (
            BTreeSet::from([execs[5]]),
            BTreeSet::from([outs[5], outs[4]])
        )
    );
    let few = meta.get_lineage(up(0, 3)).await.unwrap().into_inner();
    assert!(few.truncated);
    assert_eq!(few.executions.len() + few.artifacts.len(), 3);
    ids_of(&few);

    // Fan-out: one dataset read by 30 executions; downstream bounded by max_nodes.
    for i in 0..30 {
        let ti = iface("reader", &[("i", num(i as f64))], &[("in", vec![outs[0]])]);
        meta.put_execution(put_req("b", &ti, ExecutionState::Running, ""))
            .await
            .unwrap();
    }
    let fan = meta
        .get_lineage(GetLineageRequest {
            start: Some(ArtifactId(outs[0])),
            direction: Direction::Downstream as i32,
            max_nodes: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(fan.truncated);
    assert_eq!(fan.executions.len() + fan.artifacts.len(), 10);
    let fan = meta
        .get_lineage(GetLineageRequest {
            start: Some(ExecutionId(execs[0])),
            direction: Direction::Downstream as i32,
            max_hops: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // s0 -> its output -> 31 readers (s1 and the 30).
    assert_eq!((fan.artifacts.len(), fan.executions.len()), (1, 32));
    assert!(fan.truncated, "s1 has an output beyond 2 hops");

    let bad = [
        (up(0, 10_001), Code::InvalidArgument, "max_nodes"),
        (up(-1, 0), Code::InvalidArgument, "max_hops"),
        (up(1001, 0), Code::InvalidArgument, "max_hops"),
        (
            GetLineageRequest {
                direction: 9,
                ..up(0, 0)
            },
            Code::InvalidArgument,
            "direction",
        ),
        (
            GetLineageRequest {
                start: None,
                ..up(0, 0)
            },
            Code::InvalidArgument,
            "artifact_id",
        ),
        (
            GetLineageRequest {
                start: Some(ArtifactId(-3)),
                ..up(0, 0)
            },
            Code::InvalidArgument,
            "artifact_id",
        ),
        (
            GetLineageRequest {
                start: Some(ExecutionId(777_777)),
                ..up(0, 0)
            },
            Code::NotFound,
            "777777",
        ),
    ];
    for (req, code, word) in bad {
        let err = meta.get_lineage(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{word}: {}", err.message());
        assert!(err.message().contains(word), "{word}: {}", err.message());
    }
    server.stop().await;
}

/// (execution id, component, state, index, cache key).
type Row = (i64, &'static str, ExecutionState, i32, String);

fn ts(ms: i64) -> Option<Timestamp> {
    Some(stepcache::clock::timestamp(ms))
}

#[tokio::test]
async fn list_filters_use_every_index() {
    const T0: i64 = 1_700_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let server = TestServer::start_with_clock(dir.path(), clock.clone()).await;
    let mut meta = server.meta().await;
    let run = put_contexts(&mut meta, vec![ctx("f", "system.PipelineRun", "r")]).await[0];
    // 30 executions, 10 per second: components a/b, every third RUNNING, the
    // first 12 in the run's context.
    let mut rows: Vec<Row> = Vec::new();
    for i in 0..30 {
        if i > 0 && i % 10 == 0 {
            clock.advance_ms(1000);
        }
        let comp = if i % 2 == 0 { "a" } else { "b" };
        let state = if i % 3 == 0 {
            ExecutionState::Running
        } else {
            ExecutionState::Complete
        };
        let mut req = put_req(
            "f",
            &iface(comp, &[("i", num(i as f64))], &[]),
            state,
            "mem://o",
        );
        if i < 12 {
            req.context_ids = vec![run];
        }
        let w = meta.put_execution(req).await.unwrap().into_inner();
        rows.push((w.execution_id, comp, state, i, w.cache_key));
    }
    let want = |pred: &dyn Fn(&Row) -> bool| -> Vec<i64> {
        rows.iter().rev().filter(|r| pred(r)).map(|r| r.0).collect()
    };
    let base = ListExecutionsRequest {
        namespace: "f".into(),
        page_size: 4,
        ..Default::default()
    };
    let running = ListExecutionsRequest {
        state: ExecutionState::Running as i32,
        ..base.clone()
    };
    assert_eq!(
        list_exec_ids(&mut meta, running.clone()).await,
        want(&|r| r.2 == ExecutionState::Running)
    );
    // Time range [T0 + 1 s, T0 + 2 s): the middle ten.
    let middle = ListExecutionsRequest {
        created_after: ts(T0 + 1000),
        created_before: ts(T0 + 2000),
        ..base.clone()
    };
    assert_eq!(
        list_exec_ids(&mut meta, middle.clone()).await,
        want(&|r| (10..20).contains(&r.3))
    );
    // Everything at once: component, state, context, time.
    let combo = ListExecutionsRequest {
        component: "a".into(),
        state: ExecutionState::Complete as i32,
        context_id: run,
        created_after: ts(T0),
        created_before: ts(T0 + 1000),
        ..base.clone()
    };
    assert_eq!(
        list_exec_ids(&mut meta, combo).await,
        want(&|r| r.1 == "a" && r.2 == ExecutionState::Complete && r.3 < 10)
    );
    let by_key = ListExecutionsRequest {
        cache_key: rows[7].4.clone(),
        state: ExecutionState::Complete as i32,
        ..base.clone()
    };
    assert_eq!(list_exec_ids(&mut meta, by_key).await, vec![rows[7].0]);
    let after_all = ListExecutionsRequest {
        created_after: ts(T0 + 5000),
        ..base.clone()
    };
    assert!(list_exec_ids(&mut meta, after_all).await.is_empty());

    // The state index follows updates: RUNNING -> COMPLETE.
    let moved = rows[3].0;
    meta.put_execution(PutExecutionRequest {
        execution: Some(Execution {
            id: moved,
            namespace: "f".into(),
            state: ExecutionState::Complete as i32,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let now_running = list_exec_ids(&mut meta, running).await;
    assert!(!now_running.contains(&moved));
    assert_eq!(now_running.len(), 9);
    let complete = ListExecutionsRequest {
        state: ExecutionState::Complete as i32,
        ..middle
    };
    assert!(!list_exec_ids(&mut meta, complete.clone())
        .await
        .contains(&moved));
    let complete_early = ListExecutionsRequest {
        created_after: None,
        created_before: ts(T0 + 1000),
        ..complete
    };
    assert!(list_exec_ids(&mut meta, complete_early)
        .await
        .contains(&moved));

    // Artifacts: type, state (moved by PutArtifacts), context, time.
    clock.advance_ms(1000);
    let new = |t: &str| Artifact {
        namespace: "f".into(),
        r#type: t.into(),
        ..Default::default()
    };
    let arts = meta
        .put_artifacts(PutArtifactsRequest {
            artifacts: vec![
                new("system.Model"),
                new("system.Model"),
                new("system.Metrics"),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .artifact_ids;
    let abase = ListArtifactsRequest {
        namespace: "f".into(),
        page_size: 2,
        ..Default::default()
    };
    let models = ListArtifactsRequest {
        r#type: "system.Model".into(),
        ..abase.clone()
    };
    assert_eq!(
        list_art_ids(&mut meta, models.clone()).await,
        vec![arts[1], arts[0]]
    );
    let recent = ListArtifactsRequest {
        created_after: ts(T0 + 3000),
        ..abase.clone()
    };
    assert_eq!(
        list_art_ids(&mut meta, recent).await,
        vec![arts[2], arts[1], arts[0]]
    );
    // Retype and mark one for deletion.
    meta.put_artifacts(PutArtifactsRequest {
        artifacts: vec![Artifact {
            id: arts[0],
            state: ArtifactState::MarkedForDeletion as i32,
            ..new("system.Metrics")
        }],
    })
    .await
    .unwrap();
    assert_eq!(list_art_ids(&mut meta, models).await, vec![arts[1]]);
    let metrics = ListArtifactsRequest {
        r#type: "system.Metrics".into(),
        ..abase.clone()
    };
    assert_eq!(
        list_art_ids(&mut meta, metrics).await,
        vec![arts[2], arts[0]]
    );
    let marked = ListArtifactsRequest {
        state: ArtifactState::MarkedForDeletion as i32,
        ..abase.clone()
    };
    assert_eq!(list_art_ids(&mut meta, marked).await, vec![arts[0]]);
    let live = ListArtifactsRequest {
        state: ArtifactState::Live as i32,
        ..abase.clone()
    };
    let live = list_art_ids(&mut meta, live).await;
    assert!(!live.contains(&arts[0]) && live.contains(&arts[1]));
    assert_eq!(live.len(), 20 + 2, "20 outputs of COMPLETE executions + 2");
    // The run's context holds the outputs of its COMPLETE executions.
    let in_run = list_art_ids(&mut meta, arts_in("f", run)).await;
    assert_eq!(in_run.len(), 8);

    // Malformed filters.
    let bad_execs = [
        (
            ListExecutionsRequest {
                page_size: 1001,
                ..base.clone()
            },
            "page_size",
        ),
        (
            ListExecutionsRequest {
                context_id: -1,
                ..base.clone()
            },
            "context_id",
        ),
        (
            ListExecutionsRequest {
                created_after: ts(T0 + 10),
                created_before: ts(T0 + 10),
                ..base.clone()
            },
            "created_after",
        ),
        (
            ListExecutionsRequest {
                state: 42,
                ..base.clone()
            },
            "state",
        ),
    ];
    for (req, word) in bad_execs {
        let err = meta.list_executions(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{word}");
        assert!(err.message().contains(word), "{word}: {}", err.message());
    }
    let err = meta
        .list_artifacts(ListArtifactsRequest {
            context_id: 123_456,
            ..abase
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("context_id"), "{}", err.message());
    server.stop().await;
}

/// Writes `n` RUNNING executions with `concurrency` writers; returns their IDs.
async fn bulk_write(server: &TestServer, ns: &str, n: usize, concurrency: usize) -> Vec<i64> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut meta = server.meta().await;
        let (next, ns) = (next.clone(), ns.to_string());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return ids;
                }
                let comp = if i % 2 == 0 { "even" } else { "odd" };
                let ti = iface(comp, &[("i", num(i as f64))], &[]);
                let w = meta
                    .put_execution(put_req(&ns, &ti, ExecutionState::Running, ""))
                    .await
                    .unwrap()
                    .into_inner();
                ids.push(w.execution_id);
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paging_10k_with_concurrent_writes_returns_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let original = bulk_write(&server, "k", 10_000, 32).await;
    assert_eq!(original.len(), 10_000);
    let max_original = *original.iter().max().unwrap();

    // Writers keep adding records to the namespace while we page.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut meta = server.meta().await;
        let (stop, written) = (stop.clone(), written.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let comp = if i % 2 == 0 { "even" } else { "odd" };
                let ti = iface(comp, &[("w", num(w as f64)), ("i", num(i as f64))], &[]);
                meta.put_execution(put_req("k", &ti, ExecutionState::Running, ""))
                    .await
                    .unwrap();
                written.fetch_add(1, Ordering::SeqCst);
                i += 1;
            }
        }));
    }
    let mut meta = server.meta().await;
    let originals: HashSet<i64> = original.iter().copied().collect();
    for (req, want) in [
        (
            ListExecutionsRequest {
                namespace: "k".into(),
                page_size: 1000,
                ..Default::default()
            },
            10_000,
        ),
        // Two indexes intersected: component and state.
        (
            ListExecutionsRequest {
                namespace: "k".into(),
                component: "even".into(),
                state: ExecutionState::Running as i32,
                page_size: 777,
                ..Default::default()
            },
            5_000,
        ),
    ] {
        let mut seen = HashSet::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let r = meta
                .list_executions(ListExecutionsRequest {
                    page_token: token,
                    ..req.clone()
                })
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            let mut prev = i64::MAX;
            for e in &r.executions {
                assert!(e.id < prev, "newest first");
                prev = e.id;
                assert!(seen.insert(e.id), "{} returned twice", e.id);
            }
            if r.next_page_token.is_empty() {
                break;
            }
            token = r.next_page_token;
        }
        let of_original = seen.iter().filter(|id| originals.contains(id)).count();
        assert_eq!(of_original, want, "every original record exactly once");
        // Anything else was written concurrently, after the originals.
        assert!(seen
            .iter()
            .all(|id| originals.contains(id) || *id > max_original));
        assert!(pages >= want / 1000);
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        written.load(Ordering::SeqCst) > 0,
        "writes ran concurrently"
    );
    server.stop().await;
}
