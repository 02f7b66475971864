//! A full disk, through a small tmpfs (skipped, saying so, where this process
//! may not mount one).

mod common;

use common::disk::*;
use common::*;
use stepcache::proto::cache_service_client::CacheServiceClient;
use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache::proto::*;
use tonic::transport::Channel;

/// Fills a 16 MiB tmpfs with PutExecutions: the one that fails answers
/// RESOURCE_EXHAUSTED and is seen by no reader (no HIT, not listed, not
/// found by ID); acknowledged writes keep answering; health turns
/// NOT_SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_cleanly_and_keeps_durable_reads() {
    let root = tempfile::tempdir().unwrap();
    let Some(fs) = small_disk(root.path(), 16) else {
        return;
    };
    let (server, channel) = serve(&fs.dir.join("data")).await;
    let mut meta = MetadataStoreServiceClient::new(channel.clone());
    let mut cache = CacheServiceClient::new(channel.clone());
    let first = iface("first", &[], &[]);
    let first_id = meta
        .put_execution(put_req("ns", &first, ExecutionState::Complete, "mem://a"))
        .await
        .unwrap()
        .into_inner()
        .execution_id;
    let big = "x".repeat(60_000);
    let mut acked = 1;
    let mut failed = None;
    for i in 0..2000 {
        let ti = iface("big", &[("i", num(f64::from(i))), ("pad", text(&big))], &[]);
        let put = put_req("ns", &ti, ExecutionState::Complete, "mem://b");
        match meta.put_execution(put).await {
            Ok(_) => acked += 1,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("disk is full"), "{e:?}");
                failed = Some(ti);
                break;
            }
        }
    }
    let failed = failed.expect("the disk filled up");

    // The failed write is seen by no reader.
    let r = cache
        .get_cached_execution(lookup_req("ns", &failed))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(r.outcome(), Outcome::Hit, "a failed write served as a HIT");
    // A list answers, with acknowledged writes only.
    let listed = list_all(&mut meta, "ns").await;
    assert_eq!(listed.len(), acked, "only acknowledged writes are listed");
    let newest = listed.iter().map(|e| e.id).max().unwrap();
    let hidden = meta
        .get_executions(GetExecutionsRequest {
            ids: vec![newest + 1],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound);

    // Acknowledged writes keep answering.
    let r = cache
        .get_cached_execution(lookup_req("ns", &first))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), Outcome::Hit);
    assert_eq!(r.execution.unwrap().id, first_id);

    // Health turns NOT_SERVING (checked every 2 s).
    wait_health(&channel, NOT_SERVING).await;
    drop(server);

    // A restart on the still-full disk serves the durable data, or stops
    // saying the disk is full, without advising a restore: nothing is corrupt.
    let log_path = root.path().join("restart.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let exited = match try_serve(&fs.dir.join("data"), log).await {
        Ok((mut server, channel)) => {
            let lookup = CacheServiceClient::new(channel)
                .get_cached_execution(lookup_req("ns", &first))
                .await;
            match lookup {
                Ok(r) => {
                    let r = r.into_inner();
                    assert_eq!(r.outcome(), Outcome::Hit);
                    assert_eq!(r.execution.unwrap().id, first_id);
                    None
                }
                // It listens before it opens the store.
                Err(_) => Some(server.0.wait().unwrap()),
            }
        }
        Err(status) => Some(status),
    };
    if let Some(status) = exited {
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(!status.success(), "{log}");
        assert!(log.contains("Free space"), "{log}");
        assert!(!log.contains("backup"), "{log}");
    }
}

/// PutExecutions of 60 KB until one fails (RESOURCE_EXHAUSTED): how many
/// were acknowledged, and the interface of the failed one.
async fn fill_with_executions(
    meta: &mut MetadataStoreServiceClient<Channel>,
) -> (usize, TaskInterface) {
    let big = "x".repeat(60_000);
    for i in 0..2000 {
        let ti = iface("big", &[("i", num(f64::from(i))), ("pad", text(&big))], &[]);
        let put = put_req("ns", &ti, ExecutionState::Complete, "mem://b");
        if let Err(e) = meta.put_execution(put).await {
            assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
            return (i as usize, ti);
        }
    }
    panic!("the disk did not fill up");
}

/// After a write fails on a full disk, freeing space brings the server back
/// by itself: health SERVING again, writes accepted, the durable data
/// answered, and the failed write seen by no reader, then or after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_recovers_by_itself_when_space_returns() {
    let root = tempfile::tempdir().unwrap();
    let Some(fs) = small_disk(root.path(), 24) else {
        return;
    };
    let filler = fs.dir.join("filler");
    std::fs::write(&filler, vec![1u8; 6 << 20]).unwrap();
    let data = fs.dir.join("data");
    let (server, channel) = serve(&data).await;
    let mut meta = MetadataStoreServiceClient::new(channel.clone());
    let mut cache = CacheServiceClient::new(channel.clone());
    let first = iface("first", &[], &[]);
    let first_id = meta
        .put_execution(put_req("ns", &first, ExecutionState::Complete, "mem://a"))
        .await
        .unwrap()
        .into_inner()
        .execution_id;
    let hits_failed = "stepcache_hits_file_write_failures_total";
    assert_eq!(server.metric(hits_failed).await, 0.0);
    let (filled, failed) = fill_with_executions(&mut meta).await;
    wait_health(&channel, NOT_SERVING).await;
    let flushes = "stepcache_store_flushes_total";
    let flushes_before = server.metric(flushes).await;
    // Every durable hit is served on the full disk, though each first
    // lookup fails to write it to the hits file.
    let big = "x".repeat(60_000);
    for i in 0..filled {
        let ti = iface("big", &[("i", num(i as f64)), ("pad", text(&big))], &[]);
        let r = cache
            .get_cached_execution(lookup_req("ns", &ti))
            .await
            .unwrap();
        assert_eq!(r.into_inner().outcome(), Outcome::Hit, "{i}");
    }

    // Lookups do not wait for their writes of the hits file, which fail.
    for _ in 0..100 {
        if server.metric(hits_failed).await > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(server.metric(hits_failed).await > 0.0);

    std::fs::remove_file(&filler).unwrap();
    wait_health(&channel, SERVING).await;
    let after = iface("after", &[], &[]);
    let after_id = meta
        .put_execution(put_req("ns", &after, ExecutionState::Complete, "mem://c"))
        .await
        .expect("a write after the recovery")
        .into_inner()
        .execution_id;
    // The store opened again counts on from the first one's totals.
    assert!(server.metric(flushes).await > flushes_before);

    let answered = [(&first, first_id), (&after, after_id)];
    only_acknowledged(&channel, &answered, &failed, filled + 2).await;
    drop((meta, cache, channel, server));
    let (_server, channel) = serve(&data).await;
    only_acknowledged(&channel, &answered, &failed, filled + 2).await;
}

/// Lookups of `answered` hit their executions, the `failed` write is no
/// hit, and the namespace lists `count` executions, none of them `failed`.
async fn only_acknowledged(
    channel: &Channel,
    answered: &[(&TaskInterface, i64)],
    failed: &TaskInterface,
    count: usize,
) {
    let mut meta = MetadataStoreServiceClient::new(channel.clone());
    let mut cache = CacheServiceClient::new(channel.clone());
    for (ti, id) in answered {
        let r = cache
            .get_cached_execution(lookup_req("ns", ti))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outcome(), Outcome::Hit);
        assert_eq!(r.execution.unwrap().id, *id);
    }
    let r = cache
        .get_cached_execution(lookup_req("ns", failed))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(r.outcome(), Outcome::Hit, "the failed write served");
    let listed = list_all(&mut meta, "ns").await;
    assert_eq!(listed.len(), count, "acknowledged writes only");
    assert!(
        listed.iter().all(|e| e.interface.as_ref() != Some(failed)),
        "the failed write is listed"
    );
}

/// An update of an existing record that fails on a full disk is read by no
/// one: a get or list answers the last acknowledged version or a storage
/// fault, and after the recovery the last acknowledged version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_update_is_never_read() {
    let root = tempfile::tempdir().unwrap();
    let Some(fs) = small_disk(root.path(), 16) else {
        return;
    };
    let filler = fs.dir.join("filler");
    std::fs::write(&filler, vec![1u8; 4 << 20]).unwrap();
    let (server, channel) = serve(&fs.dir.join("data")).await;
    let mut meta = MetadataStoreServiceClient::new(channel.clone());
    let artifact = |id: i64, n: u32, pad: &str| Artifact {
        id,
        namespace: "ns".into(),
        r#type: "t".into(),
        uri: "mem://a".into(),
        properties: [
            ("n".to_string(), num(f64::from(n))),
            ("pad".to_string(), text(pad)),
        ]
        .into(),
        ..Default::default()
    };
    let id = meta
        .put_artifacts(PutArtifactsRequest {
            artifacts: vec![artifact(0, 0, "")],
        })
        .await
        .unwrap()
        .into_inner()
        .artifact_ids[0];
    let big = "x".repeat(60_000);
    let mut acked = 0;
    let mut failed = None;
    for n in 1..2000 {
        // The update, and a new artifact that fills the disk.
        let put = PutArtifactsRequest {
            artifacts: vec![artifact(id, n, ""), artifact(0, n, &big)],
        };
        match meta.put_artifacts(put).await {
            Ok(_) => acked = n,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                failed = Some(n);
                break;
            }
        }
    }
    let failed = failed.expect("the disk filled up");
    let n_of = |a: &Artifact| match a.properties.get("n").and_then(|v| v.kind.clone()) {
        Some(prost_types::value::Kind::NumberValue(n)) => n as u32,
        other => panic!("{other:?}"),
    };
    let get = GetArtifactsRequest {
        ids: vec![id],
        ..Default::default()
    };
    match meta.get_artifacts(get.clone()).await {
        Ok(r) => assert_eq!(
            n_of(&r.into_inner().artifacts[0]),
            acked,
            "failed: {failed}"
        ),
        Err(e) => assert!(
            matches!(
                e.code(),
                tonic::Code::ResourceExhausted | tonic::Code::Unavailable
            ),
            "{e:?}"
        ),
    }
    wait_health(&channel, NOT_SERVING).await;
    std::fs::remove_file(&filler).unwrap();
    wait_health(&channel, SERVING).await;
    let r = meta.get_artifacts(get).await.unwrap().into_inner();
    assert_eq!(n_of(&r.artifacts[0]), acked, "failed: {failed}");
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = meta
            .list_artifacts(ListArtifactsRequest {
                namespace: "ns".into(),
                page_size: 20,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        listed.extend(page.artifacts);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    // The artifacts acknowledged, newest first, and the updated one.
    assert_eq!(listed.len(), acked as usize + 1);
    assert!(listed.iter().all(|a| n_of(a) <= acked), "failed: {failed}");
    drop(server);
}
