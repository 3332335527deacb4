//! The kernel/user contract of qtap.
//!
//! Everything that crosses a BPF map or the ring buffer is defined here, once:
//! record layouts, map names, sizes and limits, kind and call numbers. Every
//! type is `#[repr(C)]`, `Copy`, made of fixed-width integers and byte arrays,
//! with explicit `_pad` fields and a compile-time size check, so the kernel
//! (`bpfel-unknown-none`) and user space (`x86_64`) agree byte for byte.
//!
//! Kind and call numbers are explicit and never reused; a change that alters
//! a layout bumps [`ABI_VERSION`].
#![no_std]
// `_pad` fields are public so both sides can build records with literals.
#![allow(clippy::pub_underscore_fields)]

#[cfg(feature = "user")]
extern crate std;

#[cfg(feature = "user")]
mod user;
#[cfg(feature = "user")]
#[allow(unused_imports, reason = "re-exports whatever user-only helpers exist")]
pub use user::*;

/// Written into every record header; user space rejects other versions.
pub const ABI_VERSION: u16 = 9;

/// Sessions that can be active at once: one bit each in a `u64` mask.
pub const MAX_SESSIONS: usize = 64;

/// Map names, as the kernel object exports them.
pub mod map {
    /// `RingBuf`: every record, kernel to user.
    pub const EVENTS: &str = "EVENTS";
    /// `HashMap<u32 tgid, ProcSel>`: the selected processes.
    pub const PROCS: &str = "PROCS";
    /// `HashMap<ConnKey, Conn>`: what the kernel knows of each socket fd.
    pub const CONNS: &str = "CONNS";
    /// `HashMap<u64 pid_tgid, Pending>`: a syscall between enter and exit.
    pub const PENDING: &str = "PENDING";
    /// `Array<Config>` with one entry: the compiled filters.
    pub const CONFIG: &str = "CONFIG";
    /// `Array<u32>` with one entry: non-zero while qtapd waits for the ring
    /// without its drain clock, so the next data record must wake it.
    pub const READER: &str = "READER";
    /// `HashMap<PatternKey, u64>`: string and pid predicates to session masks.
    pub const PATTERNS: &str = "PATTERNS";
    /// `PerCpuArray<u64>` indexed by [`super::stat`]: kernel-side counters.
    pub const STATS: &str = "STATS";
    /// `PerCpuArray<ExecScratch>`: room to copy an exec filename.
    pub const SCRATCH: &str = "SCRATCH";
    /// `PerCpuArray<WithPayload<SyscallRecord>>` and `…<TlsRecord>`: where
    /// records are assembled.
    pub const SYSCALL_BUF: &str = "SYSCALL_BUF";
    pub const TLS_BUF: &str = "TLS_BUF";
    /// `HashMap<u64 pid_tgid, TlsPending>`: a TLS library call in progress
    /// on a thread (what its nested syscalls are correlated with).
    ///
    /// `PENDING`, `TLS_ACTIVE` and `CONNS` are plain hash maps, never LRU:
    /// a full table refuses the insert, and the refusal is counted
    /// ([`super::stat`]), where an LRU map would evict an entry silently.
    /// Entries of a thread are removed when it exits (the exit probe),
    /// `CONNS` entries at close and, for processes gone without one, by
    /// qtapd's sweep.
    pub const TLS_ACTIVE: &str = "TLS_ACTIVE";
    /// `HashMap<GoKey, TlsPending>`: a Go `crypto/tls` call in progress
    /// on a goroutine. Go moves goroutines between threads, so its calls
    /// are keyed by the goroutine (`g`), not the thread; entries of
    /// processes gone mid-call are removed by qtapd's sweep.
    pub const GO_ACTIVE: &str = "GO_ACTIVE";
}

/// Map sizes.
pub mod limit {
    /// Ring buffer bytes (a power of two, a multiple of the page size).
    pub const RING_BYTES: u32 = 8 << 20;
    /// Unread ring bytes past which a data record wakes qtapd's reader.
    /// Below it, data records are written without a wakeup and the reader
    /// collects them on its own clock (`engine::DRAIN_EVERY`): one wakeup
    /// per record would be one context switch per traced call. 1/8 of the
    /// ring: about 6,000 records, more than one tick of the clock gathers
    /// from nginx at full speed (about 4,400). Each forced wakeup is a
    /// self-interrupt (a VM exit here) paid by the traced call, so the
    /// mark sits where only a reader that has fallen behind (descheduled
    /// on a busy machine, or outrun) meets it. At 1/32 every tick crossed
    /// it: a session selecting nginx, with no follower, forced 1,200
    /// wakeups a second.
    pub const WAKE_BYTES: u64 = RING_BYTES as u64 / 8;
    /// Selected processes at once.
    pub const PROCS: u32 = 32_768;
    /// Socket fds tracked at once.
    pub const CONNS: u32 = 65_536;
    /// Syscalls in flight at once (one per thread).
    pub const PENDING: u32 = 16_384;
    /// Compiled string and pid predicates.
    pub const PATTERNS: u32 = 4_096;
    /// Bytes of an exec filename that are kept and matched.
    pub const EXE_LEN: usize = 256;
    /// Longest string predicate value (a longer one is a filter error).
    pub const PATTERN_LEN: usize = 255;
    /// Distinct lengths of `exe.contains` values across all sessions.
    pub const CONTAINS_LENS: usize = 8;
    /// `mmsghdr` entries whose `msg_len` is summed for sendmmsg/recvmmsg.
    pub const MMSG_SUM: u32 = 16;
    /// First bytes of each data call copied into its record, for protocol
    /// detection (a TLS record header, an HTTP request line, the HTTP/2
    /// preface of 24 bytes, a DNS header).
    pub const HEAD_BYTES: usize = 32;
    /// TLS library calls in progress at once (one per thread).
    pub const TLS_ACTIVE: u32 = 16_384;
    /// Go `crypto/tls` calls in progress at once (one per goroutine).
    pub const GO_ACTIVE: u32 = 16_384;
    /// Most payload bytes a session may capture per data event (a power
    /// of two: the kernel masks lengths with it).
    pub const CAPTURE_MAX: usize = 4096;
}

/// Indexes of the per-CPU kernel counters in [`map::STATS`].
pub mod stat {
    /// A record was dropped because the ring buffer was full.
    pub const RING_FULL: u32 = 0;
    /// A syscall's enter was not stored (pending table full).
    pub const PENDING_FULL: u32 = 1;
    /// A connection could not be stored (table full).
    pub const CONNS_FULL: u32 = 2;
    /// A forked child could not be selected (process table full).
    pub const PROCS_FULL: u32 = 3;
    /// A TLS library call's entry was not stored (table full): its
    /// record and the correlation of its syscalls are lost.
    pub const TLS_FULL: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
}

/// Record kinds, grouped by family; never reused.
pub mod kind {
    /// A socket-family syscall ([`super::SyscallRecord`]).
    pub const SYSCALL: u16 = 1;
    /// A process replaced its image ([`super::ExecRecord`]).
    pub const EXEC: u16 = 100;
    /// A selected process forked ([`super::ForkRecord`]).
    pub const FORK: u16 = 101;
    /// A selected process exited ([`super::Header`] only).
    pub const EXIT: u16 = 102;
    /// A process stopped qualifying for the restricted sessions in
    /// `Header::sessions` (its credentials changed, or it made itself
    /// undumpable) and was deselected for them ([`super::Header`] only).
    pub const CREDS: u16 = 103;
    /// A TLS library call ([`super::TlsRecord`]).
    pub const TLS: u16 = 200;
}

/// The TLS library calls of the openssl and gnutls modules, as carried in
/// [`TlsRecord::call`]. Program names are `<symbol>` for the entry and
/// `<symbol>_ret` for the return probe.
pub mod tls_call {
    pub const SSL_READ: u16 = 1;
    pub const SSL_READ_EX: u16 = 2;
    pub const SSL_WRITE: u16 = 3;
    pub const SSL_WRITE_EX: u16 = 4;
    /// `SSL_set_fd(ssl, fd)`: binds both directions to `fd`.
    pub const SSL_SET_FD: u16 = 5;
    pub const SSL_SET_RFD: u16 = 6;
    pub const SSL_SET_WFD: u16 = 7;
    /// `SSL_free(ssl)`: the object and its binding are gone.
    pub const SSL_FREE: u16 = 8;
    /// GnuTLS's calls from here on ([`module_of`]).
    pub const GNUTLS_RECORD_RECV: u16 = 16;
    pub const GNUTLS_RECORD_SEND: u16 = 17;
    /// `gnutls_transport_set_int2(session, recv_fd, send_fd)`
    /// (`gnutls_transport_set_int` is a macro for it).
    pub const GNUTLS_TRANSPORT_SET_INT2: u16 = 18;
    /// `gnutls_transport_set_ptr(session, ptr)`: an fd when the program
    /// uses GnuTLS's own socket functions, else a pointer of its own.
    pub const GNUTLS_TRANSPORT_SET_PTR: u16 = 19;
    pub const GNUTLS_TRANSPORT_SET_PTR2: u16 = 20;
    /// `gnutls_deinit(session)`: the session and its binding are gone.
    pub const GNUTLS_DEINIT: u16 = 21;
    /// Go's `crypto/tls` calls from here on ([`module_of`]): the methods
    /// `(*Conn).Write` and `(*Conn).Read`; the record's `ssl` is the
    /// `*tls.Conn`, its `fd` the socket's (see [`super::go`]).
    pub const GO_WRITE: u16 = 32;
    pub const GO_READ: u16 = 33;

    /// The kernel family ([`super::module`]) of a call.
    #[must_use]
    pub const fn module_of(call: u16) -> usize {
        if call >= GO_WRITE {
            super::module::GOTLS
        } else if call >= GNUTLS_RECORD_RECV {
            super::module::GNUTLS
        } else {
            super::module::OPENSSL
        }
    }

    /// Whether a call moves plaintext in (else out, or none).
    #[must_use]
    pub const fn is_read(call: u16) -> bool {
        matches!(call, SSL_READ | SSL_READ_EX | GNUTLS_RECORD_RECV | GO_READ)
    }

    /// Whether a call moves plaintext (else it binds or frees).
    #[must_use]
    pub const fn is_data(call: u16) -> bool {
        matches!(
            call,
            SSL_READ
                | SSL_READ_EX
                | SSL_WRITE
                | SSL_WRITE_EX
                | GNUTLS_RECORD_RECV
                | GNUTLS_RECORD_SEND
                | GO_WRITE
                | GO_READ
        )
    }

    /// Whether a call ends its object's life (and binding).
    #[must_use]
    pub const fn is_free(call: u16) -> bool {
        matches!(call, SSL_FREE | GNUTLS_DEINIT)
    }
}

/// The syscalls of the socket module, as carried in [`SyscallRecord::call`].
pub mod call {
    pub const SOCKET: u16 = 1;
    pub const ACCEPT: u16 = 2;
    pub const ACCEPT4: u16 = 3;
    pub const CONNECT: u16 = 4;
    pub const READ: u16 = 5;
    pub const WRITE: u16 = 6;
    pub const READV: u16 = 7;
    pub const WRITEV: u16 = 8;
    pub const SENDTO: u16 = 9;
    pub const RECVFROM: u16 = 10;
    pub const SENDMSG: u16 = 11;
    pub const RECVMSG: u16 = 12;
    pub const SENDMMSG: u16 = 13;
    pub const RECVMMSG: u16 = 14;
    pub const SENDFILE: u16 = 15;
    pub const CLOSE: u16 = 16;
    pub const BIND: u16 = 17;
    pub const DUP: u16 = 18;
    pub const DUP2: u16 = 19;
    pub const DUP3: u16 = 20;

    /// The data calls: with the kernel's BTF, their exit reads their
    /// arguments from the task's saved registers and they have no enter
    /// program (see `qtapd-ebpf`'s `probes::syscall`).
    #[must_use]
    pub const fn args_at_exit(call: u16) -> bool {
        matches!(
            call,
            READ | WRITE
                | READV
                | WRITEV
                | SENDTO
                | RECVFROM
                | SENDMSG
                | RECVMSG
                | SENDMMSG
                | RECVMMSG
                | SENDFILE
        )
    }
}

/// Process predicates compiled into the kernel, as [`PatternKey::key`] and
/// as indexes of [`Config::uses`].
pub mod pred {
    pub const EXE: u8 = 0;
    pub const EXE_CONTAINS: u8 = 1;
    pub const EXE_PREFIX: u8 = 2;
    pub const EXE_SUFFIX: u8 = 3;
    pub const COMM: u8 = 4;
    pub const PID: u8 = 5;
    /// The real uid of the process at exec.
    pub const UID: u8 = 6;
    /// The cgroup the process execs in (`bpf_get_current_cgroup_id`):
    /// qtapd turns `cgroup:`, `container:` and `unit:` terms into the ids
    /// of the cgroups they match.
    pub const CGROUP: u8 = 7;
    /// Number of predicate keys.
    pub const COUNT: usize = 8;
}

/// Record families the kernel emits per session, as indexes of
/// [`Config::modules`] (user-space modules map onto these).
pub mod module {
    /// Syscall records.
    pub const SOCKET: usize = 0;
    /// OpenSSL's records.
    pub const OPENSSL: usize = 1;
    /// GnuTLS's records.
    pub const GNUTLS: usize = 2;
    /// Go `crypto/tls`'s records.
    pub const GOTLS: usize = 3;
    /// Number of families the kernel gates on.
    pub const COUNT: usize = 4;

    /// The families of TLS library records.
    pub const TLS: [usize; 3] = [OPENSSL, GNUTLS, GOTLS];
}

/// `SyscallRecord::flags` bits.
pub mod flag {
    /// `conn` holds what the kernel knows of this fd.
    pub const CONN_KNOWN: u8 = 1;
    /// A `MSG_PEEK` read: the bytes will be read again.
    pub const PEEK: u8 = 2;
    /// The call ran inside a TLS library call on the same thread
    /// (`SyscallRecord::tls` names the `SSL*`).
    pub const IN_TLS: u8 = 4;
    /// The kernel looked at the fd's file when the call began (it had no
    /// connection for it); [`SOCKET`] says what it found.
    pub const KIND_KNOWN: u8 = 8;
    /// With [`KIND_KNOWN`]: the fd was a socket.
    pub const SOCKET: u8 = 16;
    /// `connect`/`bind` on a unix socket: `head` holds the first
    /// `HEAD_BYTES` of its name, and the name is longer.
    pub const NAME_CUT: u8 = 32;
}

/// `Conn::flags` bits.
pub mod conn_flag {
    pub const LOCAL_KNOWN: u8 = 1;
    pub const REMOTE_KNOWN: u8 = 2;
    /// A record with the connection's first bytes (`head`) reached the
    /// ring: qtapd has classified the fd's stream from them, so later
    /// data calls do not read them again (unless a TLS library session,
    /// whose memory-BIO matching needs every call's, is running). A
    /// `dup` and an `exec` clear it, as qtapd starts their streams afresh.
    pub const HEAD_SENT: u8 = 4;
}

/// `Conn::role` values.
pub mod role {
    pub const UNKNOWN: u8 = 0;
    pub const CLIENT: u8 = 1;
    pub const SERVER: u8 = 2;
    pub const LISTENER: u8 = 3;
}

/// `SyscallRecord::direction` values.
pub mod direction {
    pub const INGRESS: u8 = 0;
    pub const EGRESS: u8 = 1;
    /// Neither (socket, connect, close, …).
    pub const NONE: u8 = 2;
}

/// Linux address families used here.
pub mod family {
    pub const UNIX: u16 = 1;
    pub const INET: u16 = 2;
    pub const INET6: u16 = 10;
}

/// Multiplier of the polynomial string hash shared by kernel and user space.
pub const HASH_MUL: u64 = 0x0000_0100_0000_01b3;

/// One step of the string hash: `h' = h * HASH_MUL + byte` (wrapping).
#[expect(
    clippy::inline_always,
    reason = "called in BPF loop bodies, where a call costs verifier work"
)]
#[inline(always)]
#[must_use]
pub const fn hash_step(h: u64, byte: u8) -> u64 {
    h.wrapping_mul(HASH_MUL).wrapping_add(byte as u64)
}

/// Starts every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// One of [`kind`].
    pub kind: u16,
    /// [`ABI_VERSION`].
    pub abi: u16,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The real uid of the process: whose restricted sessions may see it
    /// (a process with plain credentials has all its uids equal).
    pub uid: u32,
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// Sessions that selected the process when the record was made.
    pub sessions: u64,
    /// The task name.
    pub comm: [u8; 16],
}

/// A socket address as the kernel saw it in a syscall argument.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Addr {
    /// [`family`] value, 0 when unknown.
    pub family: u16,
    /// Port in host byte order.
    pub port: u16,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub addr: [u8; 16],
}

/// What the kernel knows of one socket fd.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conn {
    pub local: Addr,
    pub remote: Addr,
    /// Address family from `socket()` or the first address seen.
    pub family: u16,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, … (0 when unknown).
    pub sock_type: u16,
    /// One of [`role`].
    pub role: u8,
    /// [`conn_flag`] bits.
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// Key of [`map::CONNS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Value of [`map::PROCS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcSel {
    /// Sessions selecting this process.
    pub sessions: u64,
}

/// Value of [`map::PENDING`]: a syscall's arguments kept from enter to exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub sessions: u64,
    /// One of [`call`].
    pub call: u16,
    /// [`flag`] bits known at enter.
    pub flags: u8,
    pub _pad: u8,
    pub fd: i32,
    /// Call-specific pointers or values (a sockaddr, a vector, a family).
    pub arg1: u64,
    pub arg2: u64,
    /// An address read at enter (connect, bind).
    pub addr: Addr,
    pub _pad2: u32,
}

/// A socket-module syscall, made at its exit. Followed in the ring by up
/// to `Config::capture_bytes` of payload (the item's length tells how many).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallRecord {
    pub hdr: Header,
    /// The syscall's return value (negative: `-errno`).
    pub ret: i64,
    /// Bytes moved: `ret` for data calls (so `-errno` on failure), the
    /// summed `msg_len` for the `*mmsg` calls, 0 for control calls.
    pub bytes: i64,
    /// One of [`call`].
    pub call: u16,
    /// One of [`direction`].
    pub direction: u8,
    /// [`flag`] bits.
    pub flags: u8,
    /// The fd the call was made on (for `socket`: the new fd).
    pub fd: i32,
    /// For accept: the returned fd; otherwise -1.
    pub new_fd: i32,
    /// Bytes of `head` filled (0 for control calls and failures).
    pub head_len: u32,
    /// The connection, valid when `flags & CONN_KNOWN`.
    pub conn: Conn,
    /// The `SSL*` whose call this syscall ran inside (with `IN_TLS`).
    pub tls: u64,
    /// The first bytes the call moved (of its first buffer); for
    /// `connect`/`bind` on a unix socket, the first bytes of the name
    /// (`sun_path`, as long as the caller's address length says).
    pub head: [u8; limit::HEAD_BYTES],
}

/// What a thread's TLS library call keeps from entry to return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsPending {
    pub sessions: u64,
    /// The `SSL*`.
    pub ssl: u64,
    /// The plaintext buffer.
    pub buf: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the byte count is written.
    pub count_ptr: u64,
    /// One of [`tls_call`].
    pub call: u16,
    pub _pad: u16,
    /// Go: the socket's fd, read at entry (-1 when not found).
    pub fd: i32,
}

/// The key of [`map::GO_ACTIVE`]: a goroutine of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GoKey {
    pub tgid: u32,
    pub _pad: u32,
    /// The goroutine's `g` (register `r14` in Go's register ABI).
    pub goroutine: u64,
}

/// Where Go keeps a `*tls.Conn`'s socket fd: `tls.Conn.conn` is a
/// `net.Conn` interface whose data word points at a `*net.TCPConn` (or
/// `UnixConn`, …), whose first field (`conn.fd`) is the `*net.netFD`, whose
/// `pfd poll.FD` starts with `fdmu fdMutex` (16 bytes) and then `Sysfd`.
/// One row serves every supported version (Go 1.17 to this day); a test
/// reads the offsets of a program built here with `reflect`.
pub mod go {
    /// The oldest Go whose register ABI the probes read (1.17).
    pub const MIN_MINOR: u32 = 17;
    /// `tls.Conn.conn`'s data word (the interface's second word).
    pub const CONN_DATA: u64 = 8;
    /// `net.conn.fd` in the concrete connection.
    pub const NETFD: u64 = 0;
    /// `netFD.pfd.Sysfd`.
    pub const SYSFD: u64 = 16;
}

/// A TLS library call, made at its return (or at entry for the calls that
/// bind or free an `SSL*`). Followed in the ring by up to
/// `Config::capture_bytes` of plaintext.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsRecord {
    pub hdr: Header,
    /// The `SSL*` (or `gnutls_session_t`) the call was made on.
    pub ssl: u64,
    /// The return value (`SSL_read`, `gnutls_record_recv`: bytes or <= 0;
    /// `_ex`: 1 or 0; Go: `n`, or -1 when an error came back with it);
    /// for the GnuTLS calls that bind two fds, the send side's fd (`fd` is
    /// the receive side's), or -1.
    pub ret: i64,
    /// Plaintext bytes moved (0 when the call failed).
    pub bytes: i64,
    /// One of [`tls_call`].
    pub call: u16,
    /// One of [`direction`].
    pub direction: u8,
    pub _pad: u8,
    /// `SSL_set_*fd`, `gnutls_transport_set_*`: the (receive side's) fd
    /// argument, -1 when it is not an fd; Go's calls: the socket's fd
    /// under the `*tls.Conn`, -1 when not found; otherwise -1.
    pub fd: i32,
    /// Bytes of `head` filled.
    pub head_len: u32,
    pub _pad2: u32,
    /// The first plaintext bytes.
    pub head: [u8; limit::HEAD_BYTES],
}

/// A selected process's exec.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecRecord {
    pub hdr: Header,
    /// Bytes of `filename` used (without the terminating NUL).
    pub filename_len: u32,
    pub _pad: u32,
    /// The path given to `execve`.
    pub filename: [u8; limit::EXE_LEN],
}

/// A selected process's fork.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkRecord {
    pub hdr: Header,
    /// The child's pid.
    pub child_pid: u32,
    pub _pad: u32,
}

/// Key of [`map::PATTERNS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PatternKey {
    /// One of [`pred`].
    pub key: u8,
    pub _pad: [u8; 3],
    /// Length of the matched string (0 for pids).
    pub len: u32,
    /// [`hash_step`] over the string, or the pid.
    pub hash: u64,
}

/// The compiled filters of all sessions, the single entry of [`map::CONFIG`].
///
/// A process is selected by session `s` when bit `s` is in `active` and,
/// for every predicate key `k` with bit `s` in `uses[k]`, one of the
/// session's values for `k` matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Sessions in force.
    pub active: u64,
    /// Per predicate key: sessions that have a term with that key.
    pub uses: [u64; pred::COUNT],
    /// Per module: sessions that asked for that event family.
    pub modules: [u64; module::COUNT],
    /// Bit `l` set: some `exe.startsWith` value has length `l` (0..256).
    pub prefix_lens: [u64; 4],
    /// Bit `l` set: some `exe.endsWith` value has length `l`.
    pub suffix_lens: [u64; 4],
    /// Distinct lengths of `exe.contains` values; 0 ends the list.
    pub contains_lens: [u32; limit::CONTAINS_LENS],
    /// `HASH_MUL` to the power of each `contains_lens` entry.
    pub contains_pows: [u64; limit::CONTAINS_LENS],
    /// Sessions of callers other than root: they select a process only
    /// while its credentials are plain (see [`CredOffsets`]).
    pub restricted: u64,
    /// Sessions that want socket fds only (`fd:socket`): a call on an fd
    /// that is not a socket is not recorded for them (see [`FileOffsets`]).
    pub sockets_only: u64,
    /// qtapd itself, never selected.
    pub self_tgid: u32,
    /// Payload bytes to copy after each data record (the most any session
    /// asked for; 0: none).
    pub capture_bytes: u32,
}

/// Per-CPU room for matching an exec filename: the filename, the
/// per-predicate session masks it matched, and the state of the
/// `bpf_loop` callback that walks it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecScratch {
    pub buf: [u8; limit::EXE_LEN],
    pub hits: [u64; pred::COUNT],
    /// Running hash of the walk.
    pub hash: u64,
    /// `HASH_MUL` power of the walk (suffix) or of the window (contains).
    pub power: u64,
    /// Bytes of `buf` in use.
    pub len: u32,
    /// Window length of an `exe.contains` walk.
    pub width: u32,
}

/// Per-CPU room where a record and its payload are assembled before they
/// are copied to the ring (`T`: [`SyscallRecord`] or [`TlsRecord`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WithPayload<T> {
    pub record: T,
    pub payload: [u8; limit::CAPTURE_MAX],
}

/// Where the kernel keeps a task's credentials, read by qtapd from the
/// kernel's BTF at load and set as the global [`offsets::CRED`].
///
/// A process's credentials are *plain* when its uid, euid, suid and fsuid
/// are equal, its gid, egid, sgid and fsgid are equal, and it holds no
/// permitted capability: what a process of a non-root user looks like
/// unless it gained something at exec (setuid, setgid, file capabilities)
/// or changed ids since. Only a plain process may be selected by a
/// restricted session ([`Config::restricted`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CredOffsets {
    /// `task_struct.real_cred`: the objective credentials, those `ptrace`
    /// access checks read.
    pub task_real_cred: u32,
    /// `cred.cap_permitted` (a 64-bit capability set).
    pub cap_permitted: u32,
    /// `cred.uid`, `euid`, `suid`, `fsuid`, `gid`, `egid`, `sgid`, `fsgid`.
    pub ids: [u32; 8],
    /// 1 once qtapd set the offsets; while 0 no process is plain, so
    /// restricted sessions fail closed.
    pub valid: u32,
    pub _pad: u32,
}

/// Where the kernel keeps a task's open files, for telling a socket fd
/// from a file or pipe: `task_struct.files` → `files_struct.fdt` →
/// `fdtable.fd[fd]` (below `fdtable.max_fds`) → `file.f_inode` →
/// `inode.i_mode`; and a socket's own local address, which a `connect`
/// gives it without the caller passing it: `file.private_data` (the
/// `struct socket`) → `socket.sk` → `sock_common`'s bound address and
/// port. From the kernel's BTF, like [`CredOffsets`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub inode_mode: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// `sock_common.skc_rcv_saddr` (IPv4, network order).
    pub sk_rcv_saddr: u32,
    /// `sock_common.skc_num` (local port, host order).
    pub sk_num: u32,
    /// `sock_common.skc_v6_rcv_saddr`; 0 on a kernel without IPv6.
    pub sk_v6_rcv_saddr: u32,
    /// 1 once qtapd set the offsets; while 0 the kernel does not look.
    pub valid: u32,
}

/// Where `task_struct` keeps its `signal_struct` and that its count of
/// live threads, from the kernel's BTF like [`CredOffsets`]: the exit
/// probe tells the last thread of a process by it on kernels whose
/// `sched_process_exit` has no `group_dead`. `valid` also says the kernel
/// has BTF, so data calls read their arguments at exit
/// ([`call::args_at_exit`]) and every record its task's name straight
/// from `task_struct.comm`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub task_signal: u32,
    /// `signal_struct.live` (an `atomic_t`).
    pub signal_live: u32,
    /// `task_struct.comm` (16 bytes).
    pub task_comm: u32,
    /// 1 once qtapd set the offsets; while 0 the kernel does not look.
    pub valid: u32,
}

/// Offsets of tracepoint fields that differ between kernels, read by
/// qtapd from tracefs `format` files and set as globals at load.
pub mod offsets {
    /// Global name: the [`super::CredOffsets`] of this kernel.
    pub const CRED: &str = "CRED_OFFSETS";
    /// Global name: the [`super::FileOffsets`] of this kernel.
    pub const FILE: &str = "FILE_OFFSETS";
    /// Global name: the [`super::TaskOffsets`] of this kernel.
    pub const TASK: &str = "TASK_OFFSETS";
    /// Global name: offset of `child_pid` in `sched_process_fork`.
    pub const FORK_CHILD_PID: &str = "FORK_CHILD_PID_OFF";
    /// Global name: offset of `filename` (`__data_loc`) in `sched_process_exec`.
    pub const EXEC_FILENAME: &str = "EXEC_FILENAME_OFF";
    /// Global name: offset of `group_dead` in `sched_process_exit` (0: none).
    pub const EXIT_GROUP_DEAD: &str = "EXIT_GROUP_DEAD_OFF";
}

const _: () = {
    assert!(core::mem::size_of::<Header>() == 48);
    assert!(core::mem::size_of::<Addr>() == 20);
    assert!(core::mem::size_of::<Conn>() == 48);
    assert!(core::mem::size_of::<ConnKey>() == 8);
    assert!(core::mem::size_of::<ProcSel>() == 8);
    assert!(core::mem::size_of::<Pending>() == 56);
    assert!(core::mem::size_of::<SyscallRecord>() == 48 + 32 + 48 + 8 + limit::HEAD_BYTES);
    assert!(core::mem::size_of::<TlsPending>() == 40);
    assert!(core::mem::size_of::<GoKey>() == 16);
    assert!(core::mem::size_of::<TlsRecord>() == 48 + 40 + limit::HEAD_BYTES);
    assert!(core::mem::size_of::<ExecRecord>() == 48 + 8 + limit::EXE_LEN);
    assert!(core::mem::size_of::<ForkRecord>() == 56);
    assert!(core::mem::size_of::<PatternKey>() == 16);
    assert!(
        core::mem::size_of::<Config>()
            == 8 + 64 + 8 * module::COUNT + 32 + 32 + 32 + 64 + 8 + 8 + 8
    );
    assert!(core::mem::size_of::<CredOffsets>() == 48);
    assert!(core::mem::size_of::<FileOffsets>() == 48);
    assert!(core::mem::align_of::<SyscallRecord>() == 8);
    // Offsets user space relies on when it reads a record's fields.
    assert!(core::mem::offset_of!(Header, ts_ns) == 16);
    assert!(core::mem::offset_of!(Header, comm) == 32);
    assert!(core::mem::offset_of!(SyscallRecord, ret) == 48);
    assert!(core::mem::offset_of!(SyscallRecord, fd) == 68);
    assert!(core::mem::offset_of!(SyscallRecord, conn) == 80);
    assert!(core::mem::offset_of!(ExecRecord, filename) == 56);
    assert!(core::mem::offset_of!(Conn, remote) == 20);
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout checks above run at compile time for both targets; this
    /// repeats the sizes at test time so a layout change shows in tests.
    #[test]
    fn record_sizes() {
        assert_eq!(core::mem::size_of::<Header>(), 48);
        assert_eq!(core::mem::size_of::<SyscallRecord>(), 168);
        assert_eq!(core::mem::size_of::<TlsRecord>(), 120);
        assert_eq!(core::mem::size_of::<ExecRecord>(), 312);
        assert_eq!(core::mem::size_of::<ForkRecord>(), 56);
        assert_eq!(core::mem::size_of::<Config>(), 288);
    }

    #[test]
    fn hash_step_is_polynomial() {
        let h = hash_step(hash_step(0, b'a'), b'b');
        assert_eq!(h, u64::from(b'a').wrapping_mul(HASH_MUL) + u64::from(b'b'));
    }
}
