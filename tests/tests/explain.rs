//! `qtapctl explain PID` on real programs: each TLS stack named, with the
//! right verdict — OpenSSL shared (python's `ssl`) and linked in (Node.js)
//! and GnuTLS (loaded by python) seen, Go's crypto/tls (built here,
//! plain and stripped) and OpenSSL 3 linked into a stripped C program; for a traced process, its fds that carry TLS and
//! whether their plaintext is seen — and only for a caller who may trace
//! the process.

use std::{
    fs,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use qtap_tests::{
    cc_openssl_stripped, go_build, python_named, require_root, servers::HttpsFiles, stdout_of,
    system_user, Service,
};
use serde_json::Value;

const MEMBER: &str = "qtap-e2e-member";

/// A program that printed its first line (it is ready); killed on drop.
struct Running(Child);

impl Running {
    fn start(cmd: &mut Command) -> Running {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "{cmd:?}");
        Running(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn explain(service: &Service, user: Option<&str>, pid: u32) -> Value {
    let out = service.ctl_as(user, &["explain", &pid.to_string(), "--output", "json"]);
    serde_json::from_str(&stdout_of(&out)).unwrap()
}

/// The one stack named `name`.
fn stack<'a>(explained: &'a Value, name: &str) -> &'a Value {
    let stacks = explained["stacks"].as_array().unwrap();
    let found: Vec<_> = stacks.iter().filter(|s| s["name"] == name).collect();
    assert_eq!(found.len(), 1, "one {name} in {explained:#}");
    found[0]
}

const PYTHON_WAITS: &str = "import ssl, time; print('ready', flush=True); time.sleep(60)";

/// A Go program whose HTTPS client code is linked in (`http.Get` on an
/// argument it is never given).
const GO_PROGRAM: &str =
    "package main\n\nimport (\n\t\"fmt\"\n\t\"net/http\"\n\t\"os\"\n\t\"time\"\n)\n\n\
     func main() {\n\tif len(os.Args) > 1 {\n\t\thttp.Get(os.Args[1])\n\t}\n\
     \tfmt.Println(\"ready\")\n\ttime.Sleep(time.Minute)\n}\n";

/// A C program with OpenSSL's client calls linked in (called only when it
/// is given an argument, which it never is).
const C_PROGRAM: &str = "#include <openssl/ssl.h>\n#include <stdio.h>\n#include <unistd.h>\n\
     int main(int argc, char **argv) {\n\
     \tif (argc > 1) {\n\
     \t\tSSL *s = SSL_new(SSL_CTX_new(TLS_client_method()));\n\
     \t\tSSL_set_fd(s, 0);\n\t\tSSL_write(s, argv[1], 1);\n\t\tSSL_read(s, argv[1], 1);\n\t}\n\
     \tputs(\"ready\");\n\tfflush(stdout);\n\tsleep(60);\n\treturn 0;\n}\n";

#[test]
fn explain_names_each_programs_tls_stack_and_whether_qtap_sees_it() {
    require_root();
    let service = Service::start(&[]).unwrap();

    let python = Running::start(Command::new("/usr/bin/python3").args(["-c", PYTHON_WAITS]));
    let e = explain(&service, None, python.pid());
    let libssl = stack(&e, "OpenSSL (shared libssl)");
    assert_eq!(libssl["plaintext_seen"], true);
    assert!(
        libssl["path"].as_str().unwrap().contains("/libssl.so"),
        "{e:#}"
    );

    // GnuTLS, loaded as a library the way its users link it.
    let gnutls = Running::start(Command::new("/usr/bin/python3").args([
        "-c",
        "import ctypes, time; ctypes.CDLL('libgnutls.so.30'); print('ready', flush=True); \
         time.sleep(60)",
    ]));
    let e = explain(&service, None, gnutls.pid());
    let lib = stack(&e, "GnuTLS");
    assert_eq!(lib["plaintext_seen"], true);
    assert!(
        lib["path"].as_str().unwrap().contains("/libgnutls.so"),
        "{e:#}"
    );
    assert!(
        lib["detail"].as_str().unwrap().contains("mod:gnutls"),
        "{e:#}"
    );

    let node = Running::start(
        Command::new("node").args(["-e", "console.log('ready'); setTimeout(() => {}, 60000)"]),
    );
    let e = explain(&service, None, node.pid());
    let linked = stack(&e, "OpenSSL or BoringSSL (linked into the executable)");
    assert_eq!(linked["plaintext_seen"], true);
    assert_eq!(linked["path"], e["exe"], "{e:#}");

    // An unsupported stack, named as such: qtapd itself serves mutual TLS
    // with rustls.
    let e = explain(&service, None, service.pid());
    let rustls = stack(&e, "rustls");
    assert_eq!(rustls["plaintext_seen"], false, "{e:#}");
    assert!(
        rustls["detail"].as_str().unwrap().contains("ciphertext"),
        "{e:#}"
    );

    let dir = std::env::temp_dir().join(format!("qtap-explain-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let version = Command::new("go")
        .args(["env", "GOVERSION"])
        .env("GOCACHE", dir.join("cache"))
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    for strip in [false, true] {
        let program = go_build(&dir, GO_PROGRAM, strip);
        let go = Running::start(&mut Command::new(&program));
        let e = explain(&service, None, go.pid());
        let tls = stack(&e, "Go crypto/tls");
        assert_eq!(tls["version"], version.as_str(), "stripped: {strip}: {e:#}");
        assert_eq!(tls["plaintext_seen"], true, "{e:#}");
        assert!(
            tls["detail"].as_str().unwrap().contains("mod:gotls"),
            "{e:#}"
        );
        assert!(e["stacks"].as_array().unwrap().len() == 1, "{e:#}");
    }

    // OpenSSL 3 linked into a stripped C program: found without symbols.
    let program = cc_openssl_stripped(&dir, C_PROGRAM);
    let c = Running::start(&mut Command::new(&program));
    let e = explain(&service, None, c.pid());
    let linked = stack(
        &e,
        "OpenSSL 3 (linked into the executable, without symbols)",
    );
    assert_eq!(linked["plaintext_seen"], true, "{e:#}");
    assert!(e["stacks"].as_array().unwrap().len() == 1, "{e:#}");

    // A member of group qtap: its own process, not root's.
    system_user(MEMBER, true);
    let own = Running::start(
        Command::new("setpriv")
            .arg(format!("--reuid={MEMBER}"))
            .arg(format!("--regid={MEMBER}"))
            .arg("--init-groups")
            .args(["--", "/usr/bin/python3", "-c", PYTHON_WAITS]),
    );
    let e = explain(&service, Some(MEMBER), own.pid());
    assert_eq!(stack(&e, "OpenSSL (shared libssl)")["plaintext_seen"], true);
    let denied = service.ctl_as(
        Some(MEMBER),
        &["explain", &python.pid().to_string(), "--output", "json"],
    );
    assert!(!denied.status.success());
    let why = String::from_utf8_lossy(&denied.stderr);
    assert!(why.contains("root's to examine"), "{why}");
    assert!(denied.stdout.is_empty(), "nothing of root's process told");

    tls_fds_of_traced_processes(&service);

    let gone = service.ctl(&["explain", "4194303"]);
    assert!(!gone.status.success());
    let why = String::from_utf8_lossy(&gone.stderr);
    assert!(why.contains("no process 4194303"), "{why}");
    fs::remove_dir_all(&dir).unwrap();
}

/// A python TLS client that has fetched a page and keeps its connection.
const TLS_CLIENT: &str = "import socket, ssl, sys, time
s = ssl._create_unverified_context().wrap_socket(
    socket.create_connection(('127.0.0.1', int(sys.argv[1]))))
s.sendall(b'GET /page HTTP/1.0\\r\\n\\r\\n')
s.recv(100)
print('ready', flush=True)
time.sleep(60)";

/// Two such clients, each traced by its own session: without the TLS
/// modules its fd shows TLS, ciphertext only; with `mod:openssl`,
/// plaintext seen. An untraced process's fds are not known.
fn tls_fds_of_traced_processes(service: &Service) {
    let backend = HttpsFiles::start(&[("page", b"a page\n")]);
    let remote = format!("127.0.0.1:{}", backend.port);
    let port = backend.port.to_string();
    for (name, modules, seen) in [
        ("qtap-explain-bare", "mod:socket", false),
        ("qtap-explain-ossl", "mod:socket,mod:openssl", true),
    ] {
        let (dir, program) = python_named(name);
        let id = service.start_session(&format!("{modules},exe.endsWith:/{name}"));
        let client = Running::start(Command::new(&program).args(["-c", TLS_CLIENT, &port]));
        // The ring is read in batches: wait until qtapd has the fd.
        let mut e = explain(service, None, client.pid());
        for _ in 0..50 {
            if !e["tls_fds"].as_array().unwrap().is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            e = explain(service, None, client.pid());
        }
        assert_eq!(e["traced"], true, "{e:#}");
        let fds = e["tls_fds"].as_array().unwrap();
        assert_eq!(fds.len(), 1, "{name}: one TLS fd: {e:#}");
        assert_eq!(fds[0]["remote"], remote.as_str(), "{e:#}");
        assert_eq!(fds[0]["plaintext_seen"], seen, "{name}: {e:#}");
        let screen = stdout_of(&service.ctl(&["explain", &client.pid().to_string()]));
        let verdict = if seen {
            "plaintext seen"
        } else {
            "ciphertext only"
        };
        assert!(
            screen.contains(&format!("{remote} ")) && screen.contains(verdict),
            "{screen}"
        );
        // status counts the same fds (and nothing of whose they are).
        let status: Value =
            serde_json::from_str(&stdout_of(&service.ctl(&["status", "--output", "json"])))
                .unwrap();
        let coverage = &status["tls_coverage"];
        if seen {
            assert!(coverage["plaintext_fds"].as_u64() >= Some(1), "{status:#}");
            assert!(coverage["probed_files"].as_u64() >= Some(1), "{status:#}");
        } else {
            assert_eq!(coverage["tls_fds"], 1, "{status:#}");
            assert_eq!(coverage["plaintext_fds"], 0, "{status:#}");
            assert_eq!(coverage["probed_files"], 0, "{status:#}");
        }
        assert!(service.ctl(&["trace", "stop", &id]).status.success());
        drop(client);
        fs::remove_dir_all(dir).unwrap();
    }
    let untraced = Running::start(Command::new("/usr/bin/python3").args(["-c", TLS_CLIENT, &port]));
    let e = explain(service, None, untraced.pid());
    assert_eq!(e["traced"], false, "{e:#}");
    assert!(e["tls_fds"].as_array().unwrap().is_empty(), "{e:#}");
}
