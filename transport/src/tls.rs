//! Cluster TLS: a cluster CA, one certificate per node naming its id, mutual TLS.
//!
//! The founding node creates the cluster CA. Every node holds a certificate signed by it whose
//! subject alternative name is the URI `stackd://<cluster id>/node/<node id>`, for a key the
//! node generated itself. Every QUIC connection between members is mutual TLS 1.3: each side
//! checks that the peer's certificate chains to the cluster CA and names this cluster, and a
//! client also checks that the node it dialled presents that node's certificate (the expected
//! node travels as the TLS server name, `node-<id>.stackd`).
//!
//! A node that is not yet a member connects without a client certificate and may only ask to
//! join. It pins the cluster CA by the fingerprint carried in its join token, so the token is
//! never sent to an impostor, and sends its public key; the leader answers with a certificate
//! for that key, the CA certificate and the CA key (see ARCHITECTURE.md, "Node identity").
//!
//! Every member holds the CA key, so a certificate only shows that some holder of it signed
//! it. Which key is node N's is the cluster's record (the key digest [`peer_of_cert`] reads,
//! pinned when N was admitted), checked by [`crate::admission`].

use std::path::Path;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use raft::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The TLS server name used when any member of the cluster will do (e.g. a join address).
pub const SERVER_NAME: &str = "stackd.cluster";
const ALPN: &[u8] = b"stackd/1";
const CA_CERT_FILE: &str = "ca.crt.der";
const CA_KEY_FILE: &str = "ca.key.der";
const NODE_CERT_FILE: &str = "node.crt.der";
const NODE_KEY_FILE: &str = "node.key.der";
/// The label the gossip key is derived under.
pub const GOSSIP_KEY_LABEL: &[u8] = b"stackd gossip v1";

/// Refusal texts, shown to the refused node and logged by the refusing one.
pub const NOT_OUR_CA: &str = "peer certificate is not signed by this cluster's CA";

/// The TLS server name that asks for node `id`'s certificate.
pub fn server_name_for(id: Option<NodeId>) -> String {
    match id {
        Some(id) => format!("node-{id}.stackd"),
        None => SERVER_NAME.to_string(),
    }
}

fn expected_node(server_name: &ServerName<'_>) -> Option<NodeId> {
    let ServerName::DnsName(name) = server_name else {
        return None;
    };
    name.as_ref()
        .strip_prefix("node-")?
        .strip_suffix(".stackd")?
        .parse()
        .ok()
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerId {
    pub cluster_id: String,
    pub node_id: NodeId,
}

impl PeerId {
    pub fn uri(&self) -> String {
        format!("stackd://{}/node/{}", self.cluster_id, self.node_id)
    }

    fn parse_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("stackd://")?;
        let (cluster_id, id) = rest.split_once("/node/")?;
        if cluster_id.is_empty() || cluster_id.contains('/') {
            return None;
        }
        Some(Self {
            cluster_id: cluster_id.to_string(),
            node_id: id.parse().ok()?,
        })
    }
}

impl std::fmt::Display for PeerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {} of cluster {}", self.node_id, self.cluster_id)
    }
}

/// The identity named by a node certificate (not verified: see the verifiers).
pub fn peer_id(cert_der: &[u8]) -> Result<PeerId> {
    Ok(peer_of_cert(cert_der)?.id)
}

/// A peer as its certificate shows it: the node it names and the key it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: PeerId,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo (DER).
    pub key_sha256: [u8; 32],
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.id.fmt(f)
    }
}

/// The node a certificate names and its key's digest (not verified: see the verifiers).
pub fn peer_of_cert(cert_der: &[u8]) -> Result<Peer> {
    let der = CertificateDer::from(cert_der);
    let ee = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| Error::Tls(format!("bad certificate: {e}")))?;
    let id = ee
        .valid_uri_names()
        .find_map(PeerId::parse_uri)
        .ok_or_else(|| Error::Tls("certificate names no stackd node".into()))?;
    let key_sha256 = Sha256::digest(ee.subject_public_key_info().as_ref()).into();
    Ok(Peer { id, key_sha256 })
}

/// The DER SubjectPublicKeyInfo of a P-256 key, up to the key itself (RFC 5480: the
/// `id-ecPublicKey` algorithm with the `prime256v1` curve, then the key as a BIT STRING).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// SHA-256 of the SubjectPublicKeyInfo of a node key as it travels in a join request (an
/// uncompressed P-256 point): the digest [`peer_of_cert`] finds in a certificate for it.
pub fn key_sha256(public_key: &[u8]) -> Result<[u8; 32]> {
    check_public_key(public_key)?;
    let mut h = Sha256::new();
    h.update(P256_SPKI_PREFIX);
    h.update(public_key);
    Ok(h.finalize().into())
}

fn check_public_key(public_key: &[u8]) -> Result<()> {
    if public_key.len() != 65 || public_key[0] != 4 {
        return Err(Error::Tls(
            "node public key is not an uncompressed P-256 point".into(),
        ));
    }
    Ok(())
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

/// The distinguished name of a cluster's CA: fixed by the cluster id, so a member can sign
/// with the CA key without parsing the CA certificate.
fn ca_params(cluster_id: &str) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        format!("stackd cluster {cluster_id} CA"),
    );
    p.distinguished_name = dn;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// A node's public key as it travels in a join request (an uncompressed P-256 point).
struct RawPublicKey<'a>(&'a [u8]);

impl rcgen::PublicKeyData for RawPublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// A key pair a node generates for itself before it joins; only the public half leaves it.
pub struct NodeKey {
    pub key_der: Vec<u8>,
    pub public_key: Vec<u8>,
}

impl NodeKey {
    pub fn generate() -> Result<Self> {
        let kp = rcgen::KeyPair::generate().map_err(tls_err)?;
        Ok(Self {
            key_der: kp.serialize_der(),
            public_key: kp.public_key_raw().to_vec(),
        })
    }
}

/// A member's credentials: the cluster CA (certificate and key) and its own certificate and
/// key. The CA key is the cluster-wide secret: it signs the certificates of joining nodes and
/// keys gossip.
#[derive(Clone)]
pub struct ClusterTls {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub ca_cert_der: Vec<u8>,
    pub ca_key_der: Vec<u8>,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl ClusterTls {
    /// A new cluster CA and the founding node's certificate.
    pub fn found(cluster_id: &str, node_id: NodeId) -> Result<Self> {
        let ca_key = rcgen::KeyPair::generate().map_err(tls_err)?;
        let ca = ca_params(cluster_id)
            .self_signed(&ca_key)
            .map_err(tls_err)?;
        let node_key = NodeKey::generate()?;
        let mut tls = Self {
            cluster_id: cluster_id.to_string(),
            node_id,
            ca_cert_der: ca.der().to_vec(),
            ca_key_der: ca_key.serialize_der(),
            cert_der: Vec::new(),
            key_der: node_key.key_der,
        };
        tls.cert_der = tls.issue(node_id, &node_key.public_key)?;
        Ok(tls)
    }

    /// The credentials a joining node assembles from the leader's answer and its own key.
    pub fn joined(
        ca_cert_der: Vec<u8>,
        ca_key_der: Vec<u8>,
        cert_der: Vec<u8>,
        key: NodeKey,
    ) -> Result<Self> {
        let id = peer_id(&cert_der)?;
        let tls = Self {
            cluster_id: id.cluster_id,
            node_id: id.node_id,
            ca_cert_der,
            ca_key_der,
            cert_der,
            key_der: key.key_der,
        };
        tls.check()?;
        Ok(tls)
    }

    /// Checks that the node certificate chains to the CA and names this node.
    fn check(&self) -> Result<()> {
        let v = ChainVerifier::new(&self.ca_cert_der, Some(self.cluster_id.clone()))?;
        v.verify(
            &CertificateDer::from(self.cert_der.as_slice()),
            &[],
            UnixTime::now(),
            webpki::KeyUsage::server_auth(),
            Some(self.node_id),
        )
        .map_err(|e| Error::Tls(format!("own certificate: {e}")))?;
        Ok(())
    }

    /// Signs a certificate naming node `node_id` of this cluster for `public_key` (as sent by
    /// the joining node). The leader decides the identity; the joiner only supplies the key.
    pub fn issue(&self, node_id: NodeId, public_key: &[u8]) -> Result<Vec<u8>> {
        let id = PeerId {
            cluster_id: self.cluster_id.clone(),
            node_id,
        };
        self.sign(&id, public_key)
    }

    /// The CA's key and its certificate as an issuer, and the parameters of a certificate
    /// with the common name `cn`.
    fn issuer(
        &self,
        cn: String,
    ) -> Result<(rcgen::KeyPair, rcgen::Certificate, rcgen::CertificateParams)> {
        let ca_key = rcgen::KeyPair::try_from(self.ca_key_der.as_slice()).map_err(tls_err)?;
        let issuer = ca_params(&self.cluster_id)
            .self_signed(&ca_key)
            .map_err(tls_err)?;
        let mut p = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, cn);
        p.distinguished_name = dn;
        Ok((ca_key, issuer, p))
    }

    fn sign(&self, id: &PeerId, public_key: &[u8]) -> Result<Vec<u8>> {
        check_public_key(public_key)?;
        let (ca_key, issuer, mut p) = self.issuer(format!("stackd {id}"))?;
        p.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::Ia5String::try_from(id.uri()).map_err(tls_err)?,
        )];
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p
            .signed_by(&RawPublicKey(public_key), &issuer, &ca_key)
            .map_err(tls_err)?;
        Ok(cert.der().to_vec())
    }

    /// A certificate for the client API, signed by the cluster CA, and its new private key
    /// (both DER): for `names` (DNS names or IP addresses clients reach the node by), valid
    /// from an hour ago (clock skew) for `valid_for`, for server authentication only. It names
    /// no node, so the cluster port never takes it for a member's certificate.
    pub fn issue_api_cert(
        &self,
        names: &[String],
        valid_for: std::time::Duration,
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let key = rcgen::KeyPair::generate().map_err(tls_err)?;
        let (ca_key, issuer, mut p) =
            self.issuer(format!("stackd cluster {} API", self.cluster_id))?;
        p.subject_alt_names = names
            .iter()
            .map(|n| match ServerName::try_from(n.as_str()) {
                Ok(ServerName::IpAddress(ip)) => {
                    Ok(rcgen::SanType::IpAddress(std::net::IpAddr::from(ip)))
                }
                Ok(ServerName::DnsName(_)) => rcgen::Ia5String::try_from(n.as_str())
                    .map(rcgen::SanType::DnsName)
                    .map_err(tls_err),
                _ => Err(Error::Tls(format!(
                    "{n:?} is neither a DNS name nor an IP address"
                ))),
            })
            .collect::<Result<_>>()?;
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + valid_for;
        let cert = p.signed_by(&key, &issuer, &ca_key).map_err(tls_err)?;
        Ok((cert.der().to_vec(), key.serialize_der()))
    }

    /// Loads the credentials from `dir`, if present.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let cert = dir.join(NODE_CERT_FILE);
        if !cert.exists() {
            return Ok(None);
        }
        let cert_der = std::fs::read(cert)?;
        let id = peer_id(&cert_der)?;
        let tls = Self {
            cluster_id: id.cluster_id,
            node_id: id.node_id,
            ca_cert_der: std::fs::read(dir.join(CA_CERT_FILE))?,
            ca_key_der: std::fs::read(dir.join(CA_KEY_FILE))?,
            cert_der,
            key_der: std::fs::read(dir.join(NODE_KEY_FILE))?,
        };
        tls.check()?;
        Ok(Some(tls))
    }

    /// Saves the credentials under `dir` (keys readable by the owner only).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(CA_CERT_FILE), &self.ca_cert_der)?;
        write_secret(&dir.join(CA_KEY_FILE), &self.ca_key_der)?;
        write_secret(&dir.join(NODE_KEY_FILE), &self.key_der)?;
        // The certificate last: its presence marks complete credentials.
        std::fs::write(dir.join(NODE_CERT_FILE), &self.cert_der)?;
        Ok(())
    }

    /// SHA-256 of this node's public key (its certificate's SubjectPublicKeyInfo), as the
    /// cluster pins it.
    pub fn key_sha256(&self) -> Result<[u8; 32]> {
        Ok(peer_of_cert(&self.cert_der)?.key_sha256)
    }

    /// SHA-256 of the CA certificate, as carried in join tokens.
    pub fn ca_fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.ca_cert_der)
    }

    /// The key that authenticates gossip packets: HMAC-SHA256 keyed with the cluster secret
    /// (the CA private key) over the label `stackd gossip v1`.
    pub fn gossip_key(&self) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.ca_key_der).expect("HMAC takes any key length");
        mac.update(GOSSIP_KEY_LABEL);
        mac.finalize().into_bytes().into()
    }

    fn chain_and_key(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![
                CertificateDer::from(self.cert_der.clone()),
                CertificateDer::from(self.ca_cert_der.clone()),
            ],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
        )
    }

    /// Server side: presents this node's certificate (with the CA); a client certificate is
    /// optional at the TLS level, and when presented must chain to the cluster CA and name
    /// this cluster. Whether a connection presented one decides what it may ask (`endpoint`).
    pub fn server_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig> {
        let verifier = Arc::new(ChainVerifier::new(
            &self.ca_cert_der,
            Some(self.cluster_id.clone()),
        )?);
        let (chain, key) = self.chain_and_key();
        let mut tls = rustls::ServerConfig::builder_with_provider(verifier.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(tls_err)?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        cfg.transport_config(transport);
        Ok(cfg)
    }

    /// Client side for members: presents this node's certificate; the server must present a
    /// certificate of this cluster naming the node asked for in the server name.
    pub fn client_config(
        &self,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig> {
        let verifier = Arc::new(ChainVerifier::new(
            &self.ca_cert_der,
            Some(self.cluster_id.clone()),
        )?);
        client_config(verifier, Some(self.chain_and_key()), transport)
    }
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, bytes)?;
        Ok(())
    }
}

/// Client side for a node that is joining: the server must chain to the CA whose certificate
/// has `ca_fingerprint` (the server sends the CA along); no client certificate.
pub fn join_client_config(
    ca_fingerprint: [u8; 32],
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig> {
    let verifier = Arc::new(JoinVerifier {
        ca_fingerprint,
        provider: provider(),
    });
    client_config(verifier, None, transport)
}

type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_config(
    verifier: Arc<dyn ServerCertVerifier>,
    identity: Option<Identity>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(tls_err)?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport);
    Ok(cfg)
}

fn refuse(reason: impl Into<String>) -> rustls::Error {
    rustls::Error::General(reason.into())
}

/// Verifies a peer certificate against the cluster CA, then the identity it names.
#[derive(Debug)]
pub struct ChainVerifier {
    ca_der: CertificateDer<'static>,
    /// The cluster the peer must belong to.
    cluster_id: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl ChainVerifier {
    pub fn new(ca_der: &[u8], cluster_id: Option<String>) -> Result<Self> {
        let ca_der = CertificateDer::from(ca_der.to_vec());
        webpki::anchor_from_trusted_cert(&ca_der)
            .map_err(|e| Error::Tls(format!("bad CA certificate: {e}")))?;
        Ok(Self {
            ca_der,
            cluster_id,
            provider: provider(),
        })
    }

    /// The peer's identity if `end_entity` chains to the CA, belongs to this cluster and, when
    /// `expect` is given, names that node.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
        expect: Option<NodeId>,
    ) -> std::result::Result<PeerId, rustls::Error> {
        let anchor = webpki::anchor_from_trusted_cert(&self.ca_der)
            .map_err(|e| refuse(format!("bad CA certificate: {e}")))?;
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| refuse(format!("peer certificate is malformed: {e}")))?;
        // The peer sends the CA certificate along; it is the anchor, not an intermediate.
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| c.as_ref() != self.ca_der.as_ref())
            .cloned()
            .collect();
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &[anchor],
            &intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                refuse(NOT_OUR_CA)
            }
            webpki::Error::CertExpired { .. } => refuse("peer certificate has expired"),
            other => refuse(format!("{NOT_OUR_CA} ({other})")),
        })?;
        let id = ee
            .valid_uri_names()
            .find_map(PeerId::parse_uri)
            .ok_or_else(|| refuse("peer certificate names no stackd node"))?;
        if let Some(cluster) = &self.cluster_id {
            if &id.cluster_id != cluster {
                return Err(refuse(format!(
                    "peer certificate is for cluster {}, not this cluster {cluster}",
                    id.cluster_id
                )));
            }
        }
        if let Some(want) = expect {
            if id.node_id != want {
                return Err(refuse(format!(
                    "peer certificate names node {}, but node {want} was dialled",
                    id.node_id
                )));
            }
        }
        Ok(id)
    }
}

/// The handshake-signature checks shared by every verifier.
macro_rules! signatures {
    () => {
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
    };
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            expected_node(server_name),
        )
        .map(|_| ServerCertVerified::assertion())
    }

    signatures!();
}

impl ClientCertVerifier for ChainVerifier {
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
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
        )
        .map(|_| ClientCertVerified::assertion())
    }

    signatures!();
}

/// A joining node's view: the server must send the CA whose fingerprint the token carries,
/// and its certificate must chain to that CA.
#[derive(Debug)]
struct JoinVerifier {
    ca_fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for JoinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| fingerprint(c.as_ref()) == self.ca_fingerprint)
        else {
            return Err(refuse(
                "peer certificate is not signed by the cluster CA named in the join token",
            ));
        };
        let v = ChainVerifier::new(ca.as_ref(), None).map_err(|e| refuse(e.to_string()))?;
        v.verify(end_entity, &[], now, webpki::KeyUsage::server_auth(), None)
            .map_err(|_| {
                refuse("peer certificate is not signed by the cluster CA named in the join token")
            })?;
        Ok(ServerCertVerified::assertion())
    }

    signatures!();
}

/// A join token: `stk1.<cluster CA certificate fingerprint, hex>.<secret, hex>`.
///
/// The fingerprint lets the joining node pin the cluster before it sends the token; the
/// cluster keeps only the SHA-256 of the whole token.
pub fn new_join_token(ca_fingerprint: [u8; 32]) -> String {
    let secret: [u8; 16] = rand::random();
    format!(
        "stk1.{}.{}",
        hex::encode(ca_fingerprint),
        hex::encode(secret)
    )
}

/// Parses a join token into the CA fingerprint it pins.
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
    fn a_node_certificate_names_its_node_and_cluster() {
        let a = ClusterTls::found("c0ffee", 1).unwrap();
        assert_eq!(
            peer_id(&a.cert_der).unwrap(),
            PeerId {
                cluster_id: "c0ffee".into(),
                node_id: 1
            }
        );
        let key = NodeKey::generate().unwrap();
        let cert = a.issue(7, &key.public_key).unwrap();
        let b = ClusterTls::joined(a.ca_cert_der.clone(), a.ca_key_der.clone(), cert, key).unwrap();
        assert_eq!((b.cluster_id.as_str(), b.node_id), ("c0ffee", 7));
        assert_eq!(a.gossip_key(), b.gossip_key(), "one gossip key per cluster");
        let other = ClusterTls::found("c0ffee", 1).unwrap();
        assert_ne!(a.gossip_key(), other.gossip_key());
    }

    #[test]
    fn an_api_certificate_chains_to_the_ca_but_is_no_members() {
        let a = ClusterTls::found("aaaa", 1).unwrap();
        let names = ["node1.example".to_string(), "127.0.0.1".to_string()];
        let (cert, _key) = a
            .issue_api_cert(&names, std::time::Duration::from_secs(86_400))
            .unwrap();
        let cert = CertificateDer::from(cert.as_slice());
        // A web client trusting the CA accepts it for its names, and only those.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(a.ca_cert_der.as_slice()))
            .unwrap();
        let web = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        let now = UnixTime::now();
        for (name, ok) in [
            ("node1.example", true),
            ("127.0.0.1", true),
            ("node2.example", false),
        ] {
            let name = ServerName::try_from(name).unwrap();
            assert_eq!(
                web.verify_server_cert(&cert, &[], &name, &[], now).is_ok(),
                ok,
                "{name:?}"
            );
        }
        // The cluster port does not take it for a member's, as server or as client.
        let v = ChainVerifier::new(&a.ca_cert_der, Some("aaaa".into())).unwrap();
        assert!(v
            .verify(&cert, &[], now, webpki::KeyUsage::server_auth(), None)
            .is_err());
        assert!(v
            .verify(&cert, &[], now, webpki::KeyUsage::client_auth(), None)
            .is_err());
        // A name that is neither a DNS name nor an address is refused.
        assert!(a
            .issue_api_cert(&["bad name!".into()], std::time::Duration::from_secs(60))
            .is_err());
    }

    #[test]
    fn a_certificate_for_another_node_or_ca_is_refused() {
        let a = ClusterTls::found("aaaa", 1).unwrap();
        let key = NodeKey::generate().unwrap();
        let node2 = a.issue(2, &key.public_key).unwrap();
        let v = ChainVerifier::new(&a.ca_cert_der, Some("aaaa".into())).unwrap();
        let now = UnixTime::now();
        let cert = CertificateDer::from(node2.as_slice());
        let usage = webpki::KeyUsage::server_auth;
        assert_eq!(
            v.verify(&cert, &[], now, usage(), Some(2)).unwrap().node_id,
            2
        );
        let err = v.verify(&cert, &[], now, usage(), Some(3)).unwrap_err();
        assert!(
            err.to_string()
                .contains("peer certificate names node 2, but node 3 was dialled"),
            "{err}"
        );
        // Through the TLS server name, as the transport asks for node 3.
        let name = ServerName::try_from(server_name_for(Some(3))).unwrap();
        assert!(v.verify_server_cert(&cert, &[], &name, &[], now).is_err());
        let name = ServerName::try_from(server_name_for(Some(2))).unwrap();
        assert!(v.verify_server_cert(&cert, &[], &name, &[], now).is_ok());

        let b = ClusterTls::found("bbbb", 1).unwrap();
        let err = v
            .verify(
                &CertificateDer::from(b.cert_der.as_slice()),
                &[],
                now,
                usage(),
                None,
            )
            .unwrap_err();
        assert!(err.to_string().contains(NOT_OUR_CA), "{err}");

        // A certificate signed by this CA but naming another cluster id is refused too.
        let foreign_id = PeerId {
            cluster_id: "cccc".into(),
            node_id: 5,
        };
        let foreign = a.sign(&foreign_id, &key.public_key).unwrap();
        let err = v
            .verify(
                &CertificateDer::from(foreign.as_slice()),
                &[],
                now,
                usage(),
                None,
            )
            .unwrap_err();
        assert!(err.to_string().contains("not this cluster aaaa"), "{err}");
    }

    #[test]
    fn a_pinned_key_digest_is_the_one_found_in_the_certificate() {
        let a = ClusterTls::found("eeee", 1).unwrap();
        let key = NodeKey::generate().unwrap();
        let cert = a.issue(2, &key.public_key).unwrap();
        let peer = peer_of_cert(&cert).unwrap();
        assert_eq!(peer.id.node_id, 2);
        assert_eq!(peer.key_sha256, key_sha256(&key.public_key).unwrap());
        // Another key for the same node id is told apart.
        let other = NodeKey::generate().unwrap();
        let minted = a.issue(2, &other.public_key).unwrap();
        assert_ne!(peer_of_cert(&minted).unwrap().key_sha256, peer.key_sha256);
        assert_ne!(a.key_sha256().unwrap(), peer.key_sha256);
        assert!(key_sha256(&key.public_key[1..]).is_err());
    }

    #[test]
    fn credentials_survive_a_restart() {
        let dir = tempfile::TempDir::new().unwrap();
        let a = ClusterTls::found("dddd", 1).unwrap();
        a.save(dir.path()).unwrap();
        let b = ClusterTls::load(dir.path()).unwrap().unwrap();
        assert_eq!((b.cluster_id.as_str(), b.node_id), ("dddd", 1));
        assert_eq!(b.gossip_key(), a.gossip_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
