//! Gemini: `x-goog-api-key` (it also takes OAuth Bearer tokens, and `?key=`
//! in the query: both stripped); errors `{"error":{"code","message",
//! "status"}}` with google.rpc code names; the model in the path,
//! `/v1beta/models/{model}:generateContent`; usage in `usageMetadata`,
//! repeated cumulatively in every chunk of a stream, and
//! `:streamGenerateContent` without `alt=sse` streams a JSON array.

use http::{HeaderMap, HeaderName, StatusCode};

use super::{
    AgentHeaders, AmbiguousRequest, Api, AuthSettings, Request, RequestHead, SpliceError,
    Unmetered, Usage, UsageFormat, UsageMetadata, openai, raw, request::json_request,
    usage::or_zero,
};
use crate::secret::Secret;

pub struct Gemini;

impl Api for Gemini {
    fn credential_headers(&self) -> &'static [&'static str] {
        &["x-goog-api-key", "authorization"]
    }

    fn credential_query(&self) -> &'static [&'static str] {
        &["key"]
    }

    fn inject(
        &self,
        headers: &mut HeaderMap,
        credential: &Secret,
        _: &AuthSettings,
        _: AgentHeaders,
    ) -> Result<(), SpliceError> {
        headers.insert(HeaderName::from_static("x-goog-api-key"), raw(credential)?);
        Ok(())
    }

    fn error_body(&self, status: StatusCode, _: &str, message: &str) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "code": status.as_u16(),
                "message": message,
                "status": rpc_status(status),
            }
        })
    }

    fn parse(
        &self,
        head: &RequestHead<'_>,
        body_prefix: &[u8],
    ) -> Result<Request, AmbiguousRequest> {
        let mut request = json_request(head, body_prefix)?;
        // The path is canonical (no dot segments, no encoded separators),
        // so the model it names is the one Gemini routes to. A body that
        // names another (`"model": "models/..."`) leaves it to the server
        // which of the two wins: refused. Paths without a model
        // (cachedContents, the OpenAI-compatible endpoint) keep the body's.
        if let Some(model) = path_model(&request.path) {
            if let Some(body) = request.model.take()
                && body.strip_prefix("models/").unwrap_or(&body) != model
            {
                return Err(AmbiguousRequest::ConflictingModel { path: model, body });
            }
            request.model = Some(model);
        }
        request.stream |= request.path_method() == Some("streamGenerateContent");
        if request.upgrade && is_live(&request.path) {
            // A Live session is metered message by message.
            request.unmetered = None;
        }
        Ok(request)
    }

    fn session_usage(&self, message: &[u8]) -> Option<Usage> {
        // Each server message may carry the usage of the turn it ends
        // (read as a turn's, never as a running total: summing errs toward
        // charging more).
        memchr::memmem::find(message, b"usageMetadata")?;
        #[derive(serde::Deserialize)]
        struct Message {
            #[serde(rename = "usageMetadata")]
            usage_metadata: Option<UsageMetadata>,
        }
        let message: Message = serde_json::from_slice(message).ok()?;
        message.usage_metadata.map(|u| u.tokens())
    }

    fn session_turn_started(&self, message: &[u8]) -> bool {
        // The model's content for a turn, before the usageMetadata that
        // ends it.
        if memchr::memmem::find(message, b"serverContent").is_none() {
            return false;
        }
        #[derive(serde::Deserialize)]
        struct Message {
            #[serde(rename = "serverContent")]
            server_content: Option<serde::de::IgnoredAny>,
            #[serde(rename = "usageMetadata")]
            usage_metadata: Option<serde::de::IgnoredAny>,
        }
        serde_json::from_slice::<Message>(message)
            .is_ok_and(|m| m.server_content.is_some() && m.usage_metadata.is_none())
    }

    fn unmetered(&self, request: &Request) -> Option<Unmetered> {
        let path = request.path.as_str();
        match request.path_method() {
            Some("batchGenerateContent" | "asyncBatchEmbedContent") => Some(Unmetered::Batch),
            Some("predictLongRunning") => Some(Unmetered::LongRunning),
            _ if path.ends_with("/tunedModels") => Some(Unmetered::FineTuning),
            // Ephemeral tokens for the Live API, used without warrant.
            _ if path.ends_with("/auth_tokens") => Some(Unmetered::Realtime),
            _ => None,
        }
    }

    fn usage(&self) -> &'static UsageFormat {
        &USAGE
    }
}

/// The Live API's WebSocket path
/// (`/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent`
/// and its v1alpha and constrained variants).
fn is_live(path: &str) -> bool {
    path.starts_with("/ws/google.ai.generativelanguage.")
        && path.contains(".GenerativeService.BidiGenerateContent")
}

/// `models/{model}` in the canonical path (`/v1beta/models/{model}:method`
/// and below), if there: the segment after the first `models` segment, up
/// to its `:method`.
fn path_model(path: &str) -> Option<String> {
    let mut segments = path.split('/').skip_while(|s| *s != "models");
    segments.next()?;
    let segment = segments.next()?;
    let name = segment.split(':').next()?;
    (!name.is_empty()).then(|| name.to_owned())
}

static USAGE: UsageFormat = UsageFormat {
    // Gemini's counts are in usageMetadata; a `usage` object, if a gateway
    // sends one, is read the OpenAI way.
    usage: |fields| (openai::USAGE.usage)(fields),
    final_count: |_| false,
    last_event_only: true,
    json_array_stream: |path| path.contains(":streamGenerateContent"),
    header_usage: None,
};

impl UsageMetadata {
    /// The counts, as billed: tool-use prompts are input, thinking tokens
    /// are output (they are not in `candidatesTokenCount`).
    pub fn tokens(&self) -> Usage {
        Usage {
            input_tokens: or_zero(self.prompt_token_count)
                .saturating_add(or_zero(self.tool_use_prompt_token_count)),
            cached_input_tokens: or_zero(self.cached_content_token_count),
            output_tokens: or_zero(self.candidates_token_count)
                .saturating_add(or_zero(self.response_token_count))
                .saturating_add(or_zero(self.thoughts_token_count)),
        }
    }
}

/// google.rpc.Code names, as Gemini puts them in `error.status`.
fn rpc_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_model_comes_from_the_path() {
        assert_eq!(
            path_model("/v1beta/models/gemini-2.0-flash:generateContent").as_deref(),
            Some("gemini-2.0-flash")
        );
        assert_eq!(
            path_model("/v1beta/models/gemini-1.5-pro:streamGenerateContent").as_deref(),
            Some("gemini-1.5-pro")
        );
        assert_eq!(path_model("/v1beta/files"), None);
        assert_eq!(path_model("/v1beta/tunedModels/t:generateContent"), None);
        assert_eq!(
            path_model("/v1/models/gemini-2.5-pro").as_deref(),
            Some("gemini-2.5-pro")
        );
    }

    #[test]
    fn a_body_naming_another_model_than_the_path_is_refused() {
        let parse = |path: &str, body: &[u8]| {
            let uri: http::Uri = path.parse().unwrap();
            let headers = HeaderMap::new();
            let head = RequestHead {
                method: &http::Method::POST,
                uri: &uri,
                headers: &headers,
            };
            Gemini.parse(&head, body)
        };
        let path = "/v1beta/models/gemini-1.5-flash:generateContent";
        let error = parse(path, br#"{"model":"models/gemini-ultra","contents":[]}"#).unwrap_err();
        assert!(
            matches!(error, AmbiguousRequest::ConflictingModel { .. }),
            "{error}"
        );
        // The same model, with or without its prefix, is no conflict.
        for body in [
            &br#"{"model":"models/gemini-1.5-flash"}"#[..],
            br#"{"model":"gemini-1.5-flash"}"#,
        ] {
            let request = parse(path, body).unwrap();
            assert_eq!(request.model.as_deref(), Some("gemini-1.5-flash"));
        }
        // A path without a model keeps the body's.
        let cached = parse(
            "/v1beta/cachedContents",
            br#"{"model":"models/gemini-1.5-flash-001"}"#,
        )
        .unwrap();
        assert_eq!(cached.model.as_deref(), Some("models/gemini-1.5-flash-001"));
    }
}
