//! TLS that is right per fd, end to end: real nginx, curl, python, Node.js,
//! `openssl s_server`, `gnutls-cli`, and Go and C (stripped, OpenSSL linked
//! in) programs built here, traced with
//! the socket, openssl, gnutls, gotls and data modules.

use std::{net::TcpListener, process::Command, thread, time::Duration};

use base64::{engine::general_purpose::STANDARD, Engine};
use qtap_tests::{
    curl_plain_then_https, require_root, serve_once,
    servers::{free_port, HttpsFiles, Nginx},
    syscall, Daemon,
};
use serde_json::Value;

/// The events of one fd of one process, from the call that opened it
/// (socket, connect, accept) to its close.
#[derive(Debug)]
struct Span<'a> {
    fd: i64,
    events: Vec<&'a Value>,
}

impl Span<'_> {
    fn opener(&self) -> &Value {
        self.events[0]
    }

    fn remote(&self) -> Option<&str> {
        self.events
            .iter()
            .find_map(|e| e["conn_info"]["remote"].as_str())
    }

    /// Syscalls that moved bytes (or failed to).
    fn data_syscalls(&self) -> impl Iterator<Item = &&Value> {
        self.events
            .iter()
            .filter(|e| syscall(e).is_some() && e["bytes"].is_i64())
    }

    fn calls(&self, msg: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e["msg"] == msg)
            .copied()
            .collect()
    }

    /// The `msg` calls that moved bytes.
    fn moved(&self, msg: &str) -> Vec<&Value> {
        self.calls(msg)
            .into_iter()
            .filter(|e| e["bytes"].as_i64() > Some(0))
            .collect()
    }

    /// Bytes moved by syscalls in `direction` (failures and peeks left out).
    fn syscall_bytes(&self, direction: i64) -> i64 {
        self.data_syscalls()
            .filter(|e| e["direction"].as_i64() == Some(direction))
            .filter(|e| e["peek"].as_bool() != Some(true))
            .filter_map(|e| e["bytes"].as_i64())
            .filter(|&b| b > 0)
            .sum()
    }
}

/// Splits one process's events into per-fd spans.
fn spans(events: &[Value], pid: u64) -> Vec<Span<'_>> {
    let mut open: Vec<Span<'_>> = Vec::new();
    let mut done = Vec::new();
    for e in events.iter().filter(|e| e["pid"].as_u64() == Some(pid)) {
        if let Some(new_fd) = e["new_fd"].as_i64() {
            open.retain(|s| s.fd != new_fd);
            open.push(Span {
                fd: new_fd,
                events: vec![e],
            });
            continue;
        }
        let Some(fd) = e["fd"].as_i64() else { continue };
        if syscall(e) == Some("socket") {
            open.retain(|s| s.fd != fd);
        }
        match open.iter_mut().find(|s| s.fd == fd) {
            Some(span) => span.events.push(e),
            None => open.push(Span {
                fd,
                events: vec![e],
            }),
        }
        if syscall(e) == Some("close") {
            let at = open.iter().position(|s| s.fd == fd).unwrap();
            done.push(open.remove(at));
        }
    }
    done.extend(open);
    done
}

/// The `connect` to loopback `port` in `events`, and its process's span
/// of that fd.
fn connect_span(events: &[Value], port: u16) -> (&Value, Span<'_>) {
    let remote = format!("127.0.0.1:{port}");
    let connect = events
        .iter()
        .find(|e| syscall(e) == Some("connect") && e["conn_info"]["remote"] == remote.as_str())
        .unwrap_or_else(|| panic!("no connect to {remote}: {events:#?}"));
    let (pid, fd) = (
        connect["pid"].as_u64().unwrap(),
        connect["fd"].as_i64().unwrap(),
    );
    let mut spans = spans(events, pid);
    let at = spans
        .iter()
        .position(|s| s.fd == fd && s.remote().is_some())
        .unwrap_or_else(|| panic!("no span of fd {fd}: {spans:#?}"));
    (connect, spans.swap_remove(at))
}

/// `curl --http1.0 URL`; returns the bytes it received (headers + body),
/// which are exactly what the server wrote (no chunking in HTTP/1.0).
fn curl_http10(url: &str) -> i64 {
    let out = Command::new("curl")
        .args(["-s", "--http1.0", "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{size_header} %{size_download}", url])
        .output()
        .expect("curl is installed (make test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let fields: Vec<i64> = text.split(' ').filter_map(|f| f.parse().ok()).collect();
    assert_eq!(fields.first(), Some(&200), "curl {url}: {text}");
    fields[1] + fields[2]
}

/// The captured payload of an event (empty when there is none).
fn payload(e: &Value) -> Vec<u8> {
    e["payload"]
        .as_str()
        .map(|p| STANDARD.decode(p).unwrap())
        .unwrap_or_default()
}

fn assert_no_tls(span: &Span<'_>, what: &str) {
    for e in &span.events {
        assert_eq!(e["ssl"], false, "{what} fd {}: {e}", span.fd);
        assert!(
            !e["msg"].as_str().unwrap().starts_with("openssl/"),
            "{what} fd {} got a TLS call: {e}",
            span.fd
        );
    }
}

fn assert_tls_syscalls(span: &Span<'_>, what: &str) {
    let mut data = 0;
    for e in span.data_syscalls() {
        assert_eq!(e["ssl"], true, "{what} fd {}: {e}", span.fd);
        assert_eq!(e["protocol"], "tls", "{what} fd {}: {e}", span.fd);
        data += 1;
    }
    assert!(data > 0, "{what} fd {} moved no bytes: {span:#?}", span.fd);
}

/// A TLS client of `openssl s_server -WWW` on loopback `port` that binds
/// its session to the fd it connected with one call (`bind`), writes
/// `request` with one plaintext call (`send`) and reads the response
/// (`recv`): each of those on that fd, with its connection, and every
/// syscall of the fd marked TLS. Returns the `connect`.
fn assert_plaintext_both_ways<'e>(
    events: &'e [Value],
    port: u16,
    [bind, send, recv]: [&str; 3],
    request: &[u8],
) -> &'e Value {
    let (connect, span) = connect_span(events, port);
    let what = connect["comm"].as_str().unwrap_or_default();
    assert_tls_syscalls(&span, what);
    let bound = span.calls(bind);
    assert_eq!(bound.len(), 1, "one binding of fd {}: {span:#?}", span.fd);
    let sends = span.moved(send);
    assert_eq!(sends.len(), 1, "{span:#?}");
    assert_eq!(payload(sends[0]), request);
    assert_eq!(sends[0]["direction"], 1);
    let recvs = span.moved(recv);
    assert!(
        recvs
            .first()
            .is_some_and(|r| payload(r).starts_with(b"HTTP/1.0 200 ok")),
        "the first plaintext read is the response: {recvs:#?}"
    );
    for e in sends.iter().chain(&recvs) {
        assert_eq!(e["ssl"], true, "{e}");
        assert_eq!(e["conn_info"], connect["conn_info"], "{e}");
    }
    connect
}

/// Go binds a connection's fd at the return of its first TLS call: the
/// calls before that which moved nothing (an `EAGAIN` read of the server
/// waiting for the client's hello) show no TLS; every syscall that moved
/// bytes does.
fn assert_tls_transfers(span: &Span<'_>, what: &str) {
    let mut data = 0;
    for e in span
        .data_syscalls()
        .filter(|e| e["bytes"].as_i64() > Some(0))
    {
        assert_eq!(e["ssl"], true, "{what} fd {}: {e}", span.fd);
        assert_eq!(e["protocol"], "tls", "{what} fd {}: {e}", span.fd);
        data += 1;
    }
    assert!(data > 0, "{what} fd {} moved no bytes: {span:#?}", span.fd);
}

/// The bug story this project is modelled on: nginx as a reverse proxy,
/// plain HTTP to the client, HTTPS to the backend, one worker doing both.
#[test]
fn reverse_proxy_keeps_plain_and_tls_fds_apart() {
    require_root();
    let body = vec![b'q'; 20_000];
    let backend = HttpsFiles::start(&[("file", &body)]);
    let port = free_port();
    let nginx = Nginx::start(
        port,
        &format!(
            "server {{ listen 127.0.0.1:{port}; \
             location / {{ proxy_pass https://127.0.0.1:{}; proxy_ssl_session_reuse off; }} }}",
            backend.port
        ),
    );
    let daemon = Daemon::start("mod:socket,mod:openssl,mod:data,exe:/usr/sbin/nginx").unwrap();
    let url = format!("http://127.0.0.1:{port}/file");
    let mut received: Vec<i64> = (0..3).map(|_| curl_http10(&url)).collect();
    let concurrent: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || curl_http10(&url))
        })
        .collect();
    received.extend(concurrent.into_iter().map(|h| h.join().unwrap()));
    thread::sleep(Duration::from_millis(300));
    let access_log = nginx.access_log();
    let error_log = nginx.error_log();
    let events = daemon.stop().unwrap();
    drop(nginx);

    let worker = events
        .iter()
        .find(|e| e["new_fd"].is_i64())
        .and_then(|e| e["pid"].as_u64())
        .unwrap_or_else(|| panic!("nginx accepted nothing: {events:#?}\n{error_log}"));
    let spans = spans(&events, worker);

    // Client side: the connections accepted on the proxy's port.
    let clients: Vec<&Span<'_>> = spans
        .iter()
        .filter(|s| s.opener()["new_fd"].is_i64() && s.syscall_bytes(0) > 0)
        .collect();
    assert_eq!(clients.len(), 6, "client connections: {clients:#?}");
    let mut sent: Vec<i64> = clients.iter().map(|s| s.syscall_bytes(1)).collect();
    sent.sort_unstable();
    received.sort_unstable();
    assert_eq!(sent, received, "response bytes on the client fds vs curl");
    for client in &clients {
        assert_no_tls(client, "client");
        assert!(
            client
                .events
                .iter()
                .any(|e| e["msg"] == "process_data (plaintext)" && e["direction"] == 1),
            "no plaintext data decision for the response on fd {}",
            client.fd
        );
    }

    // Upstream side: the connections to the HTTPS backend.
    let backend_addr = format!("127.0.0.1:{}", backend.port);
    let upstreams: Vec<&Span<'_>> = spans
        .iter()
        .filter(|s| s.remote() == Some(backend_addr.as_str()))
        .collect();
    assert_eq!(upstreams.len(), 6, "upstream connections: {upstreams:#?}");
    for up in &upstreams {
        check_upstream(up, &backend_addr, body.len());
    }

    // The access log: a file, no connection, said so.
    let line = access_log.lines().next().expect("access log is empty");
    let log_write = events
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(worker) && syscall(e) == Some("write"))
        .find(|e| e["bytes"].as_i64() == Some(line.len() as i64 + 1))
        .unwrap_or_else(|| panic!("no access-log write: {events:#?}"));
    assert!(log_write["conn_info"].is_null(), "{log_write}");
    assert_eq!(log_write["ssl"], false);
    assert!(events
        .iter()
        .any(|e| e["msg"] == "process_data (conn_info = NULL)" && e["fd"] == log_write["fd"]));
}

/// One proxied request's upstream connection: TLS on every data syscall,
/// its `SSL*` bound by `SSL_set_fd`, the request and the response in clear
/// through `SSL_write`/`SSL_read` on the same fd.
fn check_upstream(up: &Span<'_>, backend_addr: &str, body_len: usize) {
    assert_tls_syscalls(up, "upstream");
    assert_eq!(up.calls("openssl/SSL_set_fd").len(), 1, "{up:#?}");
    let writes = up.calls("openssl/SSL_write");
    assert!(
        writes.iter().any(|e| e["bytes"].as_i64() > Some(0)),
        "no SSL_write of the request on fd {}: {up:#?}",
        up.fd
    );
    let plaintext_in: i64 = up
        .calls("openssl/SSL_read")
        .iter()
        .filter_map(|e| e["bytes"].as_i64())
        .sum();
    assert!(
        plaintext_in > body_len as i64,
        "SSL_read on fd {} gave {plaintext_in} bytes for a {body_len}-byte body",
        up.fd,
    );
    for e in writes {
        assert_eq!(e["app_protocol"], "http1", "{e}");
        assert_eq!(e["conn_info"]["remote"], backend_addr, "{e}");
    }
    assert!(
        up.events
            .iter()
            .any(|e| e["msg"] == "process_data (ciphertext; plaintext via openssl)"),
        "no ciphertext data decision on fd {}",
        up.fd
    );
}

/// One curl, two URLs: plain HTTP to one server, HTTPS to another.
#[test]
fn one_client_plain_and_tls_connections() {
    require_root();
    let backend = HttpsFiles::start(&[("file", b"secret bytes\n")]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || serve_once(&listener));
    let daemon = Daemon::start_with(
        "mod:socket,mod:openssl,mod:protocol,exe.contains:curl",
        &["--capture-bytes=64"],
    )
    .unwrap();
    curl_plain_then_https(
        &format!("http://127.0.0.1:{plain_port}/plain"),
        &format!("https://127.0.0.1:{}/file", backend.port),
    );
    server.join().unwrap();
    let events = daemon.stop().unwrap();
    // Other tests of this file run curl at the same time: this one is
    // the curl that connected to the plain server.
    let plain_remote = format!("127.0.0.1:{plain_port}");
    let curl = events
        .iter()
        .find(|e| {
            syscall(e) == Some("connect") && e["conn_info"]["remote"] == plain_remote.as_str()
        })
        .and_then(|e| e["pid"].as_u64())
        .unwrap_or_else(|| panic!("curl made no connection to {plain_remote}: {events:#?}"));
    let spans = spans(&events, curl);
    let by_remote = |port: u16| {
        let remote = format!("127.0.0.1:{port}");
        spans
            .iter()
            .find(|s| s.remote() == Some(remote.as_str()))
            .unwrap_or_else(|| panic!("no connection to {remote}: {spans:#?}"))
    };

    let plain = by_remote(plain_port);
    assert_no_tls(plain, "plain");
    for e in plain.data_syscalls() {
        assert_eq!(e["protocol"], "http1", "{e}");
    }
    // --capture-bytes: the request line in clear on the plain fd, a TLS
    // record on the TLS fd, and the request in clear from SSL_write.
    let first_write = |span: &Span<'_>, msg: &str| {
        let e = span
            .events
            .iter()
            .find(|e| e["msg"].as_str().is_some_and(|m| m.ends_with(msg)) && e["direction"] == 1)
            .unwrap_or_else(|| panic!("no {msg} on fd {}: {span:#?}", span.fd));
        payload(e)
    };
    assert!(first_write(plain, "sendto").starts_with(b"GET /plain HTTP/1.1\r\n"));
    let tls = by_remote(backend.port);
    assert_tls_syscalls(tls, "https");
    let write = tls
        .calls("openssl/SSL_write")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no SSL_write bound to fd {}: {events:#?}", tls.fd));
    assert_eq!(write["app_protocol"], "http1");
    assert!(payload(write).starts_with(b"GET /file HTTP/1.1\r\n"));
    let record = first_write(tls, "sendto");
    assert_eq!(&record[..2], &[0x16, 3], "a TLS handshake record first");
    assert!(payload(write).len() <= 64);
    let detections: Vec<&str> = tls
        .calls("protocol/detected")
        .iter()
        .filter_map(|e| e["app_protocol"].as_str().or(e["protocol"].as_str()))
        .collect();
    assert!(detections.contains(&"http1"), "{detections:?}");
    assert!(
        tls.calls("protocol/detected")
            .iter()
            .any(|e| e["tls_version"].is_string()),
        "{tls:#?}"
    );
}

/// A non-blocking TLS client whose `SSL_read` returns `WANT_READ`, then
/// does plain I/O on another socket from the same thread: the failed TLS
/// call leaves nothing behind that could mark the plain socket.
#[test]
fn want_read_marks_no_other_fd() {
    require_root();
    let backend = HttpsFiles::start(&[("file", b"after want-read\n")]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || serve_once(&listener));
    let script = r"
import socket, ssl, sys
tls = ssl._create_unverified_context().wrap_socket(
    socket.create_connection(('127.0.0.1', int(sys.argv[1]))))
tls.setblocking(False)
wants = 0
for _ in range(3):
    try:
        tls.recv(100)
    except ssl.SSLWantReadError:
        wants += 1
plain = socket.create_connection(('127.0.0.1', int(sys.argv[2])))
plain.sendall(b'GET /plain HTTP/1.0\r\n\r\n')
while plain.recv(4096):
    pass
tls.setblocking(True)
tls.sendall(b'GET /file HTTP/1.0\r\n\r\n')
got = b''
while True:
    try:
        chunk = tls.recv(4096)
    except (ssl.SSLEOFError, ConnectionResetError):
        break
    if not chunk:
        break
    got += chunk
print(wants, len(got), tls.fileno(), plain.fileno())
";
    let daemon = Daemon::start("mod:socket,mod:openssl,exe.contains:python3").unwrap();
    let out = Command::new("python3")
        .args(["-c", script])
        .args([backend.port.to_string(), plain_port.to_string()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.join().unwrap();
    let events = daemon.stop().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<i64> = printed
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let [wants, got, tls_fd, plain_fd] = fields[..] else {
        panic!("python printed {printed}")
    };
    assert!(wants >= 1, "SSL_read never returned WANT_READ");
    assert!(got > 0, "no response over TLS");
    let python = events
        .iter()
        .find(|e| e["fd"].as_i64() == Some(plain_fd) && syscall(e) == Some("connect"))
        .and_then(|e| e["pid"].as_u64())
        .unwrap_or_else(|| panic!("no connect on fd {plain_fd}: {events:#?}"));
    let spans = spans(&events, python);
    let on = |fd: i64| {
        spans
            .iter()
            .find(|s| s.fd == fd && s.remote().is_some())
            .unwrap_or_else(|| panic!("no connection on fd {fd}: {spans:#?}"))
    };
    let plain = on(plain_fd);
    assert_no_tls(plain, "plain");
    assert!(plain.syscall_bytes(0) > 0);
    let tls = on(tls_fd);
    assert_tls_syscalls(tls, "tls");
    let reads: Vec<&Value> = ["openssl/SSL_read", "openssl/SSL_read_ex"]
        .iter()
        .flat_map(|m| tls.calls(m))
        .collect();
    let failed = reads
        .iter()
        .filter(|e| e["bytes"] == 0 && e["ret"].as_i64() <= Some(0))
        .count();
    assert!(
        failed as i64 >= wants,
        "{wants} WANT_READs but {failed} failed SSL reads on fd {tls_fd}: {reads:#?}"
    );
    assert!(reads.iter().any(|e| e["bytes"].as_i64() > Some(0)));
}

/// Node.js links OpenSSL into its own executable (no `libssl.so` in its
/// maps): qtapd finds the `SSL_*` functions in the executable at its exec
/// and probes it before the script's request goes out. The request's
/// plaintext is seen, on the fd the script connected: Node hands OpenSSL
/// memory buffers, never the socket, and qtapd binds its `SSL*` to the
/// socket its thread writes the handshake's ciphertext to.
#[test]
fn node_with_openssl_linked_in_shows_its_plaintext() {
    require_root();
    let backend = HttpsFiles::start(&[("node", b"hello node\n")]);
    let daemon = Daemon::start_with(
        "mod:socket,mod:openssl,exe.endsWith:/node",
        &["--capture-bytes=64"],
    )
    .unwrap();
    let script = format!(
        "require('https').get({{ host: '127.0.0.1', port: {}, path: '/node', \
         rejectUnauthorized: false }}, r => {{ r.resume(); r.on('end', () => \
         console.log(process.pid)); }})",
        backend.port
    );
    let out = Command::new("node")
        .args(["-e", &script])
        .output()
        .expect("node (Node.js is on this machine)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let events = daemon.stop().unwrap();
    let ours = |msg: &str| {
        events
            .iter()
            .filter(|e| {
                e["pid"].as_u64() == Some(pid) && e["msg"] == msg && e["bytes"].as_i64() > Some(0)
            })
            .collect::<Vec<_>>()
    };
    let writes = ours("openssl/SSL_write");
    assert!(
        writes
            .iter()
            .any(|w| payload(w).starts_with(b"GET /node HTTP/1.1\r\n")),
        "no SSL_write of node's request: {events:#?}"
    );
    assert!(writes.iter().all(|w| w["ssl"] == true));
    let reads = ours("openssl/SSL_read");
    assert!(
        reads.iter().any(|r| payload(r).starts_with(b"HTTP/1.")),
        "no SSL_read of the response: {events:#?}"
    );
    let (connect, span) = connect_span(&events, backend.port);
    assert_eq!(connect["pid"].as_u64(), Some(pid));
    for e in writes.iter().chain(&reads) {
        assert_eq!(e["fd"], connect["fd"], "{e}");
        assert_eq!(e["conn_info"], connect["conn_info"], "{e}");
    }
    assert_tls_transfers(&span, "node");
}

/// Runs `program ARG`, a client that prints `ready` and waits for a line
/// on stdin: once the daemon has attached its TLS probes (from its exec
/// on), tells it to go. Returns what it printed after `ready`; it must
/// succeed.
fn run_when_probed(daemon: &mut Daemon, program: &std::path::Path, arg: &str) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut client = Command::new(program)
        .arg(arg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    daemon
        .wait_for_log(&["tls probes attached", program.to_str().unwrap()])
        .unwrap();
    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut shown = String::new();
    out.read_to_string(&mut shown).unwrap();
    assert!(client.wait().unwrap().success(), "{shown}");
    shown
}

/// A TLS client in C on OpenSSL 3: it says `ready`, waits for a line on
/// stdin, connects to 127.0.0.1:PORT (its argument), writes a request with
/// `SSL_write_ex` and reads the answer with `SSL_read` until the end.
const C_CLIENT: &str = r#"#include <arpa/inet.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char line[8], buf[4096];
    puts("ready");
    fflush(stdout);
    if (argc < 2 || !fgets(line, sizeof line, stdin))
        return 1;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) != 0)
        return 2;
    SSL *ssl = SSL_new(SSL_CTX_new(TLS_client_method()));
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1)
        return 3;
    const char *request = "GET /static HTTP/1.0\r\n\r\n";
    size_t written;
    if (!SSL_write_ex(ssl, request, strlen(request), &written))
        return 4;
    int n;
    while ((n = SSL_read(ssl, buf, sizeof buf)) > 0)
        fwrite(buf, 1, n, stdout);
    close(fd);
    return 0;
}
"#;

/// OpenSSL 3 linked into a stripped executable (built here from Debian's
/// `libssl.a`): the probes go where `openssl_search` found the functions,
/// with no symbol to name them, and the request (`SSL_write_ex`) and the
/// response (`SSL_read`) are seen on the fd the client connected.
#[test]
fn stripped_static_openssl_shows_plaintext_both_ways_on_its_fd() {
    require_root();
    let backend = HttpsFiles::start(&[("static", b"hello static openssl\n")]);
    let dir = build_dir("static-openssl");
    let program = qtap_tests::cc_openssl_stripped(&dir, C_CLIENT);
    let mut daemon = Daemon::start_with(
        "mod:socket,mod:openssl,exe.endsWith:/static-openssl",
        &["--capture-bytes=64"],
    )
    .unwrap();
    let shown = run_when_probed(&mut daemon, &program, &backend.port.to_string());
    assert!(shown.ends_with("hello static openssl\n"), "{shown}");
    let events = daemon.stop().unwrap();

    let connect = assert_plaintext_both_ways(
        &events,
        backend.port,
        [
            "openssl/SSL_set_fd",
            "openssl/SSL_write_ex",
            "openssl/SSL_read",
        ],
        b"GET /static HTTP/1.0\r\n\r\n",
    );
    // The local address came from the kernel at the connect: the client
    // exited before anything could look it up.
    assert!(
        connect["conn_info"]["local"]
            .as_str()
            .is_some_and(|l| l.starts_with("127.0.0.1:") && !l.ends_with(":0")),
        "{connect}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `gnutls-cli` (GnuTLS) against `openssl s_server`: the request and the
/// response are seen in plaintext (`gnutls/gnutls_record_send`/`_recv`),
/// on the fd the client connected and bound with
/// `gnutls_transport_set_int`, and that fd's syscalls are marked TLS.
#[test]
fn gnutls_cli_shows_plaintext_both_ways_on_its_fd() {
    use std::io::{Read, Write};
    require_root();
    let backend = HttpsFiles::start(&[("gnutls", b"hello gnutls\n")]);
    let daemon = Daemon::start_with(
        "mod:socket,mod:gnutls,exe.endsWith:/gnutls-cli",
        &["--capture-bytes=64"],
    )
    .unwrap();
    let mut client = Command::new("timeout")
        .args(["20", "gnutls-cli", "--insecure", "--port"])
        .arg(backend.port.to_string())
        .arg("127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("gnutls-cli (make test installs gnutls-bin)");
    // Stdin stays open until the server has answered and closed: at
    // stdin's end gnutls-cli would close first.
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(b"GET /gnutls HTTP/1.0\r\n\r\n").unwrap();
    let mut shown = String::new();
    client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut shown)
        .unwrap();
    drop(stdin);
    client.wait().unwrap();
    assert!(shown.contains("hello gnutls"), "gnutls-cli printed {shown}");
    let events = daemon.stop().unwrap();
    assert_plaintext_both_ways(
        &events,
        backend.port,
        [
            "gnutls/gnutls_transport_set_int2",
            "gnutls/gnutls_record_send",
            "gnutls/gnutls_record_recv",
        ],
        b"GET /gnutls HTTP/1.0\r\n\r\n",
    );
}

/// A Go HTTPS client (`net/http`, so its reads and writes run on
/// different goroutines): it says `ready`, waits for a line on stdin, then
/// fetches its argument and prints the body.
const GO_CLIENT: &str = r#"package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	fmt.Println("ready")
	bufio.NewReader(os.Stdin).ReadString('\n')
	insecure := &tls.Config{InsecureSkipVerify: true}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: insecure}}
	resp, err := client.Get(os.Args[1])
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	body, _ := io.ReadAll(resp.Body)
	fmt.Print(string(body))
}
"#;

/// A Go HTTPS server (`net/http`: a goroutine per connection) that answers
/// each request with its path; arguments: address, certificate, key.
const GO_SERVER: &str = r#"package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "you asked for %s\n", r.URL.Path)
	})
	server := &http.Server{Addr: os.Args[1]}
	stopped := make(chan struct{})
	go func() {
		term := make(chan os.Signal, 1)
		signal.Notify(term, syscall.SIGTERM)
		<-term
		// Returns once every answer's tls.(*Conn).Write has returned.
		server.Shutdown(context.Background())
		close(stopped)
	}()
	fmt.Println(server.ListenAndServeTLS(os.Args[2], os.Args[3]))
	<-stopped
}
"#;

/// A directory of this test run's own, for a program it builds.
fn build_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("qtap-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Go's crypto/tls, built here with and without its symbol table, as an
/// HTTPS client of `openssl s_server`: `gotls/Write` carries the request
/// and `gotls/Read` the response, both on the fd the client's `connect`
/// returned, whose syscalls are marked TLS.
#[test]
fn go_client_shows_plaintext_both_ways_on_its_fd() {
    require_root();
    let backend = HttpsFiles::start(&[("gotls", b"hello gotls\n")]);
    let dir = build_dir("gotls-client");
    for strip in [false, true] {
        let program = qtap_tests::go_build(&dir, GO_CLIENT, strip);
        let name = program.file_name().unwrap().to_str().unwrap().to_owned();
        let mut daemon = Daemon::start_with(
            &format!("mod:socket,mod:gotls,exe.endsWith:/{name}"),
            &["--capture-bytes=64"],
        )
        .unwrap();
        let url = format!("https://127.0.0.1:{}/gotls", backend.port);
        let shown = run_when_probed(&mut daemon, &program, &url);
        assert_eq!(shown, "hello gotls\n");
        let events = daemon.stop().unwrap();

        let (connect, span) = connect_span(&events, backend.port);
        let (span, fd) = (&span, span.fd);
        assert_tls_transfers(span, &name);
        let writes = span.moved("gotls/Write");
        let gotls: Vec<_> = events
            .iter()
            .filter(|e| e["msg"].as_str().is_some_and(|m| m.starts_with("gotls/")))
            .collect();
        assert_eq!(
            writes.len(),
            1,
            "stripped: {strip}: {span:#?}\nevery gotls event: {gotls:#?}"
        );
        let request = format!(
            "GET /gotls HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
            backend.port
        );
        assert!(
            payload(writes[0]).starts_with(request.as_bytes()),
            "{}",
            String::from_utf8_lossy(&payload(writes[0]))
        );
        assert_eq!(writes[0]["direction"], 1);
        assert_eq!(writes[0]["caller"], "uprobe/crypto/tls.(*Conn).Write");
        let reads = span.moved("gotls/Read");
        assert!(
            reads
                .first()
                .is_some_and(|r| payload(r).starts_with(b"HTTP/1.0 200 ok")),
            "the first plaintext read is the response: {reads:#?}"
        );
        for e in writes.iter().chain(&reads) {
            assert_eq!(e["ssl"], true, "{e}");
            assert_eq!(e["conn_info"], connect["conn_info"], "{e}");
        }
        // No plaintext call went unbound or to another fd.
        let elsewhere: Vec<_> = events
            .iter()
            .filter(|e| e["msg"].as_str().is_some_and(|m| m.starts_with("gotls/")))
            .filter(|e| e["fd"].as_i64() != Some(fd))
            .collect();
        assert!(elsewhere.is_empty(), "{elsewhere:#?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Go HTTPS server under eight concurrent curl clients: each request's
/// plaintext is read, and its answer written, on the fd that accepted that
/// client's connection (a goroutine each, moved between threads by Go).
#[test]
fn go_server_binds_each_connections_plaintext_to_its_fd() {
    require_root();
    let dir = build_dir("gotls-server");
    qtap_tests::servers::self_signed(&dir);
    let program = qtap_tests::go_build(&dir, GO_SERVER, false);
    let mut daemon = Daemon::start_with(
        "mod:socket,mod:gotls,exe.endsWith:/plain",
        &["--capture-bytes=256"],
    )
    .unwrap();
    let port = free_port();
    let mut server = Command::new(&program)
        .arg(format!("127.0.0.1:{port}"))
        .args([dir.join("cert.pem"), dir.join("key.pem")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    qtap_tests::servers::wait_for_port(port, "the Go server");
    daemon
        .wait_for_log(&["tls probes attached", program.to_str().unwrap()])
        .unwrap();
    let clients: Vec<_> = (0..8)
        .map(|n| {
            Command::new("curl")
                .args(["-sk", "--http1.1", "--max-time", "20"])
                .arg(format!("https://127.0.0.1:{port}/client{n}"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("curl (make test installs it)")
        })
        .collect();
    let answers: Vec<_> = clients
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    // A client has its answer once the server's write syscall is done,
    // before `(*Conn).Write` returns: a kill now could stop the server
    // between the two. It shuts down gracefully on SIGTERM instead.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    assert!(server.wait().unwrap().success(), "the Go server shut down");
    for (n, out) in answers.into_iter().enumerate() {
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("you asked for /client{n}\n")
        );
    }
    let events = daemon.stop().unwrap();
    let pid = events
        .iter()
        .find(|e| syscall(e) == Some("accept4") || syscall(e) == Some("accept"))
        .and_then(|e| e["pid"].as_u64())
        .unwrap_or_else(|| panic!("no accept: {events:#?}"));
    let mut paths = Vec::new();
    for span in spans(&events, pid).iter().filter(|s| s.remote().is_some()) {
        let reads = span.calls("gotls/Read");
        let Some(request) = reads
            .iter()
            .map(|e| payload(e))
            .find(|p| p.starts_with(b"GET /client"))
        else {
            continue;
        };
        let path: String = String::from_utf8_lossy(&request[4..])
            .split(' ')
            .next()
            .unwrap()
            .to_owned();
        let answer = format!("you asked for {path}\n");
        let writes = span.calls("gotls/Write");
        assert!(
            writes
                .iter()
                .any(|w| String::from_utf8_lossy(&payload(w)).ends_with(&answer)),
            "the answer to {path} is written on its fd {}: {span:#?}",
            span.fd
        );
        for e in reads.iter().chain(&writes) {
            assert_eq!(e["fd"], span.fd, "{e}");
            assert_eq!(e["ssl"], true, "{e}");
        }
        assert_tls_transfers(span, "the Go server");
        paths.push(path);
    }
    paths.sort();
    let want: Vec<String> = (0..8).map(|n| format!("/client{n}")).collect();
    assert_eq!(paths, want, "every request seen once, on its own fd");
    std::fs::remove_dir_all(&dir).unwrap();
}
