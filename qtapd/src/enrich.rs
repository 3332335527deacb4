//! Turns decoded kernel records into events: adds the exe of each process
//! and the connection of each fd, from the kernel's own view first and from
//! `/proc` once per fd otherwise, and the fd's stream state (TLS, protocol;
//! see `streams`). What it learns is kept in one `state::ProcState` per
//! process (one `FdState` per fd), replaced when the fd is closed or its
//! number reused, and dropped when the process execs or exits.

use std::sync::Arc;

use foldhash::HashMap;

use qtap_common::{
    call, conn_flag, direction, flag, tls_call, Conn, ExecRecord, ForkRecord, Header,
    SyscallRecord, TlsRecord,
};

use qtap_proto::v1::TlsFd;

use crate::{
    cgroup::{self, Cgroup},
    events::{
        addr_text, call_labels, derived::Notes, errno_name, family_name, is_data_call, role_name,
        shared_base, tls_call_labels, type_name, ConnInfo, Event, Text,
    },
    procfs::{self, FdTarget},
    protocol,
    state::ProcState,
    streams::{Side, Stream},
    unix_socket,
};

/// Per-process and per-fd knowledge.
#[derive(Default)]
pub struct Enricher {
    procs: HashMap<u32, ProcState>,
    cgroups: cgroup::Cache,
}

impl Enricher {
    #[must_use]
    pub fn new() -> Enricher {
        Enricher::default()
    }

    /// The fds of `pid` on which TLS was seen, with their peers and
    /// whether a library call is bound to them; `None` when qtapd holds
    /// no state of `pid` (no session selected it, or it made no call).
    #[must_use]
    pub fn tls_fds(&self, pid: u32) -> Option<Vec<TlsFd>> {
        let state = self.procs.get(&pid)?;
        Some(
            state
                .tls_fds()
                .into_iter()
                .map(|(fd, stream, conn)| TlsFd {
                    fd,
                    remote: conn.and_then(|c| c.remote.clone()).unwrap_or_default(),
                    plaintext_seen: stream.bound,
                })
                .collect(),
        )
    }

    /// Over every traced process: the fds on which TLS was seen, and how
    /// many of them a TLS library call is bound to (plaintext seen).
    #[must_use]
    pub fn tls_coverage(&self) -> (u32, u32) {
        let streams = self
            .procs
            .values()
            .flat_map(|state| state.fds.values())
            .filter_map(|fd| fd.stream.as_ref().filter(|s| s.ssl));
        streams.fold((0, 0), |(tls, plaintext), s| {
            (tls + 1, plaintext + u32::from(s.bound))
        })
    }

    /// The state of `pid`, empty if nothing is known yet.
    fn proc(&mut self, pid: u32) -> &mut ProcState {
        self.procs.entry(pid).or_default()
    }

    /// The cgroup of `pid`, read once per process.
    pub fn cgroup(&mut self, pid: u32) -> Option<Arc<Cgroup>> {
        let Enricher { procs, cgroups } = self;
        let state = procs.entry(pid).or_default();
        state
            .cgroup
            .get_or_insert_with(|| cgroups.of_pid(pid))
            .clone()
    }

    /// The event of a record of `hdr`'s process, with the process's exe
    /// and cgroup (each read once per process, both found with one
    /// look-up of its state).
    fn event(&mut self, hdr: &Header, msg: &'static str, caller: &'static str) -> Arc<Event> {
        let Enricher { procs, cgroups } = self;
        let state = procs.entry(hdr.pid).or_default();
        let exe = state.exe.get_or_insert_with(|| exe_of(hdr.pid));
        let mut shared = shared_base(hdr, msg, caller, Text::Shared(Arc::clone(exe)));
        let cgroup = state.cgroup.get_or_insert_with(|| cgroups.of_pid(hdr.pid));
        Arc::make_mut(&mut shared).cgroup.clone_from(cgroup);
        shared
    }

    /// The host's cgroups changed: paths are resolved anew (a process's
    /// own stays what it was).
    pub fn cgroups_changed(&mut self) {
        self.cgroups.clear();
    }

    /// The exe of `pid`: from its exec if seen, else `/proc`, once.
    pub fn exe(&mut self, pid: u32) -> Text {
        let exe = self.proc(pid).exe.get_or_insert_with(|| exe_of(pid));
        Text::Shared(Arc::clone(exe))
    }

    /// A syscall record: the fd's state follows it; its event, with the
    /// `payload` the kernel captured, is made only when `build` (some
    /// session that selects it has a follower). Like every event, it is
    /// made behind its `Arc` ([`shared_base`]).
    pub fn syscall(
        &mut self,
        rec: &SyscallRecord,
        payload: &[u8],
        build: bool,
    ) -> (Option<Arc<Event>>, Notes) {
        let hdr = &rec.hdr;
        let pid = hdr.pid;
        // A new object on an fd number starts with nothing of the old one.
        if let Some(fd) = created_fd(rec) {
            self.proc(pid).renew(fd);
        }
        let conn = self.conn(rec);
        let mut notes = Notes::default();
        let state = self.proc(pid);
        let stream = if is_data_call(rec.call) {
            let mut tls = (rec.flags & flag::IN_TLS != 0).then_some(rec.tls);
            if state.memory_bio {
                let ciphertext = conn.is_some()
                    && rec.bytes > 0
                    && rec.flags & flag::PEEK == 0
                    && protocol::is_tls_record(
                        &rec.head[..(rec.head_len as usize).min(rec.head.len())],
                    );
                let ingress = rec.direction == direction::INGRESS;
                tls = tls.or(state.adjacent_syscall(hdr.tid, rec.fd, ingress, ciphertext));
            }
            let len = (rec.head_len as usize).min(rec.head.len());
            let (stream, seen) = state.data_syscall(rec.fd, conn.as_ref(), tls, &rec.head[..len]);
            notes.detected = seen.detected;
            Some(StreamFields::of(stream))
        } else {
            if state.memory_bio {
                state.adjacent.remove(&hdr.tid);
            }
            state.stream(rec.fd).map(StreamFields::of)
        };
        notes.bound = stream.is_some_and(|s| s.bound);
        let event = build.then(|| {
            let labels = call_labels(rec.call);
            let mut shared = self.event(hdr, labels.msg, labels.caller);
            let event = Arc::make_mut(&mut shared);
            event.fd = Some(rec.fd);
            event.ret = Some(rec.ret);
            event.error = errno_name(rec.ret);
            if rec.new_fd >= 0 {
                event.new_fd = Some(rec.new_fd);
            }
            if is_data_call(rec.call) {
                event.direction = Some(u32::from(rec.direction));
                event.bytes = Some(rec.bytes);
                event.peek = rec.flags & flag::PEEK != 0;
            }
            stream_fields(event, stream);
            event.open = Some(conn.is_some());
            event.conn_info = conn;
            event.payload = payload.to_vec();
            shared
        });
        self.track(rec);
        (event, notes)
    }

    /// A TLS library call: binds, frees, or moves plaintext on an `SSL*`;
    /// its event, with the plaintext `payload`, is made only when `build`.
    pub fn tls(
        &mut self,
        rec: &TlsRecord,
        payload: &[u8],
        build: bool,
    ) -> (Option<Arc<Event>>, Notes) {
        let hdr = &rec.hdr;
        let mut notes = Notes::default();
        let data = tls_call::is_data(rec.call);
        // What the call binds: (fd, side) pairs; GnuTLS's `*2` calls name a
        // receive fd (`fd`) and a send fd (`ret`), -1 when not an fd.
        let binds: [(i32, Side); 2] = match rec.call {
            tls_call::SSL_SET_FD | tls_call::GNUTLS_TRANSPORT_SET_PTR => {
                [(rec.fd, Side::Both), (-1, Side::Both)]
            }
            tls_call::SSL_SET_RFD => [(rec.fd, Side::Read), (-1, Side::Both)],
            tls_call::SSL_SET_WFD => [(rec.fd, Side::Write), (-1, Side::Both)],
            tls_call::GNUTLS_TRANSPORT_SET_INT2 | tls_call::GNUTLS_TRANSPORT_SET_PTR2 => {
                let send = i32::try_from(rec.ret).unwrap_or(-1);
                if send == rec.fd {
                    [(rec.fd, Side::Both), (-1, Side::Both)]
                } else {
                    [(rec.fd, Side::Read), (send, Side::Write)]
                }
            }
            _ => [(-1, Side::Both); 2],
        };
        let state = self.proc(hdr.pid);
        let fd = if !data && !tls_call::is_free(rec.call) {
            for (fd, side) in binds.into_iter().filter(|(fd, _)| *fd >= 0) {
                state.bind(rec.ssl, fd, side);
            }
            binds.iter().map(|(fd, _)| *fd).find(|fd| *fd >= 0)
        } else if !data {
            state.free(rec.ssl);
            None
        } else {
            let ingress = rec.direction == direction::INGRESS;
            // Go's calls carry their fd (read under the `*tls.Conn`).
            if rec.fd >= 0 {
                state.bind(rec.ssl, rec.fd, Side::Both);
            } else {
                state.tls_call_returned(hdr.tid, rec.ssl, ingress);
            }
            let len = (rec.head_len as usize).min(rec.head.len());
            state
                .tls_call(rec.ssl, ingress, &rec.head[..len])
                .map(|(fd, _, seen)| {
                    notes.detected = seen.detected;
                    fd
                })
        };
        let seen = fd.and_then(|fd| self.proc(hdr.pid).stream(fd));
        let stream = seen.map(StreamFields::of);
        // The connection a bound stream saw on its syscalls, else the
        // fd's last from the kernel (Go binds at a call's return, after
        // the call's syscalls).
        let known = seen.and_then(|s| s.conn.clone()).or_else(|| {
            let fd = self.proc(hdr.pid).fd(fd?)?;
            fd.kernel_conn.as_ref().map(|(_, info)| Arc::clone(info))
        });
        notes.bound = stream.is_some_and(|s| s.bound);
        if !build {
            return (None, notes);
        }
        let labels = tls_call_labels(rec.call);
        let mut shared = self.event(hdr, labels.msg, labels.caller);
        let event = Arc::make_mut(&mut shared);
        if data {
            event.direction = Some(u32::from(rec.direction));
            event.bytes = Some(rec.bytes);
            event.ret = Some(rec.ret);
        }
        event.ssl = Some(true);
        event.fd = fd;
        if let Some(fd) = fd {
            stream_fields(event, stream);
            let conn = known.or_else(|| self.resolve(hdr.pid, fd));
            event.open = Some(conn.is_some());
            event.conn_info = conn;
        }
        event.payload = payload.to_vec();
        (Some(shared), notes)
    }

    /// Keeps the state in step with the fd table the record describes,
    /// after the record's event is made (a close's event still shows the
    /// fd as it was).
    fn track(&mut self, rec: &SyscallRecord) {
        let state = self.proc(rec.hdr.pid);
        match rec.call {
            call::CLOSE => state.close(rec.fd),
            call::SOCKET | call::ACCEPT | call::ACCEPT4 if rec.ret >= 0 => {
                let fd = if rec.new_fd >= 0 { rec.new_fd } else { rec.fd };
                state.fd_mut(fd).in_kernel = true;
            }
            call::CONNECT | call::BIND => state.fd_mut(rec.fd).in_kernel = true,
            // The kernel moved the old fd's connection entry to the new
            // number, or removed the number's entry when there was none.
            call::DUP | call::DUP2 | call::DUP3 if rec.new_fd >= 0 => {
                state.fd_mut(rec.new_fd).in_kernel = rec.flags & flag::CONN_KNOWN != 0;
            }
            _ => {}
        }
    }

    /// The connection of the record's fd (for accept: of the new fd).
    fn conn(&mut self, rec: &SyscallRecord) -> Option<Arc<ConnInfo>> {
        let pid = rec.hdr.pid;
        if rec.flags & flag::CONN_KNOWN != 0 {
            let accepted = rec.new_fd >= 0;
            let fd = if accepted { rec.new_fd } else { rec.fd };
            if let Some((conn, info)) = self.proc(pid).fd(fd).and_then(|s| s.kernel_conn.as_ref()) {
                if *conn == rec.conn && !accepted {
                    return Some(Arc::clone(info));
                }
            }
            let mut info = kernel_conn(&rec.conn);
            // A new socket has no address yet, and by the time its record
            // is read its number may name the next one: not looked up.
            if info.local.is_none() && info.family.starts_with("inet") && rec.call != call::SOCKET {
                info.local = self.local_of(rec);
            }
            if info.family == "unix" {
                self.unix_names(rec, &mut info);
                // Asked of the socket only right after it was connected or
                // accepted (records qtapd reads at once): a socket() or a
                // failed connect is often closed, and its number reused,
                // before its record is read.
                let connected = match rec.call {
                    call::CONNECT => rec.ret == 0,
                    call::ACCEPT | call::ACCEPT4 => accepted,
                    _ => false,
                };
                if connected {
                    unix_socket::complete(pid, fd, &mut info);
                }
            }
            let info = Arc::new(info);
            self.proc(pid).fd_mut(fd).kernel_conn = Some((rec.conn, Arc::clone(&info)));
            return Some(info);
        }
        // A closed fd is gone from /proc (or its number reused) by the
        // time its record is read: only what was known of it stands.
        if rec.call == call::CLOSE {
            return self
                .proc(pid)
                .fd(rec.fd)
                .and_then(|s| s.resolved.clone().flatten());
        }
        // The kernel looked at the fd's file when the call began: /proc,
        // read later, could show whatever took the number since.
        if rec.flags & flag::KIND_KNOWN != 0 {
            let state = self.proc(pid).fd_mut(rec.fd);
            if rec.flags & flag::SOCKET == 0 {
                state.resolved = Some(None);
                return None;
            }
            if matches!(state.resolved, Some(None)) {
                state.resolved = None;
            }
            // A socket: when the process is gone (a short one, read after
            // its exit) or the number names something else by now, /proc
            // cannot say which, but it stays a socket for `fd:socket`.
            return self
                .resolve(pid, rec.fd)
                .or_else(|| Some(Arc::new(unknown_socket())));
        }
        self.resolve(pid, rec.fd)
    }

    /// A unix socket's names as the kernel saw them: connect's peer and
    /// bind's own from the record (`…` when cut), an accepted socket's own
    /// from its listener's bind.
    fn unix_names(&mut self, rec: &SyscallRecord, info: &mut ConnInfo) {
        let len = (rec.head_len as usize).min(rec.head.len());
        match rec.call {
            call::CONNECT | call::BIND if len > 0 => {
                let head = &rec.head[..len];
                let mut name = unix_socket::path_text(head);
                // A path ends at its NUL (callers often pass the whole
                // sockaddr_un); an abstract name is as long as the length.
                let path_ended = head.first() != Some(&0) && head.contains(&0);
                if rec.flags & flag::NAME_CUT != 0 && !path_ended {
                    name = name.map(|n| n + unix_socket::CUT);
                }
                if rec.call == call::CONNECT {
                    info.remote = name;
                } else {
                    info.local = name;
                }
            }
            call::ACCEPT | call::ACCEPT4 if rec.new_fd >= 0 => {
                info.local = self
                    .proc(rec.hdr.pid)
                    .fd(rec.fd)
                    .and_then(|s| s.kernel_conn.as_ref())
                    .and_then(|(_, listener)| listener.local.clone());
            }
            _ => {}
        }
    }

    /// The local address of a connection the kernel knows without one: a
    /// socket connected before tracing began (the kernel reads the port
    /// the system chose at `connect()`'s exit), or accepted on a listener
    /// bound before tracing began (or by a parent, as nginx's
    /// master binds for its workers). An accepted socket's local address
    /// is its listener's, and the listener outlives the connection, so
    /// that is the one resolved; the answer is kept for the connection's
    /// fd, whose own /proc entry may be gone by the time its later events
    /// are read.
    fn local_of(&mut self, rec: &SyscallRecord) -> Option<String> {
        let pid = rec.hdr.pid;
        let accepted = rec.new_fd >= 0;
        let conn_fd = if accepted { rec.new_fd } else { rec.fd };
        // An accepted (or dup'd) fd was renewed before this: whatever is
        // cached is its own.
        if let Some(local) = self.proc(pid).fd(conn_fd).and_then(|s| s.local.clone()) {
            return local;
        }
        let local = self
            .resolve(pid, rec.fd)
            .and_then(|info| info.local.clone());
        self.proc(pid).fd_mut(conn_fd).local = Some(local.clone());
        local
    }

    /// `/proc` resolution, cached per fd unless the process or fd was
    /// already gone. `None`: not a socket, or gone.
    fn resolve(&mut self, pid: u32, fd: i32) -> Option<Arc<ConnInfo>> {
        if let Some(known) = self.proc(pid).fd(fd).and_then(|s| s.resolved.clone()) {
            return known;
        }
        let value = match procfs::fd_target(pid, fd) {
            FdTarget::Socket(mut info) => {
                if info.family == "unix" {
                    unix_socket::complete(pid, fd, &mut info);
                }
                Some(Arc::new(info))
            }
            FdTarget::UnknownSocket => Some(Arc::new(unknown_socket())),
            FdTarget::Other => None,
            FdTarget::Gone => return None,
        };
        self.proc(pid).fd_mut(fd).resolved = Some(value.clone());
        value
    }

    pub fn exec(&mut self, rec: &ExecRecord) -> Arc<Event> {
        let len = (rec.filename_len as usize).min(rec.filename.len());
        let filename: Arc<str> = String::from_utf8_lossy(&rec.filename[..len]).into();
        let pid = rec.hdr.pid;
        let after = self.proc(pid).after_exec(Arc::clone(&filename));
        self.procs.insert(pid, after);
        let mut shared = shared_base(
            &rec.hdr,
            "process/exec",
            "tracepoint/sched/sched_process_exec",
            Text::Shared(Arc::clone(&filename)),
        );
        let cgroup = self.cgroup(pid);
        let event = Arc::make_mut(&mut shared);
        event.filename = Some(Text::Shared(filename));
        event.cgroup = cgroup;
        shared
    }

    pub fn fork(&mut self, rec: &ForkRecord) -> Arc<Event> {
        let mut shared = self.event(
            &rec.hdr,
            "process/fork",
            "tracepoint/sched/sched_process_fork",
        );
        if let Text::Shared(exe) = &shared.exe {
            self.proc(rec.child_pid).exe = Some(Arc::clone(exe));
        }
        Arc::make_mut(&mut shared).child_pid = Some(rec.child_pid);
        shared
    }

    /// The process is gone: returns the fds whose kernel entries to purge.
    pub fn exit(&mut self, hdr: &Header) -> (Arc<Event>, Vec<u32>) {
        let event = self.event(hdr, "process/exit", "tracepoint/sched/sched_process_exit");
        let fds = self
            .procs
            .remove(&hdr.pid)
            .map(|p| p.kernel_fds())
            .unwrap_or_default();
        (event, fds)
    }
}

/// A socket whose kind and addresses could not be told.
fn unknown_socket() -> ConnInfo {
    ConnInfo {
        family: "unknown".into(),
        r#type: "unknown".into(),
        role: "unknown".into(),
        local: None,
        remote: None,
        ..ConnInfo::default()
    }
}

/// The exe of `pid` as `/proc` shows it (empty once it is gone).
fn exe_of(pid: u32) -> Arc<str> {
    procfs::exe(pid).unwrap_or_default().into()
}

/// The fd number a successful call put a new object on: a socket, an
/// accepted connection, a dup's target.
fn created_fd(rec: &SyscallRecord) -> Option<i32> {
    match rec.call {
        call::SOCKET if rec.ret >= 0 => Some(rec.fd),
        call::ACCEPT | call::ACCEPT4 | call::DUP | call::DUP2 | call::DUP3 if rec.new_fd >= 0 => {
            Some(rec.new_fd)
        }
        _ => None,
    }
}

/// What an event shows of its fd's stream, copied out of the state.
#[derive(Clone, Copy)]
struct StreamFields {
    ssl: bool,
    bound: bool,
    protocol: &'static str,
    tls_version: Option<&'static str>,
    app_protocol: Option<&'static str>,
}

impl StreamFields {
    fn of(stream: &Stream) -> StreamFields {
        StreamFields {
            ssl: stream.ssl,
            bound: stream.bound,
            protocol: stream.protocol_name(),
            tls_version: stream.tls_version,
            app_protocol: stream.app_protocol,
        }
    }
}

/// The fd's stream state as event fields (a fd nothing is known of yet:
/// no TLS, protocol unknown).
fn stream_fields(event: &mut Event, stream: Option<StreamFields>) {
    let Some(stream) = stream else {
        event.ssl = Some(false);
        event.protocol = Some("unknown");
        return;
    };
    event.ssl = Some(stream.ssl);
    event.protocol = Some(stream.protocol);
    event.tls_version = stream.tls_version;
    event.app_protocol = stream.app_protocol;
}

/// `conn_info` from the kernel's `Conn`.
fn kernel_conn(conn: &Conn) -> ConnInfo {
    let addr = |known: u8, a| {
        if conn.flags & known != 0 {
            addr_text(a)
        } else {
            None
        }
    };
    ConnInfo {
        family: family_name(conn.family),
        r#type: type_name(conn.family, conn.sock_type).into(),
        role: role_name(conn.role).into(),
        local: addr(conn_flag::LOCAL_KNOWN, &conn.local),
        remote: addr(conn_flag::REMOTE_KNOWN, &conn.remote),
        ..ConnInfo::default()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use qtap_common::{
        call, conn_flag, family, kind, role, Addr, Conn, Header, SyscallRecord, ABI_VERSION,
    };

    use super::*;

    fn record(call: u16, fd: i32, new_fd: i32) -> SyscallRecord {
        let remote = Addr {
            family: family::INET,
            port: 40_000,
            addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        SyscallRecord {
            hdr: Header {
                kind: kind::SYSCALL,
                abi: ABI_VERSION,
                pid: std::process::id(),
                ..Header::default()
            },
            call,
            fd,
            new_fd,
            ret: if new_fd >= 0 { i64::from(new_fd) } else { 10 },
            bytes: 10,
            flags: flag::CONN_KNOWN,
            conn: Conn {
                remote,
                family: family::INET,
                sock_type: 1,
                role: role::SERVER,
                flags: conn_flag::REMOTE_KNOWN,
                ..Conn::default()
            },
            ..SyscallRecord::default()
        }
    }

    /// nginx's case: the worker accepts on a listener its master bound
    /// before tracing, and the connection is closed before its events are
    /// read, so its own /proc entry is gone. Every event of the connection
    /// still gets the listener's local address, learned at the accept.
    #[test]
    fn accepted_connections_keep_the_listeners_local_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap().to_string();
        let gone_fd = 99_999;
        let mut enricher = Enricher::new();
        let (Some(accept), _) = enricher.syscall(
            &record(call::ACCEPT4, listener.as_raw_fd(), gone_fd),
            &[],
            true,
        ) else {
            panic!("an event is made when asked for")
        };
        assert_eq!(
            accept.conn_info.as_ref().unwrap().local.as_deref(),
            Some(local.as_str())
        );
        let (Some(write), _) = enricher.syscall(&record(call::WRITEV, gone_fd, -1), &[], true)
        else {
            panic!("an event is made when asked for")
        };
        let conn = write.conn_info.clone().unwrap();
        assert_eq!(conn.local.as_deref(), Some(local.as_str()));
        assert_eq!(conn.remote.as_deref(), Some("127.0.0.1:40000"));
        // After close, the fd number carries nothing over.
        enricher.syscall(&record(call::CLOSE, gone_fd, -1), &[], true);
        let (Some(reused), _) = enricher.syscall(&record(call::WRITEV, gone_fd, -1), &[], true)
        else {
            panic!("an event is made when asked for")
        };
        assert_eq!(reused.conn_info.as_ref().unwrap().local, None);
    }

    /// A `socket()` record is read after the call returned, when its
    /// number may already name the next socket (here a bound listener):
    /// that socket's address is not looked up for it.
    #[test]
    fn a_new_socket_takes_no_local_address_from_proc() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut enricher = Enricher::new();
        let (Some(socket), _) =
            enricher.syscall(&record(call::SOCKET, listener.as_raw_fd(), -1), &[], true)
        else {
            panic!("an event is made when asked for")
        };
        assert_eq!(socket.conn_info.as_ref().unwrap().local, None);
    }

    /// A unix `connect` as the kernel records it: the name's first bytes
    /// in `head`, `NAME_CUT` when the address was longer.
    fn unix_connect(fd: i32, name: &[u8], cut: bool, ret: i64) -> SyscallRecord {
        let mut rec = record(call::CONNECT, fd, -1);
        rec.ret = ret;
        rec.conn = Conn {
            family: family::UNIX,
            sock_type: 1,
            role: role::CLIENT,
            flags: conn_flag::REMOTE_KNOWN,
            ..Conn::default()
        };
        rec.head[..name.len()].copy_from_slice(name);
        rec.head_len = name.len() as u32;
        if cut {
            rec.flags |= flag::NAME_CUT;
        }
        rec
    }

    /// Names from the record: a path ends at its NUL however long the
    /// address was; an abstract name longer than the record holds is
    /// marked cut. A failed connect's socket is not asked (its number is
    /// often reused by the time the record is read).
    #[test]
    fn unix_connect_names_come_from_the_record() {
        let mut enricher = Enricher::new();
        let mut remote = |rec: &SyscallRecord| {
            let (Some(e), _) = enricher.syscall(rec, &[], true) else {
                panic!("an event is made when asked for")
            };
            e.conn_info.as_deref().unwrap().clone()
        };
        let mut path = [0u8; 32];
        path[..20].copy_from_slice(b"/var/run/nscd/socket");
        let nscd = remote(&unix_connect(90_001, &path, true, -2));
        assert_eq!(nscd.remote.as_deref(), Some("/var/run/nscd/socket"));
        assert_eq!((nscd.role.as_str(), nscd.peer_pid), ("client", None));
        let long = [b"\0".as_slice(), &[b'a'; 31]].concat();
        let cut = remote(&unix_connect(90_002, &long, true, -111));
        assert_eq!(cut.remote, Some(format!("@{}…", "a".repeat(31))));
        let whole = remote(&unix_connect(90_003, b"\0qtap", false, -111));
        assert_eq!(whole.remote.as_deref(), Some("@qtap"));
    }

    fn gnutls_record(call: u16, fd: i32, ret: i64) -> TlsRecord {
        tls_record(90_100, 0x5555_0000, call, fd, ret)
    }

    /// A TLS call of thread 7 of `pid` on `ssl`.
    fn tls_record(pid: u32, ssl: u64, call: u16, fd: i32, ret: i64) -> TlsRecord {
        TlsRecord {
            hdr: Header {
                kind: kind::TLS,
                abi: ABI_VERSION,
                pid,
                tid: 7,
                ..Header::default()
            },
            ssl,
            call,
            fd,
            ret,
            bytes: ret.max(0),
            direction: if tls_call::is_read(call) {
                qtap_common::direction::INGRESS
            } else {
                qtap_common::direction::EGRESS
            },
            ..TlsRecord::default()
        }
    }

    /// A TLS call's event names its process's cgroup, as its syscalls'
    /// events do (a `cgroup`, `unit` or `pod` column, and a collector's
    /// attributes, were empty for plaintext).
    #[test]
    fn tls_events_carry_the_process_cgroup() {
        let pid = std::process::id();
        let mut enricher = Enricher::new();
        let expected = enricher.cgroup(pid);
        assert!(expected.is_some(), "this test's process has a cgroup");
        let write = tls_record(pid, 0x5555_0000, tls_call::SSL_WRITE, -1, 5);
        let (Some(event), _) = enricher.tls(&write, &[], true) else {
            panic!("an event is made when asked for")
        };
        assert_eq!(event.cgroup, expected);
    }

    /// `gnutls_transport_set_int2(session, 8, 9)`: receives bind to fd 8,
    /// sends to fd 9, both fds carry TLS with plaintext seen; after
    /// `gnutls_deinit` the session's calls are bound to no fd.
    #[test]
    fn gnutls_binds_its_receive_and_send_fds_apart() {
        let mut enricher = Enricher::new();
        let set = gnutls_record(tls_call::GNUTLS_TRANSPORT_SET_INT2, 8, 9);
        let (Some(bound), _) = enricher.tls(&set, &[], true) else {
            panic!("an event is made when asked for")
        };
        assert_eq!(bound.msg.as_str(), "gnutls/gnutls_transport_set_int2");
        assert_eq!(bound.fd, Some(8));
        let fd_of = |enricher: &mut Enricher, call, ret| {
            enricher
                .tls(&gnutls_record(call, -1, ret), &[], true)
                .0
                .unwrap()
                .fd
        };
        assert_eq!(
            fd_of(&mut enricher, tls_call::GNUTLS_RECORD_SEND, 18),
            Some(9)
        );
        assert_eq!(
            fd_of(&mut enricher, tls_call::GNUTLS_RECORD_RECV, 100),
            Some(8)
        );
        let fds = enricher.tls_fds(90_100).unwrap();
        let seen: Vec<(i32, bool)> = fds.iter().map(|f| (f.fd, f.plaintext_seen)).collect();
        assert_eq!(seen, [(8, true), (9, true)]);
        enricher.tls(&gnutls_record(tls_call::GNUTLS_DEINIT, -1, 0), &[], true);
        assert_eq!(fd_of(&mut enricher, tls_call::GNUTLS_RECORD_SEND, 5), None);
        assert!(
            enricher.tls_fds(90_101).is_none(),
            "a process qtapd holds nothing of"
        );
    }

    /// Node.js hands OpenSSL memory, not its socket: after a call on an
    /// `SSL*` nothing binds, the thread's next write of a TLS record to a
    /// socket binds it there (and the `SSL_write` after it carries that
    /// fd); a write that is not a TLS record binds nothing.
    #[test]
    fn memory_bio_calls_bind_to_the_ciphertext_next_to_them() {
        let mut enricher = Enricher::new();
        let pid = std::process::id();
        let tls = |call, ssl, ret| tls_record(pid, ssl, call, -1, ret);
        let write = |fd, head: &[u8]| {
            let mut rec = record(call::WRITE, fd, -1);
            rec.hdr.tid = 7;
            rec.direction = qtap_common::direction::EGRESS;
            rec.head_len = head.len() as u32;
            rec.head[..head.len()].copy_from_slice(head);
            rec
        };
        enricher.tls(&tls(tls_call::SSL_READ, 0xa, -1), &[], false);
        enricher.syscall(&write(5, b"GET / HTTP/1.1\r\n"), &[], false);
        assert!(enricher.tls_fds(pid).unwrap().is_empty(), "plain bytes");
        // The handshake's first flight, made by an SSL_read.
        enricher.tls(&tls(tls_call::SSL_READ, 0xb, -1), &[], false);
        let (Some(hello), _) = enricher.syscall(&write(6, &[0x16, 3, 1, 0, 5]), &[], true) else {
            panic!("an event is made when asked for")
        };
        assert_eq!(hello.ssl, Some(true));
        let (Some(request), _) = enricher.tls(&tls(tls_call::SSL_WRITE, 0xb, 20), &[], true) else {
            panic!("an event is made when asked for")
        };
        assert_eq!(request.fd, Some(6));
        let (Some(other), _) = enricher.tls(&tls(tls_call::SSL_WRITE, 0xa, 20), &[], true) else {
            panic!("an event is made when asked for")
        };
        assert_eq!(other.fd, None, "the first SSL* stays unbound");
    }

    fn exec_record(pid: u32, name: &[u8]) -> ExecRecord {
        let mut filename = [0; qtap_common::limit::EXE_LEN];
        filename[..name.len()].copy_from_slice(name);
        ExecRecord {
            hdr: Header {
                kind: kind::EXEC,
                abi: ABI_VERSION,
                pid,
                ..Header::default()
            },
            filename_len: name.len() as u32,
            _pad: 0,
            filename,
        }
    }

    /// A call on an fd the kernel saw was a socket (without a connection
    /// of its own) stays a socket when its process is gone before the
    /// record is read; one the kernel saw was not a socket has none.
    #[test]
    fn a_socket_of_a_gone_process_stays_a_socket() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        let mut enricher = Enricher::new();
        let mut send = record(call::SENDTO, 4, -1);
        send.hdr.pid = child.id();
        send.flags = flag::KIND_KNOWN | flag::SOCKET;
        let (Some(event), _) = enricher.syscall(&send, &[], true) else {
            panic!("an event is made when asked for")
        };
        let info = event
            .conn_info
            .clone()
            .expect("a socket has a connection entry");
        assert_eq!(info.family, "unknown");
        let mut read = record(call::READ, 5, -1);
        read.hdr.pid = child.id();
        read.flags = flag::KIND_KNOWN;
        let (Some(event), _) = enricher.syscall(&read, &[], true) else {
            panic!("an event is made when asked for")
        };
        assert_eq!(event.conn_info, None);
    }

    /// `dup2(conn, 9)` over a number that had another connection: 9 is the
    /// dup'd connection now, nothing of its old one; closing 9 leaves the
    /// original fd as it was; a dup without a kernel connection (a file
    /// dup'd onto a socket's number) carries no connection at all.
    #[test]
    fn dup_and_close_touch_only_their_numbers() {
        let mut enricher = Enricher::new();
        let mut other = record(call::ACCEPT4, 3, 9);
        other.conn.remote.port = 50_000;
        enricher.syscall(&other, &[], true);
        enricher.syscall(&record(call::ACCEPT4, 3, 5), &[], true);
        let (Some(dup), _) = enricher.syscall(&record(call::DUP2, 5, 9), &[], true) else {
            panic!("an event is made when asked for")
        };
        assert_eq!(dup.new_fd, Some(9));
        let (Some(on_nine), _) = enricher.syscall(&record(call::WRITEV, 9, -1), &[], true) else {
            panic!("an event is made when asked for")
        };
        assert_eq!(
            on_nine.conn_info.as_ref().unwrap().remote.as_deref(),
            Some("127.0.0.1:40000"),
            "9 is 5's connection now, not its old one"
        );
        enricher.syscall(&record(call::CLOSE, 9, -1), &[], true);
        let (Some(on_five), _) = enricher.syscall(&record(call::WRITEV, 5, -1), &[], true) else {
            panic!("an event is made when asked for")
        };
        assert_eq!(
            on_five.conn_info.as_ref().unwrap().remote.as_deref(),
            Some("127.0.0.1:40000")
        );
        let mut file_dup = record(call::DUP2, 1, 5);
        file_dup.flags = 0;
        enricher.syscall(&file_dup, &[], true);
        let mut plain = record(call::WRITEV, 5, -1);
        plain.flags = 0;
        let (Some(after), _) = enricher.syscall(&plain, &[], true) else {
            panic!("an event is made when asked for")
        };
        let procs = &enricher.procs[&std::process::id()];
        assert!(
            !procs.fd(5).is_some_and(|s| s.in_kernel),
            "no kernel entry for 5"
        );
        assert!(after.ssl == Some(false));
    }

    /// After an exec the new image's fds carry no stream state of the old
    /// one, but the fds with kernel entries are still purged at its exit.
    #[test]
    fn exec_starts_afresh_and_exit_purges_the_kept_fds() {
        let pid = std::process::id();
        let mut enricher = Enricher::new();
        enricher.syscall(&record(call::ACCEPT4, 3, 7), &[], true);
        let mut tls = record(call::WRITEV, 7, -1);
        tls.head_len = 5;
        tls.head[..5].copy_from_slice(&[0x16, 3, 1, 0, 5]);
        let (Some(hello), _) = enricher.syscall(&tls, &[], true) else {
            panic!("an event is made when asked for")
        };
        assert_eq!(hello.protocol, Some("tls"));
        let exec = enricher.exec(&exec_record(pid, b"/usr/bin/next"));
        assert_eq!(
            exec.filename.as_ref().map(Text::as_str),
            Some("/usr/bin/next")
        );
        let mut plain = record(call::WRITEV, 7, -1);
        plain.head_len = 4;
        plain.head[..4].copy_from_slice(b"GET ");
        let (Some(after), _) = enricher.syscall(&plain, &[], true) else {
            panic!("an event is made when asked for")
        };
        assert_eq!(after.protocol, Some("http1"), "no TLS carried over");
        assert_eq!(after.exe.as_str(), "/usr/bin/next");
        let (_, purge) = enricher.exit(&Header {
            pid,
            ..Header::default()
        });
        assert_eq!(purge, vec![7]);
        assert!(enricher.procs.is_empty());
    }
}
