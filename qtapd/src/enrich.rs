//! Turns decoded kernel records into events: adds the exe of each process
//! and the connection of each fd, from the kernel's own view first and from
//! `/proc` once per fd otherwise, and the fd's stream state (TLS, protocol;
//! see `streams`). Caches live until the fd is closed or the process execs
//! or exits.

use std::collections::{HashMap, HashSet};

use qtap_common::{
    conn_flag, direction, flag, tls_call, Conn, ExecRecord, ForkRecord, Header, SyscallRecord,
    TlsRecord,
};

use crate::{
    events::{
        addr_text, base, call_labels, derived::Notes, errno_name, family_name, is_data_call,
        role_name, tls_call_labels, type_name, Clock, ConnInfo, Event,
    },
    procfs::{self, FdTarget},
    streams::{Side, Stream, Streams},
};

/// Per-process and per-fd knowledge.
#[derive(Default)]
pub struct Enricher {
    clock: Clock,
    exes: HashMap<u32, String>,
    /// Connections resolved from `/proc` (`None`: not a socket).
    resolved: HashMap<(u32, i32), Option<ConnInfo>>,
    /// Local addresses found in user space for connections the kernel
    /// knows without one (see `conn`), kept until the fd closes.
    /// `None` is cached too: a connection whose process is gone must not
    /// cost a `/proc` read on every one of its events.
    locals: HashMap<(u32, i32), Option<String>>,
    /// fds with a kernel `CONNS` entry, per process, to purge at exit.
    kernel_fds: HashMap<u32, HashSet<u32>>,
    /// `conn_info` made from the kernel's `Conn` of an fd, reused while
    /// the kernel reports the same `Conn` (formatting addresses per event
    /// was a large part of qtapd's cost).
    kernel_conns: HashMap<(u32, i32), (Conn, ConnInfo)>,
    streams: Streams,
}

impl Enricher {
    #[must_use]
    pub fn new() -> Enricher {
        Enricher::default()
    }

    /// The exe of `pid`: from its exec if seen, else `/proc`, once.
    pub fn exe(&mut self, pid: u32) -> String {
        self.exes
            .entry(pid)
            .or_insert_with(|| procfs::exe(pid).unwrap_or_default())
            .clone()
    }

    pub fn syscall(&mut self, rec: &SyscallRecord) -> (Event, Notes) {
        let hdr = &rec.hdr;
        let labels = call_labels(rec.call);
        let exe = self.exe(hdr.pid);
        let mut event = base(
            &self.clock,
            hdr,
            labels.msg.into(),
            labels.caller.into(),
            exe,
        );
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
        let conn = self.conn(rec);
        let mut notes = Notes::default();
        let stream = if is_data_call(rec.call) {
            let tls = (rec.flags & flag::IN_TLS != 0).then_some(rec.tls);
            let len = (rec.head_len as usize).min(rec.head.len());
            let (stream, seen) =
                self.streams
                    .syscall(hdr.pid, rec.fd, conn.as_ref(), tls, &rec.head[..len]);
            notes.detected = seen.detected;
            Some(stream)
        } else {
            self.streams.get(hdr.pid, rec.fd)
        };
        stream_fields(&mut event, stream);
        notes.bound = stream.is_some_and(|s| s.bound);
        event.open = Some(conn.is_some());
        event.conn_info = conn;
        self.track(rec);
        (event, notes)
    }

    /// A TLS library call: binds, frees, or moves plaintext on an `SSL*`.
    pub fn tls(&mut self, rec: &TlsRecord) -> (Event, Notes) {
        let hdr = &rec.hdr;
        let labels = tls_call_labels(rec.call);
        let exe = self.exe(hdr.pid);
        let mut event = base(
            &self.clock,
            hdr,
            labels.msg.into(),
            labels.caller.into(),
            exe,
        );
        let mut notes = Notes::default();
        let side = match rec.call {
            tls_call::SSL_SET_FD => Some(Side::Both),
            tls_call::SSL_SET_RFD => Some(Side::Read),
            tls_call::SSL_SET_WFD => Some(Side::Write),
            _ => None,
        };
        let fd = if let Some(side) = side {
            self.streams.bind(hdr.pid, rec.ssl, rec.fd, side);
            Some(rec.fd)
        } else if rec.call == tls_call::SSL_FREE {
            self.streams.free(hdr.pid, rec.ssl);
            None
        } else {
            event.direction = Some(u32::from(rec.direction));
            event.bytes = Some(rec.bytes);
            event.ret = Some(rec.ret);
            let len = (rec.head_len as usize).min(rec.head.len());
            let ingress = rec.direction == direction::INGRESS;
            self.streams
                .tls_call(hdr.pid, rec.ssl, ingress, &rec.head[..len])
                .map(|(fd, _, seen)| {
                    notes.detected = seen.detected;
                    fd
                })
        };
        event.ssl = Some(true);
        event.fd = fd;
        if let Some(fd) = fd {
            let stream = self.streams.get(hdr.pid, fd);
            notes.bound = stream.is_some_and(|s| s.bound);
            let known = stream.and_then(|s| s.conn.clone());
            stream_fields(&mut event, stream);
            let conn = known.or_else(|| self.resolve(hdr.pid, fd));
            event.open = Some(conn.is_some());
            event.conn_info = conn;
        }
        (event, notes)
    }

    /// Keeps the caches in step with the fd table the record describes.
    fn track(&mut self, rec: &SyscallRecord) {
        use qtap_common::call;
        let pid = rec.hdr.pid;
        match rec.call {
            call::CLOSE => {
                self.streams.reset(pid, rec.fd);
                self.kernel_conns.remove(&(pid, rec.fd));
                self.resolved.remove(&(pid, rec.fd));
                self.locals.remove(&(pid, rec.fd));
                if let Some(fds) = self.kernel_fds.get_mut(&pid) {
                    fds.remove(&(rec.fd as u32));
                }
            }
            call::SOCKET | call::ACCEPT | call::ACCEPT4 if rec.ret >= 0 => {
                let fd = if rec.new_fd >= 0 { rec.new_fd } else { rec.fd };
                self.resolved.remove(&(pid, fd));
                self.streams.reset(pid, fd);
                if rec.call == call::SOCKET {
                    // A new socket on a reused fd number (accept's entry is
                    // written by `local_of` before this runs).
                    self.locals.remove(&(pid, fd));
                }
                self.kernel_fds.entry(pid).or_default().insert(fd as u32);
            }
            // The new number is the old fd's now (dup2 closed whatever
            // had it); the kernel moved its connection entry along.
            call::DUP | call::DUP2 | call::DUP3 if rec.new_fd >= 0 => {
                // (`conn` has already keyed a known connection to it.)
                let fd = rec.new_fd;
                self.resolved.remove(&(pid, fd));
                self.streams.reset(pid, fd);
                let fds = self.kernel_fds.entry(pid).or_default();
                if rec.flags & flag::CONN_KNOWN == 0 {
                    fds.remove(&(fd as u32));
                    self.kernel_conns.remove(&(pid, fd));
                    self.locals.remove(&(pid, fd));
                } else {
                    fds.insert(fd as u32);
                }
            }
            call::CONNECT | call::BIND => {
                self.kernel_fds
                    .entry(pid)
                    .or_default()
                    .insert(rec.fd as u32);
            }
            _ => {}
        }
    }

    /// The connection of the record's fd (for accept: of the new fd).
    fn conn(&mut self, rec: &SyscallRecord) -> Option<ConnInfo> {
        let pid = rec.hdr.pid;
        if rec.flags & flag::CONN_KNOWN != 0 {
            let accepted = rec.new_fd >= 0;
            let key = (pid, if accepted { rec.new_fd } else { rec.fd });
            if let Some((conn, info)) = self.kernel_conns.get(&key) {
                if *conn == rec.conn && !accepted {
                    return Some(info.clone());
                }
            }
            let mut info = kernel_conn(&rec.conn);
            if info.local.is_none() && info.family.starts_with("inet") {
                info.local = self.local_of(rec);
            }
            self.kernel_conns.insert(key, (rec.conn, info.clone()));
            return Some(info);
        }
        self.resolve(pid, rec.fd)
    }

    /// The local address of a connection the kernel knows without one: it
    /// saw `connect()` but not the port the system chose, or `accept()` on a
    /// listener bound before tracing began (or by a parent, as nginx's
    /// master binds for its workers). An accepted socket's local address
    /// is its listener's, and the listener outlives the connection, so
    /// that is the one resolved; the answer is kept for the connection's
    /// fd, whose own /proc entry may be gone by the time its later events
    /// are read.
    fn local_of(&mut self, rec: &SyscallRecord) -> Option<String> {
        let pid = rec.hdr.pid;
        let accepted = rec.new_fd >= 0;
        let conn_fd = if accepted { rec.new_fd } else { rec.fd };
        // An accept starts a new connection: never reuse what an earlier
        // one on the same fd number left.
        if let Some(local) = self.locals.get(&(pid, conn_fd)).filter(|_| !accepted) {
            return local.clone();
        }
        let local = self.resolve(pid, rec.fd).and_then(|info| info.local);
        self.locals.insert((pid, conn_fd), local.clone());
        local
    }

    /// `/proc` resolution, cached per (pid, fd) unless the process or fd
    /// was already gone. `None`: not a socket, or gone.
    fn resolve(&mut self, pid: u32, fd: i32) -> Option<ConnInfo> {
        if let Some(known) = self.resolved.get(&(pid, fd)) {
            return known.clone();
        }
        let value = match procfs::fd_target(pid, fd) {
            FdTarget::Socket(info) => Some(info),
            FdTarget::UnknownSocket => Some(ConnInfo {
                family: "unknown".into(),
                r#type: "unknown".into(),
                role: "unknown".into(),
                local: None,
                remote: None,
            }),
            FdTarget::Other => None,
            FdTarget::Gone => return None,
        };
        self.resolved.insert((pid, fd), value.clone());
        value
    }

    pub fn exec(&mut self, rec: &ExecRecord) -> Event {
        let len = (rec.filename_len as usize).min(rec.filename.len());
        let filename = String::from_utf8_lossy(&rec.filename[..len]).into_owned();
        self.forget(rec.hdr.pid);
        self.exes.insert(rec.hdr.pid, filename.clone());
        let mut event = self.process(&rec.hdr, "exec", filename.clone());
        event.filename = Some(filename);
        event
    }

    pub fn fork(&mut self, rec: &ForkRecord) -> Event {
        let exe = self.exe(rec.hdr.pid);
        self.exes.insert(rec.child_pid, exe.clone());
        let mut event = self.process(&rec.hdr, "fork", exe);
        event.child_pid = Some(rec.child_pid);
        event
    }

    /// The process is gone: returns the fds whose kernel entries to purge.
    pub fn exit(&mut self, hdr: &Header) -> (Event, Vec<u32>) {
        let exe = self.exe(hdr.pid);
        let event = self.process(hdr, "exit", exe);
        let fds = self.forget(hdr.pid);
        self.exes.remove(&hdr.pid);
        (event, fds)
    }

    fn process(&self, hdr: &Header, what: &str, exe: String) -> Event {
        base(
            &self.clock,
            hdr,
            format!("process/{what}"),
            format!("tracepoint/sched/sched_process_{what}"),
            exe,
        )
    }

    /// Drops what is cached about `pid`'s fds.
    fn forget(&mut self, pid: u32) -> Vec<u32> {
        self.streams.forget(pid);
        self.kernel_conns.retain(|(p, _), _| *p != pid);
        self.resolved.retain(|(p, _), _| *p != pid);
        self.locals.retain(|(p, _), _| *p != pid);
        self.kernel_fds
            .remove(&pid)
            .map(|fds| fds.into_iter().collect())
            .unwrap_or_default()
    }
}

/// The fd's stream state as event fields (a fd nothing is known of yet:
/// no TLS, protocol unknown).
fn stream_fields(event: &mut Event, stream: Option<&Stream>) {
    let Some(stream) = stream else {
        event.ssl = Some(false);
        event.protocol = Some("unknown".into());
        return;
    };
    event.ssl = Some(stream.ssl);
    event.protocol = Some(stream.protocol_name().into());
    event.tls_version = stream.tls_version.map(Into::into);
    event.app_protocol = stream.app_protocol.map(Into::into);
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
        let (accept, _) = enricher.syscall(&record(call::ACCEPT4, listener.as_raw_fd(), gone_fd));
        assert_eq!(
            accept.conn_info.unwrap().local.as_deref(),
            Some(local.as_str())
        );
        let (write, _) = enricher.syscall(&record(call::WRITEV, gone_fd, -1));
        let conn = write.conn_info.unwrap();
        assert_eq!(conn.local.as_deref(), Some(local.as_str()));
        assert_eq!(conn.remote.as_deref(), Some("127.0.0.1:40000"));
        // After close, the fd number carries nothing over.
        enricher.syscall(&record(call::CLOSE, gone_fd, -1));
        let (reused, _) = enricher.syscall(&record(call::WRITEV, gone_fd, -1));
        assert_eq!(reused.conn_info.unwrap().local, None);
    }
}
