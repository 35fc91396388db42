//! The request body as forwarded upstream: the part read early for the gate
//! (if any), then the rest, streamed as it arrives. For an upstream whose
//! requests are signed over their body, the whole body is read first
//! ([`ForwardBody::whole`]), up to a limit.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

pub struct ForwardBody {
    /// Frames already read from the agent, in order, as they came.
    read: VecDeque<Frame<Bytes>>,
    rest: Option<Incoming>,
}

impl ForwardBody {
    /// A body given whole: a request sent again, or a body replacing the
    /// agent's (see `phases`).
    pub fn full(data: Bytes) -> ForwardBody {
        let mut read = VecDeque::new();
        if !data.is_empty() {
            read.push_back(Frame::data(data));
        }
        ForwardBody { read, rest: None }
    }

    /// Reads the whole body, each wait bounded by `timeout`; more than
    /// `limit` bytes is [`PrefetchError::TooLarge`] (a declared length is
    /// judged before anything is read). Returns the body to forward and its
    /// bytes.
    pub async fn whole(
        mut self,
        declared: Option<u64>,
        limit: usize,
        timeout: Duration,
    ) -> Result<(ForwardBody, Bytes), PrefetchError> {
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(PrefetchError::TooLarge { limit });
        }
        let mut data = BytesMut::new();
        let mut trailers = None;
        loop {
            match tokio::time::timeout(timeout, self.frame()).await {
                Err(_) => return Err(PrefetchError::Timeout),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(PrefetchError::Body(e)),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(chunk) => {
                        if data.len() + chunk.len() > limit {
                            return Err(PrefetchError::TooLarge { limit });
                        }
                        data.extend_from_slice(&chunk);
                    }
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
            }
        }
        let data = data.freeze();
        let mut forward = ForwardBody::full(data.clone());
        if let Some(trailers) = trailers {
            forward.read.push_back(Frame::trailers(trailers));
        }
        Ok((forward, data))
    }

    pub fn streaming(body: Incoming) -> ForwardBody {
        ForwardBody {
            read: VecDeque::new(),
            rest: Some(body),
        }
    }

    /// Whether every frame of the agent's body has been read.
    pub fn is_whole(&self) -> bool {
        self.rest.is_none()
    }

    /// Reads frames until `limit` bytes of data (or the end of the body)
    /// have come, each wait bounded by `timeout`. Returns the body to forward
    /// (nothing lost) and the data read so far.
    pub async fn prefetch(
        mut self,
        limit: usize,
        timeout: Duration,
    ) -> Result<(ForwardBody, Vec<u8>), PrefetchError> {
        let mut read = VecDeque::new();
        let mut prefix = Vec::new();
        let mut ended = false;
        while prefix.len() < limit {
            match tokio::time::timeout(timeout, self.frame()).await {
                Err(_) => return Err(PrefetchError::Timeout),
                Ok(None) => {
                    ended = true;
                    break;
                }
                Ok(Some(Err(e))) => return Err(PrefetchError::Body(e)),
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let room = limit - prefix.len();
                        prefix.extend_from_slice(&data[..data.len().min(room)]);
                    }
                    read.push_back(frame);
                }
            }
        }
        // Frames read before and not yet handed out come after these.
        read.extend(self.read.drain(..));
        Ok((
            ForwardBody {
                read,
                rest: if ended { None } else { self.rest },
            },
            prefix,
        ))
    }

    /// The whole body, when it is at most `limit` bytes; None when larger.
    pub async fn collect_limited(
        mut self,
        limit: usize,
        timeout: Duration,
    ) -> Result<Option<Bytes>, PrefetchError> {
        let mut whole = bytes::BytesMut::new();
        loop {
            match tokio::time::timeout(timeout, self.frame()).await {
                Err(_) => return Err(PrefetchError::Timeout),
                Ok(None) => return Ok(Some(whole.freeze())),
                Ok(Some(Err(e))) => return Err(PrefetchError::Body(e)),
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        if whole.len() + data.len() > limit {
                            return Ok(None);
                        }
                        whole.extend_from_slice(data);
                    }
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrefetchError {
    #[error("the request body did not arrive in time")]
    Timeout,
    #[error("reading the request body failed: {0}")]
    Body(hyper::Error),
    #[error("the request body is larger than {limit} bytes, the most warrant signs")]
    TooLarge { limit: usize },
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.read.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        // Exact when the rest is exact, so a Content-Length stays valid.
        let read: u64 = self
            .read
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(read));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(read));
        }
        hint
    }
}
