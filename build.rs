//! Compiles `proto/stepcache/v1/*.proto` with the pure-Rust `protox` compiler (no
//! system `protoc`), writes the descriptor set to OUT_DIR for gRPC reflection and
//! generates the prost messages and tonic services from it.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/stepcache/v1/types.proto",
    "proto/stepcache/v1/cache_service.proto",
    "proto/stepcache/v1/metadata_store_service.proto",
];

/// Messages written by hand in src/proto/ (lookup_request.rs, lookup_reply.rs).
const HAND_WRITTEN: &[&str] = &[
    ".stepcache.v1.GetCachedExecutionRequest",
    ".stepcache.v1.GetCachedExecutionResponse",
    ".stepcache.v1.WaitForCachedExecutionResponse",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("stepcache_descriptor.bin"), fds.encode_to_vec())?;
    let mut build = tonic_prost_build::configure()
        .generate_default_stubs(true)
        .btree_map(".")
        // Undecodable requests are INVALID_ARGUMENT (src/proto/codec.rs).
        .codec_path("crate::proto::codec::Codec");
    // Written by hand (the lookup request keeps its interface encoded, a hit's
    // stored bytes are spliced into the replies): the generated ones are
    // compiled out, and the services' code finds the hand-written ones under
    // the same names.
    for message in HAND_WRITTEN {
        build = build.message_attribute(message, "#[cfg(any())]");
    }
    build.compile_fds(fds)?;
    Ok(())
}
