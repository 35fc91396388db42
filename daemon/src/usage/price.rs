//! The price table: model glob -> USD per million tokens (input, output,
//! cached input).
//!
//! `[[price]]` entries of the config come first; the default table below
//! follows unless `[usage] default_prices = false`. The first entry whose
//! glob matches the model wins, so specific globs precede general ones.
//!
//! The default table holds list prices as published by OpenAI, Anthropic and
//! Google on their pricing pages, as of [`DEFAULT_PRICES_DATE`], for standard
//! (not batch, not priority) processing and, for Gemini 2.5 Pro, prompts up
//! to 200k tokens. Prices change: set `[[price]]` for what your contract
//! says. Anthropic cache writes are charged at the input price (their list
//! price is 1.25x that).

use globset::{Glob, GlobMatcher};

use super::meter::Usage;
use crate::config::PriceConfig;

/// When the default table was taken from the providers' published list prices.
pub const DEFAULT_PRICES_DATE: &str = "2025-11-01";

/// (model glob, input, output, cached input), USD per million tokens.
pub const DEFAULT_PRICES: &[(&str, f64, f64, f64)] = &[
    // OpenAI
    ("gpt-5-nano*", 0.05, 0.40, 0.005),
    ("gpt-5-mini*", 0.25, 2.00, 0.025),
    ("gpt-5*", 1.25, 10.00, 0.125),
    ("gpt-4.1-nano*", 0.10, 0.40, 0.025),
    ("gpt-4.1-mini*", 0.40, 1.60, 0.10),
    ("gpt-4.1*", 2.00, 8.00, 0.50),
    ("gpt-4o-mini*", 0.15, 0.60, 0.075),
    ("gpt-4o*", 2.50, 10.00, 1.25),
    ("o4-mini*", 1.10, 4.40, 0.275),
    ("o3*", 2.00, 8.00, 0.50),
    ("text-embedding-3-small*", 0.02, 0.0, 0.02),
    ("text-embedding-3-large*", 0.13, 0.0, 0.13),
    // Anthropic
    ("claude-opus-4-5*", 5.00, 25.00, 0.50),
    ("claude-opus-4*", 15.00, 75.00, 1.50),
    ("claude-sonnet-4*", 3.00, 15.00, 0.30),
    ("claude-3-7-sonnet*", 3.00, 15.00, 0.30),
    ("claude-haiku-4-5*", 1.00, 5.00, 0.10),
    ("claude-3-5-haiku*", 0.80, 4.00, 0.08),
    // Google Gemini
    ("gemini-2.5-pro*", 1.25, 10.00, 0.125),
    ("gemini-2.5-flash-lite*", 0.10, 0.40, 0.01),
    ("gemini-2.5-flash*", 0.30, 2.50, 0.03),
    ("gemini-2.0-flash-lite*", 0.075, 0.30, 0.075),
    ("gemini-2.0-flash*", 0.10, 0.40, 0.025),
];

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    pub cached_input: f64,
}

impl Price {
    /// Cost in micro-USD (integers, so that ledgers add exactly), rounded up.
    pub fn micro_usd(&self, usage: &Usage) -> u64 {
        let cached = usage.cached_input_tokens.min(usage.input_tokens);
        let uncached = usage.input_tokens - cached;
        // USD per million tokens == micro-USD per token.
        let cost = uncached as f64 * self.input
            + cached as f64 * self.cached_input
            + usage.output_tokens as f64 * self.output;
        cost.ceil() as u64
    }
}

#[derive(Debug, Clone)]
pub struct PriceTable {
    entries: Vec<(GlobMatcher, Price)>,
}

/// A `[[price]]` entry the table cannot use.
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("[[price]] {model:?}: {key} must be a non-negative number")]
    Negative {
        /// The entry's index in `[[price]]`.
        index: usize,
        model: String,
        key: &'static str,
    },
    #[error("[[price]] bad model glob {pattern:?}: {source}")]
    BadGlob {
        /// None: a glob of the built-in table.
        index: Option<usize>,
        pattern: String,
        #[source]
        source: globset::Error,
    },
}

impl PriceError {
    /// Which `[[price]]` entry it is about (None: the built-in table).
    pub fn index(&self) -> Option<usize> {
        match self {
            PriceError::Negative { index, .. } => Some(*index),
            PriceError::BadGlob { index, .. } => *index,
        }
    }

    /// The key of the entry that is wrong.
    pub fn key(&self) -> &'static str {
        match self {
            PriceError::Negative { key, .. } => key,
            PriceError::BadGlob { .. } => "model",
        }
    }
}

impl PriceTable {
    /// `configured` first, then the default table when `with_defaults`.
    pub fn new(configured: &[PriceConfig], with_defaults: bool) -> Result<PriceTable, PriceError> {
        let mut entries = Vec::new();
        for (index, p) in configured.iter().enumerate() {
            for (key, v) in [("input", p.input), ("output", p.output)]
                .into_iter()
                .chain(p.cached_input.map(|c| ("cached_input", c)))
            {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(PriceError::Negative {
                        index,
                        model: p.model.clone(),
                        key,
                    });
                }
            }
            entries.push((
                glob(&p.model, Some(index))?,
                Price {
                    input: p.input,
                    output: p.output,
                    cached_input: p.cached_input.unwrap_or(p.input),
                },
            ));
        }
        if with_defaults {
            for &(model, input, output, cached_input) in DEFAULT_PRICES {
                entries.push((
                    glob(model, None)?,
                    Price {
                        input,
                        output,
                        cached_input,
                    },
                ));
            }
        }
        Ok(PriceTable { entries })
    }

    pub fn price(&self, model: &str) -> Option<Price> {
        self.entries
            .iter()
            .find(|(glob, _)| glob.is_match(model))
            .map(|(_, price)| *price)
    }
}

fn glob(pattern: &str, index: Option<usize>) -> Result<GlobMatcher, PriceError> {
    Glob::new(pattern)
        .map(|g| g.compile_matcher())
        .map_err(|source| PriceError::BadGlob {
            index,
            pattern: pattern.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn specific_globs_win_and_configured_prices_come_first() {
        let table = PriceTable::new(&[], true).unwrap();
        assert_eq!(table.price("gpt-4o-mini-2024-07-18").unwrap().input, 0.15);
        assert_eq!(table.price("gpt-4o-2024-08-06").unwrap().input, 2.50);
        assert_eq!(
            table.price("claude-sonnet-4-20250514").unwrap().output,
            15.0
        );
        assert_eq!(table.price("gemini-2.5-flash-lite").unwrap().input, 0.10);
        assert!(table.price("llama-3").is_none());
        let mine = PriceTable::new(
            &[PriceConfig {
                model: "gpt-4o*".into(),
                input: 1.0,
                output: 2.0,
                cached_input: None,
            }],
            true,
        )
        .unwrap();
        assert_eq!(mine.price("gpt-4o").unwrap().cached_input, 1.0);
        assert!(
            PriceTable::new(&[], false)
                .unwrap()
                .price("gpt-4o")
                .is_none()
        );
    }

    #[test]
    fn cost_separates_cached_input_and_rounds_up_to_a_micro_dollar() {
        let price = Price {
            input: 2.5,
            output: 10.0,
            cached_input: 1.25,
        };
        let usage = Usage {
            input_tokens: 1200,
            cached_input_tokens: 1024,
            output_tokens: 9,
        };
        // 176 * 2.5 + 1024 * 1.25 + 9 * 10 = 440 + 1280 + 90
        assert_eq!(price.micro_usd(&usage), 1810);
        let one = Usage {
            input_tokens: 1,
            ..Usage::default()
        };
        assert_eq!(
            Price {
                input: 0.02,
                output: 0.0,
                cached_input: 0.02
            }
            .micro_usd(&one),
            1
        );
    }

    #[test]
    fn a_negative_price_is_refused() {
        let bad = PriceConfig {
            model: "x".into(),
            input: -1.0,
            output: 1.0,
            cached_input: None,
        };
        assert!(PriceTable::new(&[bad], false).is_err());
    }
}
