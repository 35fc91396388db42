//! Loopback scaffolding shared by the proxy and usage benchmarks: a mock
//! provider behind TLS (its certificate from a throwaway CA), the injector
//! in-process with `StaticOrigins` (as the tests run it), and an HTTP/1.1
//! TLS client that reaches either. Everything stays on 127.0.0.1.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
};
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use warrant::{
    audit::Audit,
    config::Config,
    credentials::StaticCredentials,
    origin::{Origin, StaticOrigins},
    proxy::{AllowAll, FixedGeneration, Injector, RequestGate},
    response::Responder,
    tls::{LeafCache, LocalCa},
};

/// The upstream every benchmark request goes to.
pub const HOST: &str = "api.openai.com";
/// The credential the injector splices in.
pub const CREDENTIAL: &str = "sk-bench-credential-0123456789";

/// The mock provider's CA and its certificate for [`HOST`].
pub struct MockCa {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    /// The CA in PEM, written for the injector's `ca_file`.
    pub pem_file: PathBuf,
}

impl MockCa {
    pub fn new(dir: &Path) -> MockCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: OpenSSL (nginx) takes a leaf whose subject equals
        // its issuer for a self-signed certificate.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bench mock CA");
        let cert = params.self_signed(&key).unwrap();
        let pem_file = dir.join("mock-ca.pem");
        std::fs::write(&pem_file, cert.pem()).unwrap();
        MockCa {
            cert,
            key,
            pem_file,
        }
    }

    /// A leaf for [`HOST`] and its key, signed by this CA.
    pub fn leaf(&self) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![HOST.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, HOST);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert, key)
    }

    /// A TLS acceptor for the mock: h2 and http/1.1.
    pub fn acceptor(&self) -> TlsAcceptor {
        let (cert, key) = self.leaf();
        let mut server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(server))
    }
}

pub type MockBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
pub type Respond = Arc<dyn Fn(Request<()>) -> Response<MockBody> + Send + Sync>;

/// Serves `respond` on a free loopback port behind `acceptor`.
pub async fn start_mock(acceptor: TlsAcceptor, respond: Respond) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let respond = respond.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let respond = respond.clone();
                    async move {
                        // Read the request body as a real API does: an h2
                        // server that answers before it has read the body
                        // resets the stream, and after many resets it sends
                        // GOAWAY (rapid reset protection), which would
                        // measure the mock.
                        let (parts, body) = req.into_parts();
                        let _ = body.collect().await;
                        Ok::<_, std::convert::Infallible>(respond(Request::from_parts(parts, ())))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// The injector, listening on a free loopback port, forwarding [`HOST`] to
/// the mock (whose CA is `mock_ca`) with [`CREDENTIAL`], under `gate` (the
/// default gate allows everything). Returns its address, the origins table
/// its clients register in, and its local CA (for the client's roots).
pub async fn start_injector(
    state: &Path,
    mock_ca: &Path,
    gate: Option<Arc<dyn RequestGate>>,
) -> (SocketAddr, Arc<StaticOrigins>, Arc<LocalCa>) {
    let text = format!(
        "[daemon]\nstate_dir = \"{}\"\n[[upstream]]\nhost = \"{HOST}\"\nscheme = \"openai\"\ncredential = \"c\"\nca_file = \"{}\"\n[[credential]]\nname = \"c\"\nsource = \"file\"\npath = \"/nonexistent\"\n",
        state.display(),
        mock_ca.display()
    );
    let config = Config::parse(&text, "bench").unwrap();
    let local_ca = Arc::new(LocalCa::load_or_create(state, &[HOST.to_owned()]).unwrap());
    let origins = Arc::new(StaticOrigins::default());
    let credentials = Arc::new(StaticCredentials::default().with("c", CREDENTIAL));
    let gate = gate.unwrap_or_else(|| Arc::new(AllowAll));
    let injector = Injector::new(
        &config,
        Arc::new(LeafCache::new(local_ca.clone())),
        origins.clone(),
        FixedGeneration::serve(gate, credentials),
        Responder::without_rules(Audit::disabled()),
        &[],
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Arc::new(injector).serve(listener));
    (addr, origins, local_ca)
}

/// A client configuration trusting the CA certificates in `pem`.
pub fn roots(pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Where a benchmark client connects: the mock itself, a reverse proxy, or
/// the injector.
pub struct Target {
    pub addr: SocketAddr,
    pub roots: Arc<ClientConfig>,
    /// Set for the injector: each connection gets an Origin pointing at the mock.
    pub origins: Option<Arc<StaticOrigins>>,
    pub mock: SocketAddr,
}

pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Target {
    pub async fn connect(&self) -> Sender {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        if let Some(origins) = &self.origins {
            origins.insert(
                socket.local_addr().unwrap(),
                Origin {
                    original_dst: self.mock,
                    pid: 1,
                    tgid: 1,
                    uid: 1000,
                    gid: 1000,
                    cgroup_id: 1,
                    exec_gen: 0,
                    connect_boot_ns: 0,
                },
            );
        }
        let tcp = socket.connect(self.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = TlsConnector::from(self.roots.clone())
            .connect(ServerName::try_from(HOST).unwrap(), tcp)
            .await
            .unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    }
}

/// A chat request as an agent sends it, with a placeholder key.
pub fn request(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri(path)
        .header("host", HOST)
        .header("authorization", "Bearer placeholder")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            b"{\"model\":\"gpt-4o\",\"max_tokens\":1000,\"stream\":true,\"messages\":[]}",
        )))
        .unwrap()
}

/// Sends one request and reads the whole response: its body's length.
pub async fn one(send: &mut Sender, path: &str) -> usize {
    send.ready().await.unwrap();
    let response = send.send_request(request(path)).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let mut body = response.into_body();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            len += data.len();
        }
    }
    len
}
