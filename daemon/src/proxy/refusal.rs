//! Refusals: every way a request to a configured upstream can end without
//! being forwarded, as one typed value, and the one place that answers it.
//!
//! Each phase of the request path returns `Result<_, Refusal>`; none of
//! them logs an outcome or builds a response. [`Refusal::respond`] (like
//! pingora's `fail_to_proxy`) records the outcome and message on the audit
//! line and answers the agent in the provider's own error shape, with
//! Retry-After when the refusal has one.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::{
    ProxyBody,
    upstream::{ConnectError, SendError, timed_out},
};
use crate::{audit::Outcome, audit::RequestLog, provider, provider::Scheme};

/// Why a request was not forwarded, and how the agent is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What the audit line says happened.
    pub outcome: Outcome,
    pub status: StatusCode,
    /// What the agent (and the audit line) is told.
    pub message: String,
    /// For a 429: when to try again.
    pub retry_after: Option<Duration>,
}

impl Refusal {
    pub fn new(outcome: Outcome, status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            outcome,
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Refused by policy (or attestation, or no matching workload).
    pub fn policy(status: StatusCode, reason: impl std::fmt::Display) -> Refusal {
        Refusal::new(
            Outcome::Denied,
            status,
            format!("warrant policy refused this request: {reason}"),
        )
    }

    /// Over a budget: 429, try again after `retry_after`.
    pub fn throttled(reason: impl std::fmt::Display, retry_after: Duration) -> Refusal {
        Refusal {
            retry_after: Some(retry_after),
            ..Refusal::new(
                Outcome::Denied,
                StatusCode::TOO_MANY_REQUESTS,
                format!("warrant refused this request: {reason}"),
            )
        }
    }

    /// The upstream gave no answer: 504 when it ran out of time (known by
    /// the error's type), 502 otherwise.
    pub fn upstream_failed(host: &str, error: &UpstreamError) -> Refusal {
        let status = if error.timed_out() {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        let message = match error {
            UpstreamError::NoAnswer { after } => {
                format!(
                    "warrant: {host} did not answer within {} s",
                    after.as_secs()
                )
            }
            UpstreamError::Send(error) => format!(
                "warrant could not reach {host}: {}",
                crate::error::chain(error)
            ),
        };
        Refusal::new(Outcome::UpstreamError, status, message)
    }

    /// Records the refusal on the audit line and answers it in `shape`.
    pub fn respond(self, shape: Scheme, log: &RequestLog) -> Response<ProxyBody> {
        tracing::debug!(status = self.status.as_u16(), outcome = ?self.outcome, message = %self.message, "refused");
        log.outcome(self.outcome, Some(&self.message));
        let mut response = error_response(shape, self.status, &self.message);
        if let Some(wait) = self.retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            );
        }
        response
    }
}

/// Why an upstream gave no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No response headers within `[proxy] upstream_response_timeout_secs`.
    #[error("no answer within {} s", after.as_secs())]
    NoAnswer { after: Duration },
    #[error(transparent)]
    Send(#[from] SendError),
}

impl UpstreamError {
    /// Whether the upstream ran out of time (a gateway timeout) rather than
    /// failed: the response deadline, or a connect or I/O timeout found by
    /// type anywhere in the error's sources.
    pub fn timed_out(&self) -> bool {
        match self {
            UpstreamError::NoAnswer { .. } => true,
            UpstreamError::Send(SendError::Connect(ConnectError::Timeout { .. })) => true,
            UpstreamError::Send(SendError::Connect(error)) => timed_out(error),
            UpstreamError::Send(SendError::Request(error)) => timed_out(error),
            UpstreamError::Send(SendError::Upgrade(error)) => timed_out(error),
        }
    }

    /// Whether the request provably never reached the upstream: no
    /// connection could be made (TCP, TLS, the connect timeout), whether
    /// the pooled client's connector or ours said so.
    pub fn unsent(&self) -> bool {
        match self {
            UpstreamError::Send(SendError::Connect(_)) => true,
            UpstreamError::Send(SendError::Request(error)) => error.is_connect(),
            _ => false,
        }
    }
}

/// A JSON error body in `shape` with `status`.
pub(super) fn error_response(
    shape: Scheme,
    status: StatusCode,
    message: &str,
) -> Response<ProxyBody> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_timeout_is_a_504_by_its_type_and_other_failures_are_502() {
        let deadline = UpstreamError::NoAnswer {
            after: Duration::from_secs(30),
        };
        assert_eq!(
            Refusal::upstream_failed("api.openai.com", &deadline).status,
            StatusCode::GATEWAY_TIMEOUT
        );
        let dst = "127.0.0.1:443".parse().unwrap();
        let connect =
            UpstreamError::Send(SendError::Connect(ConnectError::Timeout { dst, secs: 5 }));
        assert_eq!(
            Refusal::upstream_failed("api.openai.com", &connect).status,
            StatusCode::GATEWAY_TIMEOUT
        );
        // The words "timed out" in an error that is not a timeout do not
        // make it one.
        let refused = UpstreamError::Send(SendError::Connect(ConnectError::Tcp {
            dst,
            source: std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "peer said: timed out",
            ),
        }));
        let refusal = Refusal::upstream_failed("api.openai.com", &refused);
        assert_eq!(refusal.status, StatusCode::BAD_GATEWAY);
        assert_eq!(refusal.outcome, Outcome::UpstreamError);
        assert!(refusal.message.contains("could not reach api.openai.com"));
        let io_timeout = UpstreamError::Send(SendError::Connect(ConnectError::Tcp {
            dst,
            source: std::io::Error::from(std::io::ErrorKind::TimedOut),
        }));
        assert!(io_timeout.timed_out());
    }
}
