//! Wiring: the store, both services, health and reflection on one listener.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::service::LayerExt;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::admission::{AdmissionLayer, AdmissionLimits};
use crate::auth::{Authenticate, Tokens};
use crate::backend::Backend;
use crate::clock::{Clock, SteadyClock};
use crate::connections::{self, ConnectionLimits};
use crate::metrics::stats::Stats;
use crate::metrics::{self, Metrics};
use crate::pg::PgStore;
use crate::pool::Pool;
use crate::proto::cache_service_server::CacheServiceServer;
use crate::proto::metadata_store_service_server::MetadataStoreServiceServer;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::reservations::Waiters;
use crate::service::cache::Cache;
use crate::service::metadata::Metadata;
use crate::service::Shared;
use crate::store::reopen::Reopening;
use crate::store::{Store, StoreConfig};
use crate::transport::CopyingWrites;
use crate::validate::Limits;

/// Everything `run` needs besides the listener.
#[derive(Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    /// A PostgreSQL URL (`postgres://user@host/db`): serve from that database
    /// instead of sled under `data_dir`. None = sled.
    pub store_url: Option<String>,
    pub limits: Limits,
    pub clock: Arc<dyn Clock>,
    /// Serve Prometheus metrics on this address (None: off).
    pub metrics_listen: Option<SocketAddr>,
    /// Name namespaces in the metrics even with auth on (they are named
    /// when auth is off). Off: with auth on, the metrics listener, which
    /// has no auth of its own, shows no namespace names, only totals.
    pub metrics_namespaces_with_auth: bool,
    /// Where the metrics listener was bound (set by `run`; useful with port 0).
    pub metrics_addr: Arc<OnceLock<SocketAddr>>,
    pub admission: AdmissionLimits,
    pub connections: ConnectionLimits,
    /// Threads of the read pool (see `pool`); 0: each read takes a tokio
    /// blocking thread.
    pub read_threads: usize,
    /// Threads of the write pool (see `pool`); 0: each write takes a tokio
    /// blocking thread.
    pub write_threads: usize,
    /// Bearer tokens and their namespaces; None = auth off.
    pub auth: Option<Arc<Tokens>>,
    /// PEM certificate chain and key; None = plaintext.
    pub tls: Option<TlsPem>,
}

/// A TLS identity in PEM.
#[derive(Clone)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            store: StoreConfig::default(),
            store_url: None,
            limits: Limits::default(),
            clock: Arc::new(SteadyClock::new()),
            admission: AdmissionLimits::default(),
            connections: ConnectionLimits::default(),
            read_threads: Pool::default_read_threads(),
            write_threads: Pool::DEFAULT_WRITE_THREADS,
            auth: None,
            tls: None,
            metrics_listen: None,
            metrics_namespaces_with_auth: false,
            metrics_addr: Arc::default(),
        }
    }

    /// Whether the metrics name namespaces: with auth off, or when asked to.
    pub fn metrics_namespaces(&self) -> bool {
        self.auth.is_none() || self.metrics_namespaces_with_auth
    }
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish and
/// flushes the store. Used by `stepcache serve` and by the tests.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let opened = open(&config).await?;
    let store = opened.backend();
    // Waiters answer as soon as shutdown starts, so that the graceful shutdown
    // (which waits for in-flight requests) never hangs on them.
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(true);
    };
    let shared = Shared {
        store,
        limits: Arc::new(config.limits.clone()),
        stats: Arc::new(Stats::new(config.metrics_namespaces())),
        waiters: Arc::new(Waiters::default()),
        shutdown: stopping_rx,
        reads: match config.read_threads {
            0 => None,
            n => Some(Pool::new("read", n)?),
        },
        writes: match config.write_threads {
            0 => None,
            n => Some(Pool::new("write", n)?),
        },
    };
    let sled = match opened {
        Opened::Sled(sled) => Some(sled),
        // Other replicas' publishes wake this one's waiters.
        Opened::Pg(pg) => {
            let waiters = shared.waiters.clone();
            tokio::task::spawn_blocking(move || pg.watch_other_writers(waiters)).await??;
            None
        }
    };
    let max = config.limits.max_message_bytes;
    let metrics = Metrics::new(
        &shared.store,
        sled.as_ref(),
        &shared.stats,
        config.metrics_namespaces(),
    );
    // The last strong handle goes with `shared`, for `Backend::close`.
    drop(sled);
    let metrics_task = metrics::start(
        config.metrics_listen,
        &config.metrics_addr,
        &metrics,
        shared.shutdown.clone(),
    )
    .await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CacheServiceServer<Cache>>().await;
    health
        .set_serving::<MetadataStoreServiceServer<Metadata>>()
        .await;
    tokio::spawn(watch_writable(
        Arc::downgrade(&shared.store),
        health.clone(),
        shared.shutdown.clone(),
    ));
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let cache = CacheServiceServer::new(Cache {
        shared: shared.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let metadata = MetadataStoreServiceServer::new(Metadata {
        shared: shared.clone(),
    })
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);

    // Health and reflection stay open (probes, grpcurl); the two services sit
    // behind authentication (when on) and one shared admission limit.
    let admission = AdmissionLayer::new(config.admission);
    let auth = Authenticate(config.auth.clone());
    let auth_on = config.auth.is_some();
    let cache = InterceptedService::new(admission.named_layer(cache), auth.clone());
    let metadata = InterceptedService::new(admission.named_layer(metadata), auth);

    tracing::info!(
        addr = %listener.local_addr()?,
        store = shared.store.kind(),
        data_dir = %config.data_dir.display(),
        tls = config.tls.is_some(),
        auth = auth_on,
        "serving"
    );
    // TCP_NODELAY on accepted connections: without it small replies wait on
    // Nagle + delayed ACK. Each
    // connection reports no vectored writes, so that h2 copies replies below
    // 1 KiB into one write buffer (`transport`).
    let conn = config.connections;
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let incoming =
        connections::limited(incoming, conn).map(|accepted| accepted.map(CopyingWrites::new));
    // The pings keep a live client's connection from going idle.
    let keepalive = conn.keepalive_interval.min(conn.idle_timeout / 2);
    let mut builder = Server::builder()
        .max_concurrent_streams(conn.max_streams_per_connection)
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key)))?;
    }
    builder
        .layer(metrics.layer())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(cache)
        .add_service(metadata)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    let store = shared.store.clone();
    drop(shared);
    tokio::task::spawn_blocking(move || store.close()).await??;
    tracing::info!("stopped; store flushed");
    Ok(())
}

/// Health says NOT_SERVING (overall and for both services) while the store
/// cannot make writes durable (a full or failing disk), SERVING again when
/// it can; checked every `WRITABLE_EVERY`.
async fn watch_writable(
    store: std::sync::Weak<dyn Backend>,
    health: tonic_health::server::HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WRITABLE_EVERY) => {}
            _ = stop.changed() => return,
        }
        // Weak: the store closes at shutdown with the last strong handle.
        let Some(probe) = store.upgrade() else { return };
        // A check of a flag the write path sets (`Store::writable`).
        let writable = probe.writable();
        let status = match (&writable, serving) {
            (Err(e), true) => {
                tracing::error!(error = %e, "the store cannot write: health says NOT_SERVING");
                Some(tonic_health::ServingStatus::NotServing)
            }
            (Ok(()), false) => {
                tracing::info!("the store can write again: health says SERVING");
                Some(tonic_health::ServingStatus::Serving)
            }
            _ => None,
        };
        if let Some(status) = status {
            use tonic::server::NamedService;
            for service in [
                "",
                CacheServiceServer::<Cache>::NAME,
                MetadataStoreServiceServer::<Metadata>::NAME,
            ] {
                health.set_service_status(service, status).await;
            }
        }
        serving = writable.is_ok();
    }
}

/// How often health checks that the store can write.
const WRITABLE_EVERY: Duration = Duration::from_secs(2);

/// An open store, as its concrete type: the server wires the abilities only
/// one backend has.
pub enum Opened {
    /// The sled store, opened again after a write fault (`store::reopen`).
    Sled(Arc<Reopening>),
    Pg(Arc<PgStore>),
}

impl Opened {
    /// The store behind the storage trait.
    pub fn backend(&self) -> Arc<dyn Backend> {
        match self {
            Opened::Sled(s) => s.clone(),
            Opened::Pg(s) => s.clone(),
        }
    }
}

/// Opens the store the config names: PostgreSQL when `store_url` is set, else
/// sled under `data_dir`.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(open(config).await?.backend())
}

/// `open_store`, as the concrete store.
pub async fn open(config: &Config) -> anyhow::Result<Opened> {
    let clock = config.clock.clone();
    Ok(match &config.store_url {
        Some(url) => {
            let (url, hot_hits) = (url.clone(), config.store.hot_hits);
            let store =
                tokio::task::spawn_blocking(move || PgStore::open(&url, clock, hot_hits)).await??;
            Opened::Pg(Arc::new(store))
        }
        None => {
            let (data_dir, store_config) = (config.data_dir.clone(), config.store.clone());
            let store = tokio::task::spawn_blocking(move || {
                let store = Store::open(&data_dir, &store_config, clock);
                crate::store::release_freed_memory();
                store
            })
            .await??;
            let store = Arc::new(store);
            Store::warm_in_background(&store);
            Store::watch_hits_in_background(&store);
            // Opened again in-process after a write fault.
            let (data_dir, store_config) = (config.data_dir.clone(), config.store.clone());
            Opened::Sled(Arc::new(Reopening::new(
                store,
                data_dir,
                store_config,
                config.clock.clone(),
            )))
        }
    })
}
