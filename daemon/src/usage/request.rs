//! The worst case a request may use, from the first bytes of its body.
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

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

use super::meter::Usage;

/// What a request body says about its size.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestShape {
    pub model: Option<String>,
    /// The output cap the request sets, if any.
    pub max_output_tokens: Option<u64>,
    /// Choices (`n`, `candidateCount`); 1 when absent.
    pub choices: u64,
}

/// Reads the top-level fields of a JSON body prefix. A prefix cut off
/// mid-document still yields the fields that came before the cut.
pub fn request_shape(body_prefix: &[u8]) -> RequestShape {
    let mut shape = RequestShape {
        choices: 1,
        ..RequestShape::default()
    };
    let mut de = serde_json::Deserializer::from_slice(body_prefix);
    // An error is a cut-off or non-JSON body: keep what was read.
    let _ = (&mut de).deserialize_map(ShapeVisitor { shape: &mut shape });
    shape
}

struct ShapeVisitor<'a> {
    shape: &'a mut RequestShape,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    max_output_tokens: Option<u64>,
    candidate_count: Option<u64>,
}

impl<'de> Visitor<'de> for ShapeVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "model" => self.shape.model = map.next_value::<Option<String>>()?,
                "max_tokens" | "max_completion_tokens" | "max_output_tokens" => {
                    if let Some(cap) = map.next_value::<Option<u64>>()? {
                        // Both may be given; the larger is the worst case.
                        let old = self.shape.max_output_tokens.unwrap_or(0);
                        self.shape.max_output_tokens = Some(old.max(cap));
                    }
                }
                "n" => {
                    if let Some(n) = map.next_value::<Option<u64>>()? {
                        self.shape.choices = n.max(1);
                    }
                }
                "generationConfig" | "generation_config" => {
                    if let Some(config) = map.next_value::<Option<GenerationConfig>>()? {
                        if let Some(cap) = config.max_output_tokens {
                            self.shape.max_output_tokens = Some(cap);
                        }
                        if let Some(n) = config.candidate_count {
                            self.shape.choices = n.max(1);
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

/// Whether `path` is an embedding call (no output tokens).
pub fn is_embedding(path: &str) -> bool {
    path.ends_with("/embeddings")
        || path.contains(":embedContent")
        || path.contains(":batchEmbedContents")
}

/// The reservation for a request: see the module comment.
pub fn worst_case(
    shape: &RequestShape,
    path: &str,
    body_len: u64,
    input_bytes_per_token: u64,
    default_max_output_tokens: u64,
) -> Usage {
    let output = if is_embedding(path) {
        0
    } else {
        shape
            .max_output_tokens
            .unwrap_or(default_max_output_tokens)
            .saturating_mul(shape.choices.max(1))
    };
    Usage {
        input_tokens: body_len.div_ceil(input_bytes_per_token.max(1)),
        cached_input_tokens: 0,
        output_tokens: output,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn caps_of_every_provider_are_read_even_from_a_cut_off_prefix() {
        let openai = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":300,"n":2,"stream":true,"stream_options":{"include_usage":true}}"#;
        let shape = request_shape(openai);
        assert_eq!(shape.model.as_deref(), Some("gpt-4o"));
        assert_eq!(shape.max_output_tokens, Some(300));
        assert_eq!(shape.choices, 2);
        let anthropic = br#"{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"a very long"#;
        assert_eq!(request_shape(anthropic).max_output_tokens, Some(1024));
        let responses = br#"{"model":"gpt-4.1","input":"x","max_output_tokens":50}"#;
        assert_eq!(request_shape(responses).max_output_tokens, Some(50));
        let gemini = br#"{"contents":[{"parts":[{"text":"x"}]}],"generationConfig":{"maxOutputTokens":64,"candidateCount":3}}"#;
        let shape = request_shape(gemini);
        assert_eq!((shape.max_output_tokens, shape.choices), (Some(64), 3));
        assert_eq!(request_shape(b"not json").max_output_tokens, None);
    }

    #[test]
    fn the_worst_case_uses_the_cap_or_the_default_and_none_for_embeddings() {
        let shape = request_shape(br#"{"model":"gpt-4o","max_tokens":100,"n":2}"#);
        let w = worst_case(&shape, "/v1/chat/completions", 4001, 4, 4096);
        assert_eq!((w.input_tokens, w.output_tokens), (1001, 200));
        let none = request_shape(br#"{"model":"gpt-4o"}"#);
        assert_eq!(
            worst_case(&none, "/v1/chat/completions", 8, 4, 4096).output_tokens,
            4096
        );
        assert_eq!(
            worst_case(&none, "/v1/embeddings", 8, 4, 4096).output_tokens,
            0
        );
    }
}
