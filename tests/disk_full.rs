//! A full disk, through a small tmpfs (skipped, saying so, where this process
//! may not mount one).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;
use stepcache::proto::cache_service_client::CacheServiceClient;
use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache::proto::*;
use tonic::transport::Channel;

/// A tmpfs of `mib` MiB, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(root: &Path, mib: u32) -> Option<Tmpfs> {
        let dir = root.join("tmpfs");
        std::fs::create_dir_all(&dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A server process, killed when dropped (as an operator restarts a server
/// whose disk failed).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `stepcache serve` on `dir`, and a channel to it.
async fn serve(dir: &Path) -> (Server, Channel) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_stepcache"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..500 {
        if let Ok(c) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            return (server, c);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the server did not come up");
}

async fn health_status(channel: &Channel) -> i32 {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status
}

/// Fills a 16 MiB tmpfs with PutExecutions: the one that fails answers
/// RESOURCE_EXHAUSTED and is seen by no reader (no HIT, not listed, not
/// found by ID); acknowledged writes keep answering; health turns
/// NOT_SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_cleanly_and_keeps_durable_reads() {
    if on_postgres("a sled data dir on a small tmpfs") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(root.path(), 16) else {
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    };
    let (server, channel) = serve(&fs.0.join("data")).await;
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
    // A list answers with acknowledged writes only, or fails as a storage
    // fault (sled may refuse a read that pages in once its first write
    // failed: a list is not yet guaranteed on a full disk), never INTERNAL.
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut list_failed = None;
    loop {
        let page = meta
            .list_executions(ListExecutionsRequest {
                namespace: "ns".into(),
                page_size: 10,
                page_token: token,
                ..Default::default()
            })
            .await;
        let page = match page {
            Ok(page) => page.into_inner(),
            Err(e) => {
                list_failed = Some(e);
                break;
            }
        };
        listed.extend(page.executions);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    match list_failed {
        Some(e) => assert!(
            matches!(
                e.code(),
                tonic::Code::ResourceExhausted | tonic::Code::Unavailable
            ),
            "{e:?}"
        ),
        None => {
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
        }
    }

    // Acknowledged writes keep answering.
    let r = cache
        .get_cached_execution(lookup_req("ns", &first))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), Outcome::Hit);
    assert_eq!(r.execution.unwrap().id, first_id);

    // Health turns NOT_SERVING (checked every 2 s).
    let mut status = health_status(&channel).await;
    for _ in 0..100 {
        if status == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        status = health_status(&channel).await;
    }
    assert_eq!(status, 2, "NOT_SERVING");
    drop(server);
}
