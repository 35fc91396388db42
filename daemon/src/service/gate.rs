//! The per-request decision: who is asking (attestation, workload) and
//! whether policy lets them. The injector asks before any credential is
//! fetched; a refusal is answered with 403 in the provider's error shape.

use std::sync::Arc;

use http::StatusCode;

use crate::{
    attest::{Attestation, Attestor, WorkloadMatcher},
    audit::AttestationSummary,
    policy::{Decision, Policy, PolicyInput},
    proxy::{GateDecision, GateFuture, GateRequest, RequestGate},
};

pub struct WarrantGate {
    attestor: Arc<Attestor>,
    workloads: WorkloadMatcher,
    policy: Policy,
    /// How much of a request body to read for its "model" field: non-zero
    /// only when some rule names models, so bodies otherwise stream untouched.
    body_prefix_len: usize,
}

/// Enough for the "model" field of any sensible request, which clients put
/// near the start; a model past this prefix is not found and a rule that
/// names models then denies.
pub const MODEL_PREFIX_LEN: usize = 64 * 1024;

impl WarrantGate {
    pub fn new(
        attestor: Arc<Attestor>,
        workloads: WorkloadMatcher,
        policy: Policy,
        rules_name_models: bool,
    ) -> Self {
        let body_prefix_len = if rules_name_models {
            MODEL_PREFIX_LEN
        } else {
            0
        };
        WarrantGate {
            attestor,
            workloads,
            policy,
            body_prefix_len,
        }
    }

    /// The policy decision for a request by an attested process of
    /// `workload`: what the gate enforces and `warrant explain --request`
    /// shows, computed the same way.
    pub fn decide_for(
        &self,
        workload: &str,
        attestation: &Attestation,
        upstream: &str,
        method: &str,
        path: &str,
        model: Option<&str>,
    ) -> Decision {
        let instance = attestation.instance.as_ref();
        let exe_sha256 = attestation.exe_hash.bytes();
        self.policy.evaluate(&PolicyInput {
            workload,
            environment: instance.claim("environment").ok(),
            region: instance.claim("region").ok(),
            exe_path: Some(attestation.exe.as_path()),
            exe_sha256: exe_sha256.as_ref(),
            upstream_host: upstream,
            method,
            path,
            model,
            now: jiff::Timestamp::now(),
        })
    }

    pub fn workloads(&self) -> &WorkloadMatcher {
        &self.workloads
    }

    async fn decide(&self, request: &GateRequest<'_>) -> GateDecision {
        // Known processes are answered inline; a first attestation (reading
        // /proc, hashing) runs on the blocking pool.
        let attestation = match self.attestor.attest_async(*request.origin).await {
            Ok(attestation) => attestation,
            Err(error) => {
                tracing::warn!(tgid = request.origin.tgid, %error, "attestation failed: request refused");
                return refuse(format!(
                    "the calling process could not be attested: {error}"
                ));
            }
        };
        let report = self.workloads.evaluate(&attestation);
        request.audit.identified(
            report.matched.as_deref(),
            AttestationSummary::of(&attestation),
        );
        let Some(workload) = report.matched.as_deref() else {
            let refusal = report.refusal(&attestation);
            tracing::warn!(tgid = attestation.tgid, unit = ?attestation.unit, exe = %attestation.exe.display(), "no workload matches: request refused");
            return refuse(format!(
                "no [[workload]] matches the calling process: {refusal}"
            ));
        };
        let model = crate::policy::model_of(request.scheme, request.path, request.body_prefix);
        request.audit.model(model.as_deref());
        let decision = self.decide_for(
            workload,
            &attestation,
            request.upstream,
            request.method.as_str(),
            request.path,
            model.as_deref(),
        );
        request.audit.decided(&decision);
        if decision.allowed {
            tracing::debug!(
                workload,
                upstream = request.upstream,
                path = request.path,
                "allowed"
            );
            GateDecision::Allow
        } else {
            let summary = decision.summary();
            tracing::info!(workload, upstream = request.upstream, path = request.path, reasons = %summary, "denied by policy");
            refuse(format!(
                "workload {workload:?} is not allowed this request: {summary}"
            ))
        }
    }
}

fn refuse(message: String) -> GateDecision {
    GateDecision::Refuse {
        status: StatusCode::FORBIDDEN,
        message,
    }
}

impl RequestGate for WarrantGate {
    fn check<'a>(&'a self, request: GateRequest<'a>) -> GateFuture<'a> {
        Box::pin(async move { self.decide(&request).await })
    }

    fn body_prefix_len(&self) -> usize {
        self.body_prefix_len
    }
}
