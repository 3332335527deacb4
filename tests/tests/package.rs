//! The Debian package (`make deb`, given as `QTAP_DEB`): installed with
//! dpkg, qtapd started the way its systemd unit says — `ExecStart`, the
//! runtime directory, and the unit's capability bounding set applied with
//! `setpriv`, since no systemd runs here — used through the installed
//! qtapctl, stopped with SIGTERM as `systemctl stop` does, then purged:
//! the files, the socket and the config are gone, and no qtap program
//! stays loaded.

use std::{
    fs,
    net::TcpListener,
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use qtap_tests::{qtap_programs, require_root, run_curl, serve_once, Follower};

const INSTALLED: &[&str] = &[
    "/usr/bin/qtapd",
    "/usr/bin/qtapctl",
    "/usr/lib/systemd/system/qtapd.service",
    "/usr/lib/sysusers.d/qtap.conf",
    "/etc/qtap/qtapd.toml",
    "/usr/share/man/man8/qtapd.8.gz",
    "/usr/share/man/man1/qtapctl.1.gz",
    "/usr/share/bash-completion/completions/qtapctl",
    "/usr/share/zsh/vendor-completions/_qtapctl",
    "/usr/share/fish/vendor_completions.d/qtapctl.fish",
];
const SOCKET: &str = "/run/qtap/qtapd.sock";

fn run(program: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The value of `key=` in the unit's text.
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

/// qtapd started as its unit says: `ExecStart`, `RuntimeDirectory`, and
/// the `CapabilityBoundingSet` (with `setpriv`); waits for its socket.
fn start_as_the_unit_says() -> std::process::Child {
    let unit = fs::read_to_string("/usr/lib/systemd/system/qtapd.service").unwrap();
    let exec: Vec<&str> = unit_value(&unit, "ExecStart").split_whitespace().collect();
    let caps: Vec<String> = unit_value(&unit, "CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert_eq!(unit_value(&unit, "RuntimeDirectory"), "qtap");
    fs::create_dir_all("/run/qtap").unwrap();
    let mut qtapd = Command::new("setpriv")
        .arg("--inh-caps=-all")
        .arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .arg("--no-new-privs")
        .arg("--")
        .args(&exec)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(SOCKET).is_err() {
        assert!(
            Instant::now() < deadline,
            "the installed qtapd never listened"
        );
        assert!(qtapd.try_wait().unwrap().is_none(), "qtapd exited");
        thread::sleep(Duration::from_millis(100));
    }
    let meta = fs::metadata(SOCKET).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);

    qtapd
}

/// A session through the installed qtapctl, with the OpenSSL probes: the
/// unit's capabilities are enough for all of it.
fn trace_curl_with_the_installed_qtapctl() {
    let id = String::from_utf8_lossy(
        &run(
            "/usr/bin/qtapctl",
            &[
                "trace",
                "start",
                "--filter",
                "mod:socket,mod:openssl,exe.contains:curl",
            ],
        )
        .stdout,
    )
    .trim()
    .to_owned();
    let mut follow = Command::new("/usr/bin/qtapctl");
    follow.args(["trace", "follow", &id, "--output", "json"]);
    let follower = Follower::spawn(follow).unwrap();
    thread::sleep(Duration::from_millis(500));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || serve_once(&listener));
    let curl = run_curl(&format!("http://127.0.0.1:{port}/packaged"));
    server.join().unwrap();
    // The OpenSSL probes are attached as the session starts; read the
    // count until it is there (10 s at most), not once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status =
            String::from_utf8_lossy(&run("/usr/bin/qtapctl", &["status"]).stdout).to_string();
        let attached: usize = status
            .lines()
            .find_map(|l| l.strip_prefix("programs attached"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{status}"));
        if attached >= 40 + 12 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tracepoints and OpenSSL probes attached: {status}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    let events = follower.stop().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["pid"].as_u64() == Some(u64::from(curl)) && e["msg"] == "syscall/connect"),
        "the installed qtapd traced curl: {events:#?}"
    );
}

#[test]
fn the_debian_package_installs_runs_and_purges() {
    require_root();
    let Ok(deb) = std::env::var("QTAP_DEB") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but QTAP_DEB is not set: run the tests with `make test`"
        );
        eprintln!("*** NOT RUN: set QTAP_DEB to the package (`make test` does) ***");
        return;
    };
    // Left over from an interrupted run, if any.
    let _ = Command::new("dpkg").args(["--purge", "qtap"]).output();
    run("dpkg", &["-i", &deb]);
    for path in INSTALLED {
        assert!(Path::new(path).exists(), "{path} not installed");
    }
    run("getent", &["group", "qtap"]);
    let conffiles = run(
        "dpkg-query",
        &["--showformat=${Conffiles}", "--show", "qtap"],
    );
    assert!(
        String::from_utf8_lossy(&conffiles.stdout).contains("/etc/qtap/qtapd.toml"),
        "the config is a conffile"
    );

    let qtapd = start_as_the_unit_says();
    trace_curl_with_the_installed_qtapctl();

    // `systemctl stop` sends SIGTERM.
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(qtapd.id() as i32, libc::SIGTERM) };
    let out = qtapd.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        !log.contains("WARN"),
        "warnings under the unit's capabilities: {log}"
    );
    assert!(!Path::new(SOCKET).exists(), "qtapd removes its socket");

    run("dpkg", &["--purge", "qtap"]);
    for path in INSTALLED {
        assert!(!Path::new(path).exists(), "{path} left after purge");
    }
    assert!(
        !Path::new("/etc/qtap").exists(),
        "/etc/qtap left after purge"
    );
    assert!(
        !Path::new("/run/qtap").exists(),
        "/run/qtap left after purge"
    );
    // The kernel frees a dead process's programs shortly after it exits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while qtap_programs() > 0 {
        assert!(Instant::now() < deadline, "qtap programs left loaded");
        thread::sleep(Duration::from_millis(100));
    }
}
