//! The monitor: what watches the request path. It owns the audit log, the
//! metrics, the quarantine table, the automated rules and the registry of
//! live connections, so that one object is handed to the proxy and to the
//! control socket.
//!
//! The proxy creates one [`RequestLog`] per request; the phases fill it in
//! (the gate adds who called and the decision, the proxy the credential and
//! the upstream's answer, the usage module tokens and cost) and it is
//! finished exactly once, when the response body ends or is dropped. That
//! single point writes the audit line, counts the metrics and feeds the
//! rules.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use jiff::Timestamp;

use super::{
    AttestationSummary, AuditLog, AuditRecord, CredentialRef, OriginSummary, Outcome, RecordKind,
    Usage,
};
use crate::{
    config::ResponseConfig,
    control::{
        quarantine::{Quarantine, Quarantines, Target},
        rules::{RULE_EXE_CHANGED, Rules, Trigger},
    },
    metrics::{DenialLabels, Metrics, QuarantineLabels, RequestLabels, RuleLabels},
    origin::Origin,
    policy::Decision,
    proxy::live::{LiveConnection, LiveConnections, Registration},
    secret::Secret,
};

/// The label value when a workload or model is not known.
pub const UNKNOWN: &str = "unknown";

/// Where the rules read the time: the monotonic clock, or a test's.
pub type RuleClock = Arc<dyn Fn() -> Instant + Send + Sync>;

pub struct Monitor {
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub quarantines: Quarantines,
    pub rules: Rules,
    pub live: Arc<LiveConnections>,
    clock: RuleClock,
}

impl Monitor {
    pub fn new(audit: AuditLog, metrics: Arc<Metrics>, response: ResponseConfig) -> Arc<Monitor> {
        Monitor::with_clock(audit, metrics, response, Arc::new(Instant::now))
    }

    /// [`Monitor::new`] with the rules' windows on `clock`, so that a test
    /// can move time instead of waiting for it.
    pub fn with_clock(
        audit: AuditLog,
        metrics: Arc<Metrics>,
        response: ResponseConfig,
        clock: RuleClock,
    ) -> Arc<Monitor> {
        Arc::new(Monitor {
            audit,
            metrics,
            quarantines: Quarantines::default(),
            rules: Rules::new(response),
            live: Arc::new(LiveConnections::default()),
            clock,
        })
    }

    /// No audit output and no automated rules (metrics, quarantines and the
    /// connection registry still work): the injector's default.
    pub fn disabled() -> Arc<Monitor> {
        Monitor::new(
            AuditLog::disabled(),
            Arc::new(Metrics::new()),
            ResponseConfig {
                denials: 0,
                rate_multiple: 0.0,
                agent_key: false,
                exe_check_secs: 0,
                ..ResponseConfig::default()
            },
        )
    }

    /// Writes a record and counts it.
    pub fn record(&self, record: &AuditRecord) {
        if self.audit.write(record) {
            self.metrics.audit_records.inc();
        } else {
            self.metrics.audit_dropped.inc();
        }
    }

    /// Whether requests may be served (fail-closed audit).
    pub fn accepting(&self) -> bool {
        self.audit.accepting()
    }

    pub fn register(&self, origin: Origin) -> Registration {
        self.live
            .register(origin, self.metrics.live_connections.clone())
    }

    /// A connection closed before any request.
    pub fn connection_refused(&self, origin: Option<&Origin>, reason: &str) {
        self.metrics.connection("refused");
        let mut record = AuditRecord::new(RecordKind::ConnectionRefused);
        record.origin = origin.map(OriginSummary::from);
        record.message = Some(reason.to_owned());
        self.record(&record);
    }

    /// Quarantines `target`: new requests are refused, its live connections
    /// closed at once. Returns how many connections were closed.
    pub fn quarantine(
        &self,
        target: Target,
        reason: &str,
        actor: &str,
        duration: Option<Duration>,
    ) -> usize {
        let now = Timestamp::now();
        let until = duration.and_then(|d| {
            jiff::SignedDuration::try_from(d)
                .ok()
                .and_then(|d| now.checked_add(d).ok())
        });
        self.quarantines.place(Quarantine {
            target: target.clone(),
            reason: reason.to_owned(),
            actor: actor.to_owned(),
            since: now,
            until,
        });
        let closed = match &target {
            Target::Workload(name) => self.live.close_workload(name),
            Target::Pid(pid) => self.live.close_pid(*pid),
        };
        tracing::warn!(%target, reason, actor, closed, until = ?until, "quarantined");
        self.metrics
            .quarantine_actions
            .get_or_create(&QuarantineLabels {
                action: "revoke".to_owned(),
                actor: actor.to_owned(),
            })
            .inc();
        self.refresh_quarantine_gauge();
        let mut record = AuditRecord::new(RecordKind::Quarantine);
        if let Target::Workload(name) = &target {
            record.workload = Some(name.clone());
        }
        record.target = Some(target);
        record.until = until;
        record.outcome = Some(Outcome::Quarantined);
        record.actor = Some(actor.to_owned());
        record.message = Some(format!("{reason}; {closed} connection(s) closed"));
        self.record(&record);
        closed
    }

    /// Lifts a quarantine; the audit record says who.
    pub fn restore(&self, target: &Target, actor: &str) -> Option<Quarantine> {
        let lifted = self.quarantines.lift(target)?;
        tracing::info!(%target, actor, "quarantine lifted");
        self.metrics
            .quarantine_actions
            .get_or_create(&QuarantineLabels {
                action: "restore".to_owned(),
                actor: actor.to_owned(),
            })
            .inc();
        self.refresh_quarantine_gauge();
        let mut record = AuditRecord::new(RecordKind::Quarantine);
        if let Target::Workload(name) = target {
            record.workload = Some(name.clone());
        }
        record.target = Some(target.clone());
        record.actor = Some(actor.to_owned());
        record.message = Some("quarantine lifted".to_owned());
        self.record(&record);
        Some(lifted)
    }

    /// The quarantine that refuses this request, if any.
    pub fn quarantined(&self, workload: Option<&str>, tgid: u32) -> Option<Quarantine> {
        self.quarantines.check(workload, tgid, Timestamp::now())
    }

    fn refresh_quarantine_gauge(&self) {
        let active = self.quarantines.list(Timestamp::now()).len();
        self.metrics
            .quarantines_active
            .set(i64::try_from(active).unwrap_or(i64::MAX));
    }

    /// Applies a rule's trigger: quarantine, metric (the audit record is
    /// written by `quarantine`).
    pub fn triggered(&self, trigger: &Trigger, target: Target) {
        self.metrics
            .rule_triggers
            .get_or_create(&RuleLabels {
                rule: trigger.rule.to_owned(),
            })
            .inc();
        let duration = self.rules.quarantine_for();
        self.quarantine(target, &trigger.reason, trigger.rule, duration);
    }

    /// Starts the record of one request.
    pub fn request(
        self: &Arc<Self>,
        origin: &Origin,
        connection: Option<Arc<LiveConnection>>,
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
            monitor: self.clone(),
            connection,
            started: Instant::now(),
            tgid: origin.tgid,
            record: Mutex::new(record),
            finished: AtomicBool::new(false),
        }))
    }

    /// The executable-changed rule, once: re-hashes the executable and
    /// entrypoint of every process with a live attested connection, and
    /// quarantines those whose file on disk no longer matches what was
    /// attested. Returns the triggers applied.
    pub async fn check_executables(&self) -> Vec<(Target, Trigger)> {
        let mut seen = std::collections::BTreeMap::new();
        for connection in self.live.snapshot() {
            if let Some(attestation) = connection.attestation() {
                seen.entry(attestation.tgid)
                    .or_insert((connection.workload(), attestation));
            }
        }
        let work: Vec<_> = seen.into_values().collect();
        let changed = tokio::task::spawn_blocking(move || {
            work.into_iter()
                .filter_map(|(workload, attestation)| {
                    let change = changed_on_disk(&attestation)?;
                    let target = match workload {
                        Some(name) => Target::Workload(name),
                        None => Target::Pid(attestation.tgid),
                    };
                    Some((target, change))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut applied = Vec::new();
        let mut done = std::collections::BTreeSet::new();
        for (target, reason) in changed {
            if !done.insert(target.clone()) {
                continue;
            }
            let trigger = Trigger {
                rule: RULE_EXE_CHANGED,
                reason,
            };
            self.triggered(&trigger, target.clone());
            applied.push((target, trigger));
        }
        applied
    }

    /// Runs [`Monitor::check_executables`] every `[response] exe_check_secs`.
    pub fn spawn_exe_check(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.rules.config().exe_check_secs;
        if every == 0 {
            return None;
        }
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(every));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.check_executables().await;
            }
        }))
    }
}

/// Why the executable or entrypoint behind `attestation` no longer matches
/// the file on disk, if it does not.
fn changed_on_disk(attestation: &AttestationSummary) -> Option<String> {
    let files = [
        (
            "executable",
            Some(&attestation.exe),
            &attestation.exe_sha256,
        ),
        (
            "entrypoint",
            attestation.entrypoint.as_ref(),
            &attestation.entrypoint_sha256,
        ),
    ];
    for (what, path, attested) in files {
        let (Some(path), Some(attested)) = (path, attested) else {
            continue;
        };
        // /proc/PID/exe names a replaced or removed file "PATH (deleted)".
        if let Some(original) = path.strip_suffix(" (deleted)") {
            return Some(format!(
                "the {what} {original} was replaced or removed on disk while the process runs"
            ));
        }
        match sha256_of(Path::new(path)) {
            Ok(now) if &now == attested => {}
            Ok(now) => {
                return Some(format!(
                    "the {what} {path} changed on disk (attested sha256 {}, now {})",
                    short(attested),
                    short(&now)
                ));
            }
            Err(error) => {
                return Some(format!(
                    "the {what} {path} cannot be read any more: {error}"
                ));
            }
        }
    }
    None
}

fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// The record of one request in progress; cheap to clone.
#[derive(Clone)]
pub struct RequestLog(Arc<LogInner>);

struct LogInner {
    monitor: Arc<Monitor>,
    connection: Option<Arc<LiveConnection>>,
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

impl RequestLog {
    fn edit(&self, change: impl FnOnce(&mut AuditRecord)) {
        if let Ok(mut record) = self.0.record.lock() {
            change(&mut record);
        }
    }

    pub fn monitor(&self) -> &Arc<Monitor> {
        &self.0.monitor
    }

    pub fn upstream(&self, host: &str) {
        self.edit(|r| r.upstream = Some(host.to_owned()));
    }

    /// Who called: the workload (None when none matched) and the attestation.
    pub fn identified(&self, workload: Option<&str>, attestation: AttestationSummary) {
        if let Some(connection) = &self.0.connection {
            connection.set_identity(workload, &attestation);
        }
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
        self.0.monitor.metrics.upstream_responded(upstream, latency);
        self.edit(|r| r.upstream_latency_ms = Some(millis(latency)));
    }

    /// The request was sent to `upstream` again, on a new connection.
    pub fn upstream_retried(&self, upstream: &str, reason: &str) {
        self.0.monitor.metrics.upstream_retried(upstream, reason);
        self.edit(|r| r.upstream_retry = Some(reason.to_owned()));
    }

    /// For the usage module: tokens and cost of this response. Counted in
    /// the metrics at once, written with the record when it finishes.
    pub fn usage(&self, usage: Usage) {
        let (workload, model) = self
            .0
            .record
            .lock()
            .map(|r| (r.workload.clone(), r.model.clone()))
            .unwrap_or_default();
        let workload = workload.as_deref().unwrap_or(UNKNOWN);
        let model = model.as_deref().unwrap_or(UNKNOWN);
        let metrics = &self.0.monitor.metrics;
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

    pub fn workload(&self) -> Option<String> {
        self.0.record.lock().ok()?.workload.clone()
    }

    /// Ends the record: written, counted and fed to the rules, once (later
    /// calls do nothing). `complete` is false when the response body was
    /// dropped before its end (connection closed, quarantine).
    pub fn finish(&self, status: u16, response_bytes: u64, complete: bool) {
        if self.0.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        let monitor = &self.0.monitor;
        let Ok(mut record) = self.0.record.lock().map(|r| r.clone()) else {
            return;
        };
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
        let workload = record.workload.clone();
        let workload_label = workload.clone().unwrap_or_else(|| UNKNOWN.to_owned());
        // A passed-through host is whatever the agent put in Host: not a
        // label value (unbounded), the audit line has it.
        let upstream_label = match (outcome, &record.upstream) {
            (Outcome::PassedThrough, _) => "other".to_owned(),
            (_, Some(host)) => host.clone(),
            (_, None) => UNKNOWN.to_owned(),
        };
        monitor
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                workload: workload_label.clone(),
                upstream: upstream_label.clone(),
                outcome: outcome_label(outcome).to_owned(),
            })
            .inc();
        if let Some(reason) = denial_reason(&record, outcome) {
            monitor
                .metrics
                .denials
                .get_or_create(&DenialLabels {
                    workload: workload_label,
                    upstream: upstream_label,
                    reason,
                })
                .inc();
        }
        monitor.record(&record);

        // The rules, after the request's own line.
        let now = (monitor.clock)();
        let mut triggers = Vec::new();
        if let Some(trigger) = monitor.rules.agent_key(&record.agent_keys) {
            let target = match &workload {
                Some(name) => Target::Workload(name.clone()),
                None => Target::Pid(self.0.tgid),
            };
            triggers.push((trigger, target));
        }
        if let Some(name) = &workload {
            if outcome == Outcome::Denied
                && let Some(trigger) = monitor.rules.denial(name, now)
            {
                triggers.push((trigger, Target::Workload(name.clone())));
            }
            if let Some(trigger) = monitor.rules.request(name, now) {
                triggers.push((trigger, Target::Workload(name.clone())));
            }
        }
        for (trigger, target) in triggers {
            monitor.triggered(&trigger, target);
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Forwarded => "forwarded",
        Outcome::PassedThrough => "passed_through",
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

/// The `reason` label of a refused request: the failing policy factors
/// ("time", "request+posture"), or what refused it.
fn denial_reason(record: &AuditRecord, outcome: Outcome) -> Option<String> {
    match outcome {
        Outcome::Denied => Some(match &record.decision {
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
            None if record.workload.is_none() && record.attestation.is_some() => {
                "no_workload".to_owned()
            }
            None if record.attestation.is_none() => "unattested".to_owned(),
            None => "policy".to_owned(),
        }),
        Outcome::Quarantined | Outcome::AgentKey | Outcome::Refused | Outcome::AuditUnavailable => {
            Some(outcome_label(outcome).to_owned())
        }
        _ => None,
    }
}
