//! The socket module end to end: a real qtapd traces real curl and nginx.

use std::{net::TcpListener, process::Command, thread, time::Duration};

use qtap_tests::{
    bytes_on, of_pid, python_named, qtapd_bin, require_root, run_curl, serve_once,
    servers::{free_port, Nginx},
    syscall, Daemon, READS, WRITES,
};
use serde_json::Value;

/// Runs a test program to its end; the fd numbers it printed.
fn printed_fds(program: &mut Command) -> Vec<i64> {
    let out = program.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect()
}

fn find<'a>(events: &'a [Value], call: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| syscall(e) == Some(call)).collect()
}

#[test]
fn curl_connect_request_response_and_close_on_one_fd() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let daemon = Daemon::start("mod:socket,mod:process,exe.contains:curl").unwrap();
    let server = thread::spawn(move || serve_once(&listener));
    let pid = run_curl(&format!("http://127.0.0.1:{port}/hello"));
    let (request_len, response_len) = server.join().unwrap();
    let events = daemon.stop().unwrap();
    let mine = of_pid(&events, pid);

    assert!(
        mine.iter().any(|e| e["msg"] == "process/exec"),
        "curl's exec was not seen: selection must happen at exec"
    );
    assert!(
        mine.iter()
            .all(|e| e["exe"].as_str().unwrap_or("").ends_with("curl")),
        "{mine:?}"
    );
    let remote = format!("127.0.0.1:{port}");
    let connect = find(&mine, "connect")
        .into_iter()
        .find(|e| e["conn_info"]["remote"] == remote.as_str())
        .unwrap_or_else(|| panic!("no connect to {remote} in {mine:#?}"));
    assert_eq!(connect["conn_info"]["family"], "inet");
    assert_eq!(connect["conn_info"]["role"], "client");
    assert_eq!(connect["open"], true);
    let fd = connect["fd"].as_i64().unwrap();

    // Only this connection's lifetime: from its connect to its close.
    let start = mine.iter().position(|e| std::ptr::eq(e, connect)).unwrap();
    let end = start
        + mine[start..]
            .iter()
            .position(|e| syscall(e) == Some("close") && e["fd"].as_i64() == Some(fd))
            .unwrap_or_else(|| panic!("fd {fd} was never closed in {mine:#?}"));
    let conn = &mine[start..=end];
    assert_eq!(
        bytes_on(conn, fd, WRITES),
        request_len as i64,
        "request bytes on fd {fd}"
    );
    assert_eq!(
        bytes_on(conn, fd, READS),
        response_len as i64,
        "response bytes on fd {fd}"
    );
    for e in conn.iter().filter(|e| e["fd"].as_i64() == Some(fd)) {
        assert_eq!(
            e["conn_info"]["remote"],
            remote.as_str(),
            "conn_info on {e}"
        );
        assert_eq!(e["ssl"], false);
        assert_eq!(e["open"], true);
    }
    let close = &conn[conn.len() - 1];
    assert_eq!(close["ret"], 0);
}

#[test]
fn nginx_accept_request_response_and_access_log() {
    require_root();
    let port = free_port();
    let daemon = Daemon::start("mod:socket,exe.contains:nginx").unwrap();
    let nginx = Nginx::start(
        port,
        &format!(
            "server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello from nginx\\n\"; }} }}"
        ),
    );
    // The readiness probe above made a connection too; the curl request is
    // the one whose accept returns the fd that carries "GET /qtap".
    run_curl(&format!("http://127.0.0.1:{port}/qtap"));
    thread::sleep(Duration::from_millis(300));
    let access_log = nginx.access_log();
    let events = daemon.stop().unwrap();
    drop(nginx);

    let nginx_events: Vec<Value> = events
        .iter()
        .filter(|e| e["exe"].as_str().is_some_and(|x| x.ends_with("nginx")))
        .cloned()
        .collect();
    let accepts: Vec<&Value> = nginx_events
        .iter()
        .filter(|e| matches!(syscall(e), Some("accept4" | "accept")))
        .collect();
    let local = format!("127.0.0.1:{port}");
    let served = accepts
        .iter()
        .filter(|a| a["ret"].as_i64().unwrap_or(-1) >= 0)
        .find_map(|accept| {
            let fd = accept["new_fd"].as_i64()?;
            assert_eq!(accept["ret"].as_i64(), Some(fd));
            assert_eq!(accept["conn_info"]["role"], "server");
            assert_eq!(accept["conn_info"]["local"], local.as_str(), "{accept}");
            let pid = accept["pid"].as_u64()?;
            let same = |e: &&Value| e["pid"].as_u64() == Some(pid) && e["fd"].as_i64() == Some(fd);
            let read: i64 = nginx_events
                .iter()
                .filter(same)
                .filter(|e| syscall(e).is_some_and(|c| READS.contains(&c)))
                .filter_map(|e| e["bytes"].as_i64())
                .filter(|&b| b > 0)
                .sum();
            (read > 0).then_some((pid, fd))
        })
        .unwrap_or_else(|| panic!("no accepted connection carried a request: {nginx_events:#?}"));
    let (pid, fd) = served;
    let on_fd: Vec<&Value> = nginx_events
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(pid) && e["fd"].as_i64() == Some(fd))
        .collect();
    let response = on_fd
        .iter()
        .find(|e| {
            matches!(
                syscall(e),
                Some("writev" | "sendfile64" | "write" | "sendto")
            )
        })
        .unwrap_or_else(|| panic!("no response write on fd {fd}: {on_fd:#?}"));
    assert!(response["bytes"].as_i64().unwrap() > "hello from nginx\n".len() as i64);
    assert_eq!(response["direction"], 1);
    assert_eq!(response["conn_info"]["local"], local.as_str());

    assert!(access_log.contains("GET /qtap"), "access log: {access_log}");
    let log_line = access_log
        .lines()
        .find(|l| l.contains("GET /qtap"))
        .unwrap();
    let log_write = nginx_events
        .iter()
        .filter(|e| syscall(e) == Some("write") && e["pid"].as_u64() == Some(pid))
        .find(|e| e["bytes"].as_i64() == Some(log_line.len() as i64 + 1))
        .unwrap_or_else(|| {
            panic!(
                "no access-log write of {} bytes: {nginx_events:#?}",
                log_line.len() + 1
            )
        });
    assert!(log_write["conn_info"].is_null(), "{log_write}");
    assert_eq!(log_write["open"], false);
    assert_ne!(log_write["fd"].as_i64(), Some(fd));
}

#[test]
fn unselected_processes_emit_nothing() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}/");

    // A filter that selects nothing that runs here.
    let daemon = Daemon::start("exe.contains:qtap-no-such-program").unwrap();
    let server = thread::spawn({
        let listener = listener.try_clone().unwrap();
        move || serve_once(&listener)
    });
    run_curl(&url);
    server.join().unwrap();
    let events = daemon.stop().unwrap();
    assert!(
        events.is_empty(),
        "a filter that selects nothing printed {events:#?}"
    );

    // A filter that selects curl: python's requests to the same server
    // are not traced, curl's are.
    let daemon = Daemon::start("exe.endsWith:/curl").unwrap();
    let server = thread::spawn(move || {
        serve_once(&listener);
        serve_once(&listener)
    });
    let python = Command::new("python3")
        .args([
            "-c",
            &format!("import urllib.request; urllib.request.urlopen('{url}', timeout=60).read()"),
        ])
        .spawn()
        .expect("python3");
    let python_pid = python.id();
    assert!(python.wait_with_output().unwrap().status.success());
    let curl_pid = run_curl(&url);
    server.join().unwrap();
    let events = daemon.stop().unwrap();
    assert!(
        of_pid(&events, python_pid).is_empty(),
        "python was traced: {events:#?}"
    );
    assert!(!of_pid(&events, curl_pid).is_empty(), "curl was not traced");
    assert!(
        events
            .iter()
            .all(|e| e["pid"].as_u64() == Some(u64::from(curl_pid))),
        "{events:#?}"
    );
}

#[test]
fn bad_filters_exit_non_zero_naming_the_term() {
    // Rejected before anything is loaded, so this needs no privilege.
    let cases = [
        ("mod:sockets", "mod:sockets"),
        ("mod:socket,exe.contain:curl", "exe.contain:curl"),
        ("pid:abc", "pid:abc"),
        ("exe.contains:", "exe.contains:"),
        ("curl", "curl"),
    ];
    for (filter, term) in cases {
        let out = Command::new(qtapd_bin().unwrap())
            .arg(format!("--bpf-trace={filter}"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "filter {filter:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("`{term}`")),
            "filter {filter:?}: {stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

/// `fd:socket` keeps a process's calls on sockets and drops those on its
/// files and pipes in the kernel: they are not even recorded. Without it
/// the same program's file reads show, with `conn_info: null`.
#[test]
fn fd_socket_keeps_socket_calls_and_records_nothing_else() {
    require_root();
    let (dir, program) = python_named("qtap-fdkinds");
    let script = r"
import os, socket, sys
for _ in range(30):
    with open('/etc/os-release', 'rb') as f:
        f.read()
r, w = os.pipe()
os.write(w, b'through a pipe')
os.read(r, 100)
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
s.sendall(b'GET / HTTP/1.0\r\n\r\n')
while s.recv(4096):
    pass
";
    let run = |filter: &str| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || serve_once(&listener));
        let daemon = Daemon::start(filter).unwrap();
        let child = Command::new(&program)
            .args(["-c", script, &port.to_string()])
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(child.wait_with_output().unwrap().status.success());
        server.join().unwrap();
        let (events, records) = daemon.stop_counting().unwrap();
        (of_pid(&events, pid), events.len() as u64, records)
    };

    let (events, printed, sockets_only) = run("fd:socket,exe.contains:qtap-fdkinds");
    assert!(find(&events, "connect").len() == 1, "{events:#?}");
    assert!(
        bytes_on(
            &events,
            find(&events, "connect")[0]["fd"].as_i64().unwrap(),
            WRITES
        ) > 0
    );
    for e in &events {
        assert!(e["conn_info"].is_object(), "a call on a file or pipe: {e}");
    }
    // The kernel recorded the socket calls and the process's exec and
    // exit, and none of the ~30 file reads, their closes or the pipe.
    assert!(
        sockets_only <= printed + 3,
        "{sockets_only} records for {printed} events printed"
    );

    let (events, _, every_fd) = run("exe.contains:qtap-fdkinds");
    let files = events
        .iter()
        .filter(|e| syscall(e) == Some("read") && e["conn_info"].is_null())
        .count();
    assert!(
        files >= 30,
        "without fd:socket the file reads show ({files})"
    );
    assert!(
        every_fd > sockets_only + 30,
        "{every_fd} records, {sockets_only} with fd:socket"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// Three connections: one to the path, two to the abstract name (the
// last closed at once); every accepted one is held until the end.
/// Each data call once over a loopback TCP pair, each read after its write
/// has arrived; prints the sending and receiving fds. Argument: a scratch
/// file for `sendfile`.
const DATA_CALLS: &str = r"
import os, socket, sys, time
listener = socket.create_server(('127.0.0.1', 0))
a = socket.create_connection(listener.getsockname())
b, _ = listener.accept()
def sent():
    time.sleep(0.1)
a.send(b'send-one'); sent()
b.recv(64, socket.MSG_PEEK)
b.recv(64)
a.sendmsg([b'msg-', b'two']); sent()
b.recvmsg(64, 0, socket.MSG_PEEK)
b.recvmsg(64)
os.writev(a.fileno(), [b'vec-', b'three']); sent()
os.readv(b.fileno(), [bytearray(64)])
os.write(a.fileno(), b'write-four'); sent()
os.read(b.fileno(), 64)
with open(sys.argv[1], 'wb') as f:
    f.write(b'file-five')
with open(sys.argv[1], 'rb') as f:
    os.sendfile(a.fileno(), f.fileno(), 0, 9); sent()
os.read(b.fileno(), 64)
print(a.fileno(), b.fileno())
";

const UNIX_SERVER: &str = r"
import socket, sys, time
srv = socket.socket(socket.AF_UNIX); srv.bind(sys.argv[1]); srv.listen()
asrv = socket.socket(socket.AF_UNIX); asrv.bind('\0' + sys.argv[2]); asrv.listen()
print('ready', flush=True)
held = []
for listener in (srv, asrv, asrv):
    conn, _ = listener.accept()
    data = conn.recv(100)
    if data:
        conn.sendall(data)
    held.append(conn)
time.sleep(0.5)
";
const UNIX_CLIENT: &str = r"
import socket, sys, time
held = []
for address in (sys.argv[1], '\0' + sys.argv[2]):
    c = socket.socket(socket.AF_UNIX); c.connect(address)
    c.sendall(b'hello'); c.recv(100); held.append(c)
a, b = socket.socketpair()
a.sendall(b'pair'); b.recv(100)
time.sleep(0.5)
quick = socket.socket(socket.AF_UNIX); quick.connect('\0' + sys.argv[2]); quick.close()
";

/// Unix sockets name their peers: a client's connect to a path and to an
/// abstract name shows the server's name and pid, the server's accepted
/// fds show their listener's name and the client's pid, and a socketpair
/// is marked as one. The names come from the kernel's record of the call
/// (a connection closed at once still shows its peer's name); the pids
/// from the sockets themselves (`SO_PEERCRED`), asked while they are open.
/// Every data call of the socket module, over one loopback TCP pair: a
/// data call's exit reads its arguments from the task's saved registers,
/// so each call must show its own fd, bytes, `MSG_PEEK` and first buffer.
#[test]
fn each_data_call_shows_its_fd_bytes_peek_and_first_buffer() {
    use base64::{engine::general_purpose::STANDARD, Engine};
    require_root();
    let (dir, program) = python_named("qtap-datacalls");
    let daemon = Daemon::start_with(
        "mod:socket,fd:socket,exe.endsWith:/qtap-datacalls",
        &["--capture-bytes=64"],
    )
    .unwrap();
    let fds = printed_fds(Command::new(&program).args([
        "-c",
        DATA_CALLS,
        dir.join("file").to_str().unwrap(),
    ]));
    let (sender, receiver) = (fds[0], fds[1]);
    let events = daemon.stop().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let moved: Vec<(&str, i64, i64, bool, Vec<u8>)> = events
        .iter()
        .filter(|e| {
            e["fd"]
                .as_i64()
                .is_some_and(|fd| fd == sender || fd == receiver)
        })
        .filter(|e| e["bytes"].as_i64() > Some(0))
        .map(|e| {
            (
                syscall(e).unwrap(),
                e["fd"].as_i64().unwrap(),
                e["bytes"].as_i64().unwrap(),
                e["peek"].as_bool() == Some(true),
                STANDARD
                    .decode(e["payload"].as_str().unwrap_or(""))
                    .unwrap(),
            )
        })
        .collect();
    let expected: Vec<(&str, i64, i64, bool, Vec<u8>)> = [
        ("sendto", sender, "send-one", false, "send-one"),
        ("recvfrom", receiver, "send-one", true, "send-one"),
        ("recvfrom", receiver, "send-one", false, "send-one"),
        ("sendmsg", sender, "msg-two", false, "msg-"),
        ("recvmsg", receiver, "msg-two", true, "msg-two"),
        ("recvmsg", receiver, "msg-two", false, "msg-two"),
        ("writev", sender, "vec-three", false, "vec-"),
        ("readv", receiver, "vec-three", false, "vec-three"),
        ("write", sender, "write-four", false, "write-four"),
        ("read", receiver, "write-four", false, "write-four"),
        // sendfile's bytes come from a file: no user buffer to capture.
        ("sendfile64", sender, "file-five", false, ""),
        ("read", receiver, "file-five", false, "file-five"),
    ]
    .into_iter()
    .map(|(call, fd, data, peek, payload)| {
        (
            call,
            fd,
            data.len() as i64,
            peek,
            payload.as_bytes().to_vec(),
        )
    })
    .collect();
    assert_eq!(moved, expected, "{events:#?}");
}

#[test]
fn unix_sockets_show_peer_names_pids_and_socketpairs() {
    use std::io::{BufRead, BufReader};
    require_root();
    let (dir, server_program) = python_named("qtap-unixsrv");
    let client_program = dir.join("qtap-unixcli");
    std::fs::copy(&server_program, &client_program).unwrap();
    let path = dir.join("srv.sock");
    let abstract_name = format!("qtap-e2e-{}", std::process::id());
    let daemon = Daemon::start("exe.contains:qtap-unix").unwrap();
    let mut server = Command::new(&server_program)
        .args(["-c", UNIX_SERVER, path.to_str().unwrap(), &abstract_name])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let client = Command::new(&client_program)
        .args(["-c", UNIX_CLIENT, path.to_str().unwrap(), &abstract_name])
        .spawn()
        .unwrap();
    let client_pid = client.id();
    assert!(client.wait_with_output().unwrap().status.success());
    assert!(server.wait().unwrap().success());
    let server_pid = server.id();
    let events = daemon.stop().unwrap();
    let conn = |e: &Value| e["conn_info"].clone();

    let client_events = of_pid(&events, client_pid);
    let connects: Vec<Value> = find(&client_events, "connect")
        .into_iter()
        .map(conn)
        .collect();
    let path_text = path.to_str().unwrap();
    let at_name = format!("@{abstract_name}");
    let to = |remote: &str| -> Vec<&Value> {
        connects.iter().filter(|c| c["remote"] == remote).collect()
    };
    assert_eq!(to(path_text).len(), 1, "{connects:#?}");
    assert_eq!(to(&at_name).len(), 2, "{connects:#?}");
    for c in [to(path_text)[0], to(&at_name)[0]] {
        assert_eq!(
            (
                c["family"].as_str(),
                c["role"].as_str(),
                c["peer_pid"].as_u64()
            ),
            (Some("unix"), Some("client"), Some(u64::from(server_pid))),
            "{c}"
        );
    }
    // Later calls on a connection keep what its connect found.
    let client_reads: Vec<Value> = client_events
        .iter()
        .filter(|e| {
            syscall(e).is_some_and(|s| READS.contains(&s)) && e["conn_info"]["role"] == "client"
        })
        .map(conn)
        .collect();
    assert_eq!(client_reads.len(), 2, "{client_events:#?}");
    for c in &client_reads {
        assert!(c["remote"] == path_text || c["remote"] == at_name, "{c}");
        assert_eq!(c["peer_pid"].as_u64(), Some(u64::from(server_pid)), "{c}");
    }
    let pair = client_events
        .iter()
        .find(|e| {
            syscall(e).is_some_and(|s| WRITES.contains(&s))
                && e["conn_info"]["role"] == "socketpair"
        })
        .unwrap_or_else(|| panic!("no write on a socketpair: {client_events:#?}"));
    assert_eq!(
        pair["conn_info"]["peer_pid"].as_u64(),
        Some(u64::from(client_pid))
    );

    let server_events = of_pid(&events, server_pid);
    let accepted: Vec<Value> = find(&server_events, "accept4")
        .into_iter()
        .chain(find(&server_events, "accept"))
        .map(conn)
        .collect();
    assert_eq!(accepted.len(), 3, "{accepted:#?}");
    for local in [path_text, at_name.as_str()] {
        let a = accepted
            .iter()
            .find(|a| a["local"] == local)
            .unwrap_or_else(|| panic!("no accept on {local}: {accepted:#?}"));
        assert_eq!(a["peer_pid"].as_u64(), Some(u64::from(client_pid)), "{a}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The kernel reads a connection's first bytes once (`conn_flag::HEAD_SENT`),
/// yet every call on it names its protocol; a `dup` of it and the same
/// socket after an `exec`, whose streams qtapd starts afresh, are
/// classified again from their own first bytes.
#[test]
fn protocol_of_a_connection_its_dup_and_after_exec() {
    require_root();
    let (dir, program) = python_named("qtap-heads");
    let script = dir.join("heads.py");
    std::fs::write(&script, HEADS).unwrap();
    let daemon = Daemon::start("mod:socket,fd:socket,exe.endsWith:/qtap-heads").unwrap();
    let fds = printed_fds(Command::new(&program).arg(&script));
    let (a, d) = (fds[0], fds[1]);
    assert_eq!(fds[2], a, "the new image writes on the kept socket");
    let events = daemon.stop().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let program_events = of_pid(&events, pid_of_comm(&events, "qtap-heads"));
    let sent: Vec<(&str, i64, &str)> = program_events
        .iter()
        .filter(|e| matches!(syscall(e), Some("sendto" | "write")) && e["bytes"].as_i64() > Some(0))
        .map(|e| {
            (
                syscall(e).unwrap(),
                e["fd"].as_i64().unwrap(),
                e["protocol"].as_str().unwrap_or("none"),
            )
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("sendto", a, "http1"),
            ("sendto", a, "http1"),
            ("write", d, "http1"),
            ("write", a, "http1"),
        ],
        "{events:#?}"
    );
}

/// The pid of the process whose comm is `comm` in `events`.
fn pid_of_comm(events: &[Value], comm: &str) -> u32 {
    events
        .iter()
        .find(|e| e["comm"] == comm)
        .and_then(|e| e["pid"].as_u64())
        .expect("an event of the program") as u32
}

/// Two requests on a connection, one on its `dup`, then an `exec` of the
/// same script that writes one more on the kept socket; prints the
/// connection's fd, the dup's, and (the new image) the kept fd.
const HEADS: &str = r"
import os, socket, sys
def request(path):
    return b'GET /' + path + b' HTTP/1.1\r\nHost: q\r\n\r\n'
if len(sys.argv) > 1:
    fd = int(sys.argv[1])
    os.write(fd, request(b'after-exec'))
    print(fd, flush=True)
    sys.exit(0)
listener = socket.create_server(('127.0.0.1', 0))
a = socket.create_connection(listener.getsockname())
b, _ = listener.accept()
a.send(request(b'one'))
a.send(request(b'two'))
# dup2 (os.dup is fcntl F_DUPFD_CLOEXEC, which the kernel side does not see).
d = os.dup2(a.fileno(), 50)
os.write(d, request(b'dup'))
# The peer stays open too: closed with unread bytes, it would reset.
os.set_inheritable(a.fileno(), True)
os.set_inheritable(b.fileno(), True)
print(a.fileno(), d, flush=True)
os.execv(sys.executable, [sys.executable, __file__, str(a.fileno())])
";
