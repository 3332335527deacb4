//! The running daemon: mounts tracefs, loads the kernel side, and drives
//! the ring reader until SIGINT/SIGTERM or a closed stdout.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::{unix::AsyncFd, Interest};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{ebpf::Kernel, filter::Filter, tracefs, tracelog::TraceLog, tracer::Tracer};

/// How often kernel-side loss counters are read and reported.
const LOSS_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Runs `--bpf-trace` mode until `shutdown` fires or stdout closes.
pub async fn bpf_trace(
    filter: Filter,
    log: Option<TraceLog>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if tracefs::ensure_mounted()? {
        info!(
            path = tracefs::TRACEFS,
            "tracefs was not mounted; mounted it"
        );
    }
    if filter.selects_all() {
        warn!(%filter, "no process predicate: every process is traced; this is very verbose");
    }
    let (kernel, ring) = Kernel::load()?;
    info!(programs = kernel.attached(), "eBPF programs attached");
    let mut tracer = Tracer::new(kernel, filter.clone(), log);
    let running = tracer.start()?;
    info!(%filter, running, "tracing; already-running processes selected");

    let result = read_ring(&mut tracer, ring, &shutdown).await;
    tracer.summary();
    info!("detaching eBPF programs");
    drop(tracer);
    result
}

async fn read_ring(
    tracer: &mut Tracer,
    ring: RingBuf<MapData>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and the
    // same for as long as the `AsyncFd` holds it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watch the ring buffer fd: {e}"))?;
    let mut ticker = tokio::time::interval(LOSS_REPORT_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => tracer.report_losses(),
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if let Err(error) = tracer.handle(&item) {
                        info!(%error, "stdout closed; stopping");
                        return Ok(());
                    }
                }
                guard.clear_ready();
            }
        }
    }
}
