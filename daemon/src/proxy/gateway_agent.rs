//! `warrant gateway`'s ways in for agents without a node: base URLs and
//! HTTP CONNECT, each identified by a short-lived JWT
//! (`gateway::Verifier::verify_token`), then the same phases as every
//! other request.
//!
//! * Base URL: `https://gw:8443/<prefix>/...` is `https://<host>/...` for
//!   each `[gateway] routes` prefix (`openai = "api.openai.com"`). The
//!   token comes with each request.
//! * HTTP CONNECT (`HTTPS_PROXY=https://gw:8443`): the tunnel is opened
//!   only to a configured upstream on port 443, never to anything else, so
//!   the gateway is neither an open proxy nor an SSRF relay; the token
//!   comes with the CONNECT (Proxy-Authorization) and identifies every
//!   request in the tunnel until it expires. Inside, the agent's TLS is
//!   terminated with a leaf of the gateway's CA for that upstream's name,
//!   and each request is routed to that upstream only.
//!
//! An agent whose client certificate is an X.509-SVID of the configured
//! SPIFFE bundle (`gateway::svid`) needs no token: the SVID names its
//! workload by `spiffe_id`. Otherwise the token is read from
//! Proxy-Authorization (`Bearer <jwt>`, or a
//! `Basic` password, which is what `HTTPS_PROXY=https://x:<jwt>@gw` makes
//! clients send) or from `[gateway] token_header`. Neither header, nor
//! the agent's own key headers (the credential splice removes those), is
//! forwarded upstream. An agent that is not believed gets 401 (no token)
//! or 403 in the provider's shape, and its audit line says why.

use std::sync::Arc;

use base64::Engine as _;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_rustls::TlsAcceptor;

use super::{
    ForwardBody, GatewayEntry, Identity, Injector, ProxyBody, Refusal, Transport, Upstream,
    gateway::resolve,
    phases::{Call, Learned, finish},
    rewrite::{empty, request_host},
};
use crate::{
    audit::{AttestationSummary, Outcome, RequestLog, TokenSummary},
    config::Scheme,
    gateway::{AgentError, Peer, Remote, TokenCaller, Verifier},
    origin::Origin,
    response::live::{ConnectionKind, LiveConnection},
    secret::Secret,
};

type TunnelFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), super::BoxError>> + Send>>;

/// An open CONNECT tunnel: the upstream it goes to and who opened it.
pub(super) struct Tunnel {
    upstream: Arc<Upstream>,
    identity: Identity,
    /// The token's `exp` plus the allowed skew (unix seconds): requests
    /// after it are refused, the tunnel outliving its token.
    valid_until: i64,
    token_header: HeaderName,
}

/// What one request borrows from its connection.
struct Along<'a> {
    origin: &'a Origin,
    log: &'a RequestLog,
    live: &'a Arc<LiveConnection>,
}

/// An agent's request on the gateway's listener.
struct AgentCall<'a> {
    along: Along<'a>,
    entry: &'a Arc<GatewayEntry>,
    peer: &'a Peer,
    log: &'a RequestLog,
}

impl Injector {
    /// A request from a connection without a node key: CONNECT opens a
    /// tunnel, anything else is a base URL request.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn agent_route(
        self: &Arc<Self>,
        req: Request<Incoming>,
        origin: &Origin,
        entry: &Arc<GatewayEntry>,
        peer: &Peer,
        log: &RequestLog,
        live: &Arc<LiveConnection>,
        learned: &mut Learned,
    ) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
        let call = AgentCall {
            along: Along { origin, log, live },
            entry,
            peer,
            log,
        };
        if req.method() == Method::CONNECT {
            return self.connect(req, &call).await;
        }
        self.base_url(req, &call, learned).await
    }

    /// `/<prefix>/rest` to the prefix's upstream as `/rest`.
    async fn base_url(
        &self,
        req: Request<Incoming>,
        call: &AgentCall<'_>,
        learned: &mut Learned,
    ) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
        let (prefix, rest) = split_prefix(req.uri().path());
        let (prefix, rest) = (prefix.to_owned(), rest.to_owned());
        let upstream = call
            .entry
            .routes
            .get(&prefix)
            .and_then(|host| self.upstreams.get(host).cloned());
        let Some(upstream) = upstream else {
            return Err(Refusal::new(
                Outcome::Refused,
                StatusCode::NOT_FOUND,
                format!("warrant gateway: no base URL /{prefix}/ here ([gateway] routes names the prefixes it serves)"),
            )
            .respond(Scheme::Generic, call.log));
        };
        call.log.upstream(&upstream.host);
        let shape = upstream.provider.scheme();
        let refuse = |refusal: Refusal| refusal.respond(shape, call.log);
        let (mut parts, body) = req.into_parts();
        let caller = verify_agent(
            &call.entry.verifier.get(),
            call.peer,
            &parts.headers,
            call.entry,
        )
        .await
        .map_err(refuse)?;
        strip_token(&mut parts.headers, &call.entry.token_header);
        parts.uri = without_prefix(&parts.uri, &rest).map_err(refuse)?;
        let identity = token_identity(caller);
        let req = Request::from_parts(parts, ForwardBody::streaming(body));
        self.agent_phases(req, &call.along, upstream, &identity, learned)
            .await
            .map_err(refuse)
    }

    /// The phases for an agent's request to `upstream`, as `identity`.
    async fn agent_phases(
        &self,
        req: Request<ForwardBody>,
        call: &Along<'_>,
        upstream: Arc<Upstream>,
        identity: &Identity,
        learned: &mut Learned,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let mut origin = *call.origin;
        origin.original_dst = resolve(&upstream.host).await?;
        let phases = Call {
            origin,
            upstream,
            transport: Transport::Tls,
            log: call.log,
            live: call.live,
            identified: Some(identity),
        };
        let generation = self.generations.current();
        self.phases(req, &phases, generation.as_ref(), learned)
            .await
    }

    /// CONNECT to a configured upstream, by an agent whose token names a
    /// workload: 200, then the tunnel is served on the upgraded stream.
    async fn connect(
        self: &Arc<Self>,
        req: Request<Incoming>,
        call: &AgentCall<'_>,
    ) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
        let target = req.uri().authority().cloned();
        let upstream = target
            .as_ref()
            .filter(|a| a.port_u16().unwrap_or(443) == 443)
            .and_then(|a| self.upstreams.get(&a.host().to_ascii_lowercase()).cloned());
        let Some(upstream) = upstream else {
            let shown = target.map_or_else(String::new, |a| a.to_string());
            return Err(Refusal::new(
                Outcome::Refused,
                StatusCode::FORBIDDEN,
                format!("warrant gateway refused CONNECT {shown:?}: tunnels go only to a configured [[upstream]] on port 443 (the gateway is not an open proxy)"),
            )
            .respond(Scheme::Generic, call.log));
        };
        call.log.upstream(&upstream.host);
        let shape = upstream.provider.scheme();
        let verifier = call.entry.verifier.get();
        let caller = verify_agent(&verifier, call.peer, req.headers(), call.entry)
            .await
            .map_err(|refusal| refusal.respond(shape, call.log))?;
        let skew = i64::try_from(verifier.skew_secs()).unwrap_or(i64::MAX);
        let tunnel = Arc::new(Tunnel {
            valid_until: caller.token.expires_at.saturating_add(skew),
            identity: token_identity(caller),
            upstream,
            token_header: call.entry.token_header.clone(),
        });
        call.log.identified(
            tunnel.identity.workload.as_deref(),
            tunnel.identity.summary.clone(),
        );
        call.log.outcome(
            Outcome::Forwarded,
            Some("tunnel opened; each request in it has its own audit line"),
        );
        let upgrade = hyper::upgrade::on(req);
        let this = self.clone();
        let (origin, live) = (*call.along.origin, call.along.live.clone());
        tokio::spawn(async move {
            if let Err(error) = this.serve_tunnel(upgrade, tunnel, origin, live).await {
                tracing::debug!(%error, "tunnel ended with an error");
            }
        });
        Ok(Response::new(empty()))
    }

    /// The agent's TLS inside the tunnel, terminated with a leaf for the
    /// upstream's name, then HTTP as on any other connection. Boxed: the
    /// tunnel's connection is served by the function that serves the
    /// connection it came from, and an async fn cannot hold itself.
    fn serve_tunnel(
        self: Arc<Self>,
        upgrade: hyper::upgrade::OnUpgrade,
        tunnel: Arc<Tunnel>,
        origin: Origin,
        live: Arc<LiveConnection>,
    ) -> TunnelFuture {
        Box::pin(self.tunnel_connection(upgrade, tunnel, origin, live))
    }

    async fn tunnel_connection(
        self: Arc<Self>,
        upgrade: hyper::upgrade::OnUpgrade,
        tunnel: Arc<Tunnel>,
        origin: Origin,
        live: Arc<LiveConnection>,
    ) -> Result<(), super::BoxError> {
        let Some(leafs) = &self.leafs else {
            return Err("this gateway has no CA for tunnels".into());
        };
        let upgraded = upgrade.await?;
        let config = leafs.server_config(&tunnel.upstream.host)?;
        let tls = tokio::time::timeout(
            self.header_timeout(),
            TlsAcceptor::from(config).accept(TokioIo::new(upgraded)),
        )
        .await??;
        live.set_kind(ConnectionKind::Intercepted, Some(&tunnel.upstream.host));
        self.clone()
            .serve_http(tls, origin, super::Entry::Tunnel(tunnel), live)
            .await
    }

    /// One request inside a tunnel: its audit line is started here and
    /// finished when the response body ends.
    pub(super) async fn tunnel_request(
        &self,
        req: Request<Incoming>,
        origin: Origin,
        tunnel: &Tunnel,
        live: Arc<LiveConnection>,
    ) -> Response<ProxyBody> {
        let log = self.begin(&req, &origin, &live);
        let mut learned = Learned::default();
        let response = match self
            .in_tunnel(req, &origin, tunnel, &log, &live, &mut learned)
            .await
        {
            Ok(response) => response,
            Err(refusal) => refusal.respond(tunnel.upstream.provider.scheme(), &log),
        };
        finish(response, log, learned, origin, self.responder.clone())
    }

    async fn in_tunnel(
        &self,
        req: Request<Incoming>,
        origin: &Origin,
        tunnel: &Tunnel,
        log: &RequestLog,
        live: &Arc<LiveConnection>,
        learned: &mut Learned,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let upstream = tunnel.upstream.clone();
        log.upstream(&upstream.host);
        if jiff::Timestamp::now().as_second() > tunnel.valid_until {
            return Err(Refusal::new(
                Outcome::Denied,
                StatusCode::UNAUTHORIZED,
                "warrant gateway: the token that opened this tunnel has expired; connect again with a fresh one",
            ));
        }
        if request_host(&req).is_some_and(|h| h != upstream.host) {
            return Err(Refusal::new(
                Outcome::Refused,
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "warrant gateway: this tunnel goes to {} only",
                    upstream.host
                ),
            ));
        }
        let (mut parts, body) = req.into_parts();
        strip_token(&mut parts.headers, &tunnel.token_header);
        let req = Request::from_parts(parts, ForwardBody::streaming(body));
        let along = Along { origin, log, live };
        self.agent_phases(req, &along, upstream, &tunnel.identity, learned)
            .await
    }
}

/// The agent's X.509-SVID or token, verified, and the workload it names.
/// A client certificate that is not a verified SVID, with no token, is
/// refused for what is wrong with it.
async fn verify_agent(
    verifier: &Verifier,
    peer: &Peer,
    headers: &HeaderMap,
    entry: &GatewayEntry,
) -> Result<TokenCaller, Refusal> {
    let token = agent_token(headers, &entry.token_header);
    let now = jiff::Timestamp::now().as_second();
    let verified = match (peer, &token) {
        (Peer::Svid(svid), _) => verifier.select_svid(svid, now),
        (Peer::Unverified(why), None) => Err(AgentError::Certificate(why.clone())),
        _ => {
            verifier
                .verify_token(token.as_ref(), entry.token_header.as_str(), now)
                .await
        }
    };
    verified.map_err(|error| {
        tracing::warn!(%error, "gateway agent refused");
        Refusal::new(
            Outcome::Denied,
            error.status(),
            format!("warrant gateway refused this request: {error}"),
        )
    })
}

/// The token in Proxy-Authorization (Bearer, or the Basic password) or
/// the token header.
fn agent_token(headers: &HeaderMap, token_header: &HeaderName) -> Option<Secret> {
    let proxy = headers
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(from_proxy_authorization);
    proxy.or_else(|| {
        headers
            .get(token_header)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| Secret::new(t.to_owned()))
    })
}

fn from_proxy_authorization(value: &str) -> Option<Secret> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| Secret::new(rest.to_owned()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return (!password.is_empty()).then(|| Secret::new(password.to_owned()));
    }
    None
}

/// The token never goes upstream.
fn strip_token(headers: &mut HeaderMap, token_header: &HeaderName) {
    while headers.remove(token_header).is_some() {}
    while headers.remove(header::PROXY_AUTHORIZATION).is_some() {}
}

/// "/openai/v1/x" -> ("openai", "/v1/x").
fn split_prefix(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    match trimmed.find('/') {
        Some(at) => (&trimmed[..at], &trimmed[at..]),
        None => (trimmed, "/"),
    }
}

/// The URI with the path `rest` and the original query.
fn without_prefix(uri: &http::Uri, rest: &str) -> Result<http::Uri, Refusal> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{rest}?{query}"),
        None => rest.to_owned(),
    };
    path_and_query.parse().map_err(|_| {
        Refusal::new(
            Outcome::Refused,
            StatusCode::BAD_REQUEST,
            "warrant gateway could not read the request's path",
        )
    })
}

/// The identity the phases go on with: the gateway workload, and which
/// token said so, for the audit line and the gate.
fn token_identity(caller: TokenCaller) -> Identity {
    let token = &caller.token;
    let summary = AttestationSummary {
        token: Some(TokenSummary {
            issuer: token.issuer.clone(),
            subject: token.subject.clone(),
            fingerprint: token.fingerprint.clone(),
            spiffe_id: token.spiffe_id.clone(),
        }),
        ..AttestationSummary::default()
    };
    Identity {
        workload: Some(caller.workload.clone()),
        summary,
        attestation: None,
        program_refusal: None,
        remote: Some(Arc::new(Remote::Token(caller))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_token_comes_from_proxy_authorization_or_the_token_header() {
        let name = HeaderName::from_static("x-warrant-token");
        let mut headers = HeaderMap::new();
        assert!(agent_token(&headers, &name).is_none());
        headers.insert("x-warrant-token", "t.h.s".parse().unwrap());
        assert_eq!(agent_token(&headers, &name).unwrap().expose(), "t.h.s");
        headers.insert(header::PROXY_AUTHORIZATION, "Bearer a.b.c".parse().unwrap());
        assert_eq!(agent_token(&headers, &name).unwrap().expose(), "a.b.c");
        let basic = base64::engine::general_purpose::STANDARD.encode("agent:x.y.z");
        headers.insert(
            header::PROXY_AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(agent_token(&headers, &name).unwrap().expose(), "x.y.z");
        strip_token(&mut headers, &name);
        assert!(headers.is_empty());
    }

    #[test]
    fn a_base_url_prefix_is_the_first_segment() {
        assert_eq!(split_prefix("/openai/v1/chat"), ("openai", "/v1/chat"));
        assert_eq!(split_prefix("/openai"), ("openai", "/"));
        assert_eq!(split_prefix("/"), ("", "/"));
        let uri: http::Uri = "/gemini/v1beta/m?alt=sse".parse().unwrap();
        assert_eq!(
            without_prefix(&uri, "/v1beta/m").unwrap().to_string(),
            "/v1beta/m?alt=sse"
        );
    }
}
