//! The agent's view of a stream warrant asked to report usage.
//!
//! An OpenAI stream sent without `stream_options.include_usage` cannot be
//! metered, so the forwarded request asks for it (`provider::openai`). The
//! provider then ends the stream with one extra chunk, `"choices": []` with
//! the usage, which code that did not ask for it may not expect (reading
//! `choices[0]` of every chunk). [`StripUsageChunk`] removes that chunk on
//! the way to the agent, after the meter has read it (the tap sits
//! upstream of this body), so the agent sees the stream it asked for.
//!
//! Complete events pass at once; only the bytes of an event not yet ended
//! by its blank line are held, so nothing is buffered beyond one event.
//! The other chunks keep the `"usage": null` field the option adds.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame};
use serde::Deserialize;

use crate::usage::meter::{first_blank_line_end, last_blank_line_end};

pub struct StripUsageChunk<B> {
    inner: B,
    /// Bytes of the event not yet ended.
    pending: BytesMut,
    /// A trailers frame that waits for `pending` to go first.
    trailers: Option<Frame<Bytes>>,
    done: bool,
}

impl<B> StripUsageChunk<B> {
    pub fn new(inner: B) -> StripUsageChunk<B> {
        StripUsageChunk {
            inner,
            pending: BytesMut::new(),
            trailers: None,
            done: false,
        }
    }
}

/// The usage-only chunk: no choices, a usage object.
#[derive(Deserialize)]
struct Chunk {
    choices: Option<Vec<serde::de::IgnoredAny>>,
    usage: Option<serde_json::Map<String, serde_json::Value>>,
}

fn is_usage_chunk(event: &[u8]) -> bool {
    if memchr::memmem::find(event, b"\"usage\"").is_none() {
        return false;
    }
    let data: Vec<u8> = event
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter_map(|line| line.strip_prefix(b"data:"))
        .flat_map(|value| value.strip_prefix(b" ").unwrap_or(value).to_vec())
        .collect();
    serde_json::from_slice::<Chunk>(&data)
        .is_ok_and(|c| c.choices.is_some_and(|c| c.is_empty()) && c.usage.is_some())
}

/// `events` (whole events) without the usage-only chunk.
fn without_usage_chunk(events: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(events.len());
    let mut start = 0;
    while start < events.len() {
        let before = &events[..start];
        let len = first_blank_line_end(before, &events[start..]).unwrap_or(events.len() - start);
        let event = &events[start..start + len];
        if !is_usage_chunk(event) {
            out.extend_from_slice(event);
        }
        start += len;
    }
    out.freeze()
}

impl<B> Body for StripUsageChunk<B>
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
        loop {
            if this.done {
                if !this.pending.is_empty() {
                    let rest = this.pending.split();
                    return Poll::Ready(Some(Ok(Frame::data(without_usage_chunk(&rest)))));
                }
                return Poll::Ready(this.trailers.take().map(Ok));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.pending.extend_from_slice(&data);
                        let Some(end) = last_blank_line_end(&this.pending) else {
                            continue;
                        };
                        let events = this.pending.split_to(end);
                        let out = without_usage_chunk(&events);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(trailers) => {
                        this.trailers = Some(trailers);
                        this.done = true;
                    }
                },
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => this.done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_empty() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    const CHUNK: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    async fn strip(stream: &str, cut: usize) -> String {
        let parts: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            [&stream.as_bytes()[..cut], &stream.as_bytes()[cut..]]
                .iter()
                .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p))))
                .collect();
        let body = StreamBody::new(futures_util::stream::iter(parts));
        let bytes = StripUsageChunk::new(body)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_usage_chunk_is_removed_wherever_the_stream_is_cut() {
        let stream = format!("{CHUNK}{CHUNK}{USAGE}{DONE}");
        for cut in 0..=stream.len() {
            assert_eq!(
                strip(&stream, cut).await,
                format!("{CHUNK}{CHUNK}{DONE}"),
                "cut at {cut}"
            );
        }
        // A chunk with choices and usage (another provider's style) stays.
        let both = "data: {\"choices\":[{\"index\":0}],\"usage\":{\"prompt_tokens\":1}}\n\n";
        assert_eq!(strip(both, 5).await, both);
    }
}
