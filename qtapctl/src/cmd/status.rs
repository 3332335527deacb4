//! `qtapctl status`.

use qtap_proto::v1::GetStatusRequest;

use crate::client;

pub async fn run(conn: &client::Connection) -> anyhow::Result<()> {
    let mut client = client::connect(conn).await?;
    let s = client.get_status(GetStatusRequest {}).await?.into_inner();
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
    for off in &s.features_off {
        println!(
            "off on this kernel  {}",
            qtapctl::render::terminal_safe(off)
        );
    }
    Ok(())
}
