//! Anthropic: `x-api-key` or `Authorization: Bearer` (current SDKs send
//! Bearer, older ones and curl examples x-api-key; OAuth and federated
//! tokens are taken only as Bearer); errors
//! `{"type":"error","error":{"type","message"}}`; the model in the JSON
//! body; usage in `message_start` and, with the final output count, in
//! `message_delta`, where `input_tokens` excludes cache reads and writes.

use http::{HeaderMap, HeaderName, StatusCode};

use super::{
    AgentHeaders, AnthropicAuth, Api, AuthSettings, Request, SpliceError, Unmetered, Usage,
    UsageFields, UsageFormat, bearer, raw, usage::or_zero,
};
use crate::secret::Secret;

pub struct Anthropic;

impl Api for Anthropic {
    fn credential_headers(&self) -> &'static [&'static str] {
        &["authorization", "x-api-key"]
    }

    fn inject(
        &self,
        headers: &mut HeaderMap,
        credential: &Secret,
        auth: &AuthSettings,
        agent: AgentHeaders,
    ) -> Result<(), SpliceError> {
        let agent_form = if agent.x_api_key {
            Some(AnthropicAuth::XApiKey)
        } else if agent.authorization {
            Some(AnthropicAuth::Bearer)
        } else {
            None
        };
        // OAuth access tokens (sk-ant-oat...) and federated tokens (JWTs,
        // from workload identity federation) are only accepted as Bearer.
        let token = credential.expose();
        let oauth = token.starts_with("sk-ant-oat") || token.starts_with("eyJ");
        // Otherwise the configured form, else the agent's, else x-api-key.
        let form = if oauth {
            AnthropicAuth::Bearer
        } else {
            auth.anthropic_auth
                .or(agent_form)
                .unwrap_or(AnthropicAuth::XApiKey)
        };
        match form {
            AnthropicAuth::Bearer => {
                headers.insert(http::header::AUTHORIZATION, bearer(credential)?);
            }
            AnthropicAuth::XApiKey => {
                headers.insert(HeaderName::from_static("x-api-key"), raw(credential)?);
            }
        }
        Ok(())
    }

    fn error_body(&self, _: StatusCode, kind: &str, message: &str) -> serde_json::Value {
        serde_json::json!({
            "type": "error",
            "error": { "type": kind, "message": message }
        })
    }

    fn usage(&self) -> &'static UsageFormat {
        &USAGE
    }

    fn unmetered(&self, request: &Request) -> Option<Unmetered> {
        // Message Batches: results come back a day later.
        (request.path.trim_end_matches('/') == "/v1/messages/batches").then_some(Unmetered::Batch)
    }
}

static USAGE: UsageFormat = UsageFormat {
    usage: tokens,
    final_count: |kind| kind == Some("message_delta"),
    last_event_only: false,
    json_array_stream: |_| false,
    header_usage: None,
};

fn tokens(fields: &UsageFields) -> Usage {
    Usage {
        input_tokens: or_zero(fields.input_tokens)
            .saturating_add(or_zero(fields.cache_creation_input_tokens))
            .saturating_add(or_zero(fields.cache_read_input_tokens)),
        cached_input_tokens: or_zero(fields.cache_read_input_tokens),
        output_tokens: or_zero(fields.output_tokens),
    }
}
