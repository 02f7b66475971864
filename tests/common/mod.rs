//! A real server on 127.0.0.1:0 and gRPC clients for the black-box tests.
#![allow(dead_code)]

pub mod disk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost_types::value::Kind;
use prost_types::Value;
use stepcache::clock::{Clock, ManualClock};
use stepcache::proto::cache_service_client::CacheServiceClient;
use stepcache::proto::metadata_store_service_client::MetadataStoreServiceClient;
use stepcache::proto::*;
use stepcache::server::{run, Config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub struct TestServer {
    pub addr: String,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(data_dir: &Path) -> TestServer {
        Self::start_with(Config::new(data_dir)).await
    }

    /// A server whose clock only moves when the test moves it.
    pub async fn start_with_clock(data_dir: &Path, clock: Arc<ManualClock>) -> TestServer {
        let mut config = Config::new(data_dir);
        config.clock = clock as Arc<dyn Clock>;
        Self::start_with(config).await
    }

    pub async fn start_with(mut config: Config) -> TestServer {
        if config.store_url.is_none() {
            config.store_url = postgres_for(&config.data_dir).await;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let data_dir = config.data_dir.clone();
        let handle = tokio::spawn(run(listener, config, async {
            let _ = rx.await;
        }));
        let server = TestServer {
            addr,
            data_dir,
            stop: Some(tx),
            handle: Some(handle),
        };
        // Wait until it answers.
        for _ in 0..200 {
            if Channel::from_shared(server.addr.clone())
                .unwrap()
                .connect()
                .await
                .is_ok()
            {
                return server;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("server did not start");
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn cache(&self) -> CacheServiceClient<Channel> {
        CacheServiceClient::new(self.channel().await)
    }

    pub async fn meta(&self) -> MetadataStoreServiceClient<Channel> {
        MetadataStoreServiceClient::new(self.channel().await)
    }

    /// Stops gracefully and waits until the store is flushed and closed.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

/// The PostgreSQL server the suite runs against (`STEPCACHE_TEST_POSTGRES`,
/// e.g. postgres://postgres@127.0.0.1:5432/postgres), or None: sled.
pub fn postgres_base() -> Option<String> {
    std::env::var("STEPCACHE_TEST_POSTGRES")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Whether the suite runs on PostgreSQL; sled-only tests skip then, saying why.
pub fn on_postgres(skip_reason: &str) -> bool {
    let on = postgres_base().is_some();
    if on {
        eprintln!("skipped on PostgreSQL: {skip_reason}");
    }
    on
}

/// The database of a data dir on the test server (created when missing): one
/// per data dir, so tests stay isolated and a restarted server finds its data.
pub async fn postgres_for(data_dir: &Path) -> Option<String> {
    let base = postgres_base()?;
    let name = format!(
        "t_{}",
        &blake3::hash(data_dir.to_string_lossy().as_bytes()).to_hex()[..20]
    );
    Some(create_database(&base, &name).await)
}

/// Creates database `name` on the server of `base` (if missing); its URL.
pub async fn create_database(base: &str, name: &str) -> String {
    let (b, n) = (base.to_string(), name.to_string());
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&b, postgres::NoTls).expect("connect to PostgreSQL");
        match c.batch_execute(&format!("CREATE DATABASE {n}")) {
            Ok(()) => {}
            Err(e) if e.code() == Some(&postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => panic!("CREATE DATABASE {n}: {e}"),
        }
    })
    .await
    .unwrap();
    let (head, _) = base.rsplit_once('/').expect("a URL ending in /database");
    format!("{head}/{name}")
}

/// The value of environment variable `var`, or None after saying that the
/// test skips without it (`what`: what it names, and who sets it).
pub fn test_env(var: &str, what: &str) -> Option<String> {
    let v = std::env::var(var).ok().filter(|s| !s.is_empty());
    if v.is_none() {
        eprintln!("skipped: {var} is not set ({what})");
    }
    v
}

/// A fresh database on the test PostgreSQL server, `{prefix}_{nanos}`: (its
/// URL, its name); None, after saying so, without PostgreSQL.
pub async fn fresh_database(prefix: &str) -> Option<(String, String)> {
    let Some(base) = postgres_base() else {
        eprintln!("skipped: STEPCACHE_TEST_POSTGRES is not set (this test needs PostgreSQL)");
        return None;
    };
    let db = format!(
        "{prefix}_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    Some((create_database(&base, &db).await, db))
}

/// A server on PostgreSQL database `url`, its data dir `dir`.
pub async fn server_on(url: &str, dir: &Path) -> TestServer {
    let mut config = Config::new(dir);
    config.store_url = Some(url.to_string());
    TestServer::start_with(config).await
}

/// Runs `sql` (statements without parameters) on PostgreSQL database `url`.
pub async fn pg_batch(url: &str, sql: &str) {
    let (url, sql) = (url.to_string(), sql.to_string());
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.batch_execute(&sql).unwrap();
    })
    .await
    .unwrap()
}

/// The rows of `sql` on PostgreSQL database `url`.
pub async fn pg_rows(url: &str, sql: &str) -> Vec<postgres::Row> {
    let (url, sql) = (url.to_string(), sql.to_string());
    tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.query(sql.as_str(), &[]).unwrap()
    })
    .await
    .unwrap()
}

pub fn num(x: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(x)),
    }
}

pub fn text(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// An interface with one output artifact `out` and the given inputs.
pub fn iface(
    component: &str,
    params: &[(&str, Value)],
    inputs: &[(&str, Vec<i64>)],
) -> TaskInterface {
    TaskInterface {
        component: component.into(),
        container: Some(ContainerSpec {
            image: "python:3.11".into(),
            command: vec!["python".into(), "-m".into(), component.into()],
            ..Default::default()
        }),
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        input_artifacts: inputs
            .iter()
            .map(|(k, ids)| (k.to_string(), ArtifactIds { ids: ids.clone() }))
            .collect(),
        output_artifacts: [("out".to_string(), "system.Dataset".to_string())].into(),
        ..Default::default()
    }
}

pub fn lookup_req(ns: &str, ti: &TaskInterface) -> GetCachedExecutionRequest {
    GetCachedExecutionRequest {
        namespace: ns.into(),
        target: Some(get_cached_execution_request::Target::Interface(ti.clone())),
        ..Default::default()
    }
}

pub fn put_req(
    ns: &str,
    ti: &TaskInterface,
    state: ExecutionState,
    uri: &str,
) -> PutExecutionRequest {
    PutExecutionRequest {
        execution: Some(Execution {
            namespace: ns.into(),
            interface: Some(ti.clone()),
            state: state as i32,
            ..Default::default()
        }),
        outputs: if state == ExecutionState::Complete {
            vec![OutputArtifact {
                name: "out".into(),
                artifact: Some(Artifact {
                    uri: uri.into(),
                    ..Default::default()
                }),
            }]
        } else {
            vec![]
        },
        ..Default::default()
    }
}

/// Sets an artifact's state (an update of the stored artifact).
pub async fn set_artifact_state(
    meta: &mut MetadataStoreServiceClient<Channel>,
    artifact_id: i64,
    state: ArtifactState,
) {
    let mut a = meta
        .get_artifacts(GetArtifactsRequest {
            ids: vec![artifact_id],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .artifacts
        .remove(0);
    a.state = state as i32;
    meta.put_artifacts(PutArtifactsRequest { artifacts: vec![a] })
        .await
        .unwrap();
}

/// A driver's view of one task run: look up, and on a miss "run" it and record it.
/// Returns (outcome, output artifact id).
pub async fn run_task(
    cache: &mut CacheServiceClient<Channel>,
    meta: &mut MetadataStoreServiceClient<Channel>,
    ns: &str,
    ti: &TaskInterface,
    policy: Option<CachePolicy>,
) -> (Outcome, i64) {
    let mut req = lookup_req(ns, ti);
    req.policy = policy;
    let resp = cache.get_cached_execution(req).await.unwrap().into_inner();
    let outcome = Outcome::try_from(resp.outcome).unwrap();
    if outcome == Outcome::Hit {
        let id = resp.output_artifacts["out"].artifacts[0].id;
        return (outcome, id);
    }
    let put = meta
        .put_execution(put_req(
            ns,
            ti,
            ExecutionState::Complete,
            &format!("mem://{}", ti.component),
        ))
        .await
        .unwrap()
        .into_inner();
    (outcome, put.output_artifact_ids[0])
}

/// Everything a namespace holds, to show that a failed call changed nothing.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub executions: Vec<Execution>,
    pub artifacts: Vec<Artifact>,
    pub events: Vec<Event>,
}

pub async fn snapshot(meta: &mut MetadataStoreServiceClient<Channel>, ns: &str) -> Snapshot {
    let mut executions = Vec::new();
    let mut token = String::new();
    loop {
        let r = meta
            .list_executions(ListExecutionsRequest {
                namespace: ns.into(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        executions.extend(r.executions);
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    let artifacts = meta
        .list_artifacts(ListArtifactsRequest {
            namespace: ns.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .artifacts;
    let events = if executions.is_empty() {
        vec![]
    } else {
        meta.get_events(GetEventsRequest {
            execution_ids: executions.iter().map(|e| e.id).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
    };
    Snapshot {
        executions,
        artifacts,
        events,
    }
}

pub fn outputs_by_name(resp: &GetCachedExecutionResponse) -> BTreeMap<String, Vec<i64>> {
    resp.output_artifacts
        .iter()
        .map(|(k, v)| (k.clone(), v.artifacts.iter().map(|a| a.id).collect()))
        .collect()
}
