//! Agent-supplied credentials: does what an agent sent look like a real key
//! rather than a placeholder? A prompt-injected agent must not be able to
//! use a key it found elsewhere through the injector unnoticed, so anything
//! but an obvious placeholder counts. Findings carry where the value was
//! and its fingerprint, never the value.

use http::{HeaderMap, Uri};

use crate::secret;

/// An agent-supplied credential that looks real: only where and a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The header name or `?param` it was found in.
    pub location: String,
    pub fingerprint: String,
}

/// Real-looking values under the header `names` (lower case). `get_all`
/// covers every letter case the agent used and every duplicate. `key_in`
/// picks the key out of a value (the provider's `Api::key_in`).
pub(super) fn in_headers<'a>(
    headers: &HeaderMap,
    names: impl Iterator<Item = &'a str>,
    key_in: impl for<'v> Fn(&str, &'v [u8]) -> &'v [u8],
) -> Vec<Finding> {
    let mut findings = Vec::new();
    for name in names {
        for value in headers.get_all(name) {
            let key = key_in(name, value.as_bytes());
            if looks_like_real_key(key) {
                findings.push(Finding {
                    location: name.to_owned(),
                    fingerprint: secret::fingerprint(strip_bearer(key)),
                });
            }
        }
    }
    findings
}

/// Real-looking values of the query parameters `params`.
pub(super) fn in_query(uri: &Uri, params: &[&str]) -> Vec<Finding> {
    let Some(query) = uri.query() else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (is_param(name, params) && looks_like_real_key(value.as_bytes())).then(|| Finding {
                location: format!("?{}", params.join(",")),
                fingerprint: secret::fingerprint(value.as_bytes()),
            })
        })
        .collect()
}

/// Whether the raw (percent-encoded) query parameter name is one of `params`.
pub(super) fn is_param(raw_name: &str, params: &[&str]) -> bool {
    if params.is_empty() {
        return false;
    }
    let name = percent_decode(raw_name);
    params.iter().any(|p| *p == name)
}

fn strip_bearer(value: &[u8]) -> &[u8] {
    let trimmed = value.trim_ascii();
    match trimmed.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case(b"bearer ") => trimmed[7..].trim_ascii(),
        _ => trimmed,
    }
}

/// Words that mark a value as a placeholder rather than a key.
const PLACEHOLDER_WORDS: &[&str] = &[
    "placeholder",
    "dummy",
    "fake",
    "example",
    "changeme",
    "change-me",
    "replace",
    "your",
    "xxxx",
    "warrant",
    "test",
    "none",
    "null",
    "unused",
    "not-a-real",
    "redacted",
];

/// Key prefixes of the providers (and common token formats): a value with one
/// of these and a key-like length is treated as real.
/// AWS access key ids (AKIA long-term, ASIA temporary) are 20 characters;
/// ABSK starts a Bedrock API key.
const KEY_PREFIXES: &[&str] = &[
    "sk-ant-", "sk-", "AIza", "ya29.", "eyJ", "gsk_", "xai-", "AKIA", "ASIA", "ABSK",
];

/// Whether an agent-supplied credential looks like a real key.
pub fn looks_like_real_key(raw: &[u8]) -> bool {
    let value = strip_bearer(raw);
    let Ok(value) = std::str::from_utf8(value) else {
        // Not text: nothing an SDK would send as a placeholder.
        return !value.is_empty();
    };
    if value.is_empty() {
        return false;
    }
    let lower = value.to_ascii_lowercase();
    if PLACEHOLDER_WORDS.iter().any(|w| lower.contains(w)) {
        return false;
    }
    if KEY_PREFIXES.iter().any(|p| value.starts_with(p)) && value.len() >= 20 {
        return true;
    }
    let has_letter = value.bytes().any(|b| b.is_ascii_alphabetic());
    let has_digit = value.bytes().any(|b| b.is_ascii_digit());
    value.len() >= 24 && has_letter && has_digit
}

/// Decodes %XX in a query parameter name, so `%6Bey` is seen as `key`.
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
