//! qtapctl's renderers, as a library so that the binary (`main.rs`: the
//! command line, the client, the subcommands) and the micro-benchmarks
//! (`benches/`) share them.

pub mod render;
