//! The record of one request in progress. The proxy's phases fill it in as
//! they learn things (who called, the model, the decision, the credential,
//! the upstream's answer, the metered usage) and it is finished exactly
//! once, when the response body ends or is dropped: that single point
//! writes the audit line and counts the request's metrics.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    AttestationSummary, Audit, AuditRecord, CredentialRef, CredentialRefusal, OriginSummary,
    Outcome, RecordKind, Usage,
};
use crate::{
    metrics::{DenialLabels, RequestLabels},
    origin::Origin,
    policy::Decision,
    secret::Secret,
};

/// The label value when a workload or model is not known.
pub const UNKNOWN: &str = "unknown";

/// The record of one request in progress; cheap to clone.
#[derive(Clone)]
pub struct RequestLog(Arc<LogInner>);

struct LogInner {
    audit: Arc<Audit>,
    started: Instant,
    tgid: u32,
    record: Mutex<AuditRecord>,
    finished: AtomicBool,
}

impl std::fmt::Debug for RequestLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLog")
            .field("tgid", &self.0.tgid)
            .finish()
    }
}

/// How a finished request ended, for whoever acts on it (the automated
/// response rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    pub outcome: Outcome,
}

impl RequestLog {
    pub(super) fn start(
        audit: Arc<Audit>,
        origin: &Origin,
        method: &http::Method,
        path: &str,
        request_bytes: Option<u64>,
    ) -> RequestLog {
        let mut record = AuditRecord::new(RecordKind::Request);
        record.origin = Some(OriginSummary::from(origin));
        record.method = Some(method.as_str().to_owned());
        record.path = Some(path.to_owned());
        record.request_bytes = request_bytes;
        RequestLog(Arc::new(LogInner {
            audit,
            started: Instant::now(),
            tgid: origin.tgid,
            record: Mutex::new(record),
            finished: AtomicBool::new(false),
        }))
    }

    fn edit(&self, change: impl FnOnce(&mut AuditRecord)) {
        if let Ok(mut record) = self.0.record.lock() {
            change(&mut record);
        }
    }

    pub fn upstream(&self, host: &str) {
        self.edit(|r| r.upstream = Some(host.to_owned()));
    }

    /// Who called: the workload (None when none matched) and the attestation.
    pub fn identified(&self, workload: Option<&str>, attestation: AttestationSummary) {
        self.edit(|r| {
            r.workload = workload.map(str::to_owned);
            r.attestation = Some(attestation);
        });
    }

    pub fn model(&self, model: Option<&str>) {
        self.edit(|r| r.model = model.map(str::to_owned));
    }

    pub fn decided(&self, decision: &Decision) {
        self.edit(|r| r.decision = Some(decision.clone()));
    }

    pub fn agent_keys(&self, fingerprints: Vec<String>) {
        self.edit(|r| r.agent_keys = fingerprints);
    }

    /// The credential used: its name and fingerprint only.
    pub fn credential(&self, name: &str, secret: &Secret) {
        self.edit(|r| {
            r.credential = Some(CredentialRef {
                name: name.to_owned(),
                fingerprint: secret.fingerprint(),
            });
        });
    }

    pub fn outcome(&self, outcome: Outcome, message: Option<&str>) {
        self.edit(|r| {
            r.outcome = Some(outcome);
            r.message = message.map(str::to_owned);
        });
    }

    /// The upstream's response headers arrived after `latency`.
    pub fn upstream_responded(&self, upstream: &str, latency: Duration) {
        self.0.audit.metrics.upstream_responded(upstream, latency);
        self.edit(|r| r.upstream_latency_ms = Some(millis(latency)));
    }

    /// The request was sent to `upstream` again, on a new connection.
    pub fn upstream_retried(&self, upstream: &str, reason: &str) {
        self.0.audit.metrics.upstream_retried(upstream, reason);
        self.edit(|r| r.upstream_retry = Some(reason.to_owned()));
    }

    /// The upstream refused the credential `name`: what followed, counted
    /// in the metrics (and, when the request was sent again, as a retry).
    pub fn credential_refused(&self, upstream: &str, name: &str, refusal: CredentialRefusal) {
        let metrics = &self.0.audit.metrics;
        metrics.credential_refused(name, &refusal.result);
        if refusal.retried {
            metrics.upstream_retried(upstream, "credential refused");
        }
        self.edit(|r| r.credential_refused = Some(refusal));
    }

    /// Tokens and cost of this response, metered for `workload` and the
    /// request's `model` (both passed forward by the caller, who knows them).
    /// Counted in the metrics at once, written with the record when it
    /// finishes.
    pub fn usage(&self, workload: &str, model: Option<&str>, usage: Usage) {
        let model = model.unwrap_or(UNKNOWN);
        let metrics = &self.0.audit.metrics;
        metrics.add_tokens(
            workload,
            model,
            usage.input_tokens.unwrap_or(0),
            usage.output_tokens.unwrap_or(0),
        );
        if let Some(cost) = usage.cost_usd {
            metrics.add_cost(workload, model, cost);
        }
        self.edit(|r| r.usage = Some(usage));
    }

    /// Ends the record: written and counted, once (later calls return
    /// None). `complete` is false when the response body was dropped before
    /// its end (connection closed, quarantine).
    pub fn finish(&self, status: u16, response_bytes: u64, complete: bool) -> Option<Finished> {
        if self.0.finished.swap(true, Ordering::AcqRel) {
            return None;
        }
        let audit = &self.0.audit;
        let mut record = self.0.record.lock().ok()?.clone();
        record.status = Some(status);
        record.response_bytes = Some(response_bytes);
        record.latency_ms = Some(millis(self.0.started.elapsed()));
        if !complete {
            record.message = Some(match record.message.take() {
                Some(m) => format!("{m}; connection closed before the response ended"),
                None => "connection closed before the response ended".to_owned(),
            });
            if matches!(record.outcome, None | Some(Outcome::Forwarded)) {
                record.outcome = Some(Outcome::Aborted);
            }
        }
        let outcome = record.outcome.unwrap_or(Outcome::Forwarded);
        record.outcome = Some(outcome);
        let workload_label = record
            .workload
            .clone()
            .unwrap_or_else(|| UNKNOWN.to_owned());
        // A passed-through host is whatever the agent put in Host: not a
        // label value (unbounded), the audit line has it.
        let upstream_label = match (outcome, &record.upstream) {
            (Outcome::PassedThrough, _) => "other".to_owned(),
            (_, Some(host)) => host.clone(),
            (_, None) => UNKNOWN.to_owned(),
        };
        audit
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                workload: workload_label.clone(),
                upstream: upstream_label.clone(),
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
        if let Some(reason) = record.refusal_reason() {
            audit
                .metrics
                .denials
                .get_or_create(&DenialLabels {
                    workload: workload_label,
                    upstream: upstream_label,
                    reason,
                })
                .inc();
        }
        audit.record(&record);
        Some(Finished { outcome })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
