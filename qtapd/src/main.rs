//! qtapd: the qtap daemon. Parses flags (over the configuration file),
//! validates the filter before anything is loaded, sets up logging, and
//! runs until SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::CommandFactory;
use tokio_util::sync::CancellationToken;
use tracing::{error, level_filters::LevelFilter};

use qtapd::{
    cli::{config, tcp_config, Args, Level},
    daemon::{self, ServeConfig, TcpConfig},
    filter::Filter,
    tracelog::{Encoding, TraceLog},
};

fn main() -> ExitCode {
    let args = match config::parse(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(Ok(usage)) => usage.exit(),
        Err(Err(file)) => {
            eprintln!("qtapd: {file}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config::example(&Args::command()));
        return ExitCode::SUCCESS;
    }
    if args.print_man {
        let man = clap_mangen::Man::new(Args::command()).section("8");
        if let Err(e) = man.render(&mut std::io::stdout()) {
            eprintln!("qtapd: {e}");
            return ExitCode::FAILURE;
        }
        return ExitCode::SUCCESS;
    }
    let filter = match args.bpf_trace.as_deref().map(Filter::parse).transpose() {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("qtapd: invalid --bpf-trace filter: {e}");
            return ExitCode::from(2);
        }
    };
    let tcp = match tcp_config(&args) {
        Ok(tcp) => tcp,
        Err(e) => {
            eprintln!("qtapd: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(args.log_level, args.log_encoding);
    match run(args, filter, tcp) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, filter: Option<Filter>, tcp: Option<TcpConfig>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signals.cancel();
        });
        if let Some(filter) = filter {
            let log = (args.log_level >= Level::Info).then(|| TraceLog::new(args.log_encoding));
            daemon::bpf_trace(
                filter,
                args.capture_bytes,
                args.otlp_endpoint,
                log,
                shutdown,
            )
            .await
        } else {
            let config = ServeConfig {
                limits: args.limits(),
                socket: args.socket,
                group: args.socket_group,
                tcp,
                metrics: args.metrics_listen,
                otlp_endpoint: args.otlp_endpoint,
            };
            daemon::serve(config, shutdown).await
        }
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

fn init_logging(level: Level, encoding: Encoding) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(LevelFilter::from(level));
    match encoding {
        Encoding::Console => builder.init(),
        Encoding::Json => builder.json().flatten_event(true).init(),
    }
}
