//! Harness for qtap's privileged end-to-end tests: starts a real `qtapd`
//! with a filter, collects the JSON events it prints, and stops it.
//!
//! The tests need root and a kernel that loads BPF. Run as non-root outside
//! CI they say loudly that they did not run; under `CI=true` a missing
//! privilege or a daemon that cannot load its programs fails the test.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The `qtapd` binary under test: `$QTAPD_BIN`, else the workspace's
/// release build, else its debug build.
pub fn qtapd_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("QTAPD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    for profile in ["release", "debug"] {
        let bin = target.join(profile).join("qtapd");
        if bin.exists() {
            return Ok(bin);
        }
    }
    bail!("no qtapd binary: build it first (`make test` does) or set QTAPD_BIN")
}

/// Whether privileged tests can run here. Under `CI=true` not being root
/// is a failure, not a skip.
#[must_use]
pub fn privileged() -> bool {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but not root: the privileged end-to-end tests must run in CI"
        );
        eprintln!("*** NOT RUN: privileged end-to-end test needs root (run `sudo make test`) ***");
    }
    root
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
        let mut child = Command::new(qtapd_bin()?)
            .arg(format!("--bpf-trace={filter}"))
            .args(["--log-encoding=json", "--log-level=info"])
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
        let err = child.stderr.take().context("qtapd stderr")?;
        let log = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut daemon = Daemon {
            child,
            events,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            if daemon.stderr.lock().unwrap().contains(READY) {
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                thread::sleep(Duration::from_millis(200));
                bail!(
                    "qtapd exited with {status} before it was ready:\n{}",
                    daemon.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!("qtapd not ready after 60 s:\n{}", daemon.stderr());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// What qtapd logged so far.
    #[must_use]
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Lets in-flight events drain, stops qtapd with SIGTERM, and returns
    /// every event it printed.
    pub fn stop(mut self) -> Result<Vec<Value>> {
        thread::sleep(Duration::from_millis(700));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        thread::sleep(Duration::from_millis(200));
        if !status.success() {
            bail!("qtapd exited with {status}:\n{}", self.stderr());
        }
        Ok(self.events.lock().unwrap().clone())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
