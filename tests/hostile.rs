//! Hostile requests through the real server: repeated IDs, oversized ID
//! lists, undecodable bodies, long inputs echoed in errors.

mod common;

use common::*;
use stepcache::proto::*;
use tonic::Code;

/// One COMPLETE execution in `ns`; its put reply.
async fn one_execution(server: &TestServer, ns: &str) -> PutExecutionResponse {
    let ti = iface("train", &[("lr", num(0.1))], &[]);
    server
        .meta()
        .await
        .put_execution(put_req(ns, &ti, ExecutionState::Complete, "mem://a"))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn repeated_ids_are_answered_once_and_too_many_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut meta = server.meta().await;
    let a = one_execution(&server, "ns").await;
    let b = one_execution(&server, "ns2").await;
    let (e, out) = (a.execution_id, a.output_artifact_ids[0]);

    // Distinct IDs in the order of their first mention.
    let got = meta
        .get_executions(GetExecutionsRequest {
            ids: vec![e, b.execution_id, e, e, b.execution_id],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .executions;
    let ids: Vec<i64> = got.iter().map(|x| x.id).collect();
    assert_eq!(ids, [e, b.execution_id]);
    let got = meta
        .get_artifacts(GetArtifactsRequest {
            ids: vec![out; 1000],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .artifacts;
    assert_eq!(got.len(), 1);
    let events = meta
        .get_events(GetEventsRequest {
            execution_ids: vec![e; 1000],
            artifact_ids: vec![out; 1000],
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1, "the one OUTPUT event, once");

    // Past max_interface_entries (10,000) IDs: refused before any read, even
    // when they repeat one ID.
    let many = vec![e; 10_001];
    let refused = [
        meta.get_executions(GetExecutionsRequest {
            ids: many.clone(),
            ..Default::default()
        })
        .await
        .map(drop),
        meta.get_artifacts(GetArtifactsRequest {
            ids: many.clone(),
            ..Default::default()
        })
        .await
        .map(drop),
        meta.get_contexts(GetContextsRequest { ids: many.clone() })
            .await
            .map(drop),
        meta.get_events(GetEventsRequest {
            artifact_ids: many.clone(),
            ..Default::default()
        })
        .await
        .map(drop),
        meta.get_events(GetEventsRequest {
            execution_ids: many.clone(),
            ..Default::default()
        })
        .await
        .map(drop),
    ];
    for r in refused {
        let s = r.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("max_interface_entries"), "{s:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn error_messages_do_not_echo_long_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut meta = server.meta().await;
    let long = "x".repeat(60_000);
    let err = meta
        .list_executions(ListExecutionsRequest {
            page_token: long.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("page_token"), "{err:?}");
    assert!(err.message().len() <= 512, "{} bytes", err.message().len());
    // A name within the string limit, but not a declared output.
    let ti = iface("train", &[], &[]);
    let mut put = put_req("ns", &ti, ExecutionState::Complete, "mem://a");
    put.outputs[0].name = "é".repeat(30_000);
    let err = meta.put_execution(put).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() <= 512, "{} bytes", err.message().len());
    assert!(err.message().contains("bytes in all"), "{err:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_lookup_naming_a_missing_input_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut cache = server.cache().await;
    let a = one_execution(&server, "ns").await;
    let out = a.output_artifact_ids[0];
    let other_ns = one_execution(&server, "other").await.output_artifact_ids[0];
    for missing in [out + 1000, other_ns] {
        let ti = iface("eval", &[], &[("model", vec![out, missing])]);
        // As the fast path reads it, decoded, and while asking to reserve.
        let mut reserve = lookup_req("ns", &ti);
        reserve.reservation = Some(ReservationRequest {
            owner: "w".into(),
            lease: None,
        });
        let mut record = lookup_req("ns", &ti);
        record.record_cached_execution = true;
        for req in [lookup_req("ns", &ti), reserve, record] {
            let err = cache.get_cached_execution(req).await.unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "{err:?}");
            assert!(
                err.message().contains("input_artifacts.model")
                    && err.message().contains(&missing.to_string()),
                "{err:?}"
            );
        }
        // No reservation was taken: another owner gets it at once.
        let key = cache
            .compute_cache_key(ComputeCacheKeyRequest {
                interface: Some(ti.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .cache_key;
        let r = cache
            .wait_for_cached_execution(WaitForCachedExecutionRequest {
                namespace: "ns".into(),
                cache_key: key,
                reservation: Some(ReservationRequest {
                    owner: format!("other-{missing}"),
                    lease: None,
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outcome(), Outcome::Reserved);
    }
    server.stop().await;
}
