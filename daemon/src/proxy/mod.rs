//! The injector: accepts redirected connections, routes them by SNI, and
//! proxies requests to configured upstreams with the real credential.
//!
//! Per connection (this file): the Origin is looked up by peer address
//! (none: closed at once, it was not redirected by the eBPF programs); the
//! first byte says TLS or plain HTTP. For TLS the ClientHello is read and
//! recorded: the SNI of a configured `[[upstream]]` is terminated with a
//! minted leaf and served as HTTP/1.1 or HTTP/2; anything else is spliced,
//! recorded bytes first, untouched to the Origin's original destination
//! (`passthrough`).
//!
//! Per request (`phases`), in one direction, each phase a function that
//! returns its result or a typed [`Refusal`], answered in one place
//! (`refusal`): route, audit health, plain-HTTP destination, identify
//! (gate), agent keys, quarantine, read and parse the request (`provider`),
//! authorize (gate: policy, budgets), credential, rewrite (the one phase
//! that changes a request: `provider` splices the credential), forward
//! (`upstream`), and the response streamed back through one tap (`tap`:
//! metering, audit, rules). `ARCHITECTURE.md` walks the whole path.
//!
//! What the request path decides with (the gate and the credentials) is
//! one [`Generation`], read once per request: a reload swaps it whole.
//!
//! A quarantine closes the connections of its workload or process, and the
//! request that triggered it (an agent key, a denial burst) is often on one
//! of them. So an HTTP connection is closed gracefully first: HTTP/2 sends
//! GOAWAY and HTTP/1.1 closes after the response in flight, so the agent
//! receives the refusal that says why; whatever is still running after
//! [`QUARANTINE_GRACE`] (a live stream) is cut.
//!
//! What an idle keep-alive connection holds is kept small, as agents' SDKs
//! keep pools of them: its task's state is sized by the path it takes, so
//! the common one (TLS, ALPN http/1.1) is served by hyper's HTTP/1.1
//! connection alone and every other path is boxed; the per-request state is
//! boxed too (hyper keeps a slot for it between requests). What is left is
//! hyper's and rustls's buffers (8 KiB read, 8 KiB write, 4 KiB TLS
//! records) and the task.
//!
//! Plain HTTP to a cloud metadata address (redirected for tagged agents
//! only) is answered by `metadata::Emulator` with placeholder credentials,
//! before any routing (`metadata`).
//!
//! Known limits: a plain (non-TLS) connection is served as HTTP, so another
//! clear-text protocol on an intercepted port is closed rather than passed
//! through; WebSocket messages are relayed as they are (the credential is
//! redacted from HTTP bodies and headers only; sessions of providers whose
//! usage warrant reads are metered, others cannot be opened under a token
//! or cost budget, see `session` and `policy`); upstreams are
//! asked for identity encoding, and a body an upstream compresses anyway is
//! not searched for the credential.

mod body;
pub mod egress;
mod gate;
mod gateway;
mod gateway_agent;
mod generation;
mod io;
pub mod lanes;
mod metadata;
mod node;
mod passthrough;
mod phases;
mod redact;
mod refusal;
mod replay;
mod rewrite;
mod session;
mod strip;
mod tap;
mod upstream;

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use rustls::{ClientConfig, pki_types::CertificateDer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;

pub use body::ForwardBody;
pub use gate::{AllowAll, GateFuture, GateRequest, Identity, RequestGate, Verdict};
pub use gateway::GatewayEntry;
pub use generation::{FixedGeneration, Generation, Generations};
pub use io::peek_sni;
pub use node::NodeForward;
pub use redact::{BoxError, Redact};
pub use refusal::{Refusal, UpstreamError};
pub use tap::Tap;
pub use upstream::{ConnectError, POOL_IDLE_TIMEOUT, SendError, connect_marked};

use crate::{
    config::{Config, ProxyConfig},
    origin::{Origin, OriginSource},
    provider::{Provider, SpliceError},
    response::{
        Responder,
        live::{ConnectionKind, LiveConnection},
    },
    tls::{self, LeafCache, TlsError},
};

/// How long a connection closed by a quarantine may take to deliver the
/// responses it has already begun (above all the refusal that triggered
/// the quarantine) before it is cut, mid-stream or not. Short: a revoked
/// agent's live stream must stop at once.
pub const QUARANTINE_GRACE: Duration = Duration::from_millis(250);

/// The body of every response the proxy gives: streamed upstream bodies and
/// its own small JSON errors.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream {host:?}: {source}")]
    Upstream {
        host: String,
        #[source]
        source: TlsError,
    },
    #[error(transparent)]
    Destinations(#[from] egress::DestinationError),
    #[error("upstream {host:?}: {source}")]
    Splice {
        host: String,
        #[source]
        source: SpliceError,
    },
    #[error(transparent)]
    Metadata(#[from] crate::config::ConfigError),
}

/// Largest bodies that may be held whole for signing at once.
pub const SIGNING_BODIES: usize = 16;

/// A connection accepted and admitted: registered as live, holding its
/// place under the connection cap until it ends.
struct Accepted {
    peer: std::net::SocketAddr,
    origin: Origin,
    registration: crate::response::live::Registration,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// One configured `[[upstream]]`, ready to use.
struct Upstream {
    /// Lower case.
    host: String,
    provider: Provider,
    /// None on a node that forwards to a gateway (it holds no credential).
    credential: Option<String>,
    tls: Arc<ClientConfig>,
    /// `tls` offering only http/1.1, for protocol upgrades.
    tls_http1: Arc<ClientConfig>,
    /// Plain HTTP requests to this host get the credential too.
    plain_http: bool,
}

/// How the agent's connection reached the injector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// TLS, terminated here: the upstream is the SNI's.
    Tls,
    /// Plain HTTP: the upstream is the Host header's.
    Plain,
}

/// Which way a connection came in, for its requests.
#[derive(Clone)]
enum Entry {
    /// Redirected by the eBPF programs; the upstream whose TLS was
    /// terminated (None: plain HTTP, routed by Host).
    Redirected(Option<Arc<Upstream>>),
    /// To `warrant gateway`'s listener, with the peer's certificate.
    Gateway(Arc<GatewayEntry>, Arc<crate::gateway::Peer>),
    /// Inside an agent's HTTP CONNECT tunnel at a gateway.
    Tunnel(Arc<gateway_agent::Tunnel>),
}

/// The injector, shared by every connection (and by the IPv4 and IPv6
/// listeners).
pub struct Injector {
    upstreams: HashMap<String, Arc<Upstream>>,
    /// Mints leaf certificates for redirected connections, and at a
    /// gateway for agents' CONNECT tunnels (None only in tests).
    leafs: Option<Arc<LeafCache>>,
    /// Set on a node (`[forward]`): requests go to the gateway.
    node: Option<NodeForward>,
    origins: Arc<dyn OriginSource>,
    /// The gate and credentials in force: one generation per request.
    generations: Arc<dyn Generations>,
    limits: ProxyConfig,
    /// Relays of what is not injected into (see `egress`).
    egress: egress::Egress,
    clients: upstream::UpstreamClients,
    connections: Arc<Semaphore>,
    /// KiB of request bodies held whole to be signed, at most
    /// [`SIGNING_BODIES`] times `[proxy] max_signed_body_bytes` in all: many
    /// large Bedrock requests at once (an h2 connection carries many) wait
    /// for room rather than exhaust memory.
    signing: Arc<Semaphore>,
    /// Quarantines, live connections, the audit trail and its metrics.
    responder: Arc<Responder>,
    /// Answers tagged agents' requests to the cloud metadata service.
    metadata: Option<crate::metadata::Emulator>,
    /// The runtimes connections are served on (the daemon's); None: the
    /// runtime that accepted them.
    lanes: Option<lanes::Lanes>,
}

impl Injector {
    /// `leafs` mints for the CA of `config`'s upstream hosts; `generations`
    /// gives the gate and credentials in force; `responder` holds the
    /// quarantines, the live connections and the audit trail;
    /// `system_roots` are the roots upstream certificates are verified
    /// against (with each upstream's `ca_file`).
    pub fn new(
        config: &Config,
        leafs: Arc<LeafCache>,
        origins: Arc<dyn OriginSource>,
        generations: Arc<dyn Generations>,
        responder: Arc<Responder>,
        system_roots: &[CertificateDer<'static>],
    ) -> Result<Injector, ProxyError> {
        Injector::build(
            config,
            Some(leafs),
            origins,
            generations,
            responder,
            system_roots,
        )
    }

    /// A gateway's injector: no Origins (connections come only through
    /// [`Injector::serve_gateway`]); `leafs` terminate the TLS agents send
    /// through HTTP CONNECT tunnels.
    pub fn for_gateway(
        config: &Config,
        leafs: Arc<LeafCache>,
        generations: Arc<dyn Generations>,
        responder: Arc<Responder>,
        system_roots: &[CertificateDer<'static>],
    ) -> Result<Injector, ProxyError> {
        Injector::build(
            config,
            Some(leafs),
            Arc::new(crate::origin::StaticOrigins::default()),
            generations,
            responder,
            system_roots,
        )
    }

    fn build(
        config: &Config,
        leafs: Option<Arc<LeafCache>>,
        origins: Arc<dyn OriginSource>,
        generations: Arc<dyn Generations>,
        responder: Arc<Responder>,
        system_roots: &[CertificateDer<'static>],
    ) -> Result<Injector, ProxyError> {
        let mut upstreams = HashMap::new();
        for up in &config.upstreams {
            let host = up.host.get_ref().to_ascii_lowercase();
            let tls =
                tls::client_config(system_roots, up.ca_file.as_deref()).map_err(|source| {
                    ProxyError::Upstream {
                        host: host.clone(),
                        source,
                    }
                })?;
            // A node's upstreams name no credential: the gateway's kind
            // decides how it is spliced there.
            let kind = crate::credentials::kind_named(
                &config.credentials,
                up.credential.as_ref().map_or("", |c| c.get_ref()),
            );
            let provider =
                Provider::from_config(up, kind).map_err(|source| ProxyError::Splice {
                    host: host.clone(),
                    source,
                })?;
            let mut http1 = ClientConfig::clone(&tls);
            http1.alpn_protocols = vec![b"http/1.1".to_vec()];
            upstreams.insert(
                host.clone(),
                Arc::new(Upstream {
                    host,
                    provider,
                    credential: up.credential.as_ref().map(|c| c.get_ref().clone()),
                    tls,
                    tls_http1: Arc::new(http1),
                    plain_http: up.plain_http,
                }),
            );
        }
        let limits = config.proxy.clone();
        let egress = egress::Egress::new(
            egress::Destinations::from_config(&config.intercept)?,
            Arc::new(egress::AgentCgroup::new(crate::mounts::cgroup2().ok())),
            config.daemon.bypass_mark,
            Duration::from_secs(limits.upstream_connect_timeout_secs),
        );
        let metadata = crate::metadata::Emulator::compile(&config.metadata, &config.source)?;
        Ok(Injector {
            egress,
            metadata,
            upstreams,
            leafs,
            node: None,
            origins,
            generations,
            clients: upstream::UpstreamClients::new(
                config.daemon.bypass_mark,
                Duration::from_secs(limits.upstream_connect_timeout_secs),
            ),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            signing: Arc::new(Semaphore::new(
                (limits.max_signed_body_bytes / 1024 + 1)
                    .saturating_mul(SIGNING_BODIES)
                    .min(Semaphore::MAX_PERMITS),
            )),
            responder,
            limits,
            lanes: None,
        })
    }

    /// Serves each connection on one of `lanes` (see `lanes`).
    pub fn on_lanes(mut self, lanes: lanes::Lanes) -> Injector {
        self.lanes = Some(lanes);
        self
    }

    /// A node's injector: requests go to the gateway (see `node`).
    pub fn forwarding_to(mut self, node: NodeForward) -> Injector {
        self.node = Some(node);
        self
    }

    /// Replaces how relay sockets are made (default: in the agent's own
    /// cgroup, `egress::AgentCgroup`); in-process tests without privileges
    /// use `egress::DaemonSocket`.
    pub fn with_connector(mut self, connector: Arc<dyn egress::Connector>) -> Injector {
        self.egress = self.egress.with_connector(connector);
        self
    }

    /// Accepts connections on `listener` until the task is dropped. Call once
    /// per listener (IPv4 and IPv6) on the same `Arc<Injector>`.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and the like: keep serving the connections we have.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(origin) = self.origins.take(peer) else {
                tracing::warn!(
                    %peer,
                    "connection without an Origin (not redirected by warrant; a process connected to the listener directly): closed"
                );
                drop(stream);
                self.responder
                    .audit()
                    .connection_refused(None, "no Origin: not redirected by warrant");
                continue;
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                tracing::warn!(
                    %peer,
                    max_connections = self.limits.max_connections,
                    "connection cap reached: closed"
                );
                self.responder
                    .audit()
                    .connection_refused(Some(&origin), "connection cap reached");
                continue;
            };
            let accepted = Accepted {
                peer,
                origin,
                registration: self.responder.register(origin),
                _permit: permit,
            };
            let this = self.clone();
            match &self.lanes {
                None => {
                    tokio::spawn(this.accepted(stream, accepted));
                }
                Some(lanes) => match stream.into_std() {
                    // The socket moves to the lane's own I/O driver.
                    Ok(stream) => lanes.spawn(async move {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => this.accepted(stream, accepted).await,
                            Err(error) => {
                                tracing::warn!(%peer, %error, "connection lost moving to its lane")
                            }
                        }
                    }),
                    Err(error) => {
                        tracing::warn!(%peer, %error, "connection lost moving to its lane")
                    }
                },
            }
        }
    }

    /// Serves one accepted connection to its end, or until a quarantine
    /// cuts it.
    async fn accepted(self: Arc<Self>, stream: TcpStream, accepted: Accepted) {
        let Accepted {
            peer,
            origin,
            registration,
            ..
        } = accepted;
        let live = registration.connection.clone();
        // A quarantine closes HTTP connections gracefully
        // (`serve_http`); whatever still runs after the grace,
        // mid-stream too, is cut: dropping the connection's future
        // closes its socket.
        let cut = async {
            live.closed().await;
            tokio::time::sleep(QUARANTINE_GRACE).await;
        };
        tokio::select! {
            result = self.connection(stream, origin, live.clone()) => {
                if let Err(error) = result {
                    tracing::debug!(%peer, tgid = origin.tgid, %error, "connection ended with an error");
                }
            }
            () = cut => {
                tracing::info!(%peer, tgid = origin.tgid, "connection cut by a quarantine");
            }
        }
    }

    /// Waits until no connection is open, or `timeout`; true when none is.
    /// For shutdown, after the accept loops have stopped.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let all_free = |connections: &Semaphore| {
            connections.available_permits() >= self.limits.max_connections
        };
        let deadline = tokio::time::Instant::now() + timeout;
        while !all_free(&self.connections) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.header_read_timeout_secs)
    }

    async fn connection(
        self: Arc<Self>,
        mut stream: TcpStream,
        origin: Origin,
        live: Arc<LiveConnection>,
    ) -> Result<(), BoxError> {
        let _ = stream.set_nodelay(true);
        let mut first = [0u8; 1];
        let n = tokio::time::timeout(self.header_timeout(), stream.peek(&mut first)).await??;
        if n == 0 {
            return Ok(());
        }
        let metrics = self.responder.audit().metrics().clone();
        // 0x16: a TLS handshake record. Anything else is taken as plain HTTP.
        if first[0] != 0x16 {
            metrics.connection("plain");
            live.set_kind(ConnectionKind::Plain, None);
            // Boxed, as every path but HTTP/1.1 over TLS (below): the
            // state of this future is held for the connection's life, and
            // sized by its largest path.
            return Box::pin(self.serve_http(stream, origin, Entry::Redirected(None), live)).await;
        }
        let mut recorded = Vec::new();
        let sni = tokio::time::timeout(
            self.header_timeout(),
            io::peek_sni(&mut stream, &mut recorded),
        )
        .await??;
        let upstream = sni.as_deref().and_then(|s| self.upstreams.get(s)).cloned();
        let Some(upstream) = upstream else {
            tracing::debug!(sni = ?sni, dst = %origin.original_dst, "not an intercepted host: splicing");
            metrics.connection("passthrough");
            live.set_kind(ConnectionKind::Passthrough, sni.as_deref());
            return Box::pin(self.tunnel(recorded, stream, origin)).await;
        };
        metrics.connection("intercepted");
        live.set_kind(ConnectionKind::Intercepted, Some(&upstream.host));
        let Some(leafs) = &self.leafs else {
            return Ok(());
        };
        let config = leafs.server_config(&upstream.host)?;
        let replay = io::Prefixed::new(recorded, stream);
        let tls = tokio::time::timeout(
            self.header_timeout(),
            TlsAcceptor::from(config).accept(replay),
        )
        .await??;
        let entry = Entry::Redirected(Some(upstream));
        // What SDKs negotiate: served by hyper's HTTP/1.1 connection alone
        // (see `serve_http1`). h2, or no ALPN (HTTP/2 with prior
        // knowledge is possible), by the automatic builder.
        if tls.get_ref().1.alpn_protocol() == Some(&b"http/1.1"[..]) {
            self.serve_http1(tls, origin, entry, live).await
        } else {
            Box::pin(self.serve_http(tls, origin, entry, live)).await
        }
    }

    /// Serves HTTP/1.1 or HTTP/2 on `stream`, each request by way of
    /// `entry`: hyper-util's automatic builder, which reads the first bytes
    /// to tell an HTTP/2 preface from HTTP/1.1.
    async fn serve_http<S>(
        self: Arc<Self>,
        stream: S,
        origin: Origin,
        entry: Entry,
        live: Arc<LiveConnection>,
    ) -> Result<(), BoxError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = io::Activity::new();
        let io = TokioIo::new(io::Tracked::new(stream, activity.clone()));
        let service = self.service(origin, entry, live.clone());
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout())
            // hyper refuses buffers under 8 KiB.
            .max_buf_size(self.limits.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.limits.max_header_bytes).unwrap_or(u32::MAX));
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        let idle = Duration::from_secs(self.limits.idle_timeout_secs);
        drive(conn, |c| c.graceful_shutdown(), &activity, idle, &live).await
    }

    /// Serves HTTP/1.1 alone on a TLS connection that chose it by ALPN.
    ///
    /// Not async: the connection is made here and the future returned owns
    /// only it, so the stream is held once (an async fn keeps its
    /// arguments in its state beside what they were moved into), and
    /// without the automatic builder: no HTTP/2 connection sized into the
    /// state of every HTTP/1.1 one, and no sniffed prefix replayed ahead of
    /// the request (that short first read made hyper double its read buffer
    /// to 16 KiB, kept for the connection's life).
    fn serve_http1<S>(
        self: Arc<Self>,
        stream: S,
        origin: Origin,
        entry: Entry,
        live: Arc<LiveConnection>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = io::Activity::new();
        let io = TokioIo::new(io::Tracked::new(stream, activity.clone()));
        let service = self.service(origin, entry, live.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout())
            // hyper refuses buffers under 8 KiB.
            .max_buf_size(self.limits.max_header_bytes.max(8192))
            .serve_connection(io, service)
            .with_upgrades();
        let idle = Duration::from_secs(self.limits.idle_timeout_secs);
        async move {
            tokio::pin!(conn);
            drive(conn, |c| c.graceful_shutdown(), &activity, idle, &live).await
        }
    }

    /// The service of one connection: each request by way of `entry`.
    fn service(
        self: &Arc<Self>,
        origin: Origin,
        entry: Entry,
        live: Arc<LiveConnection>,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = http::Response<ProxyBody>,
        Error = Infallible,
        Future: Send + 'static,
    >
    + Send
    + 'static
    + use<> {
        let this = self.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            let entry = entry.clone();
            let live = live.clone();
            // Boxed: hyper's HTTP/1.1 dispatcher keeps a slot the size of
            // this future for the connection's whole life, in flight or
            // not: the whole request path (phases, upstream, tap, 13 KiB)
            // inline would be kept by every idle keep-alive connection.
            // Boxed, the slot is a pointer and the request's state is freed
            // with its response.
            Box::pin(async move {
                let response = match entry {
                    Entry::Redirected(upstream) => this.request(req, origin, upstream, live).await,
                    Entry::Gateway(entry, peer) => {
                        this.gateway_request(req, origin, &entry, &peer, live).await
                    }
                    Entry::Tunnel(tunnel) => this.tunnel_request(req, origin, &tunnel, live).await,
                };
                Ok::<_, Infallible>(response)
            })
        })
    }
}

/// Drives a served connection until it ends, has been idle for `idle`, or
/// its workload is quarantined: then it is shut down gracefully (the
/// refusal that triggered the quarantine is delivered; GOAWAY on HTTP/2)
/// and the caller cuts the rest after [`QUARANTINE_GRACE`].
async fn drive<C, E>(
    mut conn: std::pin::Pin<&mut C>,
    shutdown: fn(std::pin::Pin<&mut C>),
    activity: &io::Activity,
    idle: Duration,
    quarantined: &LiveConnection,
) -> Result<(), BoxError>
where
    C: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    tokio::select! {
        result = conn.as_mut() => result.map_err(Into::into)?,
        () = activity.idle(idle) => tracing::debug!("connection idle: closed"),
        () = quarantined.closed() => {
            shutdown(conn.as_mut());
            conn.await.map_err(Into::into)?;
        }
    }
    Ok(())
}
