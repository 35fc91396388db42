//! `[usage]` and `[[price]]` compiled into what metering runs with: the
//! settings checked beyond their types, the price table, and the Redis
//! ledger when one is configured (the syntax and its defaults are in
//! `config::usage`).

use super::{
    price::PriceTable,
    redis::{RedisLedger, RedisUrlError},
};
use crate::config::{ConfigError, ConfigErrorKind, LedgerKind, PriceConfig, Source, UsageConfig};

/// What `[usage]` asks that it cannot have.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("[usage] ledger = \"redis\" needs redis_url")]
    RedisWithoutUrl,
    #[error("[usage] input_bytes_per_token must be at least 1")]
    ZeroBytesPerToken,
}

/// The runtime form of `[usage]` and `[[price]]`.
pub struct UsageSettings {
    pub config: UsageConfig,
    pub prices: PriceTable,
    /// With `ledger = "redis"`: the client (it connects on first use, so
    /// building it contacts nothing).
    pub redis: Option<RedisLedger>,
}

impl UsageSettings {
    /// Compiles the sections; every error names its key's place in the file.
    pub fn compile(
        usage: &UsageConfig,
        prices: &[PriceConfig],
        source: &Source,
    ) -> Result<UsageSettings, ConfigError> {
        let invalid = |key: &str, problem| {
            source.error_at_key(&["usage", key], ConfigErrorKind::Invalid, problem)
        };
        if usage.input_bytes_per_token == 0 {
            return Err(invalid(
                "input_bytes_per_token",
                SettingsError::ZeroBytesPerToken,
            ));
        }
        let redis = match (usage.ledger, &usage.redis_url) {
            (LedgerKind::Redis, None) => {
                return Err(invalid("ledger", SettingsError::RedisWithoutUrl));
            }
            (LedgerKind::Redis, Some(url)) => Some(
                RedisLedger::new(
                    url,
                    std::time::Duration::from_millis(usage.redis_timeout_ms),
                )
                .map_err(|e: RedisUrlError| {
                    source.error_at_key(&["usage", "redis_url"], ConfigErrorKind::Invalid, e)
                })?,
            ),
            (LedgerKind::Sqlite, _) => None,
        };
        let table = PriceTable::new(prices, usage.default_prices).map_err(|e| {
            let index = e.index().map(|i| i.to_string());
            let path: Vec<&str> = match (&index, e.key()) {
                (Some(index), key) => vec!["price", index, key],
                (None, _) => vec!["usage", "default_prices"],
            };
            source.error_at_key(&path, ConfigErrorKind::Invalid, e)
        })?;
        Ok(UsageSettings {
            config: usage.clone(),
            prices: table,
            redis,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;

    fn compile(text: &str) -> Result<UsageSettings, ConfigError> {
        let config = Config::parse(text, "u.toml").unwrap();
        UsageSettings::compile(&config.usage, &config.prices, &config.source)
    }

    fn error(text: &str) -> ConfigError {
        match compile(text) {
            Ok(_) => panic!("{text:?} compiled"),
            Err(err) => err,
        }
    }

    #[test]
    fn redis_needs_a_url_and_the_error_names_the_key() {
        let err = error("[usage]\nledger = \"redis\"\n");
        assert_eq!(
            err.to_string(),
            "u.toml:2:10: [usage] ledger = \"redis\" needs redis_url"
        );
        let ok = compile("[usage]\nledger = \"redis\"\nredis_url = \"redis://127.0.0.1:1\"\n");
        assert!(ok.is_ok_and(|settings| settings.redis.is_some()));
        let err = error("[usage]\nledger = \"redis\"\nredis_url = \"nope://x\"\n");
        assert!(
            err.to_string().starts_with("u.toml:3:13: redis_url: "),
            "{err}"
        );
    }

    #[test]
    fn a_bad_price_is_located_at_its_key() {
        let err = error(
            "[[price]]\nmodel = \"a*\"\ninput = 1.0\noutput = 1.0\n\n[[price]]\nmodel = \"b*\"\ninput = -1.0\noutput = 1.0\n",
        );
        assert_eq!(err.at.map(|a| a.line), Some(8), "{err}");
        assert!(
            err.message()
                .contains("input must be a non-negative number"),
            "{err}"
        );
        let err = error("[[price]]\nmodel = \"[x\"\ninput = 1.0\noutput = 1.0\n");
        assert_eq!(err.at.map(|a| a.line), Some(2), "{err}");
        assert!(err.message().contains("bad model glob"), "{err}");
    }

    #[test]
    fn zero_bytes_per_token_is_refused() {
        let err = error("[usage]\ninput_bytes_per_token = 0\n");
        assert_eq!(err.at.map(|a| a.line), Some(2), "{err}");
    }
}
