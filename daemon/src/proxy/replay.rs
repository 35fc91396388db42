//! A request body that can be sent a second time.
//!
//! Request bodies stream upstream as they arrive from the agent. When an
//! upstream refuses a request without processing it (see
//! `upstream::unprocessed`), the request may be sent again, but only if
//! every frame already taken from the agent can be given again. This body
//! keeps a copy of the frames it hands out, up to a limit; a [`Rewind`]
//! turns them, followed by whatever the agent has not sent yet, into the
//! body of the retry. Over the limit nothing is kept and there is no retry.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::BoxError;

/// Request body bytes kept for a retry, at most. LLM API requests are
/// mostly a few KiB of JSON; a larger body that was partly sent is not
/// retried rather than held in memory.
pub const KEEP_LIMIT: usize = 64 * 1024;

/// The body given to the upstream client. Shared with its [`Rewind`]: the
/// client's connection task polls it while the proxy waits for the answer.
pub struct ReplayBody<B> {
    shared: Arc<Mutex<Shared<B>>>,
}

/// Takes a [`ReplayBody`]'s source back for a retry.
pub struct Rewind<B> {
    shared: Arc<Mutex<Shared<B>>>,
}

struct Shared<B> {
    /// None once rewound: the rest of the body belongs to the retry.
    source: Option<Source<B>>,
    /// Copies of the frames handed out, in order. None when nothing is
    /// kept: no rewind wanted, the limit passed, or the body failed.
    kept: Option<Vec<Frame<Bytes>>>,
    kept_len: usize,
    limit: usize,
}

struct Source<B> {
    /// Frames to give before `rest`: the kept frames of an earlier attempt.
    replay: VecDeque<Frame<Bytes>>,
    rest: B,
}

impl<B: Body<Data = Bytes>> ReplayBody<B> {
    /// A body that keeps up to `limit` bytes of data for its [`Rewind`].
    pub fn new(body: B, limit: usize) -> (ReplayBody<B>, Rewind<B>) {
        // Known to be too large: do not start keeping.
        let kept = (body.size_hint().lower() <= limit as u64).then(Vec::new);
        let shared = Arc::new(Mutex::new(Shared {
            source: Some(Source {
                replay: VecDeque::new(),
                rest: body,
            }),
            kept,
            kept_len: 0,
            limit,
        }));
        (
            ReplayBody {
                shared: shared.clone(),
            },
            Rewind { shared },
        )
    }

    /// A body that keeps nothing (it is sent once).
    pub fn streaming(body: B) -> ReplayBody<B> {
        ReplayBody::from_source(Source {
            replay: VecDeque::new(),
            rest: body,
        })
    }

    fn from_source(source: Source<B>) -> ReplayBody<B> {
        ReplayBody {
            shared: Arc::new(Mutex::new(Shared {
                source: Some(source),
                kept: None,
                kept_len: 0,
                limit: 0,
            })),
        }
    }
}

fn lock<B>(shared: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl<B> Shared<B> {
    fn keep(&mut self, frame: &Frame<Bytes>) {
        if self.kept.is_none() {
            return;
        }
        let copy = if let Some(data) = frame.data_ref() {
            self.kept_len = self.kept_len.saturating_add(data.len());
            Frame::data(data.clone())
        } else if let Some(trailers) = frame.trailers_ref() {
            Frame::trailers(trailers.clone())
        } else {
            return;
        };
        if self.kept_len > self.limit {
            // Frees what was kept: this body can no longer be given again.
            self.kept = None;
        } else if let Some(kept) = self.kept.as_mut() {
            kept.push(copy);
        }
    }
}

impl<B> Rewind<B> {
    /// A body that gives again every frame handed out so far, then the
    /// rest; None when that is not possible (over the limit, or the body
    /// failed). From now on the first attempt's body only fails.
    pub fn rewind(self) -> Option<ReplayBody<B>>
    where
        B: Body<Data = Bytes>,
    {
        let mut shared = lock(&self.shared);
        let kept = shared.kept.take()?;
        let mut source = shared.source.take()?;
        drop(shared);
        for frame in kept.into_iter().rev() {
            source.replay.push_front(frame);
        }
        Some(ReplayBody::from_source(source))
    }
}

impl<B> Drop for Rewind<B> {
    fn drop(&mut self) {
        // No retry will come (answered, or given up): stop keeping.
        lock(&self.shared).kept = None;
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut shared = lock(&self.shared);
        let Some(source) = shared.source.as_mut() else {
            return Poll::Ready(Some(Err("the request body moved to a retry".into())));
        };
        // Taken from the source and kept under one lock, so a frame the
        // first attempt takes while the proxy rewinds is never lost.
        let polled = match source.replay.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut source.rest)
                .poll_frame(cx)
                .map_err(Into::into),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => shared.keep(frame),
            Poll::Ready(Some(Err(_))) => shared.kept = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.shared)
            .source
            .as_ref()
            .is_some_and(|s| s.replay.is_empty() && s.rest.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let shared = lock(&self.shared);
        let Some(source) = shared.source.as_ref() else {
            return SizeHint::default();
        };
        // Exact when the rest is exact, so a Content-Length stays valid.
        let replay: u64 = source
            .replay
            .iter()
            .filter_map(|f| f.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let rest = source.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(replay));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(replay));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    type Chunks =
        StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>>;

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn next_data<B>(body: &mut ReplayBody<B>) -> Bytes
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        body.frame().await.unwrap().unwrap().into_data().unwrap()
    }

    #[tokio::test]
    async fn a_rewound_body_gives_the_frames_already_sent_and_then_the_rest() {
        let (mut first, rewind) = ReplayBody::new(chunks(&[b"ab", b"cd", b"ef"]), KEEP_LIMIT);
        assert_eq!(next_data(&mut first).await, "ab");
        assert_eq!(next_data(&mut first).await, "cd");
        let retry = rewind.rewind().expect("kept");
        let whole = retry.collect().await.unwrap().to_bytes();
        assert_eq!(whole, "abcdef");
        // The first attempt cannot take frames that now belong to the retry.
        assert!(first.frame().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_rewound() {
        let (mut first, rewind) = ReplayBody::new(chunks(&[b"abcd", b"efgh"]), 6);
        assert_eq!(next_data(&mut first).await, "abcd");
        assert_eq!(next_data(&mut first).await, "efgh");
        assert!(rewind.rewind().is_none());
        // Not taken from the first attempt either.
        assert!(first.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_body_known_to_be_too_large_is_never_kept() {
        let big = Full::new(Bytes::from(vec![b'x'; 100]));
        let (first, rewind) = ReplayBody::new(big, 10);
        assert_eq!(first.size_hint().exact(), Some(100));
        assert!(rewind.rewind().is_none());
    }

    #[tokio::test]
    async fn a_failed_body_is_not_rewound() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err("agent went away".into()),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let (mut first, rewind) = ReplayBody::new(body, KEEP_LIMIT);
        assert_eq!(next_data(&mut first).await, "ab");
        assert!(first.frame().await.unwrap().is_err());
        assert!(rewind.rewind().is_none());
    }

    #[tokio::test]
    async fn the_exact_size_survives_a_rewind() {
        let body = Full::new(Bytes::from_static(b"{\"model\":\"gpt-4o\"}"));
        let (mut first, rewind) = ReplayBody::new(body, KEEP_LIMIT);
        assert_eq!(first.size_hint().exact(), Some(18));
        next_data(&mut first).await;
        let retry = rewind.rewind().expect("kept");
        assert_eq!(retry.size_hint().exact(), Some(18));
        assert!(!retry.is_end_stream());
        let whole = retry.collect().await.unwrap().to_bytes();
        assert_eq!(whole.len(), 18);
    }
}
