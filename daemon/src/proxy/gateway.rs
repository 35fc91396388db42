//! `warrant gateway`'s way in: TLS on `[gateway] listen` with the gateway's
//! own certificate, client certificates asked for, each request's caller
//! verified (`gateway::Verifier`), then the same phases as a redirected
//! request (`phases`): quarantine, parse, policy, budgets, credential,
//! splice, forward, meter, audit.
//!
//! What differs from a redirected connection is only how the request is
//! routed and who the caller is:
//! * route: by the request's authority (h2 :authority, h1 Host), which
//!   must be a configured `[[upstream]]`; anything else is refused (421),
//!   so the gateway is never an open relay. The upstream's address is
//!   the system resolver's for that host, never one the caller names;
//! * identify: the node's statement, verified against the connection's
//!   key, the request and the replay cache (the body is read whole first,
//!   up to `[gateway] max_body_bytes`, to check its hash), names the
//!   workload. The statement header is removed before forwarding.
//!
//! CONNECT, and a request for the gateway itself from a connection without
//! a node key, are an agent's: HTTP CONNECT and base URLs, identified by a
//! token (`gateway_agent`).
//!
//! A caller that is not believed gets a 403 (503 when the replay cache
//! cannot answer) in the provider's shape, and its audit line says why.
//! Gateway connections have no process behind them on this host: their
//! `Origin` carries the peer's address and tgid 0.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::{
    ForwardBody, Identity, Injector, ProxyBody, Refusal, Transport, Upstream,
    phases::{Call, Learned, finish},
    rewrite::request_host,
};
use crate::{
    audit::{AttestationSummary, Outcome, RequestLog},
    config::Scheme,
    gateway::{Peer, Received, Remote, STATEMENT_HEADER, Verified, Verifier, classify},
    origin::Origin,
    response::live::{ConnectionKind, LiveConnection},
    swap::Swap,
};

/// What the gateway listener needs beside the injector.
pub struct GatewayEntry {
    pub tls: TlsAcceptor,
    /// Replaced on reload with the enrolled nodes and workloads.
    pub verifier: Arc<Swap<Verifier>>,
    pub max_body_bytes: usize,
    /// Base URL prefixes and the upstream host each serves.
    pub routes: HashMap<String, String>,
    /// Where agents may send their token besides Proxy-Authorization.
    pub token_header: http::HeaderName,
}

impl Injector {
    /// Accepts gateway connections on `listener` until the task is dropped.
    pub async fn serve_gateway(
        self: Arc<Self>,
        listener: TcpListener,
        entry: Arc<GatewayEntry>,
    ) -> std::io::Result<()> {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let origin = gateway_origin(peer);
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection cap reached: closed");
                self.responder
                    .audit()
                    .connection_refused(Some(&origin), "connection cap reached");
                continue;
            };
            let this = self.clone();
            let entry = entry.clone();
            tokio::spawn(async move {
                let registration = this.responder.register(origin);
                let live = registration.connection.clone();
                if let Err(error) = this.gateway_connection(stream, origin, entry, live).await {
                    tracing::debug!(%peer, %error, "gateway connection ended with an error");
                }
                drop(registration);
                drop(permit);
            });
        }
    }

    async fn gateway_connection(
        self: Arc<Self>,
        stream: TcpStream,
        origin: Origin,
        entry: Arc<GatewayEntry>,
        live: Arc<LiveConnection>,
    ) -> Result<(), super::BoxError> {
        let _ = stream.set_nodelay(true);
        let tls = tokio::time::timeout(self.header_timeout(), entry.tls.accept(stream)).await??;
        let verifier = entry.verifier.get();
        let peer = Arc::new(classify(
            tls.get_ref().1.peer_certificates(),
            verifier.svid(),
        ));
        live.set_kind(ConnectionKind::Intercepted, None);
        self.serve_http(tls, origin, super::Entry::Gateway(entry, peer), live)
            .await
    }

    /// One request from a gateway connection: its audit line is started
    /// here and finished when the response body ends.
    pub(super) async fn gateway_request(
        self: &Arc<Self>,
        req: Request<Incoming>,
        origin: Origin,
        entry: &Arc<GatewayEntry>,
        peer: &Peer,
        live: Arc<LiveConnection>,
    ) -> Response<ProxyBody> {
        let log = self.begin(&req, &origin, &live);
        let mut learned = Learned::default();
        let response = match self
            .gateway_route(req, &origin, entry, peer, &log, &live, &mut learned)
            .await
        {
            Ok(response) | Err(response) => response,
        };
        finish(response, log, learned, origin, self.responder.clone())
    }

    /// Route, verify the caller, then the phases.
    #[allow(clippy::too_many_arguments)]
    async fn gateway_route(
        self: &Arc<Self>,
        req: Request<Incoming>,
        origin: &Origin,
        entry: &Arc<GatewayEntry>,
        peer: &Peer,
        log: &RequestLog,
        live: &Arc<LiveConnection>,
        learned: &mut Learned,
    ) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
        let upstream = request_host(&req).and_then(|h| self.upstreams.get(&h).cloned());
        // A request for an upstream host is a node's (and refused without
        // a node key); CONNECT, and anything else from a connection
        // without a node key, an agent's.
        let agent = upstream.is_none() && !matches!(peer, Peer::Key(_));
        if agent || req.method() == http::Method::CONNECT {
            return self
                .agent_route(req, origin, entry, peer, log, live, learned)
                .await;
        }
        let Some(upstream) = upstream else {
            let host = request_host(&req).unwrap_or_default();
            return Err(Refusal::new(
                Outcome::Refused,
                StatusCode::MISDIRECTED_REQUEST,
                format!("warrant gateway refused this request: {host:?} is not a configured [[upstream]] (the gateway relays to configured upstreams only)"),
            )
            .respond(Scheme::Generic, log));
        };
        log.upstream(&upstream.host);
        let shape = upstream.provider.scheme();
        let refuse = |refusal: Refusal| refusal.respond(shape, log);
        let (mut parts, body) = req.into_parts();
        let body = self.gateway_body(body, entry).await.map_err(refuse)?;
        let verified = self
            .verify_caller(&entry.verifier.get(), peer, &parts, &upstream, &body)
            .await
            .map_err(refuse)?;
        parts.headers.remove(STATEMENT_HEADER);
        let identity = remote_identity(verified);
        let mut origin = *origin;
        origin.original_dst = resolve(&upstream.host).await.map_err(refuse)?;
        let call = Call {
            origin,
            upstream,
            transport: Transport::Tls,
            log,
            live,
            identified: Some(&identity),
        };
        let generation = self.generations.current();
        let req = Request::from_parts(parts, ForwardBody::full(body));
        self.phases(req, &call, generation.as_ref(), learned)
            .await
            .map_err(refuse)
    }

    async fn gateway_body(&self, body: Incoming, entry: &GatewayEntry) -> Result<Bytes, Refusal> {
        match ForwardBody::streaming(body)
            .collect_limited(entry.max_body_bytes, self.header_timeout())
            .await
        {
            Ok(Some(body)) => Ok(body),
            Ok(None) => Err(Refusal::new(
                Outcome::Refused,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "warrant gateway refused this request: its body is larger than [gateway] max_body_bytes ({} bytes)",
                    entry.max_body_bytes
                ),
            )),
            Err(error) => Err(Refusal::new(
                Outcome::Refused,
                StatusCode::BAD_REQUEST,
                format!("warrant gateway could not read the request: {error}"),
            )),
        }
    }

    async fn verify_caller(
        &self,
        verifier: &Verifier,
        peer: &Peer,
        parts: &http::request::Parts,
        upstream: &Upstream,
        body: &[u8],
    ) -> Result<Verified, Refusal> {
        let statement = parts
            .headers
            .get(STATEMENT_HEADER)
            .and_then(|v| v.to_str().ok());
        let received = Received {
            statement,
            method: parts.method.as_str(),
            authority: &upstream.host,
            path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            body,
        };
        let now = jiff::Timestamp::now().as_second();
        verifier.verify(peer, received, now).await.map_err(|error| {
            tracing::warn!(%error, "gateway caller refused");
            Refusal::new(
                Outcome::Denied,
                error.status(),
                format!("warrant gateway refused this request: {error}"),
            )
        })
    }
}

/// The upstream's address, from the system resolver (port 443).
pub(super) async fn resolve(host: &str) -> Result<SocketAddr, Refusal> {
    let found = tokio::net::lookup_host((host, 443))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next());
    found.ok_or_else(|| {
        Refusal::new(
            Outcome::UpstreamError,
            StatusCode::BAD_GATEWAY,
            format!("warrant gateway cannot resolve {host}"),
        )
    })
}

/// A gateway connection's Origin: no process of this host is behind it.
fn gateway_origin(peer: SocketAddr) -> Origin {
    Origin {
        original_dst: peer,
        pid: 0,
        tgid: 0,
        uid: 0,
        gid: 0,
        cgroup_id: 0,
        exec_gen: 0,
        connect_boot_ns: 0,
    }
}

/// The identity the phases go on with: the gateway workload, and what the
/// node's statement says, for the audit line and the gate.
fn remote_identity(verified: Verified) -> Identity {
    let process = &verified.statement.process;
    let instance = verified.instance();
    let summary = AttestationSummary {
        tgid: process.tgid,
        uid: process.uid,
        unit: process.unit.clone(),
        cgroup: process.cgroup.clone(),
        exe: process.exe.clone(),
        exe_sha256: process.exe_sha256.clone(),
        entrypoint: process.entrypoint.clone(),
        entrypoint_sha256: process.entrypoint_sha256.clone(),
        user_namespace: None,
        instance_id: instance.claims.get("instance_id").cloned(),
        region: instance.claims.get("region").cloned(),
        node: Some(verified.node.clone()),
        node_workload: Some(verified.statement.workload.clone()),
        token: None,
    };
    Identity {
        workload: Some(verified.workload.clone()),
        summary,
        attestation: None,
        program_refusal: process.program_refusal.clone(),
        remote: Some(Arc::new(Remote::Node(Box::new(verified)))),
    }
}
