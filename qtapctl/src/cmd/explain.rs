//! `qtapctl explain PID`.

use std::fmt::Write;

use qtap_proto::v1::{ExplainProcessRequest, Explanation};
use qtapctl::render::{terminal_safe, Output};

use crate::client;

pub async fn run(conn: &client::Connection, pid: u32, output: Output) -> anyhow::Result<()> {
    let mut client = client::connect(conn).await?;
    let e = client
        .explain_process(ExplainProcessRequest { pid })
        .await?
        .into_inner();
    if output == Output::Json {
        println!("{}", explanation_json(&e));
    } else {
        print!("{}", screen(&e));
    }
    Ok(())
}

/// The console screen: the process, then each stack with its verdict.
fn screen(e: &Explanation) -> String {
    let exe = if e.exe.is_empty() {
        "(executable unreadable: a kernel thread, or hidden by the kernel)".into()
    } else {
        terminal_safe(&e.exe)
    };
    let mut out = format!("process {}  {exe}\n", e.pid);
    if e.stacks.is_empty() {
        out.push_str(
            "no TLS stack found in its executable or libraries: if it speaks TLS, \
             it does so in a way qtap does not recognise (a library loaded later, \
             or a stack compiled in without symbols); its socket calls show \
             the bytes as they are\n",
        );
    }
    for s in &e.stacks {
        let verdict = if s.plaintext_seen {
            "plaintext seen"
        } else {
            "ciphertext only"
        };
        let version = if s.version.is_empty() {
            String::new()
        } else {
            format!(" {}", terminal_safe(&s.version))
        };
        let _ = write!(
            out,
            "\n{}{version}: {verdict}\n  in     {}\n  why    {}\n",
            terminal_safe(&s.name),
            terminal_safe(&s.path),
            terminal_safe(&s.detail),
        );
    }
    out.push_str(&fds_screen(e));
    out
}

/// The fds on which TLS was seen, or why none can be shown.
fn fds_screen(e: &Explanation) -> String {
    if !e.traced {
        return format!(
            "\nfds: not known: no session traces process {} (start one that selects \
             it, e.g. --filter 'pid:{},mod:socket,mod:openssl,mod:gnutls,mod:gotls', to learn which fds \
             carry TLS and whether their plaintext is seen)\n",
            e.pid, e.pid
        );
    }
    if e.tls_fds.is_empty() {
        return "\nfds: no TLS seen on any fd since it was traced\n".into();
    }
    let mut out = String::from("\nfds with TLS:\n");
    for f in &e.tls_fds {
        let remote = if f.remote.is_empty() {
            "peer unknown".into()
        } else {
            terminal_safe(&f.remote)
        };
        let verdict = if f.plaintext_seen {
            "plaintext seen"
        } else {
            "ciphertext only: no TLS library call is bound to it"
        };
        let _ = writeln!(out, "  fd {:<4} {remote:<22} {verdict}", f.fd);
    }
    out
}

fn explanation_json(e: &Explanation) -> serde_json::Value {
    let stacks: Vec<_> = e
        .stacks
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "path": s.path,
                "version": s.version,
                "plaintext_seen": s.plaintext_seen,
                "detail": s.detail,
            })
        })
        .collect();
    let fds: Vec<_> = e
        .tls_fds
        .iter()
        .map(|f| {
            serde_json::json!({
                "fd": f.fd,
                "remote": f.remote,
                "plaintext_seen": f.plaintext_seen,
            })
        })
        .collect();
    serde_json::json!({
        "pid": e.pid,
        "exe": e.exe,
        "stacks": stacks,
        "traced": e.traced,
        "tls_fds": fds,
    })
}

#[cfg(test)]
mod tests {
    use qtap_proto::v1::{TlsFd, TlsStack};

    use super::*;

    #[test]
    fn the_screen_names_each_stack_its_verdict_and_why() {
        let e = Explanation {
            pid: 7,
            exe: "/usr/bin/prog\x1b[2J".into(),
            stacks: vec![
                TlsStack {
                    name: "Go crypto/tls".into(),
                    path: "/usr/bin/prog".into(),
                    version: "go1.22.2".into(),
                    plaintext_seen: false,
                    detail: "no Go probes yet".into(),
                },
                TlsStack {
                    name: "OpenSSL (shared libssl)".into(),
                    path: "/usr/lib/libssl.so.3".into(),
                    version: String::new(),
                    plaintext_seen: true,
                    detail: "probed".into(),
                },
            ],
            traced: true,
            tls_fds: vec![
                TlsFd {
                    fd: 5,
                    remote: "10.0.0.1:443".into(),
                    plaintext_seen: false,
                },
                TlsFd {
                    fd: 7,
                    remote: String::new(),
                    plaintext_seen: true,
                },
            ],
        };
        let text = screen(&e);
        assert!(!text.contains('\x1b'), "terminal escapes are neutralised");
        assert!(text.contains("\nGo crypto/tls go1.22.2: ciphertext only\n  in     /usr/bin/prog\n  why    no Go probes yet\n"), "{text}");
        assert!(
            text.contains("\nOpenSSL (shared libssl): plaintext seen\n"),
            "{text}"
        );
        assert!(
            text.contains("\nfds with TLS:\n  fd 5    10.0.0.1:443           ciphertext only"),
            "{text}"
        );
        assert!(
            text.contains("  fd 7    peer unknown           plaintext seen"),
            "{text}"
        );
        let json = explanation_json(&e);
        assert_eq!(json["tls_fds"][0]["fd"], 5);
        assert_eq!(json["traced"], true);
        assert_eq!(json["stacks"][0]["version"], "go1.22.2");
        assert_eq!(json["stacks"][1]["plaintext_seen"], true);
        let none = screen(&Explanation {
            pid: 1,
            exe: "/x".into(),
            ..Explanation::default()
        });
        assert!(none.contains("no TLS stack found"), "{none}");
        assert!(none.contains("no session traces process 1"), "{none}");
        let kernel_thread = screen(&Explanation {
            pid: 2,
            traced: true,
            ..Explanation::default()
        });
        assert!(
            kernel_thread.contains("no TLS seen on any fd"),
            "{kernel_thread}"
        );
        assert!(
            kernel_thread.starts_with("process 2  (executable unreadable"),
            "{kernel_thread}"
        );
    }
}
