//! The one parse of a request: what policy decides on, what budgets reserve
//! for and what the audit line records, read once per request by the
//! upstream's provider.
//!
//! The parse is strict, so that what warrant decides on is what the
//! provider runs. An agent that wants policy to see one request while the
//! provider runs another has two levers, and both are closed here:
//!
//! - **The path.** Providers normalise paths (percent-decoding, dot
//!   segments, sometimes `\` as `/`, `;` parameters, merged slashes), so a
//!   raw path like `/v1/chat/../embeddings` is not the path they route.
//!   [`canonical_path`] percent-decodes the path and refuses every form
//!   whose meaning depends on such normalisation: dot segments (also
//!   encoded), encoded `/` and `\`, backslashes, empty segments (`//`),
//!   `;` parameters, bad escapes, and escapes that decode to control bytes
//!   or invalid UTF-8. What is left means the same to every server, and
//!   policy globs are matched against its decoded form.
//! - **The body.** Providers' JSON parsers keep the *last* of duplicate
//!   keys; a lenient parse that keeps the first lets
//!   `{"model":"allowed",...,"model":"forbidden"}` through. The whole
//!   top-level object is read with serde (a visitor, no hand-written JSON),
//!   and a key given twice is refused (after folding `snake_case` to
//!   `camelCase`, since Gemini's protobuf JSON takes both spellings of a
//!   field). The fields warrant reads are typed; a wrong type is refused,
//!   not skipped. Nested objects that are read (`generationConfig`,
//!   `stream_options`, `thinking`, `reasoning`) are serde structs, which
//!   refuse their own duplicate fields.
//!
//! A body is read as JSON when its content type says so, or when it starts
//! with `{` whatever its content type says (a provider may parse it as JSON
//! anyway, so policy must too). Any other body (multipart uploads, audio)
//! is [`Body::Other`]: nothing is read from it, and a rule that names
//! models refuses it, naming the content type.
//!
//! The injector hands over only the first bytes of a large body (see
//! `proxy::gate`). A top-level object that does not end within them is
//! [`Body::Json`] with `complete: false`; the fields read from it may be
//! contradicted later, so the proxy refuses such a request whenever its
//! decision needs the body (`proxy::phases`).
//!
//! Each provider's `parse` returns `Result<Request, AmbiguousRequest>`: a
//! request the parse cannot read one way only is refused with a 400 in the
//! provider's error shape, never guessed at.

use std::{collections::HashSet, fmt};

use http::{HeaderMap, Method, Uri, header};
use serde::{
    Deserialize,
    de::{self, Deserializer, IgnoredAny, MapAccess, Visitor},
};

/// What the parse is given: the request's head.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

/// One request as warrant understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The canonical path ([`canonical_path`]): percent-decoded, without
    /// the query. What policy's path globs match.
    pub path: String,
    /// The query, less any parameter that carries a credential.
    pub query: Option<String>,
    /// What the body was, as far as it was read.
    pub body: Body,
    /// The model asked for: the body's top-level "model" (Gemini and
    /// Vertex: the canonical path's `models/{model}`; Bedrock:
    /// `/model/{modelId}`; Azure: the deployment).
    pub model: Option<String>,
    /// The cloud project the request runs in (Vertex: `projects/{project}`).
    pub project: Option<String>,
    /// Where it runs (Vertex: `locations/{location}`).
    pub location: Option<String>,
    /// The response is to be streamed ("stream": true; Gemini's
    /// `:streamGenerateContent`).
    pub stream: bool,
    /// `stream_options.include_usage` was asked for (OpenAI).
    pub include_usage: bool,
    /// The output cap the request sets, thinking included: the largest of
    /// `max_tokens`, `max_completion_tokens`, `max_output_tokens`,
    /// `max_tokens_to_sample` and Anthropic's `thinking.budget_tokens`;
    /// Gemini's `generationConfig.maxOutputTokens` plus its
    /// `thinkingConfig.thinkingBudget`.
    pub max_output_tokens: Option<u64>,
    /// The request asks for reasoning (`reasoning.effort`,
    /// `reasoning_effort`, Gemini's dynamic thinking budget) without a cap
    /// that bounds it.
    pub reasoning: bool,
    /// Choices asked for (`n`, `best_of`, `generationConfig.candidateCount`,
    /// the largest); 1 when absent.
    pub choices: u64,
    /// `"background": true` (the responses API runs it asynchronously).
    pub background: bool,
    /// A protocol upgrade (WebSocket), or an HTTP/2 extended CONNECT.
    pub upgrade: bool,
    /// Work this request starts that the response does not meter (a
    /// batch, a background response, a session): set by the provider.
    pub unmetered: Option<Unmetered>,
    /// The body's length: Content-Length, else the bytes read.
    pub body_len: u64,
}

/// What the request's body was, as far as the parse read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body bytes were read: none was sent, or the gate needed none.
    None,
    /// A JSON object. `complete`: it ended within the bytes read, so every
    /// top-level field was seen.
    Json { complete: bool },
    /// Not JSON (a multipart upload, audio, ...): nothing is read from it.
    Other { content_type: String },
}

/// Work a request starts whose tokens no response of this request reports,
/// so budgets cannot meter it. A workload with a token or cost budget is
/// refused these unless its rule names them in `allow_unmetered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unmetered {
    /// A batch job (`/v1/batches`, `/v1/messages/batches`,
    /// `:batchGenerateContent`, `:asyncBatchEmbedContent`).
    Batch,
    /// A response run in the background (`"background": true`).
    Background,
    /// A fine-tuning or tuning job.
    FineTuning,
    /// An Assistants run (`/v1/threads/.../runs`).
    Assistants,
    /// An eval run (`/v1/evals/.../runs`).
    Evals,
    /// A long-running generation (Gemini `:predictLongRunning`, OpenAI
    /// `/v1/videos`).
    LongRunning,
    /// A request that mints an ephemeral token or session for realtime
    /// audio (WebRTC, SIP, Gemini Live): the session then talks to the
    /// provider without warrant.
    Realtime,
    /// A WebSocket (or other protocol) upgrade whose messages warrant does
    /// not meter (the provider reads no session usage: see
    /// `Api::session_usage`). Never allowed under a token or cost budget.
    WebSocket,
}

impl Unmetered {
    /// Every kind, for config validation and messages.
    pub const ALL: [Unmetered; 8] = [
        Unmetered::Batch,
        Unmetered::Background,
        Unmetered::FineTuning,
        Unmetered::Assistants,
        Unmetered::Evals,
        Unmetered::LongRunning,
        Unmetered::Realtime,
        Unmetered::WebSocket,
    ];

    /// The name used in `allow_unmetered`.
    pub fn name(self) -> &'static str {
        match self {
            Unmetered::Batch => "batch",
            Unmetered::Background => "background",
            Unmetered::FineTuning => "fine-tuning",
            Unmetered::Assistants => "assistants",
            Unmetered::Evals => "evals",
            Unmetered::LongRunning => "long-running",
            Unmetered::Realtime => "realtime",
            Unmetered::WebSocket => "websocket",
        }
    }

    pub fn from_name(name: &str) -> Option<Unmetered> {
        Unmetered::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Why its tokens escape metering, for the refusal.
    pub fn describe(self) -> &'static str {
        match self {
            Unmetered::Batch => "a batch job (its tokens are spent later, outside this request)",
            Unmetered::Background => {
                "a background response (its tokens are spent after this request returns)"
            }
            Unmetered::FineTuning => "a fine-tuning job (trained later, outside this request)",
            Unmetered::Assistants => "an Assistants run (it runs after this request returns)",
            Unmetered::Evals => "an eval run (it runs after this request returns)",
            Unmetered::LongRunning => {
                "a long-running operation (it runs after this request returns)"
            }
            Unmetered::Realtime => {
                "a realtime session token (the session then runs without warrant)"
            }
            Unmetered::WebSocket => "a WebSocket session whose messages warrant does not meter",
        }
    }
}

/// A request that cannot be read one way only: refused, never guessed at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmbiguousRequest {
    #[error("the request path {path:?} is ambiguous: {problem}")]
    Path { path: String, problem: PathProblem },
    #[error("the request body names {field:?} more than once")]
    DuplicateField { field: String },
    #[error("the request body is not valid JSON: {reason}")]
    InvalidJson { reason: String },
    #[error("the request body is JSON but not an object")]
    NotAnObject,
    /// A method-override header: some servers (Google's among them) run
    /// the method it names instead of the request's, so policy would
    /// decide on one method while the provider runs another.
    #[error(
        "the request carries {header}, which makes a provider run another method than the one warrant decides on"
    )]
    MethodOverride { header: &'static str },
    /// A compressed body: what warrant reads is not what the provider
    /// decompresses and runs.
    #[error(
        "the request body is sent with Content-Encoding {encoding:?}, which warrant does not read; send it uncompressed"
    )]
    EncodedBody { encoding: String },
    /// A query warrant reads (Realtime's model) that servers may read
    /// otherwise.
    #[error("the request query is ambiguous: {reason}")]
    Query { reason: &'static str },
    /// A model named by both the path and the body, differently (Gemini).
    #[error("the request names model {path:?} in its path and {body:?} in its body")]
    ConflictingModel { path: String, body: String },
}

/// Headers that make servers run another method than the request line's
/// (Google's front ends honour the first).
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Why a path was refused ([`canonical_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    #[error("it does not start with /")]
    NotAbsolute,
    #[error("it has a dot segment (. or .., also percent-encoded)")]
    DotSegment,
    #[error("it has an encoded separator (%2F or %5C)")]
    EncodedSeparator,
    #[error("it has a backslash")]
    Backslash,
    #[error("it has an empty segment (//)")]
    EmptySegment,
    #[error("it has a ; parameter")]
    Parameter,
    #[error("it has a malformed percent-escape")]
    BadEscape,
    #[error("it decodes to a control character")]
    ControlByte,
    #[error("it decodes to invalid UTF-8")]
    NotUtf8,
}

impl Request {
    /// A request known only by its method, path and model, as `warrant
    /// explain --request` describes one: the path is checked and decoded as
    /// a real request's would be.
    pub fn described(
        method: Method,
        path: &str,
        model: Option<String>,
    ) -> Result<Request, AmbiguousRequest> {
        let uri: Uri = path.parse().map_err(|_| AmbiguousRequest::Path {
            path: path.to_owned(),
            problem: PathProblem::NotAbsolute,
        })?;
        let headers = HeaderMap::new();
        let head = RequestHead {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        let mut request = json_request(&head, b"")?;
        request.model = model;
        Ok(request)
    }

    /// Whether this is an embedding call (no output tokens).
    pub fn is_embedding(&self) -> bool {
        let path = &self.path;
        path.ends_with("/embeddings")
            || path.contains(":embedContent")
            || path.contains(":batchEmbedContents")
    }

    /// The `{...}` method of a Gemini-style path's last segment
    /// (`models/m:generateContent` -> `generateContent`).
    pub fn path_method(&self) -> Option<&str> {
        let last = self.path.rsplit('/').next()?;
        last.split_once(':').map(|(_, method)| method)
    }
}

/// The canonical form of `raw` (a request path, without its query): its
/// percent-decoded text, or why it is refused (see the module comment).
/// A trailing `/` is kept (it is not ambiguous); every other empty segment
/// is refused.
pub fn canonical_path(raw: &str) -> Result<String, PathProblem> {
    if !raw.starts_with('/') {
        return Err(PathProblem::NotAbsolute);
    }
    if raw.contains('\\') {
        return Err(PathProblem::Backslash);
    }
    if raw.contains(';') {
        return Err(PathProblem::Parameter);
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            decoded.push(b);
            i += 1;
            continue;
        }
        let hex = |at: usize| bytes.get(at).and_then(|c| (*c as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
            return Err(PathProblem::BadEscape);
        };
        let byte = (hi * 16 + lo) as u8;
        match byte {
            b'/' | b'\\' => return Err(PathProblem::EncodedSeparator),
            b';' => return Err(PathProblem::Parameter),
            _ => decoded.push(byte),
        }
        i += 3;
    }
    if decoded.iter().any(|b| b.is_ascii_control()) {
        return Err(PathProblem::ControlByte);
    }
    let text = String::from_utf8(decoded).map_err(|_| PathProblem::NotUtf8)?;
    let segments: Vec<&str> = text[1..].split('/').collect();
    let last = segments.len() - 1;
    for (at, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => return Err(PathProblem::DotSegment),
            // "/" alone, or a trailing slash.
            "" if at == last => {}
            "" => return Err(PathProblem::EmptySegment),
            _ => {}
        }
    }
    Ok(text)
}

/// The parse shared by the providers: the canonical path and, when the body
/// is JSON, its top-level fields. Providers add to it (Gemini's model from
/// the path, which work is unmetered).
pub(super) fn json_request(
    head: &RequestHead<'_>,
    body_prefix: &[u8],
) -> Result<Request, AmbiguousRequest> {
    let raw_path = head.uri.path();
    let path = canonical_path(raw_path).map_err(|problem| AmbiguousRequest::Path {
        path: raw_path.to_owned(),
        problem,
    })?;
    json_request_at(head, path, body_prefix)
}

/// [`json_request`] for a provider that made the canonical path itself
/// (Bedrock, whose model ids carry an encoded `/`).
pub(super) fn json_request_at(
    head: &RequestHead<'_>,
    path: String,
    body_prefix: &[u8],
) -> Result<Request, AmbiguousRequest> {
    if let Some(header) = METHOD_OVERRIDES
        .into_iter()
        .find(|name| head.headers.contains_key(*name))
    {
        return Err(AmbiguousRequest::MethodOverride { header });
    }
    // Only a body warrant reads matters (the gate asked for its first
    // bytes): a compressed one would be decided on as something else.
    if !body_prefix.is_empty() {
        let encodings = head.headers.get_all(header::CONTENT_ENCODING).iter();
        for value in encodings {
            let text = String::from_utf8_lossy(value.as_bytes());
            let identity = text
                .split(',')
                .all(|e| e.trim().is_empty() || e.trim().eq_ignore_ascii_case("identity"));
            if !identity {
                return Err(AmbiguousRequest::EncodedBody {
                    encoding: text.into_owned(),
                });
            }
        }
    }
    let content_length = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut request = Request {
        method: head.method.clone(),
        path,
        query: head.uri.query().map(str::to_owned),
        body: Body::None,
        model: None,
        project: None,
        location: None,
        stream: false,
        include_usage: false,
        max_output_tokens: None,
        reasoning: false,
        choices: 1,
        background: false,
        upgrade: is_upgrade(head),
        unmetered: None,
        body_len: content_length.unwrap_or(body_prefix.len() as u64),
    };
    let first = body_prefix.iter().find(|b| !b.is_ascii_whitespace());
    let json_type = head
        .headers
        .get(header::CONTENT_TYPE)
        .map(|v| is_json_type(v.as_bytes()));
    request.body = match (first, json_type) {
        (None, _) => Body::None,
        // JSON by its look, whatever the type says.
        (Some(b'{'), _) => {
            // The whole body is here when the client said so.
            let whole = content_length == Some(body_prefix.len() as u64);
            let complete = read_json(body_prefix, whole, &mut request)?;
            Body::Json { complete }
        }
        // JSON by its type, but not an object: no provider takes it.
        (Some(_), Some(true)) => return Err(AmbiguousRequest::NotAnObject),
        (Some(_), _) => Body::Other {
            content_type: head
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned(),
        },
    };
    request.unmetered = (request.upgrade).then_some(Unmetered::WebSocket);
    if request.background {
        request.unmetered = Some(Unmetered::Background);
    }
    Ok(request)
}

/// `application/json` or any `+json` type (parameters ignored).
fn is_json_type(value: &[u8]) -> bool {
    let mime = value.split(|b| *b == b';').next().unwrap_or_default();
    let mime = mime.trim_ascii().to_ascii_lowercase();
    mime == b"application/json" || mime.ends_with(b"+json")
}

/// An HTTP/1.1 upgrade (Upgrade with Connection: upgrade) or an HTTP/2
/// extended CONNECT (RFC 8441).
fn is_upgrade(head: &RequestHead<'_>) -> bool {
    if head.method == Method::CONNECT {
        return true;
    }
    head.headers.contains_key(header::UPGRADE)
        && head
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Reads the top-level object of `body` (which starts with `{`) into
/// `request`. Returns whether it ended within `body`. `whole`: `body` is known to be the whole body, so
/// an object cut short is invalid JSON rather than cut off by the read
/// limit.
fn read_json(body: &[u8], whole: bool, request: &mut Request) -> Result<bool, AmbiguousRequest> {
    // The whole text is checked for UTF-8 first: serde_json checks the
    // strings it reads, not those it skips, and a provider refuses (or
    // reads otherwise) a body that is not UTF-8. A character cut by the
    // read limit is the end of what was read.
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(error) if error.error_len().is_none() && !whole => {
            let valid = &body[..error.valid_up_to()];
            std::str::from_utf8(valid).map_err(|_| AmbiguousRequest::InvalidJson {
                reason: "it is not UTF-8".to_owned(),
            })?
        }
        Err(_) => {
            return Err(AmbiguousRequest::InvalidJson {
                reason: "it is not UTF-8".to_owned(),
            });
        }
    };
    // Bytes after the text (a character cut by the read limit) are more
    // body: an object that ends before them is followed by something.
    let cut_after = text.len() < body.len();
    let mut de = serde_json::Deserializer::from_str(text);
    let mut fields = BodyFields {
        request,
        seen: HashSet::new(),
        duplicate: None,
    };
    let read = (&mut de)
        .deserialize_map(&mut fields)
        .and_then(|()| de.end());
    if let Some(field) = fields.duplicate {
        return Err(AmbiguousRequest::DuplicateField { field });
    }
    match read {
        Ok(()) if cut_after => Err(AmbiguousRequest::InvalidJson {
            reason: "trailing characters after the object".to_owned(),
        }),
        Ok(()) => Ok(true),
        Err(error) if error.is_eof() && !whole => Ok(false),
        Err(error) => Err(AmbiguousRequest::InvalidJson {
            reason: error.to_string(),
        }),
    }
}

/// The top-level object's visitor: notes every key (refusing a second
/// one), reads the fields warrant uses with their types, skips the rest.
struct BodyFields<'a> {
    request: &'a mut Request,
    /// Keys seen so far, folded ([`fold_key`]).
    seen: HashSet<String>,
    duplicate: Option<String>,
}

/// `snake_case` folded to `camelCase`: protobuf JSON (Gemini) takes both
/// spellings of a field, so both count as one key.
fn fold_key(key: &str) -> String {
    let mut folded = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' && !folded.is_empty() {
            upper = true;
        } else if upper {
            folded.extend(c.to_uppercase());
            upper = false;
        } else {
            folded.push(c);
        }
    }
    if upper {
        folded.push('_');
    }
    folded
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(alias = "max_output_tokens")]
    max_output_tokens: Option<u64>,
    #[serde(alias = "candidate_count")]
    candidate_count: Option<u64>,
    #[serde(alias = "thinking_config")]
    thinking_config: Option<ThinkingConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    /// -1 asks for a dynamic budget; 0 turns thinking off.
    #[serde(alias = "thinking_budget")]
    thinking_budget: Option<i64>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Anthropic's extended thinking.
#[derive(Deserialize)]
struct Thinking {
    budget_tokens: Option<u64>,
}

/// The responses API's reasoning options.
#[derive(Deserialize)]
struct Reasoning {
    effort: Option<String>,
}

impl<'de> Visitor<'de> for &mut BodyFields<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut gemini_cap = None;
        let mut thinking = None;
        while let Some(key) = map.next_key::<String>()? {
            if !self.seen.insert(fold_key(&key)) {
                self.duplicate = Some(key);
                return Err(de::Error::custom("duplicate key"));
            }
            let request = &mut *self.request;
            match key.as_str() {
                "model" => request.model = map.next_value()?,
                "stream" => request.stream = map.next_value::<Option<bool>>()?.unwrap_or(false),
                "stream_options" => {
                    if let Some(options) = map.next_value::<Option<StreamOptions>>()? {
                        request.include_usage = options.include_usage.unwrap_or(false);
                    }
                }
                "max_tokens"
                | "max_completion_tokens"
                | "max_output_tokens"
                | "max_tokens_to_sample" => {
                    if let Some(cap) = map.next_value::<Option<u64>>()? {
                        // Several may be given; the largest is the worst case.
                        let old = request.max_output_tokens.unwrap_or(0);
                        request.max_output_tokens = Some(old.max(cap));
                    }
                }
                "n" | "best_of" => {
                    if let Some(n) = map.next_value::<Option<u64>>()? {
                        request.choices = request.choices.max(n);
                    }
                }
                "thinking" => {
                    thinking = map
                        .next_value::<Option<Thinking>>()?
                        .and_then(|t| t.budget_tokens);
                }
                "reasoning" => {
                    let reasoning = map.next_value::<Option<Reasoning>>()?;
                    request.reasoning |= reasoning.and_then(|r| r.effort).is_some();
                }
                "reasoning_effort" => {
                    request.reasoning |= map.next_value::<Option<String>>()?.is_some();
                }
                "background" => {
                    request.background = map.next_value::<Option<bool>>()?.unwrap_or(false);
                }
                "generationConfig" | "generation_config" => {
                    if let Some(config) = map.next_value::<Option<GenerationConfig>>()? {
                        gemini_cap = config.max_output_tokens;
                        if let Some(n) = config.candidate_count {
                            request.choices = request.choices.max(n);
                        }
                        match config.thinking_config.and_then(|t| t.thinking_budget) {
                            // Thinking tokens come on top of maxOutputTokens;
                            // without a cap, the reasoning allowance covers
                            // them (see `usage::request`).
                            Some(budget) if budget > 0 => {
                                let budget = budget.unsigned_abs();
                                match &mut gemini_cap {
                                    Some(cap) => *cap = cap.saturating_add(budget),
                                    None => request.reasoning = true,
                                }
                            }
                            Some(budget) if budget < 0 => request.reasoning = true,
                            _ => {}
                        }
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let request = &mut *self.request;
        if let Some(cap) = gemini_cap {
            request.max_output_tokens = Some(request.max_output_tokens.unwrap_or(0).max(cap));
        }
        if let Some(budget) = thinking {
            // Anthropic: max_tokens bounds thinking too, except with
            // interleaved thinking, where the budget may exceed it.
            request.max_output_tokens = Some(request.max_output_tokens.unwrap_or(0).max(budget));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
