//! Containers and services: events carry the process's cgroup and what
//! its path means, and `container:`, `unit:` and `cgroup:` terms select
//! by it. No container engine runs here, so the test makes cgroups of the
//! forms docker and systemd make, in the unified hierarchy, and starts
//! programs in them (the shell moves itself, then execs).

use std::{
    net::TcpListener, os::unix::fs::MetadataExt, path::PathBuf, process::Command, thread,
    time::Duration,
};

use qtap_tests::{python_named, require_root, stdout_of, Follower, Service};
use serde_json::Value;

/// Where the unified hierarchy is mounted (`/sys/fs/cgroup/unified` on a
/// hybrid host like this one).
fn cgroup2_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|l| {
            let (mount, fs) = l.split_once(" - ")?;
            fs.starts_with("cgroup2 ")
                .then(|| PathBuf::from(mount.split(' ').nth(4).unwrap()))
        })
        .expect("a cgroup2 mount")
}

/// A cgroup the test made; removed when dropped.
struct TestCgroup {
    dir: PathBuf,
    /// As /proc/<pid>/cgroup shows it.
    path: String,
}

impl TestCgroup {
    fn make(root: &std::path::Path, path: &str) -> TestCgroup {
        let dir = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        TestCgroup {
            dir,
            path: path.to_owned(),
        }
    }

    fn id(&self) -> u64 {
        std::fs::metadata(&self.dir).unwrap().ino()
    }

    /// Runs `program -c script port` in this cgroup from its exec on;
    /// returns its pid (the shell's, which execs the program).
    fn run(&self, program: &std::path::Path, script: &str, port: u16) -> u32 {
        let procs = self.dir.join("cgroup.procs");
        let child = Command::new("sh")
            .args([
                "-c",
                r#"echo $$ > "$1" && exec "$2" -c "$3" "$4""#,
                "sh",
                procs.to_str().unwrap(),
                program.to_str().unwrap(),
                script,
                &port.to_string(),
            ])
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(child.wait_with_output().unwrap().status.success());
        pid
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Empty once its processes have exited; the parents after it.
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

const CLIENT: &str = r"
import socket, sys
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
s.sendall(b'hello')
s.close()
";

#[test]
fn events_name_their_container_or_unit_and_terms_select_by_them() {
    require_root();
    let root = cgroup2_root();
    let me = std::process::id();
    let container = format!("{me:08x}").repeat(8);
    let docker = TestCgroup::make(
        &root,
        &format!("/qtap-e2e-{me}.slice/docker-{container}.scope"),
    );
    let (dir, program) = python_named("qtap-cgroup");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        for _ in 0..2 {
            drop(listener.accept().unwrap());
        }
    });
    let service = Service::start(&[]).unwrap();
    let session = |filter: &str| {
        let id = stdout_of(&service.ctl(&["trace", "start", "--filter", filter]));
        let follower = Follower::spawn(
            service.ctl_command(None, &["trace", "follow", &id, "--output", "json"]),
        )
        .unwrap();
        service.wait_followers(&id, 1);
        follower
    };
    let by_container = session(&format!("container:{}", &container[..12]));
    let by_unit = session(&format!("unit:qtap-e2e-{me}.service"));
    let by_path = session(&format!("cgroup:/qtap-e2e-{me}.slice/"));
    // Made after the sessions started: qtapd's next tick finds it.
    let unit = TestCgroup::make(
        &root,
        &format!("/qtap-e2e-{me}.slice/qtap-e2e-{me}.service"),
    );
    thread::sleep(Duration::from_millis(2500));
    let in_docker = docker.run(&program, CLIENT, port);
    let in_unit = unit.run(&program, CLIENT, port);
    server.join().unwrap();

    let pids = |events: &[Value]| {
        let mut pids: Vec<u64> = events.iter().filter_map(|e| e["pid"].as_u64()).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    };
    let container_events = by_container.stop().unwrap();
    let unit_events = by_unit.stop().unwrap();
    let path_events = by_path.stop().unwrap();
    assert_eq!(pids(&container_events), [u64::from(in_docker)]);
    assert_eq!(pids(&unit_events), [u64::from(in_unit)]);
    let mut both = vec![u64::from(in_docker), u64::from(in_unit)];
    both.sort_unstable();
    assert_eq!(pids(&path_events), both);

    let connect = |events: &[Value]| -> Value {
        events
            .iter()
            .find(|e| e["msg"] == "syscall/connect")
            .cloned()
            .unwrap_or_else(|| panic!("no connect: {events:#?}"))
    };
    let c = connect(&container_events);
    assert_eq!(
        (
            c["cgroup"].as_str(),
            c["cgroup_id"].as_u64(),
            c["container_id"].as_str()
        ),
        (
            Some(docker.path.as_str()),
            Some(docker.id()),
            Some(container.as_str())
        ),
        "{c}"
    );
    assert!(c.get("unit").is_none(), "{c}");
    let u = connect(&unit_events);
    assert_eq!(
        (
            u["cgroup"].as_str(),
            u["cgroup_id"].as_u64(),
            u["unit"].as_str()
        ),
        (
            Some(unit.path.as_str()),
            Some(unit.id()),
            Some(format!("qtap-e2e-{me}.service").as_str())
        ),
        "{u}"
    );
    drop((docker, unit));
    std::fs::remove_dir_all(&dir).unwrap();
}
