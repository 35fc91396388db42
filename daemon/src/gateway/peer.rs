//! Who is at the other end of a gateway connection, as its TLS client
//! certificate says.
//!
//! The TLS layer ([`AnyClientCert`]) offers client authentication and
//! accepts any well-formed certificate whose key made the handshake's
//! signature (rustls checks CertificateVerify with the certificate's own
//! key, so possession of the key is proven), and nothing more: what the
//! certificate is worth is decided once the handshake is done
//! ([`classify`]), so that a certificate that identifies nobody gets an
//! HTTP answer that says why, in the provider's shape, rather than a bare
//! TLS alert. A self-signed Ed25519 certificate is a node's host key (its
//! enrollment is looked up by the key); any other is an X.509-SVID
//! verified against the configured SPIFFE bundle (`svid`), or nothing.

use std::sync::Arc;

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::svid::{Svid, SvidVerifier};

/// The OID of Ed25519 keys (RFC 8410).
const ED25519_OID: &str = "1.3.101.112";

/// What a connection's client certificate establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate.
    Anonymous,
    /// A self-signed Ed25519 certificate: a host key, an enrolled node's if
    /// `nodes` knows it.
    Key([u8; 32]),
    /// A verified X.509-SVID.
    Svid(Svid),
    /// A certificate that is neither; why.
    Unverified(String),
}

/// Classifies the client certificate chain of a finished handshake.
pub fn classify(chain: Option<&[CertificateDer<'static>]>, svid: Option<&SvidVerifier>) -> Peer {
    let Some(chain) = chain.filter(|c| !c.is_empty()) else {
        return Peer::Anonymous;
    };
    let Ok((_, leaf)) = X509Certificate::from_der(&chain[0]) else {
        return Peer::Unverified("the client certificate cannot be read".to_owned());
    };
    let spki = leaf.public_key();
    let self_signed = leaf.subject() == leaf.issuer() && chain.len() == 1;
    if self_signed && spki.algorithm.algorithm.to_id_string() == ED25519_OID {
        return match <[u8; 32]>::try_from(spki.subject_public_key.data.as_ref()) {
            Ok(key) => Peer::Key(key),
            Err(_) => Peer::Unverified("a malformed Ed25519 key".to_owned()),
        };
    }
    match svid {
        Some(verifier) => match verifier.verify(chain, UnixTime::now()) {
            Ok(svid) => Peer::Svid(svid),
            Err(why) => Peer::Unverified(why.to_string()),
        },
        None => Peer::Unverified(
            "the client certificate is not a node's host key (a self-signed Ed25519 certificate), and this gateway accepts no X.509-SVIDs (no [gateway] svid_bundle)"
                .to_owned(),
        ),
    }
}

/// Client authentication offered, optional, and any certificate accepted
/// whose key signs the handshake; see the module comment.
#[derive(Debug)]
pub struct AnyClientCert {
    schemes: WebPkiSupportedAlgorithms,
}

impl AnyClientCert {
    pub fn new() -> Arc<AnyClientCert> {
        Arc::new(AnyClientCert {
            schemes: crate::tls::provider().signature_verification_algorithms,
        })
    }
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: clients send the one certificate they have.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        match X509Certificate::from_der(end_entity) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(_) => Err(Error::InvalidCertificate(CertificateError::BadEncoding)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.schemes)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.schemes)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.supported_schemes()
    }
}

/// A self-signed certificate for an Ed25519 host key (PKCS#8 DER): what a
/// node presents to its gateway. Its names and dates mean nothing; the
/// key is the identity.
pub fn node_certificate(key_der: &[u8]) -> Result<CertificateDer<'static>, rcgen::Error> {
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(key_der.to_vec());
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
    let mut params = rcgen::CertificateParams::new(vec!["warrant-node".to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "warrant node");
    let cert = params.self_signed(&key)?;
    Ok(cert.der().clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;

    #[test]
    fn a_node_certificate_is_classified_by_its_key() {
        let der = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
        let cert = node_certificate(der.as_ref()).unwrap();
        let key: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
        assert_eq!(classify(Some(&[cert]), None), Peer::Key(key));
        assert_eq!(classify(None, None), Peer::Anonymous);
    }

    #[test]
    fn another_certificate_identifies_nobody() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["agent".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap().der().clone();
        assert!(matches!(
            classify(Some(&[cert]), None),
            Peer::Unverified(why) if why.contains("not a node's host key")
        ));
    }
}
