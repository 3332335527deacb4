//! Who may see a process, checked in user space: the second half of the
//! rule the kernel applies at exec and at credential changes
//! (`qtapd-ebpf/src/probes/creds.rs`). A session of a caller other than
//! root receives records of a process only while the caller could
//! `ptrace` it: uid, euid, suid and fsuid all the caller's; gid, egid,
//! sgid and fsgid equal; no permitted capability; no privilege gained at
//! exec (`AT_SECURE` in its auxiliary vector); dumpable (the files in
//! `/proc/<pid>` then belong to the process's uid, not to root — the
//! directory itself always shows the euid).
//!
//! The verdict is taken from `/proc` before the first record of a process
//! reaches such a session (the kernel wakes qtapd at once for exec and
//! fork records, so it reads `/proc` while the process runs), inherited
//! by forked children, and cached until the process execs, changes
//! credentials (a `CREDS` record) or exits. A process whose `/proc` entry
//! cannot be read (it is gone) is visible to root only: fail closed, and
//! the records withheld are counted as lost to the sessions concerned.

use std::{collections::HashMap, fs, os::unix::fs::MetadataExt};

/// `AT_SECURE` in the auxiliary vector.
const AT_SECURE: u64 = 23;

/// What `/proc/<pid>` says of a process's credentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Creds {
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gids: [u32; 4],
    /// `CapPrm`: the permitted capabilities.
    pub cap_permitted: u64,
    /// `AT_SECURE` was set at exec (privileges gained).
    pub secure_exec: bool,
    /// The owner of `/proc/<pid>/status`: root when the process is not
    /// dumpable (or has exited).
    pub proc_owner: u32,
}

impl Creds {
    /// The uid that may see this process besides root, if any.
    #[must_use]
    pub fn visible_to(&self) -> Option<u32> {
        let uid = self.uids[0];
        let plain = self.uids.iter().all(|&u| u == uid)
            && self.gids.iter().all(|&g| g == self.gids[0])
            && self.cap_permitted == 0
            && !self.secure_exec
            && self.proc_owner == uid;
        plain.then_some(uid)
    }

    /// Reads the credentials of `pid`; `None` when it is gone or a file
    /// does not read as expected.
    #[must_use]
    pub fn of(pid: u32) -> Option<Creds> {
        use std::io::Read;
        let dir = format!("/proc/{pid}");
        // Owner and text of one open file: the kernel sets the owner of
        // the files in /proc/<pid> from dumpable when they are looked up.
        let mut file = fs::File::open(format!("{dir}/status")).ok()?;
        let proc_owner = file.metadata().ok()?.uid();
        let mut status = String::new();
        file.read_to_string(&mut status).ok()?;
        let auxv = fs::read(format!("{dir}/auxv")).ok()?;
        let mut creds = parse_status(&status)?;
        creds.secure_exec = secure_exec(&auxv)?;
        creds.proc_owner = proc_owner;
        // A process that becomes undumpable or changes ids after these
        // reads is deselected by the kernel (a `CREDS` record).
        Some(creds)
    }
}

/// The `Uid:`, `Gid:` and `CapPrm:` lines of `/proc/<pid>/status`.
fn parse_status(status: &str) -> Option<Creds> {
    let ids = |key: &str| -> Option<[u32; 4]> {
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        let mut out = [0; 4];
        let mut values = line.split_whitespace();
        for slot in &mut out {
            *slot = values.next()?.parse().ok()?;
        }
        Some(out)
    };
    let caps = status.lines().find_map(|l| l.strip_prefix("CapPrm:"))?;
    Some(Creds {
        uids: ids("Uid:")?,
        gids: ids("Gid:")?,
        cap_permitted: u64::from_str_radix(caps.trim(), 16).ok()?,
        ..Creds::default()
    })
}

/// Whether the auxiliary vector (native-endian `u64` pairs) has a
/// non-zero `AT_SECURE`; `None` when it is empty (a zombie has none).
fn secure_exec(auxv: &[u8]) -> Option<bool> {
    if auxv.len() < 16 {
        return None;
    }
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]));
    Some(
        auxv.chunks_exact(16)
            .any(|pair| word(&pair[..8]) == AT_SECURE && word(&pair[8..]) != 0),
    )
}

/// Who besides root may see a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Root and this uid.
    Visible(u32),
    /// Root alone: the credentials are not plain.
    RootOnly,
    /// Root alone because nothing could be checked: the process was gone
    /// from `/proc` before its first record was handled. Unlike
    /// [`Verdict::RootOnly`] this withholds records a restricted session
    /// may have been entitled to, so they are counted as lost
    /// (`LossStage::AccessUnverified`).
    Unknown,
}

impl Verdict {
    /// The uid besides root that may see the process, if any.
    #[must_use]
    pub fn uid(self) -> Option<u32> {
        match self {
            Verdict::Visible(uid) => Some(uid),
            Verdict::RootOnly | Verdict::Unknown => None,
        }
    }

    /// The verdict on `pid`, read from `/proc` now.
    fn check(pid: u32) -> Verdict {
        match Creds::of(pid) {
            Some(creds) => creds
                .visible_to()
                .map_or(Verdict::RootOnly, Verdict::Visible),
            None => Verdict::Unknown,
        }
    }
}

/// The cached verdicts.
#[derive(Default)]
pub struct Access {
    visible: HashMap<u32, Verdict>,
}

impl Access {
    /// The verdict on `pid`, checked on first use.
    pub fn verdict(&mut self, pid: u32) -> Verdict {
        *self
            .visible
            .entry(pid)
            .or_insert_with(|| Verdict::check(pid))
    }

    /// `pid` forked `child`. A child starts with its parent's credentials,
    /// dumpability and auxiliary vector, and what it changes later comes
    /// as a `CREDS` record, so a known verdict on the parent holds for the
    /// child; it is taken now, so a child that exits before its first
    /// record is handled is not [`Verdict::Unknown`].
    pub fn fork(&mut self, pid: u32, child: u32) {
        match self.visible.get(&pid).copied() {
            Some(verdict @ (Verdict::Visible(_) | Verdict::RootOnly)) => {
                self.visible.insert(child, verdict);
            }
            Some(Verdict::Unknown) | None => {}
        }
    }

    /// `pid` is root's alone until it execs (its credentials changed).
    pub fn deny(&mut self, pid: u32) {
        self.visible.insert(pid, Verdict::RootOnly);
    }

    /// Forget `pid` (it exec'd or exited): the next use checks again.
    pub fn forget(&mut self, pid: u32) {
        self.visible.remove(&pid);
    }

    /// Processes with a cached verdict.
    #[must_use]
    pub fn len(&self) -> usize {
        self.visible.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.visible.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tcurl\nUid:\t1000\t1000\t1000\t1000\n\
                          Gid:\t1000\t1000\t1000\t1000\nCapInh:\t0000000000000000\n\
                          CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n";

    fn auxv(pairs: &[(u64, u64)]) -> Vec<u8> {
        pairs
            .iter()
            .flat_map(|&(k, v)| k.to_ne_bytes().into_iter().chain(v.to_ne_bytes()))
            .collect()
    }

    fn plain() -> Creds {
        Creds {
            secure_exec: false,
            proc_owner: 1000,
            ..parse_status(STATUS).unwrap()
        }
    }

    #[test]
    fn a_plain_process_is_its_owners() {
        assert_eq!(plain().visible_to(), Some(1000));
    }

    #[test]
    fn anything_gained_makes_it_roots_alone() {
        let setuid = Creds {
            uids: [1000, 0, 0, 0],
            ..plain()
        };
        let setgid = Creds {
            gids: [1000, 42, 42, 42],
            ..plain()
        };
        let capable = Creds {
            cap_permitted: 1 << 13,
            ..plain()
        };
        let secure = Creds {
            secure_exec: true,
            ..plain()
        };
        let undumpable = Creds {
            proc_owner: 0,
            ..plain()
        };
        for creds in [setuid, setgid, capable, secure, undumpable] {
            assert_eq!(creds.visible_to(), None, "{creds:?}");
        }
    }

    #[test]
    fn status_and_auxv_parse() {
        let root = STATUS
            .replace("1000", "0")
            .replace("CapPrm:\t0000000000000000", "CapPrm:\t000001ffffffffff");
        let creds = parse_status(&root).unwrap();
        assert_eq!(creds.uids, [0; 4]);
        assert_eq!(creds.cap_permitted, 0x1ff_ffff_ffff);
        assert!(parse_status("Uid:\t1\t2\n").is_none());
        assert_eq!(
            secure_exec(&auxv(&[(6, 4096), (23, 1), (0, 0)])),
            Some(true)
        );
        assert_eq!(
            secure_exec(&auxv(&[(6, 4096), (23, 0), (0, 0)])),
            Some(false)
        );
        assert_eq!(secure_exec(&[]), None);
    }

    #[test]
    fn this_process_reads_as_roots_or_its_owners() {
        let me = std::process::id();
        let creds = Creds::of(me).unwrap();
        // SAFETY: no preconditions.
        let uid = unsafe { libc::getuid() };
        assert_eq!(creds.uids[0], uid);
        assert!(Creds::of(u32::MAX).is_none(), "a pid that cannot exist");
    }

    #[test]
    fn a_gone_process_is_unknown_and_a_child_inherits_a_known_verdict() {
        let mut access = Access::default();
        assert_eq!(access.verdict(u32::MAX), Verdict::Unknown);
        // An unknown parent tells nothing of its child.
        access.fork(u32::MAX, u32::MAX - 1);
        assert_eq!(access.verdict(u32::MAX - 1), Verdict::Unknown);
        let me = std::process::id();
        let mine = access.verdict(me);
        assert_ne!(mine, Verdict::Unknown);
        // A child that is already gone takes its parent's verdict.
        access.fork(me, u32::MAX - 2);
        assert_eq!(access.verdict(u32::MAX - 2), mine);
        access.deny(u32::MAX - 2);
        assert_eq!(access.verdict(u32::MAX - 2), Verdict::RootOnly);
        access.forget(u32::MAX - 2);
        assert_eq!(access.verdict(u32::MAX - 2), Verdict::Unknown);
    }
}
