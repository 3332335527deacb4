//! What qtapd knows of each fd's byte stream beyond its addresses: whether
//! TLS runs on it, what its first bytes showed, and which `SSL*` objects
//! are bound to it. Kept per fd in the process's state (`state`), never
//! per process or thread: TLS on one fd says nothing of another. Gone with
//! the fd's state when it is closed or a new object takes its number.
//!
//! An `SSL*` is bound to an fd by `SSL_set_fd` (and `_rfd`/`_wfd`), which
//! is authoritative. Failing that, a syscall on a socket made inside an
//! `SSL_*` call of the same thread binds that `SSL*` to the socket (the
//! kernel clears the "inside" state on every `SSL_*` return); such a
//! binding never re-points an existing one, so a syscall on another fd
//! during an `SSL_*` call cannot mark that fd as TLS.
//!
//! A program that hands OpenSSL memory buffers instead of its socket
//! (Node.js) makes no syscall inside its `SSL_*` calls. Once an `SSL_*`
//! call of a process returns on an `SSL*` that nothing bound, each of its
//! threads' last call is kept ([`Adjacent`]): an `SSL*` whose call
//! returned just before the thread wrote to a socket (the ciphertext the
//! call made: a handshake flight, a record) is bound to that socket, and
//! an `SSL_read` just after the thread read from a socket (the ciphertext
//! it decrypts) to that one. Those bindings too never re-point.

use std::sync::Arc;

use qtap_proto::v1::ConnInfo;

use crate::{
    events::{local_port, remote_port},
    protocol::{self, Detected},
    state::ProcState,
};

/// The state of one fd's stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "four independent facts about one fd"
)]
pub struct Stream {
    /// TLS is in use on this fd.
    pub ssl: bool,
    /// An `SSL*` is bound to this fd: its plaintext is seen via openssl.
    pub bound: bool,
    /// The protocol of the first bytes (`tls`, `http1`, …).
    pub protocol: Option<&'static str>,
    pub tls_version: Option<&'static str>,
    /// Inside TLS: the protocol of the first plaintext.
    pub app_protocol: Option<&'static str>,
    /// The connection last seen on this fd (TLS calls carry none).
    pub conn: Option<Arc<ConnInfo>>,
    classified: bool,
    app_classified: bool,
}

impl Stream {
    /// The protocol to report: TLS whenever TLS is seen on the fd.
    #[must_use]
    pub fn protocol_name(&self) -> &'static str {
        if self.ssl {
            "tls"
        } else {
            self.protocol.unwrap_or("unknown")
        }
    }
}

/// The fds an `SSL*` reads from and writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    rfd: i32,
    wfd: i32,
}

impl Binding {
    pub(crate) fn uses(self, fd: i32) -> bool {
        self.rfd == fd || self.wfd == fd
    }
}

/// The last call of a thread of a memory-BIO process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adjacent {
    /// It read bytes from this socket fd.
    Read(i32),
    /// A TLS library call on this `SSL*`, which nothing binds, returned.
    Tls(u64),
}

/// How an `SSL_set_*fd` call binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Both,
    Read,
    Write,
}

/// What a data syscall brought about on its fd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// A protocol was detected by this call (first bytes or first plaintext).
    pub detected: bool,
}

/// The stream side of a process's state (`state::ProcState`): each fd's
/// stream and the `SSL*` bindings.
impl ProcState {
    /// The fds on which TLS is seen, by fd, with the connection last
    /// known on each.
    #[must_use]
    pub fn tls_fds(&self) -> Vec<(i32, &Stream, Option<&Arc<ConnInfo>>)> {
        let mut fds: Vec<_> = self
            .fds
            .iter()
            .filter_map(|(fd, state)| {
                let stream = state.stream.as_ref().filter(|s| s.ssl)?;
                let conn = stream
                    .conn
                    .as_ref()
                    .or(state.kernel_conn.as_ref().map(|(_, info)| info))
                    .or(state.resolved.as_ref().and_then(Option::as_ref));
                Some((*fd, stream, conn))
            })
            .collect();
        fds.sort_unstable_by_key(|(fd, _, _)| *fd);
        fds
    }

    /// The stream of `fd`, if anything is known of it.
    #[must_use]
    pub fn stream(&self, fd: i32) -> Option<&Stream> {
        self.fd(fd).and_then(|s| s.stream.as_ref())
    }

    fn stream_mut(&mut self, fd: i32) -> &mut Stream {
        self.fd_mut(fd).stream.get_or_insert_with(Stream::default)
    }

    /// A data syscall on `fd`. `conn`: its connection (`None`: not a
    /// socket); `tls`: the `SSL*` whose call it ran inside; `head`: the
    /// first bytes it moved.
    pub fn data_syscall(
        &mut self,
        fd: i32,
        conn: Option<&Arc<ConnInfo>>,
        tls: Option<u64>,
        head: &[u8],
    ) -> (&Stream, Seen) {
        if let (Some(ssl), Some(_)) = (tls, conn) {
            let binding = *self
                .bindings
                .entry(ssl)
                .or_insert(Binding { rfd: fd, wfd: fd });
            if binding.uses(fd) {
                let stream = self.stream_mut(fd);
                stream.ssl = true;
                stream.bound = true;
            }
        }
        let stream = self.stream_mut(fd);
        if stream.bound && stream.conn.is_none() {
            stream.conn = conn.cloned();
        }
        let mut seen = Seen::default();
        if !stream.classified && !head.is_empty() {
            stream.classified = true;
            let ports = [
                conn.and_then(|c| local_port(c)),
                conn.and_then(|c| remote_port(c)),
            ];
            let datagram = conn.is_some_and(|c| c.r#type == "udp" || c.r#type == "dgram");
            if let Some(Detected {
                protocol,
                tls_version,
            }) = protocol::detect(head, ports, datagram)
            {
                stream.protocol = Some(protocol);
                stream.tls_version = tls_version;
                stream.ssl |= protocol == "tls";
                seen.detected = true;
            }
        }
        (stream, seen)
    }

    /// A data syscall of thread `tid` in a memory-BIO process
    /// (`ciphertext`: on a socket, and its bytes begin with a TLS record
    /// header): the `SSL*` whose call the thread returned from just
    /// before, when this call writes ciphertext (what that call made); a
    /// read of ciphertext is kept for the thread's next TLS call.
    pub fn adjacent_syscall(
        &mut self,
        tid: u32,
        fd: i32,
        ingress: bool,
        ciphertext: bool,
    ) -> Option<u64> {
        let last = self.adjacent.remove(&tid);
        if !ciphertext {
            return None;
        }
        if ingress {
            self.adjacent.insert(tid, Adjacent::Read(fd));
            return None;
        }
        match last {
            Some(Adjacent::Tls(ssl)) => Some(ssl),
            _ => None,
        }
    }

    /// Thread `tid`'s call on an `SSL*` returned: when nothing binds
    /// `ssl`, the process is memory-BIO; an `SSL_read` (`ingress`) binds
    /// `ssl` to the socket the thread read just before; either is kept
    /// for the thread's next syscall.
    pub fn tls_call_returned(&mut self, tid: u32, ssl: u64, ingress: bool) {
        if self.bindings.contains_key(&ssl) {
            // The common case (a bound `SSL*`): no thread state unless the
            // process is memory-BIO.
            if self.memory_bio {
                self.adjacent.remove(&tid);
            }
            return;
        }
        self.memory_bio = true;
        let last = self.adjacent.remove(&tid);
        if let (true, Some(Adjacent::Read(fd))) = (ingress, last) {
            self.bind(ssl, fd, Side::Both);
            return;
        }
        self.adjacent.insert(tid, Adjacent::Tls(ssl));
    }

    /// `SSL_set_fd` and friends: `ssl` is bound to `fd`, which carries TLS.
    pub fn bind(&mut self, ssl: u64, fd: i32, side: Side) {
        let binding = self
            .bindings
            .entry(ssl)
            .or_insert(Binding { rfd: fd, wfd: fd });
        match side {
            Side::Both => *binding = Binding { rfd: fd, wfd: fd },
            Side::Read => binding.rfd = fd,
            Side::Write => binding.wfd = fd,
        }
        let stream = self.stream_mut(fd);
        stream.ssl = true;
        stream.bound = true;
    }

    /// `SSL_free`: the object and its binding are gone.
    pub fn free(&mut self, ssl: u64) {
        self.bindings.remove(&ssl);
    }

    /// An `SSL_read`/`SSL_write` on `ssl`: the fd it is bound to (for the
    /// given direction) and that fd's stream, with the plaintext's first
    /// bytes classified once per fd.
    pub fn tls_call(
        &mut self,
        ssl: u64,
        ingress: bool,
        plaintext: &[u8],
    ) -> Option<(i32, &Stream, Seen)> {
        let binding = self.bindings.get(&ssl)?;
        let fd = if ingress { binding.rfd } else { binding.wfd };
        let stream = self.stream_mut(fd);
        stream.ssl = true;
        stream.bound = true;
        let mut seen = Seen::default();
        if !stream.app_classified && !plaintext.is_empty() {
            stream.app_classified = true;
            let ports = [None, None];
            if let Some(d) = protocol::detect(plaintext, ports, false) {
                stream.app_protocol = Some(d.protocol);
                seen.detected = true;
            }
        }
        Some((fd, stream, seen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSL: u64 = 0x5555_0000;

    fn socket() -> Arc<ConnInfo> {
        Arc::new(ConnInfo {
            family: "inet".into(),
            r#type: "tcp".into(),
            role: "client".into(),
            local: None,
            remote: Some("127.0.0.1:443".into()),
            ..ConnInfo::default()
        })
    }

    /// The reverse-proxy case: fd 11 speaks TLS through an SSL* bound by
    /// `SSL_set_fd`, fd 3 is plain HTTP on the same thread. A plain write on
    /// fd 3 made while the thread is inside an SSL call on fd 11's SSL*
    /// (the worst interleaving) must not mark fd 3.
    #[test]
    fn tls_on_one_fd_never_marks_another() {
        let mut s = ProcState::default();
        let conn = socket();
        s.bind(SSL, 11, Side::Both);
        s.data_syscall(11, Some(&conn), Some(SSL), &[0x17, 3, 3, 0, 9]);
        let (plain, _) = s.data_syscall(3, Some(&conn), Some(SSL), b"HTTP/1.1 200 OK");
        assert!(!plain.ssl);
        assert_eq!(plain.protocol_name(), "http1");
        assert!(s.stream(11).unwrap().ssl);
        let (fd, stream, seen) = s.tls_call(SSL, false, b"GET / HTTP/1.1").unwrap();
        assert_eq!(fd, 11);
        assert_eq!(stream.app_protocol, Some("http1"));
        assert!(seen.detected);
    }

    /// curl's case: no `SSL_set_fd` (its own BIO); the nested send on the
    /// socket binds the SSL*, later calls find the fd, and a syscall on a
    /// different fd inside a later call of the same SSL* is not marked.
    #[test]
    fn nested_syscall_binds_only_once() {
        let mut s = ProcState::default();
        let conn = socket();
        let (first, _) = s.data_syscall(5, Some(&conn), Some(SSL), &[0x17, 3, 3]);
        assert!(first.ssl && first.bound);
        assert_eq!(s.tls_call(SSL, true, b"").map(|t| t.0), Some(5));
        let (other, _) = s.data_syscall(6, Some(&conn), Some(SSL), b"x");
        assert!(!other.ssl);
        // A file is never bound, even inside an SSL call.
        let (file, _) = s.data_syscall(7, None, Some(0x77), b"log line");
        assert!(!file.ssl);
        assert_eq!(s.tls_call(0x77, true, b""), None);
    }

    #[test]
    fn close_and_reuse_reset_the_fd() {
        let mut s = ProcState::default();
        let conn = socket();
        s.bind(SSL, 4, Side::Both);
        s.close(4);
        assert_eq!(s.stream(4), None);
        assert_eq!(s.tls_call(SSL, true, b""), None, "binding dropped");
        let (reused, _) = s.data_syscall(4, Some(&conn), None, b"GET / HTTP/1.1");
        assert!(!reused.ssl);
        assert_eq!(reused.protocol_name(), "http1");
    }

    #[test]
    fn detection_happens_once_per_fd() {
        let mut s = ProcState::default();
        let conn = socket();
        let (_, seen) = s.data_syscall(3, Some(&conn), None, &[0x16, 3, 1, 1]);
        assert!(seen.detected);
        let (stream, seen) = s.data_syscall(3, Some(&conn), None, b"GET /");
        assert!(!seen.detected);
        assert_eq!(stream.protocol_name(), "tls");
        assert_eq!(stream.tls_version, Some("TLS1.0"));
    }

    #[test]
    fn read_and_write_sides_bind_separately() {
        let mut s = ProcState::default();
        s.bind(SSL, 8, Side::Read);
        s.bind(SSL, 9, Side::Write);
        assert_eq!(s.tls_call(SSL, true, b"").map(|t| t.0), Some(8));
        assert_eq!(s.tls_call(SSL, false, b"").map(|t| t.0), Some(9));
        s.free(SSL);
        assert_eq!(s.tls_call(SSL, true, b""), None);
    }
}
