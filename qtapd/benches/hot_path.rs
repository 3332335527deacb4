//! Per-event costs on qtapd's hot path (`make bench`): decoding a kernel
//! record, enriching it into an event (kernel-known connection, no /proc),
//! the exact filter check made at each exec, protocol detection, and the
//! JSON line of an event.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use prost::Message;
use qtap_common::{
    call, conn_flag, direction, family, flag, kind, role, Addr, Conn, Header, SyscallRecord,
    ABI_VERSION,
};
use qtap_proto::time::Rfc3339;
use qtapd::{
    engine::{compact::Encoder, item::Delivered},
    enrich::Enricher,
    events::decode::decode,
    filter::Filter,
    protocol,
};

fn record() -> SyscallRecord {
    let ip = |last| Addr {
        family: family::INET,
        port: 443,
        addr: [127, 0, 0, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    };
    let mut rec = SyscallRecord {
        hdr: Header {
            kind: kind::SYSCALL,
            abi: ABI_VERSION,
            pid: std::process::id(),
            tid: std::process::id(),
            ts_ns: 1_000_000_000,
            sessions: 1,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            ..Header::default()
        },
        ret: 79,
        bytes: 79,
        call: call::SENDTO,
        direction: direction::EGRESS,
        flags: flag::CONN_KNOWN,
        fd: 5,
        new_fd: -1,
        head_len: 16,
        conn: Conn {
            local: ip(1),
            remote: ip(2),
            family: family::INET,
            sock_type: 1,
            role: role::CLIENT,
            flags: conn_flag::LOCAL_KNOWN | conn_flag::REMOTE_KNOWN,
            _pad: [0; 2],
        },
        ..SyscallRecord::default()
    };
    rec.head[..16].copy_from_slice(b"GET / HTTP/1.1\r\n");
    rec
}

fn bytes_of(rec: &SyscallRecord) -> Vec<u8> {
    // SAFETY: reading the bytes of a plain-old-data record.
    unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(rec).cast::<u8>(),
            size_of::<SyscallRecord>(),
        )
    }
    .to_vec()
}

fn hot_path(c: &mut Criterion) {
    let rec = record();
    let raw = bytes_of(&rec);
    let mut group = c.benchmark_group("per event");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode a syscall record", |b| {
        b.iter(|| decode(black_box(&raw)).unwrap());
    });
    let mut enricher = Enricher::new();
    group.bench_function("enrich a syscall record", |b| {
        b.iter(|| enricher.syscall(black_box(&rec), &[], true));
    });
    let (Some(event), _) = Enricher::new().syscall(&rec, &[], true) else {
        return;
    };
    let delivered = Delivered {
        event,
        session: "s1".into(),
        seq: 1,
        capture: 0,
    };
    let mut time = Rfc3339::new();
    let mut wire = Vec::with_capacity(1024);
    group.bench_function("plain message of an event (Event, encoded)", |b| {
        b.iter(|| {
            wire.clear();
            black_box(&delivered)
                .to_wire(&mut time)
                .encode(&mut wire)
                .unwrap();
        });
    });
    let mut encoder = Encoder::new();
    group.bench_function("compact record of an event", |b| {
        b.iter(|| {
            encoder.push(black_box(&delivered));
            if encoder.len() >= 512 {
                black_box(encoder.take());
            }
        });
    });
    let message = delivered.to_wire(&mut time);
    let mut line = Vec::with_capacity(1024);
    group.bench_function("JSON line of an event", |b| {
        b.iter(|| {
            line.clear();
            qtap_proto::json::write_line(&mut line, black_box(&message)).unwrap();
        });
    });
    group.bench_function("detect the protocol of first bytes", |b| {
        b.iter(|| protocol::detect(black_box(b"GET / HTTP/1.1\r\n"), [None, Some(443)], false));
    });
    let filter = Filter::parse("mod:socket,exe.contains:curl,exe.endsWith:/wget,uid:1000").unwrap();
    group.bench_function("exact filter check at exec", |b| {
        b.iter(|| {
            filter.matches_process(
                black_box(b"/usr/local/bin/curl"),
                black_box(b"curl"),
                black_box(4242),
                black_box(1000),
            )
        });
    });
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
