//! A node's last phases: instead of fetching a credential and forwarding to
//! the upstream, the request goes to the gateway (`[forward]`), over mTLS
//! with the host key, with a statement signed by that key and bound to this
//! request (`gateway::statement`). The node holds no credential; what it
//! adds is who made the request, as it attested them.
//!
//! The body is read whole first (up to `[forward] max_body_bytes`, else
//! 413), since its hash is signed. The request keeps the upstream as its
//! authority (h2 :authority, h1 Host) while the connection goes to the
//! gateway's address with the gateway's name as SNI; the gateway routes
//! by that authority to its own `[[upstream]]`. A gateway that cannot be
//! reached, or does not answer within the response deadline, is a 502 or
//! 504 in the provider's shape: the node fails closed, it has no
//! credential to fall back on.

use std::{sync::Arc, time::Duration};

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use rustls::ClientConfig;

use super::{
    ForwardBody, Identity, Injector, Refusal, UpstreamError, phases::Call,
    rewrite::strip_hop_by_hop,
};
use crate::{
    audit::Outcome,
    config::ForwardConfig,
    gateway::{Binding, InstanceFacts, NodeKey, ProcessFacts, STATEMENT_HEADER, node::Unsigned},
};

/// The gateway this node forwards to, ready to use.
pub struct NodeForward {
    /// The gateway's host (its TLS name) and port.
    host: String,
    port: u16,
    /// The gateway's name, the statements' audience.
    audience: String,
    key: Arc<NodeKey>,
    tls: Arc<ClientConfig>,
    max_body_bytes: usize,
}

impl NodeForward {
    /// From `[forward]`, with the host key and the TLS client configuration
    /// made from it (`NodeKey::client_config`). None when the gateway URL
    /// has no host (config checked it).
    pub fn new(
        config: &ForwardConfig,
        key: Arc<NodeKey>,
        tls: Arc<ClientConfig>,
    ) -> Option<NodeForward> {
        let uri: http::Uri = config.gateway.get_ref().parse().ok()?;
        let host = uri.host()?.to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or(443);
        let audience = config
            .audience
            .clone()
            .unwrap_or_else(|| format!("{host}:{port}"));
        Some(NodeForward {
            host,
            port,
            audience,
            key,
            tls,
            max_body_bytes: config.max_body_bytes,
        })
    }
}

impl Injector {
    /// Sends the request to the gateway with its statement; the gateway's
    /// response (or a refusal in the provider's shape) comes back.
    pub(super) async fn via_gateway(
        &self,
        node: &NodeForward,
        mut parts: http::request::Parts,
        body: ForwardBody,
        upgrade: bool,
        identity: &Identity,
        call: &Call<'_>,
    ) -> Result<Response<Incoming>, Refusal> {
        if upgrade {
            return Err(Refusal::new(
                Outcome::Refused,
                StatusCode::NOT_IMPLEMENTED,
                "warrant refused this request: protocol upgrades (WebSocket) are not forwarded to a gateway",
            ));
        }
        let body = self.whole_body(node, body).await?;
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let host = &call.upstream.host;
        let binding = Binding {
            method: parts.method.as_str().to_owned(),
            authority: host.clone(),
            path: path.clone(),
            body_sha256: Binding::hash_body(&body),
        };
        let statement = sign(node, binding, identity)?;
        strip_hop_by_hop(&mut parts.headers, false);
        parts.headers.remove(header::HOST);
        parts.headers.insert(
            STATEMENT_HEADER,
            HeaderValue::from_str(&statement).map_err(|_| internal("the statement"))?,
        );
        parts.uri = format!("https://{host}{path}")
            .parse()
            .map_err(|_| internal("the URI"))?;
        parts.version = Version::HTTP_11;
        let request = Request::from_parts(parts, ForwardBody::full(body));
        self.send_to_gateway(node, request, call).await
    }

    async fn whole_body(
        &self,
        node: &NodeForward,
        body: ForwardBody,
    ) -> Result<bytes::Bytes, Refusal> {
        match body
            .collect_limited(node.max_body_bytes, self.header_timeout())
            .await
        {
            Ok(Some(body)) => Ok(body),
            Ok(None) => Err(Refusal::new(
                Outcome::Refused,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "warrant refused this request: its body is larger than [forward] max_body_bytes ({} bytes)",
                    node.max_body_bytes
                ),
            )),
            Err(error) => Err(Refusal::new(
                Outcome::Refused,
                StatusCode::BAD_REQUEST,
                format!("warrant could not read the request: {error}"),
            )),
        }
    }

    async fn send_to_gateway(
        &self,
        node: &NodeForward,
        request: Request<ForwardBody>,
        call: &Call<'_>,
    ) -> Result<Response<Incoming>, Refusal> {
        let gateway = format!("{}:{}", node.host, node.port);
        let failed = |error: UpstreamError| {
            tracing::warn!(%gateway, cause = %crate::error::chain(&error), "the gateway failed");
            Refusal::upstream_failed(&gateway, &error)
        };
        let dst = tokio::net::lookup_host((node.host.as_str(), node.port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                Refusal::new(
                    Outcome::UpstreamError,
                    StatusCode::BAD_GATEWAY,
                    format!("warrant cannot resolve its gateway {gateway}"),
                )
            })?;
        let deadline = Duration::from_secs(self.limits.upstream_response_timeout_secs);
        let sent = std::time::Instant::now();
        let send = self
            .clients
            .send(&node.host, dst, Some(&node.tls), request, |why| {
                call.log.upstream_retried(&gateway, why)
            });
        let response = match tokio::time::timeout(deadline, send).await {
            Ok(Ok((response, _sent))) => response,
            Ok(Err(error)) => return Err(failed(error.into())),
            Err(_) => return Err(failed(UpstreamError::NoAnswer { after: deadline })),
        };
        call.log.upstream_responded(&gateway, sent.elapsed());
        call.log.outcome(Outcome::Forwarded, None);
        Ok(response)
    }
}

/// The statement for this request, as the node attested its caller.
fn sign(node: &NodeForward, binding: Binding, identity: &Identity) -> Result<String, Refusal> {
    let summary = &identity.summary;
    let attestation = identity.attestation.as_deref();
    let instance = attestation.map(|a| a.instance.as_ref());
    let instance = match instance {
        Some(crate::attest::instance::InstanceState::Attested {
            provider,
            verified,
            claims,
            evidence,
            ..
        }) => InstanceFacts {
            provider: Some(provider.clone()),
            verified: *verified,
            claims: claims.clone(),
            evidence: evidence.as_deref().cloned(),
        },
        _ => InstanceFacts::default(),
    };
    let unsigned = Unsigned {
        audience: node.audience.clone(),
        binding,
        workload: identity.workload.clone().unwrap_or_default(),
        process: ProcessFacts {
            tgid: summary.tgid,
            uid: summary.uid,
            gid: attestation.map_or(0, |a| a.gid),
            unit: summary.unit.clone(),
            cgroup: summary.cgroup.clone(),
            exe: summary.exe.clone(),
            exe_sha256: summary.exe_sha256.clone(),
            entrypoint: summary.entrypoint.clone(),
            entrypoint_sha256: summary.entrypoint_sha256.clone(),
            user_namespace: summary
                .user_namespace
                .map_or_else(|| "host".to_owned(), |n| n.to_string()),
            program_refusal: identity.program_refusal.clone(),
        },
        instance,
    };
    node.key
        .sign(unsigned, jiff::Timestamp::now().as_second())
        .map_err(|error| {
            tracing::error!(%error, "cannot sign the statement");
            internal("the statement")
        })
}

fn internal(what: &str) -> Refusal {
    Refusal::new(
        Outcome::Refused,
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("warrant cannot forward this request to its gateway: {what} cannot be made"),
    )
}
