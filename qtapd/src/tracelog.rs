//! The `--bpf-trace` sink: one line per event on stdout, in the encoding
//! of `--log-encoding`, printed when `--log-level` is `info` or more
//! verbose (as Qtap's flag does). Daemon diagnostics go to stderr.

use std::io::{self, Write};

use clap::ValueEnum;
use qtap_proto::{json, v1::Event};

/// `--log-encoding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Encoding {
    /// `ts<TAB>INFO<TAB>caller<TAB>msg<TAB>{fields}`, like zap's console encoder.
    Console,
    /// One JSON object per line, for `jq`.
    Json,
}

/// Writes events to stdout.
pub struct TraceLog {
    encoding: Encoding,
    out: io::Stdout,
}

impl TraceLog {
    #[must_use]
    pub fn new(encoding: Encoding) -> TraceLog {
        TraceLog {
            encoding,
            out: io::stdout(),
        }
    }

    /// Writes one event; an error means stdout is gone (a closed pipe).
    pub fn emit(&mut self, event: &Event) -> io::Result<()> {
        let line = render(self.encoding, event);
        let mut out = self.out.lock();
        out.write_all(line.as_bytes())?;
        out.flush()
    }
}

/// One rendered line, with its newline.
#[must_use]
pub fn render(encoding: Encoding, event: &Event) -> String {
    let mut fields = json::event(event);
    match encoding {
        Encoding::Json => format!("{fields}\n"),
        Encoding::Console => {
            if let Some(map) = fields.as_object_mut() {
                // The fields are JSON's, value for value (`direction` a
                // number, as in every encoding): only the columns move.
                for key in ["ts", "msg", "caller"] {
                    map.remove(key);
                }
            }
            format!(
                "{}\tINFO\t{}\t{}\t{}\n",
                event.ts, event.caller, event.msg, fields
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use qtap_common::Header;
    use qtap_proto::time::Rfc3339;

    use super::*;
    use crate::events::{base, ConnInfo, Text};

    fn event() -> Event {
        let hdr = Header {
            pid: 10,
            tid: 11,
            comm: *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
            ..Header::default()
        };
        let mut e = base(
            &hdr,
            "syscall/writev",
            "tracepoint/syscalls/sys_exit_writev",
            Text::Static("/usr/sbin/nginx"),
        );
        e.fd = Some(3);
        e.direction = Some(1);
        e.bytes = Some(238);
        e.ret = Some(238);
        e.ssl = Some(false);
        e.protocol = Some("unknown");
        e.open = Some(true);
        e.conn_info = Some(Arc::new(ConnInfo {
            family: "inet".into(),
            r#type: "tcp".into(),
            role: "server".into(),
            local: Some("127.0.0.1:8080".into()),
            remote: Some("127.0.0.1:40000".into()),
            ..ConnInfo::default()
        }));
        e.to_wire("", 0, 0, &mut Rfc3339::new())
    }

    #[test]
    fn json_line_is_one_object() {
        let line = render(Encoding::Json, &event());
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (v["exe"].as_str(), v["comm"].as_str()),
            (Some("/usr/sbin/nginx"), Some("nginx"))
        );
        assert_eq!(v["conn_info"]["local"], "127.0.0.1:8080");
    }

    #[test]
    fn console_line_is_zap_like() {
        let line = render(Encoding::Console, &event());
        let cols: Vec<&str> = line.trim_end().split('\t').collect();
        assert_eq!(cols.len(), 5, "{line}");
        assert_eq!(
            &cols[1..4],
            [
                "INFO",
                "tracepoint/syscalls/sys_exit_writev",
                "syscall/writev"
            ]
        );
        let fields: serde_json::Value = serde_json::from_str(cols[4]).unwrap();
        assert_eq!(fields["direction"], 1);
        assert_eq!(fields["fd"], 3);
    }

    #[test]
    fn console_and_json_agree_on_every_field() {
        let event = event();
        let line = render(Encoding::Console, &event);
        let cols: Vec<&str> = line.trim_end().split('\t').collect();
        let mut json: serde_json::Value =
            serde_json::from_str(&render(Encoding::Json, &event)).unwrap();
        let map = json.as_object_mut().unwrap();
        assert_eq!(
            [cols[0], cols[2], cols[3]],
            [&map["ts"], &map["caller"], &map["msg"]].map(|v| v.as_str().unwrap())
        );
        for key in ["ts", "msg", "caller"] {
            map.remove(key);
        }
        let fields: serde_json::Value = serde_json::from_str(cols[4]).unwrap();
        assert_eq!(fields, json);
    }
}
