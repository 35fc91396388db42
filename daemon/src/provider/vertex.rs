//! Google Vertex AI (`<region>-aiplatform.googleapis.com`, and the global
//! `aiplatform.googleapis.com`): Gemini's generateContent and
//! streamGenerateContent, and Anthropic on Vertex (rawPredict,
//! streamRawPredict), under
//! `/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{model}:{method}`.
//!
//! - **Credentials.** A Google OAuth access token in `Authorization:
//!   Bearer` (from a service-account key, the metadata server or workload
//!   identity federation: `credentials::gcp`). An agent's placeholder
//!   Bearer, an `x-goog-api-key` and a `?key=` (express mode's API keys)
//!   are all stripped.
//! - **Errors** are Google's `{"error":{"code","message","status"}}`, as
//!   Gemini's.
//! - **The parse** is the shared strict one (`request`: canonical path,
//!   duplicate keys refused). Project, location and model come from the
//!   canonical path (the segments after `projects`, `locations` and
//!   `models`, at exactly those places, the model up to its `:method`), so
//!   policy decides on what Vertex routes. Batch prediction, tuning and
//!   long-running jobs are work no response meters (`Unmetered`). The Anthropic
//!   count-tokens endpoint (`models/count-tokens:rawPredict`) and the
//!   OpenAI-compatible `endpoints/openapi/chat/completions` name the model
//!   in the body instead.
//! - **Usage** comes in the publisher's format: Gemini's `usageMetadata`
//!   (repeated cumulatively, a JSON array for streamGenerateContent without
//!   `alt=sse`) or Anthropic's `usage` in `message_start`/`message_delta`.
//!   One format reads both: the fields do not overlap.

use http::{HeaderMap, StatusCode};

use super::{
    AgentHeaders, AmbiguousRequest, Api, AuthSettings, Request, RequestHead, SpliceError,
    Unmetered, Usage, UsageFields, UsageFormat, bearer, gemini, request::json_request,
    usage::or_zero,
};
use crate::secret::Secret;

pub struct Vertex;

impl Api for Vertex {
    fn credential_headers(&self) -> &'static [&'static str] {
        &["authorization", "x-goog-api-key"]
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
        headers.insert(http::header::AUTHORIZATION, bearer(credential)?);
        Ok(())
    }

    fn error_body(&self, status: StatusCode, kind: &str, message: &str) -> serde_json::Value {
        gemini::Gemini.error_body(status, kind, message)
    }

    fn parse(
        &self,
        head: &RequestHead<'_>,
        body_prefix: &[u8],
    ) -> Result<Request, AmbiguousRequest> {
        // The path is canonical (decoded; no dot segments, encoded
        // separators or empty segments), so what it names is what Vertex
        // routes.
        let mut request = json_request(head, body_prefix)?;
        let path = PathParts::of(&request.path);
        request.project = path.project.map(str::to_owned);
        request.location = path.location.map(str::to_owned);
        // count-tokens names the model in the body.
        if let Some(model) = path.model.filter(|m| *m != "count-tokens") {
            request.model = Some(model.to_owned());
        }
        request.stream |= matches!(
            path.method,
            Some("streamGenerateContent" | "streamRawPredict")
        );
        Ok(request)
    }

    fn unmetered(&self, request: &Request) -> Option<Unmetered> {
        if request.method != http::Method::POST {
            return None;
        }
        let segments: Vec<&str> = request.path.trim_end_matches('/').split('/').collect();
        match segments.as_slice() {
            // Jobs that run after this request returns.
            ["", _, "projects", _, "locations", _, "batchPredictionJobs"] => Some(Unmetered::Batch),
            ["", _, "projects", _, "locations", _, "tuningJobs"] => Some(Unmetered::FineTuning),
            _ if request.path_method() == Some("predictLongRunning") => {
                Some(Unmetered::LongRunning)
            }
            _ => None,
        }
    }

    fn usage(&self) -> &'static UsageFormat {
        &USAGE
    }
}

/// What a Vertex path names.
#[derive(Debug, Default, PartialEq, Eq)]
struct PathParts<'a> {
    project: Option<&'a str>,
    location: Option<&'a str>,
    model: Option<&'a str>,
    /// The `:method` of the last segment.
    method: Option<&'a str>,
}

impl<'a> PathParts<'a> {
    /// Reads `/{version}/projects/{project}/locations/{location}/...` and,
    /// below it, `publishers/{publisher}/models/{model}:{method}` at exactly
    /// those places: a segment named `models` elsewhere names nothing, so
    /// policy never reads a model the route does not use.
    fn of(path: &'a str) -> PathParts<'a> {
        let segments: Vec<&str> = path.split('/').collect();
        let method = segments
            .last()
            .and_then(|last| last.split_once(':'))
            .map(|(_, method)| method);
        let mut parts = PathParts {
            method,
            ..PathParts::default()
        };
        let non_empty = |s: &&'a str| !s.is_empty();
        if let [
            "",
            _version,
            "projects",
            project,
            "locations",
            location,
            rest @ ..,
        ] = segments.as_slice()
        {
            parts.project = Some(*project).filter(non_empty);
            parts.location = Some(*location).filter(non_empty);
            if let ["publishers", publisher, "models", model] = rest
                && !publisher.is_empty()
            {
                parts.model = model.split(':').next().filter(non_empty);
            }
        }
        parts
    }
}

static USAGE: UsageFormat = UsageFormat {
    usage: tokens,
    final_count: |kind| kind == Some("message_delta"),
    // Anthropic streams need every event with usage (message_start has the
    // input, message_delta the output); Gemini's repeated counts merge.
    last_event_only: false,
    json_array_stream: |path| path.contains(":streamGenerateContent"),
    header_usage: None,
};

/// Anthropic's counts (input includes cache reads and writes); OpenAI's for
/// the OpenAI-compatible endpoint. Gemini's `usageMetadata` is read by the
/// meter whatever the provider.
fn tokens(fields: &UsageFields) -> Usage {
    Usage {
        input_tokens: or_zero(fields.input_tokens.or(fields.prompt_tokens))
            .saturating_add(or_zero(fields.cache_creation_input_tokens))
            .saturating_add(or_zero(fields.cache_read_input_tokens)),
        cached_input_tokens: or_zero(fields.cache_read_input_tokens),
        output_tokens: or_zero(fields.output_tokens.or(fields.completion_tokens)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_location_and_model_come_from_the_path() {
        let gemini = PathParts::of(
            "/v1/projects/my-proj/locations/us-central1/publishers/google/models/gemini-2.5-flash:streamGenerateContent",
        );
        assert_eq!(
            gemini,
            PathParts {
                project: Some("my-proj"),
                location: Some("us-central1"),
                model: Some("gemini-2.5-flash"),
                method: Some("streamGenerateContent"),
            }
        );
        let claude = PathParts::of(
            "/v1/projects/p/locations/global/publishers/anthropic/models/claude-sonnet-4@20250514:rawPredict",
        );
        assert_eq!(claude.model, Some("claude-sonnet-4@20250514"));
        assert_eq!(claude.location, Some("global"));
        let openapi =
            PathParts::of("/v1/projects/p/locations/l/endpoints/openapi/chat/completions");
        assert_eq!((openapi.project, openapi.model), (Some("p"), None));
    }
}
