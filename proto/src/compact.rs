//! The compact form of a follow stream (`CompactBatch`): one fixed-layout
//! [`Record`] per event, its strings and connection named by ids that a
//! `Definition` gives once per stream. qtapd writes it without making an
//! `Event` message per event; [`Decoder`] turns it back into exactly the
//! `Event` messages the plain form would have carried, so every renderer
//! prints the same bytes from either form.
//!
//! Id 0 is no string (an absent optional field, or an empty one) and no
//! connection.

use crate::{
    time::Rfc3339,
    v1::{definition::Value, CompactBatch, ConnInfo, Event},
    view::EventView,
};

/// Bytes of one [`Record`] in `CompactBatch.records`.
pub const RECORD_BYTES: usize = 128;

/// Ids are below this: a sender starts its tables over (`reset`) long
/// before. The receiver keeps its definitions in tables indexed by id.
pub const ID_LIMIT: u32 = 1 << 20;

/// Which optional numbers a record carries (`Record::present`).
pub mod present {
    pub const FD: u16 = 1;
    pub const NEW_FD: u16 = 1 << 1;
    pub const DIRECTION: u16 = 1 << 2;
    pub const BYTES: u16 = 1 << 3;
    pub const RET: u16 = 1 << 4;
    pub const SSL: u16 = 1 << 5;
    pub const OPEN: u16 = 1 << 6;
    pub const CHILD_PID: u16 = 1 << 7;
}

/// Booleans (`Record::flags`).
pub mod flag {
    pub const PEEK: u16 = 1;
    pub const SSL: u16 = 1 << 1;
    pub const OPEN: u16 = 1 << 2;
}

/// One event. Strings are ids of texts, `conn` the id of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Wall-clock time, nanoseconds since the Unix epoch (`ts`).
    pub unix_ns: u64,
    pub seq: u64,
    pub bytes: i64,
    pub ret: i64,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub new_fd: i32,
    pub child_pid: u32,
    pub direction: u32,
    pub conn: u32,
    /// Bytes of this record's payload in `CompactBatch.payloads`.
    pub payload_len: u32,
    pub msg: u32,
    pub caller: u32,
    pub exe: u32,
    pub comm: u32,
    pub error: u32,
    pub protocol: u32,
    pub tls_version: u32,
    pub app_protocol: u32,
    pub filename: u32,
    pub present: u16,
    pub flags: u16,
    /// 0: unknown.
    pub cgroup_id: u64,
    pub cgroup: u32,
    pub container_id: u32,
    pub pod_uid: u32,
    pub unit: u32,
}

/// Little-endian writer and reader of the fixed layout, in field order.
macro_rules! layout {
    ($($field:ident: $ty:ty),* $(,)?) => {
        impl Record {
            /// Appends the record's `RECORD_BYTES` to `out`: laid out in
            /// place, then appended at once (an append per field was a
            /// capacity check and a small copy each).
            pub fn write(&self, out: &mut Vec<u8>) {
                let mut raw = [0u8; RECORD_BYTES];
                let mut at = 0;
                $(
                    let size = std::mem::size_of::<$ty>();
                    raw[at..at + size].copy_from_slice(&self.$field.to_le_bytes());
                    at += size;
                )*
                let _ = at;
                out.extend_from_slice(&raw);
            }

            /// Reads a record from the first `RECORD_BYTES` of `bytes`.
            #[must_use]
            pub fn read(bytes: &[u8; RECORD_BYTES]) -> Record {
                let mut at = 0;
                $(
                    let size = std::mem::size_of::<$ty>();
                    let mut raw = [0u8; std::mem::size_of::<$ty>()];
                    raw.copy_from_slice(&bytes[at..at + size]);
                    let $field = <$ty>::from_le_bytes(raw);
                    at += size;
                )*
                let _ = at;
                Record { $($field),* }
            }
        }

        const _: () = assert!(0 $(+ std::mem::size_of::<$ty>())* == RECORD_BYTES);
    };
}

layout! {
    unix_ns: u64, seq: u64, bytes: i64, ret: i64,
    pid: u32, tid: u32, fd: i32, new_fd: i32, child_pid: u32, direction: u32,
    conn: u32, payload_len: u32,
    msg: u32, caller: u32, exe: u32, comm: u32, error: u32,
    protocol: u32, tls_version: u32, app_protocol: u32, filename: u32,
    present: u16, flags: u16,
    cgroup_id: u64, cgroup: u32, container_id: u32, pod_uid: u32, unit: u32,
}

/// A compact batch that does not decode.
#[derive(Debug, PartialEq, Eq)]
pub enum CompactError {
    /// `records` is not a whole number of records.
    Length(usize),
    /// A record names an id no definition gave.
    UnknownId(u32),
    /// The payload lengths add up to more than `payloads` holds.
    Payload,
    /// A definition without a value.
    EmptyDefinition(u32),
    /// A definition of id 0, or of one past [`ID_LIMIT`].
    BadId(u32),
}

impl std::fmt::Display for CompactError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompactError::Length(n) => write!(
                f,
                "compact batch of {n} record bytes, not a multiple of {RECORD_BYTES}"
            ),
            CompactError::UnknownId(id) => write!(f, "compact record names undefined id {id}"),
            CompactError::Payload => write!(f, "compact payloads shorter than their records say"),
            CompactError::EmptyDefinition(id) => write!(f, "definition of id {id} has no value"),
            CompactError::BadId(id) => {
                write!(f, "definition of id {id}, outside 1..{ID_LIMIT}")
            }
        }
    }
}

impl std::error::Error for CompactError {}

/// The receiving end of one compact stream: the ids defined so far.
#[derive(Debug, Default)]
pub struct Decoder {
    /// By id: looked up about fifteen times per event, so a vector, not a
    /// hash map.
    texts: Vec<Option<String>>,
    conns: Vec<Option<Conn>>,
    time: Rfc3339,
}

/// A defined connection, and its JSON object made once (a JSON line
/// copies it whole).
#[derive(Debug)]
struct Conn {
    info: ConnInfo,
    json: String,
}

impl Conn {
    fn new(info: ConnInfo) -> Conn {
        let mut json = Vec::new();
        crate::json::push_conn(&mut json, &info);
        let json = String::from_utf8(json).expect("JSON is UTF-8");
        Conn { info, json }
    }
}

/// Puts `value` at `id` in `table`, growing it as needed.
fn set<T>(table: &mut Vec<Option<T>>, id: u32, value: T) -> Result<(), CompactError> {
    if id == 0 || id >= ID_LIMIT {
        return Err(CompactError::BadId(id));
    }
    let at = id as usize;
    if table.len() <= at {
        table.resize_with(at + 1, || None);
    }
    table[at] = Some(value);
    Ok(())
}

/// The records of a batch, each with its payload.
pub struct Records<'a> {
    chunks: std::slice::Iter<'a, [u8; RECORD_BYTES]>,
    payloads: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(Record, &'a [u8]), CompactError>;

    fn next(&mut self) -> Option<Self::Item> {
        let record = Record::read(self.chunks.next()?);
        let Some((payload, rest)) = self.payloads.split_at_checked(record.payload_len as usize)
        else {
            return Some(Err(CompactError::Payload));
        };
        self.payloads = rest;
        Some(Ok((record, payload)))
    }
}

impl Decoder {
    #[must_use]
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Takes in `batch`'s definitions (after forgetting every id, when it
    /// says so) and returns its records.
    pub fn define<'a>(&mut self, batch: &'a CompactBatch) -> Result<Records<'a>, CompactError> {
        if batch.reset {
            self.texts.clear();
            self.conns.clear();
        }
        for d in &batch.definitions {
            match &d.value {
                Some(Value::Text(text)) => set(&mut self.texts, d.id, text.clone())?,
                Some(Value::Conn(conn)) => set(&mut self.conns, d.id, Conn::new(conn.clone()))?,
                None => return Err(CompactError::EmptyDefinition(d.id)),
            }
        }
        let (chunks, rest) = batch.records.as_chunks::<RECORD_BYTES>();
        if !rest.is_empty() {
            return Err(CompactError::Length(batch.records.len()));
        }
        Ok(Records {
            chunks: chunks.iter(),
            payloads: &batch.payloads,
        })
    }

    /// Writes the `ts` of record `r` into `out`.
    pub fn ts(&mut self, r: &Record, out: &mut String) {
        self.time.write(r.unix_ns, out);
    }

    /// The events of `batch`, in order, as owned messages.
    pub fn events(&mut self, batch: &CompactBatch) -> Result<Vec<Event>, CompactError> {
        let records: Vec<_> = self.define(batch)?.collect::<Result<_, _>>()?;
        let mut ts = String::new();
        let mut events = Vec::with_capacity(records.len());
        for (r, payload) in records {
            self.ts(&r, &mut ts);
            events.push(self.view(&r, payload, &batch.session, &ts)?.to_event());
        }
        Ok(events)
    }

    fn text(&self, id: u32) -> Result<Option<&str>, CompactError> {
        if id == 0 {
            return Ok(None);
        }
        match self.texts.get(id as usize) {
            Some(Some(text)) => Ok(Some(text)),
            _ => Err(CompactError::UnknownId(id)),
        }
    }

    /// Record `r` as an event of `session`, read in place; `ts` is its
    /// time ([`Decoder::ts`]).
    pub fn view<'a>(
        &'a self,
        r: &Record,
        payload: &'a [u8],
        session: &'a str,
        ts: &'a str,
    ) -> Result<EventView<'a>, CompactError> {
        let has = |bit: u16| r.present & bit != 0;
        let conn = match r.conn {
            0 => None,
            id => match self.conns.get(id as usize) {
                Some(Some(conn)) => Some(conn),
                _ => return Err(CompactError::UnknownId(id)),
            },
        };
        Ok(EventView {
            ts,
            msg: self.text(r.msg)?.unwrap_or_default(),
            caller: self.text(r.caller)?.unwrap_or_default(),
            pid: r.pid,
            tid: r.tid,
            exe: self.text(r.exe)?.unwrap_or_default(),
            comm: self.text(r.comm)?.unwrap_or_default(),
            fd: has(present::FD).then_some(r.fd),
            new_fd: has(present::NEW_FD).then_some(r.new_fd),
            direction: has(present::DIRECTION).then_some(r.direction),
            bytes: has(present::BYTES).then_some(r.bytes),
            ret: has(present::RET).then_some(r.ret),
            error: self.text(r.error)?,
            peek: r.flags & flag::PEEK != 0,
            ssl: has(present::SSL).then_some(r.flags & flag::SSL != 0),
            protocol: self.text(r.protocol)?,
            open: has(present::OPEN).then_some(r.flags & flag::OPEN != 0),
            conn_info: conn.map(|c| &c.info),
            conn_json: conn.map(|c| c.json.as_str()),
            filename: self.text(r.filename)?,
            child_pid: has(present::CHILD_PID).then_some(r.child_pid),
            session,
            seq: r.seq,
            tls_version: self.text(r.tls_version)?,
            app_protocol: self.text(r.app_protocol)?,
            payload,
            host: "",
            cgroup_id: r.cgroup_id,
            cgroup: self.text(r.cgroup)?,
            container_id: self.text(r.container_id)?,
            pod_uid: self.text(r.pod_uid)?,
            unit: self.text(r.unit)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::Definition;

    fn text(id: u32, s: &str) -> Definition {
        Definition {
            id,
            value: Some(Value::Text(s.into())),
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = Record {
            unix_ns: 1,
            seq: 2,
            bytes: -11,
            ret: i64::MIN,
            pid: 3,
            fd: -1,
            app_protocol: 9,
            present: 0xff,
            flags: 7,
            ..Record::default()
        };
        let mut out = Vec::new();
        r.write(&mut out);
        assert_eq!(out.len(), RECORD_BYTES);
        assert_eq!(Record::read(out.as_slice().try_into().unwrap()), r);
    }

    #[test]
    fn ids_are_remembered_until_a_reset() {
        let mut d = Decoder::new();
        let mut records = Vec::new();
        Record {
            msg: 1,
            exe: 2,
            payload_len: 2,
            present: present::FD,
            fd: 4,
            ..Record::default()
        }
        .write(&mut records);
        let first = CompactBatch {
            definitions: vec![text(1, "syscall/read"), text(2, "/usr/bin/curl")],
            records: records.clone().into(),
            payloads: b"hi".to_vec().into(),
            session: "s1".into(),
            ..CompactBatch::default()
        };
        let events = d.events(&first).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(
            (e.msg.as_str(), e.exe.as_str()),
            ("syscall/read", "/usr/bin/curl")
        );
        assert_eq!((e.fd, e.new_fd, e.error.as_deref()), (Some(4), None, None));
        assert_eq!(
            (e.payload.as_slice(), e.session.as_str()),
            (&b"hi"[..], "s1")
        );
        // The same ids again, without definitions.
        let again = CompactBatch {
            definitions: vec![],
            ..first.clone()
        };
        assert_eq!(d.events(&again).unwrap(), events);
        let reset = CompactBatch {
            reset: true,
            ..again
        };
        assert_eq!(d.events(&reset), Err(CompactError::UnknownId(1)));
    }

    /// A connection's JSON object is made once, when it is defined; a
    /// line that copies it is the line its message prints, escapes and
    /// `null`s included.
    #[test]
    fn a_view_with_a_connection_prints_its_messages_line() {
        let mut d = Decoder::new();
        let mut records = Vec::new();
        Record {
            msg: 1,
            conn: 2,
            ..Record::default()
        }
        .write(&mut records);
        let conn = ConnInfo {
            family: "unix".into(),
            r#type: "stream".into(),
            role: "client".into(),
            local: None,
            remote: Some("/run/a \"quoted\"\tpath".into()),
            peer_pid: Some(7),
            ..ConnInfo::default()
        };
        let batch = CompactBatch {
            definitions: vec![
                text(1, "syscall/write"),
                Definition {
                    id: 2,
                    value: Some(Value::Conn(conn)),
                },
            ],
            records: records.into(),
            ..CompactBatch::default()
        };
        let (record, payload) = d.define(&batch).unwrap().next().unwrap().unwrap();
        let view = d.view(&record, payload, "s1", "ts").unwrap();
        assert!(view.conn_json.is_some());
        let (mut from_view, mut from_message) = (Vec::new(), Vec::new());
        crate::json::push_view_line(&mut from_view, &view);
        crate::json::push_view_line(&mut from_message, &view.to_event().view());
        assert_eq!(
            String::from_utf8(from_view).unwrap(),
            String::from_utf8(from_message).unwrap()
        );
    }

    #[test]
    fn ids_outside_the_limit_are_refused() {
        let mut d = Decoder::new();
        for id in [0, ID_LIMIT, u32::MAX] {
            let batch = CompactBatch {
                definitions: vec![text(id, "x")],
                ..CompactBatch::default()
            };
            assert_eq!(d.events(&batch), Err(CompactError::BadId(id)));
        }
        // The last id below the limit is taken (and sizes the table).
        let batch = CompactBatch {
            definitions: vec![text(ID_LIMIT - 1, "x")],
            ..CompactBatch::default()
        };
        assert_eq!(d.events(&batch), Ok(vec![]));
        assert_eq!(d.text(ID_LIMIT - 1), Ok(Some("x")));
        assert_eq!(
            d.text(ID_LIMIT - 2),
            Err(CompactError::UnknownId(ID_LIMIT - 2))
        );
    }

    #[test]
    fn malformed_batches_are_errors() {
        let mut d = Decoder::new();
        let short = CompactBatch {
            records: vec![0; RECORD_BYTES - 1].into(),
            ..CompactBatch::default()
        };
        assert_eq!(
            d.events(&short),
            Err(CompactError::Length(RECORD_BYTES - 1))
        );
        let mut records = Vec::new();
        Record {
            payload_len: 5,
            ..Record::default()
        }
        .write(&mut records);
        let no_payload = CompactBatch {
            records: records.into(),
            ..CompactBatch::default()
        };
        assert_eq!(d.events(&no_payload), Err(CompactError::Payload));
    }
}
