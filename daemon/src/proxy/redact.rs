//! Redaction of the injected credential from response bodies (some provider
//! error bodies echo the key they were given).
//!
//! Streaming-safe: the credential may be split across chunks, so a chunk's
//! tail that could be the start of it is held back until the next chunk, and
//! nothing else is: an SSE event ending in "\n\n" is passed on at once. The
//! credential is replaced by as many `*`, so Content-Length stays right.
//! Compressed bodies cannot be searched; the proxy asks upstreams for
//! identity encoding for that reason.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

use crate::secret::Secret;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Redact<B> {
    inner: B,
    secret: Arc<Secret>,
    /// Bytes held back: a possible start of the credential.
    carry: BytesMut,
    /// A trailers frame waiting until `carry` is flushed.
    pending: Option<Frame<Bytes>>,
    inner_done: bool,
}

impl<B> Redact<B> {
    pub fn new(inner: B, secret: Arc<Secret>) -> Redact<B> {
        Redact {
            inner,
            secret,
            carry: BytesMut::new(),
            pending: None,
            inner_done: false,
        }
    }
}

/// Masks every occurrence of `needle` in `buf` with `*`, and returns how many
/// bytes at the end of `buf` must be held back (a proper prefix of `needle`).
pub fn mask(buf: &mut [u8], needle: &[u8]) -> usize {
    if needle.is_empty() {
        return 0;
    }
    let mut from = 0;
    while let Some(at) = memchr::memmem::find(&buf[from..], needle) {
        let start = from + at;
        buf[start..start + needle.len()].fill(b'*');
        from = start + needle.len();
    }
    held_back(buf, needle)
}

/// The length of the longest end of `buf` that is a proper prefix of `needle`.
fn held_back(buf: &[u8], needle: &[u8]) -> usize {
    let longest = needle.len().saturating_sub(1).min(buf.len());
    (1..=longest)
        .rev()
        .find(|&n| buf[buf.len() - n..] == needle[..n])
        .unwrap_or(0)
}

/// Masks the credential in response header values (e.g. an error detail
/// header that repeats the request's key).
pub fn headers(headers: &mut http::HeaderMap, secret: &Secret) {
    let needle = secret.expose().as_bytes();
    for value in headers.values_mut() {
        if memchr::memmem::find(value.as_bytes(), needle).is_some() {
            let mut bytes = value.as_bytes().to_vec();
            mask(&mut bytes, needle);
            // Masking only swaps bytes for '*', so the value stays valid.
            if let Ok(masked) = http::HeaderValue::from_bytes(&bytes) {
                *value = masked;
            }
        }
    }
}

impl<B> Body for Redact<B>
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
        let this = self.get_mut();
        loop {
            if this.inner_done || this.pending.is_some() {
                if !this.carry.is_empty() {
                    let rest = this.carry.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                return Poll::Ready(this.pending.take().map(Ok));
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.inner_done = true;
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    let needle = this.secret.expose().as_bytes();
                    // The common case, without a copy: nothing held back,
                    // no credential in the chunk, no possible start of one
                    // at its end.
                    if this.carry.is_empty()
                        && memchr::memmem::find(&data, needle).is_none()
                        && held_back(&data, needle) == 0
                    {
                        if data.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    this.carry.extend_from_slice(&data);
                    let hold = mask(&mut this.carry, this.secret.expose().as_bytes());
                    let ready = this.carry.len() - hold;
                    if ready > 0 {
                        let out = this.carry.split_to(ready).freeze();
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Err(trailers) => this.pending = Some(trailers),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner_done && self.carry.is_empty() && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Masking keeps the length; only what is held back is added.
        let mut hint = self.inner.size_hint();
        let carried = self.carry.len() as u64;
        hint.set_lower(hint.lower().saturating_add(carried));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(carried));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::collections::VecDeque;

    use http_body_util::BodyExt;

    use super::*;

    /// A body yielding the given chunks, one frame each.
    struct Chunks(VecDeque<&'static str>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(
                self.get_mut()
                    .0
                    .pop_front()
                    .map(|c| Ok(Frame::data(Bytes::from(c)))),
            )
        }
    }

    #[test]
    fn mask_replaces_every_occurrence_and_holds_back_only_a_possible_prefix() {
        let mut buf = b"a KEY b KEY K".to_vec();
        let hold = mask(&mut buf, b"KEY");
        assert_eq!(&buf, b"a *** b *** K");
        assert_eq!(hold, 1);
        let mut event = b"data: {}\n\n".to_vec();
        assert_eq!(mask(&mut event, b"KEY"), 0);
    }

    #[tokio::test]
    async fn a_credential_split_across_chunks_is_redacted() {
        let secret = Arc::new(Secret::new("sk-secret-value".to_owned()));
        let body = Chunks(VecDeque::from([
            "{\"error\":\"bad key sk-se",
            "cret-va",
            "lue\"} and sk-",
            "other",
        ]));
        let out = Redact::new(body, secret)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "{\"error\":\"bad key ***************\"} and sk-other"
        );
    }
}
