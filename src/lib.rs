//! stepcache: a gRPC cache and metadata store for pipeline tasks.
//!
//! Public modules are what the `stepcache` binary, the black-box tests and
//! the benchmark programs (`bench/`) build on: the server and its config,
//! the stores, keys, validation, the wire types. The service's handlers, its
//! metrics, connection handling and the lookup policy stay inside;
//! `bench_support` is the one door the benchmarks have below that.

pub mod admission;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod clock;
mod connections;
pub mod domain;
pub mod error;
pub mod json;
pub mod key;
pub mod lineage;
mod metrics;
pub mod pg;
mod policy;
pub mod pool;
pub mod query;
pub mod reservations;
pub mod server;
mod service;
pub mod store;
mod transport;
pub mod validate;

/// What the benchmark programs (`bench/`) reach below the server's API: the
/// hot cache and its hits file, timed alone by `hits-bench`. Not a stable
/// interface; nothing else uses it.
#[doc(hidden)]
pub mod bench_support {
    pub use crate::store::hitlog::{HitLog, LOG_FILE};
    pub use crate::store::hot::{HotHit, HotHits};
}

/// The generated protobuf messages and gRPC services of `stepcache.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("stepcache.v1");

    pub mod codec;
    mod decoding;
    mod lookup_reply;
    mod lookup_request;
    pub use lookup_reply::{
        encode_hit_fields, GetCachedExecutionResponse, WaitForCachedExecutionResponse,
    };
    pub use lookup_request::GetCachedExecutionRequest;

    /// The encoded FileDescriptorSet of the proto files (and their imports).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/stepcache_descriptor.bin"));
}
