//! The running daemon. Both modes share the same engine: `--bpf-trace`
//! is one session whose follower prints to stdout; the service mode serves
//! sessions over gRPC on a unix socket. Order at shutdown: stop RPCs, stop
//! the engine (ring reader), detach programs, remove the socket.

use std::{path::PathBuf, time::Duration};

use qtap_proto::v1::{follow_item::Item, qtap_server::QtapServer, LossStage};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    ebpf::Kernel,
    engine::{
        hub::{Owner, Spec},
        Caller, Engine, Target,
    },
    filter::Filter,
    grpc::{self, Service},
    tracefs,
    tracelog::TraceLog,
};

/// Queue between the engine and the `--bpf-trace` printer.
const TRACE_QUEUE_LEN: usize = 1 << 16;
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
    info!(programs = kernel.attached(), "eBPF programs attached");
    Ok((kernel, ring))
}

/// `--bpf-trace`: one session; its events printed until `shutdown` fires
/// or stdout closes. `log` is `None` when the log level hides traces.
pub async fn bpf_trace(
    filter: Filter,
    log: Option<TraceLog>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if filter.selects_all() {
        warn!(%filter, "no process predicate: every process is traced; this is very verbose");
    }
    let (kernel, ring) = load()?;
    let mut engine = Engine::new(kernel);
    let spec = Spec {
        filter: filter.clone(),
        name: "bpf-trace".into(),
        owner: Owner { uid: 0 },
        idle_timeout: Duration::MAX,
        ephemeral: false,
    };
    let session = engine.start(spec)?;
    let (_, mut follower) =
        engine.follow(Target::Id(session.id), Caller { uid: 0 }, TRACE_QUEUE_LEN)?;
    // No RPCs in this mode: the command queue stays empty.
    let (_no_rpcs, commands) = mpsc::channel(1);
    info!(%filter, "tracing; already-running processes selected");

    let printer_stop = shutdown.clone();
    let printer = tokio::spawn(async move {
        let mut log = log;
        while let Some(item) = follower.recv().await {
            match item.item {
                Some(Item::Event(event)) => {
                    if let Some(log) = log.as_mut() {
                        if let Err(error) = log.emit(&event) {
                            info!(%error, "stdout closed; stopping");
                            printer_stop.cancel();
                            return;
                        }
                    }
                }
                Some(Item::Lost(lost)) => {
                    let stage = if lost.stage == LossStage::KernelRing as i32 {
                        "kernel ring"
                    } else {
                        "daemon queue"
                    };
                    warn!(stage, lost = lost.count, "events lost");
                }
                Some(Item::Heartbeat(_)) | None => {}
            }
        }
    });
    let result = engine.run(ring, commands, shutdown).await;
    printer.abort();
    info!("eBPF programs detached");
    result
}

/// Where and how the gRPC service listens.
pub struct ServeConfig {
    pub socket: PathBuf,
    pub group: String,
    pub idle_timeout: Duration,
}

/// Service mode: sessions over gRPC until `shutdown` fires.
pub async fn serve(config: ServeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (kernel, ring) = load()?;
    let listener = grpc::socket::bind(&config.socket, &config.group)?;
    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE_LEN);
    let engine = tokio::spawn(Engine::new(kernel).run(ring, commands, shutdown.child_token()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<QtapServer<Service>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(qtap_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = QtapServer::new(Service::new(commands_tx, config.idle_timeout));
    let rpc_shutdown = shutdown.clone();
    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            rpc_shutdown.cancelled_owned(),
        )
        .await;
    // RPCs are stopped; now the engine, which owns the programs.
    shutdown.cancel();
    let engine_result = engine.await;
    let _ = std::fs::remove_file(&config.socket);
    info!(socket = %config.socket.display(), "eBPF programs detached; socket removed");
    served?;
    engine_result??;
    Ok(())
}
