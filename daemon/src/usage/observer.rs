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

    /// The request was refused after admission, before anything reached
    /// the upstream (no credential, a rewrite error, no connection): no
    /// tokens were spent, so whatever was reserved is given back rather
    /// than charged. The default ends it as cut off (charged as reserved),
    /// which is only right for an observer that reserves nothing.
    fn release(self: Box<Self>) {
        self.end(false);
    }

    /// The request was a WebSocket upgrade the upstream accepted: what
    /// meters the session from here on, message by message. The default
    /// meters nothing (ends the observer as cut off and returns None).
    fn into_session(self: Box<Self>) -> Option<Box<dyn SessionObserver>> {
        self.end(false);
        None
    }
}

/// Meters a WebSocket session as it runs: the relay hands it every message
/// from the upstream, before passing it on, and ends the session when it
/// says a budget is exhausted.
pub trait SessionObserver: Send + 'static {
    /// One message (text or binary) from the upstream.
    fn message<'a>(&'a mut self, message: &'a [u8]) -> SessionFuture<'a>;
    /// The session is closing (either side, or the budget, ended it): what
    /// it started and no message reported is charged now. The default
    /// charges nothing.
    fn closing(&mut self) -> SessionFuture<'_> {
        Box::pin(async { Ok(()) })
    }
    /// The session ended.
    fn end(self: Box<Self>);
}

pub type SessionFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Exhausted>> + Send + 'a>>;

/// A budget the session spends from ran out: it is to be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Exhausted(pub String);

/// An admitted request's observer, handed by the gate to the proxy and by
/// the proxy to the response body. A request refused before it reached the
/// upstream releases it; if it is dropped otherwise before reaching a body
/// (the upstream may have acted on the request), it ends as not complete
/// and is charged as reserved.
pub struct Admission(Option<Box<dyn ResponseObserver>>);

impl Admission {
    pub fn new(observer: Box<dyn ResponseObserver>) -> Admission {
        Admission(Some(observer))
    }

    /// The observer, to be fed by the response body (which then ends it).
    pub fn take(mut self) -> Option<Box<dyn ResponseObserver>> {
        self.0.take()
    }

    /// The upstream accepted a WebSocket upgrade: the session's meter (see
    /// [`ResponseObserver::into_session`]).
    pub fn into_session(mut self) -> Option<Box<dyn SessionObserver>> {
        self.0.take()?.into_session()
    }

    /// The request never reached the upstream: its reservation is released
    /// (see [`ResponseObserver::release`]).
    pub fn release(mut self) {
        if let Some(observer) = self.0.take() {
            observer.release();
        }
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
