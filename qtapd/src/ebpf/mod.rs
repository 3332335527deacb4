//! The kernel side as qtapd holds it: loads the object built by `build.rs`,
//! attaches every tracepoint program to the tracepoint it is named after
//! while at least one session runs (a qtapd with no session costs traced
//! programs nothing), attaches the OpenSSL uprobes to the libraries
//! sessions need, and owns the maps. Dropping [`Kernel`] detaches and
//! unloads everything.

pub mod btf;
pub mod memory;
pub mod preflight;

use std::path::{Path, PathBuf};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        trace_point::TracePointLinkId,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
        Program, ProgramError, UProbe,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use qtap_common::{
    call, map, offsets, stat, Config, Conn, ConnKey, CredOffsets, FileOffsets, GoKey, PatternKey,
    Pending, ProcSel, TaskOffsets, TlsPending,
};

use tracing::warn;

use self::preflight::Features;

use crate::{
    filter::compile::{CompileError, Compiled},
    gotls::GoTls,
    tracefs::{self, TracefsError},
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/qtapd"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Unsupported(#[from] preflight::Unsupported),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("load the eBPF object: {0}")]
    Load(#[source] Box<EbpfError>),
    #[error("program {name}: {source}")]
    Program {
        name: String,
        source: Box<ProgramError>,
    },
    #[error("the eBPF object has no map {0}")]
    NoMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<MapError>,
    },
    /// A TLS library probe could not be attached: the kernel refused
    /// (uprobes need `CAP_SYS_ADMIN`).
    #[error("{target}: cannot attach the TLS probes: {source}")]
    TlsAttach {
        target: PathBuf,
        source: Box<ProgramError>,
    },
    /// The target lacks a function every OpenSSL (or GnuTLS) defines.
    #[error("{target}: no {symbol}: not {library}")]
    TlsMissing {
        target: PathBuf,
        library: &'static str,
        symbol: &'static str,
    },
}

/// Where a file defines OpenSSL's or GnuTLS's functions: file offsets by
/// symbol name.
pub type TlsSymbols = std::collections::HashMap<String, u64>;

/// The TLS libraries, each with the functions a target must have to be
/// it (its other probes are optional: `SSL_read_ex` and friends are
/// missing from old versions); by the prefix of its function names.
pub const TLS_LIBRARIES: [(&str, &str, [&str; 2]); 2] = [
    ("OpenSSL", "SSL_", ["SSL_read", "SSL_write"]),
    (
        "GnuTLS",
        "gnutls_",
        ["gnutls_record_recv", "gnutls_record_send"],
    ),
];
/// The gotls entry programs of `crypto/tls.(*Conn).Write` and `.Read`
/// (their `_ret` programs go at the `RET`s; see qtapd-ebpf's `mod gotls`).
const GO_PROBES: [&str; 2] = ["go_tls_write", "go_tls_read"];
/// `bpf_map_update_elem` flag: update only an entry that exists.
const BPF_EXIST: u64 = 2;
/// Suffix of the return-probe programs (`SSL_read_ret`).
const RET_SUFFIX: &str = "_ret";

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> KernelError {
    move |source| KernelError::Map {
        name,
        source: Box::new(source),
    }
}

/// Counters the kernel keeps (`qtap_common::stat`), summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    pub ring_full: u64,
    pub pending_full: u64,
    pub conns_full: u64,
    pub procs_full: u64,
    pub tls_full: u64,
}

/// The loaded programs and the maps qtapd writes or reads.
pub struct Kernel {
    // Holds the programs and their links; dropped last.
    ebpf: Ebpf,
    /// Tracepoint links by program name, while sessions run.
    tracepoint_links: Vec<(String, TracePointLinkId)>,
    /// Links being detached: the kernel waits for a grace period per
    /// tracepoint (about 2.7 s for all of them here), so it happens on a
    /// thread of its own instead of stalling the engine.
    detaching: Option<std::thread::JoinHandle<()>>,
    /// OpenSSL probe links, per target file.
    tls_links: Vec<(PathBuf, Vec<(String, UProbeLinkId)>)>,
    procs: HashMap<MapData, u32, ProcSel>,
    conns: HashMap<MapData, ConnKey, Conn>,
    config: Array<MapData, Config>,
    /// `READER`: set to have the next data record wake the ring's reader.
    reader: Array<MapData, u32>,
    patterns: HashMap<MapData, PatternKey, u64>,
    stats: PerCpuArray<MapData, u64>,
    pending: HashMap<MapData, u64, Pending>,
    tls_active: HashMap<MapData, u64, TlsPending>,
    go_active: HashMap<MapData, GoKey, TlsPending>,
    installed: Vec<PatternKey>,
    features: Features,
    /// The data calls read their arguments at exit: their enter programs
    /// are not attached.
    args_at_exit: bool,
}

impl Kernel {
    /// Loads every program and attaches the tracepoints (so a kernel that
    /// refuses them fails qtapd at start); returns the kernel and the ring
    /// buffer the reader consumes. `set_tracing(false)` detaches them until
    /// a session needs them.
    pub fn load() -> Result<(Kernel, RingBuf<MapData>), KernelError> {
        let features = preflight::Facts::of_this_kernel().judge()?;
        for off in features.off() {
            warn!("{off}");
        }
        let fork_child = tracefs::required_offset("sched", "sched_process_fork", "child_pid")?;
        let exec_filename = tracefs::required_offset("sched", "sched_process_exec", "filename")?;
        let exit_group_dead =
            tracefs::field_offset("sched", "sched_process_exit", "group_dead")?.unwrap_or(0);

        let structs = if features.btf {
            btf::Structs::from_kernel()
        } else {
            Err(btf::BtfError::Read(std::io::ErrorKind::NotFound.into()))
        };
        let creds = from_btf(&structs, btf::Structs::cred_offsets).unwrap_or_else(|error| {
            warn!(
                %error,
                "cannot read credentials in the kernel: sessions of callers other than root \
                 will select only processes already running when they start"
            );
            CredOffsets::default()
        });
        let files = from_btf(&structs, btf::Structs::file_offsets).unwrap_or_else(|error| {
            warn!(
                %error,
                "cannot tell sockets from other fds in the kernel: qtapd tells them apart \
                 from /proc instead, later, and `fd:socket` sessions get every record"
            );
            FileOffsets::default()
        });
        let task = from_btf(&structs, btf::Structs::task_offsets).unwrap_or_else(|error| {
            warn!(
                %error,
                "cannot read a process's thread count in the kernel: data calls keep their \
                 arguments at enter (twice the probes), and a leader's exit ends its process's \
                 calls in flight"
            );
            TaskOffsets::default()
        });
        let mut ebpf = EbpfLoader::new()
            .override_global(offsets::CRED, &creds, true)
            .override_global(offsets::FILE, &files, true)
            .override_global(offsets::TASK, &task, true)
            .override_global(offsets::FORK_CHILD_PID, &fork_child, true)
            .override_global(offsets::EXEC_FILENAME, &exec_filename, true)
            .override_global(offsets::EXIT_GROUP_DEAD, &exit_group_dead, true)
            .load(OBJECT)
            .map_err(|e| KernelError::Load(Box::new(e)))?;

        for (name, program) in ebpf.programs_mut() {
            let fail = |source| KernelError::Program {
                name: name.to_owned(),
                source: Box::new(source),
            };
            match program {
                Program::TracePoint(tracepoint) => tracepoint.load().map_err(fail)?,
                // Attached per library when a session needs them.
                Program::UProbe(uprobe) => uprobe.load().map_err(fail)?,
                _ => return Err(fail(ProgramError::UnexpectedProgramType)),
            }
        }

        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(KernelError::NoMap(name));
        let ring = RingBuf::try_from(take(map::EVENTS)?).map_err(map_err(map::EVENTS))?;
        let procs = HashMap::try_from(take(map::PROCS)?).map_err(map_err(map::PROCS))?;
        let conns = HashMap::try_from(take(map::CONNS)?).map_err(map_err(map::CONNS))?;
        let config = Array::try_from(take(map::CONFIG)?).map_err(map_err(map::CONFIG))?;
        let reader = Array::try_from(take(map::READER)?).map_err(map_err(map::READER))?;
        let patterns = HashMap::try_from(take(map::PATTERNS)?).map_err(map_err(map::PATTERNS))?;
        let stats = PerCpuArray::try_from(take(map::STATS)?).map_err(map_err(map::STATS))?;
        let pending = HashMap::try_from(take(map::PENDING)?).map_err(map_err(map::PENDING))?;
        let tls_active =
            HashMap::try_from(take(map::TLS_ACTIVE)?).map_err(map_err(map::TLS_ACTIVE))?;
        let go_active =
            HashMap::try_from(take(map::GO_ACTIVE)?).map_err(map_err(map::GO_ACTIVE))?;
        let mut kernel = Kernel {
            ebpf,
            tracepoint_links: Vec::new(),
            detaching: None,
            tls_links: Vec::new(),
            procs,
            conns,
            config,
            reader,
            patterns,
            stats,
            pending,
            tls_active,
            go_active,
            installed: Vec::new(),
            features,
            args_at_exit: task.valid != 0,
        };
        kernel.set_tracing(true)?;
        Ok((kernel, ring))
    }
}

/// What the engine needs of the kernel side: the selection tables and the
/// counters. [`Kernel`] is the real one; tests use an in-memory stand-in.
pub trait Selector {
    /// Number of programs attached.
    fn attached(&self) -> usize;
    /// What is off on this kernel.
    fn features(&self) -> Features;
    /// Replaces the compiled filters.
    fn install(&mut self, compiled: &Compiled) -> Result<(), KernelError>;
    /// Sets the session mask of a process.
    fn select(&mut self, tgid: u32, sessions: u64) -> Result<(), KernelError>;
    /// Drops a process from the selection (absent is fine).
    fn deselect(&mut self, tgid: u32);
    /// The selected processes (and threads) with their session masks.
    fn selected(&self) -> Vec<(u32, u64)>;
    /// The session mask of one process (0: not selected).
    fn selection(&self, tgid: u32) -> u64;
    /// Forgets the connection entries of an exited process.
    fn forget_conns(&mut self, tgid: u32, fds: Vec<u32>);
    /// Removes the session bits `sessions` from every syscall and TLS call
    /// in flight: the slots are being retired.
    fn forget_sessions(&mut self, sessions: u64);
    /// Removes the connection entries (and Go TLS calls in flight) of
    /// processes that no longer exist (gone without an exit record qtapd
    /// saw); returns how many connections.
    fn sweep_conns(&mut self) -> usize;
    /// The kernel's counters, summed over CPUs.
    fn stats(&self) -> KernelStats;
    /// Has the next data record wake the ring's reader, which is about to
    /// stop its drain clock: data records are otherwise sent without a
    /// wakeup. The reader looks at the ring once more after this (the
    /// kernel side says why that is enough).
    fn wake_at_next_record(&mut self) -> Result<(), KernelError>;
    /// Attaches the tracepoints (`on`: a session runs) or detaches them.
    fn set_tracing(&mut self, on: bool) -> Result<(), KernelError>;
    /// Attaches the OpenSSL probes to a library or executable for every
    /// process that runs it, at the offsets `symbols` gives (an optional
    /// function it lacks goes unprobed); returns the number attached.
    fn attach_tls(&mut self, target: &Path, symbols: &TlsSymbols) -> Result<usize, KernelError>;
    /// Attaches the gotls probes to a Go executable, at the sites found.
    fn attach_go(&mut self, target: &Path, found: &GoTls) -> Result<usize, KernelError>;
    /// Detaches the TLS probes (all modules) from every target.
    fn detach_tls(&mut self);
}

impl Kernel {
    /// The uprobe programs by name (`SSL_read`, `SSL_read_ret`, …).
    fn uprobes(&mut self) -> impl Iterator<Item = (&str, &mut UProbe)> {
        self.ebpf
            .programs_mut()
            .filter_map(|(name, program)| match program {
                Program::UProbe(p) => Some((name, p)),
                _ => None,
            })
    }
}

impl Selector for Kernel {
    fn features(&self) -> Features {
        self.features.clone()
    }

    /// Number of programs attached (a uprobe counts once per target).
    fn attached(&self) -> usize {
        self.tracepoint_links.len() + self.tls_links.iter().map(|(_, l)| l.len()).sum::<usize>()
    }

    fn wake_at_next_record(&mut self) -> Result<(), KernelError> {
        self.reader.set(0, 1, 0).map_err(map_err(map::READER))?;
        // The flag is stored before the reader's next look at the ring is
        // loaded (the kernel side's barrier is its commit).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn set_tracing(&mut self, on: bool) -> Result<(), KernelError> {
        let attached = !self.tracepoint_links.is_empty();
        if on == attached {
            return Ok(());
        }
        if !on {
            let mut links = Vec::new();
            for (name, link) in std::mem::take(&mut self.tracepoint_links) {
                if let Some(Program::TracePoint(tp)) = self.ebpf.program_mut(&name) {
                    links.extend(tp.take_link(link).ok());
                }
            }
            self.detaching = Some(std::thread::spawn(move || drop(links)));
            return Ok(());
        }
        // Entries left from before the last detach would be stale.
        if let Some(detaching) = self.detaching.take() {
            let _ = detaching.join();
        }
        self.forget_in_flight();
        let mut links = Vec::new();
        let mut failure = None;
        for (name, program) in self.ebpf.programs_mut() {
            let Program::TracePoint(tracepoint) = program else {
                continue;
            };
            let data_enter = name
                .strip_prefix("sys_enter_")
                .and_then(crate::events::call_named)
                .is_some_and(call::args_at_exit);
            if data_enter && self.args_at_exit {
                continue;
            }
            let category = if name.starts_with("sys_") {
                "syscalls"
            } else {
                "sched"
            };
            match tracepoint.attach(category, name) {
                Ok(link) => links.push((name.to_owned(), link)),
                Err(source) => {
                    failure = Some(KernelError::Program {
                        name: name.to_owned(),
                        source: Box::new(source),
                    });
                    break;
                }
            }
        }
        self.tracepoint_links = links;
        match failure {
            Some(error) => {
                self.set_tracing(false)?;
                Err(error)
            }
            None => Ok(()),
        }
    }

    /// Replaces the compiled filters: new patterns first, then the config
    /// that refers to them, then the patterns no longer used.
    fn install(&mut self, compiled: &Compiled) -> Result<(), KernelError> {
        let keys: Vec<PatternKey> = compiled.patterns.keys().map(|&k| k.into()).collect();
        for (&key, &mask) in &compiled.patterns {
            self.patterns
                .insert(PatternKey::from(key), mask, 0)
                .map_err(map_err(map::PATTERNS))?;
        }
        self.config
            .set(0, compiled.config, 0)
            .map_err(map_err(map::CONFIG))?;
        for old in std::mem::replace(&mut self.installed, keys.clone()) {
            if !keys.contains(&old) {
                self.patterns.remove(&old).map_err(map_err(map::PATTERNS))?;
            }
        }
        Ok(())
    }

    /// Selects an already-running process for `sessions`.
    fn select(&mut self, tgid: u32, sessions: u64) -> Result<(), KernelError> {
        self.procs
            .insert(tgid, ProcSel { sessions }, 0)
            .map_err(map_err(map::PROCS))
    }

    /// Drops a process from the selection (absent is fine).
    fn deselect(&mut self, tgid: u32) {
        let _ = self.procs.remove(&tgid);
    }

    /// The selected processes (and threads, see the fork probe) with
    /// their session masks.
    fn selected(&self) -> Vec<(u32, u64)> {
        self.procs
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, v.sessions))
            .collect()
    }

    fn selection(&self, tgid: u32) -> u64 {
        self.procs.get(&tgid, 0).map_or(0, |s| s.sessions)
    }

    /// Forgets the kernel's connection entries of an exited process.
    fn forget_conns(&mut self, tgid: u32, fds: Vec<u32>) {
        for fd in fds {
            let _ = self.conns.remove(&ConnKey { tgid, fd });
        }
    }

    fn sweep_conns(&mut self) -> usize {
        let mut alive = std::collections::HashMap::new();
        let mut gone = |tgid: u32| {
            !*alive
                .entry(tgid)
                .or_insert_with(|| Path::new(&format!("/proc/{tgid}")).exists())
        };
        let keys: Vec<ConnKey> = self.conns.keys().filter_map(Result::ok).collect();
        let mut removed = 0;
        for key in keys {
            if gone(key.tgid) && self.conns.remove(&key).is_ok() {
                removed += 1;
            }
        }
        // Go TLS calls of processes gone mid-call.
        let keys: Vec<GoKey> = self.go_active.keys().filter_map(Result::ok).collect();
        for key in keys {
            if gone(key.tgid) {
                let _ = self.go_active.remove(&key);
            }
        }
        removed
    }

    fn forget_sessions(&mut self, sessions: u64) {
        let pending: Vec<(u64, Pending)> = self.pending.iter().filter_map(Result::ok).collect();
        for (key, mut entry) in pending {
            if entry.sessions & sessions != 0 {
                entry.sessions &= !sessions;
                // Gone meanwhile (the call returned) is fine.
                let _ = self.pending.insert(key, entry, BPF_EXIST);
            }
        }
        forget_tls_sessions(&mut self.tls_active, sessions);
        forget_tls_sessions(&mut self.go_active, sessions);
    }

    /// The kernel's counters, summed over CPUs.
    fn stats(&self) -> KernelStats {
        let sum = |index: u32| {
            self.stats
                .get(&index, 0)
                .map_or(0, |values| values.iter().sum::<u64>())
        };
        KernelStats {
            ring_full: sum(stat::RING_FULL),
            pending_full: sum(stat::PENDING_FULL),
            conns_full: sum(stat::CONNS_FULL),
            procs_full: sum(stat::PROCS_FULL),
            tls_full: sum(stat::TLS_FULL),
        }
    }

    fn attach_tls(&mut self, target: &Path, symbols: &TlsSymbols) -> Result<usize, KernelError> {
        // Each library whose functions the target defines must be whole,
        // and one must be there.
        let defined = TLS_LIBRARIES
            .into_iter()
            .filter(|(_, prefix, _)| symbols.keys().any(|name| name.starts_with(prefix)));
        let mut any = false;
        for (library, _, required) in defined {
            any = true;
            if let Some(symbol) = required.into_iter().find(|s| !symbols.contains_key(*s)) {
                return Err(KernelError::TlsMissing {
                    target: target.to_owned(),
                    library,
                    symbol,
                });
            }
        }
        if !any {
            return Err(KernelError::TlsMissing {
                target: target.to_owned(),
                library: TLS_LIBRARIES[0].0,
                symbol: TLS_LIBRARIES[0].2[0],
            });
        }
        let sites: Vec<(String, u64)> = self
            .uprobes()
            .filter_map(|(name, _)| {
                let offset = symbols.get(name.trim_end_matches(RET_SUFFIX))?;
                Some((name.to_owned(), *offset))
            })
            .collect();
        self.attach_at(target, sites)
    }

    fn attach_go(&mut self, target: &Path, found: &GoTls) -> Result<usize, KernelError> {
        let mut sites = Vec::new();
        for (program, sites_of) in [(GO_PROBES[0], &found.write), (GO_PROBES[1], &found.read)] {
            sites.push((program.to_owned(), sites_of.entry));
            let ret = format!("{program}{RET_SUFFIX}");
            sites.extend(sites_of.rets.iter().map(|&at| (ret.clone(), at)));
        }
        self.attach_at(target, sites)
    }

    /// Synchronous (about 1.3 s here: a grace period per probe), because a
    /// thread caught inside an `SSL_*` call keeps its `TLS_ACTIVE` entry,
    /// which would tie that thread's later syscalls to an `SSL*`; the
    /// entries are cleared once no probe can add one.
    fn detach_tls(&mut self) {
        for (_, links) in std::mem::take(&mut self.tls_links) {
            self.detach_links(links);
        }
        clear(&mut self.tls_active);
        clear(&mut self.go_active);
    }
}

/// Removes the session bits `sessions` from the TLS calls in flight of
/// `map` (`TLS_ACTIVE`, `GO_ACTIVE`); a call that returned meanwhile is
/// gone, which is fine.
fn forget_tls_sessions<K: aya::Pod + Copy>(
    map: &mut HashMap<MapData, K, TlsPending>,
    sessions: u64,
) {
    let active: Vec<(K, TlsPending)> = map.iter().filter_map(Result::ok).collect();
    for (key, mut entry) in active {
        if entry.sessions & sessions != 0 {
            entry.sessions &= !sessions;
            let _ = map.insert(key, entry, BPF_EXIST);
        }
    }
}

/// Removes every entry of a hash map.
fn clear<K: aya::Pod + Copy, V: aya::Pod>(map: &mut HashMap<MapData, K, V>) {
    let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for key in keys {
        let _ = map.remove(&key);
    }
}

impl Kernel {
    /// Tracing stopped: syscalls and TLS calls caught between their entry
    /// and return, and what the kernel learnt of fds, would be stale when
    /// tracing starts again (fds may be closed and reused meanwhile).
    fn forget_in_flight(&mut self) {
        clear(&mut self.pending);
        clear(&mut self.tls_active);
        clear(&mut self.go_active);
        clear(&mut self.conns);
    }

    /// Attaches uprobe programs at `(program name, file offset)` sites of
    /// `target`, all or none; returns the number attached.
    fn attach_at(
        &mut self,
        target: &Path,
        sites: Vec<(String, u64)>,
    ) -> Result<usize, KernelError> {
        let mut links = Vec::new();
        let mut failure = None;
        for (name, offset) in sites {
            let Some(Program::UProbe(program)) = self.ebpf.program_mut(&name) else {
                continue;
            };
            let at = UProbeAttachLocation::AbsoluteOffset(offset);
            match program.attach(at, target, UProbeScope::AllProcesses) {
                Ok(link) => links.push((name, link)),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        if let Some(error) = failure {
            self.detach_links(links);
            return Err(KernelError::TlsAttach {
                target: target.to_owned(),
                source: Box::new(error),
            });
        }
        let count = links.len();
        self.tls_links.push((target.to_owned(), links));
        Ok(count)
    }

    /// Detaches `(program name, link)` pairs.
    fn detach_links(&mut self, links: Vec<(String, UProbeLinkId)>) {
        for (name, link) in links {
            if let Some(Program::UProbe(program)) = self.ebpf.program_mut(&name) {
                let _ = program.detach(link);
            }
        }
    }
}

/// What `read` finds in the kernel's BTF (`structs`, read once), or why not.
fn from_btf<T>(
    structs: &Result<btf::Structs, btf::BtfError>,
    read: fn(&btf::Structs) -> Result<T, btf::BtfError>,
) -> Result<T, String> {
    match structs {
        Ok(s) => read(s).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}
