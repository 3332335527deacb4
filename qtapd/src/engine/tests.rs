//! The engine with an in-memory kernel: what it selects.

use std::process::{Child, Command as Process};

use qtap_proto::v1::StartTraceRequest;

use super::{Caller, Engine, Target};
use crate::{ebpf::memory::MemoryKernel, ebpf::Selector, grpc::validate, limits::Limits};

const ROOT: Caller = Caller { uid: 0 };

/// A process to select, killed when dropped.
struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a session selecting `pid`; returns its id and its bit.
fn start(engine: &mut Engine<MemoryKernel>, pid: u32) -> (String, u64) {
    let request = StartTraceRequest {
        filter: format!("pid:{pid}"),
        ..StartTraceRequest::default()
    };
    let spec = validate::start(request, ROOT, &Limits::default()).expect("a valid filter");
    let id = engine.start(spec).expect("a session starts").id;
    let bit = 1 << engine.hub.get(&id).expect("the session").slot;
    (id, bit)
}

#[test]
fn a_follower_is_left_out_of_the_session_it_reads() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = runtime.enter();
    let reader = Sleeper(Process::new("sleep").arg("30").spawn().expect("sleep runs"));
    let pid = reader.0.id();
    let mut engine = Engine::new(MemoryKernel::default());
    let (a, a_bit) = start(&mut engine, pid);
    let (b, b_bit) = start(&mut engine, pid);
    assert_eq!(
        engine.kernel.selection(pid),
        a_bit | b_bit,
        "both sessions select it"
    );

    let follow = |engine: &mut Engine<MemoryKernel>, id: &str, reader: Option<u32>| {
        engine
            .follow(Target::Id(id.to_owned()), ROOT, 16, false, reader)
            .expect("a follower attaches")
    };
    // Once it reads session a, a no longer selects it; b still does.
    let _a_stream = follow(&mut engine, &a, Some(pid));
    assert_eq!(engine.kernel.selection(pid), b_bit);
    // A follower whose process qtapd does not know changes nothing.
    let _remote = follow(&mut engine, &b, None);
    assert_eq!(engine.kernel.selection(pid), b_bit);
    // Once it reads b as well, no session selects it.
    let _b_stream = follow(&mut engine, &b, Some(pid));
    assert_eq!(engine.kernel.selection(pid), 0);
    assert!(engine
        .kernel
        .selected()
        .iter()
        .all(|&(tgid, _)| tgid != pid));
}
