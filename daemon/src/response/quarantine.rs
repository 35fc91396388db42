//! Quarantines: workloads and processes whose new requests are refused.
//! Placed by `warrant revoke` or an automated rule, lifted by `warrant
//! restore` or when their time is up.

use std::{collections::BTreeMap, sync::Mutex};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use crate::audit::Target;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub target: Target,
    pub reason: String,
    /// "operator" or the rule's name.
    pub actor: String,
    pub since: Timestamp,
    /// None: until restored.
    pub until: Option<Timestamp>,
}

#[derive(Debug, Default)]
pub struct Quarantines {
    entries: Mutex<BTreeMap<Target, Quarantine>>,
}

impl Quarantines {
    /// Places (or replaces) a quarantine.
    pub fn place(&self, quarantine: Quarantine) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(quarantine.target.clone(), quarantine);
        }
    }

    /// Lifts a quarantine; returns it if there was one.
    pub fn lift(&self, target: &Target) -> Option<Quarantine> {
        self.entries.lock().ok()?.remove(target)
    }

    /// The quarantine that refuses a request of `workload` (when known)
    /// from process `tgid` at `now`. Expired entries are dropped here.
    pub fn check(&self, workload: Option<&str>, tgid: u32, now: Timestamp) -> Option<Quarantine> {
        let Ok(mut entries) = self.entries.lock() else {
            // A poisoned lock: refuse rather than let a revoked agent through.
            return Some(Quarantine {
                target: Target::Pid(tgid),
                reason: "quarantine table unavailable".to_owned(),
                actor: "warrant".to_owned(),
                since: now,
                until: None,
            });
        };
        entries.retain(|_, q| q.until.is_none_or(|until| until > now));
        let by_pid = entries.get(&Target::Pid(tgid));
        let by_workload = workload.and_then(|w| entries.get(&Target::Workload(w.to_owned())));
        by_workload.or(by_pid).cloned()
    }

    /// Those in force at `now`, sorted.
    pub fn list(&self, now: Timestamp) -> Vec<Quarantine> {
        let Ok(mut entries) = self.entries.lock() else {
            return Vec::new();
        };
        entries.retain(|_, q| q.until.is_none_or(|until| until > now));
        entries.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn q(target: Target, until: Option<Timestamp>) -> Quarantine {
        Quarantine {
            target,
            reason: "test".into(),
            actor: "operator".into(),
            since: Timestamp::UNIX_EPOCH,
            until,
        }
    }

    #[test]
    fn a_quarantine_refuses_its_workload_or_pid_until_lifted_or_expired() {
        let table = Quarantines::default();
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        table.place(q(Target::Workload("a".into()), Some(t1)));
        table.place(q(Target::Pid(7), None));
        assert!(table.check(Some("a"), 1, t0).is_some());
        assert!(table.check(Some("b"), 1, t0).is_none());
        assert!(table.check(None, 7, t0).is_some());
        assert!(table.check(Some("a"), 1, t1).is_none(), "expired");
        assert_eq!(table.list(t1).len(), 1);
        assert!(table.lift(&Target::Pid(7)).is_some());
        assert!(table.check(None, 7, t1).is_none());
    }
}
