//! The `status` answer: one typed value that the daemon serializes and the
//! CLI reads back, so `warrant status` (for people) and `warrant status
//! --json` (for machines) cannot disagree about a field.
//!
//! The JSON is a stable interface: fields are added, never renamed or
//! removed, and each one is documented in the README's "Status fields"
//! table (a test fails when a field is missing there). Times are RFC 3339
//! in UTC; amounts of a budget are in its unit (requests, tokens, or
//! micro-USD for `cost_per_day_usd`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ControlBackend;
use crate::{
    attest::InstanceState,
    audit::AuditHealth,
    credentials::CredentialStatus,
    redirect::tagging::TaggerStatus,
    response::{Quarantine, Responder, live::ConnectionInfo},
    usage::BudgetStatus,
};

/// What `warrant status --json` prints (the `result` of `{"cmd":"status"}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's version.
    pub version: String,
    /// Agent connections open now.
    pub connections: Vec<ConnectionInfo>,
    /// Per workload with a live connection ("unknown" before one is
    /// identified): its connections and the requests they carried.
    pub workloads: BTreeMap<String, WorkloadActivity>,
    /// Each configured credential: fingerprint and expiry, never its value.
    pub credentials: Vec<CredentialStatus>,
    /// Budgets and metering (None: the daemon keeps no budgets).
    pub budgets: Option<BudgetStatus>,
    /// The host's instance identity (None: not part of this daemon).
    pub instance: Option<InstanceState>,
    /// The tagger: whether every cgroup the selectors name is tagged for
    /// redirection (None: this daemon redirects nothing, as in tests).
    #[serde(default)]
    pub tagging: Option<TaggerStatus>,
    /// Quarantines in force.
    pub quarantines: Vec<Quarantine>,
    /// The audit trail.
    pub audit: AuditHealth,
    /// The kernel's eBPF features as probed at start and the hooks the
    /// redirector attached: `redirect::features`'s report, as it serializes
    /// it (None: this daemon attached nothing, as in tests).
    #[serde(default)]
    pub kernel: Option<serde_json::Value>,
}

/// A workload's live connections and the requests they carried so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadActivity {
    pub connections: u64,
    pub requests: u64,
}

/// The status of the daemon made of `responder` and `backend`, now.
pub fn status(responder: &Responder, backend: &dyn ControlBackend) -> Status {
    let connections: Vec<ConnectionInfo> = responder
        .live()
        .snapshot()
        .iter()
        .map(|c| c.info())
        .collect();
    let mut workloads: BTreeMap<String, WorkloadActivity> = BTreeMap::new();
    for connection in &connections {
        let name = connection
            .workload
            .clone()
            .unwrap_or_else(|| crate::audit::UNKNOWN.to_owned());
        let entry = workloads.entry(name).or_default();
        entry.connections += 1;
        entry.requests += connection.requests;
    }
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        connections,
        workloads,
        credentials: backend.credentials(),
        budgets: backend.budgets(),
        instance: backend.instance(),
        tagging: backend.tagging(),
        quarantines: responder.quarantines().list(jiff::Timestamp::now()),
        audit: responder.audit().health(),
        kernel: backend.kernel(),
    }
}

/// A status with every field set (and optional ones present), for the
/// renderer's and the documentation's tests.
#[cfg(test)]
pub fn sample(now: jiff::Timestamp) -> Status {
    use crate::{
        audit::Target,
        response::live::ConnectionKind,
        usage::{BudgetLine, Room, window::Series},
    };
    let ago = |secs: i64| now - jiff::SignedDuration::from_secs(secs);
    let later = |secs: i64| now + jiff::SignedDuration::from_secs(secs);
    let long = "support-agent-with-a-name-longer-than-any-column".to_owned();
    let line = |budget, limit, used, in_flight, room| BudgetLine {
        workload: long.clone(),
        key: long.clone(),
        rule: 0,
        budget,
        limit,
        used: Some(used),
        in_flight: Some(in_flight),
        default_request: 4096,
        room,
    };
    Status {
        version: "0.1.0".into(),
        connections: vec![ConnectionInfo {
            id: 7,
            tgid: 4242,
            uid: 1001,
            original_dst: "162.159.140.245:443"
                .parse()
                .unwrap_or(([0, 0, 0, 0], 0).into()),
            since: ago(90),
            kind: ConnectionKind::Intercepted,
            upstream: Some("api.openai.com".into()),
            workload: Some(long.clone()),
            requests: 3,
        }],
        workloads: BTreeMap::from([(
            long.clone(),
            WorkloadActivity {
                connections: 1,
                requests: 3,
            },
        )]),
        credentials: vec![CredentialStatus {
            name: "openai-prod".into(),
            source: "oauth2".into(),
            kind: crate::credentials::CredentialKind::Token,
            fingerprint: Some("sha256:3f5a9c1e".into()),
            expires_at: Some(later(3600)),
            refresh_at: Some(later(3000)),
            failures: 1,
            retry_at: Some(later(30)),
            last_error: Some("token endpoint answered 503".into()),
        }],
        budgets: Some(BudgetStatus {
            ledger: "sqlite".into(),
            redis_reachable: None,
            local_fallback_active: false,
            recovered_in_flight: 2,
            ledger_write_errors: 1,
            responses: 1234,
            counted: 1200,
            unknown: 30,
            cut_off: 4,
            error_responses: 0,
            over_budget: 5,
            ledger_unavailable: 0,
            lines: vec![
                line(Series::TokensPerHour, 200_000, 8_243, 4_926, Room::Now),
                line(
                    Series::RequestsPerMinute,
                    60,
                    60,
                    2,
                    Room::After { secs: 41 },
                ),
                line(
                    Series::CostPerDay,
                    50_000_000,
                    12_340_000,
                    500_000,
                    Room::Now,
                ),
            ],
            windows: vec![(long.clone(), [60, 8_243, 12_340_000])],
        }),
        instance: Some(InstanceState::Attested {
            provider: "host".into(),
            verified: true,
            claims: BTreeMap::from([
                (
                    "host_key_ed25519".into(),
                    "3862c0ffee3862c0ffee3862c0ffee3862c0ffee".into(),
                ),
                ("instance_id".into(), "4c1d5e0a".into()),
                ("region".into(), "us-east-1".into()),
            ]),
            fetched_at_unix: u64::try_from(ago(7200).as_second()).unwrap_or(0),
            evidence: None,
        }),
        tagging: Some(TaggerStatus {
            healthy: true,
            tagged: 3,
            untagged: 0,
            capacity: 4096,
            errors: 0,
            last_error: None,
        }),
        quarantines: vec![Quarantine {
            target: Target::Workload(long.clone()),
            reason: "5 policy denials within 60 s".into(),
            actor: "rule deny_burst".into(),
            since: ago(300),
            until: Some(later(3300)),
        }],
        audit: AuditHealth {
            writable: true,
            written: 1234,
            dropped: 0,
            fail_closed: true,
            file: Some("/var/log/warrant/audit.jsonl".into()),
            journal: true,
        },
        kernel: Some(serde_json::json!({
            "release": "6.1.0-28-cloud-amd64",
            "features": [
                {"feature": "connect_hooks", "state": "present", "required": true,
                 "detail": "cgroup/connect4 and connect6 load", "min_kernel": "4.17"},
                {"feature": "prctl_watch", "state": "degraded", "required": false,
                 "via": "tracepoint", "detail": "no BTF: the tracepoint misses int $0x80",
                 "fix": "a kernel with BTF (CONFIG_DEBUG_INFO_BTF=y)", "min_kernel": "5.7 with BTF; 5.15"},
            ],
            "hooks": {
                "exec_start": {"attached": true, "via": "sched_prepare_exec"},
                "prctl_watch": {"attached": false, "note": "perf_event_paranoid is 3"},
            },
        })),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every field path of `value`: `a.b`, arrays as `a[].b`, and the
    /// keys of maps whose keys are data (workload names, claim names) as
    /// `a.*`.
    fn paths(value: &serde_json::Value, prefix: &str, data_keys: &[&str], out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    let key = if data_keys.contains(&prefix) {
                        "*"
                    } else {
                        key
                    };
                    let path = if prefix.is_empty() {
                        key.to_owned()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    if !out.contains(&path) {
                        out.push(path.clone());
                    }
                    paths(child, &path, data_keys, out);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    paths(item, &format!("{prefix}[]"), data_keys, out);
                }
            }
            _ => {}
        }
    }

    /// The README's "Status fields" section documents every field of the
    /// `--json` answer, each as `path` in the table's first column.
    #[test]
    fn every_status_field_is_documented_in_the_readme() {
        let readme = include_str!("../../../README.md");
        let section: String = readme
            .lines()
            .skip_while(|l| !l.starts_with("#### Status fields"))
            .skip(1)
            .take_while(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!section.is_empty(), "no Status fields section");
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let mut status = serde_json::to_value(sample(now)).unwrap();
        let mut all = Vec::new();
        paths(
            &status,
            "",
            &["workloads", "instance.claims", "kernel.hooks"],
            &mut all,
        );
        // The other shapes of the tagged enums: a failed instance
        // identity, a process quarantine, each kind of room.
        status["instance"] = serde_json::to_value(InstanceState::Failed {
            provider: "aws".into(),
            reason: "timeout".into(),
            at_unix: 1,
        })
        .unwrap();
        status["tagging"]["last_error"] = "the tagged map is full".into();
        status["quarantines"][0]["target"] =
            serde_json::to_value(crate::audit::Target::Pid(1)).unwrap();
        paths(
            &status,
            "",
            &["workloads", "instance.claims", "kernel.hooks"],
            &mut all,
        );
        let missing: Vec<&String> = all
            .iter()
            .filter(|p| !section.contains(&format!("| `{p}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "undocumented status fields: {missing:#?}"
        );
    }
}
