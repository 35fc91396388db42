//! The local CA: created, checked, re-issued and written out (see the module
//! doc of `tls` for the files and the re-issue rule).

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, GeneralSubtree,
    IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls::pki_types::CertificateDer;

use super::{CA_RENEW_BEFORE, CA_VALIDITY, CLOCK_SKEW, LEAF_VALIDITY, TlsError};

const CA_DIR: &str = "ca";
const KEY_FILE: &str = "ca-key.pem";
/// The CA certificate in the state directory (public; the key is under ca/).
pub const CERT_FILE: &str = "ca.pem";
const RETIRED_DIR: &str = "ca-retired";
pub const BUNDLE_FILE: &str = "trust-bundle.pem";

/// The CA that signs leafs for the intercepted hosts.
pub struct LocalCa {
    /// The CA as rcgen needs it to sign (same name, key and key identifier
    /// as the certificate on disk).
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// The certificate exactly as written to `ca.pem`.
    cert_pem: String,
    /// Retired CA certificates still in the trust bundle.
    retired_pems: Vec<String>,
    /// The permitted hosts, lower case.
    hosts: BTreeSet<String>,
    state_dir: PathBuf,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("hosts", &self.hosts)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// The current CA certificate in `state_dir`, for `warrant ca export`
/// (reads only the public certificate, never the key).
pub fn ca_pem_in(state_dir: &Path) -> Result<String, TlsError> {
    let path = state_dir.join(CERT_FILE);
    fs::read_to_string(&path).map_err(TlsError::io(path))
}

impl LocalCa {
    /// Loads the CA from `state_dir`, or issues one (first start, changed
    /// host list, near expiry). `hosts` are the configured upstream hosts.
    pub fn load_or_create(state_dir: &Path, hosts: &[String]) -> Result<LocalCa, TlsError> {
        let hosts: BTreeSet<String> = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        ensure_dir(state_dir, 0o755)?;
        let ca_dir = state_dir.join(CA_DIR);
        ensure_dir(&ca_dir, 0o700)?;
        let key_path = ca_dir.join(KEY_FILE);
        let cert_path = state_dir.join(CERT_FILE);

        let existing = match fs::symlink_metadata(&key_path) {
            Ok(meta) => {
                check_key_file(&key_path, &meta)?;
                let key_pem = fs::read_to_string(&key_path).map_err(TlsError::io(&key_path))?;
                let key = KeyPair::from_pem(&key_pem)?;
                match fs::read_to_string(&cert_path) {
                    Ok(cert_pem) => Some((key, cert_pem)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(TlsError::io(&cert_path)(e)),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(TlsError::io(&key_path)(e)),
        };

        let (key, cert_pem) = match existing {
            Some((key, cert_pem)) if still_fits(&key, &cert_pem, &hosts) => (key, cert_pem),
            other => {
                if let Some((_, old_pem)) = other {
                    retire(state_dir, &old_pem)?;
                    tracing::info!(
                        hosts = ?hosts,
                        "the upstream hosts changed or the CA is near expiry; issuing a new CA"
                    );
                } else {
                    tracing::info!(hosts = ?hosts, "issuing the local CA");
                }
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                let cert = ca_params(&hosts)?.self_signed(&key)?;
                write_private(&key_path, key.serialize_pem().as_bytes())?;
                write_public(&cert_path, cert.pem().as_bytes())?;
                (key, cert.pem())
            }
        };
        // rcgen signs with a Certificate value; re-signing the stored params
        // gives one with the same subject and key identifier as `ca.pem`, so
        // leafs chain to the certificate agents trust.
        let issuer = CertificateParams::from_ca_cert_pem(&cert_pem)?.self_signed(&key)?;
        let retired_pems = load_retired(state_dir)?;
        Ok(LocalCa {
            issuer,
            key,
            cert_pem,
            retired_pems,
            hosts,
            state_dir: state_dir.to_owned(),
        })
    }

    /// The current CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Every CA certificate agents should trust: current, then retired.
    pub fn trusted_pems(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.cert_pem.as_str()).chain(self.retired_pems.iter().map(String::as_str))
    }

    /// Whether `host` (any letter case) is one the CA may sign for.
    pub fn permits(&self, host: &str) -> bool {
        self.hosts.contains(&host.to_ascii_lowercase())
    }

    pub fn trust_bundle_path(&self) -> PathBuf {
        self.state_dir.join(BUNDLE_FILE)
    }

    /// Writes `trust-bundle.pem`: `system_roots` then the CA(s). Returns its path.
    pub fn write_trust_bundle(
        &self,
        system_roots: &[CertificateDer<'static>],
    ) -> Result<PathBuf, TlsError> {
        let mut bundle = String::new();
        for root in system_roots {
            bundle.push_str(&pem::encode(&pem::Pem::new("CERTIFICATE", root.to_vec())));
        }
        for ca in self.trusted_pems() {
            bundle.push_str("# warrant local CA\n");
            bundle.push_str(ca);
        }
        let path = self.trust_bundle_path();
        write_public(&path, bundle.as_bytes())?;
        Ok(path)
    }

    /// Mints a leaf for `host`: (certificate chain, PKCS#8 key).
    pub(super) fn mint(&self, host: &str) -> Result<(CertificateDer<'static>, Vec<u8>), TlsError> {
        if !self.permits(host) {
            return Err(TlsError::NotIntercepted(host.to_owned()));
        }
        let host = host.to_ascii_lowercase();
        let mut params = CertificateParams::new(vec![host.clone()])?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, host);
        params.distinguished_name = name;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + LEAF_VALIDITY;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok((cert.der().clone(), key.serialize_der()))
    }
}

#[cfg(test)]
impl LocalCa {
    /// Signs anything, as a thief holding the key could (tests of the
    /// name constraints).
    pub(super) fn sign_unchecked(
        &self,
        params: CertificateParams,
        key: &KeyPair,
    ) -> Result<rcgen::Certificate, rcgen::Error> {
        params.signed_by(key, &self.issuer, &self.key)
    }
}

fn ca_params(hosts: &BTreeSet<String>) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "warrant local CA");
    name.push(DnType::OrganizationName, "warrant");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: hosts.iter().cloned().map(GeneralSubtree::DnsName).collect(),
        // DNS subtrees do not constrain IP SANs; exclude all addresses so the
        // CA cannot sign for an IP literal either.
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
            GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
        ],
    });
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + CA_VALIDITY;
    Ok(params)
}

/// Whether the stored CA can stay: same key, same permitted hosts, and not
/// near expiry.
fn still_fits(key: &KeyPair, cert_pem: &str, hosts: &BTreeSet<String>) -> bool {
    let Ok(params) = CertificateParams::from_ca_cert_pem(cert_pem) else {
        return false;
    };
    let Some(der) = rustls_pemfile::certs(&mut cert_pem.as_bytes()).find_map(Result::ok) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    if cert.public_key().raw != key.public_key_der().as_slice() {
        return false;
    }
    let permitted: BTreeSet<String> = params
        .name_constraints
        .iter()
        .flat_map(|nc| &nc.permitted_subtrees)
        .filter_map(|s| match s {
            GeneralSubtree::DnsName(name) => Some(name.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    let renew_at = params.not_after - CA_RENEW_BEFORE;
    &permitted == hosts && time::OffsetDateTime::now_utc() < renew_at
}

fn check_key_file(path: &Path, meta: &fs::Metadata) -> Result<(), TlsError> {
    if !meta.file_type().is_file() {
        return Err(TlsError::KeyNotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let expected = nix::unistd::geteuid().as_raw();
    if meta.uid() != expected {
        return Err(TlsError::KeyOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            expected,
        });
    }
    Ok(())
}

/// Moves the old CA certificate to `ca-retired/`, named by the time after
/// which no leaf it signed is valid.
fn retire(state_dir: &Path, old_pem: &str) -> Result<(), TlsError> {
    let dir = state_dir.join(RETIRED_DIR);
    ensure_dir(&dir, 0o755)?;
    let deadline = SystemTime::now() + LEAF_VALIDITY + CLOCK_SKEW;
    let secs = deadline
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let mut path = dir.join(format!("{secs}.pem"));
    let mut n = 0;
    while path.exists() {
        n += 1;
        path = dir.join(format!("{secs}-{n}.pem"));
    }
    write_public(&path, old_pem.as_bytes())
}

/// The retired certificates still within their deadline; expired ones are
/// deleted.
fn load_retired(state_dir: &Path) -> Result<Vec<String>, TlsError> {
    let dir = state_dir.join(RETIRED_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TlsError::io(&dir)(e)),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let mut kept = Vec::new();
    for entry in entries {
        let path = entry.map_err(TlsError::io(&dir))?.path();
        let deadline = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.split('-').next())
            .and_then(|s| s.parse::<u64>().ok());
        match deadline {
            Some(deadline) if deadline > now => {
                kept.push(fs::read_to_string(&path).map_err(TlsError::io(&path))?);
            }
            Some(_) => {
                fs::remove_file(&path).map_err(TlsError::io(&path))?;
            }
            None => tracing::warn!(path = %path.display(), "ignoring a stray file"),
        }
    }
    Ok(kept)
}

fn ensure_dir(path: &Path, mode: u32) -> Result<(), TlsError> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(TlsError::io(path)(e)),
    }
}

/// Writes a root-only file atomically: a 0600 temporary file, renamed.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    write_atomic(path, bytes, 0o600)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    write_atomic(path, bytes, 0o644)
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(TlsError::io(&tmp))?;
    file.write_all(bytes).map_err(TlsError::io(&tmp))?;
    file.sync_all().map_err(TlsError::io(&tmp))?;
    // The umask may have narrowed the mode; public files must stay readable.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(TlsError::io(&tmp))?;
    fs::rename(&tmp, path).map_err(TlsError::io(path))
}
