//! The API's TLS. Compute nodes and other login nodes reach the service across a facility's
//! network, where a bearer token in plain HTTP would be readable by anyone on the path. The
//! service makes a self-signed certificate at its first start (kept in the state folder, the
//! key readable by its owner only) and pins it in `server-info`, which clients already trust
//! for the token: no certificate authority is involved, and a client trusts exactly this one
//! certificate. It is made anew when the names it must cover change.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Why the service has no TLS identity.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file of the identity could not be read or written.
    #[error("failed to keep the service's certificate in {path}: {cause}; check the state folder's permissions")]
    File {
        /// Which.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// Making or loading the certificate failed.
    #[error("failed to make the service's certificate: {0}; remove service-cert.pem and service-key.pem from the state folder to make new ones")]
    Cert(String),
}

/// The certificate and key the service presents.
pub struct Identity {
    /// The certificate, PEM (what `server-info` pins).
    pub cert_pem: String,
    /// `sha256:…` of the certificate.
    pub fingerprint: String,
    key_pem: String,
}

const CERT: &str = "service-cert.pem";
const KEY: &str = "service-key.pem";
const NAMES: &str = "service-cert.names";

/// Loads the identity kept in `dir`, or makes one whose names are `names` (host names and
/// addresses clients may use) when there is none or it covers other names.
pub fn load_or_make(dir: &Path, names: &[String]) -> Result<Identity, TlsError> {
    let file = |name: &str| dir.join(name);
    let fail = |name: &str| {
        let path = file(name);
        move |cause| TlsError::File { path, cause }
    };
    let wanted = names.join("\n");
    let kept = std::fs::read_to_string(file(NAMES)).unwrap_or_default();
    if kept == wanted {
        if let (Ok(cert_pem), Ok(key_pem)) = (
            std::fs::read_to_string(file(CERT)),
            std::fs::read_to_string(file(KEY)),
        ) {
            if let Ok(der) = CertificateDer::from_pem_slice(cert_pem.as_bytes()) {
                return Ok(Identity {
                    fingerprint: crate::api::fingerprint(&der),
                    cert_pem,
                    key_pem,
                });
            }
        }
    }
    let made = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Cert(e.to_string()))?;
    let cert_pem = made.cert.pem();
    let key_pem = made.signing_key.serialize_pem();
    crate::service::write_private(&file(KEY), key_pem.as_bytes()).map_err(fail(KEY))?;
    std::fs::write(file(CERT), &cert_pem).map_err(fail(CERT))?;
    std::fs::write(file(NAMES), &wanted).map_err(fail(NAMES))?;
    tracing::info!(names = %names.join(", "), "made the service's TLS certificate");
    Ok(Identity {
        fingerprint: crate::api::fingerprint(made.cert.der()),
        cert_pem,
        key_pem,
    })
}

/// The rustls side of an identity.
pub fn acceptor(id: &Identity) -> Result<TlsAcceptor, TlsError> {
    let bad = |e: &dyn std::fmt::Display| TlsError::Cert(e.to_string());
    let cert = CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).map_err(|e| bad(&e))?;
    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).map_err(|e| bad(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| bad(&e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
