//! A tagged agent's request to the cloud metadata service, redirected by
//! the eBPF programs (its address and port only) and answered by
//! `metadata::Emulator`: placeholder credentials, a refusal, or, for a path
//! `[metadata] passthrough` allows, the ordinary plain-HTTP passthrough to
//! the real service (for AWS with an IMDSv2 session token of warrant's own:
//! the agent's is the emulator's, which the real service does not know).
//! Relays go through `egress` from the agent's own cgroup, so the agent's
//! unit can still deny the metadata address; only the default
//! `passthrough_deny` of metadata addresses is lifted, for the listed paths.
//! Each request gets an audit line: who asked, for what, and the answer.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::{
    Injector, ProxyBody,
    egress::{Egress, send_http1},
};
use crate::{
    audit::{Outcome, RequestLog},
    metadata::{Answer, Emulator, Reply},
    origin::Origin,
};

/// The label the audit line and the metrics give the metadata service.
const UPSTREAM: &str = "metadata";

impl Injector {
    pub(super) async fn metadata(
        &self,
        emulator: &Emulator,
        mut req: Request<Incoming>,
        origin: Origin,
        log: &RequestLog,
    ) -> Response<ProxyBody> {
        log.upstream(UPSTREAM);
        let answer = emulator.answer(
            req.method(),
            req.uri(),
            req.headers(),
            jiff::Timestamp::now(),
        );
        let imds_token = match answer {
            Answer::Respond(reply) => return respond(reply, origin, log),
            Answer::PassThrough { imds_token } => imds_token,
        };
        tracing::info!(tgid = origin.tgid, path = %req.uri().path(), "metadata request passed through ([metadata] passthrough)");
        // From the agent's cgroup like any relay (its unit may deny the
        // metadata address: then so does warrant), past the default
        // refusal of metadata addresses, which this path's listing lifts.
        let egress = self.egress.for_allowed_destination();
        if imds_token {
            match self.imds_session_token(&egress, origin).await {
                Some(token) => {
                    req.headers_mut().insert("x-aws-ec2-metadata-token", token);
                }
                None => {
                    return respond(
                        Reply {
                            status: StatusCode::BAD_GATEWAY,
                            headers: Vec::new(),
                            content_type: "text/plain",
                            body: "warrant: the metadata service gave no IMDSv2 session token\n"
                                .to_owned(),
                            what: "no IMDSv2 session token from the metadata service",
                        },
                        origin,
                        log,
                    );
                }
            }
        }
        log.outcome(Outcome::PassedThrough, None);
        self.relay_plain(&egress, req, origin, log).await
    }

    /// A session token of warrant's own from the real IMDS (the agent's
    /// came from the emulator), asked for through `egress` like the
    /// request it is for.
    async fn imds_session_token(&self, egress: &Egress, origin: Origin) -> Option<HeaderValue> {
        let dst = origin.original_dst;
        let host = crate::origin::normalize(dst).ip().to_string();
        let request = Request::builder()
            .method(Method::PUT)
            .uri("/latest/api/token")
            .version(Version::HTTP_11)
            .header(header::HOST, host)
            .header("x-aws-ec2-metadata-token-ttl-seconds", "60")
            .body(Full::new(Bytes::new()))
            .ok()?;
        let response = match send_http1(egress, &origin, dst, request).await {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%dst, tgid = origin.tgid, %error, "no IMDSv2 session token for a metadata passthrough");
                return None;
            }
        };
        if response.status() != StatusCode::OK {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        let mut token = HeaderValue::from_bytes(body.trim_ascii()).ok()?;
        token.set_sensitive(true);
        Some(token)
    }
}

/// The emulator's own answer, on the audit line by what it was.
fn respond(reply: Reply, origin: Origin, log: &RequestLog) -> Response<ProxyBody> {
    let outcome = if reply.refused() {
        tracing::info!(
            tgid = origin.tgid,
            status = reply.status.as_u16(),
            why = reply.what,
            "metadata request refused"
        );
        Outcome::Refused
    } else {
        tracing::debug!(
            tgid = origin.tgid,
            what = reply.what,
            "metadata request answered with placeholders"
        );
        Outcome::Emulated
    };
    log.outcome(outcome, Some(reply.what));
    let mut response = Response::new(
        Full::new(Bytes::from(reply.body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}
