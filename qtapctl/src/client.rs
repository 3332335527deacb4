//! The connection to qtapd's unix socket.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hyper_util::rt::TokioIo;
use qtap_proto::v1::qtap_client::QtapClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// Connects to qtapd at `socket`.
pub async fn connect(socket: &Path) -> anyhow::Result<QtapClient<Channel>> {
    let path: PathBuf = socket.to_owned();
    // The URI is required by the API and unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://qtapd.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .with_context(|| {
            format!(
                "connect to qtapd at {} (is it running? are you in group qtap?)",
                socket.display()
            )
        })?;
    Ok(QtapClient::new(channel))
}
