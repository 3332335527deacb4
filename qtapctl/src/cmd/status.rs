//! `qtapctl status`.

use qtap_proto::v1::{Counters, GetStatusRequest, Status};
use qtapctl::render::Output;

use crate::client;

pub async fn run(conn: &client::Connection, output: Output) -> anyhow::Result<()> {
    let mut client = client::connect(conn).await?;
    let s = client.get_status(GetStatusRequest {}).await?.into_inner();
    if output == Output::Json {
        println!("{}", status_json(&s));
        return Ok(());
    }
    let c = s.counters.unwrap_or_default();
    println!(
        "qtapd {}  kernel {}  up {}s",
        qtapctl::render::terminal_safe(&s.version),
        qtapctl::render::terminal_safe(&s.kernel),
        s.uptime_secs
    );
    println!("programs attached   {}", s.programs_attached);
    println!("ring buffer         {} bytes", s.ring_bytes);
    println!("sessions            {}", s.sessions);
    println!("selected processes  {}", s.selected_processes);
    println!("records decoded     {}", c.records);
    println!(
        "lost                kernel ring {}  follower queues {}  malformed {}",
        c.kernel_ring_full, c.follower_queue_full, c.malformed
    );
    println!(
        "table overflows     pending {}  connections {}  processes {}  tls {}",
        c.pending_full, c.conns_full, c.procs_full, c.tls_full
    );
    let tls = s.tls_coverage.unwrap_or_default();
    println!(
        "tls coverage        {} of {} fds with TLS show plaintext  probes on {} files",
        tls.plaintext_fds, tls.tls_fds, tls.probed_files
    );
    for off in &s.features_off {
        println!(
            "off on this kernel  {}",
            qtapctl::render::terminal_safe(off)
        );
    }
    Ok(())
}

/// The status as one JSON object, for scripts (`make bench`, monitoring).
fn status_json(s: &Status) -> serde_json::Value {
    let c = s.counters.unwrap_or_default();
    let tls = s.tls_coverage.unwrap_or_default();
    let Counters {
        records,
        kernel_ring_full,
        pending_full,
        conns_full,
        procs_full,
        malformed,
        follower_queue_full,
        tls_full,
    } = c;
    serde_json::json!({
        "version": s.version,
        "kernel": s.kernel,
        "programs_attached": s.programs_attached,
        "ring_bytes": s.ring_bytes,
        "uptime_secs": s.uptime_secs,
        "sessions": s.sessions,
        "selected_processes": s.selected_processes,
        "features_off": s.features_off,
        "tls_coverage": {
            "probed_files": tls.probed_files,
            "tls_fds": tls.tls_fds,
            "plaintext_fds": tls.plaintext_fds,
        },
        "counters": {
            "records": records,
            "kernel_ring_full": kernel_ring_full,
            "pending_full": pending_full,
            "conns_full": conns_full,
            "procs_full": procs_full,
            "malformed": malformed,
            "follower_queue_full": follower_queue_full,
            "tls_full": tls_full,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_in_the_json() {
        let s = Status {
            version: "0.1.0".into(),
            counters: Some(Counters {
                records: 7,
                tls_full: 2,
                ..Counters::default()
            }),
            ..Status::default()
        };
        let v = status_json(&s);
        assert_eq!(v["version"], "0.1.0");
        assert_eq!(v["counters"]["records"], 7);
        assert_eq!(v["counters"]["tls_full"], 2);
        assert_eq!(v["counters"].as_object().map(serde_json::Map::len), Some(8));
        assert_eq!(v["tls_coverage"]["plaintext_fds"], 0);
    }
}
