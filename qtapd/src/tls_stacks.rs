//! Which TLS stacks a process carries, and whether qtap sees their
//! plaintext: what `qtapctl explain PID` shows. Read from the files the
//! process maps (by name) and from its executable (by its symbols and
//! sections), with the care [`elf::open_trusted`] takes; never from the
//! process's memory.

use std::path::Path;

use qtap_proto::v1::TlsStack;

use crate::{
    elf,
    gotls::{self, NotProbed},
    openssl_search::{self, NotFound},
    procfs,
};

/// Shared libraries that carry a TLS stack, by file-name prefix.
const LIBRARIES: &[(&str, &str, bool, &str)] = &[
    (
        "libssl.so",
        "OpenSSL (shared libssl)",
        true,
        "mod:openssl probes SSL_read/SSL_write and friends in this library; \
         the calls carry the fd the program gave SSL_set_fd",
    ),
    (
        "libgnutls.so",
        "GnuTLS",
        true,
        "mod:gnutls probes gnutls_record_send/gnutls_record_recv in this \
         library; the calls carry the fd the program gave \
         gnutls_transport_set_int/_ptr, or the fd of the socket calls they make",
    ),
    (
        "libnss3.so",
        "NSS",
        false,
        "qtap has no NSS probes (PR_Write/PR_Read): its socket calls show \
         the ciphertext",
    ),
    (
        "libjvm.so",
        "Java (JSSE, in the JVM)",
        false,
        "JSSE is Java code compiled at run time: there is no native function \
         to probe; -Djavax.net.debug=ssl:record:plaintext prints it",
    ),
    (
        "libwolfssl.so",
        "wolfSSL",
        false,
        "qtap has no wolfSSL probes (wolfSSL_write/wolfSSL_read)",
    ),
    (
        "libmbedtls.so",
        "Mbed TLS",
        false,
        "qtap has no Mbed TLS probes (mbedtls_ssl_write/mbedtls_ssl_read)",
    ),
];

/// The TLS stacks of `pid`, and its executable (empty when its link is
/// unreadable: a kernel thread's, or one the kernel hides even from root);
/// `None` when the process is gone.
#[must_use]
pub fn explain(pid: u32) -> Option<(String, Vec<TlsStack>)> {
    let owner = procfs::uid(pid)?;
    let exe = procfs::exe(pid).unwrap_or_default();
    let mut stacks = Vec::new();
    for path in procfs::mapped_files(pid) {
        let shown = shown_path(pid, &path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some((_, stack, seen, detail)) = LIBRARIES.iter().find(|l| name.starts_with(l.0)) {
            stacks.push(TlsStack {
                name: (*stack).into(),
                path: shown,
                version: String::new(),
                plaintext_seen: *seen,
                detail: (*detail).into(),
            });
        } else if !name.contains(".so") {
            stacks.extend(in_executable(&path, shown, owner));
        }
    }
    Some((exe, stacks))
}

/// A path as the process names it (without qtapd's `/proc/<pid>/root`).
fn shown_path(pid: u32, path: &Path) -> String {
    let text = path.to_string_lossy();
    let root = format!("/proc/{pid}/root");
    text.strip_prefix(&root).unwrap_or(&text).to_owned()
}

/// The TLS stacks linked into an executable.
fn in_executable(path: &Path, shown: String, owner: u32) -> Vec<TlsStack> {
    let Some((_, file, _)) = elf::open_trusted(path, owner) else {
        return vec![TlsStack {
            name: "unknown".into(),
            path: shown,
            version: String::new(),
            plaintext_seen: false,
            detail: "not examined: not a regular file of root or the process's owner, \
                     or larger than qtapd reads"
                .into(),
        }];
    };
    let stack = |name: &str, version: String, seen: bool, detail: &str| TlsStack {
        name: name.into(),
        path: shown.clone(),
        version,
        plaintext_seen: seen,
        detail: detail.into(),
    };
    let mut stacks = Vec::new();
    let symbols = elf::tls_symbols(&file);
    let defines = |prefix: &str| symbols.keys().any(|name| name.starts_with(prefix));
    if defines("SSL_") {
        stacks.push(stack(
            "OpenSSL or BoringSSL (linked into the executable)",
            String::new(),
            true,
            "mod:openssl probes its SSL_* functions from the process's exec on; \
             the calls carry the fd the program gave OpenSSL (SSL_set_fd), or, \
             when it hands OpenSSL memory buffers (Node.js), the socket its \
             thread wrote the call's ciphertext to or read it from",
        ));
    }
    if !defines("SSL_") {
        match openssl_search::search(&file) {
            Ok(_) => stacks.push(stack(
                "OpenSSL 3 (linked into the executable, without symbols)",
                String::new(),
                true,
                "mod:openssl probes its SSL_* functions from the process's exec on, \
                 found by the function names OpenSSL 3 puts in its errors",
            )),
            Err(NotFound::NotOpenssl) => {}
            Err(why) => stacks.push(stack(
                if why == NotFound::Boringssl {
                    "BoringSSL (linked into the executable, without symbols)"
                } else {
                    "OpenSSL (linked into the executable, without symbols)"
                },
                String::new(),
                false,
                &format!("no openssl probes: {why}; its socket calls show the ciphertext"),
            )),
        }
    }
    if defines("gnutls_") {
        stacks.push(stack(
            "GnuTLS (linked into the executable)",
            String::new(),
            true,
            "mod:gnutls probes its gnutls_record_* functions from the process's exec on",
        ));
    }
    match gotls::sites(&file) {
        Ok(found) => stacks.push(stack(
            "Go crypto/tls",
            found.version,
            true,
            "mod:gotls probes crypto/tls.(*Conn).Write and Read (at entry and at \
             each RET) from the process's exec on; the calls carry the fd of the \
             net.Conn under the tls.Conn",
        )),
        Err(NotProbed::NotGo | NotProbed::NoCryptoTls(_)) => {}
        Err(why) => stacks.push(stack(
            "Go crypto/tls",
            elf::go_version(&file).unwrap_or_default(),
            false,
            &format!("no gotls probes: {why}; its socket calls show the ciphertext"),
        )),
    }
    if elf::section_contains(&file, ".strtab", b"rustls") {
        stacks.push(stack(
            "rustls",
            String::new(),
            false,
            "rustls is Rust code inlined into the program, with no stable \
             function to probe: its socket calls show the ciphertext",
        ));
    }
    stacks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// qtapd serves mutual TLS with rustls (tonic's `tls-ring`), and links
    /// no OpenSSL: so does this test binary.
    #[test]
    fn qtapd_itself_carries_rustls_and_no_openssl() {
        let (exe, stacks) = explain(std::process::id()).unwrap();
        assert!(exe.contains("qtapd"), "{exe}");
        let names: Vec<&str> = stacks.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"rustls"), "{stacks:?}");
        assert!(
            !names.iter().any(|n| n.starts_with("OpenSSL")),
            "{stacks:?}"
        );
        assert!(stacks.iter().all(|s| !s.plaintext_seen));
        assert!(explain(u32::MAX).is_none(), "no such process");
    }

    #[test]
    fn shown_paths_lose_qtapds_prefix() {
        let p = Path::new("/proc/42/root/usr/lib/libssl.so.3");
        assert_eq!(shown_path(42, p), "/usr/lib/libssl.so.3");
    }
}
