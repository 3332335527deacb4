//! The connection to qtapd: its unix socket, or a remote daemon over
//! mutual TLS (`--remote https://host:port --ca … --cert … --key …`).

use std::path::PathBuf;

use anyhow::Context;
use hyper_util::rt::TokioIo;
use qtap_proto::v1::qtap_client::QtapClient;
use tokio::net::UnixStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where qtapd is.
#[derive(Clone, Debug)]
pub struct Connection {
    pub socket: PathBuf,
    pub remote: Option<Remote>,
}

/// A remote qtapd and the files that authenticate both ends.
#[derive(Clone, Debug)]
pub struct Remote {
    pub url: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Connection {
    /// How the daemon is named in output: the remote's `host:port`, or
    /// the socket's path.
    #[must_use]
    pub fn name(&self) -> String {
        match &self.remote {
            Some(remote) => remote
                .url
                .trim_start_matches("https://")
                .trim_end_matches('/')
                .to_owned(),
            None => self.socket.display().to_string(),
        }
    }
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// Connects to qtapd.
/// A client of the qtap service on `conn`.
pub async fn connect(conn: &Connection) -> anyhow::Result<QtapClient<Channel>> {
    Ok(QtapClient::new(channel(conn).await?))
}

/// A channel to qtapd: its unix socket, or a remote one over mutual TLS.
pub async fn channel(conn: &Connection) -> anyhow::Result<Channel> {
    let channel = if let Some(remote) = &conn.remote {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&remote.ca)?))
            .identity(Identity::from_pem(read(&remote.cert)?, read(&remote.key)?));
        Endpoint::from_shared(remote.url.clone())
            .with_context(|| format!("bad --remote URL {}", remote.url))?
            .tls_config(tls)?
            .connect()
            .await
            .with_context(|| format!("connect to qtapd at {}", remote.url))?
    } else {
        let path = conn.socket.clone();
        // The URI is required by the API and unused: the connector dials the socket.
        Endpoint::from_static("http://qtapd.local")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await
            .with_context(|| {
                format!(
                    "connect to qtapd at {} (is it running? are you in group qtap?)",
                    conn.socket.display()
                )
            })?
    };
    Ok(channel)
}
