//! The audit record: one JSON line per request, per refused connection and
//! per quarantine. Built from facts the request path already has; never
//! holds a credential, only its name and `secret::fingerprint`.
//!
//! The same type reads the lines back (`audit::query`, `warrant audit`):
//! one schema for writing and reading.

use serde::{Deserialize, Serialize};

use crate::{
    attest::{Attestation, UserNamespace},
    origin::Origin,
    policy::Decision,
};

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// One HTTP request through the injector.
    Request,
    /// A connection closed before any request: no Origin, or over the cap.
    ConnectionRefused,
    /// A workload or process put in (or out of) quarantine, by an operator
    /// or an automated rule.
    Quarantine,
    /// The daemon started (also the first write, so that a fail-closed
    /// audit log that cannot be written refuses the very first request).
    Daemon,
}

/// How a request ended, for filtering without parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Forwarded with the credential; `status` is the upstream's.
    Forwarded,
    /// Plain HTTP to a host that is not configured: forwarded unchanged.
    PassedThrough,
    /// Answered by warrant itself: a tagged agent's request to the cloud
    /// metadata service, given placeholder credentials.
    Emulated,
    /// Refused by policy (or attestation, or no matching workload).
    Denied,
    /// Refused because the workload or process is quarantined.
    Quarantined,
    /// Refused because the agent sent what looks like a real key.
    AgentKey,
    /// Refused by the injector itself (bad destination, unreadable request).
    Refused,
    /// The credential could not be had.
    NoCredential,
    /// The upstream failed or timed out.
    UpstreamError,
    /// Refused because the audit log cannot be written (fail-closed).
    AuditUnavailable,
    /// The connection was closed before the response ended.
    Aborted,
}

impl Outcome {
    /// Its name in records and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::PassedThrough => "passed_through",
            Outcome::Emulated => "emulated",
            Outcome::Denied => "denied",
            Outcome::Quarantined => "quarantined",
            Outcome::AgentKey => "agent_key",
            Outcome::Refused => "refused",
            Outcome::NoCredential => "no_credential",
            Outcome::UpstreamError => "upstream_error",
            Outcome::AuditUnavailable => "audit_unavailable",
            Outcome::Aborted => "aborted",
        }
    }
}

/// The attestation as the audit record shows it: who called.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationSummary {
    pub tgid: u32,
    pub uid: u32,
    pub unit: Option<String>,
    pub cgroup: Option<String>,
    pub exe: String,
    pub exe_sha256: Option<String>,
    pub entrypoint: Option<String>,
    pub entrypoint_sha256: Option<String>,
    /// "host" or "nested:<inode>"; absent only from records made without
    /// an [`Attestation`].
    pub user_namespace: Option<UserNamespace>,
    pub instance_id: Option<String>,
    pub region: Option<String>,
    /// At a gateway: the enrolled node that vouched for the caller (the
    /// fields above are what its signed statement says), and the workload
    /// the node matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_workload: Option<String>,
    /// At a gateway: the token that identified an agent without a node
    /// (never the token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenSummary>,
}

/// Which token identified a caller: its issuer, subject and fingerprint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSummary {
    pub issuer: String,
    pub subject: String,
    /// `secret::fingerprint` of the whole token.
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
}

impl AttestationSummary {
    pub fn of(attestation: &Attestation) -> AttestationSummary {
        let instance = attestation.instance.as_ref();
        let entrypoint = attestation.entrypoint.as_ref();
        AttestationSummary {
            tgid: attestation.tgid,
            uid: attestation.uid,
            unit: attestation.unit.clone(),
            cgroup: attestation.cgroup.clone(),
            exe: attestation.exe.display().to_string(),
            exe_sha256: attestation.exe_hash.hex().map(str::to_owned),
            entrypoint: entrypoint
                .and_then(|e| e.path.as_ref())
                .map(|p| p.display().to_string()),
            entrypoint_sha256: entrypoint.and_then(|e| e.hash.hex()).map(str::to_owned),
            user_namespace: Some(attestation.user_namespace),
            instance_id: instance.claim("instance_id").ok().map(str::to_owned),
            region: instance.claim("region").ok().map(str::to_owned),
            node: None,
            node_workload: None,
            token: None,
        }
    }
}

/// What a quarantine record is about (see `response`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Workload(String),
    /// A process (its tgid), whatever its workload.
    Pid(u32),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Workload(name) => write!(f, "workload {name:?}"),
            Target::Pid(pid) => write!(f, "pid {pid}"),
        }
    }
}

/// The connection as the kernel described it (before attestation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginSummary {
    pub tgid: u32,
    pub uid: u32,
    pub cgroup_id: u64,
    pub original_dst: std::net::SocketAddr,
}

impl From<&Origin> for OriginSummary {
    fn from(origin: &Origin) -> Self {
        OriginSummary {
            tgid: origin.tgid,
            uid: origin.uid,
            cgroup_id: origin.cgroup_id,
            original_dst: origin.original_dst,
        }
    }
}

/// The credential used: its name and fingerprint, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRef {
    pub name: String,
    pub fingerprint: String,
}

/// An upstream refused the request's credential (401 or 403): what warrant
/// did about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRefusal {
    /// The upstream's status.
    pub status: u16,
    /// refreshed (a new value was fetched), unchanged (the issuer gave the
    /// same value), not_refreshed (fetched again too recently, or the
    /// source cannot), failed (the fetch failed). Borrowed when written,
    /// owned when `warrant audit` reads it back.
    pub result: std::borrow::Cow<'static, str>,
    /// The new value's fingerprint, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The request was sent again with the new value (its body could be
    /// given again).
    pub retried: bool,
}

/// Token and cost accounting, filled by the usage module when it parsed the
/// response (absent fields: not known).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// One audit line. Optional fields are left out when unknown, so a line says
/// only what was established.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub kind: RecordKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<OriginSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation: Option<AttestationSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Without the query string (it may carry a key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The policy decision with every factor and its reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialRef>,
    /// Fingerprints of real-looking keys the agent sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_keys: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// From the request's arrival to the end of the response body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// From forwarding to the upstream's response headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_latency_ms: Option<u64>,
    /// Why the request was sent to the upstream a second time, on a new
    /// connection (the upstream had not processed the first: "stream
    /// refused", "left out by GOAWAY", "not sent").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_retry: Option<String>,
    /// The upstream refused the credential (401, 403) and what followed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_refused: Option<CredentialRefusal>,
    /// The request body's declared length (Content-Length), when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_bytes: Option<u64>,
    /// Response body bytes sent to the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<u64>,
    /// Why, in words (a refusal's message, a quarantine's reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For quarantine records: who acted (operator, or the rule's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// For quarantine records: what was quarantined or restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// For quarantine records: when it ends (absent: until restored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<jiff::Timestamp>,
}

impl AuditRecord {
    pub fn new(kind: RecordKind) -> AuditRecord {
        AuditRecord {
            time: jiff::Timestamp::now().to_string(),
            kind,
            outcome: None,
            origin: None,
            workload: None,
            attestation: None,
            upstream: None,
            method: None,
            path: None,
            model: None,
            decision: None,
            credential: None,
            agent_keys: Vec::new(),
            status: None,
            usage: None,
            latency_ms: None,
            upstream_latency_ms: None,
            upstream_retry: None,
            credential_refused: None,
            request_bytes: None,
            response_bytes: None,
            message: None,
            actor: None,
            target: None,
            until: None,
        }
    }

    /// The JSON line, without its newline.
    pub fn to_line(&self) -> String {
        // Serializing plain data into a String cannot fail; the fallback
        // keeps the line valid JSON all the same.
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"kind\":\"error\",\"message\":{:?}}}", e.to_string()))
    }

    /// Why the request was refused, as one word or a few joined by "+":
    /// the failing policy factors ("time", "request+posture"), "budget",
    /// "no_workload", "unattested", or the refusing outcome ("quarantined",
    /// "agent_key", "refused", "audit_unavailable"). None for a request
    /// that was not refused (forwarded, or failed upstream). The metrics'
    /// `reason` label and `warrant audit`'s summary both use it.
    pub fn refusal_reason(&self) -> Option<String> {
        let outcome = self.outcome?;
        match outcome {
            Outcome::Denied => Some(match &self.decision {
                // Policy allowed it; the budget refused (429, an unpriced
                // model, or the shared ledger unreachable).
                Some(decision) if decision.allowed => "budget".to_owned(),
                Some(decision) => {
                    let mut factors: Vec<String> = decision
                        .deny_reasons()
                        .map(|f| {
                            serde_json::to_value(f.factor)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_else(|| "policy".to_owned())
                        })
                        .collect();
                    factors.dedup();
                    if factors.is_empty() {
                        "policy".to_owned()
                    } else {
                        factors.join("+")
                    }
                }
                None if self.workload.is_none() && self.attestation.is_some() => {
                    "no_workload".to_owned()
                }
                None if self.attestation.is_none() => "unattested".to_owned(),
                None => "policy".to_owned(),
            }),
            Outcome::Quarantined
            | Outcome::AgentKey
            | Outcome::Refused
            | Outcome::AuditUnavailable => Some(outcome.as_str().to_owned()),
            _ => None,
        }
    }
}
