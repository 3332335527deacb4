//! Where the OpenSSL probes go: the system's `libssl`, every `libssl` a
//! selected process maps, and every executable that links OpenSSL
//! statically, each file once (by device and inode), for as long as a
//! session needs TLS records. A uprobe attached to a file fires in every
//! process that maps it; the kernel keeps only selected processes.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSymbol};
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
const MAX_EXE_BYTES: u64 = 512 << 20;
/// A defined symbol that only OpenSSL (or a fork of it) provides.
const MARKER: &str = "SSL_write";

#[derive(Default)]
pub struct TlsTargets {
    /// Sessions need TLS records.
    active: bool,
    /// Files examined (attached or found not to be OpenSSL), by identity.
    examined: HashSet<(u64, u64)>,
    /// Processes whose maps are read at the next tick: a process's
    /// libraries are mapped after its exec.
    to_scan: HashSet<u32>,
}

impl TlsTargets {
    /// Starts or stops the OpenSSL probes as sessions come and go.
    pub fn set_needed(&mut self, kernel: &mut impl Selector, needed: bool) {
        if needed == self.active {
            return;
        }
        self.active = needed;
        if needed {
            for path in system_libssl() {
                self.examine(kernel, &path, true);
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

    /// Examines the files mapped by the processes watched since the last tick.
    pub fn tick(&mut self, kernel: &mut impl Selector) {
        for pid in std::mem::take(&mut self.to_scan) {
            for path in procfs::mapped_files(pid) {
                let library = file_name(&path).contains("libssl.so");
                if library || is_executable(&path) {
                    self.examine(kernel, &path, library);
                }
            }
        }
    }

    /// Attaches to `path` once per file: a library named `libssl` is
    /// OpenSSL by name, an executable when it defines OpenSSL's symbols.
    fn examine(&mut self, kernel: &mut impl Selector, path: &Path, library: bool) {
        // The file itself, not a symlink to it (`libssl.so` → `.so.3`).
        let Ok(path) = fs::canonicalize(path) else {
            return;
        };
        let path = path.as_path();
        let Ok(meta) = fs::metadata(path) else {
            return;
        };
        if !self.examined.insert((meta.dev(), meta.ino())) {
            return;
        }
        let openssl = library || (meta.len() <= MAX_EXE_BYTES && defines_openssl(path));
        if !openssl {
            return;
        }
        match kernel.attach_tls(path) {
            Ok(probes) => info!(target = %path.display(), probes, "openssl probes attached"),
            Err(error) if library => warn!(%error, "openssl probes not attached"),
            Err(error) => debug!(%error, "openssl probes not attached"),
        }
    }
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
/// dynamically linked program only imports it).
fn defines_openssl(path: &Path) -> bool {
    let Ok(data) = fs::read(path) else {
        return false;
    };
    let Ok(file) = object::File::parse(&*data) else {
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
        assert!(!defines_openssl(&me));
        assert!(is_executable(&me));
        assert!(!is_executable(Path::new("/usr/lib/libssl.so.3")));
    }

    #[test]
    fn the_system_libssl_defines_openssl() {
        let libs = system_libssl();
        assert!(!libs.is_empty(), "libssl is installed (curl depends on it)");
        for lib in &libs {
            assert!(defines_openssl(lib), "{}", lib.display());
        }
    }
}
