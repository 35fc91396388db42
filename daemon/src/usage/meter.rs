//! Reading token usage from a response body as it streams past.
//!
//! The body is never held back: the proxy forwards each frame and hands a
//! view of it to [`Meter::feed`]. How the bytes are framed follows the
//! response's content type:
//! - `text/event-stream`: split into events ([`SseSplitter`]), each event's
//!   data parsed by serde_json (OpenAI chat/completions chunks and the
//!   `stream_options.include_usage` chunk, the responses API's
//!   `response.completed`, Anthropic's `message_start` / `message_delta`,
//!   Gemini's `alt=sse` chunks);
//! - JSON from Gemini's `:streamGenerateContent` without `alt=sse`: a JSON
//!   array whose elements arrive one by one; serde_json's stream
//!   deserializer finds where each ends;
//! - `application/vnd.amazon.eventstream` (Bedrock's streams): AWS event
//!   stream frames, decoded by AWS's decoder ([`EventStream`]), each
//!   event's JSON (a chunk's decoded `bytes`) read as a document;
//! - any other JSON: one document. A copy is kept up to `max_json` bytes
//!   and parsed at the end; past that (huge embedding batches) only the last
//!   64 KiB are kept, and the last top-level usage object in them (usage
//!   comes last in every provider's documents) is parsed.
//!
//! Usage objects are merged field by field keeping the largest value:
//! streams repeat cumulative counts (Gemini every chunk, Anthropic's
//! `message_delta`), never per-chunk increments. A response whose usage
//! cannot be found is `Unknown` with the reason: counted as a request,
//! charged as reserved, and flagged, never silently dropped.

use serde::{Deserialize, Serialize};

use super::{
    eventstream::{EventStream, UsageEvent},
    sse::{Event, SseSplitter},
};
pub use crate::provider::Usage;
use crate::provider::{UsageFields, UsageFormat, UsageMetadata};

/// The largest SSE event or JSON-array element that is parsed; larger ones
/// are skipped (usage events are a few hundred bytes).
pub const MAX_EVENT: usize = 1 << 20;
/// What is kept of a JSON document too large to copy whole.
const TAIL: usize = 64 * 1024;

/// What the meter made of a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Usage was found.
    Counted,
    /// A non-2xx response: providers do not bill those.
    ErrorResponse,
    /// No usage could be read; the reason says why.
    Unknown { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reading {
    /// What the usage objects said (None when none was seen).
    pub usage: Option<Usage>,
    /// The model the response names (more exact than the request's alias).
    pub model: Option<String>,
    pub outcome: Outcome,
    /// The final output count was seen (OpenAI's usage chunk, Anthropic's
    /// `message_delta`, or a complete document): a cut-off stream without it
    /// may have produced more than was counted.
    pub output_final: bool,
}

enum Framing {
    Sse(FastSse),
    Document {
        buf: Vec<u8>,
        /// `buf` holds only the tail.
        overflowed: bool,
        max: usize,
    },
    Array {
        pending: Vec<u8>,
    },
    /// An AWS event stream (Bedrock).
    EventStream(EventStream),
    /// Not a format usage can be read from; the reason.
    Opaque(String),
    /// A non-2xx response.
    Error,
}

pub struct Meter {
    format: &'static UsageFormat,
    framing: Framing,
    usage: Option<Usage>,
    model: Option<String>,
    output_final: bool,
    /// Events or elements that were not JSON of the expected shape.
    unparsed: u64,
}

/// The fields of any provider document or event that matter here; serde
/// skips everything else without allocating.
#[derive(Deserialize, Default)]
struct Doc {
    #[serde(rename = "type")]
    kind: Option<String>,
    model: Option<String>,
    #[serde(rename = "modelVersion")]
    model_version: Option<String>,
    usage: Option<UsageFields>,
    #[serde(rename = "usageMetadata")]
    usage_metadata: Option<UsageMetadata>,
    /// Anthropic `message_start`.
    message: Option<Box<Doc>>,
    /// OpenAI responses API stream events.
    response: Option<Box<Doc>>,
    /// Bedrock's own counts, in the last chunk of an
    /// InvokeModelWithResponseStream, whatever the model.
    #[serde(rename = "amazon-bedrock-invocationMetrics")]
    bedrock_metrics: Option<InvocationMetrics>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct InvocationMetrics {
    input_token_count: Option<u64>,
    output_token_count: Option<u64>,
    cache_read_input_token_count: Option<u64>,
    cache_write_input_token_count: Option<u64>,
}

/// The streaming fast path. Most events carry no usage object (content
/// deltas, pings, OpenAI's `"usage":null`), so events are not split one by
/// one: each run of complete events is searched (SIMD memmem) for a usage
/// key followed by an object, and only the event around such a hit is cut
/// out, judged by its `event:` name (Anthropic and the responses API name
/// their deltas), copied and parsed. Gemini repeats cumulative counts in
/// every chunk, so the search runs backwards and only the last such event is
/// kept, parsed at the end. Bytes are copied only for the unfinished last
/// event.
///
/// OpenAI's chat chunks each carry `"usage":null`, one hit per event. So the
/// first usage key seen also tells how this stream writes a key and its
/// value (`"usage":{` or `"usage": {`): one serializer writes the whole
/// stream, and from then on only that exact form is searched for, which
/// passes over the nulls at memmem speed. A stream that changed its
/// spelling midway would have its usage missed: it is then flagged unknown
/// and charged as reserved, never counted as zero.
struct FastSse {
    /// The provider repeats cumulative counts: only the last usage event
    /// counts (Gemini).
    last_event_only: bool,
    /// This stream's spelling of a usage key followed by an object, once a
    /// usage key was seen.
    object_key: Option<Box<memchr::memmem::Finder<'static>>>,
    /// The bytes of the event not yet ended by a blank line.
    pending: Vec<u8>,
    /// The current event outgrew `MAX_EVENT`: skipped up to its end.
    skipping: bool,
    dropped: u64,
    /// Gemini: the last event with usage.
    last: Option<Vec<u8>>,
}

impl FastSse {
    fn new(last_event_only: bool) -> FastSse {
        FastSse {
            last_event_only,
            object_key: None,
            pending: Vec::new(),
            skipping: false,
            dropped: 0,
            last: None,
        }
    }

    /// Pushes onto `out` every event of `chunk` (with what came before) that
    /// needs parsing now.
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<Vec<u8>>) {
        let Some(end) = events_end(&self.pending, chunk) else {
            if !self.skipping {
                self.pending.extend_from_slice(chunk);
                if self.pending.len() > MAX_EVENT {
                    self.pending = Vec::new();
                    self.skipping = true;
                    self.dropped += 1;
                }
            }
            return;
        };
        let whole = &chunk[..end];
        let first = first_blank_line_end(&self.pending, whole).unwrap_or(whole.len());
        if self.skipping {
            // The oversized event ends here.
            self.skipping = false;
        } else if self.pending.is_empty() {
            self.consider(&whole[..first], out);
        } else {
            let mut event = std::mem::take(&mut self.pending);
            event.extend_from_slice(&whole[..first]);
            self.consider(&event, out);
        }
        self.search(&whole[first..], out);
        self.pending.clear();
        self.pending.extend_from_slice(&chunk[end..]);
    }

    /// Considers the events of `events` (whole events only) that hold a
    /// usage object.
    fn search(&mut self, events: &[u8], out: &mut Vec<Vec<u8>>) {
        if self.last_event_only {
            // Only the last one counts: search from the end.
            let mut end = events.len();
            while let Some(at) = USAGE_KEY_REV.rfind(&events[..end]) {
                if usage_value_may_be_object(&events[at + USAGE_KEY.len()..]) {
                    let (start, end) = event_bounds(events, at);
                    self.keep(&events[start..end], out);
                    return;
                }
                end = at;
            }
            return;
        }
        let mut from = 0;
        loop {
            let finder = self.object_key.as_deref().unwrap_or(&USAGE_KEY_FWD);
            let Some(found) = finder.find(&events[from..]) else {
                return;
            };
            let at = from + found;
            let rest = &events[at + USAGE_KEY.len()..];
            if self.object_key.is_none() {
                self.object_key = object_key_spelled_as(rest);
            }
            if !usage_value_may_be_object(rest) {
                from = at + USAGE_KEY.len();
                continue;
            }
            let (start, end) = event_bounds(events, at);
            self.keep(&events[start..end], out);
            from = end;
        }
    }

    /// The stream ended: the unfinished event and Gemini's last one.
    fn finish(mut self, out: &mut Vec<Vec<u8>>) {
        let pending = std::mem::take(&mut self.pending);
        if !self.skipping {
            self.consider(&pending, out);
        }
        out.extend(self.last.take());
    }

    /// An event not searched yet: kept if it holds a usage object.
    fn consider(&mut self, event: &[u8], out: &mut Vec<Vec<u8>>) {
        if has_usage_object(event) {
            self.keep(event, out);
        }
    }

    /// An event with a usage object: to parse, unless its name says it is
    /// a delta.
    fn keep(&mut self, event: &[u8], out: &mut Vec<Vec<u8>>) {
        let event = event.trim_ascii();
        if event.is_empty() || skipped_by_name(event) {
            return;
        }
        if self.last_event_only {
            self.last = Some(event.to_vec());
        } else {
            out.push(event.to_vec());
        }
    }
}

/// A finder for `"usage"` spelled as in `rest` (what follows `"usage`)
/// and followed by an object, e.g. `"usage": {`; None unless `rest` is the
/// rest of a whole "usage" key with its value.
fn object_key_spelled_as(rest: &[u8]) -> Option<Box<memchr::memmem::Finder<'static>>> {
    let after_key = rest.strip_prefix(b"\"")?;
    let value = after_key
        .iter()
        .position(|b| !b.is_ascii_whitespace() && *b != b':')?;
    let separator = &after_key[..value];
    if separator.iter().filter(|b| **b == b':').count() != 1
        || !matches!(after_key[value], b'{' | b'n')
    {
        return None;
    }
    let mut needle = b"\"usage\"".to_vec();
    needle.extend_from_slice(separator);
    needle.push(b'{');
    Some(Box::new(memchr::memmem::Finder::new(&needle).into_owned()))
}

/// Where the event of `events` (whole events) that holds the byte at `at`
/// starts and ends.
fn event_bounds(events: &[u8], at: usize) -> (usize, usize) {
    let start = last_blank_line_end(&events[..at]).unwrap_or(0);
    let end = first_blank_line_end(&events[start..at], &events[at..])
        .map_or(events.len(), |len| at + len);
    (start, end)
}

/// Named events that never carry usage: Anthropic's content blocks and
/// pings, the responses API's deltas.
fn skipped_by_name(event: &[u8]) -> bool {
    let Some(rest) = event.strip_prefix(b"event:") else {
        return false;
    };
    let line_end = memchr::memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
    let name = rest[..line_end].trim_ascii();
    name == b"ping" || name.starts_with(b"content_block_") || name.ends_with(b".delta")
}

/// Just past the first blank line of `buf`, where `before` are the bytes
/// that came just before it (a blank line may start there).
pub(crate) fn first_blank_line_end(before: &[u8], buf: &[u8]) -> Option<usize> {
    let is_term = |b: u8| b == b'\n' || b == b'\r';
    let mut from = 0;
    while let Some(found) = memchr::memchr2(b'\n', b'\r', &buf[from..]) {
        let at = from + found;
        // The terminator at `at` and where it ends ("\r\n" is one).
        let term_end = if buf[at] == b'\r' && buf.get(at + 1) == Some(&b'\n') {
            at + 2
        } else {
            at + 1
        };
        // Which byte precedes this terminator's start.
        let before_start = if at == 0 {
            if buf[0] == b'\n' && before.last() == Some(&b'\r') {
                // The second half of a "\r\n" cut in two: what precedes it.
                before.len().checked_sub(2).map(|i| before[i])
            } else {
                before.last().copied()
            }
        } else if buf[at] == b'\n' && buf[at - 1] == b'\r' {
            // Reached the '\n' of a pair whose '\r' was checked already.
            from = at + 1;
            continue;
        } else {
            Some(buf[at - 1])
        };
        if before_start.is_some_and(is_term) {
            return Some(term_end);
        }
        from = term_end;
    }
    None
}

/// Where in `chunk` the last complete event ends (just past its blank
/// line: "\n\n", "\r\n\r\n" or "\r\r"), looking across the joint with
/// `before` too.
fn events_end(before: &[u8], chunk: &[u8]) -> Option<usize> {
    if let Some(end) = last_blank_line_end(chunk) {
        return Some(end);
    }
    // A blank line cut between the two: at most 3 bytes from each side.
    let tail = &before[before.len().saturating_sub(3)..];
    let head = &chunk[..chunk.len().min(3)];
    let mut joint = [0u8; 6];
    joint[..tail.len()].copy_from_slice(tail);
    joint[tail.len()..tail.len() + head.len()].copy_from_slice(head);
    last_blank_line_end(&joint[..tail.len() + head.len()])
        .filter(|&end| end > tail.len())
        .map(|end| end - tail.len())
}

/// Just past the last blank line of `buf` (a line terminator, "\r\n" being
/// one, right after another). Walks back from the end with memrchr, so it
/// stops within the last event or two.
pub(crate) fn last_blank_line_end(buf: &[u8]) -> Option<usize> {
    let mut end = buf.len();
    while let Some(at) = memchr::memrchr2(b'\n', b'\r', &buf[..end]) {
        let start = if buf[at] == b'\n' && at > 0 && buf[at - 1] == b'\r' {
            at - 1
        } else {
            at
        };
        if start > 0 && matches!(buf[start - 1], b'\n' | b'\r') {
            return Some(at + 1);
        }
        end = start;
    }
    None
}

/// A usage key: "usage" or "usageMetadata".
const USAGE_KEY: &[u8] = b"\"usage";
static USAGE_KEY_FWD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(USAGE_KEY));
static USAGE_KEY_REV: std::sync::LazyLock<memchr::memmem::FinderRev<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::FinderRev::new(USAGE_KEY));

/// Whether `buf` may hold a usage key whose value is not null.
fn has_usage_object(buf: &[u8]) -> bool {
    USAGE_KEY_FWD
        .find_iter(buf)
        .any(|at| usage_value_may_be_object(&buf[at + USAGE_KEY.len()..]))
}

/// Whether what follows `"usage` (`rest`) may be the rest of a usage key
/// whose value is not null. A key cut off at the end counts as a hit: a
/// false hit only costs a parse. An escaped `\"usage\"` inside a string
/// fails here, as its closing quote is preceded by a backslash.
fn usage_value_may_be_object(rest: &[u8]) -> bool {
    let rest = rest.strip_prefix(b"Metadata").unwrap_or(rest);
    let Some(rest) = rest.strip_prefix(b"\"") else {
        // "usage" followed by something else, or cut off.
        return rest.is_empty() || b"Metadata".starts_with(rest);
    };
    let rest = rest.trim_ascii_start();
    let Some(rest) = rest.strip_prefix(b":") else {
        return rest.is_empty();
    };
    !rest.trim_ascii_start().starts_with(b"n")
}

impl Meter {
    /// `status` and `content_type` are the response's; `path` the request's.
    /// `max_json` bounds the copy of a non-streaming JSON body.
    pub fn new(
        format: &'static UsageFormat,
        status: u16,
        content_type: Option<&str>,
        path: &str,
        max_json: usize,
    ) -> Meter {
        let mime = content_type
            .and_then(|c| c.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase());
        let framing = if !(200..300).contains(&status) {
            Framing::Error
        } else {
            match mime.as_deref() {
                Some("text/event-stream") => Framing::Sse(FastSse::new(format.last_event_only)),
                Some("application/vnd.amazon.eventstream") => {
                    Framing::EventStream(EventStream::new(MAX_EVENT))
                }
                Some("application/json") | None if (format.json_array_stream)(path) => {
                    Framing::Array {
                        pending: Vec::new(),
                    }
                }
                Some("application/json") | None => Framing::Document {
                    buf: Vec::new(),
                    overflowed: false,
                    max: max_json.max(TAIL),
                },
                Some(other) => Framing::Opaque(format!("content type {other} carries no usage")),
            }
        };
        Meter {
            format,
            framing,
            usage: None,
            model: None,
            output_final: false,
            unparsed: 0,
        }
    }

    /// One frame of the body, as forwarded.
    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.framing {
            Framing::Sse(fast) => {
                let mut events = Vec::new();
                fast.feed(chunk, &mut events);
                for event in events {
                    self.events(&event);
                }
            }
            Framing::Document {
                buf,
                overflowed,
                max,
            } => {
                buf.extend_from_slice(chunk);
                if buf.len() > *max {
                    *overflowed = true;
                    let cut = buf.len() - TAIL;
                    buf.drain(..cut);
                }
            }
            Framing::Array { pending } => {
                pending.extend_from_slice(chunk);
                self.array_elements();
            }
            Framing::EventStream(stream) => {
                let mut events = Vec::new();
                let read = stream.feed(chunk, &mut events);
                for event in events {
                    self.aws_event(event);
                }
                if let Err(unreadable) = read {
                    self.framing = Framing::Opaque(unreadable.to_string());
                }
            }
            Framing::Opaque(_) | Framing::Error => {}
        }
    }

    /// Usage the response's headers reported (Bedrock's InvokeModel token
    /// counts): counted as a final count, merged with what the body says.
    pub fn seed(&mut self, usage: Usage) {
        self.merge(usage);
        self.output_final = true;
    }

    /// One AWS event that may hold usage: read as a document, its event
    /// type standing for a `type` it does not have.
    fn aws_event(&mut self, event: UsageEvent) {
        match serde_json::from_slice::<Doc>(&event.json) {
            Ok(mut doc) => {
                if doc.kind.is_none() {
                    doc.kind = Some(event.kind);
                }
                self.doc(doc);
            }
            Err(_) => self.unparsed += 1,
        }
    }

    /// The body ended (or was cut off). Idempotent enough to be called once.
    pub fn finish(mut self) -> Reading {
        let mut opaque = None;
        match std::mem::replace(&mut self.framing, Framing::Error) {
            Framing::Sse(fast) => {
                self.unparsed += fast.dropped;
                let mut events = Vec::new();
                fast.finish(&mut events);
                for event in events {
                    self.events(&event);
                }
            }
            Framing::Document {
                buf, overflowed, ..
            } => {
                if overflowed {
                    self.document_tail(&buf);
                } else if !buf.is_empty() {
                    match serde_json::from_slice::<Doc>(&buf) {
                        Ok(doc) => {
                            self.doc(doc);
                            self.output_final = self.usage.is_some();
                        }
                        Err(_) => self.unparsed += 1,
                    }
                }
            }
            Framing::Array { pending } => {
                if pending
                    .iter()
                    .any(|b| !matches!(b, b']' | b',' | b' ' | b'\n' | b'\r' | b'\t'))
                {
                    self.unparsed += 1;
                }
            }
            Framing::EventStream(stream) => self.unparsed += stream.unparsed,
            Framing::Opaque(reason) => opaque = Some(reason),
            Framing::Error => {
                return Reading {
                    usage: None,
                    model: self.model,
                    outcome: Outcome::ErrorResponse,
                    output_final: true,
                };
            }
        }
        let outcome = match (&self.usage, opaque) {
            (_, Some(reason)) => Outcome::Unknown { reason },
            (Some(_), None) => Outcome::Counted,
            (None, None) => Outcome::Unknown {
                reason: if self.unparsed > 0 {
                    format!(
                        "no usage found; {} event(s) not in the expected format",
                        self.unparsed
                    )
                } else {
                    "no usage in the response (an OpenAI stream reports usage only with stream_options.include_usage)".to_owned()
                },
            },
        };
        Reading {
            usage: self.usage,
            model: self.model,
            outcome,
            output_final: self.output_final,
        }
    }

    /// Splits a region of whole events and parses those with usage.
    fn events(&mut self, region: &[u8]) {
        let mut splitter = SseSplitter::new(MAX_EVENT);
        let mut events = Vec::new();
        splitter.feed(region, &mut |e| events.push(e));
        splitter.finish(&mut |e| events.push(e));
        self.unparsed += splitter.dropped;
        for event in events {
            self.event(event);
        }
    }

    fn event(&mut self, event: Event) {
        let data = event.data.trim_ascii();
        if data.is_empty() || data == b"[DONE]" || !has_usage_object(data) {
            return;
        }
        match serde_json::from_slice::<Doc>(data) {
            Ok(doc) => self.doc(doc),
            Err(_) => self.unparsed += 1,
        }
    }

    fn doc(&mut self, doc: Doc) {
        let model = doc.model.or(doc.model_version);
        if self.model.is_none() && model.is_some() {
            self.model = model;
        }
        let final_marker = doc.usage.is_some() && (self.format.final_count)(doc.kind.as_deref());
        if let Some(usage) = &doc.usage {
            self.merge((self.format.usage)(usage));
        }
        if let Some(usage) = &doc.usage_metadata {
            self.merge(usage.tokens());
        }
        if let Some(metrics) = &doc.bedrock_metrics {
            let cached = metrics.cache_read_input_token_count.unwrap_or(0);
            self.merge(Usage {
                input_tokens: metrics
                    .input_token_count
                    .unwrap_or(0)
                    .saturating_add(cached)
                    .saturating_add(metrics.cache_write_input_token_count.unwrap_or(0)),
                cached_input_tokens: cached,
                output_tokens: metrics.output_token_count.unwrap_or(0),
            });
            // Bedrock writes them once, at the end of the stream.
            self.output_final = true;
        }
        self.output_final |= final_marker;
        for inner in [doc.message, doc.response].into_iter().flatten() {
            self.doc(*inner);
        }
    }

    fn merge(&mut self, usage: Usage) {
        self.usage
            .get_or_insert_with(Usage::default)
            .merge_max(usage);
    }

    /// Parses every complete element of a Gemini JSON-array stream.
    fn array_elements(&mut self) {
        loop {
            let Framing::Array { pending } = &mut self.framing else {
                return;
            };
            let skip = pending
                .iter()
                .take_while(|b| matches!(b, b'[' | b']' | b',' | b' ' | b'\n' | b'\r' | b'\t'))
                .count();
            pending.drain(..skip);
            if pending.is_empty() {
                return;
            }
            let mut stream = serde_json::Deserializer::from_slice(pending).into_iter::<Doc>();
            match stream.next() {
                Some(Ok(doc)) => {
                    let used = stream.byte_offset();
                    pending.drain(..used);
                    self.doc(doc);
                }
                Some(Err(e)) if e.is_eof() => {
                    if pending.len() > MAX_EVENT {
                        self.framing = Framing::Opaque(
                            "a JSON stream element larger than the metering limit".to_owned(),
                        );
                    }
                    return;
                }
                _ => {
                    self.unparsed += 1;
                    self.framing =
                        Framing::Opaque("a JSON stream that is not a JSON array".to_owned());
                    return;
                }
            }
        }
    }

    /// A document too large to keep: the last top-level usage object in its
    /// tail. serde_json parses the value; only the start is found by search.
    fn document_tail(&mut self, tail: &[u8]) {
        let keys: [&[u8]; 2] = [b"\"usageMetadata\"", b"\"usage\""];
        for key in keys {
            let Some(at) = memchr::memmem::rfind(tail, key) else {
                continue;
            };
            let rest = tail[at + key.len()..].trim_ascii_start();
            let Some(value) = rest.strip_prefix(b":") else {
                continue;
            };
            let mut de = serde_json::Deserializer::from_slice(value);
            if key == b"\"usage\"" {
                if let Ok(raw) = <UsageFields as Deserialize>::deserialize(&mut de) {
                    self.merge((self.format.usage)(&raw));
                    self.output_final = true;
                    return;
                }
            } else if let Ok(raw) = <UsageMetadata as Deserialize>::deserialize(&mut de) {
                self.merge(raw.tokens());
                self.output_final = true;
                return;
            }
        }
        self.unparsed += 1;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::provider::{Scheme, api};

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/usage/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(path).unwrap()
    }

    fn content_type(name: &str) -> &'static str {
        if name.ends_with(".sse") {
            "text/event-stream"
        } else if name.ends_with(".json") {
            "application/json; charset=utf-8"
        } else {
            "audio/mpeg"
        }
    }

    fn read(provider: Scheme, name: &str, path: &str, cuts: &[usize]) -> Reading {
        let body = fixture(name);
        let mut meter = Meter::new(
            api(provider).usage(),
            200,
            Some(content_type(name)),
            path,
            1 << 20,
        );
        let mut from = 0;
        for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
            meter.feed(&body[from..cut]);
            from = cut;
        }
        meter.finish()
    }

    fn usage(input: u64, cached: u64, output: u64) -> Option<Usage> {
        Some(Usage {
            input_tokens: input,
            cached_input_tokens: cached,
            output_tokens: output,
        })
    }

    /// Provider, file, request path, expected (input, cached, output), model.
    type Case = (
        Scheme,
        &'static str,
        &'static str,
        (u64, u64, u64),
        &'static str,
    );

    const CASES: &[Case] = &[
        (
            Scheme::OpenAi,
            "openai_chat.json",
            "/v1/chat/completions",
            (19, 0, 10),
            "gpt-4o-2024-08-06",
        ),
        (
            Scheme::OpenAi,
            "openai_chat_stream.sse",
            "/v1/chat/completions",
            (1200, 1024, 9),
            "gpt-4o-mini-2024-07-18",
        ),
        (
            Scheme::OpenAi,
            "openai_responses.json",
            "/v1/responses",
            (36, 0, 87),
            "gpt-4.1-2025-04-14",
        ),
        (
            Scheme::OpenAi,
            "openai_responses_stream.sse",
            "/v1/responses",
            (37, 0, 11),
            "gpt-4.1-2025-04-14",
        ),
        (
            Scheme::OpenAi,
            "openai_completions.json",
            "/v1/completions",
            (5, 0, 7),
            "gpt-3.5-turbo-instruct",
        ),
        (
            Scheme::OpenAi,
            "openai_embeddings.json",
            "/v1/embeddings",
            (8, 0, 0),
            "text-embedding-3-small",
        ),
        (
            Scheme::Anthropic,
            "anthropic_messages.json",
            "/v1/messages",
            (3595, 1500, 503),
            "claude-sonnet-4-20250514",
        ),
        (
            Scheme::Anthropic,
            "anthropic_messages_stream.sse",
            "/v1/messages",
            (25, 0, 15),
            "claude-opus-4-1-20250805",
        ),
        (
            Scheme::Gemini,
            "gemini_generate.json",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            (8, 0, 1024),
            "gemini-2.5-flash",
        ),
        (
            Scheme::Gemini,
            "gemini_stream.sse",
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
            (4010, 4000, 110),
            "gemini-2.5-pro",
        ),
        (
            Scheme::Gemini,
            "gemini_stream_array.json",
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
            (6, 0, 9),
            "gemini-2.0-flash",
        ),
    ];

    #[test]
    fn every_recorded_format_yields_its_usage_and_model() {
        for &(provider, name, path, (i, c, o), model) in CASES {
            let reading = read(provider, name, path, &[]);
            assert_eq!(reading.outcome, Outcome::Counted, "{name}");
            assert_eq!(reading.usage, usage(i, c, o), "{name}");
            assert_eq!(reading.model.as_deref(), Some(model), "{name}");
        }
    }

    #[test]
    fn usage_is_the_same_wherever_the_body_is_cut() {
        for &(provider, name, path, (i, c, o), _) in CASES {
            let len = fixture(name).len();
            // Every single cut, and pairs of cuts on a stride.
            for a in 0..len {
                let reading = read(provider, name, path, &[a]);
                assert_eq!(reading.usage, usage(i, c, o), "{name} cut at {a}");
            }
            for a in (0..len).step_by(7) {
                for b in (a..len).step_by(13) {
                    let reading = read(provider, name, path, &[a, b]);
                    assert_eq!(reading.usage, usage(i, c, o), "{name} cut at {a},{b}");
                }
            }
        }
    }

    #[test]
    fn byte_by_byte_streams_still_meter() {
        for &(provider, name, path, (i, c, o), _) in CASES {
            let body = fixture(name);
            let mut meter = Meter::new(
                api(provider).usage(),
                200,
                Some(content_type(name)),
                path,
                1 << 20,
            );
            for b in &body {
                meter.feed(std::slice::from_ref(b));
            }
            assert_eq!(meter.finish().usage, usage(i, c, o), "{name}");
        }
    }

    #[test]
    fn crlf_and_cr_streams_meter_wherever_they_are_cut() {
        for newline in [&b"\r\n"[..], b"\r"] {
            let body: Vec<u8> = fixture("anthropic_messages_stream.sse")
                .split(|b| *b == b'\n')
                .collect::<Vec<_>>()
                .join(newline);
            for a in 0..body.len() {
                let mut m = Meter::new(
                    api(Scheme::Anthropic).usage(),
                    200,
                    Some("text/event-stream"),
                    "/v1/messages",
                    1 << 20,
                );
                m.feed(&body[..a]);
                m.feed(&body[a..]);
                assert_eq!(m.finish().usage, usage(25, 0, 15), "cut at {a}");
            }
        }
    }

    /// An OpenAI chat stream of `chunks` content chunks, each with
    /// `"usage":null` (as with `include_usage`), then `last`.
    fn long_openai_stream(chunks: usize, last: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for i in 0..chunks {
            body.extend_from_slice(format!("data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {i}\"}}}}],\"usage\":null}}\n\n").as_bytes());
        }
        body.extend_from_slice(last.as_bytes());
        body.extend_from_slice(b"data: [DONE]\n\n");
        body
    }

    fn meter_in_frames(body: &[u8], frame: usize) -> Reading {
        let mut m = Meter::new(
            api(Scheme::OpenAi).usage(),
            200,
            Some("text/event-stream"),
            "/v1/chat/completions",
            1 << 20,
        );
        for chunk in body.chunks(frame) {
            m.feed(chunk);
        }
        m.finish()
    }

    #[test]
    fn a_long_stream_is_metered_in_frames_of_any_size() {
        let body = long_openai_stream(
            5000,
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5000}}\n\n",
        );
        for frame in [16 * 1024, 4096, 1000, 97] {
            let reading = meter_in_frames(&body, frame);
            assert_eq!(reading.outcome, Outcome::Counted, "frames of {frame}");
            assert_eq!(reading.usage, usage(7, 0, 5000), "frames of {frame}");
            assert!(reading.output_final);
        }
    }

    #[test]
    fn a_stream_that_respells_its_usage_key_midway_is_flagged_not_counted_as_zero() {
        // Compact nulls first, then a spaced usage object: one serializer
        // would not do this, and the fast path looks only for the first
        // spelling, so the usage is missed unless it straddles a frame
        // boundary (that event is searched in full). Either way the
        // response must not pass as counted with other tokens.
        let body = long_openai_stream(
            2000,
            "data: {\"choices\": [], \"usage\": {\"prompt_tokens\": 7, \"completion_tokens\": 9}}\n\n",
        );
        for frame in [16 * 1024, 4096, 1000, 97] {
            let reading = meter_in_frames(&body, frame);
            match reading.outcome {
                Outcome::Counted => assert_eq!(reading.usage, usage(7, 0, 9), "frames of {frame}"),
                Outcome::Unknown { .. } => assert_eq!(reading.usage, None, "frames of {frame}"),
                Outcome::ErrorResponse => panic!("frames of {frame}: not an error response"),
            }
        }
    }

    #[test]
    fn an_openai_stream_without_the_usage_chunk_is_unknown_and_says_why() {
        let reading = read(
            Scheme::OpenAi,
            "openai_chat_stream_no_usage.sse",
            "/v1/chat/completions",
            &[],
        );
        assert_eq!(reading.usage, None);
        let Outcome::Unknown { reason } = reading.outcome else {
            panic!("expected unknown");
        };
        assert!(reason.contains("include_usage"), "{reason}");
    }

    #[test]
    fn an_unknown_content_type_is_flagged_not_ignored() {
        let reading = read(Scheme::OpenAi, "unknown_audio.bin", "/v1/audio/speech", &[]);
        assert!(matches!(reading.outcome, Outcome::Unknown { .. }));
        let garbage = {
            let mut m = Meter::new(
                api(Scheme::OpenAi).usage(),
                200,
                Some("application/json"),
                "/v1/x",
                1 << 20,
            );
            m.feed(b"{not json");
            m.finish()
        };
        assert!(matches!(garbage.outcome, Outcome::Unknown { .. }));
    }

    #[test]
    fn error_responses_are_not_charged_tokens() {
        let mut m = Meter::new(
            api(Scheme::Anthropic).usage(),
            429,
            Some("application/json"),
            "/v1/messages",
            1 << 20,
        );
        m.feed(b"{\"type\":\"error\"}");
        assert_eq!(m.finish().outcome, Outcome::ErrorResponse);
    }

    #[test]
    fn a_document_larger_than_the_copy_limit_is_read_from_its_tail() {
        let mut body = b"{\"object\":\"list\",\"data\":[".to_vec();
        for i in 0..20000 {
            body.extend_from_slice(
                format!("{{\"embedding\":[0.1,0.2],\"index\":{i}}},").as_bytes(),
            );
        }
        body.extend_from_slice(b"{}],\"model\":\"text-embedding-3-large\",\"usage\":{\"prompt_tokens\":70000,\"total_tokens\":70000}}");
        assert!(body.len() > 200 * 1024);
        let mut m = Meter::new(
            api(Scheme::OpenAi).usage(),
            200,
            Some("application/json"),
            "/v1/embeddings",
            100 * 1024,
        );
        for chunk in body.chunks(4096) {
            m.feed(chunk);
        }
        let reading = m.finish();
        assert_eq!(reading.outcome, Outcome::Counted);
        assert_eq!(reading.usage, usage(70000, 0, 0));
    }

    #[test]
    fn the_top_level_anthropic_usage_wins_over_one_inside_tool_input() {
        let reading = read(
            Scheme::Anthropic,
            "anthropic_messages.json",
            "/v1/messages",
            &[],
        );
        assert_eq!(reading.usage.unwrap().input_tokens, 3595);
    }

    #[test]
    fn a_cut_off_anthropic_stream_keeps_the_input_seen_but_not_a_final_output() {
        let body = fixture("anthropic_messages_stream.sse");
        let cut = memchr::memmem::find(&body, b"event: message_delta").unwrap();
        let mut m = Meter::new(
            api(Scheme::Anthropic).usage(),
            200,
            Some("text/event-stream"),
            "/v1/messages",
            1 << 20,
        );
        m.feed(&body[..cut]);
        let reading = m.finish();
        assert_eq!(reading.usage.unwrap().input_tokens, 25);
        assert!(!reading.output_final);
    }

    fn bedrock(content_type: &str, path: &str, body: &[u8], cut: usize) -> Reading {
        let mut m = Meter::new(
            api(Scheme::Bedrock).usage(),
            200,
            Some(content_type),
            path,
            1 << 20,
        );
        m.feed(&body[..cut]);
        m.feed(&body[cut..]);
        m.finish()
    }

    #[test]
    fn converse_stream_is_metered_from_its_metadata_event() {
        use crate::usage::eventstream::tests::frame;
        let mut body = Vec::new();
        body.extend(frame("messageStart", br#"{"role":"assistant"}"#));
        body.extend(frame(
            "contentBlockDelta",
            br#"{"contentBlockIndex":0,"delta":{"text":"usage is a word"}}"#,
        ));
        body.extend(frame("messageStop", br#"{"stopReason":"end_turn"}"#));
        body.extend(frame(
            "metadata",
            br#"{"usage":{"inputTokens":12,"outputTokens":7,"totalTokens":19,"cacheReadInputTokens":4},"metrics":{"latencyMs":90}}"#,
        ));
        for cut in [0, 5, 60, body.len() - 3] {
            let reading = bedrock(
                "application/vnd.amazon.eventstream",
                "/model/m/converse-stream",
                &body,
                cut,
            );
            assert_eq!(reading.outcome, Outcome::Counted, "cut {cut}");
            assert_eq!(reading.usage, usage(16, 4, 7));
            assert!(reading.output_final);
        }
        // Cut before the metadata event: input unknown, not final.
        let before = memchr::memmem::rfind(&body, b"metadata").unwrap() - 40;
        let mut m = Meter::new(
            api(Scheme::Bedrock).usage(),
            200,
            Some("application/vnd.amazon.eventstream"),
            "/model/m/converse-stream",
            1 << 20,
        );
        m.feed(&body[..before]);
        let reading = m.finish();
        assert!(reading.usage.is_none() && !reading.output_final);
    }

    #[test]
    fn invoke_stream_chunks_carry_the_models_own_usage_and_bedrocks_metrics() {
        use crate::usage::eventstream::tests::chunk;
        let mut body = Vec::new();
        body.extend(chunk(
            r#"{"type":"message_start","message":{"id":"m","type":"message","role":"assistant","model":"claude-3-haiku-20240307","content":[],"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        ));
        body.extend(chunk(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        ));
        body.extend(chunk(
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}"#,
        ));
        body.extend(chunk(
            r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":12,"outputTokenCount":7,"invocationLatency":300,"firstByteLatency":100}}"#,
        ));
        let reading = bedrock(
            "application/vnd.amazon.eventstream",
            "/model/anthropic.claude-3-haiku-20240307-v1:0/invoke-with-response-stream",
            &body,
            body.len() / 2,
        );
        assert_eq!(reading.outcome, Outcome::Counted);
        assert_eq!(reading.usage, usage(12, 0, 7));
        assert_eq!(reading.model.as_deref(), Some("claude-3-haiku-20240307"));
        assert!(reading.output_final);
    }

    #[test]
    fn converse_and_invoke_documents_and_invoke_headers_are_metered() {
        let converse = br#"{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"end_turn","usage":{"inputTokens":30,"outputTokens":5,"totalTokens":35,"cacheWriteInputTokens":10},"metrics":{"latencyMs":5}}"#;
        let reading = bedrock("application/json", "/model/m/converse", converse, 10);
        assert_eq!(reading.usage, usage(40, 0, 5));
        let invoke = br#"{"id":"msg","type":"message","model":"claude","content":[],"usage":{"input_tokens":9,"output_tokens":3}}"#;
        let reading = bedrock("application/json", "/model/m/invoke", invoke, 0);
        assert_eq!(reading.usage, usage(9, 0, 3));
        // A model whose body has no usage: the headers' counts.
        let mut m = Meter::new(
            api(Scheme::Bedrock).usage(),
            200,
            Some("application/json"),
            "/model/meta.llama3-8b-instruct-v1:0/invoke",
            1 << 20,
        );
        m.seed(Usage {
            input_tokens: 21,
            cached_input_tokens: 0,
            output_tokens: 13,
        });
        m.feed(br#"{"generation":"hi","prompt_token_count":21,"generation_token_count":13}"#);
        let reading = m.finish();
        assert_eq!(reading.outcome, Outcome::Counted);
        assert_eq!(reading.usage, usage(21, 0, 13));
    }

    #[test]
    fn vertex_meters_gemini_and_anthropic_formats() {
        let mut m = Meter::new(
            api(Scheme::Vertex).usage(),
            200,
            Some("application/json"),
            "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:streamGenerateContent",
            1 << 20,
        );
        m.feed(br#"[{"candidates":[],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":3}},"#);
        m.feed(br#"{"candidates":[],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":7},"modelVersion":"gemini-2.5-flash"}]"#);
        let reading = m.finish();
        assert_eq!(reading.usage, usage(12, 0, 7));
        let mut m = Meter::new(
            api(Scheme::Vertex).usage(),
            200,
            Some("text/event-stream"),
            "/v1/projects/p/locations/l/publishers/anthropic/models/claude:streamRawPredict",
            1 << 20,
        );
        m.feed(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n");
        m.feed(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n");
        let reading = m.finish();
        assert_eq!(reading.usage, usage(12, 0, 7));
        assert!(reading.output_final);
    }
}
