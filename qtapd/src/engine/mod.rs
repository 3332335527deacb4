//! The engine: one task that owns the kernel handle, the sessions and the
//! ring reader. Kernel records come in, are decoded, enriched once, and
//! handed to every session whose bit they carry; RPC handlers reach the
//! engine only through [`Command`]s, so selection changes happen in order
//! with the records they affect and nothing needs a lock.

pub mod compact;
pub mod hub;
pub mod item;
pub mod queue;
mod tls_targets;

#[cfg(test)]
mod tests;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use qtap_common::{limit, MAX_SESSIONS};
use qtap_proto::v1::{
    Counters, EndReason, LossStage, Session as SessionInfo, SessionEnd, Status, TlsCoverage, TlsFd,
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::{mpsc, oneshot},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::{
    hub::{Hub, HubError, Queue, Session, Spec},
    tls_targets::TlsTargets,
};
use crate::{
    access::{Access, Verdict},
    cgroup::{self, Cgroup},
    ebpf::{Kernel, KernelError, KernelStats, Selector},
    enrich::Enricher,
    events::{
        decode::{decode, Record},
        derived::{self, Notes},
        local_port, remote_port, Event, Text,
    },
    filter::{compile::compile, Module},
    limits::{self, LimitError, Limits},
    procfs,
};

/// How often losses are reported, idle sessions expired, heartbeats sent.
const TICK: Duration = Duration::from_secs(1);
/// Heartbeats go out every this many ticks.
const HEARTBEAT_TICKS: u64 = 5;
/// The kernel's connection table is swept of exited processes every this
/// many ticks.
const SWEEP_TICKS: u64 = 60;
/// How often the ring is read while a session's programs write. Data
/// records do not wake the reader until `limit::WAKE_BYTES` wait unread,
/// so this is the most an event waits in the kernel under a steady load.
/// Each tick is a wakeup of qtapd and a batch for every follower, which
/// at a fixed 10k req/s cost more than the events themselves at 5 ms.
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// Ticks in a row that find the ring empty before the drain clock stops:
/// the kernel then wakes the reader at the next record
/// ([`Selector::wake_at_next_record`]), so a quiet session costs no
/// wakeups and an event after a quiet spell is read at once. More than
/// one, so a load that comes in bursts (nginx under `wrk` with pauses)
/// keeps the clock instead of being woken at each burst's first record.
const QUIET_TICKS: u32 = 2;
/// Records handled before the engine lets other tasks run: qtapd runs on
/// one thread, and under a constant load the ring is never empty, so
/// without this the gRPC streams to followers would never be served.
const RING_BATCH: usize = 256;

/// The identity an RPC arrives with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
}

impl Caller {
    #[must_use]
    pub fn is_root(self) -> bool {
        self.uid == 0
    }

    /// Root may touch every session; others only their own.
    fn may_access(self, session: &Session) -> Result<(), EngineError> {
        if self.is_root() || session.spec.owner.uid == self.uid {
            Ok(())
        } else {
            Err(EngineError::PermissionDenied(format!(
                "session {} belongs to uid {}; uid {} may only use its own sessions",
                session.id, session.spec.owner.uid, self.uid
            )))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("the filters cannot be installed together: {0}")]
    Compile(#[from] crate::filter::compile::CompileError),
    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("{0}")]
    Unavailable(String),
}

/// What to follow.
#[derive(Debug)]
pub enum Target {
    Id(String),
    /// An inline filter: a session that ends with the stream.
    Session(Spec),
}

/// Requests from RPC handlers.
#[derive(Debug)]
pub enum Command {
    Start {
        spec: Spec,
        reply: oneshot::Sender<Result<SessionInfo, EngineError>>,
    },
    Stop {
        id: String,
        caller: Caller,
        reply: oneshot::Sender<Result<SessionInfo, EngineError>>,
    },
    List {
        caller: Caller,
        reply: oneshot::Sender<Vec<SessionInfo>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    /// The fds of a process on which TLS was seen (`Enricher::tls_fds`).
    TlsFds {
        pid: u32,
        reply: oneshot::Sender<Option<Vec<TlsFd>>>,
    },
    Follow {
        target: Target,
        caller: Caller,
        queue_len: usize,
        /// The follower takes the session's compact batches.
        compact: bool,
        /// The follower's process, when qtapd knows it (a unix-socket
        /// peer): left out of the session it reads ([`Engine::follow`]).
        reader: Option<u32>,
        reply: oneshot::Sender<Result<(SessionInfo, queue::Receiver), EngineError>>,
    },
}

pub struct Engine<K: Selector = Kernel> {
    kernel: K,
    hub: Hub,
    enricher: Enricher,
    access: Access,
    tls: TlsTargets,
    started: Instant,
    records: u64,
    malformed: u64,
    reported: KernelStats,
    ticks: u64,
    /// `--otlp-endpoint`: where sessions without their own are exported.
    otlp_default: Option<String>,
    limits: Arc<Limits>,
    /// The host's cgroups, walked while a session selects by cgroup (its
    /// terms are compiled into their ids), again at each tick.
    cgroups: Vec<Cgroup>,
}

impl<K: Selector> Engine<K> {
    #[must_use]
    pub fn new(kernel: K) -> Engine<K> {
        Engine {
            kernel,
            hub: Hub::default(),
            enricher: Enricher::new(),
            access: Access::default(),
            tls: TlsTargets::default(),
            started: Instant::now(),
            records: 0,
            malformed: 0,
            reported: KernelStats::default(),
            ticks: 0,
            otlp_default: None,
            cgroups: Vec::new(),
            limits: Arc::new(Limits::default()),
        }
    }

    /// Enforces `limits` (sessions, followers and queued bytes per caller).
    #[must_use]
    pub fn with_limits(mut self, limits: Arc<Limits>) -> Engine<K> {
        self.hub = Hub::new(limits.max_queued_bytes);
        self.limits = limits;
        self
    }

    /// Exports every session that names no collector of its own to
    /// `endpoint` (qtapd's `--otlp-endpoint`).
    #[must_use]
    pub fn with_otlp_default(mut self, endpoint: Option<String>) -> Engine<K> {
        self.otlp_default = endpoint;
        self
    }

    /// Starts a session: installs all filters, then selects the processes
    /// that already run (in that order, so one that execs meanwhile is
    /// caught by the kernel).
    pub fn start(&mut self, spec: Spec) -> Result<SessionInfo, EngineError> {
        self.check_session_quota(&spec)?;
        if let Some(m) = Module::ALL
            .into_iter()
            .find(|m| m.is_tls_library() && spec.filter.wants(*m))
            .filter(|_| !self.kernel.features().uprobes)
        {
            return Err(EngineError::Unavailable(format!(
                "mod:{} is off on this kernel: it has no uprobes (CONFIG_UPROBE_EVENTS)",
                m.name()
            )));
        }
        let otlp_endpoint = spec
            .otlp_endpoint
            .clone()
            .or_else(|| self.otlp_default.clone());
        let (id, slot) = {
            let s = self.hub.create(spec)?;
            (s.id.clone(), s.slot)
        };
        if let Err(e) = self.reinstall() {
            let _ = self.hub.remove(&id, &failed_to_start());
            let _ = self.reinstall();
            return Err(e);
        }
        let running = match self.scan(slot) {
            Ok(running) => running,
            Err(e) => {
                // Leave nothing half-installed behind.
                if let Ok(session) = self.hub.remove(&id, &failed_to_start()) {
                    let _ = self.retire(&session);
                }
                return Err(e);
            }
        };
        if let Some(endpoint) = otlp_endpoint {
            self.export(&id, endpoint)?;
        }
        let session = self.hub.get(&id).map(Session::info).unwrap_or_default();
        info!(
            session = %session.id, owner_uid = session.owner_uid, filter = %session.filter,
            running, "session started"
        );
        Ok(session)
    }

    /// Refuses a session its owner may not add: more sessions than the
    /// owner's tier allows, more distinct `exe.contains` lengths across
    /// the owner's sessions, or, for users other than root together, more
    /// than their share of the kernel's pattern tables (the rest is kept
    /// for root).
    fn check_session_quota(&self, spec: &Spec) -> Result<(), EngineError> {
        let caller = Caller {
            uid: spec.owner.uid,
        };
        let tier = self.limits.tier(caller);
        let held = self
            .hub
            .iter()
            .filter(|s| s.spec.owner == spec.owner)
            .count();
        limits::check_count(caller, "sessions", held, tier.sessions, "user-max-sessions")?;
        let cgroups = &self.cgroups;
        let candidate = |pick: &dyn Fn(&Session) -> bool| {
            let filters = self
                .hub
                .iter()
                .filter(|s| pick(s))
                .map(|s| &s.spec.filter)
                .chain(std::iter::once(&spec.filter))
                .enumerate();
            compile(filters, 0, cgroups)
        };
        let own = candidate(&|s| s.spec.owner == spec.owner)?;
        let lengths = own.config.contains_lens.iter().filter(|&&l| l != 0).count();
        if lengths > tier.contains_lengths {
            return Err(LimitError::Exhausted(format!(
                "uid {}'s sessions would use {lengths} distinct `exe.contains` lengths; the \
                 limit is {} (--user-max-contains-lengths)",
                caller.uid, tier.contains_lengths
            ))
            .into());
        }
        if !caller.is_root() {
            let slots = self.hub.iter().filter(|s| s.spec.owner.uid != 0).count();
            if slots >= limits::USER_SLOTS {
                return Err(LimitError::Exhausted(format!(
                    "users other than root hold {slots} of the {MAX_SESSIONS} session slots, \
                     all they may (the rest is root's)"
                ))
                .into());
            }
            let users = candidate(&|s| s.spec.owner.uid != 0)?;
            let lengths = users
                .config
                .contains_lens
                .iter()
                .filter(|&&l| l != 0)
                .count();
            if users.patterns.len() > limits::USER_PATTERNS
                || lengths > limits::USER_CONTAINS_LENGTHS
            {
                return Err(LimitError::Exhausted(format!(
                    "sessions of users other than root would hold {} kernel patterns and {lengths} \
                     `exe.contains` lengths; they may hold {} and {} (the rest is root's)",
                    users.patterns.len(),
                    limits::USER_PATTERNS,
                    limits::USER_CONTAINS_LENGTHS
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Sends session `id`'s events to an OTLP collector: the exporter is a
    /// follower of the session, with a bounded queue (see `otlp`).
    fn export(&mut self, id: &str, endpoint: String) -> Result<(), EngineError> {
        let owner = self.hub.get(id).map_or(0, |s| s.spec.owner.uid);
        let queue = Queue {
            len: crate::otlp::QUEUE_LEN,
            bytes: self.limits.tier(Caller { uid: owner }).queue_bytes,
            uid: owner,
            compact: false,
        };
        let rx = self.hub.follow_exporter(id, queue)?;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            info!(session = %id, %endpoint, "exporting the session's events as OTLP logs");
            runtime.spawn(crate::otlp::export(endpoint, id.to_owned(), rx));
        }
        Ok(())
    }

    /// Stops a session and removes its kernel state.
    pub fn stop(&mut self, id: &str, caller: Caller) -> Result<SessionInfo, EngineError> {
        let session = self
            .hub
            .get(id)
            .ok_or_else(|| HubError::NotFound(id.to_owned()))?;
        caller.may_access(session)?;
        let end = SessionEnd {
            reason: EndReason::Stopped.into(),
            detail: format!("stopped by uid {}", caller.uid),
        };
        let session = self.hub.remove(id, &end)?;
        self.retire(&session)?;
        info!(session = %session.id, by_uid = caller.uid, "session stopped");
        Ok(session.info())
    }

    /// Ends every session (the kernel state goes with the engine): each
    /// follower gets what is queued, its unreported losses, and `end`.
    fn end_all(&mut self, end: &SessionEnd) {
        let ids: Vec<String> = self.hub.iter().map(|s| s.id.clone()).collect();
        for id in ids {
            let _ = self.hub.remove(&id, end);
        }
    }

    /// Recompiles the kernel tables and clears the session's bit from
    /// every selected process.
    fn retire(&mut self, session: &Session) -> Result<(), EngineError> {
        self.reinstall()?;
        let bit = 1u64 << session.slot;
        self.kernel.forget_sessions(bit);
        for (tgid, mask) in self.kernel.selected() {
            self.unselect(tgid, mask, bit)?;
        }
        Ok(())
    }

    /// Takes the sessions of `bits` from process `tgid`, selected for
    /// the sessions of `mask`.
    fn unselect(&mut self, tgid: u32, mask: u64, bits: u64) -> Result<(), KernelError> {
        if mask & bits == 0 {
            return Ok(());
        }
        let rest = mask & !bits;
        if rest == 0 {
            self.kernel.deselect(tgid);
            Ok(())
        } else {
            self.kernel.select(tgid, rest)
        }
    }

    fn reinstall(&mut self) -> Result<(), EngineError> {
        if self.uses_cgroups() {
            self.walk_cgroups();
        }
        let mut compiled = compile(self.hub.filters(), std::process::id(), &self.cgroups)?;
        compiled.config.capture_bytes = self.hub.capture_bytes();
        compiled.config.restricted = self.hub.restricted();
        self.kernel.install(&compiled)?;
        let modules = &compiled.config.modules;
        let tls_needed = qtap_common::module::TLS.iter().any(|&m| modules[m] != 0);
        self.tls.set_needed(&mut self.kernel, tls_needed);
        self.kernel.set_tracing(!self.hub.is_empty())?;
        Ok(())
    }

    fn uses_cgroups(&self) -> bool {
        self.hub.iter().any(|s| s.spec.filter.has_cgroup_terms())
    }

    /// Walks the host's cgroups; `true` when the set changed.
    fn walk_cgroups(&mut self) -> bool {
        let (now, cut) = cgroup::walk();
        if cut {
            warn!(
                walked = now.len(),
                "more cgroups than qtapd walks: cgroup terms see only these"
            );
        }
        let ids = |all: &[Cgroup]| all.iter().map(|c| c.id).collect::<Vec<_>>();
        let changed = ids(&now) != ids(&self.cgroups);
        if changed {
            self.enricher.cgroups_changed();
        }
        self.cgroups = now;
        changed
    }

    /// Selects the running processes that `slot`'s filter matches.
    fn scan(&mut self, slot: usize) -> Result<usize, EngineError> {
        let Some(session) = self.hub.by_slot(slot) else {
            return Ok(0);
        };
        let filter = session.spec.filter.clone();
        let owner = session.spec.owner.uid;
        let me = std::process::id();
        let bit = 1u64 << slot;
        let current: std::collections::HashMap<u32, u64> =
            self.kernel.selected().into_iter().collect();
        let mut selected = 0;
        // With `pid` terms only those processes can match: no /proc walk.
        let named: Vec<u32> = filter.pids().collect();
        let candidates = if named.is_empty() {
            procfs::pids()
        } else {
            named
        };
        for pid in candidates {
            if pid == me {
                continue;
            }
            // Kernel threads have no exe and make no syscalls of interest.
            let (Some(exe), Some(comm), Some(uid)) =
                (procfs::exe(pid), procfs::comm(pid), procfs::uid(pid))
            else {
                continue;
            };
            if filter.matches_process(exe.as_bytes(), comm.as_bytes(), pid, uid)
                && (!filter.has_cgroup_terms()
                    || filter.matches_cgroup(self.enricher.cgroup(pid).as_deref()))
                && (owner == 0 || self.access.verdict(pid) == Verdict::Visible(owner))
            {
                let mask = current.get(&pid).copied().unwrap_or(0) | bit;
                self.kernel.select(pid, mask)?;
                self.tls.watch(pid);
                selected += 1;
            }
        }
        Ok(selected)
    }

    /// Attaches a follower to a session (started for it with
    /// `Target::Session`). The follower's own process (`reader`) is left
    /// out of that session: a filter with no process term selects it, and
    /// then its reads of the stream are the session's events, each read
    /// making more to read.
    pub fn follow(
        &mut self,
        target: Target,
        caller: Caller,
        queue_len: usize,
        compact: bool,
        reader: Option<u32>,
    ) -> Result<(SessionInfo, queue::Receiver), EngineError> {
        let id = match target {
            Target::Id(id) => {
                let session = self
                    .hub
                    .get(&id)
                    .ok_or_else(|| HubError::NotFound(id.clone()))?;
                caller.may_access(session)?;
                id
            }
            Target::Session(spec) => self.start(spec)?.id,
        };
        let tier = self.limits.tier(caller);
        let per_session = self.hub.get(&id).map_or(0, Session::followers);
        let failed = limits::check_count(
            caller,
            "followers of all sessions",
            self.hub.followers_of(caller.uid),
            tier.followers,
            "user-max-followers",
        )
        .and_then(|()| {
            limits::check_count(
                caller,
                &format!("followers of session {id}"),
                per_session,
                tier.followers,
                "user-max-followers",
            )
        });
        if let Err(error) = failed {
            // A session made for this stream alone goes with it.
            if self
                .hub
                .get(&id)
                .is_some_and(|s| s.spec.ephemeral && s.followers() == 0)
            {
                if let Ok(session) = self.hub.remove(&id, &failed_to_start()) {
                    let _ = self.retire(&session);
                }
            }
            return Err(error.into());
        }
        let queue = Queue {
            len: queue_len,
            bytes: tier.queue_bytes,
            uid: caller.uid,
            compact,
        };
        let rx = self.hub.follow(&id, queue)?;
        if let (Some(pid), Some(slot)) = (reader, self.hub.get(&id).map(|s| s.slot)) {
            let mask = self.kernel.selection(pid);
            if let Err(error) = self.unselect(pid, mask, 1 << slot) {
                warn!(session = %id, pid, %error, "the follower's own calls stay selected");
            }
        }
        let info = self.hub.get(&id).map(Session::info).unwrap_or_default();
        debug!(session = %id, uid = caller.uid, "follower attached");
        Ok((info, rx))
    }

    fn list(&self, caller: Caller) -> Vec<SessionInfo> {
        self.hub
            .iter()
            .filter(|s| caller.may_access(s).is_ok())
            .map(Session::info)
            .collect()
    }

    fn status(&self) -> Status {
        let stats = self.kernel.stats();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            kernel: kernel_release(),
            programs_attached: self.kernel.attached() as u32,
            ring_bytes: u64::from(limit::RING_BYTES),
            uptime_secs: self.started.elapsed().as_secs(),
            sessions: self.hub.len() as u32,
            selected_processes: self.kernel.selected().len() as u32,
            features_off: self.kernel.features().off(),
            tls_coverage: Some({
                let (tls_fds, plaintext_fds) = self.enricher.tls_coverage();
                TlsCoverage {
                    probed_files: self.tls.probed_files(),
                    tls_fds,
                    plaintext_fds,
                }
            }),
            counters: Some(Counters {
                records: self.records,
                kernel_ring_full: stats.ring_full,
                pending_full: stats.pending_full,
                conns_full: stats.conns_full,
                procs_full: stats.procs_full,
                tls_full: stats.tls_full,
                malformed: self.malformed,
                follower_queue_full: self.hub.queue_losses(),
            }),
        }
    }

    pub fn command(&mut self, command: Command) {
        // A reply that cannot be sent means the caller left; nothing to do.
        match command {
            Command::Start { spec, reply } => drop(reply.send(self.start(spec))),
            Command::Stop { id, caller, reply } => drop(reply.send(self.stop(&id, caller))),
            Command::List { caller, reply } => drop(reply.send(self.list(caller))),
            Command::Status { reply } => drop(reply.send(self.status())),
            Command::TlsFds { pid, reply } => drop(reply.send(self.enricher.tls_fds(pid))),
            Command::Follow {
                target,
                caller,
                queue_len,
                compact,
                reader,
                reply,
            } => {
                drop(reply.send(self.follow(target, caller, queue_len, compact, reader)));
            }
        }
    }

    /// Ring buffer items handled so far, malformed ones included.
    #[must_use]
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Handles one ring buffer item.
    pub fn handle(&mut self, bytes: &[u8]) {
        self.records += 1;
        let record = match decode(bytes) {
            Ok(record) => record,
            Err(error) => {
                self.malformed += 1;
                debug!(%error, len = bytes.len(), "malformed kernel record");
                return;
            }
        };
        let hdr = *record.header();
        match record {
            Record::Exec(rec) => {
                // A new image: its credentials are checked again.
                self.access.forget(hdr.pid);
                let event = self.enricher.exec(&rec);
                let mask = self.confirm_exec(&rec, &event);
                if mask != 0 {
                    self.tls.watch_exec(&mut self.kernel, hdr.pid);
                }
                self.hub
                    .deliver(mask, &event, |s, _| s.spec.filter.wants(Module::Process));
            }
            Record::Creds(_) => {
                self.access.deny(hdr.pid);
                debug!(
                    pid = hdr.pid,
                    sessions = hdr.sessions,
                    "left restricted sessions"
                );
            }
            Record::Fork(rec) => {
                let event = self.enricher.fork(&rec);
                let mask = self.admit(&hdr);
                // After `admit`, which checked the parent if it had to.
                self.access.fork(hdr.pid, rec.child_pid);
                self.hub
                    .deliver(mask, &event, |s, _| s.spec.filter.wants(Module::Process));
            }
            Record::Exit(_) => {
                let mask = self.admit(&hdr);
                let (event, fds) = self.enricher.exit(&hdr);
                self.kernel.forget_conns(hdr.pid, fds);
                self.access.forget(hdr.pid);
                self.hub
                    .deliver(mask, &event, |s, _| s.spec.filter.wants(Module::Process));
            }
            Record::Syscall(rec, payload) => {
                // Enriched even when delivered to no one: the fd state
                // must follow the process. The event is made only for a
                // session with a follower.
                let mask = self.admit(&hdr);
                let build = self.hub.listened(mask);
                if let (Some(event), notes) = self.enricher.syscall(&rec, payload, build) {
                    self.deliver_fd_event(mask, &event, notes, Module::Socket);
                }
            }
            Record::Tls(rec, payload) => {
                let mask = self.admit(&hdr);
                let build = self.hub.listened(mask);
                if let (Some(event), notes) = self.enricher.tls(&rec, payload, build) {
                    let module = Module::of_tls_call(rec.call);
                    self.deliver_fd_event(mask, &event, notes, module);
                }
            }
        }
    }

    /// The sessions a record may be delivered to: of those it names, the
    /// ones that existed when it was made (a slot's previous owner's
    /// records never reach its next), and of those, restricted sessions
    /// only when their owner may see the process (`access`).
    fn admit(&mut self, hdr: &qtap_common::Header) -> u64 {
        let mask = self.hub.started_by(hdr.sessions, hdr.ts_ns);
        mask & !self.withheld(hdr, mask)
    }

    /// The restricted sessions of `mask` whose owner may not see `hdr`'s
    /// process. When that could not be checked (the process is gone), the
    /// record is withheld from the sessions of the uid it ran as, and
    /// they are told it is lost: failing closed, but not silently.
    fn withheld(&mut self, hdr: &qtap_common::Header, mask: u64) -> u64 {
        let restricted = mask & self.hub.restricted();
        if restricted == 0 {
            return 0;
        }
        match self.access.verdict(hdr.pid) {
            Verdict::Visible(uid) => restricted & !self.hub.owned_by(uid),
            Verdict::RootOnly => restricted,
            Verdict::Unknown => {
                let entitled = restricted & self.hub.owned_by(hdr.uid);
                if entitled != 0 {
                    debug!(
                        pid = hdr.pid,
                        kind = hdr.kind,
                        "withheld: process gone before its access check"
                    );
                    self.hub.withhold(entitled, 1);
                }
                restricted
            }
        }
    }

    /// Delivers an event about an fd to the sessions of `module`, and the
    /// events derived from it to the sessions of `protocol` and `data`.
    /// The event is shared from here on: moved by value, its few hundred
    /// bytes were copied at each call (with the growth of compact batches,
    /// the `memmove` that was a fifth of qtapd's samples).
    fn deliver_fd_event(&mut self, mask: u64, event: &Arc<Event>, notes: Notes, module: Module) {
        // A syscall on an fd that is not a network socket, for `fd:socket`
        // sessions where the kernel could not tell (no BTF).
        let not_socket = module == Module::Socket && event.conn_info.is_none();
        let wants = |m: Module| {
            move |s: &Session, e: &Event| {
                let filter = &s.spec.filter;
                filter.wants(m) && passes_ports(s, e) && !(not_socket && filter.sockets_only())
            }
        };
        let detected = (notes.detected && self.hub.wanted(mask, Module::Protocol))
            .then(|| derived::protocol_event(event));
        let data = if self.hub.wanted(mask, Module::Data) {
            derived::data_event(event, notes)
        } else {
            None
        };
        self.hub.deliver(mask, event, wants(module));
        if let Some(detected) = detected {
            self.hub
                .deliver(mask, &Arc::new(detected), wants(Module::Protocol));
        }
        if let Some(data) = data {
            self.hub.deliver(mask, &Arc::new(data), wants(Module::Data));
        }
    }

    /// The kernel matched by hash; check each selecting session's filter
    /// exactly, and a restricted session's right to see the process, and
    /// drop the bits that fail from the kernel's selection. Returns the
    /// sessions the exec is delivered to (those that existed when it was
    /// stamped, see [`Engine::admit`]).
    fn confirm_exec(&mut self, rec: &qtap_common::ExecRecord, event: &Event) -> u64 {
        let claimed = rec.hdr.sessions;
        let name = event.filename.as_ref().map_or("", Text::as_str).as_bytes();
        let comm = &event.comm[..event.comm.iter().position(|&b| b == 0).unwrap_or(16)];
        let mut mask = claimed & !self.withheld(&rec.hdr, claimed);
        let cgroup = event.cgroup.clone();
        for session in self.hub.iter() {
            let bit = 1u64 << session.slot;
            let filter = &session.spec.filter;
            if mask & bit != 0
                && !(filter.matches_process(name, comm, rec.hdr.pid, rec.hdr.uid)
                    && (!filter.has_cgroup_terms() || filter.matches_cgroup(cgroup.as_deref())))
            {
                mask &= !bit;
            }
        }
        // Bits of no session at all (ended meanwhile) go too.
        mask &= self.hub.mask_all();
        if mask != claimed {
            debug!(
                pid = rec.hdr.pid,
                claimed, mask, "kernel selection not confirmed; correcting"
            );
            if mask == 0 {
                self.kernel.deselect(rec.hdr.pid);
            } else if let Err(error) = self.kernel.select(rec.hdr.pid, mask) {
                warn!(%error, pid = rec.hdr.pid, "could not correct a selection");
            }
        }
        self.hub.started_by(mask, rec.hdr.ts_ns)
    }

    /// Once per [`TICK`]: report kernel losses, expire idle sessions,
    /// send heartbeats.
    pub fn tick(&mut self) {
        self.ticks += 1;
        // Verdicts of processes that left without an exit record (no
        // longer selected) would pile up; checking again is cheap.
        if self.access.len() > limit::PROCS as usize {
            self.access = Access::default();
        }
        self.tls.tick(&mut self.kernel);
        // Cgroups made since (a container started, a unit restarted) get
        // their ids into the kernel's tables.
        if self.uses_cgroups() && self.walk_cgroups() {
            if let Err(error) = self.reinstall() {
                warn!(%error, "cgroup selection not updated");
            }
        }
        let now = self.kernel.stats();
        // Connections of processes gone without an exit record would hold
        // their entries: swept when the table overflowed, and once a minute.
        if now.conns_full > self.reported.conns_full || self.ticks.is_multiple_of(SWEEP_TICKS) {
            let removed = self.kernel.sweep_conns();
            if removed > 0 {
                debug!(removed, "connection entries of exited processes removed");
            }
        }
        // Every kernel-side drop reaches every follower, with its stage.
        for (stage, lost) in [
            (
                LossStage::KernelRing,
                now.ring_full - self.reported.ring_full,
            ),
            (
                LossStage::PendingTable,
                now.pending_full - self.reported.pending_full,
            ),
            (
                LossStage::ConnTable,
                now.conns_full - self.reported.conns_full,
            ),
            (
                LossStage::ProcessTable,
                now.procs_full - self.reported.procs_full,
            ),
            (LossStage::TlsTable, now.tls_full - self.reported.tls_full),
        ] {
            if lost > 0 {
                warn!(stage = stage.meaning(), lost, "lost in the kernel");
                self.hub.broadcast_lost(stage, lost);
            }
        }
        self.reported = now;
        for session in self.hub.expire(Instant::now()) {
            info!(session = %session.id, "session stopped: no follower");
            if let Err(error) = self.retire(&session) {
                warn!(%error, session = %session.id, "could not remove the session's kernel state");
            }
        }
        if self.ticks.is_multiple_of(HEARTBEAT_TICKS) {
            self.hub.heartbeat();
        }
    }

    /// Hands followers what was offered them since the last flush
    /// ([`Hub::flush`]); `run` does so after every pass of its loop.
    pub fn flush(&mut self) {
        self.hub.flush();
    }

    /// Handles up to [`RING_BATCH`] ring records; returns how many (the
    /// whole batch: more may be waiting).
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> usize {
        for read in 0..RING_BATCH {
            let Some(item) = ring.next() else {
                return read;
            };
            self.handle(&item);
        }
        RING_BATCH
    }

    /// Asks the kernel to wake the reader at the next record (a drain
    /// found the ring empty); false when it cannot, and the drain clock
    /// must run on.
    fn wake_at_next_record(&mut self) -> bool {
        match self.kernel.wake_at_next_record() {
            Ok(()) => true,
            Err(error) => {
                debug!(%error, "cannot ask the kernel for a wakeup; the drain clock runs on");
                false
            }
        }
    }

    /// Runs until `shutdown`: reads the ring, serves commands, ticks.
    pub async fn run(
        mut self,
        ring: RingBuf<MapData>,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        // SAFETY: the ring buffer owns its map fd, which stays open and the
        // same for as long as the `AsyncFd` holds it.
        let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watch the ring buffer fd: {e}"))?;
        let mut ticker = tokio::time::interval(TICK);
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut found = self
            .tls
            .take_found()
            .ok_or_else(|| anyhow::anyhow!("the engine runs once"))?;
        // A batch was cut short at `RING_BATCH`: read on after the yield.
        let mut more = false;
        // Drain ticks in a row that found the ring empty.
        let mut quiet = 0;
        // The kernel wakes the reader at the next record: the drain clock
        // is stopped.
        let mut resting = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(command) = commands.recv() => self.command(command),
                Some(examined) = found.recv() => self.tls.attach(&mut self.kernel, &examined),
                _ = ticker.tick() => self.tick(),
                // Data records arrive without a wakeup (see
                // `limit::WAKE_BYTES`): collected on this clock while a
                // session's programs write. `QUIET_TICKS` that find
                // nothing stop the clock.
                _ = drain.tick(), if !more && !resting && !self.hub.is_empty() => {
                    let mut read = self.drain(ring.get_mut());
                    quiet = if read == 0 { quiet + 1 } else { 0 };
                    if quiet >= QUIET_TICKS && self.wake_at_next_record() {
                        // What was sent before the kernel saw the request
                        // is read now; the clock stops if there is none.
                        read = self.drain(ring.get_mut());
                        resting = read == 0;
                        quiet = 0;
                    }
                    more = read == RING_BATCH;
                }
                // What a batch cut short left is read at once, not on a
                // timer: a timer set for now fires at the next
                // millisecond, and the sleep until then was a context
                // switch per `RING_BATCH` under a steady load.
                () = std::future::ready(()), if more => {
                    let read = self.drain(ring.get_mut());
                    if read > 0 {
                        quiet = 0;
                    }
                    more = read == RING_BATCH;
                }
                guard = ring.readable_mut(), if !more => {
                    let mut guard = guard?;
                    let read = self.drain(guard.get_inner_mut());
                    if read > 0 {
                        quiet = 0;
                    }
                    more = read == RING_BATCH;
                    if !more {
                        guard.clear_ready();
                    }
                    if resting {
                        // Records follow a wakeup in runs: the next look
                        // is a tick from now.
                        resting = false;
                        drain.reset();
                    }
                }
            }
            // What the branch offered followers goes out in one send each
            // (a drained batch of records, a heartbeat, a stop).
            self.flush();
            if more {
                // The followers' streams and the RPCs run in between.
                tokio::task::yield_now().await;
            }
        }
        // What the kernel wrote before the stop still reaches the
        // followers (before the end of their streams): at most a ring's
        // worth, as traced processes go on writing while this runs.
        let ring = ring.get_mut();
        let most = limit::RING_BYTES as usize / std::mem::size_of::<qtap_common::Header>();
        for _ in 0..most {
            let Some(item) = ring.next() else { break };
            self.handle(&item);
        }
        self.end_all(&SessionEnd {
            reason: EndReason::Shutdown.into(),
            detail: "qtapd is shutting down".into(),
        });
        let c = self.status().counters.unwrap_or_default();
        info!(
            records = c.records,
            kernel_ring_full = c.kernel_ring_full,
            pending_full = c.pending_full,
            conns_full = c.conns_full,
            procs_full = c.procs_full,
            tls_full = c.tls_full,
            malformed = c.malformed,
            follower_queue_full = c.follower_queue_full,
            "engine stopped; loss totals"
        );
        Ok(())
    }
}

/// The end of a session that could not be started (it has no followers).
fn failed_to_start() -> SessionEnd {
    SessionEnd {
        reason: EndReason::Unspecified.into(),
        detail: "the session could not be started".into(),
    }
}

fn passes_ports(session: &Session, event: &Event) -> bool {
    let filter = &session.spec.filter;
    if !filter.has_ports() {
        return true;
    }
    let conn = event.conn_info.as_deref();
    filter.matches_ports(conn.and_then(local_port), conn.and_then(remote_port))
}

/// `uname -r`.
fn kernel_release() -> String {
    nix::sys::utsname::uname().map_or_else(
        |_| "unknown".into(),
        |u| u.release().to_string_lossy().into_owned(),
    )
}
