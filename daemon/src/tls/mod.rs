//! The local CA, the leaf certificates it mints, the trust bundle agents
//! point at, and the TLS client configuration for upstreams.
//!
//! # Files in the state directory
//! - `ca/ca-key.pem`: the CA's private key (ECDSA P-256). The `ca/`
//!   directory is 0700 and the key 0600, owned by the daemon's uid; the
//!   daemon refuses to start if the key's mode is looser than 0600 or its
//!   owner is another uid.
//! - `ca.pem`: the current CA certificate (public).
//! - `ca-retired/<unix deadline>.pem`: CA certificates replaced by a newer one,
//!   kept until the deadline in their name, then deleted.
//! - `trust-bundle.pem`: the system roots plus every CA above, for
//!   SSL_CERT_FILE / REQUESTS_CA_BUNDLE / NODE_EXTRA_CA_CERTS / AWS_CA_BUNDLE. The state
//!   directory must be readable (searchable) by agents for them to use it.
//!
//! # Name constraints and re-issue
//! The CA carries X.509 Name Constraints: the permitted DNS subtrees are the
//! configured `[[upstream]]` hosts, and every IPv4 and IPv6 address is
//! excluded, so a stolen CA key cannot impersonate any other site. Because
//! the constraints are fixed in the CA certificate, changing the upstream
//! list means a new CA (with a new key) is issued at the next start. The old
//! CA certificate is kept in the trust bundle for [`LEAF_VALIDITY`] plus the
//! clock-skew allowance, i.e. until every leaf it signed has expired, so
//! clients holding such a leaf's connection or session keep verifying. A
//! client that read the bundle before the change must re-read it (restart)
//! to trust the new CA.

mod ca;
mod leaf;

use std::{io, path::PathBuf, sync::Arc, time::Duration};

use rustls::{ClientConfig, RootCertStore, pki_types::CertificateDer};

pub use ca::{BUNDLE_FILE as TRUST_BUNDLE_FILE, CERT_FILE as CA_CERT_FILE, LocalCa, ca_pem_in};
pub use leaf::LeafCache;

/// How long a minted leaf certificate is valid. Short, so a leaked leaf key
/// is soon worthless; the cache mints a new one long before it expires.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// How long a minted leaf is served from the cache before a new one is
/// minted: a quarter of its validity, so no client sees one near expiry.
pub const LEAF_CACHE_TTL: Duration = Duration::from_secs(6 * 3600);
/// Leafs are back-dated by this much, for clients whose clock is behind.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Validity of a CA certificate. It is re-issued when it has less than
/// [`CA_RENEW_BEFORE`] left, so a long-running host never sees it expire.
pub const CA_VALIDITY: Duration = Duration::from_secs(2 * 365 * 24 * 3600);
pub const CA_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// ALPN protocols offered to agents and to upstreams, preferred first.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} has mode {mode:04o}; the CA key must be 0600 or stricter (run: chmod 600 {path})"
    )]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("{path} is not a regular file (a symlink?); the CA key must be a plain 0600 file")]
    KeyNotAFile { path: PathBuf },
    #[error("{path} is owned by uid {owner}, not by the daemon's uid {expected}")]
    KeyOwner {
        path: PathBuf,
        owner: u32,
        expected: u32,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{path}: no usable certificate ({detail})")]
    BadCertificate { path: PathBuf, detail: String },
    #[error("{0:?} is not an intercepted host; no leaf is minted for it")]
    NotIntercepted(String),
}

impl TlsError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> TlsError {
        let path = path.into();
        move |source| TlsError::Io { path, source }
    }
}

/// What `warrant run` sets up at start: the CA for the configured upstream
/// hosts (issued or re-issued as needed), the trust bundle written, the leaf
/// cache, and the system roots upstreams are verified against.
pub struct Pki {
    pub leafs: Arc<LeafCache>,
    pub system_roots: Vec<CertificateDer<'static>>,
    pub trust_bundle: PathBuf,
}

impl Pki {
    pub fn init(config: &crate::config::Config) -> Result<Pki, TlsError> {
        let hosts: Vec<String> = config
            .upstreams
            .iter()
            .map(|u| u.host.get_ref().clone())
            .collect();
        let ca = Arc::new(LocalCa::load_or_create(&config.daemon.state_dir, &hosts)?);
        let system_roots = system_roots();
        let trust_bundle = ca.write_trust_bundle(&system_roots)?;
        Ok(Pki {
            leafs: Arc::new(LeafCache::new(ca)),
            system_roots,
            trust_bundle,
        })
    }
}

/// The crypto provider used everywhere (rustls with ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The host's trusted roots. Unreadable entries are logged and skipped: one
/// bad file in /etc/ssl/certs must not take the injector down.
pub fn system_roots() -> Vec<CertificateDer<'static>> {
    let result = rustls_native_certs::load_native_certs();
    for error in &result.errors {
        tracing::warn!(%error, "skipping an unreadable system root certificate");
    }
    result.certs
}

/// The TLS client configuration for one upstream: the system roots plus the
/// upstream's optional `ca_file`, ALPN h2 and http/1.1.
pub fn client_config(
    system_roots: &[CertificateDer<'static>],
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_auth(system_roots, ca_file, None)
}

/// As [`client_config`], presenting `client_auth` (a certificate chain and
/// its key) when the server asks: a node toward its gateway.
pub fn client_config_with_auth(
    system_roots: &[CertificateDer<'static>],
    ca_file: Option<&std::path::Path>,
    client_auth: Option<(
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(system_roots.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(TlsError::io(path))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(TlsError::io(path))?;
            roots.add(cert).map_err(|e| TlsError::BadCertificate {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsError::BadCertificate {
                path: path.to_owned(),
                detail: "no PEM CERTIFICATE block".to_owned(),
            });
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
