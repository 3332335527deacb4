//! `qtapctl trace start|follow|stop|list`.

use std::time::{Duration, Instant};

use qtap_proto::v1::{
    follow_item::Item, follow_trace_request::Target, Event, FollowTraceRequest, ListTracesRequest,
    LossStage, Session, StartTraceRequest, StopTraceRequest, TraceOptions,
};

use qtapctl::render;

use crate::{client, View};

pub async fn start(
    conn: &client::Connection,
    filter: String,
    name: String,
    options: TraceOptions,
    follow_with: Option<View>,
) -> anyhow::Result<()> {
    let mut client = client::connect(conn).await?;
    let request = StartTraceRequest {
        filter,
        name,
        options: Some(options),
    };
    let session = client.start_trace(request).await?.into_inner();
    match follow_with {
        None => {
            println!("{}", session.id);
            Ok(())
        }
        Some(view) => {
            eprintln!("qtapctl: session {} ({})", session.id, session.filter);
            follow(conn, Some(session.id), None, &view).await
        }
    }
}

pub async fn stop(conn: &client::Connection, id: String) -> anyhow::Result<()> {
    let mut client = client::connect(conn).await?;
    let s = client
        .stop_trace(StopTraceRequest { id })
        .await?
        .into_inner();
    println!(
        "stopped {}: {} events delivered, {} lost",
        s.id, s.events_delivered, s.events_lost
    );
    Ok(())
}

pub async fn list(conn: &client::Connection) -> anyhow::Result<()> {
    let mut client = client::connect(conn).await?;
    let sessions = client
        .list_traces(ListTracesRequest {})
        .await?
        .into_inner()
        .sessions;
    println!(
        "{:<6} {:<12} {:>6} {:>10} {:>8} {:>9} {:>8}  FILTER",
        "ID", "NAME", "UID", "DELIVERED", "LOST", "FOLLOWERS", "AGE"
    );
    for s in &sessions {
        println!(
            "{:<6} {:<12} {:>6} {:>10} {:>8} {:>9} {:>7}s  {}",
            s.id,
            s.name,
            s.owner_uid,
            s.events_delivered,
            s.events_lost,
            s.followers,
            age_secs(s),
            s.filter
        );
    }
    Ok(())
}

fn age_secs(s: &Session) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    ((now - s.created_unix_nanos).max(0) / 1_000_000_000) as u64
}

/// Why one connection's stream ended.
enum End {
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

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// Counts shown when `follow` ends.
#[derive(Default)]
struct Summary {
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
    fn event(&mut self, seq: u64) {
        self.events += 1;
        if self.last_seq != 0 && seq > self.last_seq + 1 {
            self.seq_gaps += seq - self.last_seq - 1;
        }
        self.last_seq = seq;
    }
}

/// Follows session `id`, or an inline `(filter, options)` session.
pub async fn follow(
    conn: &client::Connection,
    id: Option<String>,
    inline: Option<(String, TraceOptions)>,
    view: &View,
) -> anyhow::Result<()> {
    let (target, options) = match (id, inline) {
        (Some(id), _) => (Target::Id(id), None),
        (None, Some((filter, options))) => (Target::Filter(filter), Some(options)),
        (None, None) => anyhow::bail!("give a session id or --filter"),
    };
    let started = Instant::now();
    let mut renderer = render::new(view.output, view.group_by);
    let mut summary = Summary::default();
    let mut backoff = BACKOFF_START;
    let result = loop {
        let request = FollowTraceRequest {
            target: Some(target.clone()),
            queue_len: view.queue_len,
            options,
            batch: true,
        };
        match follow_once(conn, request, renderer.as_mut(), &mut summary).await {
            Ok(End::Interrupted) => break Ok(()),
            Ok(End::SessionEnded(why)) => {
                let why = why.unwrap_or_else(|| "stopped, or qtapd shut down".into());
                eprintln!("qtapctl: the session ended: {why}");
                break Ok(());
            }
            Err(FollowError::Transport(e)) => {
                eprintln!(
                    "qtapctl: {e:#}; reconnecting in {:.1}s",
                    backoff.as_secs_f64()
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = tokio::signal::ctrl_c() => break Ok(()),
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(FollowError::Fatal(e)) => break Err(e),
        }
    };
    let finished = renderer.finish().map_err(super::stdout_error);
    eprintln!(
        "qtapctl: {} events, {} lost ({} in qtapd's queue for this follower, seq gaps {}), {:.1}s",
        summary.events,
        summary.lost,
        summary.queue_lost,
        summary.seq_gaps,
        started.elapsed().as_secs_f64()
    );
    result.and(finished)
}

async fn follow_once(
    conn: &client::Connection,
    request: FollowTraceRequest,
    renderer: &mut dyn render::Render,
    summary: &mut Summary,
) -> Result<End, FollowError> {
    let mut client = client::connect(conn)
        .await
        .map_err(FollowError::Transport)?;
    let response = client.follow_trace(request).await.map_err(classify)?;
    let mut stream = response.into_inner();
    // One signal listener for the whole stream, not one per message.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut why = None;
    loop {
        let item = tokio::select! {
            _ = &mut interrupted => return Ok(End::Interrupted),
            item = stream.message() => item.map_err(classify)?,
        };
        let Some(item) = item else {
            return Ok(End::SessionEnded(why));
        };
        match item.item {
            Some(Item::Event(event)) => show(renderer, summary, [&event])?,
            Some(Item::Batch(batch)) => show(renderer, summary, &batch.events)?,
            Some(Item::Lost(lost)) => {
                summary.lost += lost.count;
                let stage = if lost.stage == LossStage::KernelRing as i32 {
                    "the kernel ring buffer was full (all sessions)"
                } else {
                    summary.queue_lost += lost.count;
                    "this follower's queue in qtapd was full"
                };
                eprintln!("qtapctl: lost {} events: {stage}", lost.count);
            }
            Some(Item::End(end)) => why = Some(end.detail),
            Some(Item::Heartbeat(_)) | None => {}
        }
    }
}

/// Renders events, then writes them out.
fn show<'a>(
    renderer: &mut dyn render::Render,
    summary: &mut Summary,
    events: impl IntoIterator<Item = &'a Event>,
) -> Result<(), FollowError> {
    let gone = |e| FollowError::Fatal(super::stdout_error(e));
    for event in events {
        summary.event(event.seq);
        renderer.event(event).map_err(gone)?;
    }
    renderer.flush().map_err(gone)
}

fn classify(status: tonic::Status) -> FollowError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal => {
            FollowError::Transport(anyhow::Error::new(status))
        }
        _ => FollowError::Fatal(anyhow::Error::new(status)),
    }
}
