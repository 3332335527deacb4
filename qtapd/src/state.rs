//! Everything qtapd keeps about a traced process and each of its fds, in
//! one place: one [`ProcState`] per pid, holding one [`FdState`] per fd.
//! A close, a new socket or accepted connection on a reused number, a dup
//! onto a number, an exec and an exit each replace or drop one entry, so
//! nothing about an old fd can outlive it: there is no second cache to
//! forget.

use std::sync::Arc;

use foldhash::HashMap;

use qtap_common::Conn;
use qtap_proto::v1::ConnInfo;

use crate::{
    cgroup::Cgroup,
    streams::{Adjacent, Binding, Stream},
};

/// What is known of one fd.
#[derive(Clone, Debug, Default)]
pub struct FdState {
    /// Its byte stream: TLS, protocols (`streams`); `None` until a data
    /// call or TLS binding says something.
    pub stream: Option<Stream>,
    /// Its connection as `/proc` showed it (`Some(None)`: not a socket).
    pub resolved: Option<Option<Arc<ConnInfo>>>,
    /// The local address found in user space for a connection the kernel
    /// knows without one (`Some(None)`: looked for, not found).
    pub local: Option<Option<String>>,
    /// `conn_info` made from the kernel's `Conn`, reused while the kernel
    /// reports the same `Conn` (formatting addresses per event was a large
    /// part of qtapd's cost).
    pub kernel_conn: Option<(Conn, Arc<ConnInfo>)>,
    /// The kernel has a `CONNS` entry for it, to purge at exit.
    pub in_kernel: bool,
}

/// What is known of one process.
#[derive(Clone, Debug, Default)]
pub struct ProcState {
    /// Its executable, from its exec or `/proc`.
    pub exe: Option<Arc<str>>,
    /// Its cgroup, read from `/proc` once (`Some(None)`: it has none, or
    /// was gone).
    pub cgroup: Option<Option<Arc<Cgroup>>>,
    pub(crate) fds: HashMap<i32, FdState>,
    /// `SSL*` objects and the fds they are bound to (`streams`).
    pub(crate) bindings: HashMap<u64, Binding>,
    /// A TLS library call returned on an `SSL*` that nothing bound: the
    /// program hands its TLS library memory, not sockets (Node.js), and
    /// its threads' last calls are kept in `adjacent` (`streams`).
    pub(crate) memory_bio: bool,
    pub(crate) adjacent: HashMap<u32, Adjacent>,
}

impl ProcState {
    /// The state of `fd`, if any.
    #[must_use]
    pub fn fd(&self, fd: i32) -> Option<&FdState> {
        self.fds.get(&fd)
    }

    /// The state of `fd`, made empty if there is none.
    pub fn fd_mut(&mut self, fd: i32) -> &mut FdState {
        self.fds.entry(fd).or_default()
    }

    /// `fd` is closed: forget it, and every `SSL*` bound to it.
    pub fn close(&mut self, fd: i32) {
        self.fds.remove(&fd);
        self.bindings.retain(|_, b| !b.uses(fd));
    }

    /// A new object took the number `fd` (a socket, an accepted
    /// connection, a dup's target): it starts with nothing of the old one.
    pub fn renew(&mut self, fd: i32) -> &mut FdState {
        self.close(fd);
        self.fd_mut(fd)
    }

    /// The fds whose kernel `CONNS` entries are this process's.
    #[must_use]
    pub fn kernel_fds(&self) -> Vec<u32> {
        let mut fds: Vec<u32> = self
            .fds
            .iter()
            .filter(|(_, s)| s.in_kernel)
            .map(|(&fd, _)| fd as u32)
            .collect();
        fds.sort_unstable();
        fds
    }

    /// The state after an exec into `exe`: the new image knows nothing of
    /// the old one's streams, but the fds it kept are still the kernel's
    /// to purge at its exit.
    #[must_use]
    pub fn after_exec(&self, exe: Arc<str>) -> ProcState {
        let fds = self
            .fds
            .iter()
            .filter(|(_, s)| s.in_kernel)
            .map(|(&fd, _)| {
                (
                    fd,
                    FdState {
                        in_kernel: true,
                        ..FdState::default()
                    },
                )
            })
            .collect();
        ProcState {
            exe: Some(exe),
            // An exec does not move the process.
            cgroup: self.cgroup.clone(),
            fds,
            ..ProcState::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::Side;

    #[test]
    fn close_forgets_the_fd_and_its_bindings() {
        let mut p = ProcState::default();
        p.bind(7, 4, Side::Both);
        p.fd_mut(4).in_kernel = true;
        p.fd_mut(4).local = Some(Some("127.0.0.1:1".into()));
        p.close(4);
        assert!(p.fd(4).is_none());
        assert!(p.tls_call(7, true, b"").is_none(), "binding dropped");
        assert!(p.kernel_fds().is_empty());
    }

    #[test]
    fn a_renewed_number_carries_nothing_over() {
        let mut p = ProcState::default();
        p.fd_mut(5).resolved = Some(None);
        p.fd_mut(5).local = Some(Some("127.0.0.1:1".into()));
        let fresh = p.renew(5);
        assert!(fresh.resolved.is_none() && fresh.local.is_none() && fresh.stream.is_none());
    }

    #[test]
    fn exec_keeps_only_what_the_kernel_must_purge() {
        let mut p = ProcState::default();
        p.bind(9, 3, Side::Both);
        p.fd_mut(3).in_kernel = true;
        p.fd_mut(8).resolved = Some(None);
        let after = p.after_exec("/bin/new".into());
        assert_eq!(after.kernel_fds(), vec![3]);
        assert!(after.fd(3).unwrap().stream.is_none());
        assert!(after.fd(8).is_none());
        assert!(after.bindings.is_empty());
        assert_eq!(after.exe.as_deref(), Some("/bin/new"));
    }
}
