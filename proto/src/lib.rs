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

pub mod compact;
pub mod json;
pub mod time;
pub mod view;

impl v1::LossStage {
    /// Where the loss happened, for a person.
    #[must_use]
    pub fn meaning(self) -> &'static str {
        match self {
            v1::LossStage::Unspecified => "at an unknown stage",
            v1::LossStage::KernelRing => "the kernel ring buffer was full (all sessions)",
            v1::LossStage::DaemonQueue => "this follower's queue in qtapd was full",
            v1::LossStage::PendingTable => {
                "the kernel's table of syscalls in flight was full (all sessions)"
            }
            v1::LossStage::ConnTable => {
                "the kernel's connection table was full: addresses of these sockets unknown to the kernel (all sessions)"
            }
            v1::LossStage::ProcessTable => {
                "the kernel's process table was full: forked children not traced (all sessions)"
            }
            v1::LossStage::TlsTable => {
                "the kernel's table of TLS calls in flight was full (all sessions)"
            }
            v1::LossStage::AccessUnverified => {
                "withheld: the process exited before qtapd could check that this session's owner may see it"
            }
        }
    }

    /// Whether the loss happened in the kernel, for every session (else in
    /// qtapd: one follower's queue, or one session's access check).
    #[must_use]
    pub fn in_kernel(self) -> bool {
        !matches!(
            self,
            v1::LossStage::DaemonQueue
                | v1::LossStage::Unspecified
                | v1::LossStage::AccessUnverified
        )
    }
}

/// The `msg` prefixes of TLS library calls (`openssl/SSL_write`,
/// `gnutls/gnutls_record_send`, `gotls/Write`): their bytes are plaintext.
pub const TLS_LIBRARY_PREFIXES: [&str; 3] = ["openssl/", "gnutls/", "gotls/"];

/// Whether an event's `msg` names a TLS library call.
#[must_use]
pub fn is_tls_library_msg(msg: &str) -> bool {
    TLS_LIBRARY_PREFIXES.iter().any(|p| msg.starts_with(p))
}

/// The encoded `FileDescriptorSet` of the API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/qtap_descriptor.bin"));
