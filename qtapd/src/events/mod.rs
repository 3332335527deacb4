//! The event as users see it (DESIGN.md §3, the `qtap.v1.Event` message):
//! helpers that build it from a decoded kernel record. Enrichment adds the
//! exe and the connection; `qtap_proto::json` gives its JSON form.

pub mod decode;
pub mod derived;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use qtap_common::{call, direction, family, role, tls_call, Addr, Header};

pub use qtap_proto::v1::{ConnInfo, Event};

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

/// Converts kernel monotonic timestamps to wall-clock time.
#[derive(Clone, Debug)]
pub struct Clock {
    boot: SystemTime,
    /// The last second formatted, `2026-11-27T06:42:40.`: events come in
    /// time order, so most reuse it.
    second: std::cell::RefCell<(u64, String)>,
}

impl Clock {
    /// Reads `CLOCK_REALTIME - CLOCK_MONOTONIC` once.
    #[must_use]
    pub fn new() -> Clock {
        let mut mono = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `mono` is a valid, writable timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut mono) };
        let since_boot = Duration::new(mono.tv_sec as u64, mono.tv_nsec as u32);
        Clock {
            boot: SystemTime::now() - since_boot,
            second: std::cell::RefCell::new((u64::MAX, String::new())),
        }
    }

    #[must_use]
    pub fn at(&self, ts_ns: u64) -> SystemTime {
        self.boot + Duration::from_nanos(ts_ns)
    }

    /// RFC 3339 with nanoseconds, UTC.
    #[must_use]
    pub fn rfc3339(&self, ts_ns: u64) -> String {
        use std::fmt::Write;
        let since_epoch = self
            .at(ts_ns)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, nanos) = (since_epoch.as_secs(), since_epoch.subsec_nanos());
        let mut second = self.second.borrow_mut();
        if second.0 != secs {
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            second.1 = format!("{}.", text.trim_end_matches('Z'));
            second.0 = secs;
        }
        let mut out = String::with_capacity(second.1.len() + 10);
        out.push_str(&second.1);
        let _ = write!(out, "{nanos:09}Z");
        out
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
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
/// reported by `uretprobe/SSL_write` (calls that bind or free an `SSL*` are
/// reported at entry, by `uprobe/…`).
#[must_use]
pub fn tls_call_labels(c: u16) -> CallLabels {
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

/// `"EAGAIN"` for `-11`.
#[must_use]
pub fn errno_name(ret: i64) -> Option<String> {
    (ret < 0).then(|| {
        let errno = nix::errno::Errno::from_raw((-ret) as i32);
        if errno == nix::errno::Errno::UnknownErrno {
            format!("errno {}", -ret)
        } else {
            format!("{errno:?}")
        }
    })
}

/// The text of a NUL-padded kernel string.
#[must_use]
pub fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The common fields of every event.
#[must_use]
pub fn base(clock: &Clock, hdr: &Header, msg: String, caller: String, exe: String) -> Event {
    Event {
        ts: clock.rfc3339(hdr.ts_ns),
        msg,
        caller,
        pid: hdr.pid,
        tid: hdr.tid,
        exe,
        comm: c_str(&hdr.comm),
        ..Event::default()
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

/// `"ingress"`/`"egress"` for the console view.
#[must_use]
pub fn direction_name(d: u32) -> &'static str {
    if d == u32::from(direction::INGRESS) {
        "ingress"
    } else {
        "egress"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(errno_name(-11).as_deref(), Some("EAGAIN"));
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
    fn clock_is_monotonic_offset() {
        let clock = Clock::new();
        let a = clock.at(1_000);
        assert_eq!(
            clock.at(2_000).duration_since(a).unwrap(),
            Duration::from_micros(1)
        );
        assert!(clock.rfc3339(0).ends_with('Z'));
        // The cached second and humantime agree, across a second boundary.
        for ts in [999_999_999, 1_000_000_000, 1_000_000_001, 5_123_456_789] {
            assert_eq!(
                clock.rfc3339(ts),
                humantime::format_rfc3339_nanos(clock.at(ts)).to_string()
            );
        }
    }
}
