//! `qtapctl trace follow`: one stream per daemon, reconnected after
//! transport failures, merged and rendered (or written, `--write`: see
//! `record`).

use std::{
    fs::File,
    io::BufWriter,
    time::{Duration, Instant},
};

use anyhow::Context;

use qtap_proto::{
    compact::Decoder,
    v1::{
        follow_item::Item, follow_trace_request::Target, CompactBatch, Event, FollowItem,
        FollowTraceRequest, LossStage, Lost, TraceOptions,
    },
};
use tokio::sync::mpsc;

use qtapctl::render::{self, pcapng::Pcapng};

use super::record;
use crate::{cli::View, client};

/// Why one daemon's stream ended.
enum End {
    /// The main loop stopped listening (Ctrl-C, or stdout closed).
    Interrupted,
    /// With qtapd's reason, when it gave one (`SessionEnd`).
    SessionEnded(Option<String>),
}

/// A failure worth reconnecting for (the daemon or the transport went
/// away), or not.
enum FollowError {
    Transport(anyhow::Error),
    Fatal(anyhow::Error),
}

/// What a daemon's follow task tells the main loop.
enum Note {
    Item(Box<FollowItem>),
    Reconnecting(String),
    Ended(Option<String>),
    Failed(anyhow::Error),
}

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// Counts shown when `follow` ends (per daemon: `seq` is per session).
#[derive(Default)]
pub(super) struct Summary {
    events: u64,
    lost: u64,
    /// Of `lost`, what qtapd reported for this follower's queue: each such
    /// event is a gap in the session's `seq`.
    queue_lost: u64,
    /// Gaps seen in `seq` (a check on `queue_lost`).
    seq_gaps: u64,
    last_seq: u64,
}

impl Summary {
    pub(super) fn event(&mut self, seq: u64) {
        self.events += 1;
        if self.last_seq != 0 && seq > self.last_seq + 1 {
            self.seq_gaps += seq - self.last_seq - 1;
        }
        self.last_seq = seq;
    }

    /// The counts of several streams together.
    fn total(summaries: &[Summary]) -> Summary {
        let mut total = Summary::default();
        for summary in summaries {
            total.add(summary);
        }
        total
    }

    fn add(&mut self, other: &Summary) {
        self.events += other.events;
        self.lost += other.lost;
        self.queue_lost += other.queue_lost;
        self.seq_gaps += other.seq_gaps;
    }

    /// The counts as the object `--summary` writes.
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "events": self.events,
            "lost": self.lost,
            "lost_in_queue": self.queue_lost,
            "seq_gaps": self.seq_gaps,
        })
    }

    fn line(&self) -> String {
        format!(
            "{} events, {} lost ({} in qtapd's queue for this follower, seq gaps {})",
            self.events, self.lost, self.queue_lost, self.seq_gaps
        )
    }
}

/// Follows `target` on each daemon (a session id, or an inline filter
/// session with `options`) and renders the merged streams. With several
/// daemons each event carries its daemon's name in `host`, and one daemon
/// failing or going away is reported while the others go on; a daemon
/// that goes away is reconnected to with capped backoff.
pub async fn follow(
    targets: Vec<(client::Connection, Target)>,
    options: Option<TraceOptions>,
    view: &View,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let several = targets.len() > 1;
    // Each daemon's name, or "" when there is only one.
    let hosts: Vec<String> = targets
        .iter()
        .map(|(c, _)| if several { c.name() } else { String::new() })
        .collect();
    let (tx, mut rx) = mpsc::channel::<(usize, Note)>(256);
    for (index, (conn, target)) in targets.into_iter().enumerate() {
        let request = FollowTraceRequest {
            target: Some(target),
            queue_len: view.queue_len,
            options: options.clone(),
            batch: true,
            compact: true,
        };
        tokio::spawn(follow_daemon(conn, request, tx.clone(), index));
    }
    drop(tx);
    let mut sink = match &view.write {
        Some(path) => Sink::Write(record::Writer::create(path)?),
        None => Sink::Render(renderer(view)?),
    };
    // Daemons whose stream started over since their last item.
    let mut restarted = vec![false; hosts.len()];
    let mut summaries: Vec<Summary> = hosts.iter().map(|_| Summary::default()).collect();
    // The ids of a compact stream are that stream's: a reconnection starts
    // with none.
    let mut decoders: Vec<Decoder> = hosts.iter().map(|_| Decoder::new()).collect();
    let mut failures = Vec::new();
    let interrupted = interrupted()?;
    tokio::pin!(interrupted);
    let result = loop {
        let (i, note) = tokio::select! {
            () = &mut interrupted => break Ok(()),
            note = rx.recv() => match note {
                Some(note) => note,
                None => break Ok(()),
            },
        };
        match note {
            Note::Item(item) => {
                let shown = match &mut sink {
                    Sink::Render(renderer) => {
                        let stream = Stream {
                            summary: &mut summaries[i],
                            decoder: &mut decoders[i],
                            host: &hosts[i],
                        };
                        show_item(renderer.as_mut(), stream, *item)
                    }
                    Sink::Write(writer) => {
                        let restart = std::mem::take(&mut restarted[i]);
                        writer
                            .item(i, &hosts[i], restart, &mut summaries[i], *item)
                            .map_err(|e| writer.failed(e))
                    }
                };
                if let Err(e) = shown {
                    break Err(e);
                }
            }
            Note::Reconnecting(why) => {
                decoders[i] = Decoder::new();
                restarted[i] = true;
                eprintln!("{}{why}", says(&hosts[i]));
            }
            Note::Ended(why) => {
                let why = why.unwrap_or_else(|| "stopped, or qtapd shut down".into());
                eprintln!("{}the session ended: {why}", says(&hosts[i]));
                if let Sink::Write(writer) = &mut sink {
                    if let Err(e) = writer.end(i, &hosts[i], why) {
                        break Err(writer.failed(e));
                    }
                }
            }
            Note::Failed(e) if several => {
                eprintln!("{}{e:#}", says(&hosts[i]));
                failures.push(hosts[i].clone());
            }
            Note::Failed(e) => break Err(e),
        }
    };
    let finished = match &mut sink {
        Sink::Render(renderer) => renderer.finish().map_err(crate::cmd::stdout_error),
        Sink::Write(writer) => writer.finish().map_err(|e| writer.failed(e)),
    };
    report(&hosts, &summaries, Some(started));
    let written = match &view.summary {
        Some(path) => write_summary(path, &hosts, &summaries, started),
        None => Ok(()),
    };
    result.and(finished).and(written)?;
    anyhow::ensure!(
        failures.is_empty(),
        "following failed on {}",
        failures.join(", ")
    );
    Ok(())
}

/// Where followed items go.
enum Sink {
    Render(Box<dyn render::Render>),
    /// `--write`.
    Write(record::Writer),
}

/// Says on stderr what each daemon's stream held (when there are several:
/// `hosts` are their names) and in all, and how long it took.
pub(super) fn report(hosts: &[String], summaries: &[Summary], started: Option<Instant>) {
    if hosts.len() > 1 {
        for (host, summary) in hosts.iter().zip(summaries) {
            eprintln!("{}{}", says(host), summary.line());
        }
    }
    let total = Summary::total(summaries);
    match started {
        Some(started) => eprintln!(
            "qtapctl: {}, {:.1}s",
            total.line(),
            started.elapsed().as_secs_f64()
        ),
        None => eprintln!("qtapctl: {}", total.line()),
    }
}

/// `--summary FILE`: the counts of [`report`]'s lines as one JSON object.
fn write_summary(
    path: &std::path::Path,
    hosts: &[String],
    summaries: &[Summary],
    started: Instant,
) -> anyhow::Result<()> {
    let mut object = Summary::total(summaries).json();
    object["seconds"] = started.elapsed().as_secs_f64().into();
    if hosts.len() > 1 {
        let daemons = hosts.iter().zip(summaries).map(|(host, summary)| {
            let mut daemon = summary.json();
            daemon["host"] = host.as_str().into();
            daemon
        });
        object["daemons"] = daemons.collect();
    }
    std::fs::write(path, format!("{object}\n")).with_context(|| format!("write {}", path.display()))
}

/// Resolves at Ctrl-C (SIGINT) or SIGTERM (`timeout`, `kill`, systemd):
/// either ends the follow the same way, the output finished and flushed
/// (a `--pcapng` file is written out, not left empty in a buffer).
fn interrupted() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// The renderer of `--output`/`--group-by`, and beside it (or instead of
/// it, for `--pcapng -`) the capture.
pub(super) fn renderer(view: &View) -> anyhow::Result<Box<dyn render::Render>> {
    let lines = render::new(view.output, view.group_by);
    let Some(path) = &view.pcapng else {
        return Ok(lines);
    };
    if path.as_os_str() == "-" {
        let out = BufWriter::new(std::io::stdout());
        return Ok(Box::new(
            Pcapng::new(out).context("write the pcapng header")?,
        ));
    }
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let capture =
        Pcapng::new(BufWriter::new(file)).with_context(|| format!("write {}", path.display()))?;
    Ok(Box::new(render::Tee(vec![lines, Box::new(capture)])))
}

/// One daemon's stream, reconnected after transport failures, until its
/// session ends, a request fails for good, or the main loop stops.
async fn follow_daemon(
    conn: client::Connection,
    request: FollowTraceRequest,
    tx: mpsc::Sender<(usize, Note)>,
    index: usize,
) {
    let mut backoff = BACKOFF_START;
    loop {
        let note = match follow_once(&conn, request.clone(), &tx, index).await {
            Ok(End::Interrupted) => return,
            Ok(End::SessionEnded(why)) => Note::Ended(why),
            Err(FollowError::Fatal(e)) => Note::Failed(e),
            Err(FollowError::Transport(e)) => {
                let again = format!("{e:#}; reconnecting in {:.1}s", backoff.as_secs_f64());
                if tx.send((index, Note::Reconnecting(again))).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let _ = tx.send((index, note)).await;
        return;
    }
}

async fn follow_once(
    conn: &client::Connection,
    request: FollowTraceRequest,
    tx: &mpsc::Sender<(usize, Note)>,
    index: usize,
) -> Result<End, FollowError> {
    let mut client = client::connect(conn)
        .await
        .map_err(FollowError::Transport)?;
    let response = client.follow_trace(request).await.map_err(classify)?;
    let mut stream = response.into_inner();
    let mut why = None;
    while let Some(item) = stream.message().await.map_err(classify)? {
        if let Some(Item::End(end)) = item.item {
            why = Some(end.detail);
        } else if tx.send((index, Note::Item(Box::new(item)))).await.is_err() {
            return Ok(End::Interrupted);
        }
    }
    Ok(End::SessionEnded(why))
}

/// What the main loop keeps of one daemon's stream.
pub(super) struct Stream<'a> {
    pub(super) summary: &'a mut Summary,
    pub(super) decoder: &'a mut Decoder,
    /// Labels its events (empty with one daemon).
    pub(super) host: &'a str,
}

/// Renders one item of a daemon's stream.
pub(super) fn show_item(
    renderer: &mut dyn render::Render,
    stream: Stream<'_>,
    item: FollowItem,
) -> anyhow::Result<()> {
    let Stream {
        summary,
        decoder,
        host,
    } = stream;
    let mut events = match item.item {
        Some(Item::Event(event)) => vec![event],
        Some(Item::Batch(batch)) => batch.events,
        Some(Item::Compact(batch)) => {
            return show_compact(renderer, summary, decoder, &batch, host)
        }
        Some(Item::Lost(lost)) => {
            renderer.lost(lost.count, lost_item(summary, &lost, host));
            return Ok(());
        }
        Some(Item::Heartbeat(_) | Item::End(_)) | None => return Ok(()),
    };
    for event in &mut events {
        host.clone_into(&mut event.host);
    }
    show(renderer, summary, &events)
}

/// Counts a report of lost events into `summary` and says it on stderr;
/// returns what the loss means.
pub(super) fn lost_item(summary: &mut Summary, lost: &Lost, host: &str) -> &'static str {
    summary.lost += lost.count;
    let stage = LossStage::try_from(lost.stage).unwrap_or_default();
    if stage == LossStage::DaemonQueue {
        summary.queue_lost += lost.count;
    }
    eprintln!(
        "{}lost {} events: {}",
        says(host),
        lost.count,
        stage.meaning()
    );
    stage.meaning()
}

/// Renders the events of a compact batch, read in place.
fn show_compact(
    renderer: &mut dyn render::Render,
    summary: &mut Summary,
    decoder: &mut Decoder,
    batch: &CompactBatch,
    host: &str,
) -> anyhow::Result<()> {
    let malformed = |e| anyhow::anyhow!("{}qtapd sent a malformed batch: {e}", says(host));
    let mut ts = String::new();
    for record in decoder.define(batch).map_err(malformed)? {
        let (record, payload) = record.map_err(malformed)?;
        decoder.ts(&record, &mut ts);
        let mut event = decoder
            .view(&record, payload, &batch.session, &ts)
            .map_err(malformed)?;
        event.host = host;
        summary.event(event.seq);
        renderer.view(&event).map_err(crate::cmd::stdout_error)?;
    }
    renderer.flush().map_err(crate::cmd::stdout_error)
}

/// How a line about one daemon starts: `qtapctl: ` and, when there are
/// several, the daemon's name (`host` is empty when there is one).
pub(super) fn says(host: &str) -> String {
    if host.is_empty() {
        "qtapctl: ".to_owned()
    } else {
        format!("qtapctl: {host}: ")
    }
}

/// Renders events, then writes them out.
fn show<'a>(
    renderer: &mut dyn render::Render,
    summary: &mut Summary,
    events: impl IntoIterator<Item = &'a Event>,
) -> anyhow::Result<()> {
    for event in events {
        summary.event(event.seq);
        renderer.event(event).map_err(crate::cmd::stdout_error)?;
    }
    renderer.flush().map_err(crate::cmd::stdout_error)
}

/// A stream that failed in transport (qtapd restarted, the connection
/// dropped) is reconnected; a status qtapd itself sent is final, whatever
/// its code — an `Internal` kernel error would fail again on every retry.
/// tonic reports a broken connection as `Unavailable`, or as `Unknown` /
/// `Internal` carrying the transport error as its source; a status read
/// from qtapd's response has no source.
fn classify(status: tonic::Status) -> FollowError {
    let transport = match status.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown | tonic::Code::Internal => {
            std::error::Error::source(&status).is_some()
        }
        _ => false,
    };
    if transport {
        FollowError::Transport(anyhow::Error::new(status))
    } else {
        FollowError::Fatal(anyhow::Error::new(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_transport(status: tonic::Status) -> bool {
        matches!(classify(status), FollowError::Transport(_))
    }

    #[test]
    fn only_transport_failures_are_retried() {
        // Sent by qtapd: final, whatever the code.
        assert!(!is_transport(tonic::Status::internal(
            "update the kernel's selection: map full"
        )));
        assert!(!is_transport(tonic::Status::unknown("no such thing")));
        assert!(!is_transport(tonic::Status::not_found("no session x")));
        assert!(!is_transport(tonic::Status::permission_denied("uid 1000")));
        // The connection went away.
        assert!(is_transport(tonic::Status::unavailable(
            "connection refused"
        )));
        let broken = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let status = tonic::Status::from_error(Box::new(broken));
        assert!(matches!(
            status.code(),
            tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Unavailable
        ));
        assert!(is_transport(status));
    }
}
