//! The JSON object of an event (DESIGN.md §3): field names follow Qtap's
//! `--bpf-trace` output. Optional fields appear only when set, except
//! `conn_info`, which socket events always carry (null for a file or pipe).

use base64::{engine::general_purpose::STANDARD, Engine};
use serde_json::{json, Map, Value};

use crate::v1::{ConnInfo, Event};

/// Whether the event is about an fd (and so always has `conn_info`):
/// syscalls, TLS library calls, protocol detections and data decisions.
#[must_use]
pub fn is_socket_event(event: &Event) -> bool {
    ["syscall/", "openssl/", "protocol/", "process_data"]
        .iter()
        .any(|prefix| event.msg.starts_with(prefix))
}

/// `conn_info` as JSON.
#[must_use]
pub fn conn_info(conn: &ConnInfo) -> Value {
    json!({
        "family": conn.family,
        "type": conn.r#type,
        "role": conn.role,
        "local": conn.local,
        "remote": conn.remote,
    })
}

/// The event as one JSON object.
#[must_use]
pub fn event(e: &Event) -> Value {
    let mut m = Map::new();
    m.insert("ts".into(), e.ts.clone().into());
    m.insert("msg".into(), e.msg.clone().into());
    m.insert("caller".into(), e.caller.clone().into());
    m.insert("pid".into(), e.pid.into());
    m.insert("tid".into(), e.tid.into());
    m.insert("exe".into(), e.exe.clone().into());
    m.insert("comm".into(), e.comm.clone().into());
    let mut opt = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            m.insert(key.into(), v);
        }
    };
    opt("fd", e.fd.map(Value::from));
    opt("new_fd", e.new_fd.map(Value::from));
    opt("direction", e.direction.map(Value::from));
    opt("bytes", e.bytes.map(Value::from));
    opt("ret", e.ret.map(Value::from));
    opt("error", e.error.clone().map(Value::from));
    opt("peek", e.peek.then_some(Value::Bool(true)));
    opt("ssl", e.ssl.map(Value::from));
    opt("protocol", e.protocol.clone().map(Value::from));
    opt("tls_version", e.tls_version.clone().map(Value::from));
    opt("app_protocol", e.app_protocol.clone().map(Value::from));
    opt("open", e.open.map(Value::from));
    if is_socket_event(e) {
        m.insert(
            "conn_info".into(),
            e.conn_info.as_ref().map_or(Value::Null, conn_info),
        );
    }
    let mut opt = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            m.insert(key.into(), v);
        }
    };
    opt(
        "payload",
        (!e.payload.is_empty()).then(|| STANDARD.encode(&e.payload).into()),
    );
    opt("filename", e.filename.clone().map(Value::from));
    opt("child_pid", e.child_pid.map(Value::from));
    if !e.session.is_empty() {
        m.insert("session".into(), e.session.clone().into());
        m.insert("seq".into(), e.seq.into());
    }
    Value::Object(m)
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
}
