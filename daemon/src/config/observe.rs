//! Configuration of the audit trail, the control socket and the automated
//! response rules: `[audit]`, `[control]` and `[response]`.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFailureMode {
    /// Keep serving when the audit log cannot be written; count the dropped
    /// records (metric and `warrant status`).
    Open,
    /// Refuse requests (503) while the audit log cannot be written.
    Closed,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Rotate `[daemon] audit_log` when it would grow past this many bytes;
    /// 0 never rotates. 100 MiB: a few hundred thousand records.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (audit.jsonl.1 is the newest).
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// What happens when the audit log cannot be written. Default "closed":
    /// the threat model promises that every use of a credential is audited.
    #[serde(default = "default_on_failure")]
    pub on_failure: AuditFailureMode,
    /// Also send each record to journald when running under systemd
    /// (JOURNAL_STREAM set).
    #[serde(default = "default_true")]
    pub journald: bool,
}

fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_keep() -> u32 {
    5
}
fn default_on_failure() -> AuditFailureMode {
    AuditFailureMode::Closed
}
fn default_true() -> bool {
    true
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_bytes: default_max_bytes(),
            keep: default_keep(),
            on_failure: default_on_failure(),
            journald: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// The control socket of `warrant status`, `revoke`, `restore`, `reload`
    /// and `explain`. Owned by root, mode 0600 (0660 with `admin_group`).
    #[serde(default = "default_control_socket")]
    pub socket: PathBuf,
    /// A group whose members may use the control socket besides root.
    #[serde(default)]
    pub admin_group: Option<String>,
}

pub const DEFAULT_CONTROL_SOCKET: &str = "/run/warrant/control.sock";

fn default_control_socket() -> PathBuf {
    PathBuf::from(DEFAULT_CONTROL_SOCKET)
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: default_control_socket(),
            admin_group: None,
        }
    }
}

/// Automated quarantine rules. Each trigger writes an audit record and
/// counts in `warrant_rule_triggers_total{rule}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    /// Quarantine a workload after this many policy denials within
    /// `denial_window_secs`; 0 turns the rule off. A legitimate agent sees a
    /// denial now and then; dozens a minute is probing.
    #[serde(default = "default_denials")]
    pub denials: u32,
    #[serde(default = "default_denial_window_secs")]
    pub denial_window_secs: u64,
    /// Quarantine a workload whose requests in one window exceed this
    /// multiple of its average over the previous windows; 0 (the default)
    /// turns the rule off: a baseline needs a steady workload to mean much.
    #[serde(default)]
    pub rate_multiple: f64,
    /// The rate rule's window.
    #[serde(default = "default_rate_window_secs")]
    pub rate_window_secs: u64,
    /// How many past windows make the baseline.
    #[serde(default = "default_rate_baseline_windows")]
    pub rate_baseline_windows: u32,
    /// A window with fewer requests never triggers (a workload going from
    /// 1 to 5 requests a minute is not an incident).
    #[serde(default = "default_rate_min_requests")]
    pub rate_min_requests: u64,
    /// Quarantine the workload (or, before it is known, the process) that
    /// sent what looks like a real provider key.
    #[serde(default = "default_true")]
    pub agent_key: bool,
    /// Every this many seconds, re-hash the executable and entrypoint of
    /// every process with a live connection; a change on disk quarantines
    /// its workload. 0 turns the check off.
    #[serde(default = "default_exe_check_secs")]
    pub exe_check_secs: u64,
    /// How long an automated quarantine lasts; 0 lasts until `warrant restore`.
    #[serde(default = "default_quarantine_secs")]
    pub quarantine_secs: u64,
}

fn default_denials() -> u32 {
    20
}
fn default_denial_window_secs() -> u64 {
    60
}
fn default_rate_window_secs() -> u64 {
    60
}
fn default_rate_baseline_windows() -> u32 {
    10
}
fn default_rate_min_requests() -> u64 {
    60
}
fn default_exe_check_secs() -> u64 {
    30
}
fn default_quarantine_secs() -> u64 {
    3600
}

impl Default for ResponseConfig {
    fn default() -> Self {
        ResponseConfig {
            denials: default_denials(),
            denial_window_secs: default_denial_window_secs(),
            rate_multiple: 0.0,
            rate_window_secs: default_rate_window_secs(),
            rate_baseline_windows: default_rate_baseline_windows(),
            rate_min_requests: default_rate_min_requests(),
            agent_key: true,
            exe_check_secs: default_exe_check_secs(),
            quarantine_secs: default_quarantine_secs(),
        }
    }
}
