//! Signed executables: an OpenSSH signature (sshsig) over the binary, made
//! with `ssh-keygen -Y sign -n warrant-exe -f key BINARY`, which writes
//! `BINARY.sig` beside it. A release can then ship new binaries without
//! anyone editing hashes in the configuration.
//!
//! Reading and hashing a binary costs milliseconds, so the outcome is cached
//! by the SHA-256 the attestation computed. The bytes verified are hashed
//! again here and must equal that SHA-256: a binary swapped between
//! attestation and verification is refused rather than trusted.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use jiff::Timestamp;
use sha2::{Digest, Sha256};
use ssh_key::{PublicKey, SshSig};

/// The default sshsig namespace for executable signatures.
pub const DEFAULT_NAMESPACE: &str = "warrant-exe";

/// How long a failed verification is remembered, so that a denied agent
/// retrying in a loop does not make the daemon re-read its binary each time,
/// while a signature installed a moment later is still noticed soon.
const NEGATIVE_CACHE_SECONDS: i64 = 30;

/// An `exe_signers` entry that is not a usable key.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("not an OpenSSH public key: {0}")]
    NotAKey(#[source] ssh_key::Error),
    #[error("exe_signers takes ed25519 keys, not {0}")]
    NotEd25519(ssh_key::Algorithm),
}

/// Why an executable's signature does not pass.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("cannot read executable {}: {source}", path.display())]
    ReadExecutable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("executable {} changed since it was attested", path.display())]
    Changed { path: PathBuf },
    #[error("no signature {}: {source}", path.display())]
    NoSignature {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unreadable signature {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: ssh_key::Error,
    },
    #[error("signed by a key that is not among exe_signers")]
    UnknownSigner,
    #[error("signature does not verify for namespace {namespace:?}: {source}")]
    DoesNotVerify {
        namespace: String,
        #[source]
        source: ssh_key::Error,
    },
}

#[derive(Debug)]
pub struct ExeSigners {
    keys: Vec<PublicKey>,
    namespace: String,
    cache: Mutex<HashMap<[u8; 32], Verdict>>,
}

#[derive(Debug, Clone)]
enum Verdict {
    Good(String),
    Bad {
        reason: Arc<SignatureError>,
        at: Timestamp,
    },
}

impl ExeSigners {
    /// `keys` are OpenSSH public key lines; only ed25519 keys are accepted.
    pub fn new(keys: &[&str], namespace: Option<&str>) -> Result<ExeSigners, SignerError> {
        let keys = keys
            .iter()
            .map(|line| parse_signer(line))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ExeSigners::from_keys(keys, namespace))
    }

    /// Signers from keys already parsed (`parse_signer`).
    pub fn from_keys(keys: Vec<PublicKey>, namespace: Option<&str>) -> ExeSigners {
        ExeSigners {
            keys,
            namespace: namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Checks `exe_path` (whose attested SHA-256 is `sha256`) against
    /// `exe_path.sig`. Ok carries the signer's fingerprint.
    pub fn check(
        &self,
        exe_path: &Path,
        sha256: &[u8; 32],
        now: Timestamp,
    ) -> Result<String, Arc<SignatureError>> {
        if let Ok(cache) = self.cache.lock() {
            match cache.get(sha256) {
                Some(Verdict::Good(signer)) => return Ok(signer.clone()),
                Some(Verdict::Bad { reason, at })
                    if now.as_second() - at.as_second() < NEGATIVE_CACHE_SECONDS =>
                {
                    return Err(reason.clone());
                }
                _ => {}
            }
        }
        let verdict = self.verify(exe_path, sha256).map_err(Arc::new);
        if let Ok(mut cache) = self.cache.lock() {
            let entry = match &verdict {
                Ok(signer) => Verdict::Good(signer.clone()),
                Err(reason) => Verdict::Bad {
                    reason: reason.clone(),
                    at: now,
                },
            };
            cache.insert(*sha256, entry);
        }
        verdict
    }

    fn verify(&self, exe_path: &Path, sha256: &[u8; 32]) -> Result<String, SignatureError> {
        let binary = std::fs::read(exe_path).map_err(|source| SignatureError::ReadExecutable {
            path: exe_path.to_owned(),
            source,
        })?;
        if Sha256::digest(&binary).as_slice() != sha256 {
            return Err(SignatureError::Changed {
                path: exe_path.to_owned(),
            });
        }
        let mut sig_path = exe_path.as_os_str().to_owned();
        sig_path.push(".sig");
        let sig_path = PathBuf::from(sig_path);
        let sig_text =
            std::fs::read_to_string(&sig_path).map_err(|source| SignatureError::NoSignature {
                path: sig_path.clone(),
                source,
            })?;
        let sig: SshSig = sig_text
            .parse()
            .map_err(|source| SignatureError::Unreadable {
                path: sig_path.clone(),
                source,
            })?;
        let key = self
            .keys
            .iter()
            .find(|k| k.key_data() == sig.public_key())
            .ok_or(SignatureError::UnknownSigner)?;
        key.verify(&self.namespace, &binary, &sig)
            .map_err(|source| SignatureError::DoesNotVerify {
                namespace: self.namespace.clone(),
                source,
            })?;
        Ok(key.fingerprint(ssh_key::HashAlg::Sha256).to_string())
    }
}

/// Parses one `exe_signers` entry.
pub fn parse_signer(line: &str) -> Result<PublicKey, SignerError> {
    let key = PublicKey::from_openssh(line.trim()).map_err(SignerError::NotAKey)?;
    if key.algorithm() != ssh_key::Algorithm::Ed25519 {
        return Err(SignerError::NotEd25519(key.algorithm()));
    }
    Ok(key)
}
