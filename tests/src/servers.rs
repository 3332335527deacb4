//! Real servers for the end-to-end tests: nginx with a configuration of the
//! test's making, and an HTTPS file server (`openssl s_server -WWW`) with a
//! self-signed certificate made on the spot. Each lives in its own
//! temporary directory and is stopped when dropped.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch_dir(what: &str, port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qtap-{what}-{}-{port}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits (10 s at most) until something listens on loopback `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// nginx, master and one worker, serving `servers` (the `server { … }`
/// blocks of its `http` section) and listening on `port`.
pub struct Nginx {
    child: Child,
    pub dir: PathBuf,
}

impl Nginx {
    pub fn start(port: u16, servers: &str) -> Nginx {
        assert!(
            Path::new("/usr/sbin/nginx").exists(),
            "nginx missing: make test installs it"
        );
        let dir = scratch_dir("nginx", port);
        fs::create_dir_all(dir.join("logs")).unwrap();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\n\
             pid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/logs/access.log;\n\
               client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n\
               uwsgi_temp_path {d}; scgi_temp_path {d};\n\
               {servers}\n}}\n"
        );
        fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .args(["-p", &format!("{d}/"), "-c", &format!("{d}/nginx.conf")])
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx is installed (make test installs it)");
        wait_for_port(port, "nginx");
        Nginx { child, dir }
    }

    pub fn access_log(&self) -> String {
        fs::read_to_string(self.dir.join("logs/access.log")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGQUIT is nginx's graceful stop.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `openssl s_server -WWW`: serves the files of its directory over
/// HTTPS/1.0, one connection at a time, with a fresh self-signed
/// certificate.
pub struct HttpsFiles {
    child: Child,
    pub dir: PathBuf,
    pub port: u16,
}

impl HttpsFiles {
    /// Serves `files` (name, contents) on a free port.
    pub fn start(files: &[(&str, &[u8])]) -> HttpsFiles {
        let port = free_port();
        let dir = scratch_dir("https", port);
        for (name, contents) in files {
            fs::write(dir.join(name), contents).unwrap();
        }
        self_signed(&dir);
        let child = Command::new("openssl")
            .args([
                "s_server", "-WWW", "-quiet", "-cert", "cert.pem", "-key", "key.pem",
            ])
            .args(["-accept", &port.to_string()])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl");
        wait_for_port(port, "openssl s_server");
        HttpsFiles { child, dir, port }
    }
}

impl Drop for HttpsFiles {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Writes a fresh self-signed certificate for `localhost` and its key to
/// `dir` (`cert.pem`, `key.pem`).
pub fn self_signed(dir: &Path) {
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ])
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed (make test installs it)");
    assert!(made.success(), "openssl req failed");
}
