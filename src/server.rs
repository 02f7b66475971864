//! Wiring: the store, both services, health and reflection on one listener.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

use crate::clock::{Clock, SystemClock};
use crate::proto::cache_service_server::CacheServiceServer;
use crate::proto::metadata_store_service_server::MetadataStoreServiceServer;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::service::cache::Cache;
use crate::service::metadata::Metadata;
use crate::service::Shared;
use crate::store::{Store, StoreConfig};
use crate::validate::Limits;

/// Everything `run` needs besides the listener.
#[derive(Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub limits: Limits,
    pub clock: Arc<dyn Clock>,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            store: StoreConfig::default(),
            limits: Limits::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

/// Serves until `shutdown` resolves, then lets in-flight requests finish and
/// flushes the store. Used by `stepcache serve` and by the tests.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let store_config = config.store.clone();
    let clock = config.clock.clone();
    let store =
        tokio::task::spawn_blocking(move || Store::open(&data_dir, &store_config, clock)).await??;
    let shared = Shared {
        store: Arc::new(store),
        limits: Arc::new(config.limits.clone()),
    };
    let max = config.limits.max_message_bytes;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CacheServiceServer<Cache>>().await;
    health
        .set_serving::<MetadataStoreServiceServer<Metadata>>()
        .await;
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

    tracing::info!(addr = %listener.local_addr()?, data_dir = %config.data_dir.display(), "serving");
    Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(cache)
        .add_service(metadata)
        // TCP_NODELAY on every accepted connection, as Server::serve would set
        // it: without it, a response written in several small segments (a
        // HIT's headers, message and trailers) waits on Nagle's algorithm for
        // the client's delayed ACK, about 40 ms on Linux.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    let store = shared.store.clone();
    drop(shared);
    tokio::task::spawn_blocking(move || store.close()).await??;
    tracing::info!("stopped; store flushed");
    Ok(())
}
