//! Trace sessions end to end: a real qtapd serving gRPC on a unix socket,
//! driven by the real qtapctl as root and as unprivileged users.

use std::{net::TcpListener, process::Command, thread, time::Duration};

use qtap_tests::{
    bytes_on, of_pid, python_named, require_root, run_curl, serve_once, stdout_of, syscall,
    system_user, uid_of, Follower, Service, READS, WRITES,
};

fn http_server(requests: usize) -> (String, thread::JoinHandle<Vec<(usize, usize)>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}/",
        listener.local_addr().unwrap().port()
    );
    let handle = thread::spawn(move || (0..requests).map(|_| serve_once(&listener)).collect());
    (url, handle)
}

fn follow_json(service: &Service, user: Option<&str>, id: &str) -> Follower {
    Follower::spawn(service.ctl_command(user, &["trace", "follow", id, "--output", "json"]))
        .unwrap()
}

#[test]
fn root_sessions_trace_their_own_processes_and_stop_cleanly() {
    require_root();
    let service = Service::start(&[]).unwrap();
    let curl_id = stdout_of(&service.ctl(&[
        "trace",
        "start",
        "--filter",
        "mod:socket,exe.contains:curl",
        "--name",
        "curl",
    ]));
    let py_id = stdout_of(&service.ctl(&["trace", "start", "--filter", "exe.contains:python3"]));
    assert_ne!(curl_id, py_id);
    let curl_follow = follow_json(&service, None, &curl_id);
    let py_follow = follow_json(&service, None, &py_id);
    service.wait_followers(&curl_id, 1);
    service.wait_followers(&py_id, 1);

    let (url, server) = http_server(2);
    let curl = run_curl(&url);
    let python = Command::new("python3")
        .args([
            "-c",
            &format!("import urllib.request; urllib.request.urlopen('{url}').read()"),
        ])
        .status()
        .unwrap();
    assert!(python.success());
    let requests = server.join().unwrap();
    let curl_events = curl_follow.stop().unwrap();
    let py_events = py_follow.stop().unwrap();

    // The curl session saw curl's connection, with the right byte counts.
    let mine = of_pid(&curl_events, curl);
    assert!(
        curl_events
            .iter()
            .all(|e| e["exe"].as_str().unwrap_or("").contains("curl")),
        "{curl_events:#?}"
    );
    let connect = mine
        .iter()
        .find(|e| {
            syscall(e) == Some("connect")
                && e["conn_info"]["remote"].as_str()
                    == url.strip_prefix("http://").map(|u| u.trim_end_matches('/'))
        })
        .unwrap_or_else(|| panic!("no connect to {url}: {mine:#?}"));
    let fd = connect["fd"].as_i64().unwrap();
    assert_eq!(bytes_on(&mine, fd, WRITES), requests[0].0 as i64);
    assert_eq!(bytes_on(&mine, fd, READS), requests[0].1 as i64);
    assert!(mine
        .iter()
        .any(|e| syscall(e) == Some("close") && e["fd"].as_i64() == Some(fd)));
    for e in &curl_events {
        assert_eq!(e["session"], curl_id.as_str());
    }
    let seqs: Vec<u64> = curl_events
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "a gap in seq means loss"
    );

    // The python session saw only python.
    assert!(!py_events.is_empty(), "python3 was not traced");
    assert!(
        py_events
            .iter()
            .all(|e| e["exe"].as_str().unwrap_or("").contains("python3")),
        "{py_events:#?}"
    );
    assert!(of_pid(&py_events, curl).is_empty());

    // Stopping both removes the kernel state.
    for id in [&curl_id, &py_id] {
        assert!(
            stdout_of(&service.ctl(&["trace", "stop", id])).starts_with(&format!("stopped {id}"))
        );
    }
    let status = stdout_of(&service.ctl(&["status"]));
    assert!(status.contains("sessions            0"), "{status}");
    assert!(status.contains("selected processes  0"), "{status}");
    let stop_again = service.ctl(&["trace", "stop", &curl_id]);
    assert_eq!(stop_again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&stop_again.stderr).contains("not found"));
    service.stop().unwrap();
}

/// A follower is left out of the session it reads: with no process term
/// in the filter it would trace its own reads of the stream, each read
/// making more to read.
#[test]
fn a_follower_does_not_trace_itself() {
    require_root();
    let service = Service::start(&[]).unwrap();
    let follower = Follower::spawn(service.ctl_command(
        None,
        &[
            "trace",
            "follow",
            "--filter",
            "mod:socket",
            "--output",
            "json",
        ],
    ))
    .unwrap();
    // The session starts with the follower: a curl before it is missed.
    let traced_curl = (0..5).any(|_| {
        let (url, server) = http_server(1);
        let curl = u64::from(run_curl(&url));
        server.join().unwrap();
        follower
            .wait_for(Duration::from_secs(2), |e| e["pid"].as_u64() == Some(curl))
            .is_some()
    });
    assert!(traced_curl, "the session traced none of curl's calls");
    let me = follower.pid();
    let events = follower.stop().unwrap();
    let own = of_pid(&events, me);
    assert!(own.is_empty(), "the follower traced itself: {own:#?}");
}

/// A follower whose session ends is told why: stopped (and by whom), or
/// qtapd shutting down on SIGTERM; it then exits 0 on its own, and qtapd
/// exits within its grace.
#[test]
fn followers_are_told_why_the_stream_ended() {
    require_root();
    let service = Service::start(&[]).unwrap();
    let follow = |id: &str| {
        service
            .ctl_command(None, &["trace", "follow", id, "--output", "json"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let stopped_id = stdout_of(&service.ctl(&["trace", "start", "--filter", "exe.contains:curl"]));
    let shutdown_id = stdout_of(&service.ctl(&["trace", "start", "--filter", "exe.contains:curl"]));
    let stopped = follow(&stopped_id);
    let shut_down = follow(&shutdown_id);
    service.wait_followers(&stopped_id, 1);
    service.wait_followers(&shutdown_id, 1);

    stdout_of(&service.ctl(&["trace", "stop", &stopped_id]));
    let out = stopped.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("the session ended: stopped by uid 0"),
        "{said}"
    );

    let log = service.stop().unwrap();
    let out = shut_down.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("the session ended: qtapd is shutting down"),
        "{said}"
    );
    assert!(
        !log.contains("clients still connected at shutdown"),
        "the follower's stream should end before the grace runs out: {log}"
    );
}

/// `follow --write FILE` keeps the stream as qtapd sent it, and `trace
/// read FILE --output json` prints it as a JSON follower of the same
/// session printed it, line for line, with the same counts (on stderr,
/// and as JSON with `--summary`); a file that is not a recording is
/// refused by name.
#[test]
fn a_written_stream_reads_back_as_the_json_follower_printed_it() {
    require_root();
    let service = Service::start(&[]).unwrap();
    let dir = std::env::temp_dir().join(format!("qtap-e2e-rec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("curl.qtaprec");
    let id = stdout_of(&service.ctl(&["trace", "start", "--filter", "exe.contains:curl"]));
    let json = follow_json(&service, None, &id);
    let writer = service
        .ctl_command(None, &["trace", "follow", &id, "--write"])
        .arg(&file)
        .arg("--summary")
        .arg(dir.join("summary.json"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    service.wait_followers(&id, 2);
    let (url, server) = http_server(2);
    let curls = [run_curl(&url), run_curl(&url)];
    server.join().unwrap();
    // The stream ends for both followers with the session.
    thread::sleep(Duration::from_millis(700));
    stdout_of(&service.ctl(&["trace", "stop", &id]));
    let wrote = writer.wait_with_output().unwrap();
    let wrote_said = String::from_utf8_lossy(&wrote.stderr);
    assert!(wrote.status.success(), "{wrote_said}");
    let printed = json.stop().unwrap();
    for curl in curls {
        assert!(
            of_pid(&printed, curl)
                .iter()
                .any(|e| syscall(e) == Some("connect")),
            "curl {curl} was not traced: {printed:#?}"
        );
    }

    let read = service
        .ctl_command(None, &["trace", "read", "--output", "json"])
        .arg(&file)
        .output()
        .unwrap();
    let read_said = String::from_utf8_lossy(&read.stderr);
    assert!(read.status.success(), "{read_said}");
    let replayed: Vec<serde_json::Value> = String::from_utf8_lossy(&read.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replayed, printed);
    let counts = format!("{} events, 0 lost", printed.len());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["events"], printed.len());
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["seq_gaps"], 0);
    assert!(wrote_said.contains(&counts), "{wrote_said}");
    assert!(read_said.contains(&counts), "{read_said}");
    assert!(
        read_said.contains("the session ended: stopped by uid 0"),
        "{read_said}"
    );

    let not_one = dir.join("not-a-recording");
    std::fs::write(&not_one, "hello\n").unwrap();
    let refused = service
        .ctl_command(None, &["trace", "read"])
        .arg(&not_one)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is not a qtapctl recording"),
        "{refused:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    service.stop().unwrap();
}

/// `--metrics-listen`: Prometheus text with the sessions, followers and
/// counters `qtapctl status` shows; anything but `GET /metrics` is 404.
#[test]
fn metrics_endpoint_counts_sessions_and_followers() {
    require_root();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let service = Service::start(&["--metrics-listen", &addr]).unwrap();
    let scrape = |path: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-w",
                "\n%{http_code}",
                &format!("http://{addr}{path}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let id = stdout_of(&service.ctl(&[
        "trace",
        "start",
        "--filter",
        "exe.contains:curl",
        "--name",
        "m",
    ]));
    let follower = follow_json(&service, None, &id);
    service.wait_followers(&id, 1);
    let (url, server) = http_server(1);
    run_curl(&url);
    server.join().unwrap();
    thread::sleep(Duration::from_millis(300));
    let text = scrape("/metrics");
    assert!(text.ends_with("\n200"), "{text}");
    for line in [
        "qtap_sessions 1",
        "qtap_followers 1",
        &format!("qtap_session_followers{{session=\"{id}\",name=\"m\"}} 1"),
        "qtap_lost_total{stage=\"kernel_ring\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in {text}");
    }
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    assert!(value("qtap_records_total") > 0, "{text}");
    assert!(
        value(&format!(
            "qtap_session_events_delivered_total{{session=\"{id}\",name=\"m\"}}"
        )) > 0,
        "{text}"
    );
    assert!(value("qtap_programs_attached") >= 40, "{text}");
    assert!(scrape("/other").ends_with("\n404"));
    drop(follower);
    service.stop().unwrap();
}

#[test]
fn invalid_filter_is_a_usage_error_naming_the_term() {
    require_root();
    let service = Service::start(&[]).unwrap();
    let out = service.ctl(&["trace", "start", "--filter", "mod:socket,exe.contain:curl"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid argument") && stderr.contains("`exe.contain:curl`"),
        "{stderr}"
    );
    service.stop().unwrap();
}

#[test]
fn unprivileged_users_see_only_their_own() {
    require_root();
    // qtapd creates group qtap before the users are made.
    let service = Service::start(&[]).unwrap();
    system_user("qtap-e2e-member", true);
    system_user("qtap-e2e-stranger", false);
    let member = Some("qtap-e2e-member");

    // Not in the group: the socket refuses the connection.
    let out = service.ctl_as(Some("qtap-e2e-stranger"), &["trace", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("connect to qtapd"),
        "{out:?}"
    );

    // The socket is root:qtap, mode 0660 (and again after a restart).
    let socket_owner = |service: &Service| {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&service.socket).unwrap();
        let group = Command::new("getent")
            .args(["group", &meta.gid().to_string()])
            .output()
            .unwrap();
        let group = String::from_utf8_lossy(&group.stdout).to_string();
        (
            meta.mode() & 0o7777,
            meta.uid(),
            group.split(':').next().unwrap_or("").to_owned(),
        )
    };
    let expected = (0o660, 0, "qtap".to_owned());
    assert_eq!(socket_owner(&service), expected);
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(service.pid() as i32, libc::SIGTERM) };
    let service = service.restart(&[]).unwrap();
    assert_eq!(socket_owner(&service), expected, "after a restart");

    // A member's session selects only the member's processes, even when
    // its filter asks for root's (uid:0).
    let root_id = stdout_of(&service.ctl(&["trace", "start", "--filter", "exe.contains:curl"]));
    let id = stdout_of(&service.ctl_as(
        member,
        &["trace", "start", "--filter", "exe.contains:curl,uid:0"],
    ));
    let follower = follow_json(&service, member, &id);
    service.wait_followers(&id, 1);
    let (url, server) = http_server(2);
    let root_curl = run_curl(&url);
    let member_curl = Command::new("setpriv")
        .args([
            "--reuid=qtap-e2e-member",
            "--regid=qtap-e2e-member",
            "--init-groups",
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            &url,
        ])
        .spawn()
        .unwrap();
    let member_pid = member_curl.id();
    assert!(member_curl.wait_with_output().unwrap().status.success());
    server.join().unwrap();
    let events = follower.stop().unwrap();
    assert!(
        of_pid(&events, root_curl).is_empty(),
        "a member's session saw root's curl"
    );
    assert!(
        !of_pid(&events, member_pid).is_empty(),
        "a member's session missed the member's curl: {events:#?}"
    );

    // The member sees and may touch only its own session, whose filter
    // names the member's uid in place of the one it asked for.
    let list = stdout_of(&service.ctl_as(member, &["trace", "list"]));
    let uid_of_member = uid_of("qtap-e2e-member");
    let shown = list.lines().find(|l| l.starts_with(&id)).unwrap_or("");
    assert!(
        shown.contains(&format!("uid:{uid_of_member}")) && !shown.contains("uid:0"),
        "{list}"
    );
    assert!(
        list.contains(&id) && !list.lines().any(|l| l.starts_with(&format!("{root_id} "))),
        "{list}"
    );
    let denied = service.ctl_as(member, &["trace", "stop", &root_id]);
    assert_eq!(denied.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{denied:?}"
    );
    let denied = service.ctl_as(member, &["trace", "follow", &root_id, "--output", "json"]);
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{denied:?}"
    );
    assert!(stdout_of(&service.ctl_as(member, &["trace", "stop", &id])).starts_with("stopped"));
    service.stop().unwrap();
}

/// A gRPC channel over the daemon's unix socket.
async fn channel(socket: std::path::PathBuf) -> tonic::transport::Channel {
    use hyper_util::rt::TokioIo;
    tonic::transport::Endpoint::from_static("http://qtapd.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .unwrap()
}

#[test]
fn health_and_reflection_answer_on_the_socket() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };

    require_root();
    let service = Service::start(&[]).unwrap();
    let socket = service.socket.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, services) = runtime.block_on(async move {
        let channel = channel(socket).await;
        let request = HealthCheckRequest {
            service: "qtap.v1.Qtap".into(),
        };
        let status = HealthClient::new(channel.clone())
            .check(request)
            .await
            .unwrap()
            .into_inner()
            .status;
        let list = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new(channel)
            .server_reflection_info(tokio_stream::once(list))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
            panic!("unexpected reflection answer: {answer:?}");
        };
        let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        (status, services)
    });
    assert_eq!(status, ServingStatus::Serving as i32);
    assert!(services.iter().any(|s| s == "qtap.v1.Qtap"), "{services:?}");
    // `qtapctl health`, the probe command, asks the same service.
    assert_eq!(
        stdout_of(&service.ctl(&["health"])),
        "qtap.v1.Qtap: SERVING"
    );
    let unknown = service.ctl(&["health", "--service", "no.such.Service"]);
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    // The client's runtime (and so its connection) is still alive and
    // idle: qtapd must still exit on SIGTERM, after its short grace.
    let stopping = std::time::Instant::now();
    let socket = service.socket.clone();
    service.stop().unwrap();
    let gone = Command::new(qtap_tests::qtapctl_bin().unwrap())
        .arg("--socket")
        .arg(&socket)
        .arg("health")
        .output()
        .unwrap();
    assert_eq!(
        gone.status.code(),
        Some(1),
        "health of a stopped qtapd: {gone:?}"
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "shutdown waited on an idle client"
    );
    drop(runtime);
}

#[test]
fn follow_exits_0_on_a_closed_pipe_and_reconnects_when_qtapd_dies() {
    require_root();
    let service = Service::start(&[]).unwrap();
    let id = stdout_of(&service.ctl(&["trace", "start", "--filter", "exe.contains:curl"]));

    // `qtapctl … | head -n 3`: qtapctl's exit status must be 0.
    let follow = service.ctl_command(None, &["trace", "follow", &id, "--output", "json"]);
    let line = format!(
        "{} | head -n 3 > /dev/null; exit ${{PIPESTATUS[0]}}",
        std::iter::once(follow.get_program())
            .chain(follow.get_args())
            .map(|a| format!("'{}'", a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut piped = Command::new("bash").args(["-c", &line]).spawn().unwrap();
    service.wait_followers(&id, 1);
    // qtapctl learns that head is gone when it next writes: curl runs
    // until it has (one curl's socket calls may arrive in a single write).
    let mut status = None;
    for _ in 0..10 {
        let (url, server) = http_server(1);
        let _ = run_curl(&url);
        server.join().unwrap();
        for _ in 0..20 {
            status = piped.try_wait().unwrap();
            if status.is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        if status.is_some() {
            break;
        }
    }
    let status = status.unwrap_or_else(|| {
        let _ = piped.kill();
        panic!("qtapctl kept running after head closed the pipe");
    });
    assert_eq!(status.code(), Some(0), "qtapctl | head must exit 0");

    // qtapd killed under a follower: qtapctl says it reconnects and keeps
    // trying (with backoff) instead of exiting.
    let mut follower = service
        .ctl_command(None, &["trace", "follow", &id])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    service.wait_followers(&id, 1);
    service.kill();
    thread::sleep(Duration::from_secs(2));
    assert!(
        follower.try_wait().unwrap().is_none(),
        "qtapctl gave up instead of reconnecting"
    );
    // SAFETY: signalling our own child, like Ctrl-C.
    unsafe { libc::kill(follower.id() as i32, libc::SIGINT) };
    let out = follower.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reconnecting in"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// While a session's programs are quiet qtapd reads the ring on no clock
/// (the kernel wakes it at the next record): a data call after a quiet
/// spell, by a process that goes on running and makes no other call,
/// still reaches the follower at once.
#[test]
fn a_call_after_a_quiet_spell_arrives_while_its_process_runs() {
    require_root();
    let service = Service::start(&[]).unwrap();
    let (dir, python) = python_named("qtap-quiet");
    let id = service.start_session(&format!("mod:socket,fd:socket,exe:{}", python.display()));
    let follower = follow_json(&service, None, &id);
    service.wait_followers(&id, 1);
    // A TCP connection the kernel placed at connect: its data records are
    // sent without a wakeup of their own (a socketpair's, which qtapd
    // must place from /proc, wake it anyway).
    let script = "import socket, time\n\
                  server = socket.create_server(('127.0.0.1', 0))\n\
                  a = socket.create_connection(server.getsockname())\n\
                  b, _ = server.accept()\n\
                  time.sleep(1.0)\n\
                  a.send(b'after a quiet spell')\n\
                  print('sent', flush=True)\n\
                  time.sleep(60)\n";
    let mut python = Command::new(&python)
        .args(["-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut sent = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(python.stdout.take().unwrap()),
        &mut sent,
    )
    .unwrap();
    assert_eq!(sent.trim(), "sent");
    let pid = python.id();
    let found = follower.wait_for(Duration::from_secs(5), |e| {
        e["pid"].as_u64() == Some(u64::from(pid))
            && syscall(e).is_some_and(|c| WRITES.contains(&c))
            && e["bytes"].as_i64() == Some(19)
    });
    // Still running, so no exit record could have carried the call along.
    let running = python.try_wait().unwrap().is_none();
    let _ = python.kill();
    let _ = python.wait();
    let _ = std::fs::remove_dir_all(dir);
    assert!(running, "python3 ended early");
    assert!(
        found.is_some(),
        "the send after a quiet spell did not arrive within 5 s; got {:#?}",
        follower.stop().unwrap()
    );
    service.stop().unwrap();
}

/// Each process predicate selects a program started after its session,
/// in the kernel at exec: the exact `exe` too (it once never matched
/// there, only for processes already running), and a near miss does not.
#[test]
fn each_process_predicate_selects_at_exec() {
    require_root();
    let service = Service::start(&[]).unwrap();
    let (dir, python) = python_named("qtap-exec-sel");
    let path = python.display().to_string();
    let near_miss = &path[..path.len() - 1];
    let dir_name = dir.display().to_string();
    let cases = [
        (format!("exe:{path}"), true),
        (format!("exe:{near_miss}"), false),
        (format!("exe.startsWith:{dir_name}/"), true),
        ("exe.endsWith:/qtap-exec-sel".to_owned(), true),
        ("exe.contains:tap-exec-s".to_owned(), true),
        ("comm:qtap-exec-sel".to_owned(), true),
        ("exe.endsWith:/qtap-exec-se".to_owned(), false),
    ];
    let sessions: Vec<(String, bool, Follower)> = cases
        .iter()
        .map(|(filter, selects)| {
            let id = service.start_session(&format!("mod:socket,{filter}"));
            let follower = follow_json(&service, None, &id);
            service.wait_followers(&id, 1);
            (filter.clone(), *selects, follower)
        })
        .collect();
    let status = Command::new(&python)
        .args([
            "-c",
            "import socket\na, b = socket.socketpair()\na.send(b'selected')\n",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    for (filter, selects, follower) in sessions {
        let events = follower.stop().unwrap();
        let sent = events.iter().any(|e| {
            e["exe"].as_str() == Some(path.as_str())
                && syscall(e).is_some_and(|c| WRITES.contains(&c))
                && e["bytes"].as_i64() == Some(8)
        });
        assert_eq!(sent, selects, "{filter}: {events:#?}");
    }
    let _ = std::fs::remove_dir_all(dir);
    service.stop().unwrap();
}
