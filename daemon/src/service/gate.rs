//! The daemon's gate: who is asking (attestation, workload), then whether
//! policy and budgets let them. The proxy asks before any credential is
//! fetched, in two steps (see `proxy::gate`): `identify`, after which it
//! checks quarantines, and `authorize`.

use std::{collections::HashMap, sync::Arc};

use http::StatusCode;

use crate::{
    attest::{Attestation, Attestor, Rechecked, WorkloadMatcher},
    audit::{AttestationSummary, RequestLog},
    origin::Origin,
    policy::{Decision, Policy, PolicyInput},
    provider,
    proxy::{GateFuture, GateRequest, Identity, Refusal, RequestGate, Verdict},
    usage::{Admission, AdmitRequest, BudgetRefusal, Budgets, UsageRecord, UsageSink},
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
    /// The identity last established for each connection's Origin, with
    /// what its attestation was made of: a request whose process rechecks
    /// to the same makes the same identity (the workload selectors read
    /// only the attestation), so it is not evaluated again. Per generation:
    /// a reload starts empty.
    identities: std::sync::Mutex<HashMap<Origin, (Rechecked, Identity)>>,
}

/// Identities kept before the memo is emptied (one per live connection's
/// Origin is all it needs).
const MAX_IDENTITIES: usize = 4096;

/// How much of a body is read for its "model" without budgets (with them,
/// `[usage] body_prefix_bytes`, the same by default). A JSON body whose
/// top-level object does not end within it is refused (`proxy::phases`):
/// the model could be given again after the cut.
pub const MODEL_PREFIX_LEN: usize = crate::config::usage::defaults::BODY_PREFIX_BYTES;

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
            identities: Default::default(),
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
        request: &provider::Request,
    ) -> Decision {
        let instance = attestation.instance.as_ref();
        let exe_sha256 = attestation.exe_hash.bytes();
        let program_refusal = self.workloads.program_refusal(workload, attestation);
        self.policy.evaluate(&PolicyInput {
            workload,
            environment: instance.claim("environment").ok(),
            region: instance.claim("region").ok(),
            exe_path: Some(attestation.exe.as_path()),
            exe_sha256: exe_sha256.as_ref(),
            program_refusal: program_refusal.as_deref(),
            ..request_input(workload, upstream, request)
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
        // One read limit, `[usage] body_prefix_bytes`, whatever needs the
        // body: the refusal of a body that does not end within it names it.
        if rules_have_token_budgets || self.body_prefix_len > 0 {
            self.body_prefix_len = budgets.settings().body_prefix_bytes;
        }
        self.budgets = Some(budgets);
        self
    }

    /// Metering and budget state, for `warrant status` and metrics.
    pub fn budgets(&self) -> Option<&Budgets> {
        self.budgets.as_ref()
    }

    async fn identify_origin(&self, origin: &Origin) -> Result<Identity, Refusal> {
        // Known processes are rechecked inline; a first attestation
        // (reading /proc, hashing) runs on the blocking pool.
        let attestation = match self.attestor.recheck(origin) {
            Ok(Some(rechecked)) => return Ok(self.identify_rechecked(origin, rechecked)),
            Ok(None) => self.attestor.attest_async(*origin).await,
            Err(error) => Err(error),
        };
        let attestation = attestation.map_err(|error| {
            tracing::warn!(tgid = origin.tgid, %error, "attestation failed: request refused");
            Refusal::policy(
                StatusCode::FORBIDDEN,
                format!("the calling process could not be attested: {error}"),
            )
        })?;
        Ok(self.identify_attested(attestation))
    }

    /// The identity of a rechecked process: the one last made for this
    /// Origin when the process rechecks to the same, else made now.
    fn identify_rechecked(&self, origin: &Origin, rechecked: Rechecked) -> Identity {
        let lock = || {
            self.identities
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        if let Some((known, identity)) = lock().get(origin)
            && known.same_as(&rechecked)
        {
            return identity.clone();
        }
        let identity = self.identify_attested(self.attestor.assemble_rechecked(origin, &rechecked));
        let mut identities = lock();
        if identities.len() >= MAX_IDENTITIES {
            identities.clear();
        }
        identities.insert(*origin, (rechecked, identity.clone()));
        identity
    }

    /// Who an attested process is: the workload it matches, and why that
    /// workload's rules cannot believe its program, if they cannot.
    fn identify_attested(&self, attestation: Attestation) -> Identity {
        let workload = self.workloads.evaluate(&attestation).matched;
        let program_refusal = workload
            .as_deref()
            .and_then(|w| self.workloads.program_refusal(w, &attestation));
        Identity {
            workload,
            summary: AttestationSummary::of(&attestation),
            attestation: Some(Arc::new(attestation)),
            program_refusal,
            remote: None,
        }
    }

    /// The policy decision for a caller a node vouched for (at a gateway):
    /// as [`Self::decide_for`], on what the node's statement says of the
    /// process and its instance (the instance's claims count only when the
    /// node verified them).
    pub fn decide_remote(
        &self,
        workload: &str,
        remote: &crate::gateway::Verified,
        upstream: &str,
        request: &crate::provider::Request,
    ) -> Decision {
        let process = &remote.statement.process;
        // What the gateway verified of a node enrolled by its instance,
        // else what the node said.
        let instance = remote.instance();
        let claim = |name: &str| {
            instance
                .verified
                .then(|| instance.claims.get(name).map(String::as_str))
                .flatten()
        };
        let exe_sha256: Option<[u8; 32]> = process
            .exe_sha256
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| b.try_into().ok());
        self.policy.evaluate(&PolicyInput {
            workload,
            environment: claim("environment"),
            region: claim("region"),
            exe_path: Some(std::path::Path::new(&process.exe)),
            exe_sha256: exe_sha256.as_ref(),
            program_refusal: process.program_refusal.as_deref(),
            ..request_input(workload, upstream, request)
        })
    }

    /// The policy decision for an agent identified by its token (at a
    /// gateway): no process, executable or instance stands behind it, so
    /// rules on those fail as for a process that cannot show them.
    pub fn decide_token(
        &self,
        workload: &str,
        upstream: &str,
        request: &crate::provider::Request,
    ) -> Decision {
        self.policy
            .evaluate(&request_input(workload, upstream, request))
    }

    async fn authorize_request(
        &self,
        identity: &Identity,
        request: &GateRequest<'_>,
    ) -> Result<Verdict, Refusal> {
        if let (None, Some(remote)) = (&identity.attestation, identity.remote.as_deref()) {
            let workload = remote.workload();
            let decision = match remote {
                crate::gateway::Remote::Node(node) => {
                    self.decide_remote(workload, node, request.upstream, request.request)
                }
                crate::gateway::Remote::Token(_) => {
                    self.decide_token(workload, request.upstream, request.request)
                }
            };
            return self.enforce(workload, &decision, request).await;
        }
        let Some(attestation) = identity.attestation.as_deref() else {
            return Err(Refusal::policy(
                StatusCode::FORBIDDEN,
                "the calling process was not attested",
            ));
        };
        let Some(workload) = identity.workload.as_deref() else {
            let refusal = self.workloads.evaluate(attestation).refusal(attestation);
            tracing::warn!(tgid = attestation.tgid, unit = ?attestation.unit, exe = %attestation.exe.display(), "no workload matches: request refused");
            return Err(Refusal::policy(
                StatusCode::FORBIDDEN,
                format!("no [[workload]] matches the calling process: {refusal}"),
            ));
        };
        let parsed = request.request;
        let decision = self.decide_for(workload, attestation, request.upstream, parsed);
        self.enforce(workload, &decision, request).await
    }

    /// A policy decision recorded and enforced, then the budgets asked.
    async fn enforce(
        &self,
        workload: &str,
        decision: &Decision,
        request: &GateRequest<'_>,
    ) -> Result<Verdict, Refusal> {
        let path = request.request.path.as_str();
        request.audit.decided(decision);
        if !decision.allowed {
            let summary = decision.summary();
            tracing::info!(workload, upstream = request.upstream, path, reasons = %summary, "denied by policy");
            return Err(Refusal::policy(
                StatusCode::FORBIDDEN,
                format!("workload {workload:?} is not allowed this request: {summary}"),
            ));
        }
        tracing::debug!(workload, upstream = request.upstream, path, "allowed");
        self.admit(workload, decision, request).await
    }

    /// The budget factor: asked last, like policy's BudgetGate, but here
    /// because it awaits the ledger (Redis) and hands back the reservation
    /// the response settles.
    async fn admit(
        &self,
        workload: &str,
        decision: &Decision,
        request: &GateRequest<'_>,
    ) -> Result<Verdict, Refusal> {
        let Some(budgets) = &self.budgets else {
            return Ok(Verdict::Allow);
        };
        let limits = decision
            .rule
            .and_then(|rule| self.policy.limits(rule))
            .unwrap_or_default();
        let admitted = budgets
            .admit(AdmitRequest {
                workload,
                upstream: request.upstream,
                scheme: request.scheme,
                request: request.request,
                limits,
            })
            .await;
        match admitted {
            Ok(observer) => {
                let audited = observer.with_sink(Arc::new(AuditUsage {
                    log: request.audit.clone(),
                    workload: workload.to_owned(),
                    model: request.request.model.clone(),
                }));
                Ok(Verdict::Admit(Admission::new(Box::new(audited))))
            }
            Err(refusal) => {
                let message = format!("workload {workload:?}: {}", refusal.message());
                tracing::info!(workload, upstream = request.upstream, path = %request.request.path, reason = %message, "refused by budget");
                Err(budget_refusal(&refusal, message))
            }
        }
    }
}

/// The proxy's answer to a budget refusal: 429 with Retry-After when over a
/// budget, else the refusal's status.
fn budget_refusal(refusal: &BudgetRefusal, message: String) -> Refusal {
    match refusal.retry_after() {
        Some(retry_after) => Refusal::throttled(message, retry_after),
        None => Refusal::policy(refusal.status(), message),
    }
}

/// Puts a request's metered usage on its audit line (and, through it, in
/// the token and cost metrics), with the workload and model passed forward.
struct AuditUsage {
    log: RequestLog,
    workload: String,
    model: Option<String>,
}

impl UsageSink for AuditUsage {
    fn record(&self, record: &UsageRecord) {
        self.log.usage(
            &self.workload,
            self.model.as_deref(),
            crate::audit::Usage {
                input_tokens: Some(record.usage.input_tokens),
                output_tokens: Some(record.usage.output_tokens),
                cost_usd: Some(record.cost_micro_usd as f64 / 1e6),
            },
        );
    }
}

impl RequestGate for WarrantGate {
    fn identify<'a>(&'a self, origin: &'a Origin) -> GateFuture<'a, Result<Identity, Refusal>> {
        Box::pin(self.identify_origin(origin))
    }

    fn authorize<'a>(
        &'a self,
        identity: &'a Identity,
        request: GateRequest<'a>,
    ) -> GateFuture<'a, Result<Verdict, Refusal>> {
        Box::pin(async move { self.authorize_request(identity, &request).await })
    }

    fn body_prefix_len(&self) -> usize {
        self.body_prefix_len
    }
}

/// The policy input of `request`, with no identity facts beyond the
/// workload (no instance claims, no executable): the callers fill in what
/// their caller can show.
fn request_input<'a>(
    workload: &'a str,
    upstream: &'a str,
    request: &'a crate::provider::Request,
) -> PolicyInput<'a> {
    PolicyInput {
        workload,
        environment: None,
        region: None,
        exe_path: None,
        exe_sha256: None,
        program_refusal: None,
        upstream_host: upstream,
        method: request.method.as_str(),
        path: &request.path,
        model: request.model.as_deref(),
        project: request.project.as_deref(),
        location: request.location.as_deref(),
        body: Some(&request.body),
        unmetered: request.unmetered,
        now: jiff::Timestamp::now(),
    }
}
