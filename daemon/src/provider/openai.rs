//! OpenAI (and Azure OpenAI's header): `Authorization: Bearer`; errors
//! `{"error":{"message","type","code"}}`; the model in the JSON body; usage
//! as `prompt_tokens`/`completion_tokens` (chat, completions, embeddings)
//! or `input_tokens`/`output_tokens` (responses API), sent once, at the end
//! (a stream reports it only with `stream_options.include_usage`).

use http::{HeaderMap, StatusCode};

use super::{
    AgentHeaders, Api, AuthSettings, SpliceError, Usage, UsageFields, UsageFormat, bearer,
    usage::or_zero,
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
