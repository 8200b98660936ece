//! go-plugin's housekeeping services and gRPC health, generated from
//! `proto/plugin/internal/plugin/*.proto` and `proto/grpc/health/v1/`.
#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

pub mod plugin {
    include!(concat!(env!("OUT_DIR"), "/plugin.rs"));
}

pub mod health {
    include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
}

/// Every file descriptor of `proto/` (source info stripped), for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/proto_descriptors.bin"));
