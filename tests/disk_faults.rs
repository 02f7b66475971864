//! A disk that turns read-only and a disk that stalls, through a small ext4
//! filesystem on a loop device (skipped, saying so, where this process may
//! not mount one).

mod common;

use std::time::Duration;

use common::disk::*;
use common::*;
use stepcache::proto::cache_service_client::CacheServiceClient;
use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache::proto::*;
use tonic::transport::Channel;

/// How long a read may take while the disk fails: far above a read's cost,
/// far below the stall it must not wait for.
const PROMPT: Duration = Duration::from_secs(5);

/// `n` completed executions in namespace "ns": their interfaces and IDs.
async fn put_many(channel: &Channel, n: u32) -> Vec<(TaskInterface, i64)> {
    let mut meta = MetadataStoreServiceClient::new(channel.clone());
    let mut put = Vec::new();
    for i in 0..n {
        let ti = iface("task", &[("i", num(f64::from(i)))], &[]);
        let id = meta
            .put_execution(put_req("ns", &ti, ExecutionState::Complete, "mem://out"))
            .await
            .unwrap()
            .into_inner()
            .execution_id;
        put.push((ti, id));
    }
    put
}

/// Every one of `put` is a HIT of its execution, each answered within
/// `PROMPT`, and a list of the namespace shows them all.
async fn all_hit_promptly(channel: &Channel, put: &[(TaskInterface, i64)], when: &str) {
    let mut cache = CacheServiceClient::new(channel.clone());
    for (i, (ti, id)) in put.iter().enumerate() {
        let r = tokio::time::timeout(PROMPT, cache.get_cached_execution(lookup_req("ns", ti)))
            .await
            .unwrap_or_else(|_| panic!("{when}: lookup {i} not answered within {PROMPT:?}"))
            .unwrap_or_else(|e| panic!("{when}: lookup {i}: {e:?}"))
            .into_inner();
        assert_eq!(r.outcome(), Outcome::Hit, "{when}: lookup {i}");
        assert_eq!(r.execution.map(|e| e.id), Some(*id), "{when}: lookup {i}");
    }
    let mut meta = MetadataStoreServiceClient::new(channel.clone());
    let listed = tokio::time::timeout(PROMPT, list_all(&mut meta, "ns"))
        .await
        .unwrap_or_else(|_| panic!("{when}: list not answered within {PROMPT:?}"));
    for (_, id) in put {
        assert!(
            listed.iter().any(|e| e.id == *id),
            "{when}: {id} not listed"
        );
    }
}

/// The filesystem turns read-only under a running server (as ext4 does at
/// a disk error): every durable hit is still served, looked up before or
/// not (lookups can no longer write the hits file), lists answer, a write
/// fails UNAVAILABLE, and health says NOT_SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_disk_keeps_serving_durable_reads() {
    let root = tempfile::tempdir().unwrap();
    let Some(fs) = ext4_disk(root.path(), 64) else {
        return;
    };
    let (_server, channel) = serve(&fs.dir.join("data")).await;
    let put = put_many(&channel, 40).await;
    // Half of them served once already: in memory and in the hits file.
    all_hit_promptly(&channel, &put[..20], "before").await;

    if !fs.fail_read_only() {
        eprintln!("skipped: this kernel cannot fail an ext4 filesystem on demand");
        return;
    }
    all_hit_promptly(&channel, &put, "read-only").await;

    let mut meta = MetadataStoreServiceClient::new(channel.clone());
    let ti = iface("after", &[], &[]);
    let e = meta
        .put_execution(put_req("ns", &ti, ExecutionState::Complete, "mem://after"))
        .await
        .expect_err("a write to a read-only disk");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    wait_health(&channel, NOT_SERVING).await;
    // The failed write is seen by no one; every durable hit still answers.
    let r = CacheServiceClient::new(channel.clone())
        .get_cached_execution(lookup_req("ns", &ti))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(r.outcome(), Outcome::Hit, "a failed write served");
    all_hit_promptly(&channel, &put, "after a failed write").await;
}

/// The filesystem freezes under a running server (every write into it waits,
/// as on a stalled disk): lookups, looked up before or not, and lists keep
/// answering, also while writes wait for the disk; once a flush has waited
/// for the disk for 10 s health says NOT_SERVING and new writes fail
/// UNAVAILABLE at once; when the disk thaws, the waiting writes complete
/// and are served, and health says SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_keeps_serving_reads_and_refuses_writes() {
    let root = tempfile::tempdir().unwrap();
    let Some(fs) = ext4_disk(root.path(), 64) else {
        return;
    };
    let (_server, channel) = serve(&fs.dir.join("data")).await;
    let put = put_many(&channel, 30).await;
    all_hit_promptly(&channel, &put[..10], "before").await;

    let Some(frozen) = fs.freeze() else {
        eprintln!("skipped: cannot freeze a filesystem here (no fsfreeze?)");
        return;
    };
    all_hit_promptly(&channel, &put, "frozen").await;

    // Two writes wait for the disk: the first for its flush, the second
    // for the first's (in sled, for the lock that the flush held).
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let mut meta = MetadataStoreServiceClient::new(channel.clone());
            let ti = iface("waiting", &[("i", num(f64::from(i)))], &[]);
            let req = put_req("ns", &ti, ExecutionState::Complete, "mem://w");
            (
                ti,
                tokio::spawn(async move { meta.put_execution(req).await }),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    all_hit_promptly(&channel, &put, "frozen, two writes waiting").await;
    let status = tokio::time::timeout(PROMPT, health_status(&channel)).await;
    assert_eq!(
        status,
        Ok(SERVING),
        "health answers; not stalled for long yet"
    );

    // Stalled for 10 s: NOT_SERVING, and a new write is refused at once.
    wait_health(&channel, NOT_SERVING).await;
    let ti = iface("refused", &[], &[]);
    let mut meta = MetadataStoreServiceClient::new(channel.clone());
    let refused = tokio::time::timeout(
        PROMPT,
        meta.put_execution(put_req("ns", &ti, ExecutionState::Complete, "mem://r")),
    )
    .await
    .expect("a write on a stalled disk answered at once")
    .expect_err("a write on a stalled disk");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("retry"), "{refused:?}");
    all_hit_promptly(&channel, &put, "stalled").await;

    drop(frozen);
    let mut done = put;
    for (ti, write) in waiting {
        let r = write
            .await
            .unwrap()
            .expect("a write that waited for the disk");
        done.push((ti, r.into_inner().execution_id));
    }
    wait_health(&channel, SERVING).await;
    all_hit_promptly(&channel, &done, "thawed").await;
    let r = CacheServiceClient::new(channel.clone())
        .get_cached_execution(lookup_req("ns", &ti))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(r.outcome(), Outcome::Hit, "the refused write served");
}
