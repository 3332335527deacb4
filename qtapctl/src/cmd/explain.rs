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
    serde_json::json!({ "pid": e.pid, "exe": e.exe, "stacks": stacks })
}

#[cfg(test)]
mod tests {
    use qtap_proto::v1::TlsStack;

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
        };
        let text = screen(&e);
        assert!(!text.contains('\x1b'), "terminal escapes are neutralised");
        assert!(text.contains("\nGo crypto/tls go1.22.2: ciphertext only\n  in     /usr/bin/prog\n  why    no Go probes yet\n"), "{text}");
        assert!(
            text.contains("\nOpenSSL (shared libssl): plaintext seen\n"),
            "{text}"
        );
        let json = explanation_json(&e);
        assert_eq!(json["stacks"][0]["version"], "go1.22.2");
        assert_eq!(json["stacks"][1]["plaintext_seen"], true);
        let none = screen(&Explanation {
            pid: 1,
            exe: "/x".into(),
            stacks: vec![],
        });
        assert!(none.contains("no TLS stack found"), "{none}");
        let kernel_thread = screen(&Explanation {
            pid: 2,
            exe: String::new(),
            stacks: vec![],
        });
        assert!(
            kernel_thread.starts_with("process 2  (executable unreadable"),
            "{kernel_thread}"
        );
    }
}
