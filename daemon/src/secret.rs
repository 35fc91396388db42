//! The one type that holds a real credential.
//!
//! A `Secret` cannot be printed, formatted, serialized or compared by accident:
//! it implements none of Display, Serialize or PartialEq, and its Debug prints
//! only a short non-reversible fingerprint. The bytes are zeroized on drop.
//! The only way to the value is `expose()`, whose call sites are the places a
//! credential legitimately leaves the daemon (the header splice, an issuer call).

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub struct Secret {
    value: Zeroizing<String>,
}

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret {
            value: Zeroizing::new(value),
        }
    }

    /// The credential itself. Call only where it is sent where it belongs.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// A short, non-reversible fingerprint for logs and audit records:
    /// the first 12 hex digits of SHA-256 over the value.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.value.as_bytes())
    }
}

/// The fingerprint of any credential-like value (also used for keys agents
/// send, so a finding can be reported without the key).
pub fn fingerprint(value: &[u8]) -> String {
    let digest = Sha256::digest(value);
    format!("sha256:{}", hex::encode(&digest[..6]))
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.fingerprint())
    }
}

impl Clone for Secret {
    fn clone(&self) -> Self {
        Secret::new(self.value.as_str().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_a_fingerprint_not_the_value() {
        let secret = Secret::new("sk-live-very-secret".to_owned());
        let shown = format!("{secret:?} {:#?}", secret);
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("sha256:"), "{shown}");
        assert_eq!(secret.expose(), "sk-live-very-secret");
    }

    #[test]
    fn fingerprints_differ_for_different_values_and_are_short() {
        let a = Secret::new("a".into()).fingerprint();
        let b = Secret::new("b".into()).fingerprint();
        assert_ne!(a, b);
        assert_eq!(a.len(), "sha256:".len() + 12);
    }
}
