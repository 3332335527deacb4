//! The running daemon. Both modes share the same engine: `--bpf-trace`
//! is one session whose follower prints to stdout; the service mode serves
//! sessions over gRPC on a unix socket. Order at shutdown: stop RPCs, stop
//! the engine (ring reader), detach programs, remove the socket.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use qtap_proto::{
    time::Rfc3339,
    v1::{qtap_server::QtapServer, LossStage},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::ServerTlsConfig;
use tracing::{info, warn};

use crate::{
    ebpf::{Kernel, Selector},
    engine::{
        hub::{Owner, Spec},
        item::Item,
        Caller, Engine, Target,
    },
    filter::Filter,
    grpc::{self, Service},
    limits::Limits,
    tracefs,
    tracelog::TraceLog,
};

/// Queue between the engine and the `--bpf-trace` printer.
const TRACE_QUEUE_LEN: usize = 1 << 16;
/// How long, once shutdown starts, clients get to finish and disconnect
/// before their connections are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Commands waiting for the engine.
const COMMAND_QUEUE_LEN: usize = 256;

/// Mounts tracefs if needed and loads the kernel side.
fn load() -> anyhow::Result<(Kernel, aya::maps::RingBuf<aya::maps::MapData>)> {
    if tracefs::ensure_mounted()? {
        info!(
            path = tracefs::TRACEFS,
            "tracefs was not mounted; mounted it"
        );
    }
    let (kernel, ring) = Kernel::load()?;
    info!("eBPF programs loaded and attached");
    Ok((kernel, ring))
}

/// `--bpf-trace`: one session; its events printed until `shutdown` fires
/// or stdout closes. `log` is `None` when the log level hides traces.
pub async fn bpf_trace(
    filter: Filter,
    capture_bytes: u32,
    otlp_endpoint: Option<String>,
    log: Option<TraceLog>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if filter.selects_all() {
        warn!(%filter, "no process predicate: every process is traced; this is very verbose");
    }
    let (kernel, ring) = load()?;
    let mut engine = Engine::new(kernel).with_otlp_default(otlp_endpoint);
    let spec = Spec {
        filter: filter.clone(),
        name: "bpf-trace".into(),
        owner: Owner { uid: 0 },
        idle_timeout: Duration::MAX,
        ephemeral: false,
        capture_bytes,
        otlp_endpoint: None,
    };
    let session = engine.start(spec)?;
    let (_, mut follower) = engine.follow(
        Target::Id(session.id),
        Caller { uid: 0 },
        TRACE_QUEUE_LEN,
        false,
        None,
    )?;
    // No RPCs in this mode: the command queue stays empty.
    let (_no_rpcs, commands) = mpsc::channel(1);
    info!(%filter, "tracing; already-running processes selected");

    let printer_stop = shutdown.clone();
    let printer = tokio::spawn(async move {
        let mut log = log;
        let mut time = Rfc3339::new();
        while let Some(item) = follower.recv().await {
            match item {
                Item::Event(delivered) => {
                    if let Some(log) = log.as_mut() {
                        if let Err(error) = log.emit(&delivered.to_wire(&mut time)) {
                            info!(%error, "stdout closed; stopping");
                            printer_stop.cancel();
                            return;
                        }
                    }
                }
                Item::Lost(lost) => {
                    let stage = LossStage::try_from(lost.stage).unwrap_or_default();
                    warn!(stage = stage.meaning(), lost = lost.count, "events lost");
                }
                // The end is qtapd's own shutdown, logged by `run`; this
                // queue asked for events, not compact batches.
                Item::Heartbeat(_) | Item::End(_) | Item::Compact(_) => {}
            }
        }
    });
    let result = engine.run(ring, commands, shutdown).await;
    info!("eBPF programs detached");
    // The engine is gone, so the queue is closed: print what it still
    // holds rather than drop it uncounted.
    let _ = printer.await;
    result
}

/// Where and how the gRPC service listens.
pub struct ServeConfig {
    pub socket: PathBuf,
    pub group: String,
    /// Quotas and the OTLP allow-list (`limits`).
    pub limits: Limits,
    pub tcp: Option<TcpConfig>,
    /// `--metrics-listen`.
    pub metrics: Option<SocketAddr>,
    /// `--otlp-endpoint`.
    pub otlp_endpoint: Option<String>,
}

/// The optional TCP listener: mutual TLS, or plain with `--insecure-tcp`.
pub struct TcpConfig {
    pub addr: SocketAddr,
    /// `None` only with `--insecure-tcp`.
    pub tls: Option<ServerTlsConfig>,
}

/// Service mode: sessions over gRPC until `shutdown` fires.
pub async fn serve(config: ServeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (mut kernel, ring) = load()?;
    // No session yet: traced programs cost nothing until one starts.
    kernel.set_tracing(false)?;
    let listener = grpc::socket::bind(&config.socket, &config.group)?;
    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE_LEN);
    let metrics = match config.metrics {
        Some(addr) => {
            Some(crate::metrics::serve(addr, commands_tx.clone(), shutdown.clone()).await?)
        }
        None => None,
    };
    let limits = std::sync::Arc::new(config.limits);
    let engine = Engine::new(kernel)
        .with_otlp_default(config.otlp_endpoint)
        .with_limits(limits.clone());
    let engine = tokio::spawn(engine.run(ring, commands, shutdown.child_token()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<QtapServer<Service>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(qtap_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let insecure = config.tcp.as_ref().is_some_and(|t| t.tls.is_none());
    let service = Service::new(commands_tx, limits, insecure);
    let tcp = match config.tcp {
        Some(tcp) => Some(serve_tcp(tcp, service.clone(), shutdown.clone()).await?),
        None => None,
    };
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(QtapServer::new(service))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    let rpc_result = within_grace(server, &shutdown).await;
    // RPCs are stopped; now the engine, which owns the programs.
    shutdown.cancel();
    if let Some(tcp) = tcp {
        let abort = tcp.abort_handle();
        match within_grace(tcp, &shutdown).await {
            Ok(joined) => joined??,
            Err(()) => abort.abort(),
        }
    }
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    let engine_result = engine.await;
    let _ = std::fs::remove_file(&config.socket);
    info!(socket = %config.socket.display(), "eBPF programs detached; socket removed");
    if let Ok(rpc_result) = rpc_result {
        rpc_result?;
    }
    engine_result??;
    Ok(())
}

/// Binds the TCP listener and serves the same service on it.
async fn serve_tcp(
    tcp: TcpConfig,
    service: Service,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tcp.tls {
        builder = builder.tls_config(tls)?;
    } else {
        warn!(
            addr = %tcp.addr,
            "--insecure-tcp: serving plain TCP without authentication; anyone who can reach it is trusted as root"
        );
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<QtapServer<Service>>().await;
    let listener = tokio::net::TcpListener::bind(tcp.addr).await?;
    info!(addr = %tcp.addr, "listening on TCP");
    let router = builder
        .add_service(health_service)
        .add_service(QtapServer::new(service));
    Ok(tokio::spawn(router.serve_with_incoming_shutdown(
        TcpListenerStream::new(listener),
        shutdown.cancelled_owned(),
    )))
}

/// Awaits `work`, but once `shutdown` has fired gives it only
/// [`SHUTDOWN_GRACE`]: a client that never closes its connection must not
/// keep qtapd (and its programs) alive. `Err(())` when the grace ran out.
async fn within_grace<F: std::future::Future>(
    work: F,
    shutdown: &CancellationToken,
) -> Result<F::Output, ()> {
    tokio::pin!(work);
    tokio::select! {
        out = &mut work => Ok(out),
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            warn!(grace = ?SHUTDOWN_GRACE, "clients still connected at shutdown; dropping their connections");
            Err(())
        }
    }
}
