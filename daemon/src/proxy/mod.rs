//! The injector: accepts redirected connections, routes them by SNI, and
//! proxies requests to configured upstreams with the real credential.
//!
//! Per connection: the Origin is looked up by peer address (none: closed at
//! once, it was not redirected by the eBPF programs); the first byte says TLS
//! or plain HTTP. For TLS the ClientHello is read and recorded: the SNI of a
//! configured `[[upstream]]` is terminated with a minted leaf and served as
//! HTTP/1.1 or HTTP/2; anything else is spliced, recorded bytes first,
//! untouched to the Origin's original destination. Per request the phases
//! run in one direction: route, agent-key check, gate (policy), credential,
//! splice (the one rewriting phase), forward, stream the response back.
//!
//! Known limits: a plain (non-TLS) connection is served as HTTP, so another
//! clear-text protocol on an intercepted port is closed rather than passed
//! through; frames after a WebSocket upgrade are relayed as they are (the
//! credential is redacted from HTTP bodies and headers only); upstreams are
//! asked for identity encoding, and a body an upstream compresses anyway is
//! not searched for the credential.

mod body;
mod gate;
mod io;
pub mod live;
mod metered;
mod observed;
mod redact;
mod replay;
mod upstream;

use std::{collections::HashMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use rustls::{ClientConfig, pki_types::CertificateDer};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};

use live::{ConnectionKind, LiveConnection};

pub use body::ForwardBody;
pub use gate::{
    Admission, AllowAll, GateDecision, GateFuture, GateRequest, RequestGate, ResponseObserver,
};
pub use metered::Metered;
pub use redact::{BoxError, Redact};
pub use upstream::{ConnectError, POOL_IDLE_TIMEOUT, connect_marked};

use crate::{
    audit::{Monitor, Outcome, RequestLog},
    config::{AgentKeyAction, Config, ProxyConfig},
    credentials::CredentialSource,
    origin::{Origin, OriginSource},
    provider::{self, Provider, RequestHead, Scheme, SpliceError},
    secret::Secret,
    tls::{self, LeafCache, TlsError},
};

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
    #[error("upstream {host:?}: {source}")]
    Splice {
        host: String,
        #[source]
        source: SpliceError,
    },
}

/// One configured `[[upstream]]`, ready to use.
struct Upstream {
    /// Lower case.
    host: String,
    provider: Provider,
    credential: String,
    tls: Arc<ClientConfig>,
    /// Plain HTTP requests to this host get the credential too.
    plain_http: bool,
}

/// The injector, shared by every connection (and by the IPv4 and IPv6
/// listeners).
pub struct Injector {
    upstreams: HashMap<String, Arc<Upstream>>,
    leafs: Arc<LeafCache>,
    origins: Arc<dyn OriginSource>,
    credentials: Arc<dyn CredentialSource>,
    gate: Arc<dyn RequestGate>,
    limits: ProxyConfig,
    bypass_mark: u32,
    clients: upstream::UpstreamClients,
    connections: Arc<Semaphore>,
    monitor: Arc<Monitor>,
}

impl Injector {
    /// `leafs` mints for the CA of `config`'s upstream hosts; `system_roots`
    /// are the roots upstream certificates are verified against (with each
    /// upstream's `ca_file`). The gate allows everything until
    /// [`Injector::with_gate`] sets one.
    pub fn new(
        config: &Config,
        leafs: Arc<LeafCache>,
        origins: Arc<dyn OriginSource>,
        credentials: Arc<dyn CredentialSource>,
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
            let provider = Provider::from_config(up).map_err(|source| ProxyError::Splice {
                host: host.clone(),
                source,
            })?;
            upstreams.insert(
                host.clone(),
                Arc::new(Upstream {
                    host,
                    provider,
                    credential: up.credential.get_ref().clone(),
                    tls,
                    plain_http: up.plain_http,
                }),
            );
        }
        let limits = config.proxy.clone();
        Ok(Injector {
            upstreams,
            leafs,
            origins,
            credentials,
            gate: Arc::new(AllowAll),
            clients: upstream::UpstreamClients::new(
                config.daemon.bypass_mark,
                Duration::from_secs(limits.upstream_connect_timeout_secs),
            ),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            monitor: Monitor::disabled(),
            bypass_mark: config.daemon.bypass_mark,
            limits,
        })
    }

    /// Sets the per-request policy decision.
    pub fn with_gate(mut self, gate: Arc<dyn RequestGate>) -> Injector {
        self.gate = gate;
        self
    }

    /// Sets the audit log, metrics, quarantines and live-connection
    /// registry (default: [`Monitor::disabled`]).
    pub fn with_monitor(mut self, monitor: Arc<Monitor>) -> Injector {
        self.monitor = monitor;
        self
    }

    pub fn monitor(&self) -> &Arc<Monitor> {
        &self.monitor
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
                self.monitor
                    .connection_refused(None, "no Origin: not redirected by warrant");
                continue;
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                tracing::warn!(
                    %peer,
                    max_connections = self.limits.max_connections,
                    "connection cap reached: closed"
                );
                self.monitor
                    .connection_refused(Some(&origin), "connection cap reached");
                continue;
            };
            let this = self.clone();
            let registration = self.monitor.register(origin);
            tokio::spawn(async move {
                let live = registration.connection.clone();
                // A quarantine closes the connection at once, mid-stream too:
                // dropping the connection's future closes its socket.
                tokio::select! {
                    result = this.connection(stream, origin, live.clone()) => {
                        if let Err(error) = result {
                            tracing::debug!(%peer, tgid = origin.tgid, %error, "connection ended with an error");
                        }
                    }
                    () = live.closed() => {
                        tracing::info!(%peer, tgid = origin.tgid, "connection closed by a quarantine");
                    }
                }
                drop(registration);
                drop(permit);
            });
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
        // 0x16: a TLS handshake record. Anything else is taken as plain HTTP.
        if first[0] != 0x16 {
            self.monitor.metrics.connection("plain");
            live.set_kind(ConnectionKind::Plain, None);
            return self.serve_http(stream, origin, None, live).await;
        }
        let mut recorded = Vec::new();
        let sni = {
            let reader = io::Recording {
                inner: &mut stream,
                recorded: &mut recorded,
            };
            let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), reader);
            let start = tokio::time::timeout(self.header_timeout(), acceptor).await??;
            start
                .client_hello()
                .server_name()
                .map(str::to_ascii_lowercase)
        };
        let upstream = sni.as_deref().and_then(|s| self.upstreams.get(s)).cloned();
        let Some(upstream) = upstream else {
            tracing::debug!(sni = ?sni, dst = %origin.original_dst, "not an intercepted host: splicing");
            self.monitor.metrics.connection("passthrough");
            live.set_kind(ConnectionKind::Passthrough, sni.as_deref());
            return self.tunnel(recorded, stream, origin).await;
        };
        self.monitor.metrics.connection("intercepted");
        live.set_kind(ConnectionKind::Intercepted, Some(&upstream.host));
        let config = self.leafs.server_config(&upstream.host)?;
        let replay = io::Prefixed::new(recorded, stream);
        let tls = tokio::time::timeout(
            self.header_timeout(),
            TlsAcceptor::from(config).accept(replay),
        )
        .await??;
        self.serve_http(tls, origin, Some(upstream), live).await
    }

    /// Splices `recorded` and then the rest of the stream, both ways,
    /// untouched, to the Origin's original destination.
    async fn tunnel(
        &self,
        recorded: Vec<u8>,
        stream: TcpStream,
        origin: Origin,
    ) -> Result<(), BoxError> {
        let connect_timeout = Duration::from_secs(self.limits.upstream_connect_timeout_secs);
        let mut remote = tokio::time::timeout(
            connect_timeout,
            connect_marked(origin.original_dst, self.bypass_mark),
        )
        .await
        .map_err(|_| "connect to the original destination timed out")??;
        remote.write_all(&recorded).await?;
        let activity = io::Activity::new();
        let mut agent = io::Tracked::new(stream, activity.clone());
        let idle = Duration::from_secs(self.limits.idle_timeout_secs);
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut agent, &mut remote) => { result?; }
            () = activity.idle(idle) => tracing::debug!("spliced connection idle: closed"),
        }
        Ok(())
    }

    async fn serve_http<S>(
        self: Arc<Self>,
        stream: S,
        origin: Origin,
        upstream: Option<Arc<Upstream>>,
        live: Arc<LiveConnection>,
    ) -> Result<(), BoxError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = io::Activity::new();
        let io = TokioIo::new(io::Tracked::new(stream, activity.clone()));
        let tls = upstream.is_some();
        let this = self.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            let upstream = upstream.clone();
            let live = live.clone();
            async move { Ok::<_, Infallible>(this.request(req, origin, upstream, tls, live).await) }
        });
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
        let idle = Duration::from_secs(self.limits.idle_timeout_secs);
        tokio::select! {
            result = conn => result?,
            () = activity.idle(idle) => tracing::debug!("connection idle: closed"),
        }
        Ok(())
    }

    /// One request: its audit record is started here and finished when the
    /// response body ends (see `observed`).
    async fn request(
        &self,
        req: Request<Incoming>,
        origin: Origin,
        tls_upstream: Option<Arc<Upstream>>,
        tls: bool,
        live: Arc<LiveConnection>,
    ) -> Response<ProxyBody> {
        live.request_started();
        let log = self.monitor.request(
            &origin,
            Some(live.clone()),
            req.method(),
            req.uri().path(),
            content_length(req.headers()),
        );
        let response = self
            .phases(req, origin, tls_upstream, tls, &log, live)
            .await;
        let status = response.status().as_u16();
        response.map(|body| observed::Observed::new(body, log, status).boxed())
    }

    /// One request, through every phase.
    async fn phases(
        &self,
        mut req: Request<Incoming>,
        origin: Origin,
        tls_upstream: Option<Arc<Upstream>>,
        tls: bool,
        log: &RequestLog,
        live: Arc<LiveConnection>,
    ) -> Response<ProxyBody> {
        // Route: by SNI for TLS; by Host (or h2 :authority) for plain HTTP,
        // and then only to upstreams that opted in with `plain_http`.
        let upstream = match tls_upstream {
            Some(up) => Some(up),
            None => request_host(&req)
                .and_then(|h| self.upstreams.get(&h).cloned())
                .filter(|up| up.plain_http),
        };
        let Some(upstream) = upstream else {
            log.outcome(Outcome::PassedThrough, None);
            return self.pass_through(req, origin, log).await;
        };
        log.upstream(&upstream.host);
        let shape = upstream.provider.scheme();
        if !self.monitor.accepting() {
            let message =
                "warrant refused this request: its audit log cannot be written (fail-closed)";
            log.outcome(Outcome::AuditUnavailable, Some(message));
            return error_response(shape, StatusCode::SERVICE_UNAVAILABLE, message);
        }
        if !tls && !resolves_to(&upstream.host, origin.original_dst).await {
            tracing::warn!(
                upstream = %upstream.host,
                dst = %origin.original_dst,
                tgid = origin.tgid,
                "plain HTTP to an address the host does not resolve to: refused"
            );
            let message = format!(
                "warrant refused this request: {} is not an address of {} (plain HTTP destinations are checked against DNS)",
                origin.original_dst.ip(),
                upstream.host
            );
            log.outcome(Outcome::Refused, Some(&message));
            return error_response(shape, StatusCode::FORBIDDEN, &message);
        }

        let findings = upstream.provider.inspect(req.headers(), req.uri());
        if !findings.is_empty() {
            log.agent_keys(findings.iter().map(|f| f.fingerprint.clone()).collect());
            for finding in &findings {
                tracing::warn!(
                    upstream = %upstream.host,
                    tgid = origin.tgid,
                    uid = origin.uid,
                    cgroup_id = origin.cgroup_id,
                    location = %finding.location,
                    fingerprint = %finding.fingerprint,
                    "the agent sent what looks like a real API key (agents should hold only a placeholder)"
                );
            }
            if self.limits.agent_keys == AgentKeyAction::Refuse {
                let prints: Vec<&str> = findings.iter().map(|f| f.fingerprint.as_str()).collect();
                let message = format!(
                    "warrant refused this request: it carries what looks like a real API key ({}); the agent must use a placeholder, warrant injects the credential",
                    prints.join(", ")
                );
                log.outcome(Outcome::AgentKey, Some(&message));
                return error_response(shape, StatusCode::FORBIDDEN, &message);
            }
        }

        // Taken before the request is split: the agent side of an upgrade.
        let upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let wanted = self.gate.body_prefix_len();
        let (body, prefix) = if wanted == 0 {
            (ForwardBody::streaming(body), Vec::new())
        } else {
            match ForwardBody::prefetch(body, wanted, self.header_timeout()).await {
                Ok(read) => read,
                Err(error) => {
                    let message = format!("warrant could not read the request: {error}");
                    log.outcome(Outcome::Refused, Some(&message));
                    return error_response(shape, StatusCode::BAD_REQUEST, &message);
                }
            }
        };
        let head = RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        let parsed = match upstream.provider.parse(&head, &prefix) {
            Ok(parsed) => parsed,
            Err(error) => {
                let message = format!("warrant refused this request: {error}");
                log.outcome(Outcome::Refused, Some(&message));
                return error_response(shape, StatusCode::BAD_REQUEST, &message);
            }
        };
        let decision = self
            .gate
            .check(GateRequest {
                origin: &origin,
                upstream: &upstream.host,
                scheme: shape,
                request: &parsed,
                headers: &parts.headers,
                body_prefix: &prefix,
                audit: log,
            })
            .await;
        drop(prefix);
        if let Some(quarantine) = self
            .monitor
            .quarantined(log.workload().as_deref(), origin.tgid)
        {
            let message = format!(
                "warrant refused this request: {} is quarantined ({})",
                quarantine.target, quarantine.reason
            );
            log.outcome(Outcome::Quarantined, Some(&message));
            return error_response(shape, StatusCode::FORBIDDEN, &message);
        }
        let admission = match decision {
            GateDecision::Allow => None,
            GateDecision::Admit(admission) => Some(admission),
            GateDecision::Refuse { status, message } => {
                let message = format!("warrant policy refused this request: {message}");
                log.outcome(Outcome::Denied, Some(&message));
                return error_response(shape, status, &message);
            }
            GateDecision::Throttle {
                message,
                retry_after,
            } => {
                let message = format!("warrant refused this request: {message}");
                log.outcome(Outcome::Denied, Some(&message));
                let mut response = error_response(shape, StatusCode::TOO_MANY_REQUESTS, &message);
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs().max(1)),
                );
                return response;
            }
        };

        let credential = match self.credentials.current(&upstream.credential).await {
            Ok(credential) => credential,
            Err(error) => {
                tracing::warn!(upstream = %upstream.host, %error, "no credential");
                let message = format!(
                    "warrant has no credential for {} right now: {error}",
                    upstream.host
                );
                log.outcome(Outcome::NoCredential, Some(&message));
                return error_response(shape, StatusCode::SERVICE_UNAVAILABLE, &message);
            }
        };
        log.credential(&upstream.credential, &credential);

        let method = parts.method.clone();
        let path = parts.uri.path().to_owned();
        let forward = match rewrite(
            parts,
            body,
            &upstream,
            &credential,
            origin.original_dst,
            tls,
        ) {
            Ok(forward) => forward,
            Err(error) => {
                tracing::error!(upstream = %upstream.host, %error, "cannot rewrite the request");
                let message = format!(
                    "warrant cannot forward this request to {}: {error}",
                    upstream.host
                );
                log.outcome(Outcome::Refused, Some(&message));
                return error_response(shape, StatusCode::INTERNAL_SERVER_ERROR, &message);
            }
        };

        let timeout = Duration::from_secs(self.limits.upstream_response_timeout_secs);
        let sent = std::time::Instant::now();
        let send = self.clients.send(
            &upstream.host,
            origin.original_dst,
            tls.then_some(&upstream.tls),
            forward,
            |why| log.upstream_retried(&upstream.host, why),
        );
        let mut response = match tokio::time::timeout(timeout, send).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => return self.upstream_failed(shape, &upstream.host, &error, log),
            Err(_) => {
                tracing::warn!(upstream = %upstream.host, "upstream response timed out");
                let message = format!(
                    "warrant: {} did not answer within {} s",
                    upstream.host,
                    timeout.as_secs()
                );
                log.outcome(Outcome::UpstreamError, Some(&message));
                return error_response(shape, StatusCode::GATEWAY_TIMEOUT, &message);
            }
        };
        log.upstream_responded(&upstream.host, sent.elapsed());
        log.outcome(Outcome::Forwarded, None);

        if let Some(agent_side) = upgrade
            && response.status() == StatusCode::SWITCHING_PROTOCOLS
        {
            let upstream_side = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                match tokio::try_join!(agent_side, upstream_side) {
                    Ok((agent, remote)) => {
                        let mut agent = TokioIo::new(agent);
                        let mut remote = TokioIo::new(remote);
                        // The upgraded stream outlives the HTTP connection's
                        // task: a quarantine closes it here.
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut agent, &mut remote) => {}
                            () = live.closed() => {}
                        }
                    }
                    Err(error) => tracing::debug!(%error, "upgrade failed"),
                }
            });
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, empty());
        }
        tracing::debug!(
            upstream = %upstream.host,
            %method,
            %path,
            status = response.status().as_u16(),
            tgid = origin.tgid,
            "forwarded"
        );
        let (mut parts, body) = response.into_parts();
        // The observer sees the upstream's head and bytes as they were sent.
        let observer = admission.and_then(Admission::take).map(|mut observer| {
            observer.head(parts.status, &parts.headers);
            observer
        });
        strip_hop_by_hop(&mut parts.headers, false);
        redact::headers(&mut parts.headers, &credential);
        let body = Metered::new(body, observer);
        Response::from_parts(parts, Redact::new(body, credential).boxed())
    }

    /// Plain HTTP to a host that is not configured: forwarded unchanged
    /// (no credential) to the original destination.
    async fn pass_through(
        &self,
        req: Request<Incoming>,
        origin: Origin,
        log: &RequestLog,
    ) -> Response<ProxyBody> {
        let req = req.map(|body| replay::ReplayBody::streaming(ForwardBody::streaming(body)));
        let host = request_host(&req).unwrap_or_else(|| origin.original_dst.ip().to_string());
        log.upstream(&host);
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let Some(target) = upstream_uri(&host, origin.original_dst, false, &parts.uri) else {
            return error_response(
                Scheme::OpenAi,
                StatusCode::BAD_REQUEST,
                "warrant cannot rebuild the request URI",
            );
        };
        parts.uri = target;
        parts.version = Version::HTTP_11;
        let client = match self.clients.get(&host, origin.original_dst, None) {
            Ok(client) => client,
            Err(error) => return self.upstream_failed(Scheme::OpenAi, &host, &error, log),
        };
        match client.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers, false);
                Response::from_parts(parts, body.map_err(BoxError::from).boxed())
            }
            Err(error) => self.upstream_failed(Scheme::OpenAi, &host, &error, log),
        }
    }

    fn upstream_failed(
        &self,
        shape: Scheme,
        host: &str,
        error: &(dyn std::error::Error + 'static),
        log: &RequestLog,
    ) -> Response<ProxyBody> {
        let cause = error_chain(error);
        tracing::warn!(upstream = %host, cause = %cause, "upstream failed");
        let status = if cause.contains("timed out") {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        let message = format!("warrant could not reach {host}: {cause}");
        log.outcome(Outcome::UpstreamError, Some(&message));
        error_response(shape, status, &message)
    }
}

/// The request-rewriting phase, the only place a request to a configured
/// upstream is changed: credential splice (every agent-supplied credential
/// out, the real one in), hop-by-hop headers out, Host and URI rebuilt for
/// the upstream, identity encoding asked for (so an echoed credential can be
/// redacted from the response).
fn rewrite(
    mut parts: http::request::Parts,
    body: ForwardBody,
    upstream: &Upstream,
    credential: &Secret,
    dst: SocketAddr,
    tls: bool,
) -> Result<Request<ForwardBody>, SpliceError> {
    let keep_upgrade = is_upgrade(&parts.headers);
    let uri = upstream
        .provider
        .splice(&mut parts.headers, &parts.uri, credential)?;
    strip_hop_by_hop(&mut parts.headers, keep_upgrade);
    // The client sets Host (h1) or :authority (h2) from the URI.
    parts.headers.remove(header::HOST);
    // Explicitly identity: without the header a server may pick any coding.
    parts.headers.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    parts.uri = upstream_uri(&upstream.host, dst, tls, &uri).ok_or(SpliceError::BadUri)?;
    // The pooled client picks h1 or h2 by what the upstream negotiated.
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// Whether `host` resolves to `dst`'s address. Plain HTTP has no certificate
/// to authenticate the destination, so the agent's choice of address is
/// checked against the system resolver before a credential goes there.
async fn resolves_to(host: &str, dst: SocketAddr) -> bool {
    let want = crate::origin::normalize(dst).ip();
    match tokio::net::lookup_host((host, dst.port())).await {
        Ok(addrs) => addrs
            .map(|a| crate::origin::normalize(a).ip())
            .any(|ip| ip == want),
        Err(error) => {
            tracing::warn!(%host, %error, "cannot resolve an upstream host");
            false
        }
    }
}

/// The error and its sources, joined: hyper's own message is generic
/// ("client error (Connect)"); the cause is further down.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(next) = source {
        parts.push(next.to_string());
        source = next.source();
    }
    parts.join(": ")
}

/// The request body's declared length, for the audit record.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

fn error_response(shape: Scheme, status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = provider::error_body(shape, status, message);
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The request's host, lower case, without a port: the Host header (h1) or
/// the URI authority (h2, absolute-form).
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| {
            let host = req.headers().get(header::HOST)?.to_str().ok()?;
            let authority: http::uri::Authority = host.parse().ok()?;
            Some(authority.host().to_owned())
        })?;
    Some(authority.to_ascii_lowercase())
}

/// `https://host[:port]/path?query` toward the upstream. The port is the
/// one the agent dialled, so Host matches what the agent sent.
fn upstream_uri(host: &str, dst: SocketAddr, tls: bool, uri: &Uri) -> Option<Uri> {
    let (scheme, default_port) = if tls { ("https", 443) } else { ("http", 80) };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = if dst.port() == default_port {
        host.to_owned()
    } else {
        format!("{host}:{}", dst.port())
    };
    format!("{scheme}://{authority}{path}").parse().ok()
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1), keeping Connection and
/// Upgrade for a protocol upgrade.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty() && (!keep_upgrade || t != "upgrade"))
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "transfer-encoding",
    ] {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_upgrade_stays_only_for_an_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop, Upgrade"),
        );
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        headers.insert("x-end-to-end", HeaderValue::from_static("1"));
        let mut upgrade = headers.clone();
        strip_hop_by_hop(&mut headers, false);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-end-to-end"]);
        strip_hop_by_hop(&mut upgrade, true);
        assert!(upgrade.contains_key(header::UPGRADE) && upgrade.contains_key(header::CONNECTION));
        assert!(!upgrade.contains_key("x-hop"));

        let mut trailers = HeaderMap::new();
        trailers.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut trailers, false);
        assert!(trailers.contains_key(header::TE));
    }

    #[test]
    fn the_upstream_uri_keeps_a_non_default_port_and_the_query() {
        let uri: Uri = "/v1/x?a=1".parse().unwrap();
        let at_443: SocketAddr = "1.2.3.4:443".parse().unwrap();
        let at_8443: SocketAddr = "1.2.3.4:8443".parse().unwrap();
        assert_eq!(
            upstream_uri("api.openai.com", at_443, true, &uri)
                .unwrap()
                .to_string(),
            "https://api.openai.com/v1/x?a=1"
        );
        assert_eq!(
            upstream_uri("gw", at_8443, false, &uri)
                .unwrap()
                .to_string(),
            "http://gw:8443/v1/x?a=1"
        );
    }

    #[test]
    fn the_request_host_comes_from_the_authority_or_the_host_header_without_port() {
        let h2 = Request::builder()
            .uri("https://API.OpenAI.com/v1")
            .body(())
            .unwrap();
        assert_eq!(request_host(&h2).as_deref(), Some("api.openai.com"));
        let h1 = Request::builder()
            .uri("/v1")
            .header("host", "Gw.Internal:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&h1).as_deref(), Some("gw.internal"));
        let none = Request::builder().uri("/v1").body(()).unwrap();
        assert_eq!(request_host(&none), None);
    }
}
