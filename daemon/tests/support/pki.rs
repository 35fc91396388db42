//! A throwaway CA standing in for the public PKI, the mock providers'
//! certificate, and TLS clients that trust a given CA.

use std::{path::PathBuf, sync::Arc};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

use crate::injector::{ANTHROPIC, GEMINI, OPENAI};

/// A throwaway CA standing in for the public PKI, and the mock's certificate.
pub struct TestPki {
    pub ca_pem: String,
    pub ca_file: PathBuf,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> TestPki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test public CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![
            OPENAI.to_owned(),
            ANTHROPIC.to_owned(),
            GEMINI.to_owned(),
            "other.example".to_owned(),
        ])
        .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("test-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        TestPki {
            ca_pem: ca.pem(),
            ca_file,
            server_chain: vec![cert.der().clone()],
            server_key: key.serialize_der(),
            _dir: dir,
        }
    }

    pub fn roots(&self) -> RootCertStore {
        roots_from_pem(&self.ca_pem)
    }

    /// A TLS acceptor for a mock provider with this PKI's server
    /// certificate, speaking `alpn` (e.g. h2 and http/1.1).
    pub fn acceptor(&self, alpn: &[&[u8]]) -> TlsAcceptor {
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                self.server_chain.clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone())),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }
}

pub fn roots_from_pem(pem: &str) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

pub async fn tls_over(
    tcp: TcpStream,
    roots: RootCertStore,
    sni: &str,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .unwrap()
}
