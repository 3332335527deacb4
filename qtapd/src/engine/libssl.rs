//! Where the OpenSSL probes go: the system's `libssl`, every `libssl` a
//! selected process maps, and every executable that links OpenSSL
//! statically, each file once (by device and inode), for as long as a
//! session needs TLS records. A uprobe attached to a file fires in every
//! process that maps it; the kernel keeps only selected processes.
//!
//! A selected process's maps name files its owner chose (any user can map
//! a file of their own, in `/dev/shm` say), so the files are examined off
//! the engine's thread (`spawn_blocking`), only when they are regular
//! files that root or the process's owner owns, at most
//! [`MAX_EXE_BYTES`] long, and read piecewise (`object::ReadCache`: the
//! ELF headers and symbol tables, never the whole file). The engine
//! attaches what the examination found.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSymbol};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{ebpf::Selector, procfs};

/// Where distributions put the system `libssl`.
const LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib64",
    "/lib",
];
/// Executables larger than this are not searched for static OpenSSL.
const MAX_EXE_BYTES: u64 = 256 << 20;
/// A defined symbol that only OpenSSL (or a fork of it) provides.
const MARKER: &str = "SSL_write";

/// A file the examination looked at.
#[derive(Debug)]
pub struct Examined {
    /// Device and inode.
    id: (u64, u64),
    path: PathBuf,
    /// Named `libssl`: OpenSSL by name.
    library: bool,
    /// OpenSSL, by name or by its symbols.
    openssl: bool,
}

pub struct TlsTargets {
    /// Sessions need TLS records.
    active: bool,
    /// Files examined (attached or found not to be OpenSSL), by identity.
    examined: HashSet<(u64, u64)>,
    /// Processes whose maps are read at the next tick: a process's
    /// libraries are mapped after its exec.
    to_scan: HashSet<u32>,
    /// What examinations found, sent from their threads.
    found_tx: mpsc::UnboundedSender<Examined>,
    /// Received here unless the engine's loop took it ([`TlsTargets::take_found`]).
    found_rx: Option<mpsc::UnboundedReceiver<Examined>>,
}

impl Default for TlsTargets {
    fn default() -> TlsTargets {
        let (found_tx, found_rx) = mpsc::unbounded_channel();
        TlsTargets {
            active: false,
            examined: HashSet::new(),
            to_scan: HashSet::new(),
            found_tx,
            found_rx: Some(found_rx),
        }
    }
}

impl TlsTargets {
    /// Starts or stops the OpenSSL probes as sessions come and go.
    pub fn set_needed(&mut self, kernel: &mut impl Selector, needed: bool) {
        if needed == self.active {
            return;
        }
        self.active = needed;
        if needed {
            // Root's own directories, found by name: nothing is read.
            for path in system_libssl() {
                if let Some(found) = examine(&path, true, 0) {
                    self.attach(kernel, &found);
                }
            }
        } else {
            kernel.detach_tls();
            self.examined.clear();
            self.to_scan.clear();
            info!("openssl probes detached: no session needs them");
        }
    }

    /// `pid` was selected: its libraries are examined at the next tick.
    pub fn watch(&mut self, pid: u32) {
        if self.active {
            self.to_scan.insert(pid);
        }
    }

    /// The receiver of what examinations find, for the engine's loop to
    /// wait on (else results are taken at each tick).
    pub fn take_found(&mut self) -> Option<mpsc::UnboundedReceiver<Examined>> {
        self.found_rx.take()
    }

    /// Starts examining the files mapped by the processes watched since
    /// the last tick, and attaches what earlier examinations found.
    pub fn tick(&mut self, kernel: &mut impl Selector) {
        for found in self.received() {
            self.attach(kernel, &found);
        }
        if self.to_scan.is_empty() {
            return;
        }
        let pids = std::mem::take(&mut self.to_scan);
        let known = self.examined.clone();
        let tx = self.found_tx.clone();
        let work = move || scan(pids, known, &tx);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn_blocking(work));
        } else {
            // Without a runtime (tests, fuzzers): here and now.
            work();
            for found in self.received() {
                self.attach(kernel, &found);
            }
        }
    }

    /// What examinations sent, when the engine's loop does not take it.
    fn received(&mut self) -> Vec<Examined> {
        let mut results = Vec::new();
        if let Some(rx) = &mut self.found_rx {
            while let Ok(found) = rx.try_recv() {
                results.push(found);
            }
        }
        results
    }

    /// Attaches to a file an examination found to be OpenSSL, once.
    pub fn attach(&mut self, kernel: &mut impl Selector, found: &Examined) {
        if !self.active || !self.examined.insert(found.id) || !found.openssl {
            return;
        }
        let path = found.path.as_path();
        match kernel.attach_tls(path) {
            Ok(probes) => info!(target = %path.display(), probes, "openssl probes attached"),
            Err(error) if found.library => warn!(%error, "openssl probes not attached"),
            Err(error) => debug!(%error, "openssl probes not attached"),
        }
    }
}

/// Examines the files `pids` map (on a blocking thread) and sends what it
/// finds; files in `seen` were examined before.
fn scan(pids: HashSet<u32>, mut seen: HashSet<(u64, u64)>, tx: &mpsc::UnboundedSender<Examined>) {
    for pid in pids {
        // Files its owner (or root) owns: the process could not map
        // another user's file without reading rights anyway, but only
        // these two are trusted not to be crafted against qtapd.
        let Some(owner) = procfs::uid(pid) else {
            continue;
        };
        for path in procfs::mapped_files(pid) {
            let library = file_name(&path).contains("libssl.so");
            if !(library || is_executable(&path)) {
                continue;
            }
            if let Some(found) = examine(&path, library, owner) {
                if seen.insert(found.id) && tx.send(found).is_err() {
                    return;
                }
            }
        }
    }
}

/// Looks at one file: a regular file that root or `owner` owns, at most
/// [`MAX_EXE_BYTES`] long; OpenSSL when named `libssl` or when it
/// defines OpenSSL's symbols. `None` when it is not such a file.
fn examine(path: &Path, library: bool, owner: u32) -> Option<Examined> {
    // The file itself, not a symlink to it (`libssl.so` → `.so.3`).
    let path = fs::canonicalize(path).ok()?;
    // Checked on the open file, so the checks and the reads are of one
    // and the same file.
    let file = fs::File::open(&path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || (meta.uid() != 0 && meta.uid() != owner) {
        debug!(path = %path.display(), uid = meta.uid(), "not examined: not a regular file of root or the process's owner");
        return None;
    }
    if meta.len() > MAX_EXE_BYTES {
        debug!(path = %path.display(), len = meta.len(), "not examined: too large");
        return None;
    }
    let openssl = library || defines_openssl(file);
    Some(Examined {
        id: (meta.dev(), meta.ino()),
        path,
        library,
        openssl,
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Executables are mapped too; shared libraries are named `*.so*`.
fn is_executable(path: &Path) -> bool {
    !file_name(path).contains(".so")
}

/// `libssl.so*` files in the usual library directories.
fn system_libssl() -> Vec<PathBuf> {
    LIB_DIRS
        .iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| file_name(path).starts_with("libssl.so"))
        .collect()
}

/// Whether the ELF file defines OpenSSL's `SSL_write` (a static build; a
/// dynamically linked program only imports it). Reads the headers and
/// symbol tables only.
fn defines_openssl(file: fs::File) -> bool {
    let cache = object::ReadCache::new(file);
    let Ok(file) = object::File::parse(&cache) else {
        return false;
    };
    file.symbols()
        .chain(file.dynamic_symbols())
        .any(|s| s.is_definition() && s.name() == Ok(MARKER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_program_does_not_define_openssl() {
        // The test binary links no OpenSSL at all.
        let me = std::env::current_exe().unwrap();
        assert!(!defines_openssl(fs::File::open(&me).unwrap()));
        assert!(is_executable(&me));
        assert!(!is_executable(Path::new("/usr/lib/libssl.so.3")));
    }

    #[test]
    fn the_system_libssl_defines_openssl() {
        let libs = system_libssl();
        assert!(!libs.is_empty(), "libssl is installed (curl depends on it)");
        for lib in &libs {
            assert!(
                defines_openssl(fs::File::open(lib).unwrap()),
                "{}",
                lib.display()
            );
        }
    }

    #[test]
    fn only_small_regular_files_of_root_or_the_owner_are_examined() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("qtap-libssl-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("prog");
        fs::write(&file, b"not ELF").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
        let mine = fs::metadata(&file).unwrap().uid();
        // The file's owner's process: examined (and not OpenSSL).
        let found = examine(&file, false, mine).unwrap();
        assert!(!found.openssl);
        // Another user's process mapping it, when the file is not root's.
        if mine != 0 {
            assert!(examine(&file, false, mine + 1).is_none());
        } else {
            std::os::unix::fs::chown(&file, Some(4242), None).unwrap();
            assert!(examine(&file, false, 1000).is_none(), "a third user's file");
            assert!(examine(&file, false, 4242).is_some());
        }
        // A sparse file past the cap is skipped without being read.
        let big = dir.join("big");
        let f = fs::File::create(&big).unwrap();
        f.set_len(MAX_EXE_BYTES + 1).unwrap();
        assert!(examine(&big, false, fs::metadata(&big).unwrap().uid()).is_none());
        assert!(examine(&dir, false, 0).is_none(), "a directory");
        fs::remove_dir_all(&dir).unwrap();
    }
}
