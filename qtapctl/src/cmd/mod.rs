//! One file per subcommand; this module maps their errors to exit codes.

pub mod status;
pub mod trace;

use std::{io, process::ExitCode};

/// Exit code and message for a failed command: a closed stdout (`| head`)
/// is success; a request qtapd rejects as invalid is a usage error (2);
/// anything else is a runtime failure (1).
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    if error.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    }) {
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
