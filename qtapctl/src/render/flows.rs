//! `--group-by fd`: events gathered into per-fd flows. A flow runs from
//! the fd's first event (accept, connect, socket, or the first read or
//! write seen) to its close, and is printed when it closes — its calls and
//! the totals in and out (and the plaintext in and out, for a TLS fd whose
//! `SSL_*` calls were traced). Flows still open when `follow` ends are
//! printed then, marked open. Process events are printed as they come.

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use qtap_proto::v1::Event;

use super::Render;

#[derive(Default)]
struct Flow {
    title: String,
    calls: Vec<String>,
    bytes_in: i64,
    bytes_out: i64,
    plain_in: i64,
    plain_out: i64,
}

pub struct Flows<W: Write> {
    out: W,
    /// By (daemon, pid, fd): two daemons may report the same process.
    open: BTreeMap<(String, u32, i32), Flow>,
}

impl<W: Write> Flows<W> {
    pub fn new(out: W) -> Flows<W> {
        Flows {
            out,
            open: BTreeMap::new(),
        }
    }

    fn print(&mut self, flow: &Flow, state: &str) -> io::Result<()> {
        writeln!(self.out, "{}{state}", flow.title)?;
        for call in &flow.calls {
            writeln!(self.out, "  {call}")?;
        }
        let plaintext = if flow.plain_in + flow.plain_out > 0 {
            format!(
                " (plaintext via openssl: in {}B, out {}B)",
                flow.plain_in, flow.plain_out
            )
        } else {
            String::new()
        };
        writeln!(
            self.out,
            "  = in {}B, out {}B{plaintext}, {} calls\n",
            flow.bytes_in,
            flow.bytes_out,
            flow.calls.len()
        )
    }
}

fn title(e: &Event, fd: i32) -> String {
    let conn = match &e.conn_info {
        Some(c) => format!(
            "{} {} {} -> {}",
            c.r#type,
            c.role,
            c.local.as_deref().unwrap_or("?"),
            c.remote.as_deref().unwrap_or("?")
        ),
        None => "(not a socket)".into(),
    };
    format!("{} fd {fd}  {conn}", super::process(e))
}

fn call_line(e: &Event) -> String {
    let time = super::short_time(&e.ts);
    let arrow = super::arrow(e.direction);
    let what = super::what(e);
    let amount = match (&e.error, e.bytes) {
        (Some(error), _) => error.clone(),
        (None, Some(bytes)) => format!("{bytes}B"),
        (None, None) => e.new_fd.map(|fd| format!("fd {fd}")).unwrap_or_default(),
    };
    format!("{time} {arrow} {what} {amount}")
        .trim_end()
        .to_owned()
}

impl<W: Write> Render for Flows<W> {
    fn event(&mut self, e: &Event) -> io::Result<()> {
        let Some(fd) = e.fd.filter(|_| qtap_proto::json::is_socket_event(e)) else {
            return writeln!(
                self.out,
                "{} {}",
                e.msg,
                super::terminal_safe(e.filename.as_deref().unwrap_or(&e.exe))
            );
        };
        // An accept opens a flow for the fd it returns.
        if let Some(new_fd) = e.new_fd {
            let flow = self
                .open
                .entry((e.host.clone(), e.pid, new_fd))
                .or_default();
            flow.title = title(e, new_fd);
            flow.calls
                .push(format!("{} (accepted on fd {fd})", call_line(e)));
            return Ok(());
        }
        let flow = self.open.entry((e.host.clone(), e.pid, fd)).or_default();
        if flow.title.is_empty() || (flow.title.contains('?') && e.conn_info.is_some()) {
            flow.title = title(e, fd);
        }
        flow.calls.push(call_line(e));
        let (bytes_in, bytes_out) = if e.msg.starts_with("syscall/") {
            (&mut flow.bytes_in, &mut flow.bytes_out)
        } else if qtap_proto::is_tls_library_msg(&e.msg) {
            (&mut flow.plain_in, &mut flow.plain_out)
        } else {
            // Derived events repeat a call's bytes.
            return Ok(());
        };
        match (e.direction, e.bytes) {
            (Some(0), Some(b)) if b > 0 && !e.peek => *bytes_in += b,
            (Some(1), Some(b)) if b > 0 => *bytes_out += b,
            _ => {}
        }
        if e.msg == "syscall/close" {
            if let Some(flow) = self.open.remove(&(e.host.clone(), e.pid, fd)) {
                self.print(&flow, "")?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn finish(&mut self) -> io::Result<()> {
        for flow in std::mem::take(&mut self.open).into_values() {
            self.print(&flow, "  (still open)")?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::console::tests::{golden, sample};

    #[test]
    fn golden_flows() {
        let mut out = Vec::new();
        let mut flows = Flows::new(&mut out);
        for event in sample() {
            flows.event(&event).unwrap();
        }
        flows.finish().unwrap();
        golden("flows.golden", &String::from_utf8(out).unwrap());
    }
}
