//! A borrowed event: the fields of `Event`, read in place from an `Event`
//! message or from a compact record and its stream's definitions
//! (`compact::Decoder::view`), so a renderer that reads it (the JSON
//! line) costs no copy of any string.

use crate::v1::{ConnInfo, Event};

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EventView<'a> {
    pub ts: &'a str,
    pub msg: &'a str,
    pub caller: &'a str,
    pub pid: u32,
    pub tid: u32,
    pub exe: &'a str,
    pub comm: &'a str,
    pub fd: Option<i32>,
    pub new_fd: Option<i32>,
    pub direction: Option<u32>,
    pub bytes: Option<i64>,
    pub ret: Option<i64>,
    pub error: Option<&'a str>,
    pub peek: bool,
    pub ssl: Option<bool>,
    pub protocol: Option<&'a str>,
    pub open: Option<bool>,
    pub conn_info: Option<&'a ConnInfo>,
    /// `conn_info`'s JSON object, when the stream keeps it made (a compact
    /// stream makes it once per connection); else it is made per line.
    pub conn_json: Option<&'a str>,
    pub filename: Option<&'a str>,
    pub child_pid: Option<u32>,
    pub session: &'a str,
    pub seq: u64,
    pub tls_version: Option<&'a str>,
    pub app_protocol: Option<&'a str>,
    pub payload: &'a [u8],
    pub host: &'a str,
    pub cgroup_id: u64,
    pub cgroup: Option<&'a str>,
    pub container_id: Option<&'a str>,
    pub pod_uid: Option<&'a str>,
    pub unit: Option<&'a str>,
}

impl Event {
    /// This message, borrowed.
    #[must_use]
    pub fn view(&self) -> EventView<'_> {
        EventView {
            ts: &self.ts,
            msg: &self.msg,
            caller: &self.caller,
            pid: self.pid,
            tid: self.tid,
            exe: &self.exe,
            comm: &self.comm,
            fd: self.fd,
            new_fd: self.new_fd,
            direction: self.direction,
            bytes: self.bytes,
            ret: self.ret,
            error: self.error.as_deref(),
            peek: self.peek,
            ssl: self.ssl,
            protocol: self.protocol.as_deref(),
            open: self.open,
            conn_info: self.conn_info.as_ref(),
            conn_json: None,
            filename: self.filename.as_deref(),
            child_pid: self.child_pid,
            session: &self.session,
            seq: self.seq,
            tls_version: self.tls_version.as_deref(),
            app_protocol: self.app_protocol.as_deref(),
            payload: &self.payload,
            host: &self.host,
            cgroup_id: self.cgroup_id,
            cgroup: self.cgroup.as_deref(),
            container_id: self.container_id.as_deref(),
            pod_uid: self.pod_uid.as_deref(),
            unit: self.unit.as_deref(),
        }
    }
}

impl EventView<'_> {
    /// The event as an owned message.
    #[must_use]
    pub fn to_event(&self) -> Event {
        let owned = |s: Option<&str>| s.map(str::to_owned);
        Event {
            ts: self.ts.into(),
            msg: self.msg.into(),
            caller: self.caller.into(),
            pid: self.pid,
            tid: self.tid,
            exe: self.exe.into(),
            comm: self.comm.into(),
            fd: self.fd,
            new_fd: self.new_fd,
            direction: self.direction,
            bytes: self.bytes,
            ret: self.ret,
            error: owned(self.error),
            peek: self.peek,
            ssl: self.ssl,
            protocol: owned(self.protocol),
            open: self.open,
            conn_info: self.conn_info.cloned(),
            filename: owned(self.filename),
            child_pid: self.child_pid,
            session: self.session.into(),
            seq: self.seq,
            tls_version: owned(self.tls_version),
            app_protocol: owned(self.app_protocol),
            payload: self.payload.to_vec(),
            host: self.host.into(),
            cgroup_id: self.cgroup_id,
            cgroup: owned(self.cgroup),
            container_id: owned(self.container_id),
            pod_uid: owned(self.pod_uid),
            unit: owned(self.unit),
        }
    }
}
