//! qtapd's unix socket: created mode 0660 (under a umask, so no moment
//! exists when others could connect) in a directory only root can write,
//! then given to root:`qtap` through the directory's descriptor without
//! following symlinks. The `qtap` group is created if missing.

use std::{
    ffi::OsStr,
    fs, io,
    os::unix::{
        fs::{DirBuilderExt, MetadataExt},
        io::{AsRawFd, RawFd},
    },
    path::Path,
    process::Command,
};

use nix::{
    fcntl::{renameat, AtFlags},
    sys::stat::{fstatat, Mode},
    unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags},
};

use tokio::net::UnixListener;
use tracing::info;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("create the socket directory {path}: {source}")]
    Dir { path: String, source: io::Error },
    #[error("create group `{group}`: {reason}")]
    Group { group: String, reason: String },
    #[error("bind {path}: {source}")]
    Bind { path: String, source: io::Error },
    #[error("set the owner of {path}: {source}")]
    Perms { path: String, source: io::Error },
    #[error(
        "refusing the socket directory {path} (owner uid {uid}, mode {mode:04o}): others can \
         write it, so they could replace the socket; use a directory only root can write, \
         such as /run/qtap"
    )]
    UnsafeDir { path: String, uid: u32, mode: u32 },
    #[error("{path} exists and is {what}, not a socket: refusing to replace it")]
    Occupied { path: String, what: &'static str },
}

/// The gid of `group`: a number as is, else the named group's, created
/// as a system group when missing.
fn group_id(group: &str) -> Result<u32, SocketError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let lookup = || {
        nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    };
    if let Some(gid) = lookup() {
        return Ok(gid);
    }
    let fail = |reason: String| SocketError::Group {
        group: group.to_owned(),
        reason,
    };
    let status = Command::new("groupadd")
        .args(["--system", group])
        .status()
        .map_err(|e| fail(e.to_string()))?;
    if !status.success() {
        return Err(fail(format!("groupadd exited with {status}")));
    }
    info!(group, "created group");
    lookup().ok_or_else(|| fail("not found after groupadd".into()))
}

/// Binds the socket at `path` for `group`.
///
/// The directory must be one only root (or qtapd's own user) can write:
/// it is created mode 0755 when missing, and refused when others can
/// write it, since anyone who can write it could swap the socket for a
/// symlink between the steps below. Every step after the directory check
/// works on the directory's descriptor, never following a symlink: an
/// old entry is removed only if it is a socket, the socket is bound under
/// a temporary name and umask 0117 (so it is born 0660, never more open),
/// its group is set with `fchownat(AT_SYMLINK_NOFOLLOW)`, and only then is
/// it renamed to `path`.
pub fn bind(path: &Path, group: &str) -> Result<UnixListener, SocketError> {
    let shown = path.display().to_string();
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => (dir, name),
        _ => (Path::new("."), path.as_os_str()),
    };
    let dir_error = |source| SocketError::Dir {
        path: dir.display().to_string(),
        source,
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(dir_error)?;
    }
    let dir_file = fs::File::open(dir).map_err(dir_error)?;
    let meta = dir_file.metadata().map_err(dir_error)?;
    check_dir(dir, &meta)?;
    let dirfd = Some(dir_file.as_raw_fd());
    // The socket is bound and chowned under a temporary name, then renamed
    // into place: a client (or a restart's check) that finds `path` finds
    // it already root:`group`, never root:root for a moment.
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(name);
    temporary.push(".new");
    let temporary = temporary.as_os_str();
    clear(dirfd, temporary, &dir.join(temporary).display().to_string())?;
    clear(dirfd, name, &shown)?;
    let gid = group_id(group)?;
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o117));
    let listener = UnixListener::bind(dir.join(temporary));
    nix::sys::stat::umask(old);
    let listener = listener.map_err(|source| SocketError::Bind {
        path: shown.clone(),
        source,
    })?;
    fchownat(
        dirfd,
        temporary,
        Some(Uid::from_raw(0)),
        Some(Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| SocketError::Perms {
        path: shown.clone(),
        source: e.into(),
    })?;
    renameat(dirfd, temporary, dirfd, name).map_err(|e| SocketError::Bind {
        path: shown.clone(),
        source: e.into(),
    })?;
    info!(path = %shown, group, mode = "0660", "listening");
    Ok(listener)
}

/// Removes a socket left at `name` by a daemon that was killed; anything
/// else there is not ours to remove.
fn clear(dirfd: Option<RawFd>, name: &OsStr, shown: &str) -> Result<(), SocketError> {
    match fstatat(dirfd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFSOCK => {
            unlinkat(dirfd, name, UnlinkatFlags::NoRemoveDir).map_err(|e| SocketError::Bind {
                path: shown.to_owned(),
                source: e.into(),
            })
        }
        Ok(st) => Err(SocketError::Occupied {
            path: shown.to_owned(),
            what: kind_of(st.st_mode),
        }),
        Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(SocketError::Bind {
            path: shown.to_owned(),
            source: e.into(),
        }),
    }
}

/// Refuses a socket directory that someone other than root and qtapd's
/// own user can write.
fn check_dir(dir: &Path, meta: &fs::Metadata) -> Result<(), SocketError> {
    // SAFETY: no preconditions.
    let me = unsafe { libc::geteuid() };
    let owner_ok = meta.uid() == 0 || meta.uid() == me;
    if !meta.is_dir() || !owner_ok || meta.mode() & 0o022 != 0 {
        return Err(SocketError::UnsafeDir {
            path: dir.display().to_string(),
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

fn kind_of(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFLNK => "a symlink",
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        _ => "not a socket",
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scratch(mode: u32) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "qtap-sock-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        dir
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = scratch(0o1777);
        let error = bind(&dir.join("qtapd.sock"), "root").unwrap_err();
        assert!(
            matches!(error, SocketError::UnsafeDir { mode: 0o1777, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("others can write"), "{error}");
        assert!(!dir.join("qtapd.sock").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_socket_appears_at_its_path_only_when_finished() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let dir = scratch(0o755);
        // A temporary socket left by a daemon killed mid-bind is replaced.
        let leftover = std::os::unix::net::UnixListener::bind(dir.join(".qtapd.sock.new")).unwrap();
        drop(leftover);
        let _listener = bind(&dir.join("qtapd.sock"), "root").unwrap();
        let meta = fs::symlink_metadata(dir.join("qtapd.sock")).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert!(!dir.join(".qtapd.sock.new").exists(), "renamed into place");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_planted_symlink_is_refused_and_its_target_untouched() {
        use std::os::unix::fs::MetadataExt;
        let dir = scratch(0o755);
        let target = dir.join("target");
        fs::write(&target, "x").unwrap();
        let before = fs::metadata(&target).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("qtapd.sock")).unwrap();
        let error = bind(&dir.join("qtapd.sock"), "root").unwrap_err();
        assert!(error.to_string().contains("a symlink"), "{error}");
        let after = fs::metadata(&target).unwrap();
        assert_eq!(
            (before.uid(), before.gid(), before.mode()),
            (after.uid(), after.gid(), after.mode()),
            "nothing chowned or chmodded"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
