//! One file per subcommand; this module maps their errors to exit codes.

pub mod health;
pub mod status;
pub mod trace;

use std::{io, process::ExitCode};

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
