//! `qtapctl trace list`: the sessions the caller may see.

use qtap_proto::v1::{ListTracesRequest, Session};
use qtapctl::render::{self, Output};

use crate::client;

pub async fn list(conn: &client::Connection, output: Output) -> anyhow::Result<()> {
    let mut client = client::connect(conn).await?;
    let sessions = client
        .list_traces(ListTracesRequest {})
        .await?
        .into_inner()
        .sessions;
    if output == Output::Json {
        for s in &sessions {
            println!("{}", session_json(s));
        }
        return Ok(());
    }
    println!(
        "{:<6} {:<12} {:>6} {:>10} {:>8} {:>9} {:>8}  FILTER",
        "ID", "NAME", "UID", "DELIVERED", "LOST", "FOLLOWERS", "AGE"
    );
    for s in &sessions {
        // Names and filters come from other users: escaped for the terminal.
        println!(
            "{:<6} {:<12} {:>6} {:>10} {:>8} {:>9} {:>7}s  {}",
            render::terminal_safe(&s.id),
            render::terminal_safe(&s.name),
            s.owner_uid,
            s.events_delivered,
            s.events_lost,
            s.followers,
            age_secs(s),
            render::terminal_safe(&s.filter)
        );
    }
    Ok(())
}

/// One session as a JSON object (`trace list --output json`).
fn session_json(s: &Session) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "name": s.name,
        "filter": s.filter,
        "owner_uid": s.owner_uid,
        "events_delivered": s.events_delivered,
        "events_lost": s.events_lost,
        "followers": s.followers,
        "age_secs": age_secs(s),
        "idle_timeout_secs": s.idle_timeout_secs,
        "capture_bytes": s.capture_bytes,
    })
}

fn age_secs(s: &Session) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    ((now - s.created_unix_nanos).max(0) / 1_000_000_000) as u64
}
