//! What `/proc` tells about processes and fds that the kernel side did not
//! see: the exe of a process selected after it started, and the addresses
//! of a socket opened before tracing began. Read once and cached by the
//! caller, never per event.

use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use crate::events::ConnInfo;

/// Every numeric entry of `/proc`.
#[must_use]
pub fn pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `/proc/<pid>/exe`, resolved.
#[must_use]
pub fn exe(pid: u32) -> Option<String> {
    let link = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    Some(link.to_string_lossy().into_owned())
}

/// `/proc/<pid>/comm` without the newline.
#[must_use]
pub fn comm(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(text.trim_end_matches('\n').to_owned())
}

/// The real uid of `pid` (first field of `Uid:` in `/proc/<pid>/status`).
#[must_use]
pub fn uid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The files `pid` has mapped (libraries and its executable), each once,
/// as paths reachable from qtapd (through `/proc/<pid>/root`, so a process
/// in another mount namespace is covered).
#[must_use]
pub fn mapped_files(pid: u32) -> Vec<PathBuf> {
    let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = maps
        .lines()
        // address perms offset dev inode path
        .filter_map(|line| line.splitn(6, ' ').nth(5))
        .map(str::trim)
        .filter(|path| path.starts_with('/') && !path.ends_with(" (deleted)"))
        .map(|path| PathBuf::from(format!("/proc/{pid}/root{path}")))
        .collect();
    files.sort();
    files.dedup();
    files
}

/// What an fd refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdTarget {
    /// A network or unix socket, with what `/proc/<pid>/net` says of it.
    Socket(ConnInfo),
    /// A socket whose inode is in none of the tables read.
    UnknownSocket,
    /// A file, pipe, eventfd, …
    Other,
    /// The process or the fd is gone.
    Gone,
}

/// Resolves `/proc/<pid>/fd/<fd>`.
#[must_use]
pub fn fd_target(pid: u32, fd: i32) -> FdTarget {
    let Ok(link) = fs::read_link(format!("/proc/{pid}/fd/{fd}")) else {
        return FdTarget::Gone;
    };
    let link = link.to_string_lossy();
    let Some(inode) = link
        .strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
    else {
        return FdTarget::Other;
    };
    let net = format!("/proc/{pid}/net");
    for (table, sock_type, v6) in [
        ("tcp", "tcp", false),
        ("tcp6", "tcp", true),
        ("udp", "udp", false),
        ("udp6", "udp", true),
    ] {
        if let Some(info) = find_inet(&Path::new(&net).join(table), inode, sock_type, v6) {
            return FdTarget::Socket(info);
        }
    }
    if let Some(info) = find_unix(&Path::new(&net).join("unix"), inode) {
        return FdTarget::Socket(info);
    }
    FdTarget::UnknownSocket
}

/// `0100007F:1F90` → `127.0.0.1:8080`; `[..]:port` for IPv6.
fn inet_addr(field: &str, v6: bool) -> Option<(String, u16)> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let text = if v6 {
        let mut bytes = [0u8; 16];
        for (i, chunk) in bytes.chunks_mut(4).enumerate() {
            let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        format!("[{}]:{port}", Ipv6Addr::from(bytes))
    } else {
        let word = u32::from_str_radix(ip, 16).ok()?;
        format!("{}:{port}", Ipv4Addr::from(word.to_ne_bytes()))
    };
    Some((text, port))
}

/// Finds `inode` in a `/proc/net/{tcp,udp}[6]` table.
fn find_inet(path: &Path, inode: &str, sock_type: &'static str, v6: bool) -> Option<ConnInfo> {
    let text = fs::read_to_string(path).ok()?;
    parse_inet(&text, inode, sock_type, v6)
}

fn parse_inet(text: &str, inode: &str, sock_type: &'static str, v6: bool) -> Option<ConnInfo> {
    const TCP_LISTEN: &str = "0A";
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| f.len() > 9)
        .collect();
    let row = rows.iter().find(|f| f[9] == inode)?;
    let (local, local_port) = inet_addr(row[1], v6)?;
    let (remote, _) = inet_addr(row[2], v6)?;
    let role = if sock_type == "tcp" && row[3] == TCP_LISTEN {
        "listener"
    } else if sock_type == "tcp"
        && rows.iter().any(|f| {
            f[3] == TCP_LISTEN && inet_addr(f[1], v6).is_some_and(|(_, p)| p == local_port)
        })
    {
        "server"
    } else if sock_type == "tcp" {
        "client"
    } else {
        "unknown"
    };
    let connected = !remote.starts_with("0.0.0.0:0") && !remote.starts_with("[::]:0");
    Some(ConnInfo {
        family: if v6 { "inet6" } else { "inet" }.into(),
        r#type: sock_type.into(),
        role: role.into(),
        local: Some(local),
        remote: connected.then_some(remote),
        ..ConnInfo::default()
    })
}

/// Finds `inode` in `/proc/net/unix`.
fn find_unix(path: &Path, inode: &str) -> Option<ConnInfo> {
    let text = fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(6) == Some(&inode))?;
    let sock_type = match fields.get(4).copied() {
        Some("0001") => "stream",
        Some("0002") => "dgram",
        Some("0005") => "seqpacket",
        _ => "unknown",
    };
    Some(ConnInfo {
        family: "unix".into(),
        r#type: sock_type.into(),
        role: "unknown".into(),
        local: fields.get(7).map(|p| (*p).to_owned()),
        remote: None,
        ..ConnInfo::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D0A2 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D0A2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn parses_proc_net_tcp_with_roles() {
        let l = parse_inet(TCP, "111", "tcp", false).unwrap();
        assert_eq!(
            (l.role.as_str(), l.local.as_deref(), l.remote.as_deref()),
            ("listener", Some("127.0.0.1:8080"), None)
        );
        let s = parse_inet(TCP, "222", "tcp", false).unwrap();
        assert_eq!(
            (s.role.as_str(), s.remote.as_deref()),
            ("server", Some("127.0.0.1:53410"))
        );
        let c = parse_inet(TCP, "333", "tcp", false).unwrap();
        assert_eq!(
            (c.role.as_str(), c.local.as_deref()),
            ("client", Some("127.0.0.1:53410"))
        );
        assert_eq!(parse_inet(TCP, "999", "tcp", false), None);
    }

    #[test]
    fn parses_ipv6() {
        let (text, port) = inet_addr("00000000000000000000000001000000:01BB", true).unwrap();
        assert_eq!((text.as_str(), port), ("[::1]:443", 443));
    }

    #[test]
    fn resolves_own_fds() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id();
        match fd_target(me, listener.as_raw_fd()) {
            FdTarget::Socket(info) => {
                assert_eq!(info.local, Some(format!("127.0.0.1:{port}")));
                assert_eq!(info.role, "listener");
            }
            other => panic!("{other:?}"),
        }
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(fd_target(me, file.as_raw_fd()), FdTarget::Other);
        assert_eq!(fd_target(me, 99_999), FdTarget::Gone);
        // SAFETY: no preconditions.
        assert_eq!(uid(me), Some(unsafe { libc::getuid() }));
    }
}
