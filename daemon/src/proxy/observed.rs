//! The response body as the audit sees it: counts the bytes sent to the
//! agent and finishes the request's [`RequestLog`] when the body ends, or
//! when it is dropped before its end (the connection closed or was revoked).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::{BoxError, ProxyBody};
use crate::audit::RequestLog;

pub struct Observed {
    inner: ProxyBody,
    log: RequestLog,
    status: u16,
    bytes: u64,
    /// The body's exact length when known: hyper stops polling a body once
    /// it has sent that many bytes, without waiting for its end.
    exact: Option<u64>,
}

impl Observed {
    pub fn new(inner: ProxyBody, log: RequestLog, status: u16) -> Observed {
        let exact = inner.size_hint().exact();
        Observed {
            inner,
            log,
            status,
            bytes: 0,
            exact,
        }
    }
}

impl Observed {
    fn ended(&self) -> bool {
        self.inner.is_end_stream() || self.exact.is_some_and(|n| self.bytes >= n)
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                // hyper stops polling a body that says it has ended.
                if this.ended() {
                    this.log.finish(this.status, this.bytes, true);
                }
            }
            Poll::Ready(None) => this.log.finish(this.status, this.bytes, true),
            Poll::Ready(Some(Err(_))) => this.log.finish(this.status, this.bytes, false),
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

impl Drop for Observed {
    fn drop(&mut self) {
        // A no-op when already finished; an empty body may end without
        // ever being polled.
        let complete = self.ended();
        self.log.finish(self.status, self.bytes, complete);
    }
}
