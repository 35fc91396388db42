//! How providers report token usage: the fields their usage objects have
//! and, per provider ([`UsageFormat`]), how to read them. The framing of a
//! response (event streams, JSON arrays, documents) is `usage::meter`'s.

use serde::{Deserialize, Serialize};

/// Tokens of one response. `input_tokens` includes the cached ones (and
/// Anthropic's cache writes); `output_tokens` includes reasoning/thinking.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Field by field, the larger: streams repeat cumulative counts (Gemini
    /// every chunk, Anthropic's `message_delta`), never per-chunk increments.
    pub fn merge_max(&mut self, other: Usage) {
        self.input_tokens = self.input_tokens.max(other.input_tokens);
        self.cached_input_tokens = self.cached_input_tokens.max(other.cached_input_tokens);
        self.output_tokens = self.output_tokens.max(other.output_tokens);
    }
}

/// A `usage` object, with the fields of every provider that uses the name;
/// serde skips the rest without allocating.
#[derive(Debug, Deserialize, Default)]
pub struct UsageFields {
    // OpenAI chat, completions, embeddings.
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub prompt_tokens_details: Option<CachedTokens>,
    // OpenAI responses; Anthropic.
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Realtime spells it `input_token_details`.
    #[serde(alias = "input_token_details")]
    pub input_tokens_details: Option<CachedTokens>,
    // Anthropic prompt caching.
    pub cache_creation_input_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
    // Bedrock Converse (camelCase; cache writes are input too).
    #[serde(rename = "inputTokens")]
    pub converse_input_tokens: Option<u64>,
    #[serde(rename = "outputTokens")]
    pub converse_output_tokens: Option<u64>,
    #[serde(rename = "cacheReadInputTokens")]
    pub converse_cache_read_input_tokens: Option<u64>,
    #[serde(rename = "cacheWriteInputTokens")]
    pub converse_cache_write_input_tokens: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
pub struct CachedTokens {
    pub cached_tokens: Option<u64>,
}

/// Gemini's `usageMetadata` object (read whichever upstream sends it).
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    pub prompt_token_count: Option<u64>,
    pub candidates_token_count: Option<u64>,
    /// The Live API's name for the output count.
    pub response_token_count: Option<u64>,
    pub cached_content_token_count: Option<u64>,
    pub thoughts_token_count: Option<u64>,
    pub tool_use_prompt_token_count: Option<u64>,
}

/// How one provider reports usage.
#[derive(Debug)]
pub struct UsageFormat {
    /// Reads a `usage` object.
    pub usage: fn(&UsageFields) -> Usage,
    /// Whether a document (or event) of this `type` that carries a usage
    /// object carries the final output count.
    pub final_count: fn(kind: Option<&str>) -> bool,
    /// Every event repeats the cumulative counts: only the last one with
    /// usage needs parsing.
    pub last_event_only: bool,
    /// Whether a JSON (not event-stream) response to `path` is a stream of
    /// array elements rather than one document.
    pub json_array_stream: fn(path: &str) -> bool,
    /// Usage the response's headers report (Bedrock's InvokeModel token
    /// counts), read when the body reports none.
    pub header_usage: Option<fn(&http::HeaderMap) -> Option<Usage>>,
}

pub(super) fn or_zero(x: Option<u64>) -> u64 {
    x.unwrap_or(0)
}
