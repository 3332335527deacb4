//! What the fuzzers run (`fuzz/`, `make soak`), shared with the test that
//! replays their corpus and crash reproducers in `make test`
//! (`tests/fuzz_corpus.rs`). Each entry takes arbitrary bytes and panics
//! only when one of qtapd's promises breaks.

use prost::Message;
use qtap_common::{kind, limit, Header, ABI_VERSION};
use qtap_proto::v1::{FollowTraceRequest, StartTraceRequest, TraceOptions};

use crate::{
    ebpf::memory::MemoryKernel,
    engine::{hub::Spec, item::Item, Caller, Engine, Target as Follow},
    filter::{compile::compile, Filter},
    grpc::validate,
    limits::Limits,
};

/// A fuzz target: arbitrary bytes in, a panic only on a broken promise.
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as `fuzz/fuzz_targets/<name>.rs` calls them.
pub const TARGETS: &[(&str, Target)] = &[
    ("filter", filter),
    ("records", records),
    ("requests", requests),
];

/// Filter text: an error or a filter that prints as text parsing to the
/// same filter, and that compiles.
pub fn filter(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(filter) = Filter::parse(text) {
        let shown = filter.to_string();
        assert_eq!(
            Filter::parse(&shown).as_ref(),
            Ok(&filter),
            "{text:?} printed as {shown:?}"
        );
        compile([(0, &filter)], 1, &[]).expect("a parsed filter compiles");
    }
}

const ROOT: Caller = Caller { uid: 0 };

/// The kinds a record's header may be given (see [`records`]).
const KINDS: [u16; 5] = [kind::SYSCALL, kind::EXEC, kind::FORK, kind::EXIT, kind::TLS];

/// A sequence of kernel records through the whole engine — decoding,
/// enrichment, per-fd streams, derived events, the hub — to a follower of
/// a session with every module: every record is handled, and every event
/// the hub hands over is received or counted lost.
///
/// Input: items of `[selector][len: u16 le][len bytes]`. The selector's
/// low bits pick a record kind written into the header with the current
/// ABI version (6 and 7 leave the bytes as they are, so malformed headers
/// are tried too); its top bit marks the record as every session's.
pub fn records(data: &[u8]) {
    RUNTIME.with(|runtime| {
        let _entered = runtime.enter();
        ENGINE.with_borrow_mut(|engine| records_through(engine, runtime, data));
    });
}

thread_local! {
    /// The runtime that hands over final loss notices.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    /// One engine for all inputs, holding a session that needs the OpenSSL
    /// probes: finding the system's libssl when the first such session
    /// starts costs milliseconds, which would slow the fuzzer a hundredfold.
    static ENGINE: std::cell::RefCell<Engine<MemoryKernel>> = {
        let mut engine = Engine::new(MemoryKernel::default());
        engine.start(session("mod:openssl,pid:1")).expect("a session starts");
        std::cell::RefCell::new(engine)
    };
}

/// The spec of a session of root's with `filter`.
fn session(filter: &str) -> Spec {
    validate::start(
        StartTraceRequest {
            filter: filter.into(),
            name: "fuzz".into(),
            options: Some(TraceOptions {
                capture_bytes: 64,
                ..TraceOptions::default()
            }),
        },
        ROOT,
        &Limits::default(),
    )
    .expect("a valid request")
}

fn records_through(
    engine: &mut Engine<MemoryKernel>,
    runtime: &tokio::runtime::Runtime,
    data: &[u8],
) {
    let before = engine.records();
    let session = engine
        .start(session(
            "mod:socket,mod:process,mod:openssl,mod:protocol,mod:data,pid:1",
        ))
        .expect("a session starts");
    let queue_len = usize::from(data.first().copied().unwrap_or(0) % 32) + 1;
    let (_, mut rx) = engine
        .follow(Follow::Id(session.id.clone()), ROOT, queue_len, false, None)
        .expect("a follower attaches");

    let (mut received, mut reported_lost, mut ended) = (0u64, 0u64, 0);
    let mut count = |item: Item| match item {
        Item::Event(_) => received += 1,
        Item::Lost(lost) => reported_lost += lost.count,
        Item::End(_) => ended += 1,
        other @ (Item::Heartbeat(_) | Item::Compact(_)) => panic!("unexpected item {other:?}"),
    };
    let mut rest = data.get(1..).unwrap_or_default();
    let mut handled = 0u64;
    while let [selector, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        let mut record = bytes.to_vec();
        shape(&mut record, *selector);
        engine.handle(&record);
        handled += 1;
        // The follower reads now and then, as a slow one would.
        if selector & 0x40 != 0 {
            engine.flush();
            while let Ok(item) = rx.try_recv() {
                count(item);
            }
        }
    }
    let stopped = engine.stop(&session.id, ROOT).expect("the session stops");
    // The stream ends with the final loss notice and the reason, handed
    // over at the stop even when the queue is full.
    runtime.block_on(async {
        while let Some(item) = rx.recv().await {
            count(item);
        }
    });
    assert_eq!(engine.records() - before, handled, "every record handled");
    assert_eq!(received, stopped.events_delivered, "delivered = received");
    assert_eq!(reported_lost, stopped.events_lost, "lost = reported lost");
    assert_eq!(ended, 1, "the stream ends saying why");
}

/// Writes the kind, ABI and session mask that `selector` asks for into
/// the header at the start of `record` (as far as it reaches).
fn shape(record: &mut [u8], selector: u8) {
    let mut put = |offset: usize, value: &[u8]| {
        if let Some(field) = record.get_mut(offset..offset + value.len()) {
            field.copy_from_slice(value);
        }
    };
    if let Some(kind) = KINDS.get(usize::from(selector & 7)) {
        put(std::mem::offset_of!(Header, kind), &kind.to_ne_bytes());
        put(
            std::mem::offset_of!(Header, abi),
            &ABI_VERSION.to_ne_bytes(),
        );
    }
    if selector & 0x80 != 0 {
        put(
            std::mem::offset_of!(Header, sessions),
            &u64::MAX.to_ne_bytes(),
        );
    }
}

/// A protobuf-encoded `StartTrace` or `FollowTrace` request, from root or
/// from uid 1000 (the first byte says which): refused with a reason, or a
/// session that compiles, within the limits, and — for anyone but root —
/// restricted to the caller's own processes.
pub fn requests(data: &[u8]) {
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let caller = Caller {
        uid: if first & 1 == 0 { 0 } else { 1000 },
    };
    let spec = if first & 2 == 0 {
        let Ok(request) = StartTraceRequest::decode(body) else {
            return;
        };
        validate::start(request, caller, &Limits::default()).ok()
    } else {
        let Ok(request) = FollowTraceRequest::decode(body) else {
            return;
        };
        match validate::follow(request, caller, &Limits::default()) {
            Ok((target, queue_len)) => {
                let most = Limits::default().tier(caller).queue_len;
                assert!((1..=most).contains(&queue_len));
                match target {
                    Follow::Session(spec) => Some(spec),
                    Follow::Id(_) => None,
                }
            }
            Err(_) => None,
        }
    };
    if let Some(spec) = spec {
        check_spec(&spec, caller);
    }
}

fn check_spec(spec: &Spec, caller: Caller) {
    let limits = Limits::default();
    let tier = limits.tier(caller);
    assert!(spec.capture_bytes as usize <= limit::CAPTURE_MAX);
    assert!(spec.capture_bytes <= tier.capture_bytes);
    assert!(spec.idle_timeout <= tier.idle_timeout);
    assert!(
        spec.filter.len() <= tier.filter_terms + 1,
        "the uid term is added"
    );
    assert!(Limits::check_name(&spec.name).is_ok());
    assert!(
        caller.is_root() || spec.otlp_endpoint.is_none(),
        "a user named an OTLP collector outside the (empty) allow-list"
    );
    assert!(spec.filter.to_string().len() <= 4 * validate::MAX_FILTER_LEN);
    if !caller.is_root() {
        assert_eq!(
            spec.filter.uids().collect::<Vec<_>>(),
            [caller.uid],
            "a non-root session selects only the caller's processes"
        );
    }
    compile([(0, &spec.filter)], 1, &[]).expect("an accepted filter compiles");
}
