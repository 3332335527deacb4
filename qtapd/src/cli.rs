//! qtapd's command line and configuration file: the flags (`Args`), the
//! TOML file that can set any of them (flags win), and the TCP listener's
//! settings read from them.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, ValueEnum};
use tracing::level_filters::LevelFilter;

use crate::{
    daemon::TcpConfig,
    limits::{Limits, Tier},
    tracelog::Encoding,
};

pub mod config;

fn otlp_endpoint(endpoint: &str) -> Result<String, String> {
    crate::otlp::check_endpoint(endpoint).map(|()| endpoint.to_owned())
}

fn contains_lengths(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    if n > crate::limits::USER_CONTAINS_LENGTHS {
        return Err(format!(
            "at most {}: the kernel's other lengths are root's",
            crate::limits::USER_CONTAINS_LENGTHS
        ));
    }
    Ok(n)
}

impl Args {
    /// The limits the flags set.
    #[must_use]
    pub fn limits(&self) -> Limits {
        Limits {
            default_idle: std::time::Duration::from_secs(self.idle_timeout),
            user: Tier {
                sessions: self.user_max_sessions,
                followers: self.user_max_followers,
                queue_len: self.user_max_queue_len,
                queue_bytes: self.user_max_queue_bytes,
                idle_timeout: std::time::Duration::from_secs(self.user_max_idle_timeout),
                capture_bytes: self.user_max_capture_bytes,
                filter_terms: self.user_max_filter_terms,
                contains_lengths: self.user_max_contains_lengths,
            },
            max_queued_bytes: self.max_queued_bytes,
            otlp_allow: self.otlp_allow.clone(),
        }
    }
}

/// qtapd traces the network syscalls of selected processes with eBPF.
///
/// By default it serves trace sessions over gRPC on a unix socket (use
/// `qtapctl`). With `--bpf-trace` it traces one filter and prints each
/// event to stdout instead.
#[derive(Debug, Parser)]
#[command(version, about, args_override_self = true)]
pub struct Args {
    /// Read settings from this TOML file (default: /etc/qtap/qtapd.toml,
    /// if it exists). Its keys are these flags without the dashes; flags
    /// given here win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print a commented configuration file with every key and its
    /// default, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Print the man page (roff) and exit (for packaging).
    #[arg(long, hide = true)]
    pub print_man: bool,
    /// Trace this filter and print events to stdout, e.g.
    /// `mod:socket,exe.contains:curl`.
    ///
    /// Terms are `key:value`, comma-separated. Keys: mod (socket, process,
    /// openssl, gnutls, gotls, protocol, data), exe, exe.contains, exe.startsWith,
    /// exe.endsWith, comm, pid, uid, port, fd (socket, any), cgroup (a
    /// path prefix), container (an id prefix), unit (a systemd unit). The
    /// same key twice is OR, different keys AND. Without a process term
    /// every process is traced; without `fd:socket`, calls on files and
    /// pipes too (`conn_info` null), as Qtap's --bpf-trace shows them.
    #[arg(long, value_name = "FILTER")]
    pub bpf_trace: Option<String>,
    /// With --bpf-trace: include the first N bytes of each data event
    /// (plaintext for TLS library calls) as `payload`, base64 in JSON.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "bpf_trace",
          value_parser = clap::value_parser!(u32).range(0..=qtap_common::limit::CAPTURE_MAX as i64))]
    pub capture_bytes: u32,
    /// error and warn print no traces; info prints every trace; debug
    /// adds the daemon's own debug lines.
    #[arg(long, value_enum, default_value_t = Level::Info)]
    pub log_level: Level,
    /// Encoding of traces (stdout) and daemon logs (stderr).
    #[arg(long, value_enum, default_value_t = Encoding::Console)]
    pub log_encoding: Encoding,
    /// The gRPC unix socket (service mode).
    #[arg(long, env = "QTAP_SOCKET", default_value = "/run/qtap/qtapd.sock")]
    pub socket: PathBuf,
    /// Group that may use the socket: a name (created if missing) or a
    /// numeric gid, used as is (in a container, the node's gid).
    #[arg(long, default_value = "qtap")]
    pub socket_group: String,
    /// Seconds a session may have no follower before it is stopped.
    #[arg(long, default_value_t = 600)]
    pub idle_timeout: u64,
    /// Also serve on this TCP address (e.g. 0.0.0.0:7443). Requires mutual
    /// TLS: --tls-cert, --tls-key and --client-ca, unless --insecure-tcp.
    #[arg(long, value_name = "ADDR")]
    pub listen_tcp: Option<SocketAddr>,
    /// PEM certificate (chain) qtapd presents on TCP.
    #[arg(long, value_name = "PEM", requires = "listen_tcp")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "listen_tcp")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA whose signed client certificates are accepted; callers with
    /// one are trusted as administrators (like root on the socket).
    #[arg(long, value_name = "PEM", requires = "listen_tcp")]
    pub client_ca: Option<PathBuf>,
    /// A TCP client must finish its TLS handshake within this time (e.g.
    /// 10s, 500ms), or qtapd closes the connection.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: std::time::Duration,
    /// Serve Prometheus metrics at `/metrics` on this address (e.g.
    /// 127.0.0.1:9464). Off by default; anyone who can reach it can read
    /// them.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Export every session's events as OpenTelemetry log records (OTLP
    /// over gRPC) to this collector, e.g. `http://127.0.0.1:4317`; a
    /// session started with its own endpoint uses that instead.
    #[arg(long, value_name = "URL", value_parser = otlp_endpoint)]
    pub otlp_endpoint: Option<String>,
    /// OTLP collectors (comma-separated URLs) that users other than root
    /// may name with `trace start --otlp-endpoint`; empty: none. Root may
    /// name any.
    #[arg(long, value_name = "URL,...", value_delimiter = ',', value_parser = otlp_endpoint)]
    pub otlp_allow: Vec<String>,
    /// Sessions one user other than root may hold at once.
    #[arg(long, value_name = "N", default_value_t = Limits::default().user.sessions)]
    pub user_max_sessions: usize,
    /// Followers (streams and OTLP exports) one user other than root may
    /// hold at once, in all and per session.
    #[arg(long, value_name = "N", default_value_t = Limits::default().user.followers)]
    pub user_max_followers: usize,
    /// Longest follower queue (events) a user other than root may ask for.
    #[arg(long, value_name = "N", default_value_t = Limits::default().user.queue_len)]
    pub user_max_queue_len: usize,
    /// Bytes of events one follower of a user other than root may have
    /// queued; beyond it events are dropped and counted as lost.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().user.queue_bytes)]
    pub user_max_queue_bytes: u64,
    /// Longest idle timeout (seconds) a user other than root may ask for.
    #[arg(long, value_name = "SECS", default_value_t = Limits::default().user.idle_timeout.as_secs())]
    pub user_max_idle_timeout: u64,
    /// Most payload bytes per event a user other than root may capture.
    #[arg(long, value_name = "N", default_value_t = Limits::default().user.capture_bytes,
          value_parser = clap::value_parser!(u32).range(0..=qtap_common::limit::CAPTURE_MAX as i64))]
    pub user_max_capture_bytes: u32,
    /// Most terms in the filter of a user other than root.
    #[arg(long, value_name = "N", default_value_t = Limits::default().user.filter_terms)]
    pub user_max_filter_terms: usize,
    /// Distinct `exe.contains` lengths one user other than root may use
    /// across their sessions (the kernel matches 8 in all; users together
    /// never get the last 2).
    #[arg(long, value_name = "N", default_value_t = Limits::default().user.contains_lengths,
          value_parser = contains_lengths)]
    pub user_max_contains_lengths: usize,
    /// Bytes of events all follower queues may hold together; beyond it
    /// events are dropped and counted as lost.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_queued_bytes)]
    pub max_queued_bytes: u64,
    /// Serve plain TCP without authentication (loudly logged). Only for
    /// isolated test networks.
    #[arg(long, requires = "listen_tcp", conflicts_with_all = ["tls_cert", "tls_key", "client_ca"])]
    pub insecure_tcp: bool,
}

/// The TCP listener's config, read and checked before anything is loaded.
pub fn tcp_config(args: &Args) -> anyhow::Result<Option<TcpConfig>> {
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
pub enum Level {
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
