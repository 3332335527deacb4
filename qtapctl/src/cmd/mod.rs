//! One file per subcommand; this module runs the one asked for and maps
//! its errors to exit codes.

pub mod explain;
pub mod health;
pub mod status;
pub mod trace;

use std::{future::Future, io, path::PathBuf, process::ExitCode};

use clap::CommandFactory;
use qtap_proto::v1::{follow_trace_request::Target, TraceOptions};

use crate::{
    cli::{Cli, Command, Generate, TraceCommand},
    client::{self, Connection},
};

/// Runs the command line's subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let conns = connections(cli.socket, cli.remote, cli.ca, cli.cert, cli.key);
    match cli.command {
        Command::Generate(Generate::Completions { shell }) => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "qtapctl",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Generate(Generate::Man) => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Trace(TraceCommand::Start {
            filter,
            name,
            idle_timeout,
            capture_bytes,
            otlp_endpoint,
            follow,
            view,
        }) => {
            let options = TraceOptions {
                idle_timeout_secs: idle_timeout,
                capture_bytes: view.capture_bytes(capture_bytes, follow),
                otlp_endpoint: otlp_endpoint.unwrap_or_default(),
            };
            trace::start(&conns, filter, name, options, follow.then_some(view)).await
        }
        Command::Trace(TraceCommand::Follow {
            id,
            filter,
            capture_bytes,
            view,
        }) => {
            let (target, options) = match (id, filter) {
                (Some(id), _) => (Target::Id(id), None),
                (None, Some(filter)) => (
                    Target::Filter(filter),
                    Some(TraceOptions {
                        capture_bytes: view.capture_bytes(capture_bytes, true),
                        ..TraceOptions::default()
                    }),
                ),
                (None, None) => anyhow::bail!("give a session id or --filter"),
            };
            let targets = conns.into_iter().map(|c| (c, target.clone())).collect();
            trace::follow(targets, options, &view).await
        }
        Command::Trace(TraceCommand::Read { file, view }) => trace::read(&file, &view.into()),
        command => {
            each(&conns, |conn| {
                let command = command.clone();
                async move {
                    match command {
                        Command::Status { output } => status::run(&conn, output).await,
                        Command::Health { service } => health::run(&conn, service).await,
                        Command::Explain { pid, output } => explain::run(&conn, pid, output).await,
                        Command::Trace(TraceCommand::Stop { id, output }) => {
                            trace::stop(&conn, id, output).await
                        }
                        Command::Trace(TraceCommand::List { output }) => {
                            trace::list(&conn, output).await
                        }
                        _ => unreachable!("handled above"),
                    }
                }
            })
            .await
        }
    }
}

/// The daemons a command talks to: each `--remote` (with its TLS files),
/// or the local socket.
fn connections(
    socket: PathBuf,
    remote: Vec<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Vec<Connection> {
    match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) if !remote.is_empty() => remote
            .into_iter()
            .map(|url| Connection {
                socket: socket.clone(),
                remote: Some(client::Remote {
                    url,
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                }),
            })
            .collect(),
        _ => vec![Connection {
            socket,
            remote: None,
        }],
    }
}

/// stdout was closed by its reader (`| head`): the command is done.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// An error from writing to stdout: [`StdoutClosed`] for a closed pipe,
/// anything else as it is. Only stdout's broken pipe means success — the
/// same error kind on the connection to qtapd (a TLS peer that refused
/// us) is a failure.
pub fn stdout_error(error: io::Error) -> anyhow::Error {
    if error.kind() == io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(error).context("write to stdout")
    }
}

/// Exit code and message for a failed command: a closed stdout (`| head`)
/// is success; a request qtapd rejects as invalid is a usage error (2);
/// anything else is a runtime failure (1).
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    if error.downcast_ref::<StdoutClosed>().is_some() {
        return ExitCode::SUCCESS;
    }
    let status = error
        .chain()
        .find_map(|e| e.downcast_ref::<tonic::Status>());
    if let Some(status) = status {
        eprintln!(
            "qtapctl: {}: {}",
            code_name(status.code()),
            status.message()
        );
        return if status.code() == tonic::Code::InvalidArgument {
            ExitCode::from(2)
        } else {
            ExitCode::FAILURE
        };
    }
    eprintln!("qtapctl: {error:#}");
    ExitCode::FAILURE
}

fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::NotFound => "not found",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::ResourceExhausted => "resource exhausted",
        tonic::Code::Unavailable => "unavailable",
        _ => "error",
    }
}

/// Runs `command` on each daemon in turn. With several, each one's output
/// is headed by its name, and one failing is reported without stopping the
/// others (the result is an error if any failed).
pub async fn each<F, Fut>(conns: &[Connection], command: F) -> anyhow::Result<()>
where
    F: Fn(Connection) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if let [conn] = conns {
        return command(conn.clone()).await;
    }
    let mut failed = Vec::new();
    for conn in conns {
        println!("== {} ==", conn.name());
        if let Err(e) = command(conn.clone()).await {
            eprintln!("qtapctl: {}: {e:#}", conn.name());
            failed.push(conn.name());
        }
    }
    anyhow::ensure!(failed.is_empty(), "failed on {}", failed.join(", "));
    Ok(())
}
