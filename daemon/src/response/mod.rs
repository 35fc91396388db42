//! Response: what warrant does about a misbehaving agent, by an operator's
//! hand (`warrant revoke`, `warrant restore`) or on its own (the rules).
//!
//! - `quarantine`: the table of quarantined workloads and processes, whose
//!   new requests the proxy refuses right after identifying them, before
//!   policy or budgets look at them;
//! - `live`: the registry of live agent connections, so that a quarantine
//!   closes them at once (mid-stream too) and `warrant status` shows them;
//! - `rules`: the automated rules (denial bursts, request-rate spikes,
//!   real-looking agent keys, an executable changed on disk), which only
//!   decide; the [`Responder`] acts: places the quarantine, closes the
//!   connections, writes the audit record and counts the metric.
//!
//! The proxy tells the responder how each request ended
//! ([`Responder::request_finished`]), with the identity it passed forward,
//! never by reading the audit record back.

mod executables;
pub mod live;
pub mod quarantine;
pub mod rules;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use crate::{
    audit::{Audit, AuditRecord, Outcome, RecordKind},
    clock::{self, Clock},
    config::ResponseConfig,
    metrics::{QuarantineLabels, RuleLabels},
    origin::Origin,
};
use live::{LiveConnections, Registration};
pub use quarantine::{Quarantine, Quarantines, Target};
use rules::{RULE_EXE_CHANGED, Rules, Trigger};

pub struct Responder {
    audit: Arc<Audit>,
    quarantines: Quarantines,
    rules: Rules,
    live: Arc<LiveConnections>,
    /// The time quarantines start and end, and the rules' windows move.
    clock: Arc<dyn Clock>,
}

/// How one request ended, as the proxy knows it.
#[derive(Debug, Clone, Copy)]
pub struct RequestEnd<'a> {
    /// The workload the request was identified as (None: not identified).
    pub workload: Option<&'a str>,
    pub tgid: u32,
    pub outcome: Outcome,
    /// Fingerprints of real-looking keys the agent sent.
    pub agent_keys: &'a [String],
}

impl Responder {
    pub fn new(audit: Arc<Audit>, config: ResponseConfig, clock: Arc<dyn Clock>) -> Arc<Responder> {
        Arc::new(Responder {
            audit,
            quarantines: Quarantines::default(),
            rules: Rules::new(config),
            live: Arc::new(LiveConnections::default()),
            clock,
        })
    }

    /// No automated rules (operator quarantines and the connection registry
    /// still work): for tests and tools whose subject is something else.
    pub fn without_rules(audit: Arc<Audit>) -> Arc<Responder> {
        let config = ResponseConfig {
            denials: 0,
            rate_multiple: 0.0,
            agent_key: false,
            exe_check_secs: 0,
            ..ResponseConfig::default()
        };
        Responder::new(audit, config, Arc::new(clock::SystemClock))
    }

    pub fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    pub fn live(&self) -> &Arc<LiveConnections> {
        &self.live
    }

    pub fn quarantines(&self) -> &Quarantines {
        &self.quarantines
    }

    /// Registers a live connection; dropping the registration removes it.
    pub fn register(&self, origin: Origin) -> Registration {
        self.live
            .register(origin, self.audit.metrics().live_connections.clone())
    }

    /// The quarantine that refuses a request from process `tgid` of
    /// `workload` (None: not identified yet), if any.
    pub fn quarantined(&self, workload: Option<&str>, tgid: u32) -> Option<Quarantine> {
        self.quarantines.check(workload, tgid, self.clock.now())
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
        let now = self.clock.now();
        let until = duration.map(|d| clock::add(now, d));
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
        self.count_action("revoke", actor);
        let mut record = quarantine_record(&target, actor);
        record.until = until;
        record.outcome = Some(Outcome::Quarantined);
        record.message = Some(format!("{reason}; {closed} connection(s) closed"));
        self.audit.record(&record);
        closed
    }

    /// Lifts a quarantine; the audit record says who.
    pub fn restore(&self, target: &Target, actor: &str) -> Option<Quarantine> {
        let lifted = self.quarantines.lift(target)?;
        tracing::info!(%target, actor, "quarantine lifted");
        self.count_action("restore", actor);
        let mut record = quarantine_record(target, actor);
        record.message = Some("quarantine lifted".to_owned());
        self.audit.record(&record);
        Some(lifted)
    }

    fn count_action(&self, action: &str, actor: &str) {
        let metrics = self.audit.metrics();
        metrics
            .quarantine_actions
            .get_or_create(&QuarantineLabels {
                action: action.to_owned(),
                actor: actor.to_owned(),
            })
            .inc();
        let active = self.quarantines.list(self.clock.now()).len();
        metrics
            .quarantines_active
            .set(i64::try_from(active).unwrap_or(i64::MAX));
    }

    /// Feeds a finished request to the rules and applies what they trigger.
    pub fn request_finished(&self, end: &RequestEnd<'_>) {
        let now = self.clock.now();
        let mut triggers = Vec::new();
        if let Some(trigger) = self.rules.agent_key(end.agent_keys) {
            let target = match end.workload {
                Some(name) => Target::Workload(name.to_owned()),
                None => Target::Pid(end.tgid),
            };
            triggers.push((trigger, target));
        }
        if let Some(name) = end.workload {
            if end.outcome == Outcome::Denied
                && let Some(trigger) = self.rules.denial(name, now)
            {
                triggers.push((trigger, Target::Workload(name.to_owned())));
            }
            if let Some(trigger) = self.rules.request(name, now) {
                triggers.push((trigger, Target::Workload(name.to_owned())));
            }
        }
        for (trigger, target) in triggers {
            self.triggered(&trigger, target);
        }
    }

    /// Applies a rule's trigger: quarantine, metric (the audit record is
    /// written by `quarantine`).
    fn triggered(&self, trigger: &Trigger, target: Target) {
        self.audit
            .metrics()
            .rule_triggers
            .get_or_create(&RuleLabels {
                rule: trigger.rule.to_owned(),
            })
            .inc();
        let duration = self.rules.quarantine_for();
        self.quarantine(target, &trigger.reason, trigger.rule, duration);
    }

    /// The executable-changed rule, once: re-hashes the executable and
    /// entrypoint of every process with a live attested connection, and
    /// quarantines those whose file on disk no longer matches what was
    /// attested. Returns the triggers applied.
    pub async fn check_executables(&self) -> Vec<(Target, Trigger)> {
        let mut seen = BTreeMap::new();
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
                    let change = executables::changed_on_disk(&attestation)?;
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

    /// Runs [`Responder::check_executables`] every `[response] exe_check_secs`.
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

/// The start of a quarantine record about `target`.
fn quarantine_record(target: &Target, actor: &str) -> AuditRecord {
    let mut record = AuditRecord::new(RecordKind::Quarantine);
    if let Target::Workload(name) = target {
        record.workload = Some(name.clone());
    }
    record.target = Some(target.clone());
    record.actor = Some(actor.to_owned());
    record
}
