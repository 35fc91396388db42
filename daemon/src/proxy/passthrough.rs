//! Traffic warrant does not touch: TLS to a host that is not a configured
//! upstream is spliced byte for byte to the Origin's original destination,
//! and plain HTTP to such a host is forwarded unchanged (no credential).
//! Both connect to the address the agent dialled, marked so the eBPF
//! programs leave the connection alone.

use std::time::Duration;

use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::{
    BoxError, ForwardBody, Injector, ProxyBody, Refusal, SendError, Transport, UpstreamError, io,
    refusal::error_response,
    replay,
    rewrite::{request_host, strip_hop_by_hop, upstream_uri},
    upstream::connect_marked,
};
use crate::{audit::RequestLog, origin::Origin, provider::Scheme};

impl Injector {
    /// Splices `recorded` and then the rest of the stream, both ways,
    /// untouched, to the Origin's original destination.
    pub(super) async fn tunnel(
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

    /// Plain HTTP to a host that is not configured: forwarded unchanged
    /// (no credential) to the original destination.
    pub(super) async fn pass_through(
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
        let client = match self.clients.get(&host, origin.original_dst, None) {
            Ok(client) => client,
            Err(error) => return upstream_failed(&host, SendError::from(error), log),
        };
        match client.request(Request::from_parts(parts, body)).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers, false);
                Response::from_parts(parts, body.map_err(BoxError::from).boxed())
            }
            Err(error) => upstream_failed(&host, SendError::from(error), log),
        }
    }
}

/// A pass-through request the host did not answer: 502 or 504 in the
/// OpenAI shape (the host is not a configured provider).
fn upstream_failed(host: &str, error: SendError, log: &RequestLog) -> Response<ProxyBody> {
    let error = UpstreamError::from(error);
    tracing::warn!(upstream = %host, cause = %crate::error::chain(&error), "upstream failed");
    Refusal::upstream_failed(host, &error).respond(Scheme::OpenAi, log)
}
