//! Renderers: each turns events into lines on stdout.

pub mod console;
pub mod flows;
pub mod json;
pub mod pcapng;

use std::io;

use qtap_proto::{v1::Event, view::EventView};

use clap::ValueEnum;

/// `--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Console,
    Json,
}

/// Several renderers fed the same events (`--pcapng FILE` beside the
/// console or JSON lines).
pub struct Tee(pub Vec<Box<dyn Render>>);

impl Render for Tee {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|r| r.event(event))
    }

    fn view(&mut self, event: &EventView<'_>) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|r| r.view(event))
    }

    fn lost(&mut self, count: u64, meaning: &str) {
        for r in &mut self.0 {
            r.lost(count, meaning);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|r| r.flush())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|r| r.finish())
    }
}

/// `--group-by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GroupBy {
    /// One flow per process and file descriptor.
    Fd,
}

/// One way of showing events. Output is buffered: `flush` after each
/// message from qtapd, so a batch costs one write, a lone event shows at once.
pub trait Render {
    /// Shows one event. An error means stdout is gone.
    fn event(&mut self, event: &Event) -> io::Result<()>;

    /// Shows one event read in place (from a compact batch); a renderer
    /// that can print it without owning it says so by overriding this.
    fn view(&mut self, event: &EventView<'_>) -> io::Result<()> {
        self.event(&event.to_event())
    }

    /// qtapd reported `count` events lost (`meaning`: where and why); the
    /// follow loop has told the user on stderr already.
    fn lost(&mut self, _count: u64, _meaning: &str) {}

    /// Writes out what is buffered.
    fn flush(&mut self) -> io::Result<()>;

    /// Called once when the stream ends.
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Stdout with a buffer of our own: its line buffering would cost a write
/// per event.
fn stdout() -> io::BufWriter<io::Stdout> {
    io::BufWriter::with_capacity(64 * 1024, io::stdout())
}

/// `2026-11-27T06:42:40.145840716Z` → `06:42:40.145840`.
fn short_time(ts: &str) -> &str {
    ts.get(11..26).unwrap_or(ts)
}

/// `curl[23190]`: the exe's file name (or the comm) and the pid.
fn process(e: &Event) -> String {
    let exe = e
        .exe
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(&e.comm);
    format!("{}[{}]", terminal_safe(exe), e.pid)
}

/// A string from a traced process or another user (an exe path, a task
/// name, a session name) made safe for a terminal: control characters
/// (escape sequences, carriage returns, newlines that would fake a line)
/// and backslashes written as strace writes them (`\n`, `\x1b`,
/// `\u{202e}`), everything else as is. JSON output needs none of this.
#[must_use]
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write;
    // Bidirectional overrides and isolates reorder what a terminal shows.
    let unsafe_char = |c: char| {
        c.is_control()
            || c == '\\'
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x100 && unsafe_char(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// What the event is, short: `writev`, `SSL_write`, `exec`; derived
/// events (`protocol/detected`, `process_data (…)`) keep their whole name.
fn what(e: &Event) -> &str {
    ["syscall/", "process/"]
        .iter()
        .chain(&qtap_proto::TLS_LIBRARY_PREFIXES)
        .find_map(|prefix| e.msg.strip_prefix(prefix))
        .unwrap_or(&e.msg)
}

/// A captured payload as strace's `-s` shows it: quoted, printable ASCII
/// as is, `\r \n \t \" \\` escaped, other bytes as `\xNN`, and `...` when
/// the call moved more than was captured.
fn escaped(payload: &[u8], moved: Option<i64>) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(payload.len() + 8);
    out.push('"');
    for &b in payload {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out.push('"');
    if moved.is_some_and(|m| m > payload.len() as i64) {
        out.push_str("...");
    }
    out
}

/// `←` ingress, `→` egress, `·` neither.
fn arrow(direction: Option<u32>) -> &'static str {
    match direction {
        Some(0) => "←",
        Some(1) => "→",
        _ => "·",
    }
}

/// The renderer for `--output` and `--group-by`.
#[must_use]
pub fn new(output: Output, group_by: Option<GroupBy>) -> Box<dyn Render> {
    if group_by == Some(GroupBy::Fd) {
        return Box::new(flows::Flows::new(stdout()));
    }
    match output {
        Output::Console => Box::new(console::Console::stdout()),
        Output::Json => Box::new(json::Json::new(stdout())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_strings_cannot_drive_the_terminal() {
        assert!(matches!(
            terminal_safe("/usr/bin/curl"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            terminal_safe("evil\x1b[2J\rs9 root\n"),
            "evil\\x1b[2J\\rs9 root\\n"
        );
        assert_eq!(
            terminal_safe("a\\b\u{202e}c\u{9b}"),
            "a\\\\b\\u{202e}c\\x9b"
        );
        assert_eq!(terminal_safe("café"), "café");
    }

    #[test]
    fn the_console_escapes_exe_and_exec_filename() {
        let e = Event {
            msg: "process/exec".into(),
            exe: "/tmp/\x1b]0;pwned\x07x".into(),
            filename: Some("/tmp/a\nFAKE LINE".into()),
            pid: 7,
            ..Event::default()
        };
        let mut out = Vec::new();
        let mut console = console::Console::plain(&mut out);
        console.event(&e).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text}");
        assert!(text.contains("\\x1b]0;pwned\\x07x[7]"), "{text}");
        assert!(text.contains("/tmp/a\\nFAKE LINE"), "{text}");
    }
}
