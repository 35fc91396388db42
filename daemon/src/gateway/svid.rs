//! SPIFFE identities: X.509-SVIDs presented as TLS client certificates,
//! and the SPIFFE IDs they and JWT-SVIDs (in their `sub`) name.
//!
//! An X.509-SVID is accepted when webpki verifies its chain to the
//! configured trust bundle (validity, signatures, basic constraints, the
//! client-auth purpose), it is not itself a CA, and it names exactly one
//! URI SAN, a SPIFFE ID in the configured trust domain (a CA of the bundle
//! cannot vouch for another domain's workloads). The SPIFFE ID rules are those of the SPIFFE ID standard: `spiffe://`, a
//! lower-case trust domain, a path of non-empty segments other than `.`
//! and `..` of letters, digits, `.`, `-` and `_`; no query, no fragment,
//! no port or user info. A token's SPIFFE ID must be in the trust domain
//! configured for its issuer: an issuer cannot vouch for another domain's
//! workloads.

use std::{path::Path, sync::Arc};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, UnixTime},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Why the SVID trust bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SvidConfigError {
    #[error("cannot read [gateway] svid_bundle {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("[gateway] svid_bundle {0}: no usable CA certificate")]
    NoRoots(String),
    #[error("the SVID verifier cannot be built: {0}")]
    Build(#[from] rustls::server::VerifierBuilderError),
    #[error("[gateway] svid_trust_domain: {0}")]
    TrustDomain(#[source] BadSpiffeId),
}

/// Why a client certificate is not an SVID of the trust domain.
#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("the client certificate does not chain to the SPIFFE trust bundle: {0}")]
    Chain(#[source] rustls::Error),
    #[error("the client certificate cannot be read")]
    Unreadable,
    #[error("the client certificate is a CA certificate, not an SVID")]
    Ca,
    #[error("the client certificate names {0} URI SANs; an SVID names exactly one SPIFFE ID")]
    Uris(usize),
    #[error("the client certificate's SPIFFE ID is refused: {0}")]
    Id(#[source] BadSpiffeId),
}

/// A verified X.509-SVID: its SPIFFE ID, when it expires, and a
/// fingerprint of the certificate for the audit line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svid {
    pub id: String,
    pub trust_domain: String,
    pub not_after: i64,
    pub fingerprint: String,
}

/// Verifies client certificates as X.509-SVIDs of one trust domain.
pub struct SvidVerifier {
    verifier: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl SvidVerifier {
    pub fn load(bundle: &Path, trust_domain: &str) -> Result<SvidVerifier, SvidConfigError> {
        let pem = std::fs::read(bundle).map_err(|source| SvidConfigError::Read {
            path: bundle.display().to_string(),
            source,
        })?;
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(rustls_pemfile::certs(&mut pem.as_slice()).flatten());
        if roots.is_empty() {
            return Err(SvidConfigError::NoRoots(bundle.display().to_string()));
        }
        check_trust_domain(trust_domain).map_err(SvidConfigError::TrustDomain)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
                .build()?;
        Ok(SvidVerifier {
            verifier,
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// The SVID `chain` (end entity first) is, at `now`.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'static>],
        now: UnixTime,
    ) -> Result<Svid, SvidError> {
        let (leaf, intermediates) = chain.split_first().ok_or(SvidError::Unreadable)?;
        self.verifier
            .verify_client_cert(leaf, intermediates, now)
            .map_err(SvidError::Chain)?;
        let (_, cert) = X509Certificate::from_der(leaf).map_err(|_| SvidError::Unreadable)?;
        if cert.is_ca() {
            return Err(SvidError::Ca);
        }
        let uris: Vec<&str> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::URI(uri) => Some(*uri),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let [one] = uris.as_slice() else {
            return Err(SvidError::Uris(uris.len()));
        };
        let id = parse_spiffe_id(one, &self.trust_domain).map_err(SvidError::Id)?;
        Ok(Svid {
            id,
            trust_domain: self.trust_domain.clone(),
            not_after: cert.validity().not_after.timestamp(),
            fingerprint: crate::secret::fingerprint(leaf.as_ref()),
        })
    }
}

/// Why a SPIFFE ID is refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadSpiffeId(String);

/// `id` if it is a SPIFFE ID in `trust_domain`, else why not.
pub fn parse_spiffe_id(id: &str, trust_domain: &str) -> Result<String, BadSpiffeId> {
    let bad = |why: String| Err(BadSpiffeId(why));
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return bad(format!("{id:?} does not start with spiffe://"));
    };
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    check_trust_domain(domain)?;
    if domain != trust_domain {
        return bad(format!(
            "{id:?} is in trust domain {domain:?}, not {trust_domain:?}"
        ));
    }
    if path.is_empty() {
        return bad(format!("{id:?} names a trust domain, not a workload"));
    }
    for segment in path.split('/') {
        let ok = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        if !ok {
            return bad(format!("{id:?} has a bad path segment {segment:?}"));
        }
    }
    Ok(id.to_owned())
}

fn check_trust_domain(domain: &str) -> Result<(), BadSpiffeId> {
    let ok = !domain.is_empty()
        && domain.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(BadSpiffeId(format!(
            "trust domain {domain:?} must be lower-case letters, digits, '.', '-' or '_' (no port, no user info)"
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

    use super::*;

    fn ca() -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        (params.self_signed(&key).unwrap(), key)
    }

    fn leaf(ca: &(rcgen::Certificate, KeyPair), uris: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.signed_by(&key, &ca.0, &ca.1).unwrap().der().clone()
    }

    #[test]
    fn an_svid_names_one_spiffe_id_of_its_domain_and_chains_to_the_bundle() {
        let trusted = ca();
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, trusted.0.pem()).unwrap();
        let verifier = SvidVerifier::load(&bundle, "example.org").unwrap();
        let now = UnixTime::now();
        let good = leaf(&trusted, &["spiffe://example.org/agents/a"]);
        assert_eq!(
            verifier.verify(&[good], now).unwrap().id,
            "spiffe://example.org/agents/a"
        );
        let two = leaf(
            &trusted,
            &["spiffe://example.org/a", "spiffe://example.org/b"],
        );
        assert!(matches!(
            verifier.verify(&[two], now),
            Err(SvidError::Uris(2))
        ));
        let none = leaf(&trusted, &[]);
        assert!(matches!(
            verifier.verify(&[none], now),
            Err(SvidError::Uris(0))
        ));
        let other = leaf(&trusted, &["spiffe://other.org/a"]);
        assert!(matches!(
            verifier.verify(&[other], now),
            Err(SvidError::Id(_))
        ));
        let foreign = leaf(&ca(), &["spiffe://example.org/agents/a"]);
        assert!(matches!(
            verifier.verify(&[foreign], now),
            Err(SvidError::Chain(_))
        ));
    }

    #[test]
    fn spiffe_ids_follow_the_standard() {
        let ok = |id: &str| parse_spiffe_id(id, "example.org");
        assert!(ok("spiffe://example.org/ns/agents/sa/support").is_ok());
        for bad in [
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://example.org/a//b",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a?x=1",
            "spiffe://example.org/a#f",
            "spiffe://Example.org/a",
            "spiffe://example.org:443/a",
            "spiffe://user@example.org/a",
            "spiffe://other.org/a",
            "https://example.org/a",
        ] {
            assert!(ok(bad).is_err(), "{bad} was accepted");
        }
    }
}
