//! Signed executables: an OpenSSH signature (sshsig) over the binary, made
//! with `ssh-keygen -Y sign -n warrant-exe -f key BINARY`, which writes
//! `BINARY.sig` beside it. A release can then ship new binaries without
//! anyone editing hashes in the configuration.
//!
//! Reading and hashing a binary costs milliseconds, so the outcome is cached
//! by the SHA-256 the attestation computed. The bytes verified are hashed
//! again here and must equal that SHA-256: a binary swapped between
//! attestation and verification is refused rather than trusted.

use std::{collections::HashMap, path::Path, sync::Mutex};

use jiff::Timestamp;
use sha2::{Digest, Sha256};
use ssh_key::{PublicKey, SshSig};

/// The default sshsig namespace for executable signatures.
pub const DEFAULT_NAMESPACE: &str = "warrant-exe";

/// How long a failed verification is remembered, so that a denied agent
/// retrying in a loop does not make the daemon re-read its binary each time,
/// while a signature installed a moment later is still noticed soon.
const NEGATIVE_CACHE_SECONDS: i64 = 30;

#[derive(Debug)]
pub struct ExeSigners {
    keys: Vec<PublicKey>,
    namespace: String,
    cache: Mutex<HashMap<[u8; 32], Verdict>>,
}

#[derive(Debug, Clone)]
enum Verdict {
    Good(String),
    Bad { reason: String, at: Timestamp },
}

impl ExeSigners {
    /// `keys` are OpenSSH public key lines; only ed25519 keys are accepted.
    pub fn new(keys: &[&str], namespace: Option<&str>) -> Result<ExeSigners, String> {
        let keys = keys
            .iter()
            .map(|line| parse_signer(line))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ExeSigners {
            keys,
            namespace: namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Checks `exe_path` (whose attested SHA-256 is `sha256`) against
    /// `exe_path.sig`. Ok carries the signer's fingerprint.
    pub fn check(
        &self,
        exe_path: &Path,
        sha256: &[u8; 32],
        now: Timestamp,
    ) -> Result<String, String> {
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
        let verdict = self.verify(exe_path, sha256);
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

    fn verify(&self, exe_path: &Path, sha256: &[u8; 32]) -> Result<String, String> {
        let binary = std::fs::read(exe_path)
            .map_err(|e| format!("cannot read executable {}: {e}", exe_path.display()))?;
        if Sha256::digest(&binary).as_slice() != sha256 {
            return Err(format!(
                "executable {} changed since it was attested",
                exe_path.display()
            ));
        }
        let mut sig_path = exe_path.as_os_str().to_owned();
        sig_path.push(".sig");
        let sig_text = std::fs::read_to_string(&sig_path)
            .map_err(|e| format!("no signature {}: {e}", Path::new(&sig_path).display()))?;
        let sig: SshSig = sig_text.parse().map_err(|e| {
            format!(
                "unreadable signature {}: {e}",
                Path::new(&sig_path).display()
            )
        })?;
        let key = self
            .keys
            .iter()
            .find(|k| k.key_data() == sig.public_key())
            .ok_or_else(|| "signed by a key that is not among exe_signers".to_owned())?;
        key.verify(&self.namespace, &binary, &sig).map_err(|e| {
            format!(
                "signature does not verify for namespace {:?}: {e}",
                self.namespace
            )
        })?;
        Ok(key.fingerprint(ssh_key::HashAlg::Sha256).to_string())
    }
}

/// Parses one `exe_signers` entry; used by config validation too.
pub fn parse_signer(line: &str) -> Result<PublicKey, String> {
    let key = PublicKey::from_openssh(line.trim())
        .map_err(|e| format!("not an OpenSSH public key: {e}"))?;
    if key.algorithm() != ssh_key::Algorithm::Ed25519 {
        return Err(format!(
            "exe_signers takes ed25519 keys, not {}",
            key.algorithm()
        ));
    }
    Ok(key)
}
