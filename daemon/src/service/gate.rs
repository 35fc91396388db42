//! The per-request decision: who is asking (attestation, workload) and
//! whether policy lets them. The injector asks before any credential is
//! fetched; a refusal is answered with 403 in the provider's error shape.

use std::sync::Arc;

use http::StatusCode;

use crate::{
    attest::{Attestation, Attestor, WorkloadMatcher},
    audit::{AttestationSummary, RequestLog},
    policy::{Decision, Policy, PolicyInput},
    proxy::{Admission, GateDecision, GateFuture, GateRequest, RequestGate},
    usage::{AdmitRequest, Budgets, UsageRecord, UsageSink},
};

pub struct WarrantGate {
    attestor: Arc<Attestor>,
    workloads: WorkloadMatcher,
    policy: Policy,
    /// How much of a request body to read for its "model" field (and, with
    /// token or cost budgets, its max_tokens): non-zero only when some rule
    /// needs it, so bodies otherwise stream untouched.
    body_prefix_len: usize,
    /// Metering and budgets; asked after policy allowed.
    budgets: Option<Budgets>,
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
            budgets: None,
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

    /// Meters every allowed request and enforces the rules' budgets.
    /// `rules_have_token_budgets`: some rule sets tokens_per_hour or
    /// cost_per_day_usd, whose reservations need the request's max_tokens
    /// and model from the body.
    pub fn with_budgets(mut self, budgets: Budgets, rules_have_token_budgets: bool) -> Self {
        if rules_have_token_budgets {
            self.body_prefix_len = self
                .body_prefix_len
                .max(budgets.settings().body_prefix_bytes);
        }
        self.budgets = Some(budgets);
        self
    }

    /// Metering and budget state, for `warrant status` and metrics.
    pub fn budgets(&self) -> Option<&Budgets> {
        self.budgets.as_ref()
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
        let parsed = request.request;
        let path = parsed.path.as_str();
        let model = parsed.model.as_deref();
        request.audit.model(model);
        let decision = self.decide_for(
            workload,
            &attestation,
            request.upstream,
            parsed.method.as_str(),
            path,
            model,
        );
        request.audit.decided(&decision);
        if decision.allowed {
            tracing::debug!(workload, upstream = request.upstream, path, "allowed");
            let Some(budgets) = &self.budgets else {
                return GateDecision::Allow;
            };
            // The budget factor: asked last, like policy's BudgetGate, but
            // here because it awaits the ledger (Redis) and hands back the
            // reservation the response settles.
            let limits = decision
                .rule
                .and_then(|rule| self.policy.limits(rule))
                .unwrap_or_default();
            match budgets
                .admit(AdmitRequest {
                    workload,
                    upstream: request.upstream,
                    scheme: request.scheme,
                    request: parsed,
                    limits,
                })
                .await
            {
                Ok(observer) => {
                    let audited = observer.with_sink(Arc::new(AuditUsage(request.audit.clone())));
                    GateDecision::Admit(Admission::new(Box::new(audited)))
                }
                Err(refusal) => {
                    let message = format!("workload {workload:?}: {}", refusal.message());
                    tracing::info!(workload, upstream = request.upstream, path, reason = %message, "refused by budget");
                    refusal.into_decision(message)
                }
            }
        } else {
            let summary = decision.summary();
            tracing::info!(workload, upstream = request.upstream, path, reasons = %summary, "denied by policy");
            refuse(format!(
                "workload {workload:?} is not allowed this request: {summary}"
            ))
        }
    }
}

/// Puts a request's metered usage on its audit line (and, through it, in
/// the token and cost metrics).
struct AuditUsage(RequestLog);

impl UsageSink for AuditUsage {
    fn record(&self, record: &UsageRecord) {
        self.0.usage(crate::audit::Usage {
            input_tokens: Some(record.usage.input_tokens),
            output_tokens: Some(record.usage.output_tokens),
            cost_usd: Some(record.cost_micro_usd as f64 / 1e6),
        });
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
