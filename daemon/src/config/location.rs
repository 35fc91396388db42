//! Errors that point at the offending place in the file.

use std::fmt;

/// A 1-based line and column in a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The line and column of byte offset `offset` in `text`.
    pub fn of(text: &str, offset: usize) -> Location {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location { line, column }
    }
}

/// A configuration problem, printed as `file:line:column: message`.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub origin: String,
    pub at: Option<Location>,
    pub message: String,
}

impl ConfigError {
    pub fn new(origin: &str, at: Option<Location>, message: String) -> Self {
        Self {
            origin: origin.to_owned(),
            at,
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some(at) => write!(
                f,
                "{}:{}:{}: {}",
                self.origin, at.line, at.column, self.message
            ),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}
