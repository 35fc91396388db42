//! A tagged agent's request to the cloud metadata service, redirected by
//! the eBPF programs (its address and port only) and answered by
//! `metadata::Emulator`: placeholder credentials, a refusal, or, for a path
//! `[metadata] passthrough` allows, the ordinary plain-HTTP passthrough to
//! the real service (for AWS with an IMDSv2 session token of warrant's own:
//! the agent's is the emulator's, which the real service does not know).
//! Each request gets an audit line: who asked, for what, and the answer.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::{ForwardBody, Injector, ProxyBody, Transport, replay, rewrite::upstream_uri};
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
        if imds_token {
            match self.imds_session_token(origin).await {
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
        self.pass_through(req, origin, log).await
    }

    /// A session token of warrant's own from the real IMDS (the agent's
    /// came from the emulator).
    async fn imds_session_token(&self, origin: Origin) -> Option<HeaderValue> {
        let dst = origin.original_dst;
        let host = crate::origin::normalize(dst).ip().to_string();
        let uri = upstream_uri(
            &host,
            dst,
            Transport::Plain,
            &"/latest/api/token".parse().ok()?,
        )?;
        let mut request = Request::builder()
            .method(Method::PUT)
            .uri(uri)
            .version(Version::HTTP_11)
            .header("x-aws-ec2-metadata-token-ttl-seconds", "60")
            .body(replay::ReplayBody::streaming(ForwardBody::full(
                Bytes::new(),
            )))
            .ok()?;
        request.headers_mut().remove(header::HOST);
        let client = self.clients.get(&host, dst, None).ok()?;
        let response = client.request(request).await.ok()?;
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
