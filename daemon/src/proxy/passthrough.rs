//! Traffic warrant does not touch: TLS to a host that is not a configured
//! upstream is spliced byte for byte to the Origin's original destination,
//! and plain HTTP to such a host is forwarded unchanged (no credential).
//! Both connect to the address the agent dialled, through `egress`: never
//! to a destination `[intercept] passthrough_deny` names, from a socket made
//! in the agent's own cgroup (so its unit's egress controls apply) and
//! marked so the eBPF programs leave it alone.

use std::time::Duration;

use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::{
    BoxError, ForwardBody, Injector, ProxyBody, Refusal, Transport, egress, io,
    refusal::error_response,
    replay,
    rewrite::{request_host, strip_hop_by_hop, upstream_uri},
};
use crate::{
    audit::{Outcome, RequestLog},
    origin::Origin,
    provider::Scheme,
};

impl Injector {
    /// Splices `recorded` and then the rest of the stream, both ways,
    /// untouched, to the Origin's original destination.
    pub(super) async fn tunnel(
        &self,
        recorded: Vec<u8>,
        stream: TcpStream,
        origin: Origin,
    ) -> Result<(), BoxError> {
        let mut remote = match self.egress.connect(&origin, origin.original_dst).await {
            Ok(remote) => remote,
            Err(error) => {
                tracing::warn!(dst = %origin.original_dst, tgid = origin.tgid, %error, "passthrough refused or failed");
                self.responder
                    .audit()
                    .connection_refused(Some(&origin), &format!("passthrough: {error}"));
                return Ok(());
            }
        };
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

    /// Plain HTTP to a host that is not configured: forwarded unchanged
    /// (no credential) to the original destination.
    pub(super) async fn pass_through(
        &self,
        req: Request<Incoming>,
        origin: Origin,
        log: &RequestLog,
    ) -> Response<ProxyBody> {
        self.relay_plain(&self.egress, req, origin, log).await
    }

    /// Plain HTTP forwarded unchanged to the original destination through
    /// `egress` (the metadata passthrough passes one without the
    /// destination check).
    pub(super) async fn relay_plain(
        &self,
        egress: &egress::Egress,
        req: Request<Incoming>,
        origin: Origin,
        log: &RequestLog,
    ) -> Response<ProxyBody> {
        let req = req.map(|body| replay::ReplayBody::streaming(ForwardBody::streaming(body)));
        let host = request_host(&req).unwrap_or_else(|| origin.original_dst.ip().to_string());
        log.upstream(&host);
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        let Some(target) = upstream_uri(&host, origin.original_dst, Transport::Plain, &parts.uri)
        else {
            return error_response(
                Scheme::OpenAi,
                StatusCode::BAD_REQUEST,
                "warrant cannot rebuild the request URI",
            );
        };
        parts.uri = target;
        parts.version = Version::HTTP_11;
        // One connection per request, opened in the agent's cgroup: a pooled
        // one would carry another agent's requests past its own controls.
        let sent = egress::send_http1(
            egress,
            &origin,
            origin.original_dst,
            Request::from_parts(parts, body),
        );
        match sent.await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers, false);
                Response::from_parts(parts, body.map_err(BoxError::from).boxed())
            }
            Err(egress::SendError::Egress(egress::EgressError::Refused(why))) => {
                tracing::warn!(dst = %origin.original_dst, tgid = origin.tgid, "plain HTTP passthrough refused: {why}");
                Refusal::new(Outcome::Refused, StatusCode::FORBIDDEN, why)
                    .respond(Scheme::OpenAi, log)
            }
            Err(error) => relay_failed(&host, &error, log),
        }
    }
}

/// A pass-through request the host did not answer: 504 when it ran out of
/// time (by the error's type), else 502, in the OpenAI shape (the host is
/// not a configured provider).
fn relay_failed(host: &str, error: &egress::SendError, log: &RequestLog) -> Response<ProxyBody> {
    let cause = crate::error::chain(error);
    tracing::warn!(upstream = %host, %cause, "passthrough failed");
    let status = if error.timed_out() {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    };
    Refusal::new(
        Outcome::UpstreamError,
        status,
        format!("warrant could not reach {host}: {cause}"),
    )
    .respond(Scheme::OpenAi, log)
}
