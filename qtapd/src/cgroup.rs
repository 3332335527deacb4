//! Which cgroup a process is in, and what its path means: the container
//! (docker, containerd, CRI-O and podman path forms), the Kubernetes pod,
//! the systemd unit. Read from `/proc/<pid>/cgroup` (the unified
//! hierarchy's `0::` line) once per process, resolved once per path; the
//! id is the cgroup directory's inode number, which is what the kernel's
//! `bpf_get_current_cgroup_id()` returns, so a session's `cgroup:`,
//! `container:` and `unit:` terms become cgroup ids the kernel matches at
//! exec (see `filter::compile`).

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use foldhash::HashMap;

/// Where the unified hierarchy is mounted when `/proc/self/mountinfo`
/// names no `cgroup2` mount.
const DEFAULT_ROOT: &str = "/sys/fs/cgroup";
/// Directories walked at most (a host with more is cut short, and said so).
const WALK_MAX: usize = 100_000;

/// One cgroup and what its path says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cgroup {
    /// The directory's inode number: the kernel's cgroup id.
    pub id: u64,
    /// As `/proc/<pid>/cgroup` shows it: `/system.slice/nginx.service`.
    pub path: Arc<str>,
    pub container_id: Option<Arc<str>>,
    pub pod_uid: Option<Arc<str>>,
    pub unit: Option<Arc<str>>,
}

impl Cgroup {
    /// The cgroup at `path` (relative to the hierarchy's root), with `id`.
    #[must_use]
    pub fn new(id: u64, path: &str) -> Cgroup {
        let mut cgroup = Cgroup {
            id,
            path: path.into(),
            ..Cgroup::default()
        };
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if let Some(id) = container_id(part) {
                cgroup.container_id = Some(id.into());
            } else if let Some(uid) = pod_uid(part) {
                cgroup.pod_uid = Some(uid.into());
            } else if matches!(part.rsplit_once('.'), Some((_, "service" | "scope"))) {
                cgroup.unit = Some(part.into());
            }
        }
        cgroup
    }
}

/// A container's id in a path component: `docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`
/// (systemd driver), or the bare 64-hex id (cgroupfs driver).
fn container_id(part: &str) -> Option<&str> {
    let id = part
        .strip_suffix(".scope")
        .and_then(|s| s.rsplit_once('-'))
        .map_or(part, |(_, id)| id);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// A Kubernetes pod's UID in a path component: `pod<uid>` (cgroupfs) or
/// `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let (_, uid) = name.rsplit_once("pod")?;
    let uid = uid.replace('_', "-");
    let uuid_like = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    uuid_like.then_some(uid)
}

/// The unified-hierarchy path of `pid`'s cgroup (`0::/…` in
/// `/proc/<pid>/cgroup`).
#[must_use]
pub fn path_of(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Where the unified (v2) hierarchy is mounted: `/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host, whose v1 controllers are
/// not what the kernel's cgroup id names.
#[must_use]
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| mount_point(&text))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
    })
}

/// The first `cgroup2` mount point in a mountinfo text.
fn mount_point(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        fs.starts_with("cgroup2 ")
            .then(|| mount.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The id of the cgroup at `path` (its directory's inode number).
#[must_use]
pub fn id_of(path: &str) -> Option<u64> {
    fs::metadata(root().join(path.trim_start_matches('/')))
        .ok()
        .map(|m| m.ino())
}

/// Every cgroup of the unified hierarchy, parents first; `true` with them
/// when the walk stopped at [`WALK_MAX`] directories.
#[must_use]
pub fn walk() -> (Vec<Cgroup>, bool) {
    let mut out = Vec::new();
    let mut dirs = vec![(root().to_path_buf(), String::from("/"))];
    while let Some((dir, path)) = dirs.pop() {
        let Ok(meta) = fs::metadata(&dir) else {
            continue;
        };
        if out.len() == WALK_MAX {
            return (out, true);
        }
        out.push(Cgroup::new(meta.ino(), &path));
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if path == "/" {
                    format!("/{name}")
                } else {
                    format!("{path}/{name}")
                };
                dirs.push((entry.path(), child));
            }
        }
    }
    (out, false)
}

/// Cgroups resolved so far, by path (a process's is read once).
#[derive(Debug, Default)]
pub struct Cache {
    by_path: HashMap<String, Arc<Cgroup>>,
}

impl Cache {
    /// `pid`'s cgroup, `None` when the process is gone or has none in the
    /// unified hierarchy.
    pub fn of_pid(&mut self, pid: u32) -> Option<Arc<Cgroup>> {
        let path = path_of(pid)?;
        if let Some(known) = self.by_path.get(&path) {
            return Some(Arc::clone(known));
        }
        // A cgroup removed and made again under the same path has a new
        // id: an entry whose directory is gone is not kept.
        let id = id_of(&path)?;
        let cgroup = Arc::new(Cgroup::new(id, &path));
        if self.by_path.len() > WALK_MAX {
            self.by_path.clear();
        }
        self.by_path.insert(path, Arc::clone(&cgroup));
        Some(cgroup)
    }

    /// Forgets what was resolved (a tick saw cgroups come or go).
    pub fn clear(&mut self) {
        self.by_path.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1d2c3b4a5968778695a4b3c2d1e0f001122334455667788990aabbccddeeff";

    #[test]
    fn paths_name_containers_pods_and_units() {
        let docker = Cgroup::new(1, &format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(docker.container_id.as_deref(), Some(ID));
        assert_eq!(docker.unit, None, "a container's scope is named by its id");
        let cgroupfs = Cgroup::new(1, &format!("/docker/{ID}"));
        assert_eq!(cgroupfs.container_id.as_deref(), Some(ID));
        let k8s = Cgroup::new(
            1,
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod0a1b2c3d_0000_4e5f_8a9b_0c1d2e3f4a5b.slice/\
                 cri-containerd-{ID}.scope"
            ),
        );
        assert_eq!(
            (k8s.container_id.as_deref(), k8s.pod_uid.as_deref()),
            (Some(ID), Some("0a1b2c3d-0000-4e5f-8a9b-0c1d2e3f4a5b"))
        );
        let k8s_fs = Cgroup::new(
            1,
            &format!("/kubepods/besteffort/pod0a1b2c3d-0000-4e5f-8a9b-0c1d2e3f4a5b/{ID}"),
        );
        assert_eq!(
            k8s_fs.pod_uid.as_deref(),
            Some("0a1b2c3d-0000-4e5f-8a9b-0c1d2e3f4a5b")
        );
        for prefix in ["crio", "libpod"] {
            let c = Cgroup::new(1, &format!("/machine.slice/{prefix}-{ID}.scope"));
            assert_eq!(c.container_id.as_deref(), Some(ID), "{prefix}");
        }
        let nginx = Cgroup::new(1, "/system.slice/nginx.service");
        assert_eq!(
            (nginx.unit.as_deref(), nginx.container_id.as_deref()),
            (Some("nginx.service"), None)
        );
        let user = Cgroup::new(
            1,
            "/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service",
        );
        assert_eq!(user.unit.as_deref(), Some("foo.service"));
        let root = Cgroup::new(1, "/");
        assert_eq!(
            root,
            Cgroup {
                id: 1,
                path: "/".into(),
                ..Cgroup::default()
            }
        );
    }

    #[test]
    fn the_unified_hierarchy_is_found_on_hybrid_hosts_too() {
        let hybrid = "30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      35 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      41 30 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mount_point(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(mount_point(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(mount_point("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"), None);
    }

    #[test]
    fn our_own_cgroup_is_found_and_walked() {
        let path = path_of(std::process::id()).expect("a unified hierarchy here");
        let id = id_of(&path).unwrap();
        let (all, cut) = walk();
        assert!(!cut);
        assert!(
            all.iter().any(|c| c.id == id && *c.path == *path),
            "{path} not walked"
        );
        assert_eq!(Cache::default().of_pid(std::process::id()).unwrap().id, id);
    }
}
