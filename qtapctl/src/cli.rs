//! The command line: every subcommand, option and help text of qtapctl.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use qtapctl::render::{GroupBy, Output};

use crate::cmd;

/// Start, follow, stop and list qtapd trace sessions.
///
/// A session traces the network syscalls of the processes its filter
/// selects, e.g. `mod:socket,exe.contains:curl`. Sessions live in qtapd:
/// start one, follow it from another terminal, stop it when done (or it
/// stops itself after 10 minutes without a follower).
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// qtapd's unix socket.
    #[arg(
        long,
        global = true,
        env = "QTAP_SOCKET",
        default_value = "/run/qtap/qtapd.sock"
    )]
    pub socket: PathBuf,
    /// A remote qtapd, `https://host:port`, reached over mutual TLS with
    /// --ca, --cert and --key. Give it several times (or comma-separated
    /// in `QTAP_REMOTE`) to start, follow, stop and list on several daemons
    /// at once: followed events are merged, each labelled with its daemon
    /// (`host`), and a daemon that fails is reported while the others go on.
    #[arg(long, global = true, env = "QTAP_REMOTE", value_delimiter = ',', requires_all = ["ca", "cert", "key"])]
    pub remote: Vec<String>,
    /// PEM CA that signed the remote qtapd's certificate.
    #[arg(long, global = true, env = "QTAP_CA")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate presented to the remote qtapd.
    #[arg(long, global = true, env = "QTAP_CERT")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, global = true, env = "QTAP_KEY")]
    pub key: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Trace sessions.
    #[command(subcommand)]
    Trace(TraceCommand),
    /// The daemon's version, kernel, programs and counters.
    Status {
        /// console: aligned lines; json: one object (the counters under
        /// "counters", named as in qtap.v1.Counters)
        #[arg(long, value_enum, default_value_t = Output::Console)]
        output: Output,
    },
    /// Why HTTPS of a process shows (or does not show) plaintext: the TLS
    /// stacks it carries (shared libraries, OpenSSL linked in, Go,
    /// rustls, Java…), whether qtap sees into each, and what would help.
    /// One screen to paste into a bug report. Only for a process you may
    /// trace (root: any).
    Explain {
        /// The process.
        pid: u32,
        /// console: one screen; json: one object
        #[arg(long, value_enum, default_value_t = Output::Console)]
        output: Output,
    },
    /// Asks qtapd's standard gRPC health service (grpc.health.v1); exits 0
    /// only when it answers SERVING. For liveness and readiness probes.
    Health {
        /// The service to ask about ("" for the server as a whole).
        #[arg(long, default_value = cmd::health::SERVICE)]
        service: String,
    },
    /// Shell completions or the man page, generated from this CLI.
    #[command(subcommand)]
    Generate(Generate),
}

#[derive(Clone, Debug, Subcommand)]
pub enum Generate {
    /// Completions for a shell, on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The man page (roff), on stdout.
    Man,
}

#[derive(Clone, Debug, Subcommand)]
pub enum TraceCommand {
    /// Start a session and print its id (or follow it with --follow).
    Start {
        /// What to trace: `key:value` terms, comma-separated. Keys: mod
        /// (socket, process, openssl, gnutls, gotls, protocol, data), exe, exe.contains,
        /// exe.startsWith, exe.endsWith, comm, pid, uid, port, fd (socket,
        /// any), cgroup (a path prefix), container (an id prefix), unit (a
        /// systemd unit). Calls on sockets only unless the filter says
        /// `fd:any` (files and pipes too, `conn_info` null, as Qtap's
        /// --bpf-trace shows them): qtapctl adds `fd:socket` to a filter
        /// with no `fd:` term.
        #[arg(long, value_parser = with_default_fd)]
        filter: String,
        /// A name shown by `trace list`.
        #[arg(long, default_value = "")]
        name: String,
        /// Seconds without a follower before qtapd stops the session
        /// (0: the daemon's default).
        #[arg(long, default_value_t = 0)]
        idle_timeout: u32,
        /// Include the first N bytes of each data event (plaintext for TLS
        /// library calls), escaped in the console, base64 in JSON (0-4096).
        #[arg(long, value_name = "N", default_value_t = 0)]
        capture_bytes: u32,
        /// Also send the session's events as OpenTelemetry log records
        /// (OTLP over gRPC) to this collector, e.g. `http://127.0.0.1:4317`,
        /// until the session stops. Drops are counted in qtapd's log.
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
        /// Follow the new session right away.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        view: View,
    },
    /// Stream a session's events (by id), or an inline filter's.
    Follow {
        /// The session id (see `trace list`).
        #[arg(required_unless_present = "filter", conflicts_with = "filter")]
        id: Option<String>,
        /// Follow this filter in a session that ends with the stream
        /// (`fd:socket` added unless it has an `fd:` term, as for start).
        #[arg(long, value_parser = with_default_fd)]
        filter: Option<String>,
        /// With --filter: include the first N bytes of each data event.
        #[arg(long, value_name = "N", default_value_t = 0, requires = "filter")]
        capture_bytes: u32,
        #[command(flatten)]
        view: View,
    },
    /// Stop a session and remove its kernel state.
    Stop {
        /// The session id.
        id: String,
        /// console: a sentence; json: one object with the session's
        /// events delivered and lost, for scripts.
        #[arg(long, value_enum, default_value_t = Output::Console)]
        output: Output,
    },
    /// Render a recording made by `follow --write` (or `start --follow
    /// --write`), as following would have rendered the stream it kept,
    /// ending with the same counts of events and losses.
    Read {
        /// The recording (`-`: stdin).
        file: PathBuf,
        #[command(flatten)]
        view: ReadView,
    },
    /// List the sessions you may see (all of them as root).
    List {
        /// console: a table; json: one object per session and line.
        #[arg(long, value_enum, default_value_t = Output::Console)]
        output: Output,
    },
}

/// How events are shown.
#[derive(Clone, Debug, clap::Args)]
pub struct View {
    /// console: aligned lines, coloured on a terminal; json: one object per
    /// line (the fields of qtapd's --bpf-trace JSON plus session and seq).
    #[arg(long, value_enum, default_value_t = Output::Console)]
    pub output: Output,
    /// Group events into per-fd flows (from accept/connect to close, with
    /// totals in and out) instead of one line per event.
    #[arg(long, value_enum)]
    pub group_by: Option<GroupBy>,
    /// Events qtapd may queue for this follower before it counts losses
    /// (its batches, of up to 512 and at most half the queue, go whole or
    /// are lost whole).
    #[arg(long, default_value_t = 0)]
    pub queue_len: u32,
    /// Also write the socket data as a pcapng capture to FILE (`-`: to
    /// stdout instead of the lines, e.g. `| wireshark -k -i -`): one
    /// synthesized TCP/UDP conversation per connection on its real
    /// addresses, TLS fds as their plaintext where a TLS library call
    /// shows it, each packet's comment naming pid, exe, fd and call. A
    /// session qtapctl starts captures 4096 bytes per call unless
    /// --capture-bytes says otherwise; a call that moved more is a
    /// truncated packet. Unix sockets are left out.
    #[arg(long, value_name = "FILE")]
    pub pcapng: Option<PathBuf>,
    /// Write the stream to FILE as qtapd sends it (compact batches, loss
    /// reports), instead of rendering it (`-`: to stdout); `qtapctl trace
    /// read FILE` renders it later, with any --output, --group-by or
    /// --pcapng. Writing costs a fraction of rendering: for a session too
    /// busy to render as it runs, or one capture looked at several ways.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["output", "group_by", "pcapng"])]
    pub write: Option<PathBuf>,
    /// When the stream ends, also write its counts to FILE as one JSON
    /// object, for scripts: the numbers of the summary line on stderr
    /// (`events`, `lost`, `lost_in_queue`: of those, lost in qtapd's queue
    /// for this follower, `seq_gaps`) and `seconds`, with `daemons` (each
    /// one's counts and `host`) when there are several.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
}

/// How `trace read` shows a recording: as `follow` shows a stream.
#[derive(Clone, Debug, clap::Args)]
pub struct ReadView {
    /// console: aligned lines, coloured on a terminal; json: one object per
    /// line (the fields of qtapd's --bpf-trace JSON plus session and seq).
    #[arg(long, value_enum, default_value_t = Output::Console)]
    pub output: Output,
    /// Group events into per-fd flows (from accept/connect to close, with
    /// totals in and out) instead of one line per event.
    #[arg(long, value_enum)]
    pub group_by: Option<GroupBy>,
    /// Also write the socket data as a pcapng capture to FILE (`-`: to
    /// stdout instead of the lines); see `follow --pcapng`. Only the bytes
    /// the session captured are in the recording.
    #[arg(long, value_name = "FILE")]
    pub pcapng: Option<PathBuf>,
}

impl From<ReadView> for View {
    fn from(read: ReadView) -> View {
        View {
            output: read.output,
            group_by: read.group_by,
            queue_len: 0,
            pcapng: read.pcapng,
            write: None,
            summary: None,
        }
    }
}

impl View {
    /// The capture size of a session qtapctl starts and follows: what was
    /// asked, or all qtapd allows when a pcapng is written and none was.
    #[must_use]
    pub fn capture_bytes(&self, asked: u32, followed: bool) -> u32 {
        if asked == 0 && followed && self.pcapng.is_some() {
            u32::try_from(qtap_common::limit::CAPTURE_MAX).unwrap_or(u32::MAX)
        } else {
            asked
        }
    }
}

/// qtapctl's default fd kind: a filter without an `fd:` term gets
/// `fd:socket`, so that a first trace shows network calls, not a
/// program's library loading. qtapd's API keeps every fd by default (as
/// Qtap's `--bpf-trace` does); this is the command line's choice.
#[allow(clippy::unnecessary_wraps)] // clap's value_parser signature
fn with_default_fd(filter: &str) -> Result<String, std::convert::Infallible> {
    let names_fd = filter
        .split(',')
        .any(|term| term.trim_start().starts_with("fd:"));
    Ok(if names_fd || filter.trim().is_empty() {
        filter.to_owned()
    } else {
        format!("{filter},fd:socket")
    })
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Cli;

    #[test]
    fn a_filter_without_fd_term_keeps_sockets_only() {
        let parse = |filter: &str| {
            let cli =
                Cli::try_parse_from(["qtapctl", "trace", "start", "--filter", filter]).unwrap();
            match cli.command {
                super::Command::Trace(super::TraceCommand::Start { filter, .. }) => filter,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(parse("exe.contains:curl"), "exe.contains:curl,fd:socket");
        assert_eq!(
            parse("exe.contains:curl,fd:any"),
            "exe.contains:curl,fd:any"
        );
        assert_eq!(parse("fd:socket,pid:1"), "fd:socket,pid:1");
        // qtapd's error for an empty filter stays qtapd's.
        assert_eq!(parse(""), "");
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn man_page_and_completions_render() {
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(
            man.contains(".TH qtapctl") && man.contains("trace"),
            "{man}"
        );
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "qtapctl",
            &mut bash,
        );
        let bash = String::from_utf8(bash).unwrap();
        assert!(bash.contains("follow") && bash.contains("--group-by"));
    }
}
