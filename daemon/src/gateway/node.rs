//! The node's side: its host key as a TLS client identity and as the
//! signer of statements.
//!
//! The key is the Ed25519 host key of the state directory (`attest::
//! instance::host` makes it on first start; `service` reads it). The
//! node's TLS client certificate is self-signed by it, so the gateway
//! learns the key from the handshake, where rustls has checked that the
//! node holds it, and enrolls nodes by that key alone; the certificate's
//! names and dates carry nothing.

use std::{path::Path, sync::Arc};

use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls::{
    ClientConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};
use zeroize::Zeroizing;

use super::{
    peer::node_certificate,
    statement::{self, Binding, InstanceFacts, ProcessFacts, Statement, StatementError},
};
use crate::tls::{self, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum NodeKeyError {
    #[error("the host key is not an Ed25519 PKCS#8 key: {0}")]
    Key(String),
    #[error("cannot make the node's client certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the gateway's TLS client configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The host key, its certificate and its public half.
pub struct NodeKey {
    /// PKCS#8 DER; wiped when dropped.
    der: Zeroizing<Vec<u8>>,
    public: [u8; 32],
    certificate: CertificateDer<'static>,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &self.public_text())
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    pub fn from_pkcs8(der: Vec<u8>) -> Result<NodeKey, NodeKeyError> {
        let der = Zeroizing::new(der);
        let pair =
            Ed25519KeyPair::from_pkcs8(&der).map_err(|e| NodeKeyError::Key(e.to_string()))?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| NodeKeyError::Key("a public key of other than 32 bytes".to_owned()))?;
        let certificate = node_certificate(&der)?;
        Ok(NodeKey {
            der,
            public,
            certificate,
        })
    }

    /// The public key's 32 bytes.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// "ed25519:<hex>": how `[[gateway.node]] public_key` names it.
    pub fn public_text(&self) -> String {
        format!("ed25519:{}", hex::encode(self.public))
    }

    /// The TLS client configuration toward the gateway: the system roots
    /// plus `ca_file`, ALPN h2 and http/1.1, and this key as the client
    /// certificate.
    pub fn client_config(
        &self,
        system_roots: &[CertificateDer<'static>],
        ca_file: Option<&Path>,
    ) -> Result<Arc<ClientConfig>, NodeKeyError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.der.to_vec()));
        Ok(tls::client_config_with_auth(
            system_roots,
            ca_file,
            Some((vec![self.certificate.clone()], key)),
        )?)
    }

    /// A fresh statement for one request, signed.
    pub fn sign(&self, unsigned: Unsigned, now: i64) -> Result<String, StatementError> {
        let statement = Statement {
            v: statement::VERSION,
            aud: unsigned.audience,
            iat: now,
            nonce: statement::new_nonce()?,
            req: unsigned.binding,
            workload: unsigned.workload,
            process: unsigned.process,
            instance: unsigned.instance,
        };
        statement::sign(&statement, &self.der, &hex::encode(self.public))
    }
}

/// What a statement says, before it is dated, given a nonce and signed.
#[derive(Debug, Clone)]
pub struct Unsigned {
    /// The gateway's name.
    pub audience: String,
    pub binding: Binding,
    pub workload: String,
    pub process: ProcessFacts,
    pub instance: InstanceFacts,
}
