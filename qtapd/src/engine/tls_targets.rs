//! Where the TLS library probes go: the system's `libssl` and `libgnutls`,
//! every such library a selected process maps, every executable that
//! links OpenSSL or GnuTLS statically (with symbols, or OpenSSL 3 found
//! without them by [`crate::openssl_search`]), and every Go executable that uses
//! crypto/tls ([`crate::gotls`]), each file once (by device and inode),
//! for as long as a session needs TLS records. A uprobe attached to a file fires in every
//! process that maps it; the kernel keeps only selected processes.
//!
//! A selected process's maps name files its owner chose (any user can map
//! a file of their own, in `/dev/shm` say), so the files are examined off
//! the engine's thread (`spawn_blocking`), only when [`elf::open_trusted`]
//! lets them (regular files of root or the process's owner, not too large)
//! and read piecewise, never the whole file. The engine attaches what the examination found, at
//! the offsets it found: a static build is large (Node.js: 98 MB, 75,000
//! exported symbols) and a short-lived program's first request goes out
//! a few hundred milliseconds after its exec.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::{
    ebpf::{Selector, TlsSymbols},
    elf,
    gotls::{self, GoTls, NotProbed},
    openssl_search::{self, NotFound},
    procfs,
};

/// Where distributions put the system's TLS libraries.
const LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib64",
    "/lib",
];
/// The names of the TLS libraries qtap probes.
const LIBRARY_NAMES: &[&str] = &["libssl.so", "libgnutls.so"];

/// A file the examination looked at.
#[derive(Debug)]
pub struct Examined {
    /// Device and inode.
    id: (u64, u64),
    path: PathBuf,
    /// Named as a TLS library ([`LIBRARY_NAMES`]).
    library: bool,
    /// The TLS library functions it defines (none: not a TLS library).
    symbols: TlsSymbols,
    /// A Go executable's crypto/tls probe sites.
    go: Option<GoTls>,
}

pub struct TlsTargets {
    /// Sessions need TLS records.
    active: bool,
    /// Files examined (attached or found not to be a TLS library), by identity.
    examined: HashSet<(u64, u64)>,
    /// Files with probes attached.
    attached: u32,
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
            attached: 0,
            to_scan: HashSet::new(),
            found_tx,
            found_rx: Some(found_rx),
        }
    }
}

impl TlsTargets {
    /// Starts or stops the TLS library probes as sessions come and go.
    pub fn set_needed(&mut self, kernel: &mut impl Selector, needed: bool) {
        if needed == self.active {
            return;
        }
        self.active = needed;
        if needed {
            // Root's own directories, found by name: nothing is read.
            for path in system_libraries() {
                if let Some(found) = examine(&path, true, 0) {
                    self.attach(kernel, &found);
                }
            }
        } else {
            kernel.detach_tls();
            self.examined.clear();
            self.attached = 0;
            self.to_scan.clear();
            info!("tls probes detached: no session needs them");
        }
    }

    /// Files with TLS probes attached now.
    pub fn probed_files(&self) -> u32 {
        self.attached
    }

    /// `pid` was selected: its libraries are examined at the next tick.
    pub fn watch(&mut self, pid: u32) {
        if self.active {
            self.to_scan.insert(pid);
        }
    }

    /// `pid` was selected at its exec: its executable, mapped already
    /// (its libraries are not yet), is examined at once, so that a program
    /// with OpenSSL linked in (Node.js) is probed before it gets far; its
    /// libraries at the next tick.
    pub fn watch_exec(&mut self, kernel: &mut impl Selector, pid: u32) {
        if !self.active {
            return;
        }
        self.to_scan.insert(pid);
        let known = self.examined.clone();
        let tx = self.found_tx.clone();
        self.run(kernel, move || scan_exe(pid, &known, &tx));
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
        self.run(kernel, move || scan(pids, known, &tx));
    }

    /// Runs an examination off the engine's thread; what it finds comes
    /// back through `found`.
    fn run(&mut self, kernel: &mut impl Selector, work: impl FnOnce() + Send + 'static) {
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

    /// Attaches to a file an examination found to be a TLS library, once.
    pub fn attach(&mut self, kernel: &mut impl Selector, found: &Examined) {
        let nothing = found.symbols.is_empty() && found.go.is_none();
        if !self.active || !self.examined.insert(found.id) || nothing {
            return;
        }
        let path = found.path.as_path();
        let attached = match &found.go {
            Some(go) => kernel.attach_go(path, go),
            None => kernel.attach_tls(path, &found.symbols),
        };
        match attached {
            Ok(probes) => {
                self.attached += 1;
                info!(target = %path.display(), probes, "tls probes attached");
            }
            Err(error) if found.library => warn!(%error, "tls probes not attached"),
            Err(error) => debug!(%error, "tls probes not attached"),
        }
    }
}

/// Examines the executable of `pid` (on a blocking thread) unless `seen`.
fn scan_exe(pid: u32, seen: &HashSet<(u64, u64)>, tx: &mpsc::UnboundedSender<Examined>) {
    let (Some(owner), Some(exe)) = (procfs::uid(pid), procfs::exe(pid)) else {
        return;
    };
    // Through the process's root: its own mount namespace's file.
    let path = PathBuf::from(format!("/proc/{pid}/root{exe}"));
    if let Some(found) = examine(&path, false, owner) {
        if !seen.contains(&found.id) {
            let _ = tx.send(found);
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
            let library = is_library(&path);
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

/// Looks at one file (see [`elf::open_trusted`]) for the TLS library
/// functions it defines. `None` when it is not such a file.
fn examine(path: &Path, library: bool, owner: u32) -> Option<Examined> {
    let (path, file, meta) = elf::open_trusted(path, owner)?;
    let mut symbols = elf::tls_symbols(&file);
    let mut go = None;
    if symbols.is_empty() && !library {
        match gotls::sites(&file) {
            Ok(found) => go = Some(found),
            Err(NotProbed::NotGo) => match openssl_search::search(&file) {
                Ok(found) => {
                    debug!(path = %path.display(), functions = found.len(), "OpenSSL without symbols found by its error names");
                    symbols = found;
                }
                Err(NotFound::NotOpenssl) => {}
                Err(why) => {
                    info!(path = %path.display(), %why, "a TLS library without openssl probes");
                }
            },
            Err(NotProbed::NoCryptoTls(_)) => {}
            Err(why) => {
                info!(path = %path.display(), %why, "a Go program without gotls probes");
            }
        }
    }
    Some(Examined {
        id: (meta.dev(), meta.ino()),
        path,
        library,
        symbols,
        go,
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

/// Whether a file is named as a TLS library (`libssl.so.3`).
fn is_library(path: &Path) -> bool {
    let name = file_name(path);
    LIBRARY_NAMES.iter().any(|prefix| name.starts_with(prefix))
}

/// The TLS libraries in the usual library directories.
fn system_libraries() -> Vec<PathBuf> {
    LIB_DIRS
        .iter()
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| is_library(path))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_program_does_not_define_tls_functions() {
        // The test binary links no OpenSSL or GnuTLS at all.
        let me = std::env::current_exe().unwrap();
        assert!(elf::tls_symbols(&object::ReadCache::new(fs::File::open(&me).unwrap())).is_empty());
        assert!(is_executable(&me));
        assert!(!is_executable(Path::new("/usr/lib/libssl.so.3")));
    }

    /// The offsets agree with those `object`'s own symbol API gives (the
    /// way aya resolves a symbol name) over the whole file in memory.
    #[test]
    fn the_system_tls_libraries_define_their_functions_where_object_says() {
        use object::{Object, ObjectSection, ObjectSymbol};
        let libs = system_libraries();
        for name in ["libssl.so", "libgnutls.so"] {
            assert!(
                libs.iter().any(|l| file_name(l).starts_with(name)),
                "{name} is installed (curl, gnutls-bin depend on it)"
            );
        }
        for lib in &libs {
            let found = elf::tls_symbols(&object::ReadCache::new(fs::File::open(lib).unwrap()));
            let bytes = fs::read(lib).unwrap();
            let elf = object::File::parse(&*bytes).unwrap();
            let names: &[&str] = if file_name(lib).starts_with("libssl") {
                &["SSL_read", "SSL_write", "SSL_set_fd", "SSL_free"]
            } else {
                &[
                    "gnutls_record_recv",
                    "gnutls_record_send",
                    "gnutls_transport_set_int2",
                    "gnutls_deinit",
                ]
            };
            for &name in names {
                let symbol = elf
                    .dynamic_symbols()
                    .find(|s| s.name() == Ok(name))
                    .unwrap();
                let section = elf
                    .section_by_index(symbol.section_index().unwrap())
                    .unwrap();
                let (start, _) = section.file_range().unwrap();
                let want = symbol.address() - section.address() + start;
                assert_eq!(found.get(name), Some(&want), "{name} in {}", lib.display());
            }
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
        // The file's owner's process: examined (and not a TLS library).
        let found = examine(&file, false, mine).unwrap();
        assert!(found.symbols.is_empty());
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
        f.set_len(elf::MAX_BYTES + 1).unwrap();
        assert!(examine(&big, false, fs::metadata(&big).unwrap().uid()).is_none());
        assert!(examine(&dir, false, 0).is_none(), "a directory");
        fs::remove_dir_all(&dir).unwrap();
    }
}
