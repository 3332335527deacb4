//! qtapctl: the unprivileged front end of qtapd.
//!
//! Trace sessions over gRPC (`trace start|follow|stop|list`, `status`)
//! arrive with the session API; until then qtapctl only identifies itself,
//! and `qtapd --bpf-trace` is the way to trace.

use clap::Parser;

/// qtapctl talks to a running qtapd. The session commands are not built
/// yet: trace with `qtapd --bpf-trace=FILTER` (see the README).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() {
    let _ = Args::parse();
    eprintln!("qtapctl: no session commands yet; run `qtapd --bpf-trace=FILTER` (see README)");
    std::process::exit(2);
}
