//! The seam for the per-request decision, asked in two steps so that the
//! identity flows forward.
//!
//! 1. [`RequestGate::identify`]: who is calling (the attestation of the
//!    process behind the connection and the workload it matches). The proxy
//!    records it, shows it on the live connection, and checks quarantines
//!    with it before anything else is decided.
//! 2. [`RequestGate::authorize`]: may this identified caller make this
//!    request (policy, then budgets)? The answer is a [`Verdict`] or a
//!    typed [`Refusal`]; an admitted request comes with the observer that
//!    meters its response.
//!
//! Both come before any credential is fetched or injected: a refused
//! request never causes a credential fetch. `service::WarrantGate` is the
//! daemon's gate; tests and benchmarks pass their own.

use std::{future::Future, pin::Pin, sync::Arc};

use http::HeaderMap;

use super::Refusal;
use crate::{
    attest::Attestation,
    audit::{AttestationSummary, RequestLog},
    origin::Origin,
    provider::{self, Scheme},
    usage::Admission,
};

/// Who made a request, as the gate established it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The `[[workload]]` the process matches; None when it matches none
    /// (`authorize` then refuses, after quarantines were checked).
    pub workload: Option<String>,
    /// What the audit line and `warrant status` show of the attestation.
    pub summary: AttestationSummary,
    /// The attestation itself, for the gate's own verdict (None from gates
    /// that do not attest, in tests, and at a gateway).
    pub attestation: Option<Arc<Attestation>>,
    /// Why the workload's rules cannot believe the process's program (see
    /// `attest::WorkloadMatcher::program_refusal`); a node signs it into
    /// its statement. None when they can, or no workload matched.
    pub program_refusal: Option<String>,
    /// At a gateway: the enrolled node that vouched for the caller and its
    /// verified statement, or the agent's verified token (the gate decides
    /// on it instead of an attestation).
    pub remote: Option<Arc<crate::gateway::Remote>>,
}

impl Identity {
    /// A caller known only by its Origin (no attestation, no workload): for
    /// gates of tests and benchmarks that do not attest.
    pub fn unattested(origin: &Origin) -> Identity {
        Identity {
            workload: None,
            summary: AttestationSummary {
                tgid: origin.tgid,
                uid: origin.uid,
                ..AttestationSummary::default()
            },
            attestation: None,
            program_refusal: None,
            remote: None,
        }
    }
}

/// What the gate is told about one identified request. `headers` are the
/// agent's as sent (they hold at most a placeholder key: real-looking keys
/// were refused or reported before).
#[derive(Debug, Clone, Copy)]
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
    /// [`RequestGate::body_prefix_len`]; empty when the gate asks for none.
    /// The whole body is still forwarded.
    pub body_prefix: &'a [u8],
    /// The request's audit record, for the decision and its factors.
    pub audit: &'a RequestLog,
}

/// An authorized request.
#[derive(Debug)]
pub enum Verdict {
    Allow,
    /// Allowed; the admission watches the response as it streams back
    /// (usage metering and budget reconciliation).
    Admit(Admission),
}

impl Verdict {
    /// The request was refused after it was authorized, before it reached
    /// the upstream: an admission's reservation is released, not charged.
    pub fn release(self) {
        if let Verdict::Admit(admission) = self {
            admission.release();
        }
    }
}

pub type GateFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait RequestGate: Send + Sync + 'static {
    /// Who is behind `origin`. A refusal here (the process cannot be
    /// attested) ends the request. The default knows the caller only by its
    /// Origin ([`Identity::unattested`]): for gates of tests and benchmarks
    /// that do not attest; the daemon's gate attests.
    fn identify<'a>(&'a self, origin: &'a Origin) -> GateFuture<'a, Result<Identity, Refusal>> {
        Box::pin(async move { Ok(Identity::unattested(origin)) })
    }

    /// Whether `identity` may make `request`.
    fn authorize<'a>(
        &'a self,
        identity: &'a Identity,
        request: GateRequest<'a>,
    ) -> GateFuture<'a, Result<Verdict, Refusal>>;

    /// How many bytes of the request body the gate needs to see. The proxy
    /// holds up to that much of the body back until the gate has decided,
    /// so 0 (the default) keeps request bodies fully streaming.
    fn body_prefix_len(&self) -> usize {
        0
    }
}

/// Identifies every caller as no workload and allows every request: for
/// tests and benchmarks of the proxy itself (passed explicitly; the daemon
/// always runs `service::WarrantGate`).
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl RequestGate for AllowAll {
    fn authorize<'a>(
        &'a self,
        _: &'a Identity,
        _: GateRequest<'a>,
    ) -> GateFuture<'a, Result<Verdict, Refusal>> {
        Box::pin(async { Ok(Verdict::Allow) })
    }
}
