//! What a traced process's unix socket says of itself: its own name, its
//! peer's name and the peer's credentials as the kernel recorded them at
//! connect time (what `SO_PEERCRED` gives the process). qtapd asks the
//! socket itself: it takes a duplicate of the process's fd with
//! `pidfd_getfd(2)` (root may; Linux ≥ 5.6), asks `getsockname`,
//! `getpeername` and `SO_PEERCRED`, and closes it. Nothing the traced
//! process sees changes.
//!
//! Names are shown as `ss -x` shows them: a path, `@name` for an abstract
//! one (its NUL bytes as `@`), none for an unnamed socket. A connected
//! socket where neither end has a name is one of a `socketpair(2)` (a
//! socket made by `connect` has a named peer, or is itself the accepted
//! end of a named listener).
//!
//! The fd is looked at when its record is read, not when the call ran: a
//! process that closed it meanwhile gives nothing (the kernel's answer
//! stands), and one that put another socket on the number would give
//! that one's, which is why a socket of another family or type than the
//! kernel saw is not taken.

use std::{
    mem::{size_of, MaybeUninit},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::events::ConnInfo;

/// Marks a name the kernel's record had only the start of.
pub const CUT: &str = "…";

/// What the socket told.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UnixSocket {
    pub local: Option<String>,
    pub remote: Option<String>,
    pub peer_pid: Option<u32>,
    pub peer_uid: Option<u32>,
    /// Connected, with no name at either end.
    pub socketpair: bool,
}

/// Fills `info` (a unix socket's) with what fd `fd` of process `pid` says
/// of itself; leaves it as it is when the fd is gone or is no longer a
/// unix socket of `info`'s type.
pub fn complete(pid: u32, fd: i32, info: &mut ConnInfo) {
    let Some(sock) = inspect(pid, fd, sock_type(&info.r#type)) else {
        return;
    };
    // The kernel's view (the record's, possibly cut) unless the socket's
    // own is whole.
    let missing = |name: &Option<String>| name.as_deref().is_none_or(|n| n.ends_with(CUT));
    if missing(&info.local) && sock.local.is_some() {
        info.local = sock.local;
    }
    if missing(&info.remote) && sock.remote.is_some() {
        info.remote = sock.remote;
    }
    info.peer_pid = sock.peer_pid;
    info.peer_uid = sock.peer_uid;
    if sock.socketpair {
        "socketpair".clone_into(&mut info.role);
    }
}

fn sock_type(name: &str) -> Option<i32> {
    match name {
        "stream" => Some(libc::SOCK_STREAM),
        "dgram" => Some(libc::SOCK_DGRAM),
        "seqpacket" => Some(libc::SOCK_SEQPACKET),
        _ => None,
    }
}

/// Asks fd `fd` of process `pid`; `None` when it cannot be duplicated or
/// is not a unix socket (of type `expect_type`, when given).
#[must_use]
pub fn inspect(pid: u32, fd: i32, expect_type: Option<i32>) -> Option<UnixSocket> {
    let sock = duplicate(pid, fd)?;
    if int_option(&sock, libc::SO_DOMAIN)? != libc::AF_UNIX {
        return None;
    }
    if let Some(expected) = expect_type {
        if int_option(&sock, libc::SO_TYPE)? != expected {
            return None;
        }
    }
    let local = name(&sock, libc::getsockname).ok().flatten();
    let peer = name(&sock, libc::getpeername);
    let connected = peer.is_ok();
    let remote = peer.ok().flatten();
    let cred = connected.then(|| peer_cred(&sock)).flatten();
    Some(UnixSocket {
        socketpair: connected && local.is_none() && remote.is_none(),
        local,
        remote,
        peer_pid: cred.map(|c| c.pid as u32).filter(|&p| p != 0),
        peer_uid: cred.map(|c| c.uid),
    })
}

/// A duplicate of the process's fd, ours to close.
fn duplicate(pid: u32, fd: i32) -> Option<OwnedFd> {
    // SAFETY: plain syscalls; each returned fd is ours and wrapped at once.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let pidfd = unsafe { OwnedFd::from_raw_fd(i32::try_from(pidfd).ok().filter(|&f| f >= 0)?) };
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    let dup = i32::try_from(dup).ok().filter(|&f| f >= 0)?;
    Some(unsafe { OwnedFd::from_raw_fd(dup) })
}

fn int_option(sock: &OwnedFd, option: i32) -> Option<i32> {
    let mut value: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: `value` and `len` outlive the call and match its sizes.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &raw mut len,
        )
    };
    (r == 0).then_some(value)
}

fn peer_cred(sock: &OwnedFd) -> Option<libc::ucred> {
    let mut cred = MaybeUninit::<libc::ucred>::zeroed();
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: as in `int_option`, for a `ucred`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            cred.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    // SAFETY: zeroed, then filled by the kernel.
    (r == 0).then(|| unsafe { cred.assume_init() })
}

type NameCall =
    unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int;

/// `getsockname`/`getpeername`: an error when the call fails (for
/// `getpeername`: not connected), `None` for an unnamed socket.
fn name(sock: &OwnedFd, call: NameCall) -> std::io::Result<Option<String>> {
    let mut addr = MaybeUninit::<libc::sockaddr_un>::zeroed();
    let mut len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a zeroed sockaddr_un of `len` bytes.
    if unsafe { call(sock.as_raw_fd(), addr.as_mut_ptr().cast(), &raw mut len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: zeroed, then filled by the kernel.
    let addr = unsafe { addr.assume_init() };
    let path_len = (len as usize)
        .saturating_sub(size_of::<libc::sa_family_t>())
        .min(addr.sun_path.len());
    let path: Vec<u8> = addr.sun_path[..path_len].iter().map(|&c| c as u8).collect();
    Ok(path_text(&path))
}

/// A `sun_path` of the length the kernel gave: `None` when unnamed,
/// `@…` for an abstract name (NULs as `@`, as `ss` shows them), else the
/// path up to its NUL.
#[must_use]
pub fn path_text(path: &[u8]) -> Option<String> {
    match path.first() {
        None => None,
        Some(0) => Some(
            std::iter::once('@')
                .chain(String::from_utf8_lossy(&path[1..]).chars().map(|c| {
                    if c == '\0' {
                        '@'
                    } else {
                        c
                    }
                }))
                .collect(),
        ),
        Some(_) => {
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            Some(String::from_utf8_lossy(&path[..end]).into_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::{UnixListener, UnixStream};

    use super::*;

    #[test]
    fn names_are_shown_as_ss_shows_them() {
        assert_eq!(path_text(b""), None);
        assert_eq!(
            path_text(b"/run/nscd/socket\0"),
            Some("/run/nscd/socket".into())
        );
        assert_eq!(path_text(b"\0qtap\0x"), Some("@qtap@x".into()));
    }

    /// Our own sockets, looked at through `pidfd_getfd` of our own pid.
    #[test]
    fn a_connected_socket_tells_its_peer_and_its_credentials() {
        let dir = std::env::temp_dir().join(format!("qtap-unix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        let me = std::process::id();
        let Some(c) = inspect(me, client.as_raw_fd(), Some(libc::SOCK_STREAM)) else {
            // pidfd_getfd needs Linux 5.6 and ptrace rights over oneself.
            panic!(
                "pidfd_getfd of our own fd failed: {}",
                std::io::Error::last_os_error()
            );
        };
        let path_text = path.to_str().unwrap().to_owned();
        assert_eq!(c.remote.as_deref(), Some(path_text.as_str()));
        assert_eq!(c.local, None);
        assert_eq!(
            (c.peer_pid, c.peer_uid),
            (Some(me), Some(unsafe { libc::getuid() }))
        );
        assert!(!c.socketpair);
        let s = inspect(me, server.as_raw_fd(), None).unwrap();
        assert_eq!(
            (s.local.as_deref(), s.remote.as_deref()),
            (Some(path_text.as_str()), None)
        );
        assert!(!s.socketpair);
        // A datagram type expected of a stream socket: not taken.
        assert_eq!(
            inspect(me, client.as_raw_fd(), Some(libc::SOCK_DGRAM)),
            None
        );

        let (a, _b) = UnixStream::pair().unwrap();
        let pair = inspect(me, a.as_raw_fd(), None).unwrap();
        assert!(pair.socketpair && pair.peer_pid == Some(me), "{pair:?}");

        let abstract_name = format!("\0qtap-test-{me}");
        let addr = <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(&abstract_name[1..]).unwrap();
        let abs = UnixListener::bind_addr(&addr).unwrap();
        let to_abs = UnixStream::connect_addr(&addr).unwrap();
        let seen = inspect(me, to_abs.as_raw_fd(), None).unwrap();
        assert_eq!(seen.remote, Some(format!("@qtap-test-{me}")));
        drop(abs);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
