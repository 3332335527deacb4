//! OpenTelemetry export: a session started with `otlp_endpoint` sends its
//! events as OTLP log records over gRPC to that collector, with the
//! `opentelemetry-proto` crate's messages and client.
//!
//! The exporter is one more follower of the session: its queue in the hub
//! is bounded ([`QUEUE_LEN`]) and counts what overflows like any
//! follower's, so a slow collector costs lost events, never memory. Events
//! are sent in batches of up to [`BATCH`] or every [`FLUSH`]; a batch the
//! collector refuses or does not take within [`TIMEOUT`] is dropped and
//! counted. Attributes follow the semantic conventions where they have a
//! name (`process.pid`, `process.executable.path`, `network.peer.address`,
//! `network.transport`, …), and `qtap.*` otherwise.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::{
    collector::logs::v1::{logs_service_client::LogsServiceClient, ExportLogsServiceRequest},
    common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};
use qtap_proto::{
    time::Rfc3339,
    v1::{ConnInfo, Event, LossStage},
};
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::engine::{item::Item, queue::Receiver};

/// Items the hub may queue for the exporter.
pub const QUEUE_LEN: usize = 8192;
/// Most records in one export request.
pub const BATCH: usize = 512;
/// A partial batch waits at most this long.
pub const FLUSH: Duration = Duration::from_secs(1);
/// How long one export request may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `endpoint` is a URL the exporter can dial (`http://` or
/// `https://`, with a host).
///
/// # Errors
/// Why it is not.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: tonic::codegen::http::Uri = endpoint
        .parse()
        .map_err(|e| format!("otlp_endpoint {endpoint:?}: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => Err(format!(
            "otlp_endpoint {endpoint:?}: give http://host:port or https://host:port (OTLP over gRPC, usually port 4317)"
        )),
    }
}

/// What one exporter did, logged when it ends.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub exported: u64,
    /// Records in batches the collector refused or did not take in time.
    pub dropped: u64,
    /// Events the hub could not queue for the exporter.
    pub queue_lost: u64,
    /// Records the kernel dropped (ring full; every session's followers
    /// hear of those).
    pub kernel_lost: u64,
    /// Records withheld from this (restricted) session: their process
    /// exited before its owner's right to see them could be checked.
    pub unverified: u64,
}

/// Exports session `session`'s events from `rx` to `endpoint` until the
/// session ends (the hub drops the queue's sender).
pub async fn export(endpoint: String, session: String, mut rx: Receiver) -> Totals {
    let channel = match Endpoint::from_shared(endpoint.clone()) {
        Ok(endpoint) => endpoint.timeout(TIMEOUT).connect_lazy(),
        Err(error) => {
            warn!(%error, %endpoint, session, "otlp endpoint unusable; the session's events are not exported");
            return Totals::default();
        }
    };
    let mut client = LogsServiceClient::new(channel);
    let resource = resource();
    let mut totals = Totals::default();
    let mut batch = Vec::with_capacity(BATCH);
    let mut time = Rfc3339::new();
    let mut open = true;
    while open {
        let flush_at = tokio::time::sleep(FLUSH);
        tokio::pin!(flush_at);
        while open && batch.len() < BATCH {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(Item::Event(delivered)) => batch.push(record(&delivered.to_wire(&mut time))),
                    Some(Item::Lost(lost)) => match LossStage::try_from(lost.stage) {
                        Ok(stage) if stage.in_kernel() => totals.kernel_lost += lost.count,
                        Ok(LossStage::AccessUnverified) => totals.unverified += lost.count,
                        _ => totals.queue_lost += lost.count,
                    },
                    // Its queue asked for events, not compact batches.
                    Some(Item::Heartbeat(_) | Item::End(_) | Item::Compact(_)) => {}
                    None => open = false,
                },
                () = &mut flush_at => break,
            }
        }
        if !batch.is_empty() {
            send(
                &mut client,
                &resource,
                &mut batch,
                &mut totals,
                &endpoint,
                &session,
            )
            .await;
        }
    }
    info!(
        session, %endpoint, exported = totals.exported, dropped = totals.dropped,
        queue_lost = totals.queue_lost, kernel_lost = totals.kernel_lost,
        unverified = totals.unverified, "otlp export ended"
    );
    totals
}

async fn send(
    client: &mut LogsServiceClient<Channel>,
    resource: &Resource,
    batch: &mut Vec<LogRecord>,
    totals: &mut Totals,
    endpoint: &str,
    session: &str,
) {
    let count = batch.len() as u64;
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "qtap".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..InstrumentationScope::default()
                }),
                log_records: std::mem::take(batch),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    match tokio::time::timeout(TIMEOUT, client.export(request)).await {
        Ok(Ok(_)) => totals.exported += count,
        Ok(Err(status)) => {
            totals.dropped += count;
            warn!(session, %endpoint, error = %status.message(), dropped = count, total_dropped = totals.dropped, "otlp export failed");
        }
        Err(_) => {
            totals.dropped += count;
            warn!(session, %endpoint, dropped = count, total_dropped = totals.dropped, "otlp export timed out");
        }
    }
}

fn resource() -> Resource {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    Resource {
        attributes: vec![
            attr("service.name", text("qtapd")),
            attr("service.version", text(env!("CARGO_PKG_VERSION"))),
            attr("host.name", text(&host)),
        ],
        ..Resource::default()
    }
}

fn attr(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn text(s: &str) -> Value {
    Value::StringValue(s.to_owned())
}

/// The log record of one event.
#[must_use]
pub fn record(e: &Event) -> LogRecord {
    let nanos = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    };
    let mut attributes = vec![
        attr("process.pid", Value::IntValue(i64::from(e.pid))),
        attr("thread.id", Value::IntValue(i64::from(e.tid))),
        attr("process.executable.path", text(&e.exe)),
        attr("process.executable.name", text(&e.comm)),
        attr("qtap.session", text(&e.session)),
        attr(
            "qtap.seq",
            Value::IntValue(i64::try_from(e.seq).unwrap_or(i64::MAX)),
        ),
        attr("qtap.caller", text(&e.caller)),
    ];
    let mut add = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            attributes.push(attr(key, value));
        }
    };
    add("qtap.fd", e.fd.map(|fd| Value::IntValue(i64::from(fd))));
    add("qtap.bytes", e.bytes.map(Value::IntValue));
    add(
        "qtap.direction",
        e.direction.map(|d| Value::IntValue(i64::from(d))),
    );
    add("qtap.tls", e.ssl.map(Value::BoolValue));
    add("qtap.protocol", e.protocol.as_deref().map(text));
    add("qtap.app_protocol", e.app_protocol.as_deref().map(text));
    add("error.type", e.error.as_deref().map(text));
    add("container.id", e.container_id.as_deref().map(text));
    add("k8s.pod.uid", e.pod_uid.as_deref().map(text));
    add("qtap.cgroup", e.cgroup.as_deref().map(text));
    add("qtap.unit", e.unit.as_deref().map(text));
    if let Some(conn) = &e.conn_info {
        network_attributes(conn, &mut add);
    }
    LogRecord {
        time_unix_nano: humantime::parse_rfc3339(&e.ts).map_or(0, nanos),
        observed_time_unix_nano: nanos(SystemTime::now()),
        severity_number: SeverityNumber::Info.into(),
        severity_text: "INFO".into(),
        body: Some(AnyValue {
            value: Some(text(&e.msg)),
        }),
        attributes,
        ..LogRecord::default()
    }
}

/// `network.*` of a connection: transport, type, and both ends.
fn network_attributes(conn: &ConnInfo, add: &mut impl FnMut(&str, Option<Value>)) {
    let transport = match conn.r#type.as_str() {
        "tcp" => Some("tcp"),
        "udp" => Some("udp"),
        _ if conn.family == "unix" => Some("unix"),
        _ => None,
    };
    add("network.transport", transport.map(text));
    let kind = match conn.family.as_str() {
        "inet" => Some("ipv4"),
        "inet6" => Some("ipv6"),
        _ => None,
    };
    add("network.type", kind.map(text));
    for (end, address) in [("peer", &conn.remote), ("local", &conn.local)] {
        let Some(address) = address else { continue };
        match split_host_port(address) {
            Some((host, port)) => {
                add(&format!("network.{end}.address"), Some(text(host)));
                add(
                    &format!("network.{end}.port"),
                    Some(Value::IntValue(i64::from(port))),
                );
            }
            None => add(&format!("network.{end}.address"), Some(text(address))),
        }
    }
}

/// `1.2.3.4:80` → (`1.2.3.4`, 80); `[::1]:80` → (`::1`, 80).
fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(record: &'a LogRecord, key: &str) -> Option<&'a Value> {
        record
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    #[test]
    fn events_become_records_with_semantic_attributes() {
        let event = Event {
            ts: "2026-11-27T12:00:00.5Z".into(),
            msg: "syscall/connect".into(),
            pid: 42,
            tid: 43,
            exe: "/usr/bin/curl".into(),
            comm: "curl".into(),
            fd: Some(5),
            conn_info: Some(ConnInfo {
                family: "inet6".into(),
                r#type: "tcp".into(),
                role: "client".into(),
                local: Some("[::1]:50000".into()),
                remote: Some("[::1]:443".into()),
                ..ConnInfo::default()
            }),
            ..Event::default()
        };
        let r = record(&event);
        assert_eq!(r.time_unix_nano, 1_795_780_800_500_000_000);
        assert_eq!(get(&r, "process.pid"), Some(&Value::IntValue(42)));
        assert_eq!(
            get(&r, "process.executable.path"),
            Some(&text("/usr/bin/curl"))
        );
        assert_eq!(get(&r, "network.transport"), Some(&text("tcp")));
        assert_eq!(get(&r, "network.type"), Some(&text("ipv6")));
        assert_eq!(get(&r, "network.peer.address"), Some(&text("::1")));
        assert_eq!(get(&r, "network.peer.port"), Some(&Value::IntValue(443)));
        assert_eq!(get(&r, "network.local.port"), Some(&Value::IntValue(50000)));
        assert_eq!(get(&r, "qtap.fd"), Some(&Value::IntValue(5)));
        assert_eq!(get(&r, "error.type"), None);
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(check_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(check_endpoint("https://collector.example:4317").is_ok());
        for bad in ["127.0.0.1:4317", "ftp://x:1", "http://", "not a url"] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}
