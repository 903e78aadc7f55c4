//! TLS for the client API (`api.tls_cert` and `api.tls_key`): a listener that accepts TCP
//! connections, runs each TLS handshake in a task of its own (a slow or silent client holds up
//! no one; a handshake gets [`HANDSHAKE_TIMEOUT`]) and hands the server the connections that
//! completed one. The WebSocket API rides on the same connections (`wss://`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections that completed a handshake and wait for the server to take them.
const READY_MAX: usize = 1024;

/// The server's TLS settings from a certificate chain and its private key, both PEM.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading api.tls_cert {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "api.tls_cert {} is not a PEM certificate chain",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!("api.tls_cert {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("api.tls_key {} is not a PEM private key", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("api.tls_cert and api.tls_key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How long a certificate from the cluster CA is valid, and when it is replaced.
pub const CLUSTER_CA_CERT_VALID: Duration = Duration::from_secs(90 * 24 * 3600);
pub const CLUSTER_CA_CERT_RENEW: Duration = Duration::from_secs(30 * 24 * 3600);
/// The file in the data dir that holds the cluster CA's certificate (PEM), for API clients.
pub const API_CA_FILE: &str = "api-ca.pem";

/// Issues API certificates from the cluster CA.
pub trait IssueApiCert: Send + Sync {
    /// A certificate for `names` valid for `valid_for`, and its private key (DER).
    fn issue(&self, names: &[String], valid_for: Duration) -> anyhow::Result<(Vec<u8>, Vec<u8>)>;
}

/// The server's TLS settings with a certificate from the cluster CA for `names`, replaced by a
/// fresh one on the first handshake after [`CLUSTER_CA_CERT_RENEW`].
pub fn cluster_ca_config(
    issuer: Arc<dyn IssueApiCert>,
    names: Vec<String>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let resolver = Renewing::new(issuer, names)?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CA certificate (DER) as PEM.
pub fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The certificate the server presents, re-issued when it grows old.
struct Renewing {
    issuer: Arc<dyn IssueApiCert>,
    names: Vec<String>,
    current: std::sync::RwLock<(std::time::Instant, Arc<CertifiedKey>)>,
}

impl std::fmt::Debug for Renewing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewing")
            .field("names", &self.names)
            .finish()
    }
}

impl Renewing {
    fn new(issuer: Arc<dyn IssueApiCert>, names: Vec<String>) -> anyhow::Result<Self> {
        let key = Self::issue(issuer.as_ref(), &names)?;
        Ok(Renewing {
            issuer,
            names,
            current: std::sync::RwLock::new((std::time::Instant::now(), key)),
        })
    }

    fn issue(issuer: &dyn IssueApiCert, names: &[String]) -> anyhow::Result<Arc<CertifiedKey>> {
        let (cert, key) = issuer.issue(names, CLUSTER_CA_CERT_VALID)?;
        let key = transport::tls::provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(key.into()))
            .context("loading the API certificate's key")?;
        Ok(Arc::new(CertifiedKey::new(vec![cert.into()], key)))
    }
}

impl ResolvesServerCert for Renewing {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let (issued, key) = self.current.read().expect("API certificate lock").clone();
        if issued.elapsed() < CLUSTER_CA_CERT_RENEW {
            return Some(key);
        }
        match Self::issue(self.issuer.as_ref(), &self.names) {
            Ok(fresh) => {
                *self.current.write().expect("API certificate lock") =
                    (std::time::Instant::now(), fresh.clone());
                Some(fresh)
            }
            Err(e) => {
                // The old one still has two thirds of its life left.
                warn!(error = %e, "API certificate not renewed");
                Some(key)
            }
        }
    }
}

/// Connections that completed a TLS handshake, for `http_server::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` until `stop`, handshaking with `config`; the accept loop and each
    /// handshake (at most `HANDSHAKE_TIMEOUT`) are tasks of `tasks`.
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_MAX);
        let acceptor = TlsAcceptor::from(config);
        let handshakes = tasks.clone();
        tasks.spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = tcp.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            debug!(error = %e, "API accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                handshakes.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The acceptor stopped: no more connections, ever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
