//! Durations in the configuration file: "30s", "5m", "1h", "1h 30m", "2d".
//!
//! Parsed with jiff's friendly format, so the syntax is a documented one
//! rather than a local invention. Negative durations are refused.

use std::time::Duration;

/// A duration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DurationError {
    #[error("bad duration {text:?} (expected e.g. \"30s\", \"5m\", \"1h\"): {source}")]
    Syntax {
        text: String,
        #[source]
        source: jiff::Error,
    },
    #[error("duration {0:?} must not be negative")]
    Negative(String),
}

/// Parses a non-negative duration such as "10s" or "1h30m".
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let signed: jiff::SignedDuration = text.parse().map_err(|source| DurationError::Syntax {
        text: text.to_owned(),
        source,
    })?;
    Duration::try_from(signed).map_err(|_| DurationError::Negative(text.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn friendly_durations_parse() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse("soon").is_err());
        assert!(parse("-5s").is_err());
    }
}
