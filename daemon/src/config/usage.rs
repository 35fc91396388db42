//! `[usage]` and `[[price]]`: metering and budget settings, and prices.
//! Every key has a default; the limits themselves are per `[[policy]]` rule
//! (`requests_per_minute`, `tokens_per_hour`, `cost_per_day_usd`). The
//! usage module compiles these (`usage::settings`, `usage::price`).

use serde::Deserialize;

/// Where budget windows are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerKind {
    /// `<state_dir>/usage.sqlite`: budgets per host, durable.
    #[default]
    Sqlite,
    /// A Redis server shared by every host running the same workloads.
    Redis,
}

/// What admission does when Redis cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RedisUnreachable {
    /// Refuse requests that have a budget (503): a fleet-wide budget that
    /// cannot be checked is not enforced by guessing.
    #[default]
    FailClosed,
    /// Enforce the same limits per host (the embedded ledger) until Redis is
    /// back; a fleet of N hosts may then spend up to N times the budget.
    Local,
}

/// The defaults, each with its reason.
pub mod defaults {
    /// Reserved for a request that sets no output cap: most chat answers are
    /// far shorter, and the reservation is settled to the actual count.
    pub const MAX_OUTPUT_TOKENS: u64 = 4096;
    /// English text averages about 4 bytes per token; JSON syntax adds
    /// bytes, so this tends to over-estimate (see `usage::request`).
    pub const INPUT_BYTES_PER_TOKEN: u64 = 4;
    /// A non-streaming JSON body is copied for parsing up to this size;
    /// larger ones are read from their last 64 KiB.
    pub const MAX_JSON_BYTES: usize = 1 << 20;
    /// How much of a request body admission reads for its output cap and
    /// model. SDKs often put `max_tokens` after the messages, so this is
    /// larger than the 64 KiB policy needs for the model alone.
    pub const BODY_PREFIX_BYTES: usize = 1 << 20;
    /// Reserved on top of MAX_OUTPUT_TOKENS for a request that asks for
    /// reasoning without an output cap: reasoning models think for tens of
    /// thousands of tokens at high effort.
    pub const REASONING_OUTPUT_TOKENS: u64 = 32768;
    /// A Redis call slower than this counts as Redis unreachable.
    pub const REDIS_TIMEOUT_MS: u64 = 250;
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    #[serde(default)]
    pub ledger: LedgerKind,
    /// e.g. "redis://10.0.0.5:6379/0"; required with `ledger = "redis"`.
    #[serde(default)]
    pub redis_url: Option<String>,
    #[serde(default)]
    pub redis_unreachable: RedisUnreachable,
    #[serde(default = "redis_timeout_ms")]
    pub redis_timeout_ms: u64,
    /// Budgets per workload and upstream instead of per workload.
    #[serde(default)]
    pub per_upstream: bool,
    #[serde(default = "max_output_tokens")]
    pub default_max_output_tokens: u64,
    #[serde(default = "reasoning_output_tokens")]
    pub reasoning_output_tokens: u64,
    #[serde(default = "input_bytes_per_token")]
    pub input_bytes_per_token: u64,
    #[serde(default = "max_json_bytes")]
    pub max_json_bytes: usize,
    #[serde(default = "body_prefix_bytes")]
    pub body_prefix_bytes: usize,
    /// Append the built-in price table after `[[price]]`.
    #[serde(default = "yes")]
    pub default_prices: bool,
}

fn redis_timeout_ms() -> u64 {
    defaults::REDIS_TIMEOUT_MS
}
fn max_output_tokens() -> u64 {
    defaults::MAX_OUTPUT_TOKENS
}
fn reasoning_output_tokens() -> u64 {
    defaults::REASONING_OUTPUT_TOKENS
}
fn input_bytes_per_token() -> u64 {
    defaults::INPUT_BYTES_PER_TOKEN
}
fn max_json_bytes() -> usize {
    defaults::MAX_JSON_BYTES
}
fn body_prefix_bytes() -> usize {
    defaults::BODY_PREFIX_BYTES
}
fn yes() -> bool {
    true
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            ledger: LedgerKind::default(),
            redis_url: None,
            redis_unreachable: RedisUnreachable::default(),
            redis_timeout_ms: redis_timeout_ms(),
            per_upstream: false,
            default_max_output_tokens: max_output_tokens(),
            reasoning_output_tokens: reasoning_output_tokens(),
            input_bytes_per_token: input_bytes_per_token(),
            max_json_bytes: max_json_bytes(),
            body_prefix_bytes: body_prefix_bytes(),
            default_prices: true,
        }
    }
}

/// One `[[price]]` entry. Prices are USD per million tokens.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// A glob over the model name (the response's, else the request's).
    pub model: String,
    pub input: f64,
    pub output: f64,
    /// Defaults to `input` (no cache discount assumed).
    pub cached_input: Option<f64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_key_parses_and_the_defaults_are_documented_ones() {
        let all: UsageConfig = toml::from_str(
            r#"
ledger = "redis"
redis_url = "redis://127.0.0.1:6379"
redis_unreachable = "local"
redis_timeout_ms = 100
per_upstream = true
default_max_output_tokens = 1000
input_bytes_per_token = 3
max_json_bytes = 65536
body_prefix_bytes = 65536
default_prices = false
"#,
        )
        .unwrap();
        assert_eq!(all.redis_unreachable, RedisUnreachable::Local);
        assert_eq!(all.ledger, LedgerKind::Redis);
        let none: UsageConfig = toml::from_str("").unwrap();
        assert_eq!(none, UsageConfig::default());
        assert_eq!(none.redis_unreachable, RedisUnreachable::FailClosed);
    }
}
