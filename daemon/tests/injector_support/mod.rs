//! Shared pieces of the injector tests: a mock provider on loopback with its
//! own throwaway CA, the injector started in-process with `StaticOrigins`,
//! clients that trust warrant's CA, and a log capture. Loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::{
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{Notify, mpsc},
};
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};
use warrant::{
    audit::Audit,
    config::Config,
    credentials::StaticCredentials,
    origin::{Origin, StaticOrigins},
    proxy::{AllowAll, FixedGeneration, Injector, RequestGate},
    response::Responder,
    tls::{LeafCache, LocalCa},
};

pub const OPENAI_KEY: &str = "sk-REAL-openai-0123456789abcdefghijklmnopqrstuvwxyz";
pub const ANTHROPIC_KEY: &str = "sk-ant-api03-REAL-anthropic-0123456789abcdefghij";
pub const GEMINI_KEY: &str = "AIzaREAL-gemini-0123456789abcdefghijklmno";
pub const SECRETS: [&str; 3] = [OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY];
pub const PLACEHOLDER: &str = "placeholder";

pub const OPENAI: &str = "api.openai.com";
pub const ANTHROPIC: &str = "api.anthropic.com";
pub const GEMINI: &str = "generativelanguage.googleapis.com";
pub const MISSING: &str = "api.mistral.ai";

// ---------------------------------------------------------------- logs

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log line of the process (all levels).
pub fn capture_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| LogWriter)
            .try_init();
    });
}

pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

pub fn assert_no_secret_in_logs() {
    let logs = logs();
    for secret in SECRETS {
        assert!(!logs.contains(secret), "a credential appeared in the logs");
    }
}

// ---------------------------------------------------------------- test CA

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

// ---------------------------------------------------------------- mock upstream

/// What the mock received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: Version,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

pub struct Mock {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Lets the SSE response continue after its first event.
    pub release: Arc<Notify>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Bodies of /v1/chat/completions requests, whole.
    pub bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    pub cert: CertificateDer<'static>,
}

impl Mock {
    /// A TLS mock provider speaking `alpn` (e.g. h2 and http/1.1).
    pub async fn start(pki: &TestPki, alpn: &[&[u8]]) -> Mock {
        Self::start_with(
            Some(pki.acceptor(alpn)),
            pki.server_chain[0].clone(),
            "127.0.0.1",
        )
        .await
    }

    /// A plain-HTTP mock (an internal gateway on port 80) on `ip`.
    pub async fn start_plain(pki: &TestPki, ip: &str) -> Mock {
        Self::start_with(None, pki.server_chain[0].clone(), ip).await
    }

    async fn start_with(tls: Option<TlsAcceptor>, cert: CertificateDer<'static>, ip: &str) -> Mock {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let connections = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (s, r, c, b) = (
            seen.clone(),
            release.clone(),
            connections.clone(),
            bodies.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (seen, release, tls, bodies) = (s.clone(), r.clone(), tls.clone(), b.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (seen, release, bodies) =
                            (seen.clone(), release.clone(), bodies.clone());
                        async move {
                            // An upstream that never answers (until released).
                            if req.uri().path() == "/v1/hang" {
                                release.notified().await;
                            }
                            // Chat completions: the whole body is read and kept.
                            if req.uri().path() == "/v1/chat/completions" {
                                let (parts, body) = req.into_parts();
                                let bytes = body.collect().await.unwrap().to_bytes();
                                bodies.lock().unwrap().push(bytes.to_vec());
                                let req = Request::from_parts(parts, ());
                                return Ok(mock_handle(req, seen, release));
                            }
                            Ok::<_, std::convert::Infallible>(mock_handle(req, seen, release))
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                                .await;
                        }
                    }
                });
            }
        });
        Mock {
            addr,
            seen,
            release,
            connections,
            bodies,
            cert,
        }
    }

    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

type MockBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn full(text: impl Into<Bytes>) -> MockBody {
    Full::new(text.into()).boxed()
}

fn mock_handle<B>(
    mut req: Request<B>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
) -> Response<MockBody> {
    seen.lock().unwrap().push(Seen {
        version: req.version(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        headers: req.headers().clone(),
    });
    match req.uri().path() {
        "/v1/sse" => {
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"data: {\"n\":1}\n\n"))
                    .await
                    .unwrap();
                release.notified().await;
                tx.send(Bytes::from_static(b"data: {\"n\":2}\n\n"))
                    .await
                    .unwrap();
                tx.send(Bytes::from_static(b"data: [DONE]\n\n"))
                    .await
                    .unwrap();
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(ChannelBody(rx).boxed())
                .unwrap()
        }
        "/v1/echo" => {
            // Like a provider's 401 that repeats the key it was given.
            let key = ["authorization", "x-api-key", "x-goog-api-key"]
                .iter()
                .find_map(|h| req.headers().get(*h))
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body =
                format!("{{\"error\":{{\"message\":\"Incorrect API key provided: {key}\"}}}}");
            Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("content-type", "application/json")
                .header("content-length", body.len())
                .header("x-request-key", key.clone())
                .body(full(body))
                .unwrap()
        }
        "/v1/realtime" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let upgraded = upgrade.await.unwrap();
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 64];
                // Echo until the peer closes.
                loop {
                    let n = io.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    io.write_all(&buf[..n]).await.unwrap();
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(full(""))
                .unwrap()
        }
        _ => Response::builder()
            .header("content-type", "application/json")
            .body(full("{\"ok\":true}"))
            .unwrap(),
    }
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

// ---------------------------------------------------------------- the injector

pub struct Harness {
    pub proxy: SocketAddr,
    pub proxy6: Option<SocketAddr>,
    pub origins: Arc<StaticOrigins>,
    pub warrant_ca_pem: String,
    /// The trust bundle the injector wrote (no system roots in tests).
    pub trust_bundle: PathBuf,
    pub state_dir: tempfile::TempDir,
    /// The injector's responder (no automated rules; audit disabled,
    /// metrics live).
    pub responder: Arc<Responder>,
}

pub fn config_text(state_dir: &std::path::Path, ca_file: &std::path::Path, extra: &str) -> String {
    let ca = ca_file.display();
    format!(
        r#"
[daemon]
state_dir = "{state}"

{extra}

[[upstream]]
host = "{OPENAI}"
scheme = "openai"
credential = "openai"
ca_file = "{ca}"

[[upstream]]
host = "{ANTHROPIC}"
scheme = "anthropic"
credential = "anthropic"
ca_file = "{ca}"

[[upstream]]
host = "{GEMINI}"
scheme = "gemini"
credential = "gemini"
ca_file = "{ca}"

# An internal gateway reached over plain HTTP ("localhost" so that the
# destination check resolves it without DNS).
[[upstream]]
host = "localhost"
scheme = "generic"
header = "x-gateway-token"
credential = "openai"
plain_http = true

# An upstream whose credential the test source does not have.
[[upstream]]
host = "{MISSING}"
scheme = "openai"
credential = "missing"
ca_file = "{ca}"

[[credential]]
name = "missing"
source = "file"
path = "/nonexistent/missing"

[[credential]]
name = "openai"
source = "file"
path = "/nonexistent/openai"

[[credential]]
name = "anthropic"
source = "file"
path = "/nonexistent/anthropic"

[[credential]]
name = "gemini"
source = "file"
path = "/nonexistent/gemini"
"#,
        state = state_dir.display()
    )
}

impl Harness {
    pub async fn start(pki: &TestPki) -> Harness {
        Self::start_with(pki, "", None).await
    }

    /// Starts the injector on 127.0.0.1:0 with `extra` TOML (e.g. a
    /// `[proxy]` section) and a gate (None: [`AllowAll`]).
    pub async fn start_with(
        pki: &TestPki,
        extra: &str,
        gate: Option<Arc<dyn RequestGate>>,
    ) -> Harness {
        capture_logs();
        let state_dir = tempfile::tempdir().unwrap();
        let text = config_text(state_dir.path(), &pki.ca_file, extra);
        let config = Config::parse(&text, "test").unwrap();
        let hosts: Vec<String> = config
            .upstreams
            .iter()
            .map(|u| u.host.get_ref().clone())
            .collect();
        let ca = Arc::new(LocalCa::load_or_create(state_dir.path(), &hosts).unwrap());
        let warrant_ca_pem = ca.ca_pem().to_owned();
        let trust_bundle = ca.write_trust_bundle(&[]).unwrap();
        let leafs = Arc::new(LeafCache::new(ca));
        let origins = Arc::new(StaticOrigins::default());
        let credentials = Arc::new(
            StaticCredentials::default()
                .with("openai", OPENAI_KEY)
                .with("anthropic", ANTHROPIC_KEY)
                .with("gemini", GEMINI_KEY),
        );
        let gate = gate.unwrap_or_else(|| Arc::new(AllowAll));
        let responder = Responder::without_rules(Audit::disabled());
        let injector = Injector::new(
            &config,
            leafs,
            origins.clone(),
            FixedGeneration::serve(gate, credentials),
            responder.clone(),
            &[],
        )
        .unwrap();
        // Bound before the accept loop starts: connections wait in the backlog.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let injector = Arc::new(injector);
        tokio::spawn(injector.clone().serve(listener));
        // The same injector behind an IPv6 listener, where the host has ::1.
        let proxy6 = match TcpListener::bind("[::1]:0").await {
            Ok(listener6) => {
                let addr = listener6.local_addr().unwrap();
                tokio::spawn(injector.serve(listener6));
                Some(addr)
            }
            Err(_) => None,
        };
        Harness {
            proxy,
            proxy6,
            origins,
            warrant_ca_pem,
            trust_bundle,
            state_dir,
            responder,
        }
    }

    /// A TCP connection to the injector as a redirected agent socket whose
    /// original destination was `dst` (its Origin is registered first).
    pub async fn connect(&self, dst: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let local = socket.local_addr().unwrap();
        self.origins.insert(local, origin(dst));
        socket.connect(self.proxy).await.unwrap()
    }

    /// Like `connect`, from ::1 to the IPv6 listener (None without IPv6).
    pub async fn connect6(&self, dst: SocketAddr) -> Option<TcpStream> {
        let proxy6 = self.proxy6?;
        let socket = TcpSocket::new_v6().unwrap();
        socket.bind("[::1]:0".parse().unwrap()).ok()?;
        let local = socket.local_addr().unwrap();
        self.origins.insert(local, origin(dst));
        Some(socket.connect(proxy6).await.unwrap())
    }

    /// A connection without an Origin (a process dialling the listener).
    pub async fn connect_directly(&self) -> TcpStream {
        TcpStream::connect(self.proxy).await.unwrap()
    }

    /// TLS to the injector for `sni`, trusting warrant's CA.
    pub async fn tls(&self, dst: SocketAddr, sni: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let tcp = self.connect(dst).await;
        tls_over(tcp, roots_from_pem(&self.warrant_ca_pem), sni, alpn).await
    }

    pub async fn h1(&self, dst: SocketAddr, sni: &str) -> Sender {
        let tls = self.tls(dst, sni, &[b"http/1.1"]).await;
        Sender::h1(tls).await
    }

    pub async fn h2(&self, dst: SocketAddr, sni: &str) -> Sender {
        let tls = self.tls(dst, sni, &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        Sender::h2(tls).await
    }
}

pub fn origin(dst: SocketAddr) -> Origin {
    Origin {
        original_dst: dst,
        pid: 4242,
        tgid: 4242,
        uid: 1001,
        gid: 1001,
        cgroup_id: 77,
        exec_gen: 0,
        connect_boot_ns: 0,
    }
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

/// An agent-side HTTP connection, h1 or h2.
pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    pub async fn h1<S>(io: S) -> Sender
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        Sender::H1(send)
    }

    pub async fn h2<S>(io: S) -> Sender
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        Sender::H2(send)
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        match self {
            Sender::H1(s) => s.send_request(req).await.unwrap(),
            Sender::H2(s) => s.send_request(req).await.unwrap(),
        }
    }
}

/// A request to `host` as an SDK with a placeholder key would send it.
pub fn request(host: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(format!("https://{host}{path}"))
        .header("host", host)
        .header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from_static(b"{\"model\":\"gpt-4o\"}")))
        .unwrap()
}

pub async fn body_text(response: Response<Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A port on which nothing listens (bound, then closed).
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}
