//! The one parse of a request: what policy decides on, what budgets reserve
//! for and what the audit line records, read once per request by the
//! upstream's provider.
//!
//! The injector may hand over only the first bytes of a large body (see
//! `proxy::gate`), so the body is read with serde_json's streaming
//! deserializer: a prefix cut off mid-document still yields the top-level
//! fields that came before the cut. Only top-level fields count (a "model"
//! inside "metadata" is not the request's model). The first "model" wins.
//!
//! Each provider's `parse` returns `Result<Request, AmbiguousRequest>`: a
//! request the parse cannot read one way only is to be refused rather than
//! guessed at. Today's parse is lenient and never refuses; a stricter one
//! (duplicate keys, dot segments, encodings) returns the error without
//! changing a caller.

use std::fmt;

use http::{HeaderMap, Method, Uri, header};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

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
    /// Without the query.
    pub path: String,
    /// The query, less any parameter that carries a credential.
    pub query: Option<String>,
    /// The model asked for: the body's top-level "model" (Gemini and
    /// Vertex: the path's `models/{model}`; Bedrock: `/model/{modelId}`;
    /// Azure: the deployment).
    pub model: Option<String>,
    /// The cloud project the request runs in (Vertex: `projects/{project}`).
    pub project: Option<String>,
    /// Where it runs (Vertex: `locations/{location}`).
    pub location: Option<String>,
    /// The response is to be streamed ("stream": true; Gemini's
    /// `:streamGenerateContent`).
    pub stream: bool,
    /// The output cap the request sets (`max_tokens`,
    /// `max_completion_tokens`, `max_output_tokens`,
    /// `generationConfig.maxOutputTokens`; the largest when several).
    pub max_output_tokens: Option<u64>,
    /// Choices asked for (`n`, `generationConfig.candidateCount`); 1 when absent.
    pub choices: u64,
    /// The body's length: Content-Length, else the bytes read.
    pub body_len: u64,
}

/// A request that cannot be read one way only: refused, never guessed at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmbiguousRequest {
    #[error("the request body names {field:?} more than once")]
    DuplicateField { field: &'static str },
    #[error("the model in the request path ({segment:?}) is ambiguous: it has {why}")]
    ModelPath { segment: String, why: &'static str },
}

impl Request {
    /// Whether this is an embedding call (no output tokens).
    pub fn is_embedding(&self) -> bool {
        let path = &self.path;
        path.ends_with("/embeddings")
            || path.contains(":embedContent")
            || path.contains(":batchEmbedContents")
    }
}

/// The JSON-body parse shared by the providers that take one (all today).
pub(super) fn json_request(head: &RequestHead<'_>, body_prefix: &[u8]) -> Request {
    let mut request = Request {
        method: head.method.clone(),
        path: head.uri.path().to_owned(),
        query: head.uri.query().map(str::to_owned),
        model: None,
        project: None,
        location: None,
        stream: false,
        max_output_tokens: None,
        choices: 1,
        body_len: head
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(body_prefix.len() as u64),
    };
    let mut de = serde_json::Deserializer::from_slice(body_prefix);
    let mut fields = BodyFields {
        request: &mut request,
        model_seen: false,
    };
    // An error is a cut-off or non-JSON body: keep what was read.
    let _ = (&mut de).deserialize_map(&mut fields);
    request
}

struct BodyFields<'a> {
    request: &'a mut Request,
    model_seen: bool,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    max_output_tokens: Option<u64>,
    candidate_count: Option<u64>,
}

/// A value read only when it has the expected type; anything else is
/// skipped rather than ending the parse.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Typed<T> {
    Expected(T),
    Other(IgnoredAny),
}

impl<T> Typed<T> {
    fn value(self) -> Option<T> {
        match self {
            Typed::Expected(v) => Some(v),
            Typed::Other(_) => None,
        }
    }
}

impl<'de> Visitor<'de> for &mut BodyFields<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let request = &mut *self.request;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "model" if !self.model_seen => {
                    self.model_seen = true;
                    request.model = map.next_value::<Typed<String>>()?.value();
                }
                "stream" => {
                    request.stream = map.next_value::<Typed<bool>>()?.value().unwrap_or(false);
                }
                "max_tokens" | "max_completion_tokens" | "max_output_tokens" => {
                    if let Some(cap) = map.next_value::<Option<u64>>()? {
                        // Both may be given; the larger is the worst case.
                        let old = request.max_output_tokens.unwrap_or(0);
                        request.max_output_tokens = Some(old.max(cap));
                    }
                }
                "n" => {
                    if let Some(n) = map.next_value::<Option<u64>>()? {
                        request.choices = n.max(1);
                    }
                }
                "generationConfig" | "generation_config" => {
                    if let Some(config) = map.next_value::<Option<GenerationConfig>>()? {
                        if let Some(cap) = config.max_output_tokens {
                            request.max_output_tokens = Some(cap);
                        }
                        if let Some(n) = config.candidate_count {
                            request.choices = n.max(1);
                        }
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(path: &str, body: &[u8]) -> Request {
        let uri: Uri = path.parse().unwrap();
        let headers = HeaderMap::new();
        let head = RequestHead {
            method: &Method::POST,
            uri: &uri,
            headers: &headers,
        };
        json_request(&head, body)
    }

    #[test]
    fn the_model_is_the_first_top_level_one_even_in_a_cut_off_body() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"model\""}],"model":"gpt-4o-mini","stream":true}"#;
        let request = parse("/v1/chat/completions", body);
        assert_eq!(request.model.as_deref(), Some("gpt-4o-mini"));
        assert!(request.stream);
        let cut = br#"{"model":"claude-sonnet-4","max_tokens":1024,"messages":[{"role":"user","content":"a very long"#;
        let request = parse("/v1/messages", cut);
        assert_eq!(request.model.as_deref(), Some("claude-sonnet-4"));
        assert_eq!(request.max_output_tokens, Some(1024));
        let nested = br#"{"metadata":{"model":"gpt-4o"},"input":"x"}"#;
        assert_eq!(parse("/v1/responses", nested).model, None);
        let first = br#"{"model":"a","model":"b"}"#;
        assert_eq!(parse("/v1/x", first).model.as_deref(), Some("a"));
    }

    #[test]
    fn no_model_for_non_json_or_non_string() {
        assert_eq!(parse("/v1/files", b"--boundary\r\n").model, None);
        assert_eq!(parse("/v1/x", br#"{"model":42}"#).model, None);
        assert_eq!(parse("/v1/x", b"").model, None);
    }

    #[test]
    fn caps_and_choices_of_every_provider_are_read() {
        let openai = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":300,"n":2,"stream":true,"stream_options":{"include_usage":true}}"#;
        let request = parse("/v1/chat/completions", openai);
        assert_eq!(request.max_output_tokens, Some(300));
        assert_eq!(request.choices, 2);
        let responses = br#"{"model":"gpt-4.1","input":"x","max_output_tokens":50}"#;
        assert_eq!(
            parse("/v1/responses", responses).max_output_tokens,
            Some(50)
        );
        let gemini = br#"{"contents":[{"parts":[{"text":"x"}]}],"generationConfig":{"maxOutputTokens":64,"candidateCount":3}}"#;
        let request = parse("/v1beta/models/m:generateContent", gemini);
        assert_eq!((request.max_output_tokens, request.choices), (Some(64), 3));
        assert_eq!(parse("/v1/x", b"not json").max_output_tokens, None);
    }

    #[test]
    fn the_body_length_is_content_length_else_what_was_read() {
        assert_eq!(parse("/v1/x", b"{}").body_len, 2);
        let uri: Uri = "/v1/x".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, 4001.into());
        let head = RequestHead {
            method: &Method::POST,
            uri: &uri,
            headers: &headers,
        };
        assert_eq!(json_request(&head, b"{}").body_len, 4001);
    }
}
