//! `qtapctl trace stop`.

use qtap_proto::v1::StopTraceRequest;
use qtapctl::render::Output;

use crate::client;

pub async fn stop(conn: &client::Connection, id: String, output: Output) -> anyhow::Result<()> {
    let mut client = client::connect(conn).await?;
    let s = client
        .stop_trace(StopTraceRequest { id })
        .await?
        .into_inner();
    if output == Output::Json {
        let json = serde_json::json!({
            "id": s.id,
            "events_delivered": s.events_delivered,
            "events_lost": s.events_lost,
        });
        println!("{json}");
    } else {
        println!(
            "stopped {}: {} events delivered, {} lost",
            s.id, s.events_delivered, s.events_lost
        );
    }
    Ok(())
}
