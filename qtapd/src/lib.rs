//! qtapd's modules, as a library so that the binary (`main.rs`: flags,
//! logging, the runtime), the micro-benchmarks (`benches/`) and the fuzzers
//! (`fuzz/`) share them.

pub mod access;
pub mod cgroup;
pub mod cli;
pub mod daemon;
pub mod ebpf;
pub mod elf;
pub mod engine;
pub mod enrich;
pub mod events;
pub mod filter;
pub mod fuzz;
pub mod gotls;
pub mod grpc;
pub mod limits;
pub mod metrics;
pub mod openssl_search;
pub mod otlp;
pub mod procfs;
pub mod protocol;
pub mod state;
pub mod streams;
pub mod tls_stacks;
pub mod tracefs;
pub mod tracelog;
pub mod unix_socket;
