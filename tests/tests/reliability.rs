//! Faults and awkward processes, end to end: a daemon killed under load,
//! fd numbers reused for a file and then another socket, non-blocking
//! reads that fail, vectors with empty entries, several threads on one fd,
//! an executable whose path has spaces and bytes that are not UTF-8, and
//! a daemon that reads a short process's records only after it ended.

use std::{
    fs,
    net::TcpListener,
    os::unix::ffi::OsStrExt,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use qtap_tests::{
    of_pid, python_named, qtap_programs, require_root, run_curl, run_curl_at, serve_once,
    stdout_of, syscall, Daemon, Follower, Service,
};
use serde_json::Value;

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// `kill -9` under load: the kernel drops every program and link with the
/// daemon's fds, a new daemon takes the socket over, and a session works
/// at once.
#[test]
fn killed_daemon_leaves_nothing_attached_and_restarts() {
    require_root();
    assert_eq!(qtap_programs(), 0, "qtap programs loaded before the test");
    let service = Service::start(&[]).unwrap();
    let id = service.start_session("mod:socket,mod:openssl,exe.contains:curl");
    let follower =
        Follower::spawn(service.ctl_command(None, &["trace", "follow", &id, "--output", "json"]))
            .unwrap();
    let loaded = qtap_programs();
    assert!(loaded >= 37, "only {loaded} qtap programs loaded");
    // Load: curl requests while the daemon dies.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        for _ in 0..20 {
            serve_once(&listener);
        }
    });
    for i in 0..20 {
        if i == 10 {
            service.kill();
        }
        run_curl(&format!("http://127.0.0.1:{port}/{i}"));
    }
    server.join().unwrap();
    wait_for("the kernel to drop qtap's programs", || {
        qtap_programs() == 0
    });
    drop(follower);

    let service = service.restart(&[]).unwrap();
    let status = service.ctl(&["status"]);
    assert!(status.status.success(), "{status:?}");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("sessions            0"), "{text}");
    let again = service.ctl(&["trace", "start", "--filter", "exe.contains:curl"]);
    assert!(again.status.success(), "{again:?}");
    service.stop().unwrap();
    wait_for("a clean stop to drop qtap's programs", || {
        qtap_programs() == 0
    });
}

/// Runs a python script under a `--bpf-trace` daemon selecting python;
/// returns the script's stdout and the events of its process.
fn traced_python(script: &str, args: &[String]) -> (String, Vec<Value>) {
    let (stdout, events) = traced_python_all(script, args);
    // The script prints its pid first.
    let pid: u32 = stdout.split_whitespace().next().unwrap().parse().unwrap();
    let mine = of_pid(&events, pid);
    (stdout, mine)
}

/// Like [`traced_python`], with the events of every python process.
fn traced_python_all(script: &str, args: &[String]) -> (String, Vec<Value>) {
    let daemon = Daemon::start("mod:socket,mod:process,exe.contains:python3").unwrap();
    let child = Command::new("python3")
        .args(["-c", script])
        .args(args)
        .output()
        .expect("python3");
    assert!(
        child.status.success(),
        "{}",
        String::from_utf8_lossy(&child.stderr)
    );
    let events = daemon.stop().unwrap();
    (String::from_utf8_lossy(&child.stdout).into_owned(), events)
}

fn on_fd<'a>(events: &'a [Value], fd: i64, call: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["fd"].as_i64() == Some(fd) && syscall(e) == Some(call))
        .collect()
}

/// An fd number used by a socket, then a file, then another socket: each
/// event describes what the fd was at the time, never what it had been.
#[test]
fn reused_fd_numbers_carry_nothing_over() {
    require_root();
    let first = TcpListener::bind("127.0.0.1:0").unwrap();
    let second = TcpListener::bind("127.0.0.1:0").unwrap();
    let ports = [
        first.local_addr().unwrap().port(),
        second.local_addr().unwrap().port(),
    ];
    let servers = [first, second].map(|l| thread::spawn(move || l.accept().map(|_| ())));
    let file = std::env::temp_dir().join(format!("qtap-reuse-{}", std::process::id()));
    let script = r"
import os, socket, sys
print(os.getpid())
a = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
fd = a.fileno()
a.sendall(b'first')
a.close()
f = open(sys.argv[3], 'w')
f.write('a line for the file\n')
f.flush()
print(fd, f.fileno())
f.close()
b = socket.create_connection(('127.0.0.1', int(sys.argv[2])))
b.sendall(b'second')
print(b.fileno())
b.close()
";
    let args = [
        ports[0].to_string(),
        ports[1].to_string(),
        file.display().to_string(),
    ];
    let (out, events) = traced_python(script, &args);
    let _ = fs::remove_file(&file);
    for s in servers {
        let _ = s.join();
    }
    let fds: Vec<i64> = out
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(
        fds[0], fds[1],
        "the file must take the socket's number: {out}"
    );
    assert_eq!(
        fds[0], fds[2],
        "the second socket must take it again: {out}"
    );
    let fd = fds[0];
    let sends = on_fd(&events, fd, "sendto");
    assert_eq!(sends.len(), 2, "{events:#?}");
    assert_eq!(
        sends[0]["conn_info"]["remote"],
        format!("127.0.0.1:{}", ports[0])
    );
    assert_eq!(
        sends[1]["conn_info"]["remote"],
        format!("127.0.0.1:{}", ports[1])
    );
    let write = on_fd(&events, fd, "write");
    assert_eq!(write.len(), 1, "{events:#?}");
    assert!(write[0]["conn_info"].is_null(), "{}", write[0]);
    assert_eq!(write[0]["open"], false);
    assert_eq!(write[0]["protocol"], "unknown");
}

/// An exec closes the close-on-exec fds without a `close` call: a file the
/// new image opens on the number of such a socket is a file, with no
/// connection carried over, while a socket the new image kept is still
/// its connection.
#[test]
fn an_exec_leaves_no_connection_on_the_numbers_it_closed() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let conns: Vec<_> = (0..2).map(|_| listener.accept().unwrap().0).collect();
        for mut conn in conns {
            let _ = std::io::copy(&mut conn, &mut std::io::sink());
        }
    });
    let second = r"
import os, sys
kept, gone = int(sys.argv[1]), int(sys.argv[2])
os.write(kept, b'after exec')
opened = []
while gone not in opened:
    opened.append(os.open('/etc/hostname', os.O_RDONLY))
os.read(gone, 100)
";
    let script = r"
import os, socket, sys
print(os.getpid(), flush=True)
port = int(sys.argv[1])
kept = socket.create_connection(('127.0.0.1', port))
gone = socket.create_connection(('127.0.0.1', port))
gone.sendall(b'before exec')
os.set_inheritable(kept.fileno(), True)
print(kept.fileno(), gone.fileno(), flush=True)
os.execv(sys.executable, [sys.executable, '-c', sys.argv[2], str(kept.fileno()), str(gone.fileno())])
";
    let (out, events) = traced_python(script, &[port.to_string(), second.to_owned()]);
    server.join().unwrap();
    let fds: Vec<i64> = out
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    let (kept, gone) = (fds[0], fds[1]);
    let remote = format!("127.0.0.1:{port}");
    let sent = on_fd(&events, gone, "sendto");
    assert_eq!(sent.len(), 1, "{events:#?}");
    assert_eq!(sent[0]["conn_info"]["remote"], remote.as_str());
    // Python's start-up reads its own files on that number too: every
    // read there is of a file.
    let reads = on_fd(&events, gone, "read");
    assert!(!reads.is_empty(), "{events:#?}");
    for read in reads {
        assert!(
            read["conn_info"].is_null(),
            "a file read after the exec carries the old socket's connection: {read}"
        );
    }
    let write: Vec<_> = on_fd(&events, kept, "write")
        .into_iter()
        .filter(|e| e["bytes"].as_i64() == Some(10))
        .collect();
    assert_eq!(write.len(), 1, "{events:#?}");
    assert_eq!(write[0]["conn_info"]["remote"], remote.as_str());
}

/// A socket passed to another process over a unix socket (`SCM_RIGHTS`)
/// is a connection there too; `dup2` of a file onto a connected socket's
/// number makes that number a file, with no connection carried over.
///
/// The kernel side knows the connections it saw made (`socket`, `connect`,
/// `accept`); a passed or inherited socket is looked up in /proc when its
/// first event is handled, so the receiving process stays alive a second
/// here. One that exits at once is shown with `conn_info: null` — a known
/// limit (docs/reliability.md).
#[test]
fn passed_and_duplicated_fds() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut conn, &mut sink).unwrap();
        String::from_utf8(sink).unwrap()
    });
    let file = std::env::temp_dir().join(format!("qtap-dup2-{}", std::process::id()));
    let script = r"
import os, socket, sys, time
conn = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
a, b = socket.socketpair()
sys.stdout.flush()
child = os.fork()
if child == 0:
    a.close()
    _, fds, _, _ = socket.recv_fds(b, 16, 1)
    os.write(fds[0], b'passed;')
    print('child', os.getpid(), fds[0], flush=True)
    b.recv(1)  # lives until qtapd has looked the fd up (see above)
    os._exit(0)
socket.send_fds(a, [b'fd'], [conn.fileno()])
time.sleep(1)
a.send(b'x')
os.waitpid(child, 0)
fd = conn.fileno()
os.write(fd, b'before dup2;')
d = os.dup(fd)
os.write(d, b'dup;')
f = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.dup2(f, fd)
os.write(fd, b'to the file')
print('parent', os.getpid(), fd, d, flush=True)
";
    let (out, events) = traced_python_all(script, &[port.to_string(), file.display().to_string()]);
    let _ = fs::remove_file(&file);
    assert_eq!(server.join().unwrap(), "passed;before dup2;dup;");
    let field = |who: &str, i: usize| -> u32 {
        out.lines()
            .find(|l| l.starts_with(who))
            .and_then(|l| l.split_whitespace().nth(i))
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("no {who} line in {out}"))
    };
    let remote = format!("127.0.0.1:{port}");

    let (child, child_fd) = (of_pid(&events, field("child", 1)), field("child", 2));
    let passed = on_fd(&child, child_fd.into(), "write");
    assert_eq!(passed.len(), 1, "child: {child:#?}");
    assert_eq!(passed[0]["bytes"], 7);
    assert_eq!(
        passed[0]["conn_info"]["remote"],
        remote.as_str(),
        "a passed socket is a connection in its new process: {}",
        passed[0]
    );

    let (parent, fd) = (of_pid(&events, field("parent", 1)), field("parent", 2));
    let writes = on_fd(&parent, fd.into(), "write");
    assert_eq!(writes.len(), 2, "parent: {parent:#?}");
    assert_eq!(
        writes[0]["conn_info"]["remote"],
        remote.as_str(),
        "{}",
        writes[0]
    );
    let dup = field("parent", 3);
    let on_dup = on_fd(&parent, dup.into(), "write");
    assert_eq!(on_dup.len(), 1, "parent: {parent:#?}");
    assert_eq!(
        on_dup[0]["conn_info"]["remote"],
        remote.as_str(),
        "{}",
        on_dup[0]
    );
    let dup2 = parent
        .iter()
        .find(|e| syscall(e) == Some("dup2"))
        .unwrap_or_else(|| panic!("no dup2 event: {parent:#?}"));
    assert_eq!(dup2["new_fd"], fd, "{dup2}");
    assert!(dup2["conn_info"].is_null(), "dup2 of a file: {dup2}");
    assert_eq!(writes[1]["bytes"], 11);
    assert!(
        writes[1]["conn_info"].is_null(),
        "after dup2 of a file the fd is no connection: {}",
        writes[1]
    );
    assert_eq!(writes[1]["open"], false);
}

/// Entries of qtapd's `PENDING` map (a syscall's arguments kept from its
/// enter to its exit) left for threads of process `tgid`: their calls.
fn pending_calls_of(tgid: u32) -> Vec<u16> {
    use aya::maps::{HashMap, Map, MapData};
    let info = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .find(|m| m.name_as_str() == Some(qtap_common::map::PENDING))
        .expect("qtapd's PENDING map is loaded");
    let data = MapData::from_id(info.id()).unwrap();
    let pending: HashMap<_, u64, qtap_common::Pending> =
        HashMap::try_from(Map::HashMap(data)).unwrap();
    pending
        .iter()
        .filter_map(Result::ok)
        .filter(|(id, _)| (id >> 32) as u32 == tgid)
        .map(|(_, entry)| entry.call)
        .collect()
}

/// Processes that end while their threads sit in a traced syscall: a
/// thread blocked in `recv` when another calls `exit`, a process blocked
/// in `accept` killed with SIGKILL. Each call is still reported (with the
/// error the kernel gave it), the exit is seen, and nothing of theirs is
/// left in the kernel's maps.
#[test]
fn processes_ending_inside_a_syscall() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and never answers, so the client's recv blocks.
    let server = thread::spawn(move || listener.accept().map(|(conn, _)| conn));
    let daemon = Daemon::start("mod:socket,mod:process,exe.contains:python3").unwrap();
    let blocked_recv = Command::new("python3")
        .args([
            "-c",
            r"
import os, socket, sys, threading, time
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
threading.Thread(target=lambda: s.recv(100)).start()
time.sleep(0.5)
print(os.getpid(), s.fileno(), flush=True)
os._exit(0)
",
            &port.to_string(),
        ])
        .output()
        .unwrap();
    assert!(blocked_recv.status.success(), "{blocked_recv:?}");
    let out = String::from_utf8_lossy(&blocked_recv.stdout);
    let fields: Vec<i64> = out.split_whitespace().map(|f| f.parse().unwrap()).collect();
    let (recv_pid, recv_fd) = (fields[0], fields[1]);

    let mut blocked_accept = Command::new("python3")
        .args([
            "-c",
            "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); s.accept()",
        ])
        .spawn()
        .unwrap();
    let accept_pid = blocked_accept.id();
    // While it waits, its accept's arguments are there (the check sees
    // them); python takes a while to get there on an emulated kernel.
    wait_for("the blocked accept's entry", || {
        pending_calls_of(accept_pid)
            .iter()
            .any(|&c| c == qtap_common::call::ACCEPT || c == qtap_common::call::ACCEPT4)
    });
    blocked_accept.kill().unwrap();
    blocked_accept.wait().unwrap();
    thread::sleep(Duration::from_millis(300));
    for pid in [recv_pid as u32, accept_pid] {
        assert_eq!(
            pending_calls_of(pid).len(),
            0,
            "PENDING entries left for process {pid}, which has exited"
        );
    }
    let events = daemon.stop().unwrap();
    drop(server.join().unwrap());
    let exits = |of_it: &[Value]| of_it.iter().filter(|e| e["msg"] == "process/exit").count();

    let recv = of_pid(&events, recv_pid as u32);
    let cut = on_fd(&recv, recv_fd, "recvfrom")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("the interrupted recv is not reported: {recv:#?}"));
    assert!(
        cut["bytes"].as_i64().is_some_and(|b| b < 0) && !cut["error"].is_null(),
        "an interrupted recv is an error: {cut}"
    );
    assert_eq!(exits(&recv), 1, "{recv:#?}");

    let accept = of_pid(&events, accept_pid);
    let cut = accept
        .iter()
        .find(|e| syscall(e) == Some("accept4") || syscall(e) == Some("accept"))
        .unwrap_or_else(|| panic!("the interrupted accept is not reported: {accept:#?}"));
    assert!(!cut["error"].is_null(), "{cut}");
    assert_eq!(exits(&accept), 1, "{accept:#?}");
}

/// Non-blocking reads that fail are errors (`bytes` is -errno), vectors
/// with empty entries count every byte, and threads sharing an fd are each
/// seen with their own tid.
#[test]
fn eagain_vectors_and_threads() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut conn, &mut sink).unwrap();
        sink.len()
    });
    let script = r"
import os, socket, sys, threading
print(os.getpid())
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
s.setblocking(False)
try:
    s.recv(100)
except BlockingIOError:
    pass
s.setblocking(True)
parts = [b'', b'ab', b''] + [b'x'] * 100 + [b'', b'cde']
print(s.fileno(), os.writev(s.fileno(), parts))
def send():
    for _ in range(50):
        s.sendall(b'0123456789')
threads = [threading.Thread(target=send) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
s.close()
";
    let (out, events) = traced_python(script, &[port.to_string()]);
    let received = server.join().unwrap();
    let fields: Vec<i64> = out
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    let (fd, written) = (fields[0], fields[1]);
    assert_eq!(written, 105);

    let failed = on_fd(&events, fd, "recvfrom");
    let eagain = failed
        .iter()
        .find(|e| e["error"] == "EAGAIN")
        .unwrap_or_else(|| panic!("no EAGAIN recvfrom on fd {fd}: {events:#?}"));
    assert_eq!(eagain["bytes"], -11);

    let writev = on_fd(&events, fd, "writev");
    assert_eq!(writev.len(), 1, "{events:#?}");
    assert_eq!(writev[0]["bytes"], 105);

    let sends = on_fd(&events, fd, "sendto");
    let sent: i64 = sends.iter().filter_map(|e| e["bytes"].as_i64()).sum();
    assert_eq!(sent, 4 * 50 * 10);
    let tids: std::collections::HashSet<u64> =
        sends.iter().filter_map(|e| e["tid"].as_u64()).collect();
    assert_eq!(tids.len(), 4, "four threads, four tids");
    assert_eq!(received as i64, 105 + sent);
}

/// An executable whose path has a space and a byte that is not UTF-8 is
/// selected at exec by a filter on its directory, and shown with the byte
/// replaced.
#[test]
fn exec_of_an_awkward_path() {
    require_root();
    let dir = std::env::temp_dir().join(format!("qtap dir {}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let mut name = b"cu\xffrl".to_vec();
    name.splice(
        0..0,
        dir.as_os_str().as_bytes().iter().copied().chain(*b"/"),
    );
    let exe = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&name));
    fs::copy("/usr/bin/curl", &exe).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || serve_once(&listener));
    let filter = format!("mod:socket,mod:process,exe.startsWith:{}/", dir.display());
    let daemon = Daemon::start(&filter).unwrap();
    run_curl_at(&exe, &format!("http://127.0.0.1:{port}/"));
    server.join().unwrap();
    let events = daemon.stop().unwrap();
    let _ = fs::remove_dir_all(&dir);
    let exec = events
        .iter()
        .find(|e| e["msg"] == "process/exec")
        .unwrap_or_else(|| panic!("no exec: {events:#?}"));
    let shown = exec["filename"].as_str().unwrap();
    assert!(
        shown.contains(" dir ") && shown.ends_with("cu\u{fffd}rl"),
        "{shown}"
    );
    assert!(
        events.iter().any(|e| syscall(e) == Some("connect")
            && e["conn_info"]["remote"] == format!("127.0.0.1:{port}")),
        "{events:#?}"
    );
}

/// A hundred followers that connect and leave in turn: qtapd drops each as
/// it goes, keeps serving, and a follower after them gets events.
#[test]
fn followers_coming_and_going() {
    require_root();
    let service = Service::start(&[]).unwrap();
    let id = service.start_session("mod:socket,exe.contains:curl");
    for _ in 0..100 {
        let mut child = service
            .ctl_command(None, &["trace", "follow", &id, "--output", "json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(10));
        let _ = child.kill();
        let _ = child.wait();
    }
    let followers = || {
        let list = String::from_utf8_lossy(&service.ctl(&["trace", "list"]).stdout).into_owned();
        list.lines()
            .find(|l| l.starts_with(&id))
            .and_then(|l| l.split_whitespace().rev().nth(2).map(str::to_owned))
    };
    wait_for("qtapd to drop the followers that left", || {
        followers().as_deref() == Some("0")
    });
    let follower =
        Follower::spawn(service.ctl_command(None, &["trace", "follow", &id, "--output", "json"]))
            .unwrap();
    wait_for("the last follower to attach", || {
        followers().as_deref() == Some("1")
    });
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || serve_once(&listener));
    run_curl(&format!("http://127.0.0.1:{port}/"));
    server.join().unwrap();
    thread::sleep(Duration::from_millis(500));
    let events = follower.stop().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["conn_info"]["remote"] == format!("127.0.0.1:{port}")),
        "{events:#?}"
    );
    service.stop().unwrap();
}

/// Runs `qtapctl trace follow ID --output json --queue-len N` with stdout
/// counted and its end-of-stream counts written to a `--summary` file.
struct RawFollower {
    child: std::process::Child,
    summary: std::path::PathBuf,
}

impl RawFollower {
    fn spawn(service: &Service, id: &str, queue_len: &str) -> RawFollower {
        let summary = std::env::temp_dir().join(format!(
            "qtap-e2e-summary-{}-{id}-{queue_len}.json",
            std::process::id()
        ));
        let child = service
            .ctl_command(
                None,
                &[
                    "trace",
                    "follow",
                    id,
                    "--output",
                    "json",
                    "--queue-len",
                    queue_len,
                    "--summary",
                ],
            )
            .arg(&summary)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        RawFollower { child, summary }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the stream to end (the session was stopped); returns the
    /// lines it printed and its summary: (events, lost in qtapd's queue).
    fn finish(self) -> (usize, u64, u64) {
        let out = self.child.wait_with_output().unwrap();
        let lines = String::from_utf8_lossy(&out.stdout).lines().count();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let written = std::fs::read_to_string(&self.summary)
            .unwrap_or_else(|e| panic!("no summary ({e}): {stderr}"));
        let _ = std::fs::remove_file(&self.summary);
        let summary: serde_json::Value = serde_json::from_str(&written).unwrap();
        let count = |key: &str| {
            summary[key]
                .as_u64()
                .unwrap_or_else(|| panic!("no {key} in {summary}"))
        };
        (lines, count("events"), count("lost_in_queue"))
    }
}

/// A short process whose records qtapd reads only after it exited (qtapd
/// held with SIGSTOP, as a busy machine can hold it): its calls on a
/// socket the kernel has no connection for still reach an `fd:socket`
/// session, told as a socket though /proc can no longer say which. They
/// were once dropped as "not a socket" (seen as a flaky CI failure).
#[test]
fn a_gone_process_socket_calls_still_reach_socket_sessions() {
    require_root();
    let service = Service::start(&[]).unwrap();
    let (dir, python) = python_named("qtap-gone-sock");
    let id = service.start_session("mod:socket,exe.endsWith:/qtap-gone-sock");
    let follower =
        Follower::spawn(service.ctl_command(None, &["trace", "follow", &id, "--output", "json"]))
            .unwrap();
    service.wait_followers(&id, 1);
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(service.pid() as i32, libc::SIGSTOP) };
    let run = Command::new(&python)
        .args([
            "-c",
            "import socket\na, b = socket.socketpair()\na.send(b'gone first')\n",
        ])
        .output();
    // SAFETY: as above.
    unsafe { libc::kill(service.pid() as i32, libc::SIGCONT) };
    let run = run.unwrap();
    assert!(run.status.success(), "{run:?}");
    let events = follower.stop().unwrap();
    let _ = fs::remove_dir_all(dir);
    let sends: Vec<&Value> = events
        .iter()
        .filter(|e| {
            matches!(syscall(e), Some("sendto" | "write")) && e["bytes"].as_i64() == Some(10)
        })
        .collect();
    assert_eq!(sends.len(), 1, "{events:#?}");
    assert!(
        sends[0]["conn_info"].is_object(),
        "told as a socket: {:#?}",
        sends[0]
    );
    service.stop().unwrap();
}

/// A follower that stops reading (SIGSTOP) loses events, counted; the
/// follower beside it gets everything; qtapd's memory stays bounded; once
/// resumed, the stopped one is told exactly what it lost.
#[test]
fn a_stopped_follower_loses_counted_and_others_are_unaffected() {
    require_root();
    let service = Service::start(&[]).unwrap();
    let id = service.start_session("mod:socket,exe.contains:curl");
    let stalled = RawFollower::spawn(&service, &id, "4");
    let reader = RawFollower::spawn(&service, &id, "65536");
    thread::sleep(Duration::from_millis(500));
    stalled.signal(libc::SIGSTOP);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        for _ in 0..30 {
            serve_once(&listener);
        }
    });
    for i in 0..30 {
        run_curl(&format!("http://127.0.0.1:{port}/{i}"));
    }
    server.join().unwrap();
    thread::sleep(Duration::from_millis(500));
    let rss_kib: u64 = fs::read_to_string(format!("/proc/{}/status", service.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap();
    assert!(rss_kib < 256 * 1024, "qtapd uses {rss_kib} KiB");
    stalled.signal(libc::SIGCONT);
    let stopped = service.ctl(&["trace", "stop", &id]);
    // "stopped ID: D events delivered, L lost" (summed over followers).
    let numbers: Vec<u64> = String::from_utf8_lossy(&stopped.stdout)
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let (delivered, lost) = (numbers[numbers.len() - 2], numbers[numbers.len() - 1]);
    let (stalled_lines, stalled_events, stalled_lost) = stalled.finish();
    let (reader_lines, reader_events, reader_lost) = reader.finish();
    assert_eq!(reader_lost, 0, "the reading follower lost events");
    assert!(
        stalled_lost > 0,
        "a stopped follower with a queue of 4 lost nothing"
    );
    assert_eq!(
        stalled_events + stalled_lost,
        reader_events,
        "each was offered every event"
    );
    assert_eq!(stalled_events + reader_events, delivered);
    assert_eq!(stalled_lost, lost);
    assert_eq!(
        (stalled_lines as u64, reader_lines as u64),
        (stalled_events, reader_events)
    );
    service.stop().unwrap();
}

/// More live sockets than the kernel's connection table holds: the
/// inserts that do not fit are counted, `status` shows them, and the
/// follower is told, with the stage; nothing is evicted silently.
#[test]
fn a_full_connection_table_is_counted_and_told() {
    use std::io::Read;
    require_root();
    let service = Service::start(&[]).unwrap();
    let (dir, program) = python_named("qtap-tables");
    let id = service.start_session("mod:socket,comm:qtap-tables");
    let mut follower = service
        .ctl_command(None, &["trace", "follow", &id, "--output", "json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    service.wait_followers(&id, 1);
    // Several processes: one may not hold that many fds (RLIMIT_NOFILE,
    // which root without CAP_SYS_RESOURCE cannot raise past its hard limit).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) };
    let per_process = (limit.rlim_max as usize)
        .saturating_sub(100)
        .clamp(500, 60_000);
    let total = qtap_common::limit::CONNS as usize + 1000;
    let processes = total.div_ceil(per_process);
    let each = total.div_ceil(processes);
    let script = format!(
        "import resource, socket, time\n\
         soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n\
         resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))\n\
         held = [socket.socket() for _ in range({each})]\n\
         time.sleep(3)"
    );
    let children: Vec<_> = (0..processes)
        .map(|_| {
            Command::new(&program)
                .args(["-c", &script])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a socket holder failed");
    }
    // Two ticks: the counters are read once a second.
    thread::sleep(Duration::from_millis(2500));
    let out = service.ctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let overflow = text
        .lines()
        .find(|l| l.starts_with("table overflows"))
        .and_then(|l| l.split("connections ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no connection overflow count in status:\n{text}"));
    assert!(
        overflow >= 1000,
        "counted {overflow} of at least 1000:\n{text}"
    );
    // SAFETY: signalling our own child, like Ctrl-C.
    unsafe { libc::kill(follower.id() as i32, libc::SIGINT) };
    let mut stderr = String::new();
    follower
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    follower.wait().unwrap();
    assert!(
        stderr.contains("the kernel's connection table was full"),
        "the follower was not told: {stderr}"
    );
    fs::remove_dir_all(&dir).unwrap();
    service.stop().unwrap();
}

/// The counters a churn writer sent, in the order its `sendto` events came.
fn counters_sent(events: &[Value]) -> Vec<u64> {
    use base64::{engine::general_purpose::STANDARD, Engine};
    events
        .iter()
        .filter(|e| e["msg"] == "syscall/sendto")
        .filter_map(|e| e["payload"].as_str())
        .filter_map(|p| STANDARD.decode(p).ok())
        .filter_map(|b| String::from_utf8_lossy(&b[..8.min(b.len())]).parse().ok())
        .collect()
}

/// Sessions started and stopped in a tight loop while a process writes a
/// counter every millisecond: stop-then-start within milliseconds (the
/// last session's probes still detaching), and starts that overlap the
/// previous session. Each session receives every write made while it was
/// followed: its counters run without a gap, and there are as many as the
/// time it was followed allows.
#[test]
fn session_churn_leaves_no_gap() {
    use std::io::Read;
    require_root();
    let service = Service::start(&[]).unwrap();
    let (dir, program) = python_named("qtap-churn");
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = sink.local_addr().unwrap().port();
    let drain = thread::spawn(move || {
        let (mut conn, _) = sink.accept().unwrap();
        let mut all = Vec::new();
        conn.read_to_end(&mut all).unwrap();
        all.len()
    });
    let rounds = 10;
    let script = format!(
        "import socket, time\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         end = time.time() + {secs}\n\
         n = 0\n\
         while time.time() < end:\n    s.send(b'%08d' % n); n += 1; time.sleep(0.001)",
        secs = 3 * rounds + 10
    );
    let mut writer = Command::new(&program)
        .args(["-c", &script])
        .spawn()
        .unwrap();
    let filter = "mod:socket,comm:qtap-churn";
    let mut results = Vec::new();
    let mut previous: Option<(String, Follower, Instant)> = None;
    for round in 0..rounds {
        // Even rounds: the previous session stops first, and this one
        // starts at once; odd rounds: this one starts while the previous
        // still runs.
        if round % 2 == 0 {
            if let Some((id, follower, since)) = previous.take() {
                let followed = since.elapsed();
                stdout_of(&service.ctl(&["trace", "stop", &id]));
                results.push((id, follower.stop().unwrap(), followed));
            }
        }
        let id = stdout_of(&service.ctl(&[
            "trace",
            "start",
            "--filter",
            filter,
            "--capture-bytes",
            "16",
        ]));
        let follower = Follower::spawn(
            service.ctl_command(None, &["trace", "follow", &id, "--output", "json"]),
        )
        .unwrap();
        service.wait_followers(&id, 1);
        let since = Instant::now();
        if let Some((old, follower, old_since)) = previous.take() {
            let old_followed = old_since.elapsed();
            stdout_of(&service.ctl(&["trace", "stop", &old]));
            results.push((old, follower.stop().unwrap(), old_followed));
        }
        thread::sleep(Duration::from_millis(300 + 100 * (round as u64 % 4)));
        previous = Some((id, follower, since));
    }
    if let Some((id, follower, since)) = previous.take() {
        let followed = since.elapsed();
        stdout_of(&service.ctl(&["trace", "stop", &id]));
        results.push((id, follower.stop().unwrap(), followed));
    }
    assert!(writer.wait().unwrap().success());
    assert!(drain.join().unwrap() > 0);
    let mut failures = Vec::new();
    for (id, events, followed) in &results {
        let counters = counters_sent(events);
        let gaps: Vec<(u64, u64)> = counters
            .windows(2)
            .filter(|w| w[1] != w[0] + 1)
            .map(|w| (w[0], w[1]))
            .collect();
        eprintln!(
            "session {id}: followed {followed:?}, {} writes, counters {:?}..{:?}, gaps {gaps:?}",
            counters.len(),
            counters.first(),
            counters.last()
        );
        if !gaps.is_empty() {
            failures.push(format!("session {id} missed writes: {gaps:?}"));
        }
        // About one write per millisecond (the writer sleeps 1 ms, so
        // fewer); a session that stopped receiving has far fewer.
        let floor = followed.as_millis() as usize / 4;
        if counters.len() < floor {
            failures.push(format!(
                "session {id} got {} writes in {followed:?}",
                counters.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    fs::remove_dir_all(&dir).unwrap();
    service.stop().unwrap();
}
