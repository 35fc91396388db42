//! The one tap on a response body: every frame passes through untouched
//! (nothing is held back), and the tap tells whoever watches.
//!
//! - the request's [`ResponseObserver`] (usage metering and budgets), with
//!   every chunk as the upstream sent it;
//! - the request's audit line ([`RequestLog`]), finished with the bytes
//!   sent and whether the body ended, and then the automated response rules
//!   ([`Responder::request_finished`]) with the identity passed forward.
//!
//! Each is told the end exactly once: when the body ends, or when it is
//! dropped before its end (the agent went away, the connection broke or was
//! closed by a quarantine).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::{
    audit::RequestLog,
    response::{RequestEnd, Responder},
    usage::ResponseObserver,
};

/// What the end of a request's response finishes.
pub(super) struct RequestEnding {
    pub log: RequestLog,
    pub status: u16,
    pub responder: Arc<Responder>,
    /// Who made the request, as the gate identified it (None: not identified).
    pub workload: Option<String>,
    pub tgid: u32,
    /// Fingerprints of real-looking keys the agent sent.
    pub agent_keys: Vec<String>,
}

pub struct Tap<B: Body> {
    inner: B,
    observer: Option<Box<dyn ResponseObserver>>,
    ending: Option<RequestEnding>,
    bytes: u64,
    /// The body's exact length when known: hyper stops polling a body once
    /// it has sent that many bytes, without waiting for its end.
    exact: Option<u64>,
}

impl<B: Body> Tap<B> {
    /// A tap that tells `observer` (if any) about every chunk and the end.
    pub fn new(inner: B, observer: Option<Box<dyn ResponseObserver>>) -> Tap<B> {
        let exact = inner.size_hint().exact();
        Tap {
            inner,
            observer,
            ending: None,
            bytes: 0,
            exact,
        }
    }

    /// Also finishes the request's audit line (and feeds the rules) at the end.
    pub(super) fn finishing(mut self, ending: RequestEnding) -> Tap<B> {
        self.ending = Some(ending);
        self
    }

    fn ended(&self) -> bool {
        self.inner.is_end_stream() || self.exact.is_some_and(|n| self.bytes >= n)
    }
}

impl<B: Body> Tap<B> {
    /// The end, once: the observer first (its usage goes on the audit line),
    /// then the audit line, then the rules.
    fn end(&mut self, complete: bool) {
        if let Some(observer) = self.observer.take() {
            observer.end(complete);
        }
        let Some(ending) = self.ending.take() else {
            return;
        };
        let Some(finished) = ending.log.finish(ending.status, self.bytes, complete) else {
            return;
        };
        ending.responder.request_finished(&RequestEnd {
            workload: ending.workload.as_deref(),
            tgid: ending.tgid,
            outcome: finished.outcome,
            agent_keys: &ending.agent_keys,
        });
    }
}

impl<B> Body for Tap<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                    if let Some(observer) = this.observer.as_mut() {
                        observer.data(data);
                    }
                }
                // hyper stops polling a body that says it has ended, so the
                // end is reported here rather than on a `None` never polled.
                if this.ended() {
                    this.end(true);
                }
            }
            Poll::Ready(Some(Err(_))) => this.end(false),
            Poll::Ready(None) => this.end(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for Tap<B> {
    fn drop(&mut self) {
        // A no-op when already ended. An empty body may end without ever
        // being polled; anything else dropped here was cut off.
        let complete = self.ended();
        self.end(complete);
    }
}
