//! Cluster TLS: one self-signed cluster certificate that every member presents and pins.
//!
//! Every QUIC connection between members is mutual TLS 1.3 in which both sides must present
//! exactly the cluster certificate (compared by SHA-256 fingerprint, with the handshake
//! signature checked against its key). A node that is not yet a member connects without a
//! client certificate and may only ask to join; it pins the server by the fingerprint carried
//! in its join token, so the token is never sent to an impostor.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The TLS server name every member answers to.
pub const SERVER_NAME: &str = "stackd.cluster";
const ALPN: &[u8] = b"stackd/1";
const CERT_FILE: &str = "cluster.crt.der";
const KEY_FILE: &str = "cluster.key.der";

/// The cluster certificate and its private key.
#[derive(Clone)]
pub struct ClusterTls {
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

impl ClusterTls {
    /// A new self-signed cluster certificate.
    pub fn generate() -> Result<Self> {
        let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
            .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Self {
            cert_der: ck.cert.der().to_vec(),
            key_der: ck.key_pair.serialize_der(),
        })
    }

    /// Loads the credentials from `dir`, if present.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let cert = dir.join(CERT_FILE);
        if !cert.exists() {
            return Ok(None);
        }
        Ok(Some(Self {
            cert_der: std::fs::read(cert)?,
            key_der: std::fs::read(dir.join(KEY_FILE))?,
        }))
    }

    /// Saves the credentials under `dir` (key readable by the owner only).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(CERT_FILE), &self.cert_der)?;
        let key = dir.join(KEY_FILE);
        std::fs::write(&key, &self.key_der)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert_der)
    }

    /// The key that authenticates gossip packets: HMAC-SHA256 keyed with the cluster's
    /// private key over a fixed label. Every member holds that key, nothing outside the
    /// cluster does, and the label keeps the derived key apart from any other use of it.
    pub fn gossip_key(&self) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key_der)
            .expect("HMAC takes keys of any length");
        mac.update(b"stackd gossip v1");
        mac.finalize().into_bytes().into()
    }

    fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![CertificateDer::from(self.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
        )
    }

    /// Server side: presents the cluster certificate; a client certificate is optional at the
    /// TLS level, and when presented must be the cluster certificate. Whether a connection
    /// presented one decides what it may ask (see `server`).
    pub fn server_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig> {
        let provider = provider();
        let verifier = Arc::new(Pinned {
            fingerprint: self.fingerprint(),
            provider: provider.clone(),
        });
        let (chain, key) = self.chain_and_key();
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| Error::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        cfg.transport_config(transport);
        Ok(cfg)
    }

    /// Client side for members: pins the cluster certificate and presents it.
    pub fn client_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig> {
        let (chain, key) = self.chain_and_key();
        client_config(self.fingerprint(), Some((chain, key)), transport)
    }
}

/// Client side for a node that is joining: pins the server by `fingerprint`, no client cert.
pub fn join_client_config(
    fingerprint: [u8; 32],
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig> {
    client_config(fingerprint, None, transport)
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_config(
    fingerprint: [u8; 32],
    identity: Option<Identity>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        fingerprint,
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| Error::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport);
    Ok(cfg)
}

/// Accepts exactly one certificate, by fingerprint, and checks handshake signatures with it.
#[derive(Debug)]
struct Pinned {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
        if fingerprint(cert.as_ref()) == self.fingerprint {
            Ok(())
        } else {
            Err(rustls::Error::General(
                "certificate is not this cluster's certificate".into(),
            ))
        }
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn client_auth_mandatory(&self) -> bool {
        // Joining nodes have no certificate yet; the server limits what they may ask.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A join token: `stk1.<cluster certificate fingerprint, hex>.<secret, hex>`.
///
/// The fingerprint lets the joining node pin the cluster before it sends the token; the
/// cluster keeps only the SHA-256 of the whole token.
pub fn new_join_token(cert_fingerprint: [u8; 32]) -> String {
    let secret: [u8; 16] = rand::random();
    format!(
        "stk1.{}.{}",
        hex::encode(cert_fingerprint),
        hex::encode(secret)
    )
}

/// Parses a join token into the fingerprint it pins.
pub fn token_fingerprint(token: &str) -> Result<[u8; 32]> {
    let mut parts = token.split('.');
    let (Some("stk1"), Some(fp), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Error::Refused(
            "join token is not of the form stk1.<fingerprint>.<secret>".into(),
        ));
    };
    let fp =
        hex::decode(fp).map_err(|_| Error::Refused("join token fingerprint is not hex".into()))?;
    if secret.is_empty() {
        return Err(Error::Refused("join token has no secret".into()));
    }
    fp.try_into()
        .map_err(|_| Error::Refused("join token fingerprint is not 32 bytes".into()))
}

/// The digest under which the cluster remembers a join token.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gossip_key_is_the_same_for_one_cluster_and_differs_between_clusters() {
        let a = ClusterTls::generate().unwrap();
        let b = ClusterTls::generate().unwrap();
        assert_eq!(a.gossip_key(), a.clone().gossip_key());
        assert_ne!(a.gossip_key(), b.gossip_key());
        assert_ne!(&a.gossip_key()[..], &a.key_der[..32.min(a.key_der.len())]);
    }
}
