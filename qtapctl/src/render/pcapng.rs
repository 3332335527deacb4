//! `--pcapng FILE`: the session's socket data as a capture Wireshark and
//! tshark open. Each traced connection becomes a synthesized TCP (or UDP)
//! conversation between its real addresses and ports: a handshake when
//! qtap first sees it, one segment per call that moved bytes, carrying the
//! bytes the session captured with the call's real length (a call that
//! moved more than was captured is a truncated packet, as a short snaplen
//! makes one), a FIN at close. Sequence numbers advance by the bytes each
//! call moved, so Wireshark reassembles streams.
//!
//! A TLS fd whose plaintext qtap sees (a TLS library call on it, e.g.
//! `openssl/SSL_write`) is written as its **plaintext** stream on the real
//! ports: the ciphertext calls before the first plaintext one are held
//! back and dropped, those after it skipped, and each plaintext packet
//! says so in its comment. A TLS fd without a library call keeps its
//! ciphertext. Every packet's comment names the pid, exe, fd and call. A
//! loss qtap reports becomes a comment on the next packet of each open
//! connection. Unix sockets, and calls whose connection has no inet
//! address, are counted and left out (pcapng has no frame for them).

use std::{
    borrow::Cow,
    collections::HashMap,
    io::{self, Write},
    net::SocketAddr,
    time::Duration,
};

use etherparse::PacketBuilder;
use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
        PcapNgWriter,
    },
    DataLink,
};
use qtap_proto::v1::{ConnInfo, Event};

use super::Render;

/// Bytes of payload one synthesized frame declares: a call that moved
/// more is written as several segments (IPv4's total length is 16 bits).
const SEGMENT_MAX: usize = 65_000;
/// Ciphertext held per TLS fd while waiting for its first plaintext call;
/// past it the fd is written as ciphertext.
const HOLD_MAX: usize = 256 * 1024;
/// Each side's initial sequence number (Wireshark shows relative ones).
const ISN: u32 = 1;
/// Locally administered MACs: client side, server side.
const MAC_CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const MAC_SERVER: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// The pcapng renderer.
pub struct Pcapng<W: Write> {
    writer: PcapNgWriter<W>,
    /// Interface per daemon (`host`, "" for the local one).
    interfaces: HashMap<String, u32>,
    flows: HashMap<FlowKey, Flow>,
    /// A loss notice for connections first seen after it.
    lost_note: Option<String>,
    /// Packets written, and calls left out (by reason), for the summary.
    packets: u64,
    skipped_not_inet: u64,
    skipped_ciphertext: u64,
    /// The local host's name, for the interface description.
    hostname: String,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct FlowKey {
    host: String,
    pid: u32,
    fd: i32,
}

/// One traced connection.
struct Flow {
    tcp: bool,
    /// The side that opened it (connect: the local one) and the other.
    client: SocketAddr,
    server: SocketAddr,
    /// The local address: egress data goes from it.
    local: SocketAddr,
    /// Next sequence number from the client and from the server.
    next_client: u32,
    next_server: u32,
    /// Which of a TLS fd's streams the capture shows.
    shows: Shows,
    /// Ciphertext syscalls of a TLS fd before its first plaintext call.
    held: Vec<Event>,
    held_bytes: usize,
    /// A loss notice for its next packet.
    note: Option<String>,
    /// FINs written, from the local side and from the peer.
    fin_local: bool,
    fin_peer: bool,
}

/// Which bytes of a connection go into the capture.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shows {
    /// Not decided: plain calls are written, a TLS fd's ciphertext held.
    Undecided,
    /// A TLS library call was seen: its plaintext only, from then on.
    Plaintext,
    /// What the syscalls moved (no plaintext came before `HOLD_MAX`).
    Ciphertext,
}

/// A segment to write: from which side, with what.
struct Segment<'a> {
    from_local: bool,
    moved: usize,
    payload: &'a [u8],
    flags: Flags,
    ts: Duration,
    comment: Option<String>,
}

#[derive(Clone, Copy)]
enum Flags {
    Syn,
    SynAck,
    Ack,
    Data,
    Fin,
}

impl<W: Write> Pcapng<W> {
    /// A capture written to `out`: the section header now, the rest as
    /// events come.
    ///
    /// # Errors
    /// Writing the section header failed.
    pub fn new(out: W) -> io::Result<Pcapng<W>> {
        let writer = PcapNgWriter::new(out).map_err(io::Error::other)?;
        Ok(Pcapng {
            writer,
            interfaces: HashMap::new(),
            flows: HashMap::new(),
            lost_note: None,
            packets: 0,
            skipped_not_inet: 0,
            skipped_ciphertext: 0,
            hostname: hostname(),
        })
    }

    /// The capture's writer (the file or stdout), for tests.
    pub fn into_inner(self) -> W {
        self.writer.into_inner()
    }

    /// What was written and left out, one line.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "pcapng: {} packets; left out: {} calls on sockets without an inet address, {} \
             ciphertext calls of TLS fds written as plaintext",
            self.packets, self.skipped_not_inet, self.skipped_ciphertext
        )
    }

    fn interface(&mut self, host: &str) -> io::Result<u32> {
        if let Some(&id) = self.interfaces.get(host) {
            return Ok(id);
        }
        let id = u32::try_from(self.interfaces.len()).unwrap_or(u32::MAX);
        let name = if host.is_empty() {
            &self.hostname
        } else {
            host
        };
        let block = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(format!("qtap:{name}"))),
                InterfaceDescriptionOption::IfDescription(Cow::Owned(format!(
                    "socket calls traced by qtap on {name}; frames synthesized from each \
                     call's bytes"
                ))),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        self.writer
            .write_pcapng_block(block)
            .map_err(io::Error::other)?;
        self.interfaces.insert(host.to_owned(), id);
        Ok(id)
    }

    fn handle(&mut self, e: &Event) -> io::Result<()> {
        let key = FlowKey {
            host: e.host.clone(),
            pid: e.pid,
            fd: e.fd.unwrap_or(-1),
        };
        if e.msg == "syscall/close" {
            if let Some(flow) = self.flows.remove(&key) {
                self.close(&key, flow, ts(e))?;
            }
            return Ok(());
        }
        let (Some(_), Some(moved)) = (e.direction, e.bytes) else {
            return Ok(());
        };
        let Ok(moved) = usize::try_from(moved) else {
            return Ok(()); // a failed call moved nothing
        };
        if e.peek || e.fd.is_none() {
            return Ok(());
        }
        if moved == 0 {
            // A read that returns 0 is the peer's end of stream: its FIN,
            // which also tells Wireshark where an HTTP/1.0 body ends. On a
            // TLS fd no 0 says so: the syscall's can come before the
            // plaintext the library call around it returns, and a library
            // read that would block (SSL_read's -1, WANT_READ) moved 0
            // bytes too. Its FIN waits for the close.
            if e.direction == Some(0) && e.ssl != Some(true) && self.flows.contains_key(&key) {
                self.fin(&key, false, ts(e), "end of stream: a read returned 0")?;
            }
            return Ok(());
        }
        let Some(addrs) = e.conn_info.as_ref().and_then(Addrs::of) else {
            self.skipped_not_inet += 1;
            return Ok(());
        };
        let library_call = !e.msg.starts_with("syscall/");
        let flow = match self.flows.get(&key) {
            Some(flow) if flow.local == addrs.local => self.flows.get_mut(&key),
            _ => {
                // New, or its fd was reused without a close we saw.
                if let Some(old) = self.flows.remove(&key) {
                    self.close(&key, old, ts(e))?;
                }
                let flow = Flow::new(&addrs, self.lost_note.take());
                self.flows.insert(key.clone(), flow);
                self.handshake(&key, ts(e))?;
                self.flows.get_mut(&key)
            }
        }
        .expect("inserted above");
        match (flow.shows, library_call) {
            (Shows::Undecided, true) => {
                flow.shows = Shows::Plaintext;
                self.skipped_ciphertext += flow.held.len() as u64;
                flow.held.clear();
                flow.held_bytes = 0;
            }
            (Shows::Plaintext, false) => {
                self.skipped_ciphertext += 1;
                return Ok(());
            }
            // Shown as ciphertext: its plaintext would be the same bytes twice.
            (Shows::Ciphertext, true) => return Ok(()),
            (Shows::Undecided, false) if e.ssl == Some(true) => {
                flow.held_bytes += moved;
                flow.held.push(e.clone());
                if flow.held_bytes <= HOLD_MAX {
                    return Ok(());
                }
                flow.shows = Shows::Ciphertext;
                let held = std::mem::take(&mut flow.held);
                return held.iter().try_for_each(|h| self.data(&key, h));
            }
            _ => {}
        }
        self.data(&key, e)
    }

    /// Writes one call's bytes as segments of its flow.
    fn data(&mut self, key: &FlowKey, e: &Event) -> io::Result<()> {
        let Some(flow) = self.flows.get_mut(key) else {
            return Ok(());
        };
        let moved = usize::try_from(e.bytes.unwrap_or(0)).unwrap_or(0);
        let mut comment = format!(
            "pid {} {} fd {} {}",
            e.pid,
            exe_name(e),
            e.fd.unwrap_or(-1),
            e.msg
        );
        if !e.msg.starts_with("syscall/") {
            comment.push_str(" (TLS plaintext, from the library call)");
        }
        if e.payload.len() < moved {
            use std::fmt::Write as _;
            let _ = write!(comment, "; {} of {moved} bytes captured", e.payload.len());
        }
        if let Some(note) = flow.note.take() {
            comment.push_str("; ");
            comment.push_str(&note);
        }
        let from_local = e.direction == Some(1);
        let mut offset = 0;
        let mut first = Some(comment);
        while offset < moved {
            let len = (moved - offset).min(SEGMENT_MAX);
            let captured = e.payload.get(offset..).unwrap_or(&[]);
            let captured = &captured[..captured.len().min(len)];
            self.segment(
                key,
                Segment {
                    from_local,
                    moved: len,
                    payload: captured,
                    flags: Flags::Data,
                    ts: ts(e),
                    comment: first.take(),
                },
            )?;
            offset += len;
        }
        Ok(())
    }

    /// The three-way handshake of a new TCP flow (synthesized: qtap
    /// traces calls, not packets).
    fn handshake(&mut self, key: &FlowKey, ts: Duration) -> io::Result<()> {
        let Some(flow) = self.flows.get(key) else {
            return Ok(());
        };
        if !flow.tcp {
            return Ok(());
        }
        let client_is_local = flow.client == flow.local;
        let steps = [
            (
                client_is_local,
                Flags::Syn,
                Some("handshake synthesized by qtap"),
            ),
            (!client_is_local, Flags::SynAck, None),
            (client_is_local, Flags::Ack, None),
        ];
        for (from_local, flags, comment) in steps {
            self.segment(
                key,
                Segment {
                    from_local,
                    moved: 0,
                    payload: &[],
                    flags,
                    ts,
                    comment: comment.map(str::to_owned),
                },
            )?;
        }
        Ok(())
    }

    fn close(&mut self, key: &FlowKey, mut flow: Flow, ts: Duration) -> io::Result<()> {
        let held = std::mem::take(&mut flow.held);
        let tcp = flow.tcp;
        self.flows.insert(key.clone(), flow);
        for e in &held {
            self.data(key, e)?;
        }
        if tcp {
            // The conversation ends here: the peer's FIN too, unless a read
            // of 0 showed it, so Wireshark can end a body that runs to the
            // end of the stream (HTTP/1.0) even when the last read was not
            // traced as one.
            self.fin(key, true, ts, "close")?;
            self.fin(
                key,
                false,
                ts,
                "end of the connection (synthesized at close)",
            )?;
        }
        self.flows.remove(key);
        Ok(())
    }

    /// One side's FIN, once per side.
    fn fin(&mut self, key: &FlowKey, from_local: bool, ts: Duration, why: &str) -> io::Result<()> {
        let Some(flow) = self.flows.get_mut(key) else {
            return Ok(());
        };
        let sent = if from_local {
            &mut flow.fin_local
        } else {
            &mut flow.fin_peer
        };
        if !flow.tcp || *sent {
            return Ok(());
        }
        *sent = true;
        self.segment(
            key,
            Segment {
                from_local,
                moved: 0,
                payload: &[],
                flags: Flags::Fin,
                ts,
                comment: Some(why.to_owned()),
            },
        )
    }

    /// Writes one synthesized frame and advances its side's sequence.
    fn segment(&mut self, key: &FlowKey, s: Segment<'_>) -> io::Result<()> {
        let interface_id = self.interface(&key.host)?;
        let flow = self.flows.get_mut(key).expect("segment of a known flow");
        let (src, dst) = if s.from_local {
            (flow.local, flow.peer())
        } else {
            (flow.peer(), flow.local)
        };
        let from_client = src == flow.client;
        let (macs, seq, ack) = if from_client {
            ((MAC_CLIENT, MAC_SERVER), flow.next_client, flow.next_server)
        } else {
            ((MAC_SERVER, MAC_CLIENT), flow.next_server, flow.next_client)
        };
        let eth = PacketBuilder::ethernet2(macs.0, macs.1);
        let ip = match (src, dst) {
            (SocketAddr::V4(a), SocketAddr::V4(b)) => {
                eth.ipv4(a.ip().octets(), b.ip().octets(), 64)
            }
            (a, b) => eth.ipv6(v6(a), v6(b), 64),
        };
        let mut frame = Vec::with_capacity(80 + s.moved);
        // The frame declares every byte the call moved; what was not
        // captured is written as zeros and then cut off, so the packet
        // is truncated exactly like a short snaplen's.
        let mut body = Vec::with_capacity(s.moved);
        body.extend_from_slice(s.payload);
        body.resize(s.moved, 0);
        let written = if flow.tcp {
            let tcp = ip.tcp(src.port(), dst.port(), seq, 65_535);
            let tcp = match s.flags {
                Flags::Syn => tcp.syn(),
                Flags::SynAck => tcp.syn().ack(ack),
                Flags::Ack => tcp.ack(ack),
                Flags::Data => tcp.ack(ack).psh(),
                Flags::Fin => tcp.fin().ack(ack),
            };
            tcp.write(&mut frame, &body)
        } else {
            ip.udp(src.port(), dst.port()).write(&mut frame, &body)
        };
        written.map_err(io::Error::other)?;
        let advance = match s.flags {
            Flags::Syn | Flags::SynAck | Flags::Fin => 1,
            Flags::Ack => 0,
            Flags::Data => u32::try_from(s.moved).unwrap_or(u32::MAX),
        };
        if from_client {
            flow.next_client = flow.next_client.wrapping_add(advance);
        } else {
            flow.next_server = flow.next_server.wrapping_add(advance);
        }
        let original_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        frame.truncate(frame.len() - (s.moved - s.payload.len()));
        let block = EnhancedPacketBlock {
            interface_id,
            timestamp: s.ts,
            original_len,
            data: Cow::Owned(frame),
            options: s
                .comment
                .map(|c| vec![EnhancedPacketOption::Comment(Cow::Owned(c))])
                .unwrap_or_default(),
        };
        self.writer
            .write_pcapng_block(block)
            .map_err(io::Error::other)?;
        self.packets += 1;
        Ok(())
    }
}

impl Flow {
    fn new(addrs: &Addrs, note: Option<String>) -> Flow {
        let (client, server) = if addrs.local_is_client {
            (addrs.local, addrs.remote)
        } else {
            (addrs.remote, addrs.local)
        };
        Flow {
            tcp: addrs.tcp,
            client,
            server,
            local: addrs.local,
            next_client: ISN,
            next_server: ISN,
            shows: Shows::Undecided,
            held: Vec::new(),
            held_bytes: 0,
            note,
            fin_local: false,
            fin_peer: false,
        }
    }

    fn peer(&self) -> SocketAddr {
        if self.local == self.client {
            self.server
        } else {
            self.client
        }
    }
}

/// A connection's addresses, when both ends are inet ones.
struct Addrs {
    tcp: bool,
    local: SocketAddr,
    remote: SocketAddr,
    local_is_client: bool,
}

impl Addrs {
    fn of(conn: &ConnInfo) -> Option<Addrs> {
        let tcp = match conn.r#type.as_str() {
            "tcp" => true,
            "udp" => false,
            _ => return None,
        };
        let remote: SocketAddr = conn.remote.as_deref()?.parse().ok()?;
        // A client's local address may be unknown (traced before its
        // connect finished): an unspecified address of the same family,
        // and a port no one uses, keep the conversation apart.
        let local = conn
            .local
            .as_deref()
            .and_then(|l| l.parse().ok())
            .unwrap_or_else(|| match remote {
                SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
                SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
            });
        Some(Addrs {
            tcp,
            local,
            remote,
            local_is_client: conn.role != "server",
        })
    }
}

fn v6(addr: SocketAddr) -> [u8; 16] {
    match addr {
        SocketAddr::V4(a) => a.ip().to_ipv6_mapped().octets(),
        SocketAddr::V6(a) => a.ip().octets(),
    }
}

fn exe_name(e: &Event) -> &str {
    e.exe
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(&e.comm)
}

/// The event's time since the Unix epoch (0 when it does not parse).
fn ts(e: &Event) -> Duration {
    humantime::parse_rfc3339(&e.ts)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "localhost".to_owned(), |h| h.trim().to_owned())
}

impl<W: Write> Render for Pcapng<W> {
    fn event(&mut self, event: &Event) -> io::Result<()> {
        self.handle(event)
    }

    fn lost(&mut self, count: u64, meaning: &str) {
        let note = format!("qtap lost {count} events before this packet: {meaning}");
        for flow in self.flows.values_mut() {
            flow.note = Some(note.clone());
        }
        self.lost_note = Some(note);
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.get_mut().flush()
    }

    fn finish(&mut self) -> io::Result<()> {
        // Connections still open keep their held ciphertext: written now.
        let keys: Vec<FlowKey> = self.flows.keys().cloned().collect();
        for key in keys {
            let Some(flow) = self.flows.get_mut(&key) else {
                continue;
            };
            let held = std::mem::take(&mut flow.held);
            for e in &held {
                self.data(&key, e)?;
            }
        }
        self.flush()?;
        eprintln!("qtapctl: {}", self.summary());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{LaxSlicedPacket, TransportSlice};
    use pcap_file::pcapng::{Block, PcapNgReader};

    use super::*;

    fn conn(local: &str, remote: &str, role: &str) -> ConnInfo {
        ConnInfo {
            family: "inet".into(),
            r#type: "tcp".into(),
            role: role.into(),
            local: Some(local.into()),
            remote: Some(remote.into()),
            ..ConnInfo::default()
        }
    }

    fn data(msg: &str, fd: i32, direction: u32, payload: &[u8], moved: i64, ssl: bool) -> Event {
        Event {
            ts: "2026-12-01T10:00:00.000000001Z".into(),
            msg: msg.into(),
            pid: 42,
            exe: "/usr/bin/curl".into(),
            comm: "curl".into(),
            fd: Some(fd),
            direction: Some(direction),
            bytes: Some(moved),
            ret: Some(moved),
            ssl: Some(ssl),
            conn_info: Some(conn("127.0.0.1:50000", "127.0.0.1:8080", "client")),
            payload: payload.to_vec(),
            ..Event::default()
        }
    }

    /// What a packet of the capture carries.
    #[derive(Debug, PartialEq)]
    struct Packet {
        src_port: u16,
        seq: u32,
        syn: bool,
        fin: bool,
        payload: Vec<u8>,
        truncated: bool,
        comment: Option<String>,
    }

    fn read(capture: &[u8]) -> Vec<Packet> {
        let mut reader = PcapNgReader::new(capture).unwrap();
        let mut packets = Vec::new();
        while let Some(block) = reader.next_block() {
            let Block::EnhancedPacket(epb) = block.unwrap() else {
                continue;
            };
            let sliced = LaxSlicedPacket::from_ethernet(&epb.data).unwrap();
            let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
                panic!("not TCP");
            };
            let comment = epb.options.iter().find_map(|o| match o {
                EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                _ => None,
            });
            packets.push(Packet {
                src_port: tcp.source_port(),
                seq: tcp.sequence_number(),
                syn: tcp.syn(),
                fin: tcp.fin(),
                payload: tcp.payload().to_vec(),
                truncated: epb.original_len as usize > epb.data.len(),
                comment,
            });
        }
        packets
    }

    fn capture(events: &[Event]) -> Vec<Packet> {
        let mut pcap = Pcapng::new(Vec::new()).unwrap();
        for e in events {
            pcap.event(e).unwrap();
        }
        read(&pcap.into_inner())
    }

    #[test]
    fn a_plain_connection_is_a_tcp_conversation_with_its_bytes_in_order() {
        let mut close = data("syscall/close", 5, 0, b"", 0, false);
        (close.direction, close.bytes) = (None, None);
        let packets = capture(&[
            data("syscall/sendto", 5, 1, b"GET / HTTP/1.1\r\n\r\n", 18, false),
            data("syscall/recvfrom", 5, 0, b"HTTP/1.1 200 OK\r\n", 40, false),
            data("syscall/recvfrom", 5, 0, b"", 0, false),
            close,
        ]);
        let summary: Vec<_> = packets
            .iter()
            .map(|p| (p.src_port, p.seq, p.syn, p.fin, p.truncated))
            .collect();
        assert_eq!(
            summary,
            [
                (50000, ISN, true, false, false),         // SYN
                (8080, ISN, true, false, false),          // SYN-ACK
                (50000, ISN + 1, false, false, false),    // ACK
                (50000, ISN + 1, false, false, false),    // the request
                (8080, ISN + 1, false, false, true),      // 17 of 40 bytes captured
                (8080, ISN + 1 + 40, false, true, false), // the peer's FIN: a read of 0
                (50000, ISN + 1 + 18, false, true, false), // FIN after the request's 18
                                                          // (the peer's was written)
            ]
        );
        assert_eq!(packets[3].payload, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(packets[4].payload, b"HTTP/1.1 200 OK\r\n");
        assert_eq!(
            packets[3].comment.as_deref(),
            Some("pid 42 curl fd 5 syscall/sendto")
        );
        assert!(packets[4]
            .comment
            .as_deref()
            .unwrap()
            .ends_with("17 of 40 bytes captured"));
    }

    #[test]
    fn a_close_without_a_read_of_0_ends_both_sides() {
        let mut close = data("syscall/close", 5, 0, b"", 0, false);
        (close.direction, close.bytes) = (None, None);
        let packets = capture(&[data("syscall/write", 5, 1, b"x", 1, false), close]);
        let fins: Vec<(u16, u32)> = packets
            .iter()
            .filter(|p| p.fin)
            .map(|p| (p.src_port, p.seq))
            .collect();
        assert_eq!(fins, [(50000, ISN + 2), (8080, ISN + 1)]);
    }

    #[test]
    fn a_tls_fd_with_plaintext_calls_is_written_as_its_plaintext() {
        let hello = [0x16, 0x03, 0x01, 0x02, 0x00];
        let packets = capture(&[
            data("syscall/sendto", 5, 1, &hello, 517, true),
            data("syscall/recvfrom", 5, 0, &hello, 1200, true),
            data("syscall/sendto", 5, 1, &[0x17, 3, 3], 120, true),
            data(
                "openssl/SSL_write",
                5,
                1,
                b"GET / HTTP/1.1\r\n\r\n",
                18,
                true,
            ),
            // A nonblocking SSL_read that found no whole record yet.
            data("openssl/SSL_read", 5, 0, b"", 0, true),
            data("syscall/recvfrom", 5, 0, &[0x17, 3, 3], 90, true),
            // The end of stream read inside the SSL_read that returns the
            // response: no FIN before the plaintext.
            data("syscall/recvfrom", 5, 0, b"", 0, true),
            data(
                "openssl/SSL_read",
                5,
                0,
                b"HTTP/1.1 200 OK\r\n\r\n",
                19,
                true,
            ),
            // Another TLS fd, never shown in plaintext: ciphertext at the end.
            data("syscall/sendto", 6, 1, &hello, 5, true),
        ]);
        let payloads: Vec<&[u8]> = packets
            .iter()
            .filter(|p| !p.syn)
            .map(|p| p.payload.as_slice())
            .filter(|p| !p.is_empty())
            .collect();
        assert_eq!(
            payloads,
            [&b"GET / HTTP/1.1\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\n\r\n"]
        );
        assert!(!packets.iter().any(|p| p.fin));
        let mut pcap = Pcapng::new(Vec::new()).unwrap();
        pcap.event(&data("syscall/sendto", 6, 1, &hello, 5, true))
            .unwrap();
        pcap.finish().unwrap();
        let held = read(&pcap.into_inner());
        assert_eq!(held.last().unwrap().payload, hello);
        let write = packets
            .iter()
            .find(|p| p.payload.starts_with(b"GET"))
            .unwrap();
        assert!(write
            .comment
            .as_deref()
            .unwrap()
            .contains("openssl/SSL_write (TLS plaintext"));
        // Sequence numbers count plaintext bytes.
        let read_back = packets
            .iter()
            .find(|p| p.payload.starts_with(b"HTTP"))
            .unwrap();
        assert_eq!((write.seq, read_back.seq), (ISN + 1, ISN + 1));
    }

    #[test]
    fn a_loss_is_noted_on_the_next_packet_and_unix_sockets_are_left_out() {
        let mut pcap = Pcapng::new(Vec::new()).unwrap();
        pcap.event(&data("syscall/write", 5, 1, b"a", 1, false))
            .unwrap();
        pcap.lost(3, "the kernel's ring buffer was full");
        pcap.event(&data("syscall/write", 5, 1, b"b", 1, false))
            .unwrap();
        let mut unix = data("syscall/write", 7, 1, b"x", 1, false);
        unix.conn_info = Some(ConnInfo {
            family: "unix".into(),
            r#type: "stream".into(),
            role: "client".into(),
            local: None,
            remote: Some("/run/nscd/socket".into()),
            ..ConnInfo::default()
        });
        pcap.event(&unix).unwrap();
        assert!(pcap
            .summary()
            .contains("1 calls on sockets without an inet address"));
        let packets = read(&pcap.into_inner());
        let last = packets.last().unwrap();
        assert_eq!(last.payload, b"b");
        assert!(last
            .comment
            .as_deref()
            .unwrap()
            .ends_with("qtap lost 3 events before this packet: the kernel's ring buffer was full"));
    }
}
