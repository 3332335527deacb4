//! qtapd's unix socket: created mode 0600 (under a umask, so no moment
//! exists when others could connect), then given to root:`qtap` with mode
//! 0660. The `qtap` group is created if missing.

use std::{
    fs, io,
    os::unix::fs::{chown, PermissionsExt},
    path::Path,
    process::Command,
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
    #[error("set owner and mode of {path}: {source}")]
    Perms { path: String, source: io::Error },
}

/// The gid of `group`, creating it as a system group when missing.
fn group_id(group: &str) -> Result<u32, SocketError> {
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
pub fn bind(path: &Path, group: &str) -> Result<UnixListener, SocketError> {
    let shown = path.display().to_string();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|source| SocketError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let gid = group_id(group)?;
    // A socket left by a daemon that was killed is replaced.
    let _ = fs::remove_file(path);
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(|source| SocketError::Bind {
        path: shown.clone(),
        source,
    })?;
    let perms = |source| SocketError::Perms {
        path: shown.clone(),
        source,
    };
    chown(path, Some(0), Some(gid)).map_err(perms)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(perms)?;
    info!(path = %shown, group, mode = "0660", "listening");
    Ok(listener)
}
