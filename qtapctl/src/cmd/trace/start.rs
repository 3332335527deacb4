//! `qtapctl trace start`: a new session on each daemon.

use qtap_proto::v1::{follow_trace_request::Target, Session, StartTraceRequest, TraceOptions};

use crate::{cli::View, client};

use super::follow::{follow, says};

/// Starts the session on each daemon and prints its id (`host id` lines
/// with several daemons), or follows the new sessions.
pub async fn start(
    conns: &[client::Connection],
    filter: String,
    name: String,
    options: TraceOptions,
    follow_with: Option<View>,
) -> anyhow::Result<()> {
    let several = conns.len() > 1;
    let mut started = Vec::new();
    let mut failures = Vec::new();
    for conn in conns {
        let host = if several { conn.name() } else { String::new() };
        let request = StartTraceRequest {
            filter: filter.clone(),
            name: name.clone(),
            options: Some(options.clone()),
        };
        let session = match start_one(conn, request).await {
            Ok(session) => session,
            Err(e) if several => {
                eprintln!("{}{e:#}", says(&host));
                failures.push(host);
                continue;
            }
            Err(e) => return Err(e),
        };
        match (&follow_with, several) {
            (None, false) => println!("{}", session.id),
            (None, true) => println!("{host} {}", session.id),
            (Some(_), _) => eprintln!("{}session {} ({})", says(&host), session.id, session.filter),
        }
        started.push((conn.clone(), Target::Id(session.id)));
    }
    if let Some(view) = follow_with {
        if !started.is_empty() {
            follow(started, None, &view).await?;
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "starting failed on {}",
        failures.join(", ")
    );
    Ok(())
}

async fn start_one(
    conn: &client::Connection,
    request: StartTraceRequest,
) -> anyhow::Result<Session> {
    let mut client = client::connect(conn).await?;
    Ok(client.start_trace(request).await?.into_inner())
}
