//! qtapd: the qtap daemon. Parses flags, validates the filter before
//! anything is loaded, sets up logging, and runs until SIGINT/SIGTERM.

mod daemon;
mod ebpf;
mod enrich;
mod events;
mod filter;
mod procfs;
mod tracefs;
mod tracelog;
mod tracer;

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{error, level_filters::LevelFilter};

use crate::{
    filter::Filter,
    tracelog::{Encoding, TraceLog},
};

/// qtapd traces the network syscalls of selected processes with eBPF.
///
/// Today it runs in `--bpf-trace` mode: the filter selects processes and
/// event families, and each event is written to stdout, one per line.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// What to trace, e.g. `mod:socket,exe.contains:curl`.
    ///
    /// Terms are `key:value`, comma-separated. Keys: mod (socket, process),
    /// exe, exe.contains, exe.startsWith, exe.endsWith, comm, pid, port.
    /// The same key twice is OR, different keys AND. Without a process
    /// term every process is traced.
    #[arg(long, value_name = "FILTER")]
    bpf_trace: String,
    /// error and warn print no traces; info prints every trace; debug
    /// adds the daemon's own debug lines.
    #[arg(long, value_enum, default_value_t = Level::Info)]
    log_level: Level,
    /// Encoding of traces (stdout) and daemon logs (stderr).
    #[arg(long, value_enum, default_value_t = Encoding::Console)]
    log_encoding: Encoding,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Level {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<Level> for LevelFilter {
    fn from(level: Level) -> Self {
        match level {
            Level::Error => LevelFilter::ERROR,
            Level::Warn => LevelFilter::WARN,
            Level::Info => LevelFilter::INFO,
            Level::Debug => LevelFilter::DEBUG,
            Level::Trace => LevelFilter::TRACE,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match Filter::parse(&args.bpf_trace) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("qtapd: invalid --bpf-trace filter: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(args.log_level, args.log_encoding);
    let log = (args.log_level >= Level::Info).then(|| TraceLog::new(args.log_encoding));
    match run(filter, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(filter: Filter, log: Option<TraceLog>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signals.cancel();
        });
        daemon::bpf_trace(filter, log, shutdown).await
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

fn init_logging(level: Level, encoding: Encoding) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(LevelFilter::from(level));
    match encoding {
        Encoding::Console => builder.init(),
        Encoding::Json => builder.json().flatten_event(true).init(),
    }
}
