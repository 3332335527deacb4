//! The service without root: the real engine and hub behind the real
//! tonic server, over an in-memory transport, with an in-memory stand-in
//! for the kernel and hand-built kernel records. Each client connection
//! calls as a chosen uid (see `Service::caller`).

use std::time::Duration;

use hyper_util::rt::TokioIo;
use qtap_common::{kind, Header, SyscallRecord, ABI_VERSION};
use qtap_proto::v1::{
    follow_item::Item, follow_trace_request::Target, qtap_client::QtapClient,
    qtap_server::QtapServer, FollowItem, FollowTraceRequest, ListTracesRequest, LossStage,
    StartTraceRequest, StopTraceRequest, TraceOptions,
};
use tokio::sync::mpsc;
use tonic::{transport::Channel, Code, Streaming};

use super::Service;
use crate::{
    ebpf::memory::MemoryKernel,
    engine::{Caller, Command, Engine},
};

/// A running engine with its service; clients connect in memory.
struct Harness {
    commands: mpsc::Sender<Command>,
    records: mpsc::Sender<Vec<u8>>,
}

impl Harness {
    fn start() -> Harness {
        let (commands, mut command_rx) = mpsc::channel::<Command>(64);
        let (records, mut record_rx) = mpsc::channel::<Vec<u8>>(1024);
        let mut engine = Engine::new(MemoryKernel::default());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    Some(command) = command_rx.recv() => engine.command(command),
                    Some(record) = record_rx.recv() => engine.handle(&record),
                    _ = tick.tick() => engine.tick(),
                    else => break,
                }
                engine.flush();
            }
        });
        Harness { commands, records }
    }

    /// A client whose calls arrive as `uid`.
    async fn client(&self, uid: u32) -> QtapClient<Channel> {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let service = Service::new(self.commands.clone(), std::sync::Arc::default(), false);
        let server =
            QtapServer::with_interceptor(service, move |mut request: tonic::Request<()>| {
                request.extensions_mut().insert(Caller { uid });
                Ok(request)
            });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(server_io))),
        );
        let mut client_io = Some(client_io);
        let channel = tonic::transport::Endpoint::from_static("http://in-memory")
            .connect_with_connector(tower::service_fn(move |_| {
                let io = client_io.take();
                async move {
                    io.map(TokioIo::new)
                        .ok_or_else(|| std::io::Error::other("one connection only"))
                }
            }))
            .await
            .unwrap();
        QtapClient::new(channel)
    }

    /// Sends a hand-built `write` record of `pid` (run by root) for the
    /// sessions in `mask`.
    async fn write_record(&self, pid: u32, mask: u64, bytes: i64) {
        self.write_record_at(pid, mask, bytes, crate::events::monotonic_ns())
            .await;
    }

    /// As `write_record`, stamped `ts_ns` (kernel monotonic time).
    async fn write_record_at(&self, pid: u32, mask: u64, bytes: i64, ts_ns: u64) {
        let hdr = Header {
            pid,
            sessions: mask,
            ts_ns,
            ..Header::default()
        };
        self.send_write(hdr, bytes).await;
    }

    /// A `write` record with the pid, uid, sessions and time of `hdr`.
    async fn send_write(&self, hdr: Header, bytes: i64) {
        let record = SyscallRecord {
            hdr: Header {
                kind: kind::SYSCALL,
                abi: ABI_VERSION,
                tid: hdr.pid,
                ..hdr
            },
            ret: bytes,
            bytes,
            call: qtap_common::call::WRITE,
            direction: qtap_common::direction::EGRESS,
            fd: 1,
            new_fd: -1,
            ..SyscallRecord::default()
        };
        // SAFETY: reading the bytes of a plain-old-data record.
        let raw = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&record).cast::<u8>(),
                size_of::<SyscallRecord>(),
            )
        };
        self.records.send(raw.to_vec()).await.unwrap();
    }
}

async fn start(
    client: &mut QtapClient<Channel>,
    filter: &str,
    idle: u32,
) -> Result<String, tonic::Status> {
    let request = StartTraceRequest {
        filter: filter.into(),
        name: String::new(),
        options: Some(TraceOptions {
            idle_timeout_secs: idle,
            ..TraceOptions::default()
        }),
    };
    Ok(client.start_trace(request).await?.into_inner().id)
}

async fn follow(
    client: &mut QtapClient<Channel>,
    id: &str,
    queue_len: u32,
) -> Result<Streaming<FollowItem>, tonic::Status> {
    let request = FollowTraceRequest {
        queue_len,
        ..follow_request(id, Form::Plain)
    };
    Ok(client.follow_trace(request).await?.into_inner())
}

/// The stream forms a follower can ask for.
#[derive(Clone, Copy)]
enum Form {
    Plain,
    Batched,
    Compact,
}

fn follow_request(id: &str, form: Form) -> FollowTraceRequest {
    FollowTraceRequest {
        target: Some(Target::Id(id.into())),
        queue_len: 0,
        options: None,
        batch: matches!(form, Form::Batched),
        compact: matches!(form, Form::Compact),
    }
}

/// The next item that is not a heartbeat (within 5 s).
async fn next(stream: &mut Streaming<FollowItem>) -> Item {
    let wait = async {
        loop {
            let item = stream.message().await.unwrap().unwrap();
            match item.item.unwrap() {
                Item::Heartbeat(_) => {}
                other => return other,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("no item within 5 s")
}

/// Waits until the engine has handled everything sent so far.
async fn settle(client: &mut QtapClient<Channel>) {
    client.list_traces(ListTracesRequest {}).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::test]
async fn filter_errors_are_invalid_argument_naming_the_term() {
    let harness = Harness::start();
    let mut root = harness.client(0).await;
    let err = start(&mut root, "mod:socket,exe.contain:curl", 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("`exe.contain:curl`"),
        "{}",
        err.message()
    );
    let err = start(&mut root, &"x".repeat(5000), 0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = follow(&mut root, "s999", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let too_much = StartTraceRequest {
        filter: "pid:1".into(),
        name: String::new(),
        options: Some(TraceOptions {
            capture_bytes: 4097,
            ..TraceOptions::default()
        }),
    };
    let err = root.start_trace(too_much).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("capture_bytes 4097"),
        "{}",
        err.message()
    );
}

/// Hostile filters: a megabyte, control characters, a message larger than
/// the transport takes. Each is refused, and the service goes on.
#[tokio::test]
async fn hostile_requests_are_refused_and_the_service_goes_on() {
    let harness = Harness::start();
    let mut root = harness.client(0).await;
    let err = start(&mut root, &format!("exe:/{}", "a".repeat(1 << 20)), 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit is 4096"), "{}", err.message());
    let err = start(&mut root, "exe.contains:cu\u{7}rl", 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("control characters"),
        "{}",
        err.message()
    );
    // Over tonic's 4 MiB message limit: refused by the transport.
    let huge = start(&mut root, &"x".repeat(5 << 20), 0).await.unwrap_err();
    assert_ne!(huge.code(), Code::Ok);
    // Still serving.
    let id = start(&mut root, "pid:4000003", 0).await.unwrap();
    assert!(root
        .list_traces(ListTracesRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions
        .iter()
        .any(|s| s.id == id));
}

#[tokio::test]
async fn users_see_and_touch_only_their_own_sessions() {
    let harness = Harness::start();
    let mut root = harness.client(0).await;
    let mut alice = harness.client(1000).await;
    let mut bob = harness.client(1001).await;
    let root_id = start(&mut root, "exe.contains:nginx", 0).await.unwrap();
    let alice_id = start(&mut alice, "exe.contains:curl", 0).await.unwrap();

    let alice_sees = alice
        .list_traces(ListTracesRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(alice_sees.len(), 1);
    assert_eq!(alice_sees[0].id, alice_id);
    assert_eq!(alice_sees[0].owner_uid, 1000);
    assert_eq!(
        alice_sees[0].filter, "exe.contains:curl,uid:1000",
        "non-root sessions select only the caller's processes"
    );
    assert_eq!(
        root.list_traces(ListTracesRequest {})
            .await
            .unwrap()
            .into_inner()
            .sessions
            .len(),
        2
    );

    for (who, id) in [(&mut bob, &alice_id), (&mut alice, &root_id)] {
        let err = who
            .stop_trace(StopTraceRequest { id: id.clone() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
        let err = follow(who, id, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    // Root may stop anyone's session; the owner may stop its own.
    root.stop_trace(StopTraceRequest { id: alice_id })
        .await
        .unwrap();
    alice
        .stop_trace(StopTraceRequest {
            id: root_id.clone(),
        })
        .await
        .unwrap_err();
    root.stop_trace(StopTraceRequest { id: root_id })
        .await
        .unwrap();
}

#[tokio::test]
async fn one_record_fans_out_to_every_selecting_session() {
    let harness = Harness::start();
    let mut root = harness.client(0).await;
    let a = start(&mut root, "pid:4000001", 0).await.unwrap();
    let b = start(&mut root, "pid:4000001,mod:socket,mod:process", 0)
        .await
        .unwrap();
    let mut fa = follow(&mut root, &a, 0).await.unwrap();
    let mut fb = follow(&mut root, &b, 0).await.unwrap();
    // Slots are 0 and 1; one record carries both bits, one only b's.
    harness.write_record(4_000_001, 0b11, 10).await;
    harness.write_record(4_000_001, 0b10, 20).await;
    let Item::Event(e) = next(&mut fa).await else {
        panic!()
    };
    assert_eq!(
        (e.session.as_str(), e.seq, e.bytes),
        (a.as_str(), 1, Some(10))
    );
    let Item::Event(e) = next(&mut fb).await else {
        panic!()
    };
    assert_eq!(
        (e.session.as_str(), e.seq, e.bytes),
        (b.as_str(), 1, Some(10))
    );
    let Item::Event(e) = next(&mut fb).await else {
        panic!()
    };
    assert_eq!((e.seq, e.bytes), (2, Some(20)));
    settle(&mut root).await;
    let sessions = root
        .list_traces(ListTracesRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let delivered: Vec<u64> = sessions.iter().map(|s| s.events_delivered).collect();
    assert_eq!(delivered, vec![1, 2]);
}

#[tokio::test]
async fn a_slow_follower_loses_is_told_how_many_and_slows_no_one() {
    let harness = Harness::start();
    let mut root = harness.client(0).await;
    let id = start(&mut root, "pid:4000002", 0).await.unwrap();
    let mut slow = follow(&mut root, &id, 1).await.unwrap();
    let mut fast = follow(&mut root, &id, 4096).await.unwrap();
    for n in 1..=200 {
        harness.write_record(4_000_002, 1, n).await;
    }
    // The fast follower gets all 200, in order.
    for n in 1..=200 {
        let Item::Event(e) = next(&mut fast).await else {
            panic!("fast follower got a loss")
        };
        assert_eq!(e.bytes, Some(n));
    }
    // Whatever the slow one received plus what it is told it lost adds up
    // to 200: the loss count reaches it as soon as its queue has room (a
    // heartbeat's turn is enough).
    let (mut received, mut lost) = (0u64, 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received + lost < 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {received} received + {lost} lost of 200"
        );
        match next(&mut slow).await {
            Item::Event(_) => received += 1,
            Item::Lost(l) => {
                assert_eq!(l.stage, LossStage::DaemonQueue as i32);
                lost += l.count;
            }
            Item::Heartbeat(_) => unreachable!("next() skips heartbeats"),
            Item::Batch(_) | Item::Compact(_) => unreachable!("batches were not asked for"),
            Item::End(end) => panic!("the session ended early: {end:?}"),
        }
    }
    assert!(lost > 0, "a queue of 1 cannot hold 200 events");
    assert_eq!(received + lost, 200);
    settle(&mut root).await;
    let session = root
        .list_traces(ListTracesRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions
        .remove(0);
    assert_eq!(session.events_lost, lost);
}

#[tokio::test]
async fn idle_sessions_expire_and_followed_ones_stay() {
    let harness = Harness::start();
    let mut root = harness.client(0).await;
    let idle = start(&mut root, "pid:4000003", 1).await.unwrap();
    let watched = start(&mut root, "pid:4000004", 1).await.unwrap();
    let _follower = follow(&mut root, &watched, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let ids: Vec<String> = root
        .list_traces(ListTracesRequest {})
        .await
        .unwrap()
        .into_inner()
        .sessions
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(ids, vec![watched], "{idle} should have expired");
}

/// A client that accepts batches gets every event, in order, in fewer
/// messages than events.
#[tokio::test]
async fn batched_follow_keeps_every_event_in_order() {
    let harness = Harness::start();
    let mut root = harness.client(0).await;
    let id = start(&mut root, "pid:4000002", 0).await.unwrap();
    let request = follow_request(&id, Form::Batched);
    let mut stream = root.follow_trace(request).await.unwrap().into_inner();
    for n in 1..=200 {
        harness.write_record(4_000_002, 1, n).await;
    }
    let (mut seqs, mut messages) = (Vec::new(), 0);
    while seqs.len() < 200 {
        match next(&mut stream).await {
            Item::Batch(b) => {
                messages += 1;
                seqs.extend(b.events.iter().map(|e| e.seq));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    assert!(messages < 200, "{messages} messages for 200 events");
}

/// A compact follower and a plain one of the same session get the same
/// events: the compact records decode to the plain messages.
#[tokio::test]
async fn compact_follow_carries_what_plain_follow_does() {
    let harness = Harness::start();
    let mut root = harness.client(0).await;
    let id = start(&mut root, "pid:4000003", 0).await.unwrap();
    let mut plain = follow(&mut root, &id, 0).await.unwrap();
    let request = follow_request(&id, Form::Compact);
    let mut compact = root.follow_trace(request).await.unwrap().into_inner();
    for n in 1..=50 {
        harness.write_record(4_000_003, 1, n).await;
    }
    let mut decoder = qtap_proto::compact::Decoder::new();
    let mut from_compact = Vec::new();
    while from_compact.len() < 50 {
        match next(&mut compact).await {
            Item::Compact(b) => from_compact.extend(decoder.events(&b).unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut from_plain = Vec::new();
    while from_plain.len() < 50 {
        match next(&mut plain).await {
            Item::Event(e) => from_plain.push(e),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(from_compact, from_plain);
    assert_eq!(from_plain[49].seq, 50);
}

async fn start_with(
    client: &mut QtapClient<Channel>,
    filter: &str,
    name: &str,
    options: TraceOptions,
) -> Result<String, tonic::Status> {
    let request = StartTraceRequest {
        filter: filter.into(),
        name: name.into(),
        options: Some(options),
    };
    Ok(client.start_trace(request).await?.into_inner().id)
}

/// Asserts `result` failed with `code` and a message containing `says`.
fn refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, says: &str) {
    let status = result.expect_err("the request should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(says), "{:?}", status.message());
}

/// Each quota of a user other than root is refused with its code and a
/// message naming the limit; root is not bound by them.
#[tokio::test]
async fn quotas_are_refused_with_their_code_and_limit() {
    let harness = Harness::start();
    let mut user = harness.client(1000).await;
    let mut root = harness.client(0).await;
    let opts = |f: fn(&mut TraceOptions)| {
        let mut o = TraceOptions::default();
        f(&mut o);
        o
    };
    // Values no user request may carry.
    refused(
        start_with(&mut user, "pid:1", "", opts(|o| o.capture_bytes = 4096)).await,
        Code::InvalidArgument,
        "--user-max-capture-bytes",
    );
    refused(
        start_with(
            &mut user,
            "pid:1",
            "",
            opts(|o| o.idle_timeout_secs = u32::MAX),
        )
        .await,
        Code::InvalidArgument,
        "--user-max-idle-timeout",
    );
    let terms: Vec<String> = (0..17).map(|n| format!("exe:/bin/x{n}")).collect();
    refused(
        start(&mut user, &terms.join(","), 0).await,
        Code::InvalidArgument,
        "--user-max-filter-terms",
    );
    refused(
        start_with(
            &mut user,
            "pid:1",
            &"n".repeat(1 << 20),
            TraceOptions::default(),
        )
        .await,
        Code::InvalidArgument,
        "the limit is 128",
    );
    refused(
        start_with(
            &mut user,
            "pid:1",
            "x\x1b]0;owned\x07",
            TraceOptions::default(),
        )
        .await,
        Code::InvalidArgument,
        "control character",
    );
    refused(
        start_with(
            &mut user,
            "pid:1",
            "",
            opts(|o| o.otlp_endpoint = "http://169.254.169.254:80".into()),
        )
        .await,
        Code::PermissionDenied,
        "--otlp-allow",
    );
    // Root may do all of it.
    start_with(
        &mut root,
        &terms.join(","),
        "",
        opts(|o| {
            o.capture_bytes = 4096;
            o.idle_timeout_secs = u32::MAX;
        }),
    )
    .await
    .unwrap();
}

/// A user's sessions and followers are counted against the user's
/// limits; root's are not bound by them.
#[tokio::test]
async fn a_users_sessions_and_followers_are_counted() {
    let harness = Harness::start();
    let mut user = harness.client(1000).await;
    let mut root = harness.client(0).await;
    let big = start(&mut root, "pid:1", 0).await.unwrap();
    // Sessions per user.
    let mut mine = Vec::new();
    for n in 0..4 {
        mine.push(
            start(&mut user, &format!("pid:{}", 100 + n), 0)
                .await
                .unwrap(),
        );
    }
    refused(
        start(&mut user, "pid:200", 0).await,
        Code::ResourceExhausted,
        "--user-max-sessions",
    );
    // Followers per session and per user, and the queue length.
    let id = mine[0].clone();
    refused(
        follow(&mut user, &id, 1 << 20).await,
        Code::InvalidArgument,
        "--user-max-queue-len",
    );
    let mut streams = Vec::new();
    for _ in 0..8 {
        streams.push(follow(&mut user, &id, 0).await.unwrap());
    }
    refused(
        follow(&mut user, &mine[1], 0).await,
        Code::ResourceExhausted,
        "--user-max-followers",
    );
    // Root's session takes followers beyond a user's limit.
    for _ in 0..10 {
        streams.push(follow(&mut root, &big, 0).await.unwrap());
    }
}

/// Users together never take the kernel's last `exe.contains` lengths:
/// root can always start a session.
#[tokio::test]
async fn users_cannot_fill_the_kernels_shared_tables() {
    let harness = Harness::start();
    let mut root = harness.client(0).await;
    for (n, uid) in (3000..3003).enumerate() {
        let mut user = harness.client(uid).await;
        let (a, b) = ("a".repeat(3 + 2 * n), "b".repeat(4 + 2 * n));
        start(&mut user, &format!("exe.contains:{a},exe.contains:{b}"), 0)
            .await
            .unwrap();
        refused(
            start(&mut user, &format!("exe.contains:{}", "c".repeat(20)), 0).await,
            Code::ResourceExhausted,
            "--user-max-contains-lengths",
        );
    }
    let mut fourth = harness.client(3003).await;
    refused(
        start(&mut fourth, "exe.contains:zzzzzzzzzzzzzzz", 0).await,
        Code::ResourceExhausted,
        "the rest is root's",
    );
    start(
        &mut root,
        "exe.contains:rrrrrrrrrrrrrrrrrr,exe.contains:qqqqqqqqqqqqqqqqqqqqqq",
        0,
    )
    .await
    .unwrap();
}

/// A record stamped before a session existed was made for its slot's
/// previous owner: it is not delivered, though it carries the slot's bit.
#[tokio::test]
async fn records_older_than_a_session_never_reach_it() {
    let harness = Harness::start();
    let mut root = harness.client(0).await;
    let before = crate::events::monotonic_ns();
    let id = start(&mut root, "pid:4000009", 0).await.unwrap();
    let mut stream = follow(&mut root, &id, 0).await.unwrap();
    harness.write_record_at(4_000_009, 1, 11, before).await;
    harness.write_record(4_000_009, 1, 22).await;
    match next(&mut stream).await {
        Item::Event(e) => assert_eq!(e.bytes, Some(22), "the older record came first"),
        other => panic!("unexpected {other:?}"),
    }
}

/// A restricted session's records from a process that is gone before its
/// owner's right to see it is checked are withheld (fail closed) and
/// counted, as lost at their own stage, for the sessions of the uid the
/// process ran as; another user's records are not the session's to count.
#[tokio::test]
async fn records_withheld_unchecked_are_counted_for_their_owner() {
    let harness = Harness::start();
    let mut user = harness.client(1000).await;
    // No process 4000010 exists: its credentials cannot be read.
    let id = start(&mut user, "pid:4000010", 0).await.unwrap();
    let mut stream = follow(&mut user, &id, 0).await.unwrap();
    let record = |uid| Header {
        pid: 4_000_010,
        uid,
        sessions: 1,
        ts_ns: crate::events::monotonic_ns(),
        ..Header::default()
    };
    for _ in 0..3 {
        harness.send_write(record(1000), 5).await;
    }
    harness.send_write(record(2000), 5).await;
    settle(&mut user).await;
    user.stop_trace(StopTraceRequest { id }).await.unwrap();
    match next(&mut stream).await {
        Item::Lost(lost) => {
            assert_eq!(lost.stage, LossStage::AccessUnverified as i32);
            assert_eq!(lost.count, 3);
        }
        other => panic!("expected the withheld records' count, got {other:?}"),
    }
    assert!(matches!(next(&mut stream).await, Item::End(_)));
}
