//! qtapctl following a session of a qtapd on another host: two network
//! namespaces joined by a veth pair, qtapd listening with mutual TLS in
//! one, qtapctl in the other. Certificates are made by `openssl`.

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use qtap_tests::{
    of_pid, qtapctl_bin, require_root, run_curl, serve_once, syscall, Follower, Service,
};

fn sh(script: &str) {
    let status = Command::new("sh").args(["-ec", script]).status().unwrap();
    assert!(status.success(), "failed: {script}");
}

/// Two namespaces `<base>a` (10.213.N.1) and `<base>b` (10.213.N.2).
struct Hosts {
    a: String,
    b: String,
    server_ip: String,
}

impl Hosts {
    fn new() -> Hosts {
        let n = std::process::id() % 200 + 10;
        let (a, b) = (format!("qtap{n}a"), format!("qtap{n}b"));
        let server_ip = format!("10.213.{n}.1");
        for ns in [&a, &b] {
            // Left over from an interrupted run, if any.
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        sh(&format!(
            "ip netns add {a}; ip netns add {b}
             ip link add {a}v type veth peer name {b}v
             ip link set {a}v netns {a}; ip link set {b}v netns {b}
             ip -n {a} addr add {server_ip}/24 dev {a}v; ip -n {b} addr add 10.213.{n}.2/24 dev {b}v
             ip -n {a} link set {a}v up; ip -n {b} link set {b}v up
             ip -n {a} link set lo up; ip -n {b} link set lo up"
        ));
        Hosts { a, b, server_ip }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

/// A CA, a server certificate for `ip`, a client certificate, a client
/// certificate from another CA, and one from the CA that expired in 2020.
fn certificates(dir: &Path, ip: &str) {
    fs::create_dir_all(dir).unwrap();
    let d = dir.display();
    sh(&format!(
        "cd {d}
         printf 'subjectAltName=IP:{ip}\\nextendedKeyUsage=serverAuth\\n' > server.ext
         printf 'extendedKeyUsage=clientAuth\\n' > client.ext
         for ca in ca rogue; do
           openssl req -x509 -newkey rsa:2048 -nodes -keyout $ca.key -out $ca.pem -days 1 -subj /CN=qtap-test-$ca 2>/dev/null
         done
         openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=qtapd 2>/dev/null
         openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile server.ext 2>/dev/null
         for who in client:ca rogue-client:rogue; do
           name=${{who%%:*}}; ca=${{who##*:}}
           openssl req -newkey rsa:2048 -nodes -keyout $name.key -out $name.csr -subj /CN=$name 2>/dev/null
           openssl x509 -req -in $name.csr -CA $ca.pem -CAkey $ca.key -CAcreateserial -out $name.pem -days 1 -extfile client.ext 2>/dev/null
         done
         printf '[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial.txt\ndefault_md = sha256\npolicy = any\n[any]\ncommonName = supplied\n' > ca.cnf
         : > index.txt; echo 1000 > serial.txt
         openssl req -newkey rsa:2048 -nodes -keyout expired.key -out expired.csr -subj /CN=expired 2>/dev/null
         openssl ca -batch -notext -config ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr -out expired.pem \
           -startdate 20200101000000Z -enddate 20200102000000Z -extfile client.ext 2>/dev/null"
    ));
}

/// `python3 -c STALLED_HANDSHAKES HOST PORT N`: opens N connections that
/// send the first bytes of a TLS `ClientHello` and no more, prints `open N`,
/// and once its stdin closes waits (up to 20 s) for the server to close
/// them, printing `closed C`.
const STALLED_HANDSHAKES: &str = r"
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.create_connection((host, port)) for _ in range(n)]
for s in socks:
    s.sendall(bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]))
print('open', n, flush=True)
sys.stdin.read()
deadline = time.monotonic() + 20
closed = 0
for s in socks:
    s.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        closed += s.recv(1) == b''
    except ConnectionResetError:
        closed += 1
    except socket.timeout:
        pass
print('closed', closed, flush=True)
";

/// qtapd in namespace `ns` listening on `addr` with mutual TLS, with the
/// certificates `certificates` made in `dir`.
fn serve_tls(ns: &str, addr: &str, dir: &Path, extra: &[&str]) -> Service {
    let pem = |f: &str| dir.join(f).display().to_string();
    let (cert, key, ca) = (pem("server.pem"), pem("server.key"), pem("ca.pem"));
    let mut args = vec![
        "--listen-tcp",
        addr,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--client-ca",
        &ca,
    ];
    args.extend(extra);
    Service::start_in(Some(ns), &args).unwrap()
}

/// qtapctl in namespace `ns` against `url`, authenticating as `who`.
fn remote_ctl(ns: &str, url: &str, dir: &Path, who: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(qtapctl_bin().unwrap())
        .args(["--remote", url])
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join(format!("{who}.pem")))
        .arg("--key")
        .arg(dir.join(format!("{who}.key")))
        .args(args);
    c
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, end to end, reads best in order"
)]
fn follow_across_hosts_with_mutual_tls_and_refuse_others() {
    require_root();
    let hosts = Hosts::new();
    let dir: PathBuf = std::env::temp_dir().join(format!("qtap-certs-{}", std::process::id()));
    certificates(&dir, &hosts.server_ip);
    let addr = format!("{}:7443", hosts.server_ip);
    let service = serve_tls(&hosts.a, &addr, &dir, &["--tls-handshake-timeout", "2s"]);
    let url = format!("https://{addr}");

    // Start and follow from the other host.
    let out = remote_ctl(
        &hosts.b,
        &url,
        &dir,
        "client",
        &["trace", "start", "--filter", "mod:socket,exe.contains:curl"],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "remote start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let follower = Follower::spawn(remote_ctl(
        &hosts.b,
        &url,
        &dir,
        "client",
        &["trace", "follow", &id, "--output", "json"],
    ))
    .unwrap();
    for _ in 0..100 {
        let list = String::from_utf8_lossy(&service.ctl(&["trace", "list"]).stdout).to_string();
        if list
            .lines()
            .any(|l| l.starts_with(&id) && l.split_whitespace().rev().nth(2) == Some("1"))
        {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || serve_once(&listener));
    let curl = run_curl(&format!("http://127.0.0.1:{port}/remote"));
    let (request_len, _) = server.join().unwrap();
    let events = follower.stop().unwrap();
    let mine = of_pid(&events, curl);
    let connect = mine
        .iter()
        .find(|e| {
            syscall(e) == Some("connect")
                && e["conn_info"]["remote"] == format!("127.0.0.1:{port}").as_str()
        })
        .unwrap_or_else(|| panic!("no connect across the remote stream: {events:#?}"));
    let fd = connect["fd"].as_i64().unwrap();
    assert_eq!(
        qtap_tests::bytes_on(&mine, fd, qtap_tests::WRITES),
        request_len as i64
    );

    // A client certificate from another CA is refused.
    let rogue = remote_ctl(&hosts.b, &url, &dir, "rogue-client", &["trace", "list"])
        .output()
        .unwrap();
    assert_eq!(rogue.status.code(), Some(1), "{rogue:?}");
    assert!(!rogue.stderr.is_empty(), "a refused client must say why");
    // An expired client certificate from the right CA is refused.
    let expired = remote_ctl(&hosts.b, &url, &dir, "expired", &["trace", "list"])
        .output()
        .unwrap();
    assert_eq!(expired.status.code(), Some(1), "{expired:?}");
    assert!(!expired.stderr.is_empty(), "a refused client must say why");

    // Clients that start a TLS handshake and never finish it hold nothing
    // up: a real client is served meanwhile, and qtapd closes each of
    // theirs after --tls-handshake-timeout.
    let mut stalled = Command::new("ip")
        .args(["netns", "exec", &hosts.b, "python3", "-c"])
        .arg(STALLED_HANDSHAKES)
        .args([&hosts.server_ip, "7443", "50"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(stalled.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "open 50");
    let beside_stalled = remote_ctl(&hosts.b, &url, &dir, "client", &["trace", "list"])
        .output()
        .unwrap();
    assert!(
        beside_stalled.status.success(),
        "a client was not served beside stalled handshakes: {beside_stalled:?}"
    );
    drop(stalled.stdin.take());
    let closed = lines.next().unwrap().unwrap();
    assert_eq!(closed, "closed 50", "qtapd must close stalled handshakes");
    assert!(stalled.wait().unwrap().success());

    // No client certificate at all: the TLS handshake fails, while the
    // same request with the certificate completes it.
    let handshake = |with_cert: bool| {
        let mut curl = Command::new("ip");
        curl.args([
            "netns",
            "exec",
            &hosts.b,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--http2",
            "--cacert",
        ])
        .arg(dir.join("ca.pem"));
        if with_cert {
            curl.arg("--cert")
                .arg(dir.join("client.pem"))
                .arg("--key")
                .arg(dir.join("client.key"));
        }
        curl.arg(&url).status().unwrap()
    };
    let no_cert = handshake(false);
    assert!(
        !no_cert.success(),
        "a client without a certificate completed the handshake"
    );
    let with_cert = handshake(true);
    assert!(
        with_cert.success(),
        "the handshake with a valid client certificate failed"
    );

    assert!(
        remote_ctl(&hosts.b, &url, &dir, "client", &["trace", "stop", &id])
            .status()
            .unwrap()
            .success()
    );
    service.stop().unwrap();
    let _ = fs::remove_dir_all(&dir);
    drop(hosts);
}

/// Namespace `<base>c` (a client) joined to `<base>s1` and `<base>s2` (two
/// servers) by a veth pair each: 10.215.N.1 and 10.216.N.1 are the servers,
/// .2 the client's end.
struct TwoServers {
    names: [String; 3],
    ips: [String; 2],
}

impl TwoServers {
    fn new() -> TwoServers {
        let n = std::process::id() % 200 + 10;
        let names = [format!("qtm{n}c"), format!("qtm{n}s1"), format!("qtm{n}s2")];
        for ns in &names {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let [c, s1, s2] = &names;
        let ips = [format!("10.215.{n}.1"), format!("10.216.{n}.1")];
        sh(&format!("ip netns add {c}; ip -n {c} link set lo up"));
        for (i, (server, ip)) in [s1, s2].into_iter().zip(&ips).enumerate() {
            let net = if i == 0 { 215 } else { 216 };
            sh(&format!(
                "ip netns add {server}; ip -n {server} link set lo up
                 ip link add {server}v type veth peer name {c}v{i}
                 ip link set {server}v netns {server}; ip link set {c}v{i} netns {c}
                 ip -n {server} addr add {ip}/24 dev {server}v; ip -n {c} addr add 10.{net}.{n}.2/24 dev {c}v{i}
                 ip -n {server} link set {server}v up; ip -n {c} link set {c}v{i} up"
            ));
        }
        TwoServers { names, ips }
    }
}

impl Drop for TwoServers {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One qtapctl following the same filter on two daemons (and on a third
/// address where none listens): the merged stream has each daemon's events
/// labelled with its host, and the dead one is reported while the others
/// go on. `trace start` on both prints one `host id` line each.
#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, end to end, reads best in order"
)]
fn follow_two_hosts_from_one_qtapctl() {
    require_root();
    let net = TwoServers::new();
    let dir: PathBuf = std::env::temp_dir().join(format!("qtap-certs-two-{}", std::process::id()));
    // One server certificate for both addresses.
    certificates(&dir, &format!("{},IP:{}", net.ips[0], net.ips[1]));
    let services: Vec<Service> = [&net.names[1], &net.names[2]]
        .into_iter()
        .zip(&net.ips)
        .map(|(ns, ip)| serve_tls(ns, &format!("{ip}:7443"), &dir, &[]))
        .collect();
    let hosts: Vec<String> = net.ips.iter().map(|ip| format!("{ip}:7443")).collect();
    let dead = format!("{}:7444", net.ips[0]);
    let remotes = |with_dead: bool| -> Vec<String> {
        let mut all: Vec<String> = hosts.iter().map(|h| format!("https://{h}")).collect();
        if with_dead {
            all.push(format!("https://{dead}"));
        }
        all.into_iter()
            .flat_map(|r| ["--remote".to_owned(), r])
            .collect()
    };
    let ctl = |with_dead: bool| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &net.names[0]])
            .arg(qtapctl_bin().unwrap())
            .args(remotes(with_dead))
            .arg("--ca")
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(dir.join("client.pem"))
            .arg("--key")
            .arg(dir.join("client.key"));
        c
    };

    // `trace start` on both: one `host id` line each.
    let started = ctl(false)
        .args([
            "trace",
            "start",
            "--filter",
            "exe.contains:nothing-runs-this",
        ])
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    let lines = String::from_utf8_lossy(&started.stdout).to_string();
    for host in &hosts {
        assert!(
            lines.lines().any(|l| l.starts_with(&format!("{host} s"))),
            "no `{host} <id>` line: {lines}"
        );
    }

    // Follow a filter on both and on the dead address.
    let out = dir.join("follow.json");
    let err = dir.join("follow.err");
    let mut follower = ctl(true)
        .args([
            "trace",
            "follow",
            "--filter",
            "mod:socket,exe.contains:curl",
            "--output",
            "json",
        ])
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    for service in &services {
        for _ in 0..100 {
            let list = String::from_utf8_lossy(&service.ctl(&["trace", "list"]).stdout).to_string();
            if list
                .lines()
                .any(|l| l.contains("follow") && l.split_whitespace().rev().nth(2) == Some("1"))
            {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || serve_once(&listener));
    let curl = run_curl(&format!("http://127.0.0.1:{port}/two-hosts"));
    server.join().unwrap();
    thread::sleep(Duration::from_millis(700));
    // SAFETY: signalling the follower this test started.
    unsafe { libc::kill(follower.id() as i32, libc::SIGINT) };
    let status = follower.wait().unwrap();
    let said = fs::read_to_string(&err).unwrap();
    assert!(
        status.success() || status.code() == Some(1),
        "{status:?}: {said}"
    );
    let events: Vec<serde_json::Value> = fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for host in &hosts {
        let connects = events
            .iter()
            .filter(|e| {
                e["host"] == host.as_str()
                    && e["pid"].as_u64() == Some(u64::from(curl))
                    && syscall(e) == Some("connect")
                    && e["conn_info"]["remote"] == format!("127.0.0.1:{port}").as_str()
            })
            .count();
        assert_eq!(connects, 1, "curl's connect as seen by {host}: {events:#?}");
    }
    assert!(
        events
            .iter()
            .all(|e| hosts.iter().any(|h| e["host"] == h.as_str())),
        "every event is labelled with its host"
    );
    assert!(
        said.contains(&format!("qtapctl: {dead}: ")) && said.contains("reconnecting"),
        "the dead daemon is reported: {said}"
    );
    for service in services {
        service.stop().unwrap();
    }
    let _ = fs::remove_dir_all(&dir);
    drop(net);
}
