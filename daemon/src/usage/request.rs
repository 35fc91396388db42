//! The worst case a request may use, from the provider's parse of its first
//! bytes (`provider::Request`).
//!
//! Output: the request's own cap (`max_tokens` for OpenAI chat and
//! completions and Anthropic messages, `max_completion_tokens`,
//! `max_output_tokens` for the responses API,
//! `generationConfig.maxOutputTokens` for Gemini), times the number of
//! choices asked for (`n`, `generationConfig.candidateCount`); without a cap,
//! `[usage] default_max_output_tokens`. Embedding requests produce none.
//!
//! Input: estimated from the body length (Content-Length, else what was
//! read) at `[usage] input_bytes_per_token` bytes per token. This is an
//! estimate, not a bound: JSON syntax and base64 images make it high,
//! dense non-English text can make it low. The actual count replaces it
//! when the response ends.

use super::meter::Usage;
use crate::provider::Request;

/// The reservation for a request: see the module comment.
pub fn worst_case(
    request: &Request,
    input_bytes_per_token: u64,
    default_max_output_tokens: u64,
) -> Usage {
    let output = if request.is_embedding() {
        0
    } else {
        request
            .max_output_tokens
            .unwrap_or(default_max_output_tokens)
            .saturating_mul(request.choices.max(1))
    };
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
        let w = worst_case(&capped, 4, 4096);
        assert_eq!((w.input_tokens, w.output_tokens), (1001, 200));
        let none = request("/v1/chat/completions", br#"{"model":"gpt-4o"}"#, 8);
        assert_eq!(worst_case(&none, 4, 4096).output_tokens, 4096);
        let embedding = request("/v1/embeddings", br#"{"model":"gpt-4o"}"#, 8);
        assert_eq!(worst_case(&embedding, 4, 4096).output_tokens, 0);
    }
}
