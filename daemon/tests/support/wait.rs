//! Bounded waits on a condition: a regression fails with what was awaited
//! instead of hanging, and nothing waits for the bound to pass.

use std::time::{Duration, Instant};

/// Waits until `cond` holds, polling, or panics after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (at most 10 s) until `done` holds, polling cheaply from async
/// code: audit lines are written when the response body ends, which the
/// client may see a moment before the server has finished.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
