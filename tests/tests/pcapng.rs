//! `qtapctl trace follow --pcapng`: one curl fetching a page over plain
//! HTTP and one over HTTPS, traced by the real daemon, the capture read
//! back by `tshark` (Debian's package): both requests and both responses
//! dissected as HTTP, the HTTPS one from its plaintext on the real port.

use std::{net::TcpListener, path::Path, process::Command, thread};

use qtap_tests::{
    curl_plain_then_https, require_root, serve_once, servers::HttpsFiles, Follower, Service,
};

/// `tshark -r FILE` with `args`, its stdout.
fn tshark(file: &Path, args: &[&str]) -> String {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(args)
        .output()
        .expect("tshark is installed (make test installs it)");
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One HTTP packet as tshark dissected it.
#[derive(Debug)]
struct HttpPacket {
    src_port: u16,
    dst_port: u16,
    method: String,
    uri: String,
    status: String,
    comment: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

/// The packets tshark dissects as HTTP, the TLS port decoded as HTTP.
fn http_packets(capture: &Path, tls_port: u16) -> Vec<HttpPacket> {
    let https_as_http = format!("tcp.port=={tls_port},http");
    let mut args = vec![
        "-d",
        &https_as_http,
        "-Y",
        "http",
        "-T",
        "fields",
        "-E",
        "separator=|",
    ];
    for field in [
        "tcp.srcport",
        "tcp.dstport",
        "http.request.method",
        "http.request.uri",
        "http.response.code",
        "frame.comment",
    ] {
        args.extend(["-e", field]);
    }
    tshark(capture, &args)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            HttpPacket {
                src_port: f[0].parse().unwrap(),
                dst_port: f[1].parse().unwrap(),
                method: f[2].to_owned(),
                uri: f[3].to_owned(),
                status: f[4].to_owned(),
                comment: f[5].to_owned(),
            }
        })
        .collect()
}

/// The request to `port` or the response from it.
fn find(packets: &[HttpPacket], port: u16, side: Side) -> &HttpPacket {
    packets
        .iter()
        .find(|p| match side {
            Side::Request => p.dst_port == port && !p.method.is_empty(),
            Side::Response => p.src_port == port && !p.status.is_empty(),
        })
        .unwrap_or_else(|| panic!("no HTTP packet of port {port} on that side: {packets:#?}"))
}

#[test]
fn tshark_reads_http_and_the_plaintext_of_https_from_the_capture() {
    require_root();
    let backend = HttpsFiles::start(&[("page", b"secret bytes\n")]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let plain_port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || serve_once(&listener));
    let service = Service::start(&[]).unwrap();
    let capture = std::env::temp_dir().join(format!("qtap-e2e-{}.pcapng", std::process::id()));
    let started = service.ctl(&[
        "trace",
        "start",
        "--filter",
        "mod:socket,mod:openssl,exe.contains:curl",
        "--capture-bytes",
        "4096",
    ]);
    let id = qtap_tests::stdout_of(&started);
    let follower = Follower::spawn(service.ctl_command(
        None,
        &[
            "trace",
            "follow",
            &id,
            "--output",
            "json",
            "--pcapng",
            capture.to_str().unwrap(),
        ],
    ))
    .unwrap();
    service.wait_followers(&id, 1);
    curl_plain_then_https(
        &format!("http://127.0.0.1:{plain_port}/plain"),
        &format!("https://127.0.0.1:{}/page", backend.port),
    );
    server.join().unwrap();
    // SIGTERM, as `timeout` or systemd would end it: the file is still
    // written out.
    let events = follower.terminate().unwrap();
    assert!(!events.is_empty());

    // HTTP on both ports: the plain one is found by port heuristics, the
    // TLS one is told (Wireshark would try TLS on it otherwise).
    let packets = http_packets(&capture, backend.port);
    let plain_get = find(&packets, plain_port, Side::Request);
    assert_eq!(
        (plain_get.method.as_str(), plain_get.uri.as_str()),
        ("GET", "/plain")
    );
    assert_eq!(find(&packets, plain_port, Side::Response).status, "200");
    let tls_get = find(&packets, backend.port, Side::Request);
    assert_eq!(
        (tls_get.method.as_str(), tls_get.uri.as_str()),
        ("GET", "/page")
    );
    assert!(
        tls_get.comment.contains("openssl/SSL_write (TLS plaintext"),
        "{tls_get:?}"
    );
    assert_eq!(find(&packets, backend.port, Side::Response).status, "200");
    // Each packet names its process and call.
    assert!(
        plain_get.comment.contains(" curl fd ") && plain_get.comment.contains("syscall/"),
        "{plain_get:?}"
    );

    // The TLS connection carries no ciphertext: no TLS record is dissected
    // on its port, even when asked for as TLS.
    let tls_as_tls = format!("tcp.port=={},tls", backend.port);
    let records = tshark(
        &capture,
        &[
            "-d",
            &tls_as_tls,
            "-Y",
            "tls.record",
            "-T",
            "fields",
            "-e",
            "frame.number",
        ],
    );
    assert!(
        records.trim().is_empty(),
        "ciphertext in the capture:\n{records}"
    );
    std::fs::remove_file(&capture).unwrap();
}
