//! The `--bpf-trace` pipeline: one filter in session slot 0, kernel records
//! in, enriched events out to the trace log. Owns the kernel handle, so
//! selection changes (the `/proc` scan, exact re-checks at exec, purges at
//! exit) happen in the same order as the records that cause them.

use std::{collections::HashMap, io};

use tracing::{debug, info, warn};

use crate::{
    ebpf::{Kernel, KernelError, KernelStats},
    enrich::Enricher,
    events::{
        decode::{decode, Record},
        local_port, remote_port, Event,
    },
    filter::{compile::compile, Filter, Module},
    procfs,
    tracelog::TraceLog,
};

/// The session slot `--bpf-trace` uses.
const SLOT: usize = 0;
const BIT: u64 = 1 << SLOT;

pub struct Tracer {
    kernel: Kernel,
    filter: Filter,
    enricher: Enricher,
    log: Option<TraceLog>,
    malformed: u64,
    reported: KernelStats,
    reported_malformed: u64,
}

impl Tracer {
    /// `log` is `None` when the log level hides traces: the kernel still
    /// runs so losses and errors are reported.
    #[must_use]
    pub fn new(kernel: Kernel, filter: Filter, log: Option<TraceLog>) -> Tracer {
        Tracer {
            kernel,
            filter,
            enricher: Enricher::new(),
            log,
            malformed: 0,
            reported: KernelStats::default(),
            reported_malformed: 0,
        }
    }

    /// Installs the filter in the kernel, then selects the processes that
    /// already run (in that order, so one that execs meanwhile is caught
    /// by the kernel). Returns how many were selected.
    pub fn start(&mut self) -> Result<usize, KernelError> {
        let me = std::process::id();
        let compiled = compile([(SLOT, &self.filter)], me)?;
        self.kernel.install(&compiled)?;
        let mut selected = 0;
        for pid in procfs::pids() {
            if pid == me {
                continue;
            }
            // Kernel threads have no exe and make no syscalls of interest.
            let (Some(exe), Some(comm)) = (procfs::exe(pid), procfs::comm(pid)) else {
                continue;
            };
            if self
                .filter
                .matches_process(exe.as_bytes(), comm.as_bytes(), pid)
            {
                self.kernel.select(pid, BIT)?;
                selected += 1;
            }
        }
        Ok(selected)
    }

    /// Handles one ring buffer item. An error means stdout is gone.
    pub fn handle(&mut self, bytes: &[u8]) -> io::Result<()> {
        let record = match decode(bytes) {
            Ok(record) => record,
            Err(error) => {
                self.malformed += 1;
                debug!(%error, len = bytes.len(), "malformed kernel record");
                return Ok(());
            }
        };
        let event = match record {
            Record::Exec(rec) => {
                let event = self.enricher.exec(&rec);
                let comm = Enricher::comm(&rec.hdr);
                let name = event.filename.as_deref().unwrap_or_default();
                if rec.hdr.sessions & BIT == 0 {
                    return Ok(());
                }
                if !self
                    .filter
                    .matches_process(name.as_bytes(), comm.as_bytes(), rec.hdr.pid)
                {
                    // The kernel matches by hash; a collision lands here.
                    debug!(
                        pid = rec.hdr.pid,
                        exe = name,
                        "kernel selection not confirmed; deselecting"
                    );
                    self.kernel.deselect(rec.hdr.pid);
                    return Ok(());
                }
                self.filter.wants(Module::Process).then_some(event)
            }
            Record::Fork(rec) => {
                let event = self.enricher.fork(&rec);
                self.filter.wants(Module::Process).then_some(event)
            }
            Record::Exit(hdr) => {
                let (event, fds) = self.enricher.exit(&hdr);
                self.kernel.forget_conns(hdr.pid, fds);
                self.filter.wants(Module::Process).then_some(event)
            }
            Record::Syscall(rec) => {
                let event = self.enricher.syscall(&rec);
                self.passes_ports(&event).then_some(event)
            }
        };
        match (event, self.log.as_mut()) {
            (Some(event), Some(log)) => log.emit(&event),
            _ => Ok(()),
        }
    }

    fn passes_ports(&self, event: &Event) -> bool {
        let conn = event.conn_info.as_ref();
        self.filter.matches_ports(conn.and_then(local_port), conn.and_then(remote_port))
    }

    /// Logs what was lost since the last call: records the kernel could
    /// not put in the ring, table overflows, malformed records.
    pub fn report_losses(&mut self) {
        let now = self.kernel.stats();
        let before = self.reported;
        let deltas: HashMap<&str, u64> = [
            ("kernel ring full", now.ring_full - before.ring_full),
            (
                "pending-syscall table full",
                now.pending_full - before.pending_full,
            ),
            ("connection table full", now.conns_full - before.conns_full),
            ("process table full", now.procs_full - before.procs_full),
            ("malformed record", self.malformed - self.reported_malformed),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
        for (stage, lost) in deltas {
            warn!(stage, lost, "events lost");
        }
        self.reported = now;
        self.reported_malformed = self.malformed;
    }

    /// Final counters, logged at shutdown.
    pub fn summary(&mut self) {
        self.report_losses();
        let s = self.reported;
        info!(
            ring_full = s.ring_full,
            pending_full = s.pending_full,
            conns_full = s.conns_full,
            procs_full = s.procs_full,
            malformed = self.malformed,
            "loss totals"
        );
    }
}
