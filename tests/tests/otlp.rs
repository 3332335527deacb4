//! OpenTelemetry export end to end: a real OTLP gRPC receiver (a tonic
//! server on the `opentelemetry-proto` service definitions, started here)
//! gets a session's events as log records with the semantic-convention
//! attributes; with no collector listening, qtapd counts what it drops.

use std::{
    net::TcpListener,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::{
        logs_service_server::{LogsService, LogsServiceServer},
        ExportLogsServiceRequest, ExportLogsServiceResponse,
    },
    common::v1::any_value::Value,
    logs::v1::LogRecord,
};
use qtap_tests::{require_root, run_curl, serve_once, Daemon, Service};

/// Every record received, with its resource's `service.name`.
#[derive(Clone, Default)]
struct Collector {
    records: Arc<Mutex<Vec<(String, LogRecord)>>>,
}

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut records = self.records.lock().unwrap();
        for resource in request.into_inner().resource_logs {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone());
            let service = match service {
                Some(Value::StringValue(s)) => s,
                _ => String::new(),
            };
            for scope in resource.scope_logs {
                records.extend(scope.log_records.into_iter().map(|r| (service.clone(), r)));
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// Starts the receiver on a free loopback port; returns its address.
fn start_collector(collector: Collector) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(LogsServiceServer::new(collector))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    format!("http://{addr}")
}

fn attribute<'a>(record: &'a LogRecord, key: &str) -> Option<&'a Value> {
    record
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

/// `text` without its terminal colour sequences (`ESC [ … m`).
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

fn text(s: &str) -> Value {
    Value::StringValue(s.to_owned())
}

/// Starts a session tracing curl that exports to `endpoint`; its id.
fn export_curl(service: &Service, endpoint: &str) -> String {
    let started = service.ctl(&[
        "trace",
        "start",
        "--filter",
        "mod:socket,exe.contains:curl",
        "--otlp-endpoint",
        endpoint,
    ]);
    assert!(started.status.success(), "{started:?}");
    String::from_utf8_lossy(&started.stdout).trim().to_owned()
}

/// One curl request to a loopback server; curl's pid and the port.
fn curl_once() -> (u32, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || serve_once(&listener));
    let curl = run_curl(&format!("http://127.0.0.1:{port}/otlp"));
    server.join().unwrap();
    (curl, port)
}

/// The record of curl's connect to `port`, once the collector has it
/// (the exporter sends at least every second), with its `service.name`.
fn wait_for_connect(collector: &Collector, curl: u32, port: u16) -> (String, LogRecord) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = collector
            .records
            .lock()
            .unwrap()
            .iter()
            .find_map(|(service, r)| {
                let is_connect = r.body.as_ref().and_then(|b| b.value.clone())
                    == Some(text("syscall/connect"))
                    && attribute(r, "process.pid") == Some(&Value::IntValue(i64::from(curl)))
                    && attribute(r, "network.peer.port") == Some(&Value::IntValue(i64::from(port)));
                is_connect.then(|| (service.clone(), r.clone()))
            });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no connect record of curl {curl} among {} records",
            collector.records.lock().unwrap().len()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn session_events_arrive_as_otlp_log_records() {
    require_root();
    let collector = Collector::default();
    let endpoint = start_collector(collector.clone());
    let service = Service::start(&[]).unwrap();

    // A malformed endpoint is refused up front.
    let bad = service.ctl(&[
        "trace",
        "start",
        "--filter",
        "exe.contains:curl",
        "--otlp-endpoint",
        "127.0.0.1:4317",
    ]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    let id = export_curl(&service, &endpoint);
    let (curl, port) = curl_once();

    let connect = wait_for_connect(&collector, curl, port);
    let (service_name, record) = connect;
    println!("received: {record:#?}");
    assert_eq!(service_name, "qtapd");
    assert!(record.time_unix_nano > 0);
    assert_eq!(
        attribute(&record, "network.peer.address"),
        Some(&text("127.0.0.1"))
    );
    assert_eq!(attribute(&record, "network.transport"), Some(&text("tcp")));
    assert_eq!(attribute(&record, "network.type"), Some(&text("ipv4")));
    assert_eq!(
        attribute(&record, "process.executable.path"),
        Some(&text("/usr/bin/curl"))
    );
    assert_eq!(attribute(&record, "qtap.session"), Some(&text(&id)));

    // Stopping the session flushes the rest and ends the exporter.
    assert!(service.ctl(&["trace", "stop", &id]).status.success());

    // No collector: the records are dropped and counted.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let id = export_curl(&service, &nowhere);
    curl_once();
    thread::sleep(Duration::from_millis(1500));
    assert!(service.ctl(&["trace", "stop", &id]).status.success());
    thread::sleep(Duration::from_millis(500));
    let log = without_colours(&service.stop().unwrap());
    assert!(log.contains("otlp export failed"), "{log}");
    let ended = log
        .lines()
        .find(|l| l.contains("otlp export ended") && l.contains(&format!("session=\"{id}\"")))
        .unwrap_or_else(|| panic!("no end of the second exporter: {log}"));
    assert!(ended.contains("exported=0"), "{ended}");
    assert!(!ended.contains("dropped=0"), "drops are counted: {ended}");
}

/// qtapd's own `--otlp-endpoint` (also a key of its config file) exports
/// every session that names no collector: here the `--bpf-trace` one.
#[test]
fn a_daemon_wide_collector_gets_the_bpf_trace_session() {
    require_root();
    let collector = Collector::default();
    let endpoint = start_collector(collector.clone());
    let daemon = Daemon::start_with(
        "mod:socket,exe.contains:curl",
        &["--otlp-endpoint", &endpoint],
    )
    .unwrap();
    let (curl, port) = curl_once();
    let (service_name, record) = wait_for_connect(&collector, curl, port);
    assert_eq!(service_name, "qtapd");
    assert_eq!(
        attribute(&record, "network.peer.address"),
        Some(&text("127.0.0.1"))
    );
    daemon.stop().unwrap();
}
