//! qtapctl: the unprivileged front end of qtapd. Parses the command line,
//! connects, runs one subcommand, and maps the outcome to an exit code:
//! 0 on success or a closed pipe, 1 on a runtime failure, 2 on a usage
//! error (clap's own, or a request the daemon rejects as invalid).

mod cli;
mod client;
mod cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qtapctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cmd::exit_code(&e),
    }
}
