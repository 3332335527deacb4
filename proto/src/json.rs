//! The JSON object of an event (DESIGN.md §3): field names follow Qtap's
//! `--bpf-trace` output. Optional fields appear only when set, except
//! `conn_info`, which socket events always carry (null for a file or pipe).

use base64::{engine::general_purpose::STANDARD, Engine};
use serde::{Serialize, Serializer};
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

/// The JSON object of an event, borrowed from it. Fields are in
/// alphabetical order, the order of the object's keys; `None` fields are
/// left out.
#[derive(Serialize)]
struct Fields<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    app_protocol: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<i64>,
    caller: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    child_pid: Option<u32>,
    comm: &'a str,
    #[serde(skip_serializing_if = "ConnField::is_absent")]
    conn_info: ConnField<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    direction: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    exe: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fd: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    filename: Option<&'a str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    host: &'a str,
    msg: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_fd: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    open: Option<bool>,
    #[serde(skip_serializing_if = "<[u8]>::is_empty", serialize_with = "base64")]
    payload: &'a [u8],
    /// Only `true` is shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    peek: Option<bool>,
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ret: Option<i64>,
    /// With `session` only: events printed by `--bpf-trace` have neither.
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ssl: Option<bool>,
    tid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_version: Option<&'a str>,
    ts: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
}

/// `conn_info` is absent from events that are not about an fd, and `null`
/// for an fd that is not a network socket.
enum ConnField<'a> {
    Absent,
    Null,
    Conn(Conn<'a>),
}

impl ConnField<'_> {
    fn is_absent(&self) -> bool {
        matches!(self, ConnField::Absent)
    }
}

impl Serialize for ConnField<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ConnField::Conn(conn) => conn.serialize(s),
            ConnField::Absent | ConnField::Null => s.serialize_none(),
        }
    }
}

/// `conn_info`, keys in alphabetical order.
#[derive(Serialize)]
struct Conn<'a> {
    family: &'a str,
    local: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_uid: Option<u32>,
    remote: Option<&'a str>,
    role: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
}

fn base64<S: Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&STANDARD.encode(bytes))
}

impl<'a> Fields<'a> {
    fn of(e: &EventView<'a>) -> Fields<'a> {
        let session = (!e.session.is_empty()).then_some(e.session);
        Fields {
            app_protocol: e.app_protocol,
            bytes: e.bytes,
            caller: e.caller,
            child_pid: e.child_pid,
            comm: e.comm,
            conn_info: match (is_socket_msg(e.msg), e.conn_info) {
                (false, _) => ConnField::Absent,
                (true, None) => ConnField::Null,
                (true, Some(c)) => ConnField::Conn(Conn::of(c)),
            },
            direction: e.direction,
            error: e.error,
            exe: e.exe,
            fd: e.fd,
            filename: e.filename,
            cgroup: e.cgroup,
            cgroup_id: (e.cgroup_id != 0).then_some(e.cgroup_id),
            container_id: e.container_id,
            pod_uid: e.pod_uid,
            unit: e.unit,
            host: e.host,
            msg: e.msg,
            new_fd: e.new_fd,
            open: e.open,
            payload: e.payload,
            peek: e.peek.then_some(true),
            pid: e.pid,
            protocol: e.protocol,
            ret: e.ret,
            seq: session.map(|_| e.seq),
            session,
            ssl: e.ssl,
            tid: e.tid,
            tls_version: e.tls_version,
            ts: e.ts,
        }
    }
}

impl<'a> Conn<'a> {
    fn of(c: &'a ConnInfo) -> Conn<'a> {
        Conn {
            family: &c.family,
            local: c.local.as_deref(),
            peer_pid: c.peer_pid,
            peer_uid: c.peer_uid,
            remote: c.remote.as_deref(),
            role: &c.role,
            kind: &c.r#type,
        }
    }
}

/// `conn_info` as JSON.
#[must_use]
pub fn conn_info(conn: &ConnInfo) -> Value {
    serde_json::to_value(Conn::of(conn)).unwrap_or(Value::Null)
}

/// The event as one JSON object.
#[must_use]
pub fn event(e: &Event) -> Value {
    serde_json::to_value(Fields::of(&e.view())).unwrap_or(Value::Null)
}

/// Writes the event as one line of JSON (the object of [`event`]), without
/// building it first.
pub fn write_line(out: &mut impl std::io::Write, e: &Event) -> std::io::Result<()> {
    write_view_line(out, &e.view())
}

/// [`write_line`] of a borrowed event.
pub fn write_view_line(out: &mut impl std::io::Write, e: &EventView<'_>) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, &Fields::of(e))?;
    out.write_all(b"\n")
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
