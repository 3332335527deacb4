//! `--output console`: one aligned line per event — time, process, fd,
//! direction arrow, syscall, bytes (or the error), TLS, protocol and the
//! remote address. Coloured when stdout is a terminal, plain when piped.

use std::io::{self, IsTerminal, Write};

use qtap_proto::v1::Event;

use super::Render;

pub struct Console<W: Write> {
    out: W,
    colour: bool,
    header: bool,
}

impl Console<io::BufWriter<io::Stdout>> {
    #[must_use]
    pub fn stdout() -> Console<io::BufWriter<io::Stdout>> {
        let colour = io::stdout().is_terminal();
        Console {
            out: super::stdout(),
            colour,
            header: colour,
        }
    }
}

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const CYAN: &str = "\x1b[36m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

impl<W: Write> Console<W> {
    /// Plain lines (no colour, no header) into `out`.
    pub fn plain(out: W) -> Console<W> {
        Console {
            out,
            colour: false,
            header: false,
        }
    }

    fn paint(&self, colour: &str, text: &str) -> String {
        if self.colour {
            format!("{colour}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    /// The line for one event, without colour codes' width.
    fn line(&self, e: &Event) -> String {
        let time = super::short_time(&e.ts);
        let process = super::process(e);
        let fd = e.fd.map_or_else(|| "-".into(), |fd| fd.to_string());
        let arrow = super::arrow(e.direction);
        let arrow_colour = match e.direction {
            Some(0) => CYAN,
            Some(1) => GREEN,
            _ => DIM,
        };
        let what = super::what(e);
        let amount = match (&e.error, e.bytes, e.ret) {
            (Some(error), _, _) => self.paint(RED, error),
            (None, Some(bytes), _) => format!("{bytes}B"),
            (None, None, Some(ret)) => format!("={ret}"),
            (None, None, None) => e
                .filename
                .as_deref()
                .map(|f| super::terminal_safe(f).into_owned())
                .or_else(|| e.child_pid.map(|c| format!("child {c}")))
                .unwrap_or_default(),
        };
        let ssl = match e.ssl {
            Some(true) => "tls",
            Some(false) => "-",
            None => "",
        };
        // `tls/http1`: the protocol inside TLS after the fd's.
        let proto = match (&e.protocol, &e.app_protocol) {
            (Some(p), Some(app)) => format!("{p}/{app}"),
            (Some(p), None) => p.clone(),
            (None, _) => String::new(),
        };
        let remote = match &e.conn_info {
            Some(c) => {
                let mut text = c
                    .remote
                    .clone()
                    .or_else(|| c.local.clone().map(|l| format!("local {l}")))
                    .unwrap_or_else(|| {
                        if c.role == "socketpair" {
                            "socketpair".into()
                        } else {
                            c.family.clone()
                        }
                    });
                // A unix peer's process, as SO_PEERCRED tells it.
                if let Some(pid) = c.peer_pid {
                    use std::fmt::Write as _;
                    let _ = write!(text, " (peer pid {pid})");
                }
                text
            }
            None if e.fd.is_some() && qtap_proto::json::is_socket_event(e) => {
                "(not a socket)".into()
            }
            None => String::new(),
        };
        let new_fd = e.new_fd.map(|n| format!(" -> fd {n}")).unwrap_or_default();
        let payload = if e.payload.is_empty() {
            String::new()
        } else {
            format!("  {}", super::escaped(&e.payload, e.bytes))
        };
        // Which daemon, when following several.
        let host = if e.host.is_empty() {
            String::new()
        } else {
            format!("{} ", self.paint(DIM, &e.host))
        };
        let remote = super::terminal_safe(&remote);
        format!(
            "{host}{time}  {process:<22} {fd:>4} {arrow} {what:<11} {amount:>10}  {ssl:<3} {proto:<9} {remote}{new_fd}{payload}",
            arrow = self.paint(arrow_colour, arrow),
        )
    }
}

impl<W: Write> Render for Console<W> {
    fn event(&mut self, e: &Event) -> io::Result<()> {
        if self.header {
            self.header = false;
            let head = format!(
                "{:<15}  {:<22} {:>4} {} {:<11} {:>10}  {:<3} {:<9} {}",
                "TIME", "PROCESS", "FD", " ", "CALL", "BYTES", "TLS", "PROTO", "REMOTE"
            );
            writeln!(self.out, "{}", self.paint(DIM, &head))?;
        }
        let line = self.line(e);
        writeln!(self.out, "{line}")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
pub mod tests {
    use std::{fs, path::PathBuf};

    use qtap_proto::v1::ConnInfo;

    use super::*;

    /// A curl request as qtapd reports it, hand-built.
    #[must_use]
    pub fn sample() -> Vec<Event> {
        let base = Event {
            ts: "2026-11-27T06:42:40.145840716Z".into(),
            caller: "tracepoint/syscalls/sys_exit_sendto".into(),
            pid: 23190,
            tid: 23190,
            exe: "/usr/bin/curl".into(),
            comm: "curl".into(),
            ssl: Some(false),
            protocol: Some("unknown".into()),
            open: Some(true),
            session: "s1".into(),
            ..Event::default()
        };
        let conn = ConnInfo {
            family: "inet".into(),
            r#type: "tcp".into(),
            role: "client".into(),
            local: None,
            remote: Some("127.0.0.1:18080".into()),
            ..ConnInfo::default()
        };
        vec![
            Event {
                msg: "process/exec".into(),
                filename: Some("/usr/bin/curl".into()),
                seq: 1,
                ssl: None,
                protocol: None,
                open: None,
                ..base.clone()
            },
            Event {
                msg: "syscall/connect".into(),
                fd: Some(5),
                ret: Some(-115),
                error: Some("EINPROGRESS".into()),
                conn_info: Some(conn.clone()),
                seq: 2,
                ..base.clone()
            },
            Event {
                msg: "syscall/sendto".into(),
                fd: Some(5),
                direction: Some(1),
                bytes: Some(79),
                ret: Some(79),
                conn_info: Some(conn.clone()),
                seq: 3,
                ..base.clone()
            },
            Event {
                msg: "syscall/recvfrom".into(),
                fd: Some(5),
                direction: Some(0),
                bytes: Some(210),
                ret: Some(210),
                conn_info: Some(conn.clone()),
                seq: 4,
                ..base.clone()
            },
            Event {
                msg: "syscall/write".into(),
                fd: Some(1),
                direction: Some(1),
                bytes: Some(25),
                ret: Some(25),
                open: Some(false),
                seq: 5,
                ..base.clone()
            },
            Event {
                msg: "syscall/close".into(),
                fd: Some(5),
                ret: Some(0),
                conn_info: Some(conn.clone()),
                seq: 6,
                ..base.clone()
            },
        ]
        .into_iter()
        .chain(tls_sample(&base, &conn))
        .collect()
    }

    /// An HTTPS request on fd 6: the ciphertext syscall, the plaintext
    /// `SSL_write`, and the data decision of each.
    fn tls_sample(base: &Event, conn: &ConnInfo) -> Vec<Event> {
        let tls = Event {
            fd: Some(6),
            direction: Some(1),
            ssl: Some(true),
            protocol: Some("tls".into()),
            tls_version: Some("TLS1.0".into()),
            app_protocol: Some("http1".into()),
            conn_info: Some(ConnInfo {
                remote: Some("127.0.0.1:18443".into()),
                ..conn.clone()
            }),
            ..base.clone()
        };
        vec![
            Event {
                msg: "syscall/sendto".into(),
                bytes: Some(109),
                ret: Some(109),
                payload: vec![0x17, 3, 3, 0, 0x68],
                seq: 7,
                ..tls.clone()
            },
            Event {
                msg: "process_data (ciphertext; plaintext via openssl)".into(),
                bytes: Some(109),
                ret: Some(109),
                seq: 8,
                ..tls.clone()
            },
            Event {
                msg: "openssl/SSL_write".into(),
                caller: "uretprobe/SSL_write".into(),
                bytes: Some(87),
                ret: Some(87),
                payload: b"GET /file HTTP/1.1\r\n".to_vec(),
                seq: 9,
                ..tls.clone()
            },
            Event {
                msg: "syscall/close".into(),
                direction: None,
                ret: Some(0),
                seq: 10,
                ..tls
            },
        ]
    }

    /// Compares `actual` with `tests/golden/<name>`; `QTAP_BLESS=1`
    /// rewrites the file instead.
    pub fn golden(name: &str, actual: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        if std::env::var("QTAP_BLESS").as_deref() == Ok("1") {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, actual).unwrap();
            return;
        }
        let expected = fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with QTAP_BLESS=1 to create it)",
                path.display()
            )
        });
        assert_eq!(
            actual, expected,
            "{name} differs; QTAP_BLESS=1 regenerates it after a deliberate change"
        );
    }

    #[test]
    fn golden_console() {
        let mut out = Vec::new();
        let mut console = Console::plain(&mut out);
        for event in sample() {
            console.event(&event).unwrap();
        }
        golden("console.golden", &String::from_utf8(out).unwrap());
    }
}
