//! The injector in-process and unprivileged: the real `Injector` with
//! `StaticOrigins` standing in for the eBPF maps (each test connection
//! registers the Origin the kernel would have recorded), static
//! credentials, and agent-side h1/h2 clients trusting warrant's CA.
//! Loopback only.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use warrant::{
    audit::Audit,
    config::Config,
    credentials::StaticCredentials,
    origin::{Origin, StaticOrigins},
    proxy::{AllowAll, FixedGeneration, Injector, RequestGate},
    response::Responder,
    tls::{LeafCache, LocalCa},
};

use crate::pki::{TestPki, roots_from_pem, tls_over};

pub const OPENAI_KEY: &str = "sk-REAL-openai-0123456789abcdefghijklmnopqrstuvwxyz";
pub const ANTHROPIC_KEY: &str = "sk-ant-api03-REAL-anthropic-0123456789abcdefghij";
pub const GEMINI_KEY: &str = "AIzaREAL-gemini-0123456789abcdefghijklmno";
pub const SECRETS: [&str; 3] = [OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY];
pub const PLACEHOLDER: &str = "placeholder";

pub const OPENAI: &str = "api.openai.com";
pub const ANTHROPIC: &str = "api.anthropic.com";
pub const GEMINI: &str = "generativelanguage.googleapis.com";
pub const MISSING: &str = "api.mistral.ai";

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

/// Lets relays reach loopback, where the tests' mock servers listen (the
/// default `[intercept] passthrough_deny` refuses it).
pub fn allow_loopback_relays(config: &mut Config) {
    for net in ["127.0.0.0/8", "::1/128"] {
        config
            .intercept
            .passthrough_allow
            .push(toml::Spanned::new(0..0, net.to_owned()));
    }
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
        let state_dir = tempfile::tempdir().unwrap();
        let text = config_text(state_dir.path(), &pki.ca_file, extra);
        let mut config = Config::parse(&text, "test").unwrap();
        // The mocks the tests pass through to listen on loopback, which
        // relays refuse by default.
        allow_loopback_relays(&mut config);
        let ca = local_ca(&config, state_dir.path());
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
        .unwrap()
        // In-process, without agents or privileges: relays are the
        // daemon's own sockets.
        .with_connector(Arc::new(warrant::proxy::egress::DaemonSocket));
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

/// warrant's local CA for the config's upstreams, kept in `state_dir`.
pub fn local_ca(config: &Config, state_dir: &std::path::Path) -> Arc<LocalCa> {
    let hosts: Vec<String> = config
        .upstreams
        .iter()
        .map(|u| u.host.get_ref().clone())
        .collect();
    Arc::new(LocalCa::load_or_create(state_dir, &hosts).unwrap())
}

/// Serves `injector` on a fresh 127.0.0.1 port; returns the address.
pub async fn serve_on_loopback(injector: Injector) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Arc::new(injector).serve(listener));
    addr
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
        self.try_send(req).await.unwrap()
    }

    /// The request, or the error of a connection that is gone.
    pub async fn try_send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        // Ready first: an HTTP/1.1 connection takes the next request only
        // once its task has finished with the last response.
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
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
