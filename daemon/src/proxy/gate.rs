//! The seam for the per-request policy decision.
//!
//! The proxy asks its [`RequestGate`] about every request to a configured
//! upstream, after the agent-key check and before any credential is fetched
//! or injected: a refused request never causes a credential fetch. The
//! policy module implements this trait; [`AllowAll`] is the default.

use std::{fmt, future::Future, pin::Pin, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::{
    audit::RequestLog,
    origin::Origin,
    provider::{self, Scheme},
};

/// What the gate is told about one request. `headers` are the agent's as
/// sent (they hold at most a placeholder key: real-looking keys were refused
/// or reported before); `path` excludes the query, which may carry a key.
#[derive(Debug)]
pub struct GateRequest<'a> {
    pub origin: &'a Origin,
    /// The configured upstream host, lower case.
    pub upstream: &'a str,
    /// The upstream's API.
    pub scheme: Scheme,
    /// The request as the upstream's provider read it: the one parse that
    /// policy, budgets and the audit line use.
    pub request: &'a provider::Request,
    pub headers: &'a HeaderMap,
    /// The first bytes of the request body, up to the gate's
    /// [`RequestGate::body_prefix_len`] (e.g. for the "model" field); empty
    /// when the gate asks for none. The whole body is still forwarded.
    pub body_prefix: &'a [u8],
    /// The request's audit record: the gate adds who called (workload,
    /// attestation), the model and the policy decision.
    pub audit: &'a RequestLog,
}

#[derive(Debug)]
pub enum GateDecision {
    Allow,
    /// Allowed; the admission watches the response as it streams back (usage
    /// metering and budget reconciliation).
    Admit(Admission),
    /// Answered with `status` and `message` in the provider's error shape.
    Refuse {
        status: StatusCode,
        message: String,
    },
    /// Over a budget: 429 in the provider's error shape, with Retry-After.
    Throttle {
        message: String,
        retry_after: Duration,
    },
}

/// Watches one response on its way back to the agent. The proxy calls
/// `head` once the upstream answered, `data` with every body chunk as it is
/// forwarded (never holding it back), and `end` exactly once: `complete`
/// when the body ended normally, false when it was cut off (agent gone,
/// upstream error) or when no response came at all.
pub trait ResponseObserver: Send + Sync + 'static {
    fn head(&mut self, status: StatusCode, headers: &HeaderMap);
    fn data(&mut self, chunk: &Bytes);
    fn end(self: Box<Self>, complete: bool);
}

/// An admitted request's observer, handed by the gate to the proxy and by
/// the proxy to the response body. If it is dropped before reaching a body
/// (upstream unreachable, upgrade), it ends as not complete.
pub struct Admission(Option<Box<dyn ResponseObserver>>);

impl Admission {
    pub fn new(observer: Box<dyn ResponseObserver>) -> Admission {
        Admission(Some(observer))
    }

    pub(crate) fn take(mut self) -> Option<Box<dyn ResponseObserver>> {
        self.0.take()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(observer) = self.0.take() {
            observer.end(false);
        }
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Admission")
    }
}

pub type GateFuture<'a> = Pin<Box<dyn Future<Output = GateDecision> + Send + 'a>>;

pub trait RequestGate: Send + Sync + 'static {
    fn check<'a>(&'a self, request: GateRequest<'a>) -> GateFuture<'a>;

    /// How many bytes of the request body the gate needs to see. The proxy
    /// holds up to that much of the body back until the gate has decided,
    /// so 0 (the default) keeps request bodies fully streaming.
    fn body_prefix_len(&self) -> usize {
        0
    }
}

/// Allows every request (until policy is wired in).
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl RequestGate for AllowAll {
    fn check<'a>(&'a self, _request: GateRequest<'a>) -> GateFuture<'a> {
        Box::pin(async { GateDecision::Allow })
    }
}
