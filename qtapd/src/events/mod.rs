//! The event qtapd delivers: [`Event`], made once per kernel record by
//! enrichment and shared (`Arc`) by every session and follower it goes
//! to. Its strings are labels made at compile time or shared with the
//! state they come from, so making one allocates once; each follower's
//! stream turns it into its wire form (`Event::to_wire`), or its session
//! makes it a compact record once for all its compact followers
//! (`engine::compact`).

pub mod decode;
pub mod derived;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime},
};

use qtap_common::{call, family, role, tls_call, Addr, Header};
pub use qtap_proto::v1::ConnInfo;
use qtap_proto::{time::Rfc3339, v1};

use crate::cgroup::Cgroup;

/// The local port of a connection, when its address has one.
#[must_use]
pub fn local_port(conn: &ConnInfo) -> Option<u16> {
    port_of(conn.local.as_deref())
}

/// The remote port of a connection, when its address has one.
#[must_use]
pub fn remote_port(conn: &ConnInfo) -> Option<u16> {
    port_of(conn.remote.as_deref())
}

fn port_of(addr: Option<&str>) -> Option<u16> {
    addr?.rsplit_once(':')?.1.parse().ok()
}

/// A string an event carries: a label made at compile time, or text
/// shared with the state it came from (an exe, a filename).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Text {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Text {
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Shared(s) => s,
        }
    }
}

impl Default for Text {
    fn default() -> Text {
        Text::Static("")
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Text {
        Text::Static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text::Shared(s.into())
    }
}

/// One event, as every session that selects it receives it; the fields
/// of `qtap.v1.Event` but the per-session ones (`session`, `seq`) and
/// those a follower's stream derives (`ts` is kept as the kernel's time).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Event {
    /// `CLOCK_MONOTONIC` nanoseconds, the kernel's stamp.
    pub ts_ns: u64,
    pub msg: Text,
    pub caller: Text,
    pub pid: u32,
    pub tid: u32,
    pub exe: Text,
    /// The task name as the kernel gave it (NUL-padded).
    pub comm: [u8; 16],
    pub fd: Option<i32>,
    pub new_fd: Option<i32>,
    pub direction: Option<u32>,
    pub bytes: Option<i64>,
    pub ret: Option<i64>,
    pub error: Option<Text>,
    pub peek: bool,
    pub ssl: Option<bool>,
    pub protocol: Option<&'static str>,
    pub open: Option<bool>,
    pub conn_info: Option<Arc<ConnInfo>>,
    pub filename: Option<Text>,
    pub child_pid: Option<u32>,
    pub tls_version: Option<&'static str>,
    pub app_protocol: Option<&'static str>,
    /// What the kernel captured: as much as the most demanding session
    /// asked for (each session's stream keeps its own share).
    pub payload: Vec<u8>,
    /// The process's cgroup, shared with every event of the process.
    pub cgroup: Option<Arc<Cgroup>>,
}

impl Event {
    /// The `qtap.v1.Event` message of this event as delivered for
    /// `session` with sequence number `seq`, keeping `capture` payload
    /// bytes.
    #[must_use]
    pub fn to_wire(&self, session: &str, seq: u64, capture: u32, time: &mut Rfc3339) -> v1::Event {
        v1::Event {
            ts: time.format(unix_ns(self.ts_ns)),
            msg: self.msg.as_str().into(),
            caller: self.caller.as_str().into(),
            pid: self.pid,
            tid: self.tid,
            exe: self.exe.as_str().into(),
            comm: c_str(&self.comm),
            fd: self.fd,
            new_fd: self.new_fd,
            direction: self.direction,
            bytes: self.bytes,
            ret: self.ret,
            error: self.error.as_ref().map(|t| t.as_str().into()),
            peek: self.peek,
            ssl: self.ssl,
            protocol: self.protocol.map(Into::into),
            open: self.open,
            conn_info: self.conn_info.as_deref().cloned(),
            filename: self.filename.as_ref().map(|t| t.as_str().into()),
            child_pid: self.child_pid,
            session: session.into(),
            seq,
            tls_version: self.tls_version.map(Into::into),
            app_protocol: self.app_protocol.map(Into::into),
            payload: self.payload(capture).to_vec(),
            host: String::new(),
            cgroup_id: self.cgroup.as_ref().map_or(0, |c| c.id),
            cgroup: self.cgroup.as_ref().map(|c| c.path.to_string()),
            container_id: self
                .cgroup
                .as_ref()
                .and_then(|c| c.container_id.as_deref().map(Into::into)),
            pod_uid: self
                .cgroup
                .as_ref()
                .and_then(|c| c.pod_uid.as_deref().map(Into::into)),
            unit: self
                .cgroup
                .as_ref()
                .and_then(|c| c.unit.as_deref().map(Into::into)),
        }
    }

    /// The first `capture` bytes of the payload.
    #[must_use]
    pub fn payload(&self, capture: u32) -> &[u8] {
        &self.payload[..self.payload.len().min(capture as usize)]
    }

    /// Estimated bytes this event holds, for queue budgets.
    #[must_use]
    pub fn weight(&self) -> u64 {
        let text = |t: &Text| t.as_str().len();
        (256 + text(&self.msg)
            + text(&self.exe)
            + self.payload.len()
            + self.filename.as_ref().map_or(0, text)
            + self.cgroup.as_ref().map_or(0, |c| c.path.len())) as u64
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`,
/// which stamps kernel records.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// `CLOCK_REALTIME - CLOCK_MONOTONIC`, read once for the whole daemon so
/// that every stream shows a kernel stamp as the same instant.
fn boot() -> SystemTime {
    static BOOT: OnceLock<SystemTime> = OnceLock::new();
    *BOOT.get_or_init(|| SystemTime::now() - Duration::from_nanos(monotonic_ns()))
}

/// A kernel stamp (`CLOCK_MONOTONIC` ns) as wall-clock time.
#[must_use]
pub fn wall_clock(ts_ns: u64) -> SystemTime {
    boot() + Duration::from_nanos(ts_ns)
}

/// A kernel stamp as nanoseconds since the Unix epoch: one addition per
/// event (each compact record has one), where `wall_clock`'s
/// `SystemTime` arithmetic normalized a timespec twice.
#[must_use]
pub fn unix_ns(ts_ns: u64) -> u64 {
    static BOOT_NS: OnceLock<u64> = OnceLock::new();
    let boot_ns = *BOOT_NS.get_or_init(|| {
        boot()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    boot_ns.saturating_add(ts_ns)
}

/// How a syscall's events are labelled: `msg` and `caller`, made once at
/// compile time rather than formatted per event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallLabels {
    pub name: &'static str,
    /// `syscall/<name>`.
    pub msg: &'static str,
    /// `tracepoint/syscalls/sys_exit_<name>`.
    pub caller: &'static str,
}

/// `match` from call numbers to `CallLabels`: `msg` is `$msg` + name,
/// `caller` is `$caller` + name (or the given probe prefix + name).
macro_rules! labels {
    ($c:expr, $msg:literal, $unknown_caller:literal,
     $($module:ident::$call:ident => $caller:literal $name:literal),* $(,)?) => {
        match $c {
            $($module::$call => CallLabels {
                name: $name,
                msg: concat!($msg, $name),
                caller: concat!($caller, $name),
            },)*
            _ => CallLabels {
                name: "unknown",
                msg: concat!($msg, "unknown"),
                caller: $unknown_caller,
            },
        }
    };
}

/// `tracepoint/syscalls/sys_exit_` + the syscall, for `labels!`.
macro_rules! syscall_labels {
    ($c:expr, $($call:ident => $name:literal),* $(,)?) => {
        labels!($c, "syscall/", "tracepoint/syscalls/unknown",
            $(call::$call => "tracepoint/syscalls/sys_exit_" $name),*)
    };
}

/// The `qtap_common::call` number of a syscall name (`sendfile64`), if it
/// is one of the socket module's.
#[must_use]
pub fn call_named(name: &str) -> Option<u16> {
    (1..=u16::from(u8::MAX)).find(|&c| call_labels(c).name == name)
}

/// The labels of a `qtap_common::call` number.
#[must_use]
pub fn call_labels(c: u16) -> CallLabels {
    syscall_labels!(c,
        SOCKET => "socket",
        ACCEPT => "accept",
        ACCEPT4 => "accept4",
        CONNECT => "connect",
        READ => "read",
        WRITE => "write",
        READV => "readv",
        WRITEV => "writev",
        SENDTO => "sendto",
        RECVFROM => "recvfrom",
        SENDMSG => "sendmsg",
        RECVMSG => "recvmsg",
        SENDMMSG => "sendmmsg",
        RECVMMSG => "recvmmsg",
        SENDFILE => "sendfile64",
        CLOSE => "close",
        BIND => "bind",
        DUP => "dup",
        DUP2 => "dup2",
        DUP3 => "dup3",
    )
}

/// The labels of a `qtap_common::tls_call` number: `openssl/SSL_write`,
/// reported by `uretprobe/SSL_write`, or `gnutls/gnutls_record_send` (calls
/// that bind or free an `SSL*` or GnuTLS session are reported at entry, by
/// `uprobe/…`), or `gotls/Write`, reported by the uprobes of Go's
/// `crypto/tls.(*Conn).Write` (at its `RET`s).
#[must_use]
pub fn tls_call_labels(c: u16) -> CallLabels {
    if tls_call::module_of(c) == qtap_common::module::GOTLS {
        return labels!(c, "gotls/", "uprobe/unknown",
            tls_call::GO_WRITE => "uprobe/crypto/tls.(*Conn)." "Write",
            tls_call::GO_READ => "uprobe/crypto/tls.(*Conn)." "Read",
        );
    }
    if tls_call::module_of(c) == qtap_common::module::GNUTLS {
        return labels!(c, "gnutls/", "uprobe/unknown",
            tls_call::GNUTLS_RECORD_RECV => "uretprobe/" "gnutls_record_recv",
            tls_call::GNUTLS_RECORD_SEND => "uretprobe/" "gnutls_record_send",
            tls_call::GNUTLS_TRANSPORT_SET_INT2 => "uprobe/" "gnutls_transport_set_int2",
            tls_call::GNUTLS_TRANSPORT_SET_PTR => "uprobe/" "gnutls_transport_set_ptr",
            tls_call::GNUTLS_TRANSPORT_SET_PTR2 => "uprobe/" "gnutls_transport_set_ptr2",
            tls_call::GNUTLS_DEINIT => "uprobe/" "gnutls_deinit",
        );
    }
    labels!(c, "openssl/", "uprobe/unknown",
        tls_call::SSL_READ => "uretprobe/" "SSL_read",
        tls_call::SSL_READ_EX => "uretprobe/" "SSL_read_ex",
        tls_call::SSL_WRITE => "uretprobe/" "SSL_write",
        tls_call::SSL_WRITE_EX => "uretprobe/" "SSL_write_ex",
        tls_call::SSL_SET_FD => "uprobe/" "SSL_set_fd",
        tls_call::SSL_SET_RFD => "uprobe/" "SSL_set_rfd",
        tls_call::SSL_SET_WFD => "uprobe/" "SSL_set_wfd",
        tls_call::SSL_FREE => "uprobe/" "SSL_free",
    )
}

/// Whether `c` moves bytes (and so has `bytes` and `direction`).
#[must_use]
pub fn is_data_call(c: u16) -> bool {
    !matches!(
        c,
        call::SOCKET
            | call::ACCEPT
            | call::ACCEPT4
            | call::CONNECT
            | call::CLOSE
            | call::BIND
            | call::DUP
            | call::DUP2
            | call::DUP3
    )
}

/// `"EAGAIN"` for `-11`: names of every errno (1..=4095, the range a
/// syscall returns errors in) made once; other negative values are named
/// as they come.
#[must_use]
pub fn errno_name(ret: i64) -> Option<Text> {
    static NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    if ret >= 0 {
        return None;
    }
    let names = NAMES.get_or_init(|| {
        (0..4096)
            .map(|n| &*Box::leak(errno_text(n).into_boxed_str()))
            .collect()
    });
    let errno = ret.unsigned_abs();
    Some(
        match usize::try_from(errno).ok().and_then(|n| names.get(n)) {
            Some(name) => Text::Static(name),
            None => Text::from(errno_text(errno)),
        },
    )
}

fn errno_text(errno: u64) -> String {
    let known = i32::try_from(errno)
        .ok()
        .map(nix::errno::Errno::from_raw)
        .filter(|e| *e != nix::errno::Errno::UnknownErrno);
    match known {
        Some(e) => format!("{e:?}"),
        None => format!("errno {errno}"),
    }
}

/// The text of a NUL-padded kernel string.
#[must_use]
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The common fields of every event.
#[must_use]
pub fn base(hdr: &Header, msg: &'static str, caller: &'static str, exe: Text) -> Event {
    let mut event = Event::default();
    event.set_base(hdr, msg, caller, exe);
    event
}

/// [`base`], made where it is kept: behind a fresh `Arc`, which its
/// maker fills through `Arc::make_mut` (never a clone, since nothing else
/// holds it yet). Built by value and then shared, an event's few hundred
/// bytes were copied at each step: a tenth of qtapd's samples with a
/// follower (bench/profile.sh).
#[must_use]
pub fn shared_base(hdr: &Header, msg: &'static str, caller: &'static str, exe: Text) -> Arc<Event> {
    let mut shared = Arc::<Event>::default();
    Arc::make_mut(&mut shared).set_base(hdr, msg, caller, exe);
    shared
}

impl Event {
    fn set_base(&mut self, hdr: &Header, msg: &'static str, caller: &'static str, exe: Text) {
        self.ts_ns = hdr.ts_ns;
        self.msg = msg.into();
        self.caller = caller.into();
        self.pid = hdr.pid;
        self.tid = hdr.tid;
        self.exe = exe;
        self.comm = hdr.comm;
    }
}

/// `family` as shown in `conn_info`.
#[must_use]
pub fn family_name(f: u16) -> String {
    match f {
        family::UNIX => "unix".into(),
        family::INET => "inet".into(),
        family::INET6 => "inet6".into(),
        other => format!("family {other}"),
    }
}

#[must_use]
pub fn role_name(r: u8) -> &'static str {
    match r {
        role::CLIENT => "client",
        role::SERVER => "server",
        role::LISTENER => "listener",
        _ => "unknown",
    }
}

/// `SOCK_*` as shown in `conn_info.type`, refined by family.
#[must_use]
pub fn type_name(fam: u16, sock_type: u16) -> &'static str {
    let inet = fam == family::INET || fam == family::INET6;
    match (sock_type, inet) {
        (1, true) => "tcp",
        (2, true) => "udp",
        (3, _) => "raw",
        (1, false) => "stream",
        (2, false) => "dgram",
        (5, _) => "seqpacket",
        _ => "unknown",
    }
}

/// `ip:port` for a kernel address, `None` when it holds no IP address.
#[must_use]
pub fn addr_text(addr: &Addr) -> Option<String> {
    match addr.family {
        family::INET => {
            let ip = Ipv4Addr::new(addr.addr[0], addr.addr[1], addr.addr[2], addr.addr[3]);
            Some(format!("{ip}:{}", addr.port))
        }
        family::INET6 => Some(format!("[{}]:{}", Ipv6Addr::from(addr.addr), addr.port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(errno_name(5), None);
        let writev = call_labels(call::WRITEV);
        assert_eq!(writev.name, "writev");
        assert_eq!(writev.msg, "syscall/writev");
        assert_eq!(writev.caller, "tracepoint/syscalls/sys_exit_writev");
        let write = tls_call_labels(tls_call::SSL_WRITE);
        assert_eq!(
            (write.msg, write.caller),
            ("openssl/SSL_write", "uretprobe/SSL_write")
        );
        assert_eq!(
            tls_call_labels(tls_call::SSL_FREE).caller,
            "uprobe/SSL_free"
        );
        assert!(is_data_call(call::SENDFILE));
        assert!(!is_data_call(call::ACCEPT4));
        assert_eq!(type_name(family::INET, 1), "tcp");
        assert_eq!(type_name(family::UNIX, 1), "stream");
    }

    #[test]
    fn addresses() {
        let v4 = Addr {
            family: family::INET,
            port: 8080,
            addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        assert_eq!(addr_text(&v4).as_deref(), Some("127.0.0.1:8080"));
        let mut v6 = Addr {
            family: family::INET6,
            port: 443,
            ..Addr::default()
        };
        v6.addr[15] = 1;
        assert_eq!(addr_text(&v6).as_deref(), Some("[::1]:443"));
        assert_eq!(addr_text(&Addr::default()), None);
    }

    #[test]
    fn kernel_stamps_are_one_offset_from_wall_clock() {
        let a = wall_clock(1_000);
        assert_eq!(
            wall_clock(2_000).duration_since(a).unwrap(),
            Duration::from_micros(1)
        );
        assert_eq!(unix_ns(2_000) - unix_ns(1_000), 1_000);
        let mut time = Rfc3339::new();
        assert_eq!(
            time.format(unix_ns(5_123_456_789)),
            humantime::format_rfc3339_nanos(wall_clock(5_123_456_789)).to_string()
        );
    }

    #[test]
    fn errno_names_are_made_once() {
        assert_eq!(
            errno_name(-11).map(|t| t.as_str().to_owned()).as_deref(),
            Some("EAGAIN")
        );
        assert!(matches!(errno_name(-11), Some(Text::Static(_))));
        assert_eq!(errno_name(-4000).unwrap().as_str(), "errno 4000");
        assert_eq!(errno_name(-5000).unwrap().as_str(), "errno 5000");
        assert!(errno_name(i64::MIN).is_some());
        assert!(errno_name(0).is_none());
    }
}
