//! Automated response: the rules that decide to quarantine on their own.
//!
//! The rules only decide; the [`Responder`](super::Responder) places the
//! quarantine, closes the connections, writes the audit record and counts
//! the metric. Time is passed in, so every rule is tested without waiting.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use jiff::Timestamp;

use crate::{
    clock::{add, elapsed},
    config::ResponseConfig,
};

/// A rule's decision: quarantine, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// The rule's name (metric label, audit `actor`).
    pub rule: &'static str,
    pub reason: String,
}

pub const RULE_DENIALS: &str = "denials";
pub const RULE_RATE: &str = "rate";
pub const RULE_AGENT_KEY: &str = "agent_key";
pub const RULE_EXE_CHANGED: &str = "exe_changed";

pub struct Rules {
    config: ResponseConfig,
    denials: Mutex<HashMap<String, VecDeque<Timestamp>>>,
    rates: Mutex<HashMap<String, RateState>>,
}

/// Requests per fixed window: the current window's count and the counts of
/// the previous `rate_baseline_windows` windows.
struct RateState {
    window_start: Timestamp,
    count: u64,
    history: VecDeque<u64>,
}

impl Rules {
    pub fn new(config: ResponseConfig) -> Rules {
        Rules {
            config,
            denials: Mutex::new(HashMap::new()),
            rates: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &ResponseConfig {
        &self.config
    }

    /// How long an automated quarantine lasts (None: until restored).
    pub fn quarantine_for(&self) -> Option<Duration> {
        (self.config.quarantine_secs > 0).then(|| Duration::from_secs(self.config.quarantine_secs))
    }

    /// A policy denial of `workload` at `now`.
    pub fn denial(&self, workload: &str, now: Timestamp) -> Option<Trigger> {
        let limit = self.config.denials;
        if limit == 0 {
            return None;
        }
        let window = Duration::from_secs(self.config.denial_window_secs);
        let mut all = self.denials.lock().ok()?;
        let seen = all.entry(workload.to_owned()).or_default();
        seen.push_back(now);
        while seen.front().is_some_and(|t| elapsed(*t, now) > window) {
            seen.pop_front();
        }
        if seen.len() < limit as usize {
            return None;
        }
        // Start afresh: after a restore the workload gets a clean count.
        seen.clear();
        Some(Trigger {
            rule: RULE_DENIALS,
            reason: format!(
                "{limit} policy denials within {} s",
                self.config.denial_window_secs
            ),
        })
    }

    /// One request of `workload` at `now` (any outcome).
    pub fn request(&self, workload: &str, now: Timestamp) -> Option<Trigger> {
        let multiple = self.config.rate_multiple;
        if multiple <= 0.0 {
            return None;
        }
        let window = Duration::from_secs(self.config.rate_window_secs.max(1));
        let keep = self.config.rate_baseline_windows.max(1) as usize;
        let mut all = self.rates.lock().ok()?;
        let state = all.entry(workload.to_owned()).or_insert(RateState {
            window_start: now,
            count: 0,
            history: VecDeque::new(),
        });
        // Roll the windows that ended (empty ones count as zero).
        while elapsed(state.window_start, now) >= window {
            state.history.push_back(state.count);
            if state.history.len() > keep {
                state.history.pop_front();
            }
            state.count = 0;
            state.window_start = add(state.window_start, window);
        }
        state.count += 1;
        // No baseline until a full history has been seen: a new workload
        // has no "normal" yet.
        if state.history.len() < keep || state.count < self.config.rate_min_requests {
            return None;
        }
        let baseline = state.history.iter().sum::<u64>() as f64 / state.history.len() as f64;
        if (state.count as f64) <= multiple * baseline.max(1.0) {
            return None;
        }
        let count = state.count;
        // The burst is not the new normal: forget it, so a restored
        // workload is judged against its old baseline only.
        state.count = 0;
        Some(Trigger {
            rule: RULE_RATE,
            reason: format!(
                "{count} requests in {} s, over {multiple} x its baseline of {baseline:.1}",
                window.as_secs()
            ),
        })
    }

    /// The agent sent what looks like a real key.
    pub fn agent_key(&self, fingerprints: &[String]) -> Option<Trigger> {
        (self.config.agent_key && !fingerprints.is_empty()).then(|| Trigger {
            rule: RULE_AGENT_KEY,
            reason: format!(
                "the agent sent what looks like a real provider key ({})",
                fingerprints.join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config() -> ResponseConfig {
        ResponseConfig {
            denials: 3,
            denial_window_secs: 10,
            rate_multiple: 3.0,
            rate_window_secs: 10,
            rate_baseline_windows: 3,
            rate_min_requests: 5,
            ..ResponseConfig::default()
        }
    }

    #[test]
    fn denials_trigger_at_n_within_the_window_and_not_when_spread_out() {
        let rules = Rules::new(config());
        let t = Timestamp::from_second(1_800_000_000).unwrap();
        // Spread out: never three within 10 s.
        for i in 0..6 {
            assert_eq!(rules.denial("a", add(t, Duration::from_secs(6 * i))), None);
        }
        let t = add(t, Duration::from_secs(100));
        assert_eq!(rules.denial("b", t), None);
        assert_eq!(rules.denial("b", add(t, Duration::from_secs(1))), None);
        let trigger = rules.denial("b", add(t, Duration::from_secs(2))).unwrap();
        assert_eq!(trigger.rule, RULE_DENIALS);
        // The count starts afresh after a trigger.
        assert_eq!(rules.denial("b", add(t, Duration::from_secs(3))), None);
        assert!(
            Rules::new(ResponseConfig {
                denials: 0,
                ..config()
            })
            .denial("b", t)
            .is_none()
        );
    }

    #[test]
    fn a_rate_far_above_the_baseline_triggers_and_a_steady_one_does_not() {
        let rules = Rules::new(config());
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        // Three windows of 4 requests: the baseline.
        for w in 0..3u64 {
            for i in 0..4u64 {
                let at = add(t0, Duration::from_secs(w * 10 + i));
                assert_eq!(rules.request("a", at), None);
            }
        }
        // A steady fourth window does not trigger.
        for i in 0..4u64 {
            assert_eq!(
                rules.request("a", add(t0, Duration::from_secs(30 + i))),
                None
            );
        }
        // A burst of 13 (> 3 x 4) in the fifth does, once.
        let mut triggers = 0;
        for i in 0..13u64 {
            let at = add(t0, Duration::from_millis(40_000 + i * 100));
            if let Some(trigger) = rules.request("a", at) {
                assert_eq!(trigger.rule, RULE_RATE);
                triggers += 1;
            }
        }
        assert_eq!(triggers, 1);
        // Un-triggered: back to the usual rate, no trigger.
        for i in 0..4u64 {
            assert_eq!(
                rules.request("a", add(t0, Duration::from_secs(50 + i))),
                None
            );
        }
    }

    #[test]
    fn the_agent_key_rule_needs_a_finding_and_can_be_turned_off() {
        let rules = Rules::new(config());
        assert!(rules.agent_key(&[]).is_none());
        assert!(rules.agent_key(&["sha256:abc".into()]).is_some());
        let off = Rules::new(ResponseConfig {
            agent_key: false,
            ..config()
        });
        assert!(off.agent_key(&["sha256:abc".into()]).is_none());
    }
}
