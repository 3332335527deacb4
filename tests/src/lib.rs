//! Harness for qtap's privileged end-to-end tests: starts a real `qtapd`
//! (in `--bpf-trace` mode, or serving sessions to the real `qtapctl`),
//! drives real programs, and collects the JSON events printed.
//!
//! The tests need root and a kernel that loads BPF: without either they
//! fail, saying why (never pass without running).
#![allow(
    clippy::must_use_candidate,
    reason = "helpers are often called for their effect alone"
)]

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub mod servers;

/// The `qtapd` binary under test: `$QTAPD_BIN`, else the workspace's
/// release build, else its debug build.
pub fn qtapd_bin() -> Result<PathBuf> {
    workspace_bin("QTAPD_BIN", "qtapd")
}

/// A copy of `bin` that any user can execute: the checkout may live
/// under a directory only root can enter (`/root`).
fn public_copy(bin: &std::path::Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("qtap-e2e-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let copy = dir.join(bin.file_name().context("binary name")?);
    if !copy.exists() {
        let partial = dir.join(format!(".{}.partial", unique()));
        std::fs::copy(bin, &partial)?;
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&partial, &copy)?;
    }
    Ok(copy)
}

/// Polls `ready` until it holds, failing with qtapd's log if the child
/// exits first or a minute passes.
fn wait_until(
    child: &mut Child,
    log: &Arc<Mutex<String>>,
    what: &str,
    ready: impl Fn() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_mins(1);
    while !ready() {
        if let Some(status) = child.try_wait()? {
            thread::sleep(Duration::from_millis(200));
            bail!(
                "qtapd exited with {status} before {what}:\n{}",
                log.lock().unwrap()
            );
        }
        if Instant::now() > deadline {
            bail!("qtapd not {what} after 60 s:\n{}", log.lock().unwrap());
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Appends each line `reader` yields to `log`, in a thread.
fn collect_lines(reader: impl std::io::Read + Send + 'static, log: &Arc<Mutex<String>>) {
    let log = Arc::clone(log);
    thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
}

/// Fails the calling test, with the reason, unless it runs as root: a
/// privileged end-to-end test that cannot run must never pass.
pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this privileged end-to-end test needs root (euid is {euid}): run `sudo make test`"
    );
}

/// Creates (once) a system user without a home or shell, in group
/// `qtap` or not; the group must exist (qtapd creates it). A test VM
/// cannot write `/etc`: `scripts/test-kernels.sh` makes these users
/// before it boots one.
pub fn system_user(name: &str, in_qtap: bool) {
    let exists = Command::new("id")
        .arg(name)
        .output()
        .is_ok_and(|out| out.status.success());
    if !exists {
        let mut cmd = Command::new("useradd");
        cmd.args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ]);
        if in_qtap {
            cmd.args(["--groups", "qtap"]);
        }
        assert!(
            cmd.arg(name).status().is_ok_and(|s| s.success()),
            "useradd {name}"
        );
    }
}

/// What a qtapctl run printed, trimmed; fails the test with its stderr
/// when it did not succeed.
pub fn stdout_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "qtapctl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The uid of user `name`.
pub fn uid_of(name: &str) -> u32 {
    let out = Command::new("id")
        .args(["-u", name])
        .output()
        .expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("uid of {name}: {e}"))
}

/// Programs of qtap's kernel object loaded now (by name: the tracepoints
/// and OpenSSL symbols they attach to; the kernel keeps 15 bytes).
#[must_use]
pub fn qtap_programs() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            p.name_as_str().is_some_and(|n| {
                ["sys_enter_", "sys_exit_", "sched_process_", "SSL_"]
                    .iter()
                    .any(|prefix| n.starts_with(prefix))
            })
        })
        .count()
}

/// A running `qtapd --bpf-trace=<filter> --log-encoding=json`.
pub struct Daemon {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

const READY: &str = "tracing; already-running processes selected";

impl Daemon {
    /// Starts qtapd and waits until its filter is installed.
    pub fn start(filter: &str) -> Result<Daemon> {
        Daemon::start_with(filter, &[])
    }

    /// As `start`, with more qtapd arguments (`--capture-bytes=64`).
    pub fn start_with(filter: &str, extra: &[&str]) -> Result<Daemon> {
        let mut child = Command::new(qtapd_bin()?)
            .arg(format!("--bpf-trace={filter}"))
            .args(["--log-encoding=json", "--log-level=info"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn qtapd")?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().context("qtapd stdout")?;
        let sink = Arc::clone(&events);
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("qtapd printed a line that is not JSON ({e}): {line}")
                });
                sink.lock().unwrap().push(value);
            }
        });
        collect_lines(child.stderr.take().context("qtapd stderr")?, &stderr);
        let mut daemon = Daemon {
            child,
            events,
            stderr,
        };
        let log = Arc::clone(&daemon.stderr);
        wait_until(&mut daemon.child, &daemon.stderr, "ready", || {
            log.lock().unwrap().contains(READY)
        })?;
        Ok(daemon)
    }

    /// What qtapd logged so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (a minute at most) until qtapd has logged a line that
    /// contains every one of `words`.
    pub fn wait_for_log(&mut self, words: &[&str]) -> Result<()> {
        let log = Arc::clone(&self.stderr);
        let logged = || {
            log.lock()
                .unwrap()
                .lines()
                .any(|line| words.iter().all(|w| line.contains(w)))
        };
        wait_until(&mut self.child, &self.stderr, &words.join(" "), logged)
    }

    /// Lets in-flight events drain, stops qtapd with SIGTERM, and returns
    /// every event it printed.
    pub fn stop(self) -> Result<Vec<Value>> {
        self.stop_with_log().map(|(events, _)| events)
    }

    /// As [`Daemon::stop`], with the kernel records qtapd decoded (from
    /// the totals it logs as it stops).
    pub fn stop_counting(self) -> Result<(Vec<Value>, u64)> {
        let (events, log) = self.stop_with_log()?;
        let line = log
            .lines()
            .find(|l| l.contains("engine stopped"))
            .context("qtapd logged no totals")?;
        let at = line.find("records").context("no records total")? + "records".len();
        let digits: String = line[at..]
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect();
        Ok((events, digits.parse()?))
    }

    fn stop_with_log(mut self) -> Result<(Vec<Value>, String)> {
        thread::sleep(Duration::from_millis(700));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        thread::sleep(Duration::from_millis(200));
        if !status.success() {
            bail!("qtapd exited with {status}:\n{}", self.stderr());
        }
        Ok((self.events.lock().unwrap().clone(), self.stderr()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A copy of python3 named `name` (its comm, for a `comm:` or `exe.*`
/// filter) in a fresh directory; returns the directory and the program.
#[must_use]
pub fn python_named(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join(name);
    std::fs::copy("/usr/bin/python3", &program).unwrap();
    (dir, program)
}

/// Events of one process.
#[must_use]
pub fn of_pid(events: &[Value], pid: u32) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(u64::from(pid)))
        .cloned()
        .collect()
}

/// The syscall name of an event (`syscall/writev` → `writev`).
#[must_use]
pub fn syscall(event: &Value) -> Option<&str> {
    event["msg"].as_str()?.strip_prefix("syscall/")
}

/// Sum of `bytes` over events on `fd` whose syscall is in `calls`,
/// leaving out `MSG_PEEK` reads and failed calls (`bytes` is `-errno`).
#[must_use]
pub fn bytes_on(events: &[Value], fd: i64, calls: &[&str]) -> i64 {
    events
        .iter()
        .filter(|e| e["fd"].as_i64() == Some(fd))
        .filter(|e| syscall(e).is_some_and(|c| calls.contains(&c)))
        .filter(|e| e["peek"].as_bool() != Some(true))
        .filter_map(|e| e["bytes"].as_i64())
        .filter(|&b| b >= 0)
        .sum()
}

/// Read-side and write-side syscall names.
pub const READS: &[&str] = &["read", "readv", "recvfrom", "recvmsg", "recvmmsg"];
pub const WRITES: &[&str] = &[
    "write",
    "writev",
    "sendto",
    "sendmsg",
    "sendmmsg",
    "sendfile64",
];

/// A binary of the workspace: `$<ENV>`, else the release build, else debug.
fn workspace_bin(env: &str, name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join(name))
        .find(|bin| bin.exists())
        .with_context(|| {
            format!("no {name} binary: build it first (`make test` does) or set {env}")
        })
}

/// The `qtapctl` binary under test.
pub fn qtapctl_bin() -> Result<PathBuf> {
    workspace_bin("QTAPCTL_BIN", "qtapctl")
}

/// A running `qtapd` in service mode on its own socket.
pub struct Service {
    child: Child,
    pub socket: PathBuf,
    dir: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Service {
    /// Starts qtapd serving on a socket in a fresh directory and waits
    /// until it accepts connections.
    pub fn start(extra: &[&str]) -> Result<Service> {
        Service::start_in(None, extra)
    }

    /// Like [`Service::start`], inside network namespace `netns` when given.
    pub fn start_in(netns: Option<&str>, extra: &[&str]) -> Result<Service> {
        let dir =
            std::env::temp_dir().join(format!("qtap-e2e-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir)?;
        // Other users must reach the socket inside (its own mode decides).
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Service::spawn(dir, netns, extra)
    }

    /// A new qtapd on the socket of this one, which must have exited
    /// (killed, say): the new daemon replaces what the old one left.
    pub fn restart(mut self, extra: &[&str]) -> Result<Service> {
        self.child.wait()?;
        // The directory (and the socket file in it) goes to the new daemon.
        let dir = std::mem::take(&mut self.dir);
        drop(self);
        Service::spawn(dir, None, extra)
    }

    fn spawn(dir: PathBuf, netns: Option<&str>, extra: &[&str]) -> Result<Service> {
        let socket = dir.join("qtapd.sock");
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(qtapd_bin()?);
                c
            }
            None => Command::new(qtapd_bin()?),
        };
        let mut child = command
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn qtapd")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        collect_lines(child.stderr.take().context("qtapd stderr")?, &stderr);
        let service = Service {
            child,
            socket,
            dir,
            stderr,
        };
        let mut service = service;
        let socket = service.socket.clone();
        wait_until(&mut service.child, &service.stderr, "listening", || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        })?;
        Ok(service)
    }

    #[must_use]
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Runs qtapctl against this daemon as root.
    #[must_use]
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        self.ctl_as(None, args)
    }

    /// Runs qtapctl as `user` (a name), or as root for `None`.
    #[must_use]
    pub fn ctl_as(&self, user: Option<&str>, args: &[&str]) -> std::process::Output {
        self.ctl_command(user, args).output().expect("run qtapctl")
    }

    /// A qtapctl command line, as `user` when given (via `setpriv`).
    pub fn ctl_command(&self, user: Option<&str>, args: &[&str]) -> Command {
        let bin = qtapctl_bin().expect("qtapctl binary");
        let mut cmd = match user {
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={user}"))
                    .arg(format!("--regid={user}"))
                    .arg("--init-groups")
                    .arg("--")
                    .arg(public_copy(&bin).expect("copy qtapctl where other users can run it"));
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("--socket").arg(&self.socket).args(args);
        cmd
    }

    /// Waits until `trace list --output json` shows session `id` with
    /// `followers` followers.
    pub fn wait_followers(&self, id: &str, followers: u64) {
        for _ in 0..200 {
            let list = stdout_of(&self.ctl(&["trace", "list", "--output", "json"]));
            let there = list
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|s| s["id"] == id && s["followers"].as_u64() == Some(followers));
            if there {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("session {id} never had {followers} followers");
    }

    /// Starts a session for `filter` (as root); returns its id.
    pub fn start_session(&self, filter: &str) -> String {
        let out = self.ctl(&["trace", "start", "--filter", filter]);
        assert!(out.status.success(), "trace start {filter}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// qtapd's process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills qtapd with SIGKILL, as a crash would.
    pub fn kill(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
    }

    /// Stops qtapd with SIGTERM; returns its log.
    pub fn stop(mut self) -> Result<String> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        thread::sleep(Duration::from_millis(100));
        if !status.success() {
            bail!("qtapd exited with {status}:\n{}", self.stderr());
        }
        Ok(self.stderr())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A follower running in the background (`qtapctl trace follow … --output json`).
pub struct Follower {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
}

impl Follower {
    /// Spawns `cmd` (a qtapctl follow command) and collects its JSON lines.
    pub fn spawn(mut cmd: Command) -> Result<Follower> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = child.stdout.take().context("qtapctl stdout")?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("qtapctl printed a line that is not JSON ({e}): {line}")
                });
                sink.lock().unwrap().push(value);
            }
        });
        Ok(Follower { child, events })
    }

    /// The follower's process.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first event printed so far that `matches`, waiting for one up
    /// to `within`.
    pub fn wait_for(&self, within: Duration, matches: impl Fn(&Value) -> bool) -> Option<Value> {
        let until = std::time::Instant::now() + within;
        loop {
            if let Some(found) = self.events.lock().unwrap().iter().find(|e| matches(e)) {
                return Some(found.clone());
            }
            if std::time::Instant::now() >= until {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lets events drain, interrupts the follower (SIGINT, like Ctrl-C),
    /// and returns what it printed.
    pub fn stop(self) -> Result<Vec<Value>> {
        self.end(libc::SIGINT)
    }

    /// Like [`Follower::stop`] with SIGTERM, as `timeout` or systemd ends it.
    pub fn terminate(self) -> Result<Vec<Value>> {
        self.end(libc::SIGTERM)
    }

    fn end(mut self, signal: libc::c_int) -> Result<Vec<Value>> {
        thread::sleep(Duration::from_millis(700));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let status = self.child.wait()?;
        thread::sleep(Duration::from_millis(100));
        if !status.success() {
            bail!("qtapctl follow exited with {status}");
        }
        Ok(self.events.lock().unwrap().clone())
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BODY_LEN: usize = 1000;

/// Serves one HTTP request on loopback; returns (request bytes received, response bytes sent).
pub fn serve_once(listener: &TcpListener) -> (usize, usize) {
    let (mut conn, _) = listener.accept().unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "client closed before the request ended");
        request.extend_from_slice(&buf[..n]);
    }
    let body = "x".repeat(BODY_LEN);
    let response =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY_LEN}\r\nConnection: close\r\n\r\n{body}");
    conn.write_all(response.as_bytes()).unwrap();
    (request.len(), response.len())
}

/// Runs `curl -s -o /dev/null URL` to completion (a minute at most, so a
/// request that never ends fails the test instead of hanging it);
/// returns its pid.
pub fn run_curl(url: &str) -> u32 {
    run_curl_at("curl", url)
}

/// One curl (one process) fetching `plain` (`http://`) and then `https`
/// over HTTP/1.1, certificates unchecked; fails the test unless both
/// succeed.
pub fn curl_plain_then_https(plain: &str, https: &str) {
    let status = Command::new("curl")
        .args([
            "-s",
            "-k",
            "--http1.1",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
        ])
        .args([plain, https])
        .status()
        .expect("curl is installed (make test installs it)");
    assert!(status.success(), "curl {plain} {https} failed");
}

/// [`run_curl`] with curl at another path.
pub fn run_curl_at(program: impl AsRef<std::ffi::OsStr>, url: &str) -> u32 {
    let mut child = Command::new(program)
        .args(["-s", "--max-time", "60", "-o", "/dev/null", url])
        .spawn()
        .expect("curl is installed (make test installs it)");
    let pid = child.id();
    assert!(child.wait().unwrap().success(), "curl {url} failed");
    pid
}

/// Builds the Go program `source` in `dir` with Debian's golang-go (which
/// `make deps` installs), without modules; `strip`: without its symbol
/// table (`-ldflags=-s -w`). Returns the executable.
pub fn go_build(dir: &Path, source: &str, strip: bool) -> PathBuf {
    fs::write(dir.join("main.go"), source).unwrap();
    let out = dir.join(if strip { "stripped" } else { "plain" });
    let mut go = Command::new("go");
    go.current_dir(dir)
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GO111MODULE", "off")
        .args(["build", "-o"])
        .arg(&out);
    if strip {
        go.arg("-ldflags=-s -w");
    }
    let built = go.arg("main.go").output().expect("go (Debian's golang-go)");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

/// Builds the C program `source` in `dir` with OpenSSL linked in from
/// Debian's `libssl-dev` archives (which `make deps` installs) and strips
/// it: an executable that carries OpenSSL 3 with no symbol naming any of
/// its functions (checked with `nm`). Returns the executable.
pub fn cc_openssl_stripped(dir: &Path, source: &str) -> PathBuf {
    fs::write(dir.join("main.c"), source).unwrap();
    let out = dir.join("static-openssl");
    let built = Command::new("gcc")
        .current_dir(dir)
        .args(["-O2", "-o"])
        .arg(&out)
        .args([
            "main.c",
            "-Wl,-Bstatic",
            "-lssl",
            "-lcrypto",
            "-Wl,-Bdynamic",
        ])
        .args(["-ldl", "-pthread"])
        .output()
        .expect("gcc (make deps installs it)");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let stripped = Command::new("strip").arg(&out).status().unwrap();
    assert!(stripped.success());
    for table in [&["--defined-only"][..], &["-D", "--defined-only"]] {
        let nm = Command::new("nm").args(table).arg(&out).output().unwrap();
        let symbols = String::from_utf8_lossy(&nm.stdout);
        assert!(
            !symbols.contains("SSL_"),
            "{} names OpenSSL: {symbols}",
            out.display()
        );
    }
    out
}
