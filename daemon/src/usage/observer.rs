//! What watches a response on its way back to the agent: the proxy's body
//! tap feeds a [`ResponseObserver`] with the head and every chunk, and ends
//! it exactly once. Budgets' [`UsageObserver`](super::UsageObserver)
//! meters the response and settles the request's reservation.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

/// Watches one response. The proxy calls `head` once the upstream answered,
/// `data` with every body chunk as it is forwarded (never holding it back),
/// and `end` exactly once: `complete` when the body ended normally, false
/// when it was cut off (agent gone, upstream error) or when no response
/// came at all.
pub trait ResponseObserver: Send + Sync + 'static {
    fn head(&mut self, status: StatusCode, headers: &HeaderMap);
    fn data(&mut self, chunk: &Bytes);
    fn end(self: Box<Self>, complete: bool);
}

/// An admitted request's observer, handed by the gate to the proxy and by
/// the proxy to the response body. If it is dropped before reaching a body
/// (upstream unreachable, upgrade), it ends as not complete.
pub struct Admission(Option<Box<dyn ResponseObserver>>);

impl Admission {
    pub fn new(observer: Box<dyn ResponseObserver>) -> Admission {
        Admission(Some(observer))
    }

    /// The observer, to be fed by the response body (which then ends it).
    pub fn take(mut self) -> Option<Box<dyn ResponseObserver>> {
        self.0.take()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(observer) = self.0.take() {
            observer.end(false);
        }
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Admission")
    }
}
