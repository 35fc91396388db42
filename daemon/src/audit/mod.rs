//! The audit trail: one JSON line per request, per refused connection and
//! per quarantine, so that an operator can answer "which program called
//! which model, under which policy, with which credential, at what cost".
//!
//! - `record`: the line's shape (`AuditRecord`); credentials appear only as
//!   name and fingerprint.
//! - `log`: where lines go (file with size-based rotation, journald) and
//!   what happens when they cannot be written (fail-open or fail-closed).
//! - `monitor`: the hub the proxy and the control socket share (audit,
//!   metrics, quarantines, rules, live connections) and the per-request
//!   `RequestLog`.

mod log;
mod monitor;
mod record;

pub use log::{AuditHealth, AuditLog, JOURNAL_SOCKET};
pub use monitor::{Monitor, RequestLog, UNKNOWN};
pub use record::{
    AttestationSummary, AuditRecord, CredentialRef, OriginSummary, Outcome, RecordKind, Usage,
};
