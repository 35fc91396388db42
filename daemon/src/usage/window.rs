//! Sliding windows as bucketed counters, the arithmetic shared by the
//! embedded ledger and (mirrored in Lua) the Redis one.
//!
//! Each budget is one series of buckets: requests per minute in 1 s buckets,
//! tokens per hour in 60 s buckets, cost per day in 1440 s buckets (60 per
//! window each). A window sums the 61 buckets from `now_bucket - 60` to
//! `now_bucket`, so an amount counts for at least the whole window and at
//! most one bucket longer (1/60 of it): the slide errs towards refusing.
//! Amounts are integers (requests, tokens, micro-USD) so that every store
//! adds them exactly; a bucket may go down when a reservation is settled
//! for less than it reserved.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::policy::RuleLimits;

/// Buckets per window.
pub const BUCKETS: i64 = 60;

/// A budget, named as the `[[policy]]` key that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Series {
    RequestsPerMinute,
    TokensPerHour,
    #[serde(rename = "cost_per_day_usd")]
    CostPerDay,
}

pub const SERIES: [Series; 3] = [
    Series::RequestsPerMinute,
    Series::TokensPerHour,
    Series::CostPerDay,
];

impl Series {
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn window_secs(self) -> i64 {
        match self {
            Series::RequestsPerMinute => 60,
            Series::TokensPerHour => 3600,
            Series::CostPerDay => 86_400,
        }
    }

    pub fn bucket_secs(self) -> i64 {
        self.window_secs() / BUCKETS
    }

    pub fn bucket_at(self, now_secs: i64) -> i64 {
        now_secs.div_euclid(self.bucket_secs())
    }

    /// The config key that sets it.
    pub fn key(self) -> &'static str {
        match self {
            Series::RequestsPerMinute => "requests_per_minute",
            Series::TokensPerHour => "tokens_per_hour",
            Series::CostPerDay => "cost_per_day_usd",
        }
    }
}

/// Requests, tokens and micro-USD, indexed by `Series::index`.
pub type Amounts = [u64; 3];

/// A rule's limits in the ledgers' integer units (cost in micro-USD).
pub fn limits_of(limits: &RuleLimits) -> [Option<u64>; 3] {
    [
        limits.requests_per_minute,
        limits.tokens_per_hour,
        limits
            .cost_per_day_usd
            .map(|usd| (usd * 1_000_000.0).floor().max(0.0) as u64),
    ]
}

/// A series' buckets for one budget key.
pub type Buckets = BTreeMap<i64, i64>;

/// The window's sum at `now_bucket` (negative buckets count as 0).
pub fn used(buckets: &Buckets, now_bucket: i64) -> u64 {
    buckets
        .range(now_bucket - BUCKETS..=now_bucket)
        .map(|(_, v)| (*v).max(0) as u64)
        .sum()
}

/// Whether `want` fits under `limit`; if not, how long until it will (None:
/// it never will, `want` alone is over the limit).
pub fn check(
    series: Series,
    buckets: &Buckets,
    now_secs: i64,
    want: u64,
    limit: u64,
) -> Result<(), Option<Duration>> {
    let now_bucket = series.bucket_at(now_secs);
    let used = used(buckets, now_bucket);
    if used.saturating_add(want) <= limit {
        return Ok(());
    }
    if want > limit {
        return Err(None);
    }
    let excess = used + want - limit;
    let mut freed = 0u64;
    for (&bucket, &v) in buckets.range(now_bucket - BUCKETS..=now_bucket) {
        freed += v.max(0) as u64;
        if freed >= excess {
            return Err(Some(retry_after(series, bucket, now_secs)));
        }
    }
    Err(Some(Duration::from_secs(series.window_secs() as u64)))
}

/// When `bucket` leaves the window, from `now_secs` (at least 1 s).
pub fn retry_after(series: Series, bucket: i64, now_secs: i64) -> Duration {
    let leaves = (bucket + BUCKETS + 1) * series.bucket_secs();
    Duration::from_secs((leaves - now_secs).max(1) as u64)
}

/// Drops buckets that no window can reach any more.
pub fn prune(buckets: &mut Buckets, now_bucket: i64) {
    let keep = buckets.split_off(&(now_bucket - BUCKETS));
    *buckets = keep;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_amount_counts_for_the_whole_window_and_then_leaves() {
        let s = Series::TokensPerHour;
        let mut b = Buckets::new();
        let t0 = 1_000_000 * 60;
        *b.entry(s.bucket_at(t0)).or_default() += 90;
        assert_eq!(check(s, &b, t0, 10, 100), Ok(()));
        let Err(Some(wait)) = check(s, &b, t0, 11, 100) else {
            panic!("expected a wait");
        };
        assert_eq!(wait, Duration::from_secs(3660));
        // One second before the wait is over it still counts; at the end it's gone.
        assert!(check(s, &b, t0 + 3659, 11, 100).is_err());
        assert_eq!(check(s, &b, t0 + 3660, 11, 100), Ok(()));
        assert_eq!(check(s, &b, t0, 101, 100), Err(None));
    }

    #[test]
    fn the_wait_is_until_enough_old_buckets_leave() {
        let s = Series::RequestsPerMinute;
        let mut b = Buckets::new();
        for t in [100, 110, 120] {
            *b.entry(s.bucket_at(t)).or_default() += 1;
        }
        // Limit 3, want 1: the oldest (t=100) must leave: at 100 + 61.
        assert_eq!(check(s, &b, 125, 1, 3), Err(Some(Duration::from_secs(36))));
        // Want 2: two must leave; the second is at 110, leaving at 171.
        assert_eq!(check(s, &b, 125, 2, 3), Err(Some(Duration::from_secs(46))));
        prune(&mut b, s.bucket_at(175));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn limits_convert_cost_to_micro_dollars() {
        let l = RuleLimits {
            tokens_per_hour: Some(5),
            cost_per_day_usd: Some(0.5),
            requests_per_minute: None,
        };
        assert_eq!(limits_of(&l), [None, Some(5), Some(500_000)]);
    }
}
