//! `qtapctl trace stop`.

use qtap_proto::v1::StopTraceRequest;

use crate::client;

pub async fn stop(conn: &client::Connection, id: String) -> anyhow::Result<()> {
    let mut client = client::connect(conn).await?;
    let s = client
        .stop_trace(StopTraceRequest { id })
        .await?
        .into_inner();
    println!(
        "stopped {}: {} events delivered, {} lost",
        s.id, s.events_delivered, s.events_lost
    );
    Ok(())
}
