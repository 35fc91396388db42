//! The worst case a request may use, from the provider's parse of its first
//! bytes (`provider::Request`).
//!
//! Output: the request's own cap (`max_tokens` for OpenAI chat and
//! completions and Anthropic messages, `max_completion_tokens`,
//! `max_output_tokens` for the responses API,
//! `generationConfig.maxOutputTokens` for Gemini, raised to Anthropic's
//! `thinking.budget_tokens` and by Gemini's `thinkingBudget`), times the
//! number of choices asked for (`n`, `best_of`,
//! `generationConfig.candidateCount`). Providers enforce the cap, so with
//! one the output reservation is a bound. Without one it is a guess:
//! `[usage] default_max_output_tokens`, plus
//! `[usage] reasoning_output_tokens` when the request asks for reasoning
//! (`reasoning.effort`, `reasoning_effort`, a dynamic thinking budget).
//! Embedding requests produce none.
//!
//! Input: estimated from the body length (Content-Length, else what was
//! read) at `[usage] input_bytes_per_token` bytes per token. This is an
//! estimate, not a bound: JSON syntax and base64 images make it high,
//! dense non-English text can make it low. The actual count replaces it
//! when the response ends.

use super::meter::Usage;
use crate::config::UsageConfig;
use crate::provider::Request;

/// The reservation for a request: see the module comment.
pub fn worst_case(request: &Request, settings: &UsageConfig) -> Usage {
    let output = if request.is_embedding() {
        0
    } else {
        let uncapped = if request.reasoning {
            // Reasoning without a cap can run far past an answer's length.
            settings
                .default_max_output_tokens
                .saturating_add(settings.reasoning_output_tokens)
        } else {
            settings.default_max_output_tokens
        };
        request
            .max_output_tokens
            .unwrap_or(uncapped)
            .saturating_mul(request.choices.max(1))
    };
    let input_bytes_per_token = settings.input_bytes_per_token;
    Usage {
        input_tokens: request.body_len.div_ceil(input_bytes_per_token.max(1)),
        cached_input_tokens: 0,
        output_tokens: output,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::provider::{RequestHead, Scheme, api};

    fn request(path: &str, body: &[u8], content_length: u64) -> Request {
        let uri: http::Uri = path.parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, content_length.into());
        let head = RequestHead {
            method: &http::Method::POST,
            uri: &uri,
            headers: &headers,
        };
        api(Scheme::OpenAi).parse(&head, body).unwrap()
    }

    #[test]
    fn the_worst_case_uses_the_cap_or_the_default_and_none_for_embeddings() {
        let capped = request(
            "/v1/chat/completions",
            br#"{"model":"gpt-4o","max_tokens":100,"n":2}"#,
            4001,
        );
        let settings = UsageConfig::default();
        let w = worst_case(&capped, &settings);
        assert_eq!((w.input_tokens, w.output_tokens), (1001, 200));
        let none = request("/v1/chat/completions", br#"{"model":"gpt-4o"}"#, 8);
        assert_eq!(worst_case(&none, &settings).output_tokens, 4096);
        let embedding = request("/v1/embeddings", br#"{"model":"gpt-4o"}"#, 8);
        assert_eq!(worst_case(&embedding, &settings).output_tokens, 0);
    }

    #[test]
    fn the_worst_case_covers_thinking_reasoning_and_every_choice() {
        let settings = UsageConfig::default();
        let thinking = request(
            "/v1/messages",
            br#"{"model":"claude-opus-4","max_tokens":2048,"thinking":{"type":"enabled","budget_tokens":30000}}"#,
            100,
        );
        assert_eq!(worst_case(&thinking, &settings).output_tokens, 30000);
        let responses = request(
            "/v1/responses",
            br#"{"model":"o3","input":"x","max_output_tokens":9000}"#,
            100,
        );
        assert_eq!(worst_case(&responses, &settings).output_tokens, 9000);
        let effort = request(
            "/v1/chat/completions",
            br#"{"model":"o3","reasoning_effort":"high","n":2}"#,
            100,
        );
        assert_eq!(
            worst_case(&effort, &settings).output_tokens,
            2 * (settings.default_max_output_tokens + settings.reasoning_output_tokens)
        );
        let best_of = request(
            "/v1/completions",
            br#"{"model":"m","max_tokens":10,"n":1,"best_of":20}"#,
            100,
        );
        assert_eq!(worst_case(&best_of, &settings).output_tokens, 200);
    }
}
