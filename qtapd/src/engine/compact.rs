//! The sending end of the compact form (`qtap_proto::compact`): delivered
//! events become fixed-layout records, and each string or connection is
//! sent once as a definition. A session has one encoder and all its
//! compact followers share the batches it makes (`hub`): a follower that
//! joins later, or misses a batch, gets what keeps its ids right (a
//! start-over, the missed batch's definitions). Strings are recognised by where
//! they live — a label made at compile time, an exe or connection shared
//! with qtapd's state — so an event costs a few table lookups and one
//! record, never a string copy. The tables hold what they name (so an
//! address is never reused for something else while it is known), and
//! start over, telling the client to do the same, past `MAX_IDS`.

use std::sync::Arc;

use foldhash::HashMap;

use prost::bytes::Bytes;
use qtap_proto::{
    compact::{flag, present, Record, ID_LIMIT, RECORD_BYTES},
    v1::{definition::Value, CompactBatch, ConnInfo, Definition},
};

use super::item::Delivered;
use crate::events::{c_str, unix_ns, Text};

/// Most records in a batch.
pub const MAX_RECORDS: usize = 512;

/// Ids an encoder keeps before its tables start over. They start over
/// only between batches, and a batch's records define at most 14 ids
/// each, so the ids stay below what a receiver takes (`ID_LIMIT`).
const MAX_IDS: u32 = 1 << 16;
const _: () = assert!(MAX_IDS as usize + 14 * MAX_RECORDS < ID_LIMIT as usize);

/// Slots of the memo in front of the text table.
const MEMO: usize = 64;

#[derive(Default)]
pub struct Encoder {
    /// Texts by address and length.
    texts: HashMap<(usize, usize), u32>,
    /// The texts met last, by a hash of their address and length: most
    /// of an event's texts (its calls' labels, its process's exe, comm
    /// and cgroup) are the last event's, found here with one compare.
    memo: Memo,
    /// The comm met last, and its id.
    last_comm: Option<([u8; 16], u32)>,
    /// The connection met last (its address; 0 for none), and its id:
    /// a request and its response come one after the other.
    last_conn: (usize, u32),
    /// The shared texts among them, kept alive.
    held: Vec<Arc<str>>,
    comms: HashMap<[u8; 16], u32>,
    /// Connections by address, kept alive.
    conns: HashMap<usize, (u32, Arc<ConnInfo>)>,
    /// The last id given.
    last: u32,
    /// The batch being made: its definitions, reset and session; its
    /// records and payloads are below until it is taken.
    batch: CompactBatch,
    records: Vec<u8>,
    payloads: Vec<u8>,
}

impl Encoder {
    #[must_use]
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Whether no record waits to be taken.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Records in the batch being made.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len() / RECORD_BYTES
    }

    /// The batch being made: bytes of records, bytes of payloads, and
    /// definitions.
    #[must_use]
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.records.len(),
            self.payloads.len(),
            self.batch.definitions.len(),
        )
    }

    /// Forgets every id: the next batch says so (`reset`) and defines
    /// again what it uses. Only between batches.
    pub fn start_over(&mut self) {
        debug_assert!(self.is_empty());
        self.texts.clear();
        self.memo = Memo::default();
        self.last_comm = None;
        self.last_conn = (0, 0);
        self.held.clear();
        self.comms.clear();
        self.conns.clear();
        self.last = 0;
        self.batch.definitions.clear();
        self.batch.reset = true;
    }

    /// Adds a delivered event to the batch being made.
    pub fn push(&mut self, d: &Delivered) {
        if self.is_empty() && self.last >= MAX_IDS {
            self.start_over();
        }
        if self.is_empty() {
            d.session.as_ref().clone_into(&mut self.batch.session);
            // Room for a whole batch at once, not grown by doubling (each
            // growth copied every record before it).
            self.records.reserve(MAX_RECORDS * RECORD_BYTES);
        }
        let e = &*d.event;
        let payload = d.payload();
        let mut present = 0;
        let mut number = |bit: u16, value: Option<i64>| {
            if value.is_some() {
                present |= bit;
            }
            value.unwrap_or(0)
        };
        let fd = number(present::FD, e.fd.map(i64::from)) as i32;
        let new_fd = number(present::NEW_FD, e.new_fd.map(i64::from)) as i32;
        let direction = number(present::DIRECTION, e.direction.map(i64::from)) as u32;
        let bytes = number(present::BYTES, e.bytes);
        let ret = number(present::RET, e.ret);
        let child_pid = number(present::CHILD_PID, e.child_pid.map(i64::from)) as u32;
        let ssl = number(present::SSL, e.ssl.map(i64::from)) != 0;
        let open = number(present::OPEN, e.open.map(i64::from)) != 0;
        let mut flags = 0;
        for (on, bit) in [(e.peek, flag::PEEK), (ssl, flag::SSL), (open, flag::OPEN)] {
            if on {
                flags |= bit;
            }
        }
        let record = Record {
            unix_ns: unix_ns(e.ts_ns),
            seq: d.seq,
            bytes,
            ret,
            pid: e.pid,
            tid: e.tid,
            fd,
            new_fd,
            child_pid,
            direction,
            conn: e.conn_info.as_ref().map_or(0, |c| self.conn(c)),
            payload_len: payload.len() as u32,
            msg: self.text(&e.msg),
            caller: self.text(&e.caller),
            exe: self.text(&e.exe),
            comm: self.comm(&e.comm),
            error: e.error.as_ref().map_or(0, |t| self.text(t)),
            protocol: e.protocol.map_or(0, |s| self.id_of(s, None)),
            tls_version: e.tls_version.map_or(0, |s| self.id_of(s, None)),
            app_protocol: e.app_protocol.map_or(0, |s| self.id_of(s, None)),
            filename: e.filename.as_ref().map_or(0, |t| self.text(t)),
            present,
            flags,
            cgroup_id: e.cgroup.as_ref().map_or(0, |c| c.id),
            cgroup: self.shared(e.cgroup.as_ref().map(|c| &c.path)),
            container_id: self.shared(e.cgroup.as_ref().and_then(|c| c.container_id.as_ref())),
            pod_uid: self.shared(e.cgroup.as_ref().and_then(|c| c.pod_uid.as_ref())),
            unit: self.shared(e.cgroup.as_ref().and_then(|c| c.unit.as_ref())),
        };
        record.write(&mut self.records);
        self.payloads.extend_from_slice(payload);
    }

    /// The batch made since the last take.
    pub fn take(&mut self) -> CompactBatch {
        CompactBatch {
            records: Bytes::from(std::mem::take(&mut self.records)),
            payloads: Bytes::from(std::mem::take(&mut self.payloads)),
            ..std::mem::take(&mut self.batch)
        }
    }

    fn define(&mut self, value: Value) -> u32 {
        self.last += 1;
        self.batch.definitions.push(Definition {
            id: self.last,
            value: Some(value),
        });
        self.last
    }

    /// The id of a shared string, 0 for none.
    fn shared(&mut self, text: Option<&Arc<str>>) -> u32 {
        text.map_or(0, |t| self.id_of(t, Some(t)))
    }

    /// The id of a text (0 for the empty one).
    fn text(&mut self, text: &Text) -> u32 {
        match text {
            Text::Static(s) => self.id_of(s, None),
            Text::Shared(s) => self.id_of(s, Some(s)),
        }
    }

    /// The id of `s`, defined at its first use; `shared` is what keeps
    /// it alive (none for a label made at compile time).
    fn id_of(&mut self, s: &str, shared: Option<&Arc<str>>) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let key = (s.as_ptr() as usize, s.len());
        let slot = Memo::slot(key);
        if let Some(id) = self.memo.get(slot, key) {
            return id;
        }
        let id = if let Some(&id) = self.texts.get(&key) {
            id
        } else {
            let id = self.define(Value::Text(s.to_owned()));
            if let Some(shared) = shared {
                self.held.push(Arc::clone(shared));
            }
            self.texts.insert(key, id);
            id
        };
        self.memo.set(slot, key, id);
        id
    }

    fn comm(&mut self, comm: &[u8; 16]) -> u32 {
        if let Some((last, id)) = self.last_comm {
            if last == *comm {
                return id;
            }
        }
        let id = if let Some(&id) = self.comms.get(comm) {
            id
        } else {
            let text = c_str(comm);
            let id = if text.is_empty() {
                0
            } else {
                self.define(Value::Text(text))
            };
            self.comms.insert(*comm, id);
            id
        };
        self.last_comm = Some((*comm, id));
        id
    }

    fn conn(&mut self, conn: &Arc<ConnInfo>) -> u32 {
        let key = Arc::as_ptr(conn) as usize;
        if self.last_conn.0 == key {
            return self.last_conn.1;
        }
        let id = if let Some((id, _)) = self.conns.get(&key) {
            *id
        } else {
            let id = self.define(Value::Conn(ConnInfo::clone(conn)));
            self.conns.insert(key, (id, Arc::clone(conn)));
            id
        };
        self.last_conn = (key, id);
        id
    }
}

/// A direct-mapped cache of text ids by address and length. An entry
/// is right while the tables hold the text (its address names nothing
/// else meanwhile), so it is emptied when they start over.
struct Memo([((usize, usize), u32); MEMO]);

impl Default for Memo {
    fn default() -> Memo {
        Memo([((0, 0), 0); MEMO])
    }
}

impl Memo {
    fn slot((addr, len): (usize, usize)) -> usize {
        (addr ^ (addr >> 7) ^ len) % MEMO
    }

    fn get(&self, slot: usize, key: (usize, usize)) -> Option<u32> {
        let (known, id) = self.0[slot];
        (known == key && id != 0).then_some(id)
    }

    fn set(&mut self, slot: usize, key: (usize, usize), id: u32) {
        self.0[slot] = (key, id);
    }
}

#[cfg(test)]
mod tests {
    use qtap_proto::{compact::Decoder, json, time::Rfc3339};

    use super::*;
    use crate::events::Event;

    fn delivered(event: Event, seq: u64) -> Delivered {
        Delivered {
            event: Arc::new(event),
            session: "s1".into(),
            seq,
            capture: 3,
        }
    }

    /// Events of every shape: what the compact form decodes to is the
    /// plain form's message, field for field.
    #[test]
    fn compact_and_plain_forms_carry_the_same_events() {
        let conn = Arc::new(ConnInfo {
            family: "inet".into(),
            r#type: "tcp".into(),
            role: "client".into(),
            local: Some("127.0.0.1:5000".into()),
            remote: None,
            ..ConnInfo::default()
        });
        let exe: Arc<str> = "/usr/bin/curl".into();
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let write = Event {
            ts_ns: 1_000_000_123,
            msg: "syscall/write".into(),
            caller: "tracepoint/syscalls/sys_exit_write".into(),
            pid: 7,
            tid: 8,
            exe: Text::Shared(Arc::clone(&exe)),
            comm,
            fd: Some(3),
            direction: Some(1),
            bytes: Some(-11),
            ret: Some(-11),
            error: crate::events::errno_name(-11),
            ssl: Some(false),
            protocol: Some("unknown"),
            open: Some(true),
            conn_info: Some(Arc::clone(&conn)),
            payload: b"GET /".to_vec(),
            cgroup: Some(Arc::new(crate::cgroup::Cgroup::new(
                4242,
                &format!(
                    "/kubepods/burstable/pod0a1b2c3d-0000-4e5f-8a9b-0c1d2e3f4a5b/{}",
                    "c0".repeat(32)
                ),
            ))),
            ..Event::default()
        };
        let unit = Some(Arc::new(crate::cgroup::Cgroup::new(
            77,
            "/system.slice/nginx.service",
        )));
        let exec = Event {
            ts_ns: 2_000_000_000,
            msg: "process/exec".into(),
            exe: Text::Shared(Arc::clone(&exe)),
            filename: Some(Text::Shared(exe)),
            child_pid: Some(0),
            peek: true,
            new_fd: Some(-1),
            tls_version: Some("TLS1.3"),
            app_protocol: Some("http1"),
            ssl: Some(true),
            open: Some(false),
            cgroup: unit,
            ..Event::default()
        };
        let events = [write.clone(), exec, Event::default(), write];
        let mut encoder = Encoder::new();
        let mut decoder = Decoder::new();
        let mut in_place = Decoder::new();
        let mut time = Rfc3339::new();
        for (round, chunk) in events.chunks(2).enumerate() {
            let delivered: Vec<Delivered> = chunk
                .iter()
                .enumerate()
                .map(|(i, e)| delivered(e.clone(), (round * 2 + i) as u64 + 1))
                .collect();
            for d in &delivered {
                encoder.push(d);
            }
            let batch = encoder.take();
            let plain: Vec<_> = delivered.iter().map(|d| d.to_wire(&mut time)).collect();
            // Read in place, each record prints the plain message's JSON
            // line, byte for byte.
            let mut ts = String::new();
            let records: Vec<_> = in_place
                .define(&batch)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            for ((record, payload), message) in records.iter().zip(&plain) {
                in_place.ts(record, &mut ts);
                let view = in_place.view(record, payload, &batch.session, &ts).unwrap();
                let (mut a, mut b) = (Vec::new(), Vec::new());
                json::push_view_line(&mut a, &view);
                json::write_line(&mut b, message).unwrap();
                assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
            }
            assert_eq!(decoder.events(&batch).unwrap(), plain);
            if round == 0 {
                // A socket event on the wire: the plain message against a
                // record (its definitions come once per stream).
                let message = prost::Message::encoded_len(&plain[0]);
                eprintln!("plain Event: {message} bytes; compact record: {RECORD_BYTES}");
                assert!(RECORD_BYTES < message);
            }
            if round == 1 {
                // The second batch defines only what the first did not.
                assert!(batch.definitions.is_empty(), "{:?}", batch.definitions);
            }
        }
    }

    #[test]
    fn tables_start_over_and_say_so() {
        let mut encoder = Encoder::new();
        let mut decoder = Decoder::new();
        let mut time = Rfc3339::new();
        let mut saw_reset = false;
        for n in 0..(MAX_IDS + 10) {
            // A new text each time, and one every event shares: after the
            // tables start over, the shared one is defined again.
            let event = Event {
                msg: Text::from(format!("process_data (no bytes: SSL_read returned {n})")),
                caller: Text::Static("uprobe/SSL_read"),
                ..Event::default()
            };
            let d = delivered(event, u64::from(n) + 1);
            encoder.push(&d);
            let batch = encoder.take();
            saw_reset |= batch.reset;
            assert_eq!(decoder.events(&batch).unwrap(), vec![d.to_wire(&mut time)]);
        }
        assert!(saw_reset);
        assert!(encoder.held.len() < MAX_IDS as usize + 1);
    }
}
