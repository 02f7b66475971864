//! Backup and restore with the `stepcache export` / `import` commands: the
//! restored store holds every record, serves the same hits and hands out
//! fresh IDs; damaged backups, busy or non-empty stores are refused.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache::proto::*;
use tonic::transport::Channel;

/// Runs `stepcache args...` with `stdin` fed in: (success, stdout, stderr).
fn stepcache(args: &[&str], stdin: &[u8]) -> (bool, Vec<u8>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stepcache"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // Ignore EPIPE: a command may refuse before reading everything.
    let _ = input.write_all(stdin);
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What a lookup serves: (outcome, execution id, output artifact ids by name).
type Served = (i32, i64, std::collections::BTreeMap<String, Vec<i64>>);

async fn served(
    cache: &mut stepcache::proto::cache_service_client::CacheServiceClient<Channel>,
    ns: &str,
    ti: &TaskInterface,
) -> Served {
    let r = cache
        .get_cached_execution(lookup_req(ns, ti))
        .await
        .unwrap()
        .into_inner();
    (
        r.outcome,
        r.execution.as_ref().map_or(0, |e| e.id),
        outputs_by_name(&r),
    )
}

async fn stats(
    cache: &mut stepcache::proto::cache_service_client::CacheServiceClient<Channel>,
    ns: &str,
) -> (i64, i64) {
    let s = cache
        .get_cache_stats(GetCacheStatsRequest {
            namespace: ns.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (s.entries, s.in_progress)
}

async fn put(
    meta: &mut MetadataStoreServiceClient<Channel>,
    req: PutExecutionRequest,
) -> PutExecutionResponse {
    meta.put_execution(req).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_serves_the_same_hits_and_fresh_ids() {
    if on_postgres("export/import read a sled data directory (PostgreSQL: pg_dump)") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("a");
    let server = TestServer::start(&a).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);

    // A standalone artifact with an external_id.
    let ext = Artifact {
        namespace: "b".into(),
        r#type: "system.Model".into(),
        uri: "s3://models/1".into(),
        external_id: "model-1".into(),
        state: ArtifactState::Live as i32,
        ..Default::default()
    };
    let ext_id = meta
        .put_artifacts(PutArtifactsRequest {
            artifacts: vec![ext.clone()],
        })
        .await
        .unwrap()
        .into_inner()
        .artifact_ids[0];
    // prepare -> train (consumes prepare's output); a failed eval; a retried
    // execution with an external_id; an invalidated one; a reservation.
    let prep = iface("prepare", &[("rows", num(100.0))], &[]);
    let prep_put = put(
        &mut meta,
        put_req("b", &prep, ExecutionState::Complete, "mem://prep"),
    )
    .await;
    let train = iface(
        "train",
        &[],
        &[("data", prep_put.output_artifact_ids.clone())],
    );
    put(
        &mut meta,
        put_req("b", &train, ExecutionState::Complete, "mem://train"),
    )
    .await;
    let eval = iface("eval", &[], &[]);
    put(&mut meta, put_req("b", &eval, ExecutionState::Failed, "")).await;
    let mut with_ext = put_req(
        "b",
        &iface("report", &[], &[]),
        ExecutionState::Complete,
        "mem://r",
    );
    with_ext.execution.as_mut().unwrap().external_id = "run-1/report".into();
    let ext_put = put(&mut meta, with_ext.clone()).await;
    let old = iface("old", &[], &[]);
    let old_put = put(
        &mut meta,
        put_req("b", &old, ExecutionState::Complete, "mem://old"),
    )
    .await;
    meta.put_execution(put_req("c", &old, ExecutionState::Complete, "mem://c-old"))
        .await
        .unwrap();
    cache
        .invalidate_cache(InvalidateCacheRequest {
            namespace: "b".into(),
            selector: Some(invalidate_cache_request::Selector::ExecutionId(
                old_put.execution_id,
            )),
        })
        .await
        .unwrap();
    let mut cached = lookup_req("b", &prep);
    cached.record_cached_execution = true;
    let hit = cache
        .get_cached_execution(cached)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hit.outcome, Outcome::Hit as i32);
    assert!(hit.cached_execution.is_some());
    let busy = iface("busy", &[], &[]);
    let mut reserve = lookup_req("b", &busy);
    reserve.reservation = Some(ReservationRequest {
        owner: "worker-1".into(),
        lease: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
    });
    let r = cache
        .get_cached_execution(reserve)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, Outcome::Reserved as i32);

    let tasks = [&prep, &train, &eval, &old, &busy];
    let mut before = Vec::new();
    for ti in tasks {
        before.push(served(&mut cache, "b", ti).await);
    }
    before.push(served(&mut cache, "c", &old).await);
    // (A lookup that asks for no reservation sees a held key as a miss.)
    let outcomes: Vec<i32> = before.iter().map(|s| s.0).collect();
    use Outcome::*;
    assert_eq!(
        outcomes,
        [Hit, Hit, Miss, Miss, Miss, Hit].map(|o| o as i32)
    );
    let snap_b = snapshot(&mut meta, "b").await;
    let snap_c = snapshot(&mut meta, "c").await;
    assert!(snap_b
        .executions
        .iter()
        .any(|e| e.state == ExecutionState::Cached as i32));
    let stats_b = stats(&mut cache, "b").await;
    assert_eq!(
        stats_b,
        (3, 1),
        "prepare, train, report (old is invalidated); 1 reservation"
    );

    // A running server holds the store: export refuses.
    let (ok, _, err) = stepcache(&["export", "--data-dir", path(&a)], b"");
    assert!(!ok);
    assert!(err.contains("in use by another process"), "{err}");
    server.stop().await;

    // sled's IO threads let go of the file a moment after the server's last
    // handle (seen under load): the export is retried while it is in use.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (ok, backup, err) = loop {
        let tried = stepcache(&["export", "--data-dir", path(&a)], b"");
        if tried.0 || !tried.2.contains("in use") || std::time::Instant::now() > deadline {
            break tried;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(ok, "{err}");
    assert!(backup.starts_with(b"stepcache-backup 1\n"));
    assert!(err.contains("exported"), "{err}");

    let b = root.path().join("restored");
    let (ok, _, err) = stepcache(&["import", "--data-dir", path(&b)], &backup);
    assert!(ok, "{err}");
    assert!(err.contains("imported"), "{err}");

    let server = TestServer::start(&b).await;
    let (mut cache, mut meta) = (server.cache().await, server.meta().await);
    assert_eq!(snapshot(&mut meta, "b").await, snap_b);
    assert_eq!(snapshot(&mut meta, "c").await, snap_c);
    let mut after = Vec::new();
    for ti in tasks {
        after.push(served(&mut cache, "b", ti).await);
    }
    after.push(served(&mut cache, "c", &old).await);
    assert_eq!(after, before, "the same hits, executions and artifacts");
    assert_eq!(stats(&mut cache, "b").await, stats_b);
    // The reservation is still held by its owner.
    let mut other = lookup_req("b", &busy);
    other.reservation = Some(ReservationRequest {
        owner: "worker-2".into(),
        lease: None,
    });
    let r = cache
        .get_cached_execution(other)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, Outcome::InProgress as i32);
    assert_eq!(r.reservation.unwrap().owner, "worker-1");
    // External ids still make retries idempotent.
    assert_eq!(
        put(&mut meta, with_ext).await.execution_id,
        ext_put.execution_id
    );
    let again = meta
        .put_artifacts(PutArtifactsRequest {
            artifacts: vec![ext],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.artifact_ids, vec![ext_id]);
    // New writes get IDs above every restored one.
    let max_old = snap_b
        .executions
        .iter()
        .map(|e| e.id)
        .chain(snap_b.artifacts.iter().map(|a| a.id))
        .chain(snap_c.executions.iter().map(|e| e.id))
        .chain(snap_c.artifacts.iter().map(|a| a.id))
        .max()
        .unwrap();
    let fresh = put(
        &mut meta,
        put_req("b", &eval, ExecutionState::Complete, "mem://eval"),
    )
    .await;
    assert!(
        fresh.execution_id > max_old,
        "{} > {max_old}",
        fresh.execution_id
    );
    assert!(fresh.output_artifact_ids[0] > max_old);
    server.stop().await;

    // The restored store is not empty: a second import is refused.
    let (ok, _, err) = stepcache(&["import", "--data-dir", path(&b)], &backup);
    assert!(!ok);
    assert!(err.contains("not empty"), "{err}");

    // And its own export carries the new high-water mark forward.
    let (ok, backup2, err) = stepcache(&["export", "--data-dir", path(&b)], b"");
    assert!(ok, "{err}");
    let c = root.path().join("twice");
    let (ok, _, err) = stepcache(&["import", "--data-dir", path(&c)], &backup2);
    assert!(ok, "{err}");
    let server = TestServer::start(&c).await;
    let mut meta = server.meta().await;
    let newer = put(&mut meta, put_req("b", &old, ExecutionState::Failed, "")).await;
    assert!(newer.execution_id > fresh.output_artifact_ids[0].max(fresh.execution_id));
    server.stop().await;
}

#[test]
fn damaged_backups_are_refused() {
    if on_postgres("export/import read a sled data directory (PostgreSQL: pg_dump)") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let a = root.path().join("a");
    // A store with a few records, written through the library.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = TestServer::start(&a).await;
        let mut meta = server.meta().await;
        for i in 0..5 {
            let ti = iface("t", &[("i", num(f64::from(i)))], &[]);
            put(
                &mut meta,
                put_req("d", &ti, ExecutionState::Complete, "mem://t"),
            )
            .await;
        }
        server.stop().await;
    });
    let (ok, backup, err) = stepcache(&["export", "--data-dir", path(&a)], b"");
    assert!(ok, "{err}");

    let mut flipped = backup.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    let cases = [
        (
            "truncated",
            backup[..backup.len() - 7].to_vec(),
            &["truncated"][..],
        ),
        ("cut in half", backup[..mid].to_vec(), &["truncated"]),
        // A flipped bit in a length field can also read as a short stream.
        ("flipped", flipped, &["corrupted", "truncated"]),
        (
            "not a backup",
            b"{\"json\": true}\n".to_vec(),
            &["not a stepcache backup"],
        ),
    ];
    for (name, bytes, expect) in cases {
        let target = root.path().join(name.replace(' ', "-"));
        let (ok, _, err) = stepcache(&["import", "--data-dir", path(&target)], &bytes);
        assert!(!ok, "{name} was accepted");
        assert!(expect.iter().any(|e| err.contains(e)), "{name}: {err}");
        assert!(
            !target.exists(),
            "{name}: the new data dir is removed again"
        );
    }
    // Missing store: export says so instead of creating one.
    let (ok, _, err) = stepcache(
        &["export", "--data-dir", path(&root.path().join("nothing"))],
        b"",
    );
    assert!(!ok);
    assert!(err.contains("no stepcache store"), "{err}");
    assert!(!root.path().join("nothing").exists());
}

#[test]
fn a_killed_import_leaves_a_store_nothing_serves_until_imported_again() {
    if on_postgres("export/import read a sled data directory (PostgreSQL: pg_dump)") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    // A store of some 30,000 records: more than one batch of an import.
    {
        let store = stepcache::store::Store::open(
            &a,
            &Default::default(),
            std::sync::Arc::new(stepcache::clock::SystemClock),
        )
        .unwrap();
        let artifacts = (0..8000)
            .map(|i| Artifact {
                namespace: "d".into(),
                r#type: "system.Dataset".into(),
                uri: format!("mem://{i}"),
                ..Default::default()
            })
            .collect();
        store.put_artifacts(artifacts).unwrap();
        store.close().unwrap();
    }
    let (ok, backup, err) = stepcache(&["export", "--data-dir", path(&a)], b"");
    assert!(ok, "{err}");

    // Killed with most of the backup read.
    let mut child = Command::new(env!("CARGO_BIN_EXE_stepcache"))
        .args(["import", "--data-dir", path(&b)])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(&backup[..backup.len() * 3 / 4]).unwrap();
    input.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(input);
    assert!(b.join(stepcache::store::backup::IMPORT_MARKER).exists());

    // Neither check nor serve takes the directory.
    let (ok, out, err) = stepcache(&["check", "--data-dir", path(&b)], b"");
    assert!(!ok, "{}", String::from_utf8_lossy(&out));
    assert!(err.contains("import"), "{err}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let opened = rt.block_on(stepcache::server::open_store(
        &stepcache::server::Config::new(&b),
    ));
    let Err(e) = opened else {
        panic!("serve opened a partial import")
    };
    assert!(e.to_string().contains("import"), "{e}");

    // Imported again: whole.
    let (ok, _, err) = stepcache(&["import", "--data-dir", path(&b)], &backup);
    assert!(ok, "{err}");
    assert!(!b.join(stepcache::store::backup::IMPORT_MARKER).exists());
    let (ok, out, err) = stepcache(&["check", "--data-dir", path(&b)], b"");
    assert!(ok, "{err}");
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("8000 artifacts") && out.contains("0 problems"),
        "{out}"
    );
}
