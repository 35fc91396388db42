//! OpenAI (and Azure OpenAI's header): `Authorization: Bearer`; errors
//! `{"error":{"message","type","code"}}`; the model in the JSON body; usage
//! as `prompt_tokens`/`completion_tokens` (chat, completions, embeddings)
//! or `input_tokens`/`output_tokens` (responses API), sent once, at the end
//! (a stream reports it only with `stream_options.include_usage`).

use http::{HeaderMap, StatusCode};

use super::{
    AgentHeaders, Api, AuthSettings, Request, SpliceError, Unmetered, Usage, UsageFields,
    UsageFormat, bearer, usage::or_zero,
};
use crate::secret::Secret;

pub struct OpenAi;

impl Api for OpenAi {
    fn credential_headers(&self) -> &'static [&'static str] {
        // `api-key` is Azure OpenAI's header; an agent could smuggle a key in it.
        &["authorization", "api-key"]
    }

    fn inject(
        &self,
        headers: &mut HeaderMap,
        credential: &Secret,
        _: &AuthSettings,
        _: AgentHeaders,
    ) -> Result<(), SpliceError> {
        headers.insert(http::header::AUTHORIZATION, bearer(credential)?);
        Ok(())
    }

    fn error_body(&self, status: StatusCode, kind: &str, message: &str) -> serde_json::Value {
        error_body(status, kind, message)
    }

    fn usage(&self) -> &'static UsageFormat {
        &USAGE
    }

    fn unmetered(&self, request: &Request) -> Option<Unmetered> {
        unmetered(&request.path)
    }

    fn usage_option(&self, request: &Request, body: &[u8]) -> Option<Vec<u8>> {
        usage_option(request, body)
    }

    fn parse(
        &self,
        head: &super::RequestHead<'_>,
        body_prefix: &[u8],
    ) -> Result<Request, super::AmbiguousRequest> {
        let mut request = super::request::json_request(head, body_prefix)?;
        if request.upgrade && request.path.trim_end_matches('/') == "/v1/realtime" {
            // A Realtime session: its model is the query's, and it is
            // metered message by message (`session_usage`).
            request.unmetered = None;
            request.model = match request.query.as_deref() {
                Some(query) => query_model(query)?,
                None => None,
            };
        }
        Ok(request)
    }

    fn session_usage(&self, message: &[u8]) -> Option<Usage> {
        session_usage(message)
    }

    fn session_turn_started(&self, message: &[u8]) -> bool {
        // `response.created` opens a response; its `response.done` (read by
        // `session_usage`) carries the usage.
        if memchr::memmem::find(message, b"response.created").is_none() {
            return false;
        }
        #[derive(serde::Deserialize)]
        struct Event {
            #[serde(rename = "type")]
            kind: String,
        }
        serde_json::from_slice::<Event>(message).is_ok_and(|e| e.kind == "response.created")
    }
}

/// The `model` query parameter (percent-decoded), as Realtime takes it.
/// Servers differ on a parameter given twice (first or last wins) and on
/// `;` as a separator, so either is refused rather than read one way.
fn query_model(query: &str) -> Result<Option<String>, super::AmbiguousRequest> {
    if query.contains(';') {
        return Err(super::AmbiguousRequest::Query {
            reason: "it has a ; (some servers split parameters on it)",
        });
    }
    let mut models = form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| name == "model")
        .map(|(_, value)| value.into_owned());
    let model = models.next();
    if models.next().is_some() {
        return Err(super::AmbiguousRequest::Query {
            reason: "it names model more than once",
        });
    }
    Ok(model)
}

/// Realtime's usage: each `response.done` event carries the usage of the
/// response it ends.
pub(super) fn session_usage(message: &[u8]) -> Option<Usage> {
    memchr::memmem::find(message, b"response.done")?;
    #[derive(serde::Deserialize)]
    struct Event {
        #[serde(rename = "type")]
        kind: String,
        response: Option<Response>,
    }
    #[derive(serde::Deserialize)]
    struct Response {
        usage: Option<UsageFields>,
    }
    let event: Event = serde_json::from_slice(message).ok()?;
    if event.kind != "response.done" {
        return None;
    }
    Some(tokens(&event.response?.usage?))
}

/// A chat or completions stream reports usage only when asked
/// (`stream_options.include_usage`): without it a stream could only be
/// charged as reserved. Returns the body with the option set, every other
/// value kept byte for byte (serde_json's RawValue), or None when the
/// request needs no change.
pub(super) fn usage_option(request: &Request, body: &[u8]) -> Option<Vec<u8>> {
    let path = request.path.trim_end_matches('/');
    let streams_chat = path.ends_with("/chat/completions") || path.ends_with("/v1/completions");
    if !request.stream || request.include_usage || !streams_chat {
        return None;
    }
    let fields: Vec<(String, &serde_json::value::RawValue)> =
        serde_json::from_slice::<OrderedObject<'_>>(body).ok()?.0;
    let mut out = Vec::with_capacity(body.len() + 40);
    out.push(b'{');
    let mut set = false;
    for (key, value) in &fields {
        if out.len() > 1 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key).ok()?;
        out.push(b':');
        if key == "stream_options" {
            // `{"include_usage": false}` or other options: kept, and the
            // one option set.
            let mut options: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(value.get()).unwrap_or_default();
            options.insert("include_usage".to_owned(), serde_json::Value::Bool(true));
            serde_json::to_writer(&mut out, &options).ok()?;
            set = true;
        } else {
            out.extend_from_slice(value.get().as_bytes());
        }
    }
    if !set {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
    }
    out.push(b'}');
    Some(out)
}

/// A JSON object's members in their order, values untouched. The parse
/// already refused duplicate keys, so order is all a map would lose.
struct OrderedObject<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for OrderedObject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Members<'a> {
            type Value = OrderedObject<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    members.push(entry);
                }
                Ok(OrderedObject(members))
            }
        }
        deserializer.deserialize_map(Members(std::marker::PhantomData))
    }
}

/// OpenAI's endpoints that start work no response of theirs meters (POST
/// only; reading a batch's status is metered as the request it is).
pub(super) fn unmetered(path: &str) -> Option<Unmetered> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        ["", "v1", "batches"] => Some(Unmetered::Batch),
        ["", "v1", "fine_tuning", "jobs"] | ["", "v1", "fine_tuning", "jobs", _, "resume"] => {
            Some(Unmetered::FineTuning)
        }
        ["", "v1", "threads", "runs"]
        | ["", "v1", "threads", _, "runs"]
        | ["", "v1", "threads", _, "runs", _, "submit_tool_outputs"] => Some(Unmetered::Assistants),
        ["", "v1", "evals", _, "runs"] => Some(Unmetered::Evals),
        ["", "v1", "videos"] | ["", "v1", "videos", _, "remix"] => Some(Unmetered::LongRunning),
        // Ephemeral keys and sessions for Realtime (WebRTC, SIP) and ChatKit:
        // the session then talks to OpenAI without warrant.
        ["", "v1", "realtime", ..] | ["", "v1", "chatkit", "sessions"] => Some(Unmetered::Realtime),
        _ => None,
    }
}

/// OpenAI's error shape (also the generic scheme's: most gateways speak it).
pub(super) fn error_body(status: StatusCode, kind: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "error": { "message": message, "type": kind, "code": format!("warrant_{}", status.as_u16()) }
    })
}

/// OpenAI's usage reporting (also the generic scheme's).
pub(super) static USAGE: UsageFormat = UsageFormat {
    usage: tokens,
    // Usage is sent once, at the end.
    final_count: |_| true,
    last_event_only: false,
    json_array_stream: |_| false,
    header_usage: None,
};

fn tokens(fields: &UsageFields) -> Usage {
    Usage {
        input_tokens: or_zero(fields.prompt_tokens.or(fields.input_tokens)),
        cached_input_tokens: or_zero(
            fields
                .prompt_tokens_details
                .as_ref()
                .or(fields.input_tokens_details.as_ref())
                .and_then(|d| d.cached_tokens),
        ),
        output_tokens: or_zero(fields.completion_tokens.or(fields.output_tokens)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::provider::{RequestHead, request::json_request};

    fn parsed(path: &str, body: &[u8]) -> Request {
        let uri: http::Uri = path.parse().unwrap();
        let headers = HeaderMap::new();
        let head = RequestHead {
            method: &http::Method::POST,
            uri: &uri,
            headers: &headers,
        };
        json_request(&head, body).unwrap()
    }

    #[test]
    fn a_stream_without_include_usage_is_asked_for_it_and_nothing_else_changes() {
        let body = br#"{"model":"gpt-4o","stream":true,"seed":12345678901234567890,"temperature":0.1000000000000000055511151231257827,"messages":[{"role":"user","content":"h\u00e9"}]}"#;
        let request = parsed("/v1/chat/completions", body);
        let out = usage_option(&request, body).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        // Values byte for byte, including numbers serde_json would round.
        assert!(text.contains("12345678901234567890"), "{text}");
        assert!(
            text.contains("0.1000000000000000055511151231257827"),
            "{text}"
        );
        assert!(text.contains(r#""h\u00e9""#), "{text}");
        let after = parsed("/v1/chat/completions", &out);
        assert!(after.include_usage && after.stream);
        assert_eq!(after.model.as_deref(), Some("gpt-4o"));
        // An explicit false is overridden, other options kept.
        let body = br#"{"stream":true,"stream_options":{"include_usage":false,"include_obfuscation":false}}"#;
        let out = usage_option(&parsed("/v1/chat/completions", body), body).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["stream_options"]["include_usage"], true);
        assert_eq!(value["stream_options"]["include_obfuscation"], false);
    }

    #[test]
    fn the_realtime_model_is_the_query_s_and_an_ambiguous_query_is_refused() {
        let session = |query: &str| {
            let uri: http::Uri = format!("/v1/realtime?{query}").parse().unwrap();
            let mut headers = HeaderMap::new();
            headers.insert("connection", "Upgrade".parse().unwrap());
            headers.insert("upgrade", "websocket".parse().unwrap());
            let head = RequestHead {
                method: &http::Method::GET,
                uri: &uri,
                headers: &headers,
            };
            crate::provider::Api::parse(&OpenAi, &head, b"")
        };
        let one = session("model=gpt-realtime%2Dmini").unwrap();
        assert_eq!(one.model.as_deref(), Some("gpt-realtime-mini"));
        assert_eq!(one.unmetered, None);
        for query in [
            "model=gpt-realtime-mini&model=gpt-realtime",
            "model=gpt-realtime-mini;model=gpt-realtime",
        ] {
            let error = session(query).unwrap_err();
            assert!(
                matches!(error, crate::provider::AmbiguousRequest::Query { .. }),
                "{query}: {error}"
            );
        }
    }

    #[test]
    fn only_chat_and_completions_streams_without_the_option_change() {
        let asked = br#"{"stream":true,"stream_options":{"include_usage":true}}"#;
        assert!(usage_option(&parsed("/v1/chat/completions", asked), asked).is_none());
        let not_stream = br#"{"stream":false}"#;
        assert!(usage_option(&parsed("/v1/chat/completions", not_stream), not_stream).is_none());
        let responses = br#"{"stream":true}"#;
        assert!(usage_option(&parsed("/v1/responses", responses), responses).is_none());
    }
}
