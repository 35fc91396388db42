//! The response body as the agent receives it, shown to the request's
//! [`ResponseObserver`] frame by frame on the way (nothing held back).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::gate::ResponseObserver;

pub struct Metered<B> {
    inner: B,
    observer: Option<Box<dyn ResponseObserver>>,
}

impl<B> Metered<B> {
    pub fn new(inner: B, observer: Option<Box<dyn ResponseObserver>>) -> Metered<B> {
        Metered { inner, observer }
    }

    fn end(&mut self, complete: bool) {
        if let Some(observer) = self.observer.take() {
            observer.end(complete);
        }
    }
}

impl<B> Body for Metered<B>
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
                if let (Some(observer), Some(data)) = (this.observer.as_mut(), frame.data_ref()) {
                    observer.data(data);
                }
                // hyper stops polling a body that says it has ended, so the
                // end is reported here rather than on a `None` never polled.
                if this.inner.is_end_stream() {
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

impl<B> Drop for Metered<B> {
    fn drop(&mut self) {
        // Dropped before its end: the agent went away or the connection
        // broke. A body that ended reported already.
        let complete = false;
        self.end(complete);
    }
}
