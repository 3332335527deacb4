//! The socket module: `syscalls:sys_enter_*` / `sys_exit_*` for the network
//! syscalls and the plain read/write family.
//!
//! A control call (socket, bind, connect, accept, close, dup) keeps what
//! its exit needs in `PENDING` (keyed by pid_tgid) at enter: an address
//! the call may overwrite, or what an fd it closes was. A data call
//! (`call::args_at_exit`) has no enter program where the kernel has BTF:
//! on x86-64 a syscall's arguments stay in the task's saved user registers
//! (`rdi`, `rsi`, `rdx`, `r10`) until it returns, where only `rax` changes,
//! so its exit reads them there (`bpf_task_pt_regs`, which needs BTF).
//! That halves a data call's tracepoint hits and spares it a hash-map
//! insert, lookup and delete. Without BTF its enter keeps them in
//! `PENDING` like a control call's. Either way the exit emits one
//! `SyscallRecord` and updates `CONNS`. A process that no session selects
//! costs one map lookup in each program it runs (`PROCS`, or `PENDING` at
//! a control call's exit), and emits nothing.
//!
//! Each data record carries the first `HEAD_BYTES` the call moved (for
//! protocol detection in qtapd) and, when the thread is inside a TLS
//! library call, that call's `SSL*` (see `tls.rs`).
//!
//! Syscall tracepoint layout (from tracefs `format`, stable across kernels):
//! enter: `int __syscall_nr` at 8, then each argument as 8 bytes from 16;
//! exit: `long ret` at 16.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_probe_read_user, bpf_task_pt_regs,
    },
    programs::TracePointContext,
};
use qtap_common::{
    call, conn_flag, direction, family, flag, kind, limit, module, role, stat, Addr, Conn, ConnKey,
    Pending, SyscallRecord,
};

use super::{
    capture_bytes, clear_from, copy_head, count, files, header, library_tls_sessions, now,
    selected_for, still_selected, submit, task_offsets, tracepoint_field, Urgency,
};
use crate::{CONFIG, CONNS, PENDING, SYSCALL_BUF, TLS_ACTIVE};

const MSG_PEEK: u64 = 2;
const SOCK_STREAM: u16 = 1;
const EINPROGRESS: i64 = 115;
/// Size of `struct mmsghdr` and the offset of its `msg_len`.
const MMSGHDR_SIZE: u64 = 64;
const MMSGHDR_LEN_OFF: u64 = 56;
/// Offset of `msg_iov` in `struct msghdr` (also the start of `mmsghdr`).
const MSGHDR_IOV_OFF: u64 = 16;

/// Argument `index` of `call`'s enter record; 0 past the call's own
/// arguments. A program that reads its record past the end is refused at
/// attach (`EACCES`), so `call`, a constant in each program, must bound it.
#[inline(always)]
fn arg(ctx: &TracePointContext, call: u16, index: usize) -> u64 {
    let count = match call {
        call::CLOSE | call::DUP => 1,
        call::DUP2 => 2,
        call::SENDTO | call::RECVFROM => 6,
        call::ACCEPT4 | call::SENDMMSG | call::SENDFILE => 4,
        call::RECVMMSG => 5,
        _ => 3,
    };
    if index >= count {
        return 0;
    }
    // SAFETY: an offset inside the syscall enter record (see module doc),
    // below its end (`count`).
    unsafe { tracepoint_field::<u64>(ctx, 16 + 8 * index) }
}

/// The `sys_enter_<call>` hook: keep the arguments for the exit. A data
/// call's enter is attached only on a kernel without BTF (see the module
/// doc).
#[inline(always)]
pub fn enter(ctx: &TracePointContext, call: u16) {
    let id = bpf_get_current_pid_tgid();
    let sessions = selected_for((id >> 32) as u32, module::SOCKET);
    if sessions == 0 {
        return;
    }
    let mut pending = Pending {
        sessions,
        call,
        fd: arg(ctx, call, 0) as i32,
        ..Pending::default()
    };
    match call {
        call::SOCKET => {
            pending.fd = -1;
            pending.arg1 = arg(ctx, call, 0);
            pending.arg2 = arg(ctx, call, 1);
        }
        call::CONNECT | call::BIND => {
            pending.addr = read_sockaddr(arg(ctx, call, 1));
            pending.arg1 = arg(ctx, call, 2); // the address's length
        }
        call::ACCEPT | call::ACCEPT4 => pending.arg1 = arg(ctx, call, 1),
        call::RECVFROM if arg(ctx, call, 3) & MSG_PEEK != 0 => pending.flags = flag::PEEK,
        call::RECVMSG if arg(ctx, call, 2) & MSG_PEEK != 0 => pending.flags = flag::PEEK,
        call::SENDMMSG | call::RECVMMSG => pending.arg1 = arg(ctx, call, 1),
        _ => {}
    }
    // The data buffer (or the vector or message that holds it).
    if call != call::SOCKET {
        pending.arg2 = arg(ctx, call, 1);
    }
    // When every selecting session wants sockets only, a file or pipe is
    // told here and costs nothing more. A close must be told here in any
    // case: at its exit the fd is gone.
    let only = sockets_only();
    if sessions & !only == 0 || (call == call::CLOSE && sessions & only != 0) {
        let key = ConnKey {
            tgid: (id >> 32) as u32,
            fd: pending.fd as u32,
        };
        pending.flags |= fd_kind(call, key);
        pending.sessions = keep_for_kind(pending.flags, sessions);
        if pending.sessions == 0 {
            return;
        }
    }
    if PENDING.insert(&id, &pending, 0).is_err() {
        count(stat::PENDING_FULL);
    }
}

/// The `sys_exit_<call>` hook: join with the enter (a data call: read its
/// arguments) and emit the record.
#[inline(always)]
pub fn exit(ctx: &TracePointContext, call: u16) {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let data = call::args_at_exit(call) && args_in_registers();
    // A data call of a process no session selects ends here, before the
    // clock is read.
    if data && selected_for(tgid, module::SOCKET) == 0 {
        return;
    }
    let ts = now();
    let (pending, mut sessions) = if data {
        let Some(pending) = data_call(tgid, call) else {
            return;
        };
        (pending, pending.sessions)
    } else {
        // SAFETY: the value is copied out before the entry is removed.
        let Some(pending) = (unsafe { PENDING.get(&id) }).copied() else {
            return;
        };
        let _ = PENDING.remove(&id);
        if pending.call != call {
            return;
        }
        // Sessions that stopped selecting the process while the call ran
        // (a session ended, or the process left a restricted session) get
        // nothing of it; the connection table is kept up to date
        // regardless.
        (pending, still_selected(tgid, pending.sessions))
    };
    // SAFETY: offset of `ret` in the syscall exit record.
    let ret = unsafe { tracepoint_field::<i64>(ctx, 16) };

    let Some(buf) = SYSCALL_BUF.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch, only this program on this CPU uses it.
    let buf = unsafe { &mut *buf };
    let record = &mut buf.record;
    record.hdr = header(id, kind::SYSCALL, sessions, ts);
    record.ret = ret;
    record.bytes = 0;
    record.call = call;
    record.direction = direction::NONE;
    record.flags = pending.flags;
    record.fd = pending.fd;
    record.new_fd = -1;
    record.head_len = 0;
    // `conn`, `tls` and `head`: never carry another call's bytes.
    clear_from::<{ core::mem::offset_of!(SyscallRecord, conn) }, _>(record);
    // Only a session of a C TLS library's module has uprobes attached that
    // fill TLS_ACTIVE: without one, the lookup is skipped.
    // SAFETY: the value is copied out at once.
    let library_tls = library_tls_sessions() != 0;
    if let Some(active) = library_tls
        .then(|| unsafe { TLS_ACTIVE.get(&id) })
        .flatten()
    {
        record.flags |= flag::IN_TLS;
        record.tls = active.ssl;
    }
    let key = ConnKey {
        tgid,
        fd: pending.fd as u32,
    };
    // The payload to capture: the first buffer of a data call.
    let mut payload = (0, 0);
    // A known connection's first bytes go in this record: noted once sent.
    let mut first_head = false;
    let conn = match call {
        call::SOCKET => on_socket(record, &pending, tgid),
        call::BIND => on_bind(record, &pending, key),
        call::CONNECT => on_connect(record, &pending, key),
        call::ACCEPT | call::ACCEPT4 => on_accept(record, &pending, key),
        call::CLOSE => {
            let conn = known(key);
            let _ = CONNS.remove(&key);
            conn
        }
        call::DUP | call::DUP2 | call::DUP3 => on_dup(record, key, ret),
        _ => {
            record.direction = data_direction(call);
            record.bytes = if ret < 0 {
                ret
            } else if call == call::SENDMMSG || call == call::RECVMMSG {
                sum_mmsg(pending.arg1, ret as u64)
            } else {
                ret
            };
            let conn = known(key);
            // An fd the kernel has no connection for: a file, a pipe, or
            // a socket from before tracing; told now, while it is the one
            // the call used (qtapd's look at /proc would come later).
            if conn.is_none() && record.flags & flag::KIND_KNOWN == 0 {
                record.flags |= file_kind(pending.fd);
                sessions = keep_for_kind(record.flags, sessions);
            }
            // qtapd classifies a stream from its first non-empty head, so
            // a known connection needs it once; a C TLS library session
            // on every call (qtapd tells a memory-BIO process's
            // ciphertext by it).
            let unsent = conn.is_none_or(|c| c.flags & conn_flag::HEAD_SENT == 0);
            let head = unsent || library_tls;
            if record.bytes > 0 && sessions != 0 && (head || capture_bytes() != 0) {
                let (src, len) = first_buffer(call, pending.arg2);
                payload = (src, len.min(record.bytes as u64));
                if head {
                    record.head_len = copy_head(src, payload.1, &mut record.head);
                }
            }
            first_head = conn.is_some() && unsent && record.head_len > 0;
            conn
        }
    };
    let unix_named =
        (call == call::CONNECT || call == call::BIND) && pending.addr.family == family::UNIX;
    if unix_named {
        unix_name(record, pending.arg2, pending.arg1);
    }
    // qtapd looks at /proc for an fd it cannot place otherwise: it must
    // read such a record before the fd number names something else. A
    // close it never looks up (the fd is gone). A unix connection's peer
    // is asked of the socket itself, which must still be open then.
    let unix_peer = (unix_named && call == call::CONNECT)
        || ((call == call::ACCEPT || call == call::ACCEPT4)
            && conn.is_some_and(|c| c.family == family::UNIX));
    let placed = (conn.is_some() && !unix_peer)
        || call == call::CLOSE
        || (record.flags & flag::KIND_KNOWN != 0 && record.flags & flag::SOCKET == 0);
    let urgency = if placed {
        Urgency::Batched
    } else {
        Urgency::Prompt
    };
    if let Some(conn) = conn {
        // `HEAD_SENT` is the kernel's own note: qtapd compares the
        // connection with the one it keeps, which must not change with it.
        record.conn = Conn {
            flags: conn.flags & !conn_flag::HEAD_SENT,
            ..conn
        };
        record.flags |= flag::CONN_KNOWN;
    }
    if sessions != 0 && submit(buf, payload.0, payload.1, urgency) && first_head {
        mark_head_sent(key);
    }
}

/// Notes in the connection table that `key`'s first bytes reached the
/// ring (`conn_flag::HEAD_SENT`): later data calls skip reading them.
#[inline(always)]
fn mark_head_sent(key: ConnKey) {
    if let Some(conn) = CONNS.get_ptr_mut(&key) {
        // SAFETY: a map value, written in place; a racing update of the
        // same entry costs at most one more head.
        unsafe { (*conn).flags |= conn_flag::HEAD_SENT };
    }
}

/// Whether data calls' exits read their arguments from the task's
/// registers: qtapd found the kernel's BTF, which `bpf_task_pt_regs`
/// needs, and attached no enter program for them (else their enter keeps
/// them in `PENDING`, and this branch is dead code to the verifier).
#[inline(always)]
fn args_in_registers() -> bool {
    task_offsets().valid != 0
}

/// What an enter would have kept of the data call of process `tgid`
/// returning now, from the task's saved user registers; `None` when no
/// session selects the process (read again, after the exit's timestamp:
/// see `now`).
#[inline(always)]
fn data_call(tgid: u32, call: u16) -> Option<Pending> {
    let sessions = selected_for(tgid, module::SOCKET);
    if sessions == 0 {
        return None;
    }
    let [fd, arg1, arg2, arg3] = syscall_args()?;
    let peek = match call {
        call::RECVFROM => arg3 & MSG_PEEK != 0,
        call::RECVMSG => arg2 & MSG_PEEK != 0,
        _ => false,
    };
    Some(Pending {
        sessions,
        call,
        flags: if peek { flag::PEEK } else { 0 },
        fd: fd as i32,
        // The vector of a `*mmsg` call; the buffer (or the vector or
        // message that holds it) of the others.
        arg1,
        arg2: arg1,
        ..Pending::default()
    })
}

/// The first four arguments of the current task's syscall, from its saved
/// user registers (`rdi`, `rsi`, `rdx`, `r10` on x86-64); `None` when
/// they cannot be read.
///
/// `bpf_task_pt_regs` gives a BTF-typed pointer, which the verifier lets a
/// program load from directly (each load guarded against a fault, like
/// `bpf_probe_read_kernel` but without its helper call and copy).
#[inline(always)]
fn syscall_args() -> Option<[u64; 4]> {
    // SAFETY: the current task is valid while its program runs; its saved
    // registers are read by BTF-checked, fault-guarded loads.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        if regs.is_null() {
            return None;
        }
        Some([(*regs).rdi, (*regs).rsi, (*regs).rdx, (*regs).r10])
    }
}

/// A unix socket's name from the `sockaddr_un` of `len` bytes at `addr`
/// (connect's peer, bind's own): its first `HEAD_BYTES` in `head`, with
/// `flag::NAME_CUT` when it is longer. An unnamed (autobind) address has
/// no bytes past the family.
#[inline(always)]
fn unix_name(record: &mut SyscallRecord, addr: u64, len: u64) {
    const SUN_PATH_OFF: u64 = 2;
    if addr == 0 || len <= SUN_PATH_OFF {
        return;
    }
    let name_len = len - SUN_PATH_OFF;
    if name_len > limit::HEAD_BYTES as u64 {
        record.flags |= flag::NAME_CUT;
    }
    record.head_len = copy_head(addr + SUN_PATH_OFF, name_len, &mut record.head);
}

/// The sessions that want sockets only (`fd:socket`).
#[inline(always)]
fn sockets_only() -> u64 {
    CONFIG.get(0).map_or(0, |c| c.sockets_only)
}

/// `flag::KIND_KNOWN` (with `flag::SOCKET` for a socket) for the fd of
/// `key`, or 0 when it is not worth telling or cannot be told: the calls
/// that make or name a socket, and fds the kernel has a connection for.
#[inline(always)]
fn fd_kind(call: u16, key: ConnKey) -> u8 {
    if matches!(
        call,
        call::SOCKET | call::ACCEPT | call::ACCEPT4 | call::CONNECT | call::BIND
    ) || known(key).is_some()
    {
        return 0;
    }
    file_kind(key.fd as i32)
}

/// `flag::KIND_KNOWN` (with `flag::SOCKET`) for `fd`, 0 when it cannot be
/// told.
#[inline(always)]
fn file_kind(fd: i32) -> u8 {
    match files::is_socket(fd) {
        Some(true) => flag::KIND_KNOWN | flag::SOCKET,
        Some(false) => flag::KIND_KNOWN,
        None => 0,
    }
}

/// Of `sessions`, those that keep a call whose record flags are `flags`:
/// all of them, but for an fd known not to be a socket, those that did
/// not ask for sockets only.
#[inline(always)]
fn keep_for_kind(flags: u8, sessions: u64) -> u64 {
    if flags & flag::KIND_KNOWN != 0 && flags & flag::SOCKET == 0 {
        sessions & !sockets_only()
    } else {
        sessions
    }
}

/// `dup*(oldfd[, newfd])` returning the new fd: the new number is now
/// what the old one is — its connection, or none (`dup2` closes whatever
/// had the number without a `close`).
#[inline(always)]
fn on_dup(record: &mut SyscallRecord, key: ConnKey, ret: i64) -> Option<Conn> {
    let conn = known(key);
    if ret < 0 || ret == i64::from(key.fd) {
        return conn;
    }
    record.new_fd = ret as i32;
    let new_key = ConnKey {
        tgid: key.tgid,
        fd: ret as u32,
    };
    match &conn {
        // qtapd classifies the new number's stream afresh.
        Some(conn) => store(
            new_key,
            &Conn {
                flags: conn.flags & !conn_flag::HEAD_SENT,
                ..*conn
            },
        ),
        None => {
            let _ = CONNS.remove(&new_key);
        }
    }
    conn
}

#[inline(always)]
fn known(key: ConnKey) -> Option<Conn> {
    // SAFETY: the value is copied out at once.
    unsafe { CONNS.get(&key) }.copied()
}

#[inline(always)]
fn store(key: ConnKey, conn: &Conn) {
    if CONNS.insert(&key, conn, 0).is_err() {
        count(stat::CONNS_FULL);
    }
}

/// `socket(family, type, protocol)`: a new fd, with its family and type.
#[inline(always)]
fn on_socket(record: &mut SyscallRecord, pending: &Pending, tgid: u32) -> Option<Conn> {
    if record.ret < 0 {
        return None;
    }
    record.fd = record.ret as i32;
    let conn = Conn {
        family: pending.arg1 as u16,
        sock_type: (pending.arg2 & 0xf) as u16,
        ..Conn::default()
    };
    store(
        ConnKey {
            tgid,
            fd: record.fd as u32,
        },
        &conn,
    );
    Some(conn)
}

/// `bind(fd, addr, len)`: the fd's local address.
#[inline(always)]
fn on_bind(record: &SyscallRecord, pending: &Pending, key: ConnKey) -> Option<Conn> {
    let mut conn = known(key).unwrap_or_default();
    if record.ret == 0 && pending.addr.family != 0 {
        conn.local = pending.addr;
        conn.family = pending.addr.family;
        conn.flags |= conn_flag::LOCAL_KNOWN;
        store(key, &conn);
    }
    Some(conn)
}

/// `connect(fd, addr, len)`: the fd's peer; succeeded or in progress.
#[inline(always)]
fn on_connect(record: &SyscallRecord, pending: &Pending, key: ConnKey) -> Option<Conn> {
    let mut conn = known(key).unwrap_or_default();
    if pending.addr.family != 0 {
        conn.remote = pending.addr;
        conn.family = pending.addr.family;
        conn.flags |= conn_flag::REMOTE_KNOWN;
    }
    conn.role = role::CLIENT;
    if record.ret == 0 || record.ret == -EINPROGRESS {
        // The port and address the kernel chose (for an unbound socket,
        // or one bound to a wildcard) are there by now, even while a TCP
        // handshake is in progress.
        if conn.family == family::INET || conn.family == family::INET6 {
            if let Some(local) = files::local_addr(key.fd as i32, conn.family) {
                conn.local = local;
                conn.flags |= conn_flag::LOCAL_KNOWN;
            }
        }
        store(key, &conn);
    }
    Some(conn)
}

/// `accept[4](fd, addr, addrlen[, flags])`: a new fd whose peer the kernel
/// wrote to `addr` and whose local address is the listener's.
#[inline(always)]
fn on_accept(record: &mut SyscallRecord, pending: &Pending, key: ConnKey) -> Option<Conn> {
    if record.ret < 0 {
        return known(key);
    }
    record.new_fd = record.ret as i32;
    let listener = known(key).unwrap_or_default();
    let mut conn = Conn {
        family: listener.family,
        // accept() only works on connection-mode sockets; a listener opened
        // before tracing began is unknown here but is surely a stream.
        sock_type: if listener.sock_type == 0 {
            SOCK_STREAM
        } else {
            listener.sock_type
        },
        role: role::SERVER,
        ..Conn::default()
    };
    if listener.flags & conn_flag::LOCAL_KNOWN != 0 {
        conn.local = listener.local;
        conn.flags |= conn_flag::LOCAL_KNOWN;
    }
    if pending.arg1 != 0 {
        let peer = read_sockaddr(pending.arg1);
        if peer.family != 0 {
            conn.remote = peer;
            conn.family = peer.family;
            conn.flags |= conn_flag::REMOTE_KNOWN;
        }
    }
    store(
        ConnKey {
            tgid: key.tgid,
            fd: record.new_fd as u32,
        },
        &conn,
    );
    Some(conn)
}

/// The first buffer a data call moved and its length (`u64::MAX` when
/// only the return value bounds it).
#[inline(always)]
fn first_buffer(call: u16, arg: u64) -> (u64, u64) {
    let iov = match call {
        call::READ | call::WRITE | call::SENDTO | call::RECVFROM => return (arg, u64::MAX),
        call::READV | call::WRITEV => arg,
        call::SENDMSG | call::RECVMSG | call::SENDMMSG | call::RECVMMSG => {
            // SAFETY: a user pointer read through the fault-tolerant helper.
            unsafe { bpf_probe_read_user((arg + MSGHDR_IOV_OFF) as *const u64) }.unwrap_or(0)
        }
        _ => return (0, 0),
    };
    if iov == 0 {
        return (0, 0);
    }
    // SAFETY: `struct iovec { void *base; size_t len; }` in user memory,
    // read in one call (each user read costs a hardened-usercopy check).
    match unsafe { bpf_probe_read_user(iov as *const [u64; 2]) } {
        Ok([base, len]) => (base, len),
        Err(_) => (0, 0),
    }
}

#[inline(always)]
fn data_direction(call: u16) -> u8 {
    match call {
        call::READ | call::READV | call::RECVFROM | call::RECVMSG | call::RECVMMSG => {
            direction::INGRESS
        }
        _ => direction::EGRESS,
    }
}

/// Bytes moved by `sendmmsg`/`recvmmsg`: the `msg_len` of the first
/// `messages` entries (at most `MMSG_SUM`).
#[inline(always)]
fn sum_mmsg(vec: u64, messages: u64) -> i64 {
    let mut total: i64 = 0;
    let mut i: u64 = 0;
    while i < u64::from(limit::MMSG_SUM) && i < messages {
        let at = (vec + i * MMSGHDR_SIZE + MMSGHDR_LEN_OFF) as *const u32;
        // SAFETY: a user pointer read through the fault-tolerant helper.
        if let Ok(len) = unsafe { bpf_probe_read_user(at) } {
            total += i64::from(len);
        }
        i += 1;
    }
    total
}

/// Reads an IPv4/IPv6 (or just the family of any other) `sockaddr` from
/// user memory. A null or unreadable pointer gives family 0.
#[inline(always)]
fn read_sockaddr(ptr: u64) -> Addr {
    let mut addr = Addr::default();
    if ptr == 0 {
        return addr;
    }
    // SAFETY (all reads below): user pointers read through the
    // fault-tolerant helper; a failed read leaves the field zero.
    let Ok(fam) = (unsafe { bpf_probe_read_user(ptr as *const u16) }) else {
        return addr;
    };
    addr.family = fam;
    match fam {
        family::INET | family::INET6 => {
            if let Ok(port) = unsafe { bpf_probe_read_user((ptr + 2) as *const u16) } {
                addr.port = u16::from_be(port);
            }
            if fam == family::INET {
                if let Ok(ip) = unsafe { bpf_probe_read_user((ptr + 4) as *const [u8; 4]) } {
                    addr.addr[..4].copy_from_slice(&ip);
                }
            } else if let Ok(ip) = unsafe { bpf_probe_read_user((ptr + 8) as *const [u8; 16]) } {
                addr.addr = ip;
            }
        }
        _ => {}
    }
    addr
}
