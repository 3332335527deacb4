//! The JSON object of an event (DESIGN.md §3): field names follow Qtap's
//! `--bpf-trace` output. Optional fields appear only when set, except
//! `conn_info`, which socket events always carry (null for a file or pipe).

use base64::{engine::general_purpose::STANDARD, Engine};
use serde_json::Value;

use crate::{
    v1::{ConnInfo, Event},
    view::EventView,
};

/// Whether the event is about an fd (and so always has `conn_info`):
/// syscalls, TLS library calls, protocol detections and data decisions.
#[must_use]
pub fn is_socket_event(event: &Event) -> bool {
    is_socket_msg(&event.msg)
}

fn is_socket_msg(msg: &str) -> bool {
    crate::is_tls_library_msg(msg)
        || ["syscall/", "protocol/", "process_data"]
            .iter()
            .any(|prefix| msg.starts_with(prefix))
}

/// `,"name":`, the way each field of a line begins.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":").as_bytes()
    };
}

/// One JSON object, written by hand into a buffer: keys in alphabetical
/// order, `None` fields left out, strings escaped as `serde_json` escapes
/// them (the object parses back to [`event`]'s, and prints back the same).
/// Each field is appended with its key's comma (the first comma becomes
/// the `{`), and a string with nothing to escape is copied whole: serde's
/// per-character escaping of every key and value was a quarter of a JSON
/// follower's time.
struct Object<'b> {
    buf: &'b mut Vec<u8>,
    /// Where the object starts in `buf`.
    start: usize,
}

// Forced inline: each key is then a constant the compiler copies with a
// few stores. Left to itself it kept these calls, and every key went
// through `memcpy` (13 % of a JSON line's time, criterion `JSON line`).
#[allow(clippy::inline_always)]
impl<'b> Object<'b> {
    fn new(buf: &'b mut Vec<u8>) -> Object<'b> {
        let start = buf.len();
        Object { buf, start }
    }

    #[inline(always)]
    fn str(&mut self, key: &[u8], value: &str) {
        self.buf.extend_from_slice(key);
        string(self.buf, value);
    }

    #[inline(always)]
    fn opt_str(&mut self, key: &[u8], value: Option<&str>) {
        if let Some(value) = value {
            self.str(key, value);
        }
    }

    #[inline(always)]
    fn int(&mut self, key: &[u8], value: impl itoa::Integer) {
        self.buf.extend_from_slice(key);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    #[inline(always)]
    fn opt_int(&mut self, key: &[u8], value: Option<impl itoa::Integer>) {
        if let Some(value) = value {
            self.int(key, value);
        }
    }

    #[inline(always)]
    fn opt_bool(&mut self, key: &[u8], value: Option<bool>) {
        if let Some(value) = value {
            self.buf.extend_from_slice(key);
            self.buf
                .extend_from_slice(if value { b"true" } else { b"false" });
        }
    }

    /// `value`, or `null`.
    #[inline(always)]
    fn str_or_null(&mut self, key: &[u8], value: Option<&str>) {
        if let Some(value) = value {
            self.str(key, value);
        } else {
            self.buf.extend_from_slice(key);
            self.buf.extend_from_slice(b"null");
        }
    }

    fn end(self) {
        if self.buf.len() == self.start {
            self.buf.push(b'{');
        } else {
            self.buf[self.start] = b'{';
        }
        self.buf.push(b'}');
    }
}

/// A JSON string: copied whole between quotes when nothing in it needs
/// escaping (no `"`, `\\` or control character), else escaped by
/// `serde_json`; both ways give serde's bytes.
#[allow(clippy::inline_always)] // See `Object`.
#[inline(always)]
fn string(buf: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(buf, s).expect("writing to a Vec does not fail");
    } else {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    }
}

/// Whether `s` holds a `"`, a `\\` or a control character: eight bytes
/// a step (SWAR: a byte of a word is flagged when it is below 0x20 or
/// equal to either), then the rest one by one. The byte-by-byte check was
/// a fifth of a JSON follower's time; a whole-string fold, which the
/// compiler vectorizes, was slower still on strings this short.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte of the result has its high bit set where `w`'s byte is zero
    // (and maybe past one that is: enough to tell whether any is).
    let zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let (words, rest) = s.as_chunks::<8>();
    words.iter().any(|word| {
        let w = u64::from_ne_bytes(*word);
        // Below 0x20: the high bit is clear and subtracting 0x20 borrows.
        let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        control | zero(w ^ (ONES * u64::from(b'"'))) | zero(w ^ (ONES * u64::from(b'\\'))) != 0
    }) || rest.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// `conn_info`'s object (`local` and `remote` are `null` when unknown).
pub(crate) fn push_conn(buf: &mut Vec<u8>, c: &ConnInfo) {
    let mut o = Object::new(buf);
    o.str(key!("family"), &c.family);
    o.str_or_null(key!("local"), c.local.as_deref());
    o.opt_int(key!("peer_pid"), c.peer_pid);
    o.opt_int(key!("peer_uid"), c.peer_uid);
    o.str_or_null(key!("remote"), c.remote.as_deref());
    o.str(key!("role"), &c.role);
    o.str(key!("type"), &c.r#type);
    o.end();
}

/// Enough for the line of a socket event with its connection.
const LINE_BYTES: usize = 512;

/// Appends the JSON object of `e` (without a newline) to `buf`.
fn push_object(buf: &mut Vec<u8>, e: &EventView<'_>) {
    // Room for a typical line at once, not grown piece by piece.
    buf.reserve(LINE_BYTES);
    let mut o = Object::new(buf);
    let session = (!e.session.is_empty()).then_some(e.session);
    o.opt_str(key!("app_protocol"), e.app_protocol);
    o.opt_int(key!("bytes"), e.bytes);
    o.str(key!("caller"), e.caller);
    o.opt_str(key!("cgroup"), e.cgroup);
    o.opt_int(key!("cgroup_id"), (e.cgroup_id != 0).then_some(e.cgroup_id));
    o.opt_int(key!("child_pid"), e.child_pid);
    o.str(key!("comm"), e.comm);
    if is_socket_msg(e.msg) {
        o.buf.extend_from_slice(key!("conn_info"));
        match (e.conn_json, e.conn_info) {
            (Some(json), _) => o.buf.extend_from_slice(json.as_bytes()),
            (None, Some(conn)) => push_conn(o.buf, conn),
            (None, None) => o.buf.extend_from_slice(b"null"),
        }
    }
    o.opt_str(key!("container_id"), e.container_id);
    o.opt_int(key!("direction"), e.direction);
    o.opt_str(key!("error"), e.error);
    o.str(key!("exe"), e.exe);
    o.opt_int(key!("fd"), e.fd);
    o.opt_str(key!("filename"), e.filename);
    o.opt_str(key!("host"), (!e.host.is_empty()).then_some(e.host));
    o.str(key!("msg"), e.msg);
    o.opt_int(key!("new_fd"), e.new_fd);
    o.opt_bool(key!("open"), e.open);
    if !e.payload.is_empty() {
        // Base64 needs no escaping.
        o.buf.extend_from_slice(key!("payload"));
        o.buf.push(b'"');
        let at = o.buf.len();
        o.buf.resize(at + e.payload.len().div_ceil(3) * 4, 0);
        let written = STANDARD
            .encode_slice(e.payload, &mut o.buf[at..])
            .expect("the buffer was sized for the encoding");
        o.buf.truncate(at + written);
        o.buf.push(b'"');
    }
    // Only `true` is shown.
    o.opt_bool(key!("peek"), e.peek.then_some(true));
    o.int(key!("pid"), e.pid);
    o.opt_str(key!("pod_uid"), e.pod_uid);
    o.opt_str(key!("protocol"), e.protocol);
    o.opt_int(key!("ret"), e.ret);
    // With `session` only: events printed by `--bpf-trace` have neither.
    o.opt_int(key!("seq"), session.map(|_| e.seq));
    o.opt_str(key!("session"), session);
    o.opt_bool(key!("ssl"), e.ssl);
    o.int(key!("tid"), e.tid);
    o.opt_str(key!("tls_version"), e.tls_version);
    o.str(key!("ts"), e.ts);
    o.opt_str(key!("unit"), e.unit);
    o.end();
}

/// The event as one JSON object.
#[must_use]
pub fn event(e: &Event) -> Value {
    let mut object = Vec::with_capacity(LINE_BYTES);
    push_object(&mut object, &e.view());
    serde_json::from_slice(&object).expect("the object written is JSON")
}

/// Appends the event's line of JSON (the object of [`event`] and a
/// newline) to `buf`, without building the object first.
pub fn push_view_line(buf: &mut Vec<u8>, e: &EventView<'_>) {
    push_object(buf, e);
    buf.push(b'\n');
}

/// Writes the event as one line of JSON ([`push_view_line`]).
pub fn write_line(out: &mut impl std::io::Write, e: &Event) -> std::io::Result<()> {
    let mut line = Vec::with_capacity(LINE_BYTES);
    push_view_line(&mut line, &e.view());
    out.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writev() -> Event {
        Event {
            ts: "2026-11-27T06:00:00.000000001Z".into(),
            msg: "syscall/writev".into(),
            caller: "tracepoint/syscalls/sys_exit_writev".into(),
            pid: 10,
            tid: 11,
            exe: "/usr/sbin/nginx".into(),
            comm: "nginx".into(),
            fd: Some(3),
            direction: Some(1),
            bytes: Some(238),
            ret: Some(238),
            ssl: Some(false),
            protocol: Some("unknown".into()),
            open: Some(true),
            conn_info: Some(ConnInfo {
                family: "inet".into(),
                r#type: "tcp".into(),
                role: "server".into(),
                local: Some("127.0.0.1:8080".into()),
                remote: Some("127.0.0.1:40000".into()),
                ..ConnInfo::default()
            }),
            ..Event::default()
        }
    }

    #[test]
    fn socket_event_fields() {
        let v = event(&writev());
        assert_eq!(v["msg"], "syscall/writev");
        assert_eq!(
            (v["pid"].as_u64(), v["fd"].as_i64(), v["bytes"].as_i64()),
            (Some(10), Some(3), Some(238))
        );
        assert_eq!(v["conn_info"]["type"], "tcp");
        assert_eq!(v["conn_info"]["remote"], "127.0.0.1:40000");
        assert_eq!(
            (v["ssl"].as_bool(), v["open"].as_bool()),
            (Some(false), Some(true))
        );
        for absent in ["peek", "error", "new_fd", "session", "seq", "filename"] {
            assert!(v.get(absent).is_none(), "{absent} in {v}");
        }
    }

    #[test]
    fn non_socket_fd_has_null_conn_info_and_process_events_none() {
        let mut e = writev();
        e.conn_info = None;
        e.open = Some(false);
        let v = event(&e);
        assert!(v.as_object().unwrap().contains_key("conn_info") && v["conn_info"].is_null());
        let exec = Event {
            msg: "process/exec".into(),
            filename: Some("/usr/bin/curl".into()),
            ..Event::default()
        };
        let v = event(&exec);
        assert!(v.get("conn_info").is_none());
        assert_eq!(v["filename"], "/usr/bin/curl");
    }

    #[test]
    fn session_and_seq_when_delivered_for_a_session() {
        let e = Event {
            session: "s1".into(),
            seq: 7,
            ..writev()
        };
        let v = event(&e);
        assert_eq!(
            (v["session"].as_str(), v["seq"].as_u64()),
            (Some("s1"), Some(7))
        );
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in [
            "plain",
            "",
            "quote\"d",
            "back\\slash",
            "nl\n\r\t",
            "\x01ctl\x1f",
            "del\x7f",
            "ünïcode ✓",
            "\u{2028}",
        ]
        .into_iter()
        .map(String::from)
        // Longer than a vector step, the find at either end or between.
        .chain(["\"", "\\", "\n", "\x1f"].into_iter().flat_map(|c| {
            let pad = "a".repeat(70);
            [
                format!("{c}{pad}"),
                format!("{pad}{c}{pad}"),
                format!("{pad}{c}"),
            ]
        }))
        .chain(["b".repeat(100), "ü✓\u{7f}".repeat(20)])
        {
            let s = s.as_str();
            let mut ours = Vec::new();
            string(&mut ours, s);
            assert_eq!(ours, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    /// Strings a traced process chooses (its exe path, a peer's unix
    /// socket name) come back whole from the line.
    #[test]
    fn odd_strings_survive_the_line() {
        let mut e = writev();
        e.exe = "/tmp/a \"b\"\\c\n".into();
        e.comm = "\x1b[2J".into();
        e.conn_info.as_mut().unwrap().remote = Some("@\u{0}sock\"".into());
        let v = event(&e);
        assert_eq!(v["exe"], e.exe.as_str());
        assert_eq!(v["comm"], e.comm.as_str());
        assert_eq!(v["conn_info"]["remote"], "@\u{0}sock\"");
        assert_eq!(v["conn_info"]["local"], "127.0.0.1:8080");
        e.conn_info.as_mut().unwrap().local = None;
        assert!(event(&e)["conn_info"]["local"].is_null());
    }

    #[test]
    fn the_line_is_the_object() {
        let mut e = writev();
        e.payload = b"GET /".to_vec();
        e.peek = true;
        e.session = "s2".into();
        let mut line = Vec::new();
        write_line(&mut line, &e).unwrap();
        assert_eq!(String::from_utf8(line).unwrap(), format!("{}\n", event(&e)));
        assert_eq!(event(&e)["payload"], "R0VUIC8=");
    }
}
