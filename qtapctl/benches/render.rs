//! Per-event rendering cost in qtapctl (`make bench`): the console line and
//! the JSON line of a typical socket event.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use qtap_proto::v1::{ConnInfo, Event};
use qtapctl::render::{console::Console, json::Json, Render};

fn event() -> Event {
    Event {
        ts: "2026-11-27T06:42:40.145840716Z".into(),
        msg: "syscall/sendto".into(),
        caller: "tracepoint/syscalls/sys_exit_sendto".into(),
        pid: 23190,
        tid: 23190,
        exe: "/usr/bin/curl".into(),
        comm: "curl".into(),
        fd: Some(5),
        direction: Some(1),
        bytes: Some(79),
        ret: Some(79),
        ssl: Some(false),
        protocol: Some("http1".into()),
        open: Some(true),
        conn_info: Some(ConnInfo {
            family: "inet".into(),
            r#type: "tcp".into(),
            role: "client".into(),
            local: Some("127.0.0.1:58760".into()),
            remote: Some("127.0.0.1:18080".into()),
            ..ConnInfo::default()
        }),
        session: "s1".into(),
        seq: 42,
        ..Event::default()
    }
}

fn render(c: &mut Criterion) {
    let e = event();
    let mut group = c.benchmark_group("per event");
    group.throughput(Throughput::Elements(1));
    let mut console = Console::plain(std::io::sink());
    group.bench_function("console line", |b| {
        b.iter(|| console.event(black_box(&e)).unwrap());
    });
    // Through a buffer, as stdout is written: the bytes are copied once,
    // as they are when printed (a bare sink would skip that).
    let mut json = Json::new(std::io::BufWriter::new(std::io::sink()));
    group.bench_function("JSON line", |b| {
        b.iter(|| json.event(black_box(&e)).unwrap());
    });
    group.finish();
}

criterion_group!(benches, render);
criterion_main!(benches);
