//! stepcache: a gRPC cache and metadata store for pipeline tasks.

pub mod admission;
pub mod auth;
pub mod backend;
pub mod cli;
pub mod clock;
pub mod connections;
pub mod domain;
pub mod error;
pub mod json;
pub mod key;
pub mod lineage;
pub mod metrics;
pub mod pg;
pub mod policy;
pub mod pool;
pub mod query;
pub mod reservations;
pub mod server;
pub mod service;
pub mod store;
pub mod transport;
pub mod validate;

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
