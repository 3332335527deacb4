//! `qtapctl health`: qtapd's answer to the standard gRPC health check
//! (`grpc.health.v1`), for liveness and readiness probes.

use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::client;

/// The service whose health is asked: the trace service itself.
pub const SERVICE: &str = "qtap.v1.Qtap";

pub async fn run(conn: &client::Connection, service: String) -> anyhow::Result<()> {
    let mut health = HealthClient::new(client::channel(conn).await?);
    let answer = health
        .check(HealthCheckRequest {
            service: service.clone(),
        })
        .await?
        .into_inner();
    let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
    println!("{service}: {}", status.as_str_name());
    anyhow::ensure!(status == ServingStatus::Serving, "{service} is not serving");
    Ok(())
}
