//! AWS event streams (`application/vnd.amazon.eventstream`, Bedrock's
//! streamed responses), read for metering as they stream past.
//!
//! Frames are decoded by AWS's own decoder (`aws-smithy-eventstream`, which
//! checks each frame's CRCs); nothing here parses the binary framing. Each
//! message is an event named by its `:event-type` header with a JSON
//! payload, and [`EventStream::feed`] hands out what metering reads:
//! - ConverseStream: the payload itself (its `metadata` event carries
//!   `usage` and ends the stream);
//! - InvokeModelWithResponseStream: `chunk` events whose payload is
//!   `{"bytes": "<base64>"}`, the model's own streamed event (Anthropic's
//!   `message_start`/`message_delta` with their `usage`), and, in the last
//!   chunk, Bedrock's `amazon-bedrock-invocationMetrics`.
//!
//! Only events that may hold usage are handed out (a search on the decoded
//! payload); text deltas are skipped. A frame larger than the metering
//! limit is not buffered: the stream is then given up as unreadable (its
//! usage unknown, charged as reserved).

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use base64::Engine;
use bytes::BytesMut;
use serde::Deserialize;

/// One event that may hold usage: its type and its JSON.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageEvent {
    /// `:event-type` (`metadata`, `chunk`, ...).
    pub kind: String,
    /// The JSON to read: the payload, or a chunk's decoded `bytes`.
    pub json: Vec<u8>,
}

/// Why the stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    #[error("an event-stream frame larger than the metering limit")]
    TooLarge,
    #[error("not a valid AWS event stream")]
    Invalid,
}

pub struct EventStream {
    decoder: MessageFrameDecoder,
    buf: BytesMut,
    max_frame: usize,
    /// Events that were not JSON of the expected shape.
    pub unparsed: u64,
}

#[derive(Deserialize)]
struct Chunk {
    bytes: String,
}

/// Whether `json` may hold a usage object or Bedrock's invocation metrics.
fn may_hold_usage(json: &[u8]) -> bool {
    memchr::memmem::find(json, b"sage").is_some()
        || memchr::memmem::find(json, b"invocationMetrics").is_some()
}

fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| match h.value() {
            HeaderValue::String(s) => Some(s.as_str()),
            _ => None,
        })
}

impl EventStream {
    pub fn new(max_frame: usize) -> EventStream {
        EventStream {
            decoder: MessageFrameDecoder::new(),
            buf: BytesMut::new(),
            max_frame,
            unparsed: 0,
        }
    }

    /// Feeds one chunk of the body; pushes onto `out` each complete event
    /// that may hold usage.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<UsageEvent>) -> Result<(), Unreadable> {
        self.buf.extend_from_slice(chunk);
        loop {
            match self.decoder.decode_frame(&mut self.buf) {
                Ok(DecodedFrame::Complete(message)) => self.message(&message, out),
                Ok(DecodedFrame::Incomplete) => {
                    if self.buf.len() > self.max_frame {
                        self.buf = BytesMut::new();
                        return Err(Unreadable::TooLarge);
                    }
                    return Ok(());
                }
                Err(_) => {
                    self.buf = BytesMut::new();
                    return Err(Unreadable::Invalid);
                }
            }
        }
    }

    /// Whether bytes of an unfinished frame are left (a cut-off stream).
    pub fn pending(&self) -> bool {
        !self.buf.is_empty()
    }

    fn message(&mut self, message: &Message, out: &mut Vec<UsageEvent>) {
        // Exceptions (`:message-type` exception or error) report no usage.
        if header(message, ":message-type").is_some_and(|t| t != "event") {
            return;
        }
        let kind = header(message, ":event-type")
            .unwrap_or_default()
            .to_owned();
        let payload = message.payload();
        let json = if kind == "chunk" {
            let Ok(chunk) = serde_json::from_slice::<Chunk>(payload) else {
                self.unparsed += 1;
                return;
            };
            match base64::engine::general_purpose::STANDARD.decode(chunk.bytes.as_bytes()) {
                Ok(decoded) => decoded,
                Err(_) => {
                    self.unparsed += 1;
                    return;
                }
            }
        } else {
            payload.to_vec()
        };
        if may_hold_usage(&json) {
            out.push(UsageEvent { kind, json });
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use aws_smithy_types::event_stream::Header;
    use bytes::Bytes;

    use super::*;

    /// One event frame, as Bedrock writes it.
    pub(crate) fn frame(event_type: &str, payload: &[u8]) -> Vec<u8> {
        let message = Message::new(Bytes::copy_from_slice(payload))
            .add_header(Header::new(
                ":message-type",
                HeaderValue::String("event".into()),
            ))
            .add_header(Header::new(
                ":event-type",
                HeaderValue::String(event_type.to_owned().into()),
            ))
            .add_header(Header::new(
                ":content-type",
                HeaderValue::String("application/json".into()),
            ));
        let mut out = Vec::new();
        aws_smithy_eventstream::frame::write_message_to(&message, &mut out).unwrap();
        out
    }

    pub(crate) fn chunk(inner: &str) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
        frame(
            "chunk",
            format!("{{\"bytes\":\"{b64}\",\"p\":\"abc\"}}").as_bytes(),
        )
    }

    #[test]
    fn frames_cut_anywhere_give_the_events_with_usage() {
        let mut body = Vec::new();
        body.extend(frame("messageStart", br#"{"role":"assistant"}"#));
        body.extend(frame(
            "contentBlockDelta",
            br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#,
        ));
        body.extend(frame("messageStop", br#"{"stopReason":"end_turn"}"#));
        body.extend(frame(
            "metadata",
            br#"{"usage":{"inputTokens":12,"outputTokens":7,"totalTokens":19},"metrics":{"latencyMs":100}}"#,
        ));
        for cut in [1, 7, 13, 50, body.len() - 1] {
            let mut stream = EventStream::new(1 << 20);
            let mut out = Vec::new();
            stream.feed(&body[..cut], &mut out).unwrap();
            stream.feed(&body[cut..], &mut out).unwrap();
            assert_eq!(out.len(), 1, "cut at {cut}");
            assert_eq!(out[0].kind, "metadata");
            assert!(!stream.pending());
        }
    }

    #[test]
    fn chunks_are_decoded_from_base64() {
        let body = chunk(
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#,
        );
        let mut stream = EventStream::new(1 << 20);
        let mut out = Vec::new();
        stream.feed(&body, &mut out).unwrap();
        assert_eq!(out[0].kind, "chunk");
        assert!(out[0].json.starts_with(br#"{"type":"message_delta""#));
    }

    #[test]
    fn corrupt_and_oversized_frames_are_unreadable() {
        let mut corrupt = frame("metadata", br#"{"usage":{"inputTokens":1}}"#);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        let mut stream = EventStream::new(1 << 20);
        let mut out = Vec::new();
        assert_eq!(stream.feed(&corrupt, &mut out), Err(Unreadable::Invalid));
        assert!(out.is_empty());
        // A length that claims more than the limit is given up once that
        // much is buffered, never followed further.
        let mut stream = EventStream::new(1024);
        let claims_4gib = [0xff; 2048];
        assert_eq!(
            stream.feed(&claims_4gib, &mut out),
            Err(Unreadable::TooLarge)
        );
        let big = frame("metadata", &vec![b' '; 4096]);
        let mut stream = EventStream::new(1024);
        assert_eq!(
            stream.feed(&big[..2000], &mut out),
            Err(Unreadable::TooLarge)
        );
        assert!(!stream.pending(), "nothing is kept once given up");
    }
}
