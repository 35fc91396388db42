//! Errors that point at the offending place in the file.
//!
//! A [`Config`](super::Config) keeps its [`Source`] (where it came from and
//! its text), so that whoever compiles a section (config's own checks, or a
//! domain turning its section into its runtime form) can name
//! `file:line:column` in the error: from a `Spanned` value's byte range, or,
//! for plain values, from the key's path in the document.

use std::{error::Error, fmt, ops::Range, sync::Arc};

/// A 1-based line and column in a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The line and column of byte offset `offset` in `text`.
    pub fn of(text: &str, offset: usize) -> Location {
        let mut offset = offset.min(text.len());
        // A span from a parser never splits a character; a hand-made one
        // might, and slicing there would panic.
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location { line, column }
    }
}

/// Where a configuration came from: the name errors give it (a path, or
/// "<embedded default config>") and its text, which turns byte spans into
/// lines and columns.
#[derive(Clone)]
pub struct Source {
    origin: Arc<str>,
    text: Arc<str>,
}

/// The origin only: a config's Debug output should not repeat the file.
impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("origin", &self.origin)
            .field("bytes", &self.text.len())
            .finish()
    }
}

impl Default for Source {
    /// A config built in code rather than parsed (tests): errors name no
    /// position.
    fn default() -> Self {
        Source::new("<config built in code>", "")
    }
}

impl Source {
    pub fn new(origin: &str, text: &str) -> Source {
        Source {
            origin: origin.into(),
            text: text.into(),
        }
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The position of a byte span's start (a `toml::Spanned` value's span).
    pub fn locate(&self, span: &Range<usize>) -> Option<Location> {
        (!self.text.is_empty()).then(|| Location::of(&self.text, span.start))
    }

    /// The position of a key's value, by its path from the top of the
    /// document: `["daemon", "listen"]`, or `["price", "2", "input"]` for the
    /// third `[[price]]`'s input. A key the file does not set (its default
    /// applies) is placed at the nearest enclosing table the file does
    /// write; None when the file sets none of the path.
    pub fn locate_key(&self, path: &[&str]) -> Option<Location> {
        // Parsed again only when an error is reported: an error is rare, and
        // keeping the document would hold a second copy of the file.
        let document = toml_edit::ImDocument::parse(&*self.text).ok()?;
        let mut item = document.as_item();
        let mut span = None;
        for part in path {
            let next = match part.parse::<usize>() {
                Ok(index) if item.is_array() || item.is_array_of_tables() => item.get(index),
                _ => item.get(*part),
            };
            let Some(next) = next else { break };
            item = next;
            span = item.span().or(span);
        }
        span.map(|span: Range<usize>| Location::of(&self.text, span.start))
    }

    /// An error at a `Spanned` value.
    pub fn error_at(
        &self,
        span: &Range<usize>,
        kind: ConfigErrorKind,
        problem: impl Error + Send + Sync + 'static,
    ) -> ConfigError {
        ConfigError::new(self.origin(), self.locate(span), kind, problem)
    }

    /// An error at the value of the key at `path` (see [`Source::locate_key`]).
    pub fn error_at_key(
        &self,
        path: &[&str],
        kind: ConfigErrorKind,
        problem: impl Error + Send + Sync + 'static,
    ) -> ConfigError {
        ConfigError::new(self.origin(), self.locate_key(path), kind, problem)
    }
}

/// What kind of mistake a [`ConfigError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The file cannot be read.
    Read,
    /// Not TOML, an unknown key, or a value of the wrong type or spelling:
    /// what serde finds.
    Syntax,
    /// A well-formed value its section cannot use: a bad glob, duration or
    /// URL, a missing key that another key requires, a loose file mode.
    Invalid,
    /// A name that no section defines, one defined twice, or a credential
    /// that depends on itself.
    Reference,
}

/// A configuration problem, printed as `file:line:column: problem`.
///
/// `problem` is the typed error of whoever found it (config's own checks,
/// serde, or a domain's compile step), kept whole so that callers can
/// downcast it; its text is part of this error's, so `source()` goes on
/// with the problem's own source rather than repeating it.
#[derive(Debug)]
pub struct ConfigError {
    pub origin: String,
    pub at: Option<Location>,
    pub kind: ConfigErrorKind,
    problem: Box<dyn Error + Send + Sync>,
}

impl ConfigError {
    pub fn new(
        origin: &str,
        at: Option<Location>,
        kind: ConfigErrorKind,
        problem: impl Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            origin: origin.to_owned(),
            at,
            kind,
            problem: Box::new(problem),
        }
    }

    /// What is wrong, without the position.
    pub fn message(&self) -> String {
        self.problem.to_string()
    }

    /// The typed error that was found, e.g. to downcast to a domain's.
    pub fn problem(&self) -> &(dyn Error + Send + Sync + 'static) {
        self.problem.as_ref()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some(at) => write!(
                f,
                "{}:{}:{}: {}",
                self.origin, at.line, at.column, self.problem
            ),
            None => write!(f, "{}: {}", self.origin, self.problem),
        }
    }
}

impl Error for ConfigError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.problem.source()
    }
}
