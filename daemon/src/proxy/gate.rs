//! The seam for the per-request policy decision.
//!
//! The proxy asks its [`RequestGate`] about every request to a configured
//! upstream, after the agent-key check and before any credential is fetched
//! or injected: a refused request never causes a credential fetch. The
//! policy module implements this trait; [`AllowAll`] is the default.

use std::{future::Future, pin::Pin};

use http::{HeaderMap, Method, StatusCode};

use crate::{audit::RequestLog, origin::Origin};

/// What the gate is told about one request. `headers` are the agent's as
/// sent (they hold at most a placeholder key: real-looking keys were refused
/// or reported before); `path` excludes the query, which may carry a key.
#[derive(Debug)]
pub struct GateRequest<'a> {
    pub origin: &'a Origin,
    /// The configured upstream host, lower case.
    pub upstream: &'a str,
    /// The upstream's scheme: openai | anthropic | gemini | generic.
    pub scheme: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// The first bytes of the request body, up to the gate's
    /// [`RequestGate::body_prefix_len`] (e.g. for the "model" field); empty
    /// when the gate asks for none. The whole body is still forwarded.
    pub body_prefix: &'a [u8],
    /// The request's audit record: the gate adds who called (workload,
    /// attestation), the model and the policy decision.
    pub audit: &'a RequestLog,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateDecision {
    Allow,
    /// Answered with `status` and `message` in the provider's error shape.
    Refuse {
        status: StatusCode,
        message: String,
    },
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
