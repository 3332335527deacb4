//! Compiles `qtap/v1/qtap.proto` with protox (pure Rust: no system protoc)
//! and generates the tonic client and server, plus the file descriptor set
//! that server reflection serves.

use std::{env, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let proto = "qtap/v1/qtap.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out.join("qtap_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // A batch's records and payloads as `Bytes`: the daemon encodes a
    // session's batch once and every follower of it shares the buffers.
    tonic_prost_build::configure()
        .bytes(".qtap.v1.CompactBatch.records")
        .bytes(".qtap.v1.CompactBatch.payloads")
        .compile_fds(descriptors)?;
    Ok(())
}
