//! The audit trail: one JSON line per request, per refused connection and
//! per quarantine, so that an operator can answer "which program called
//! which model, under which policy, with which credential, at what cost".
//!
//! Audit is a sink: the request path writes to it and never reads from it.
//! Who called, the model and the decision flow forward through the proxy's
//! phases; the record only collects them.
//!
//! - `record`: the line's shape (`AuditRecord`); credentials appear only as
//!   name and fingerprint.
//! - `log`: where lines go (file with size-based rotation, journald) and
//!   what happens when they cannot be written (fail-open or fail-closed).
//! - `request`: the record of one request in progress ([`RequestLog`]),
//!   written and counted in the metrics once, when the response ends;
//! - [`query`]: the files read back for the operator (`warrant audit`),
//!   never by the request path.

mod health;
mod log;
pub mod query;
mod record;
mod request;

use std::sync::Arc;

pub use log::{AuditHealth, AuditLog, FLUSH_INTERVAL, JOURNAL_SOCKET};
pub use record::{
    AttestationSummary, AuditRecord, CredentialRef, CredentialRefusal, OriginSummary, Outcome,
    RecordKind, Target, TokenSummary, Usage,
};
pub use request::{Finished, RequestLog, UNKNOWN};

use crate::{metrics::Metrics, origin::Origin};

/// Where every record goes: the audit log, and the metrics that count
/// records and requests.
pub struct Audit {
    log: AuditLog,
    metrics: Arc<Metrics>,
}

impl Audit {
    pub fn new(log: AuditLog, metrics: Arc<Metrics>) -> Arc<Audit> {
        log.count_in(metrics.audit_records.clone(), metrics.audit_dropped.clone());
        Arc::new(Audit { log, metrics })
    }

    /// No audit output (metrics still count): for tests and tools that do
    /// not keep an audit trail. The daemon always opens its log.
    pub fn disabled() -> Arc<Audit> {
        Audit::new(AuditLog::disabled(), Arc::new(Metrics::new()))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Queues a record for the log (written within
    /// `log::FLUSH_INTERVAL`, counted in the metrics when it is written or
    /// dropped). Without a file, the record counts as written at once.
    pub fn record(&self, record: &AuditRecord) {
        if !self.log.write(record) {
            self.metrics.audit_records.inc();
        }
    }

    /// Writes every queued record now (at shutdown).
    pub fn flush(&self) {
        self.log.flush();
    }

    /// Whether requests may be served (fail-closed audit).
    pub fn accepting(&self) -> bool {
        self.log.accepting()
    }

    pub fn health(&self) -> AuditHealth {
        self.log.health()
    }

    /// A connection closed before any request.
    pub fn connection_refused(&self, origin: Option<&Origin>, reason: &str) {
        self.metrics.connection("refused");
        let mut record = AuditRecord::new(RecordKind::ConnectionRefused);
        record.origin = origin.map(OriginSummary::from);
        record.message = Some(reason.to_owned());
        self.record(&record);
    }

    /// Starts the record of one request.
    pub fn request(
        self: &Arc<Self>,
        origin: &Origin,
        method: &http::Method,
        path: &str,
        request_bytes: Option<u64>,
    ) -> RequestLog {
        RequestLog::start(self.clone(), origin, method, path, request_bytes)
    }
}
