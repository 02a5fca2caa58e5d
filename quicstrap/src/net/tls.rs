//! Mutual TLS 1.3: who a peer is, and who may fetch.
//!
//! Both sides present certificates chained to a configured CA. The server additionally checks
//! the client's identity (a SAN DNS name) against an allow list, inside the handshake, so a
//! client outside it never reaches the protocol. Crypto is rustls with *ring*: no OpenSSL.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::protocol::ALPN;

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file holds no usable item.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(String),
}

/// Certificates and key of one side, plus the CA it trusts.
#[derive(Clone, Debug)]
pub struct Identity {
    /// This side's certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// This side's private key.
    pub key: Arc<PrivateKeyDer<'static>>,
    /// CA certificates that peers must chain to.
    pub ca: Vec<CertificateDer<'static>>,
}

impl Identity {
    /// Loads a PEM certificate chain, a PEM private key and a PEM CA bundle.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            chain: load_certs(cert)?,
            key: Arc::new(load_key(key)?),
            ca: load_certs(ca)?,
        })
    }

    /// Builds an identity from PEM text already in memory (embedded dev certificates).
    pub fn from_pem(cert: &[u8], key: &[u8], ca: &[u8]) -> Result<Self, TlsError> {
        let pem_err = |what: &str, e: rustls::pki_types::pem::Error| TlsError::Pem {
            path: PathBuf::from(what),
            what: e.to_string(),
        };
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err("<cert>", e))?;
        let ca = CertificateDer::pem_slice_iter(ca)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err("<ca>", e))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| pem_err("<key>", e))?;
        Ok(Self {
            chain,
            key: Arc::new(key),
            ca,
        })
    }

    /// The conventional files of a directory made by `certs-dev/make-certs.sh`:
    /// `<name>.crt`, `<name>.key` and `ca.crt`.
    pub fn from_dir(dir: &Path, name: &str) -> Result<Self, TlsError> {
        Self::load(
            &dir.join(format!("{name}.crt")),
            &dir.join(format!("{name}.key")),
            &dir.join("ca.crt"),
        )
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in &self.ca {
            roots.add(c.clone())?;
        }
        Ok(roots)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate found".into(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: e.to_string(),
    })
}

/// Which client identities may fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowList {
    /// Any client whose certificate chains to the CA.
    AnyAuthenticated,
    /// Only clients whose certificate is valid for one of these DNS names.
    Names(Vec<String>),
}

impl AllowList {
    /// Parses a comma-separated list; `*` means any authenticated client.
    pub fn parse(s: &str) -> Self {
        let names: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if names.iter().any(|n| n == "*") {
            Self::AnyAuthenticated
        } else {
            Self::Names(names)
        }
    }

    /// Whether the end-entity certificate `cert` (its chain already checked) names an
    /// allowed client.
    pub fn permits(&self, cert: &CertificateDer<'_>) -> bool {
        let names = match self {
            Self::AnyAuthenticated => return true,
            Self::Names(n) => n,
        };
        let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
            return false;
        };
        // Identity, not hostname verification (the chain is already checked): the names the
        // certificate presents must include an allowed name exactly. A wildcard certificate
        // from the same CA (`*.example`) must not pass for a specific allowed node name.
        let presented: Vec<&str> = ee.valid_dns_names().collect();
        names
            .iter()
            .any(|n| presented.iter().any(|p| p.eq_ignore_ascii_case(n)))
    }
}

/// The first DNS name `cert` is valid for (`None`: it names none or does not parse): how
/// an operator's view names a client.
pub fn first_dns_name(cert: &CertificateDer<'_>) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let name = ee.valid_dns_names().next().map(str::to_owned);
    name
}

/// Chain check by webpki, then the allow list, both inside the handshake.
#[derive(Debug)]
struct AllowListVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    /// Asked at every handshake: a reload applies to the next one.
    allow: Arc<dyn Allow>,
}

/// Who may fetch, asked at every handshake: an [`AllowList`] fixed for good, or a list that
/// changes while the server runs (the server's live policy).
pub trait Allow: std::fmt::Debug + Send + Sync {
    /// Whether the end-entity certificate `cert` (its chain already checked) names an
    /// allowed client now.
    fn permits(&self, cert: &CertificateDer<'_>) -> bool;
}

impl Allow for AllowList {
    fn permits(&self, cert: &CertificateDer<'_>) -> bool {
        AllowList::permits(self, cert)
    }
}

impl ClientCertVerifier for AllowListVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allow.permits(end_entity) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls server configuration: TLS 1.3 only, client certificates required and checked
/// against the CA and the allow list (as it is at each handshake), ALPN `quicstrap/1`.
pub fn server_config(
    id: &Identity,
    allow: Arc<dyn Allow>,
) -> Result<rustls::ServerConfig, TlsError> {
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(id.roots()?), provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier = Arc::new(AllowListVerifier { inner, allow });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.max_early_data_size = 0;
    Ok(cfg)
}

/// rustls client configuration: TLS 1.3 only, server checked against the CA, this side's
/// certificate presented, ALPN `quicstrap/1`.
pub fn client_config(id: &Identity) -> Result<rustls::ClientConfig, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(id.roots()?)
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(cfg)
}

/// The development PKI's (server, client) identities when this build embeds it (`dev-pki`),
/// else `None`. Asked at run time because a crate built on this one (the CLI's demo) cannot
/// see which features this crate was built with: features unify across a build, so a test
/// build that turns `dev-pki` on here has it everywhere.
pub fn dev_pair() -> Option<Result<(Identity, Identity), TlsError>> {
    #[cfg(feature = "dev-pki")]
    return Some(dev::server().and_then(|s| dev::client().map(|c| (s, c))));
    #[cfg(not(feature = "dev-pki"))]
    None
}

/// The development PKI of `certs-dev/`, embedded so the demo, the examples and the tests run
/// anywhere with no files to find. Development only: these keys are public, which is why
/// only builds with the `dev-pki` feature carry them (the demo script, tests, benches and
/// examples turn it on; a production build never trusts them by accident).
#[cfg(feature = "dev-pki")]
pub mod dev {
    use super::{Identity, TlsError};

    /// The dev CA certificate.
    pub const CA: &[u8] = include_bytes!("../../../certs-dev/ca.crt");

    /// Default allow list matching the dev client certificates.
    pub const ALLOW: &str = "client.quicstrap.test,server.quicstrap.test";

    /// A serving peer (valid for localhost, 127.0.0.1, ::1).
    pub fn server() -> Result<Identity, TlsError> {
        Identity::from_pem(
            include_bytes!("../../../certs-dev/server.crt"),
            include_bytes!("../../../certs-dev/server.key"),
            CA,
        )
    }

    /// A fetching node inside the default allow list.
    pub fn client() -> Result<Identity, TlsError> {
        Identity::from_pem(
            include_bytes!("../../../certs-dev/client.crt"),
            include_bytes!("../../../certs-dev/client.key"),
            CA,
        )
    }

    /// A node with a valid certificate from the dev CA, outside the allow list.
    pub fn intruder() -> Result<Identity, TlsError> {
        Identity::from_pem(
            include_bytes!("../../../certs-dev/intruder.crt"),
            include_bytes!("../../../certs-dev/intruder.key"),
            CA,
        )
    }

    /// A node with a wildcard certificate (`*.quicstrap.test`) from the dev CA: it must not
    /// pass for a specific allowed name.
    pub fn wildcard() -> Result<Identity, TlsError> {
        Identity::from_pem(
            include_bytes!("../../../certs-dev/wildcard.crt"),
            include_bytes!("../../../certs-dev/wildcard.key"),
            CA,
        )
    }

    /// A node claiming an allowed name with a certificate from an unrelated CA.
    pub fn rogue() -> Result<Identity, TlsError> {
        Identity::from_pem(
            include_bytes!("../../../certs-dev/other-ca/rogue.crt"),
            include_bytes!("../../../certs-dev/other-ca/rogue.key"),
            CA,
        )
    }
}
