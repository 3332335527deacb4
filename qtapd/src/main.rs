//! qtapd: the qtap daemon. Parses flags, validates the filter before
//! anything is loaded, sets up logging, and runs until SIGINT/SIGTERM.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing::{error, level_filters::LevelFilter};

use qtapd::{
    daemon::{self, ServeConfig, TcpConfig},
    filter::Filter,
    tracelog::{Encoding, TraceLog},
};

/// qtapd traces the network syscalls of selected processes with eBPF.
///
/// By default it serves trace sessions over gRPC on a unix socket (use
/// `qtapctl`). With `--bpf-trace` it traces one filter and prints each
/// event to stdout instead.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Trace this filter and print events to stdout, e.g.
    /// `mod:socket,exe.contains:curl`.
    ///
    /// Terms are `key:value`, comma-separated. Keys: mod (socket, process,
    /// openssl, protocol, data), exe, exe.contains, exe.startsWith,
    /// exe.endsWith, comm, pid, uid, port. The same key twice is OR,
    /// different keys AND. Without a process term every process is traced.
    #[arg(long, value_name = "FILTER")]
    bpf_trace: Option<String>,
    /// With --bpf-trace: include the first N bytes of each data event
    /// (plaintext for TLS library calls) as `payload`, base64 in JSON.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "bpf_trace",
          value_parser = clap::value_parser!(u32).range(0..=qtap_common::limit::CAPTURE_MAX as i64))]
    capture_bytes: u32,
    /// error and warn print no traces; info prints every trace; debug
    /// adds the daemon's own debug lines.
    #[arg(long, value_enum, default_value_t = Level::Info)]
    log_level: Level,
    /// Encoding of traces (stdout) and daemon logs (stderr).
    #[arg(long, value_enum, default_value_t = Encoding::Console)]
    log_encoding: Encoding,
    /// The gRPC unix socket (service mode).
    #[arg(long, env = "QTAP_SOCKET", default_value = "/run/qtap/qtapd.sock")]
    socket: PathBuf,
    /// Group that may use the socket (created if missing).
    #[arg(long, default_value = "qtap")]
    socket_group: String,
    /// Seconds a session may have no follower before it is stopped.
    #[arg(long, default_value_t = 600)]
    idle_timeout: u64,
    /// Also serve on this TCP address (e.g. 0.0.0.0:7443). Requires mutual
    /// TLS: --tls-cert, --tls-key and --client-ca, unless --insecure-tcp.
    #[arg(long, value_name = "ADDR")]
    listen_tcp: Option<SocketAddr>,
    /// PEM certificate (chain) qtapd presents on TCP.
    #[arg(long, value_name = "PEM", requires = "listen_tcp")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "listen_tcp")]
    tls_key: Option<PathBuf>,
    /// PEM CA whose signed client certificates are accepted; callers with
    /// one are trusted as administrators (like root on the socket).
    #[arg(long, value_name = "PEM", requires = "listen_tcp")]
    client_ca: Option<PathBuf>,
    /// A TCP client must finish its TLS handshake within this time (e.g.
    /// 10s, 500ms), or qtapd closes the connection.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    tls_handshake_timeout: std::time::Duration,
    /// Serve plain TCP without authentication (loudly logged). Only for
    /// isolated test networks.
    #[arg(long, requires = "listen_tcp", conflicts_with_all = ["tls_cert", "tls_key", "client_ca"])]
    insecure_tcp: bool,
}

/// The TCP listener's config, read and checked before anything is loaded.
fn tcp_config(args: &Args) -> anyhow::Result<Option<TcpConfig>> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let Some(addr) = args.listen_tcp else {
        return Ok(None);
    };
    if args.insecure_tcp {
        return Ok(Some(TcpConfig { addr, tls: None }));
    }
    let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.client_ca) else {
        anyhow::bail!(
            "--listen-tcp needs --tls-cert, --tls-key and --client-ca (or --insecure-tcp)"
        );
    };
    let read =
        |p: &PathBuf| std::fs::read(p).map_err(|e| anyhow::anyhow!("read {}: {e}", p.display()));
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(cert)?, read(key)?))
        .client_ca_root(Certificate::from_pem(read(ca)?))
        .timeout(args.tls_handshake_timeout);
    Ok(Some(TcpConfig {
        addr,
        tls: Some(tls),
    }))
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
    let filter = match args.bpf_trace.as_deref().map(Filter::parse).transpose() {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("qtapd: invalid --bpf-trace filter: {e}");
            return ExitCode::from(2);
        }
    };
    let tcp = match tcp_config(&args) {
        Ok(tcp) => tcp,
        Err(e) => {
            eprintln!("qtapd: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(args.log_level, args.log_encoding);
    match run(args, filter, tcp) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, filter: Option<Filter>, tcp: Option<TcpConfig>) -> anyhow::Result<()> {
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
        if let Some(filter) = filter {
            let log = (args.log_level >= Level::Info).then(|| TraceLog::new(args.log_encoding));
            daemon::bpf_trace(filter, args.capture_bytes, log, shutdown).await
        } else {
            let config = ServeConfig {
                socket: args.socket,
                group: args.socket_group,
                idle_timeout: Duration::from_secs(args.idle_timeout),
                tcp,
            };
            daemon::serve(config, shutdown).await
        }
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
