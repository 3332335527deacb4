//! qtap's gRPC wire contract, package `qtap.v1` (see `qtap/v1/qtap.proto`),
//! and the JSON form of an event, shared by `qtapd --bpf-trace` and
//! `qtapctl --output json` so both print the same object.
//!
//! This crate depends on nothing of qtap's, so `qtapctl` stays small.

/// Generated messages, client and server of `qtap.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs, reason = "generated code")]
    tonic::include_proto!("qtap.v1");
}

pub mod json;

/// The encoded `FileDescriptorSet` of the API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/qtap_descriptor.bin"));
