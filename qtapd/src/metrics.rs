//! `--metrics-listen ADDR`: qtapd's counters in the Prometheus text format
//! on `GET /metrics`, over HTTP/1.1 with hyper (which tonic already
//! brings). Off unless asked for; it answers anyone who can reach the
//! address, so bind it to loopback or a monitoring network. Each scrape
//! asks the engine for its status and sessions, as `qtapctl status` does.
//!
//! The metric names are listed in [`render`] and in the README.

use std::{convert::Infallible, fmt::Write as _, net::SocketAddr};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use qtap_proto::v1::{Session, Status};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::engine::{Caller, Command};

/// Serves until `shutdown`; binding errors are returned at once.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    engine: mpsc::Sender<Command>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    info!(%addr, "serving Prometheus metrics on /metrics");
    Ok(tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        debug!(%error, "metrics accept failed");
                        continue;
                    }
                },
            };
            let engine = engine.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| answer(request, engine.clone()));
                if let Err(error) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%error, %peer, "metrics connection ended");
                }
            });
        }
    }))
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    engine: mpsc::Sender<Command>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status, text: String| {
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    };
    if request.method() != hyper::Method::GET || request.uri().path() != "/metrics" {
        return Ok(reply(StatusCode::NOT_FOUND, "only GET /metrics\n".into()));
    }
    let (status_tx, status_rx) = oneshot::channel();
    let (list_tx, list_rx) = oneshot::channel();
    let root = Caller { uid: 0 };
    let asked = engine
        .send(Command::Status { reply: status_tx })
        .await
        .is_ok()
        && engine
            .send(Command::List {
                caller: root,
                reply: list_tx,
            })
            .await
            .is_ok();
    match (asked, status_rx.await, list_rx.await) {
        (true, Ok(status), Ok(sessions)) => Ok(reply(StatusCode::OK, render(&status, &sessions))),
        _ => Ok(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "qtapd is shutting down\n".into(),
        )),
    }
}

/// The exposition text. Names (all prefixed `qtap_`):
/// `records_total`, `lost_total{stage}` (`kernel_ring`, `follower_queue`),
/// `kernel_table_full_total{table}` (`pending`, `conns`, `procs`),
/// `malformed_records_total`, `sessions`, `followers`,
/// `programs_attached`, `selected_processes`, `uptime_seconds`, and per
/// session `session_events_delivered_total{session,name}`,
/// `session_events_lost_total{session,name}`, `session_followers{session,name}`.
#[must_use]
pub fn render(status: &Status, sessions: &[Session]) -> String {
    let mut out = String::new();
    daemon_families(&mut out, status, sessions);
    session_families(&mut out, sessions);
    out
}

/// One metric family: its help, its type and its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP qtap_{name} {help}");
    let _ = writeln!(out, "# TYPE qtap_{name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "qtap_{name}{labels} {value}");
    }
}

fn daemon_families(out: &mut String, status: &Status, sessions: &[Session]) {
    let c = status.counters.unwrap_or_default();
    let one = |value: u64| [(String::new(), value)];
    family(
        out,
        "records_total",
        "counter",
        "Kernel records decoded.",
        &one(c.records),
    );
    family(
        out,
        "lost_total",
        "counter",
        "Events lost, by where: the kernel ring buffer (all sessions), or a follower's queue in qtapd.",
        &[
            (r#"{stage="kernel_ring"}"#.into(), c.kernel_ring_full),
            (r#"{stage="follower_queue"}"#.into(), c.follower_queue_full),
        ],
    );
    family(
        out,
        "kernel_table_full_total",
        "counter",
        "Kernel table overflows: syscalls and TLS calls whose arguments could not be kept, connections and forked processes not tracked.",
        &[
            (r#"{table="pending"}"#.into(), c.pending_full),
            (r#"{table="conns"}"#.into(), c.conns_full),
            (r#"{table="procs"}"#.into(), c.procs_full),
            (r#"{table="tls"}"#.into(), c.tls_full),
        ],
    );
    family(
        out,
        "malformed_records_total",
        "counter",
        "Kernel records that failed to decode.",
        &one(c.malformed),
    );
    family(
        out,
        "sessions",
        "gauge",
        "Trace sessions in force.",
        &one(u64::from(status.sessions)),
    );
    let followers: u64 = sessions.iter().map(|s| u64::from(s.followers)).sum();
    family(
        out,
        "followers",
        "gauge",
        "Streams following a session.",
        &one(followers),
    );
    family(
        out,
        "programs_attached",
        "gauge",
        "eBPF programs attached (a uprobe once per library).",
        &one(u64::from(status.programs_attached)),
    );
    family(
        out,
        "selected_processes",
        "gauge",
        "Processes the kernel selects.",
        &one(u64::from(status.selected_processes)),
    );
    family(
        out,
        "uptime_seconds",
        "gauge",
        "Seconds since qtapd started.",
        &one(status.uptime_secs),
    );
}

fn session_families(out: &mut String, sessions: &[Session]) {
    let per_session = |value: fn(&Session) -> u64| -> Vec<(String, u64)> {
        sessions
            .iter()
            .map(|s| {
                let labels = format!(
                    "{{session=\"{}\",name=\"{}\"}}",
                    escape(&s.id),
                    escape(&s.name)
                );
                (labels, value(s))
            })
            .collect()
    };
    family(
        out,
        "session_events_delivered_total",
        "counter",
        "Events handed to a session's followers.",
        &per_session(|s| s.events_delivered),
    );
    family(
        out,
        "session_events_lost_total",
        "counter",
        "Events a session's followers lost (queue full).",
        &per_session(|s| s.events_lost),
    );
    family(
        out,
        "session_followers",
        "gauge",
        "Streams following the session.",
        &per_session(|s| u64::from(s.followers)),
    );
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use qtap_proto::v1::Counters;

    use super::*;

    #[test]
    fn every_family_has_help_type_and_samples() {
        let status = Status {
            sessions: 1,
            programs_attached: 43,
            counters: Some(Counters {
                records: 10,
                kernel_ring_full: 2,
                follower_queue_full: 3,
                ..Counters::default()
            }),
            ..Status::default()
        };
        let session = Session {
            id: "s1".into(),
            name: "a \"quoted\" name".into(),
            events_delivered: 7,
            followers: 2,
            ..Session::default()
        };
        let text = render(&status, &[session]);
        assert!(text.contains("qtap_records_total 10\n"), "{text}");
        assert!(text.contains("qtap_lost_total{stage=\"kernel_ring\"} 2\n"));
        assert!(text.contains("qtap_lost_total{stage=\"follower_queue\"} 3\n"));
        assert!(text.contains("qtap_followers 2\n"));
        assert!(text.contains(
            "qtap_session_events_delivered_total{session=\"s1\",name=\"a \\\"quoted\\\" name\"} 7\n"
        ));
        // Each sample's family was announced with HELP and TYPE first.
        let mut announced = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced.push(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(announced.last().map(String::as_str), Some(name), "{line}");
            }
        }
        assert_eq!(announced.len(), 12);
    }
}
