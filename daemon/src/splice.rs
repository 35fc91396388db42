//! Credential splicing: the one place that knows how each provider takes its
//! credential, and the one phase that rewrites a request's authentication.
//!
//! [`SCHEMES`] is the table: for each provider scheme, the headers (and query
//! parameters) through which a credential can travel, and the shape of the
//! provider's error bodies. For every request to a configured upstream the
//! proxy calls [`Splicer::inspect`] (did the agent send something that looks
//! like a real key?) and then [`Splicer::apply`], which removes every
//! agent-supplied credential (all duplicates, any letter case) and injects the
//! real one. Nothing here logs or returns a credential value: findings carry
//! only `secret::fingerprint`.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use zeroize::Zeroizing;

use crate::{config::UpstreamConfig, secret, secret::Secret};

/// How a provider takes its credential and shapes its errors.
#[derive(Debug)]
pub struct SchemeSpec {
    pub name: &'static str,
    /// Headers (lower case) through which an agent could send a credential to
    /// this provider; all are stripped before the real one is injected.
    pub credential_headers: &'static [&'static str],
    /// Query parameters that carry a credential; removed from the URI.
    pub credential_query: &'static [&'static str],
    pub error_shape: ErrorShape,
}

/// The JSON error body a provider's SDK knows how to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error":{"message","type","code"}}`
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`
    Anthropic,
    /// `{"error":{"code","message","status"}}`
    Gemini,
}

/// The table of provider schemes.
pub const SCHEMES: &[SchemeSpec] = &[
    SchemeSpec {
        name: "openai",
        // `api-key` is Azure OpenAI's header; an agent could smuggle a key in it.
        credential_headers: &["authorization", "api-key"],
        credential_query: &[],
        error_shape: ErrorShape::OpenAi,
    },
    SchemeSpec {
        name: "anthropic",
        // Current SDKs send Bearer, older ones and curl examples x-api-key.
        credential_headers: &["authorization", "x-api-key"],
        credential_query: &[],
        error_shape: ErrorShape::Anthropic,
    },
    SchemeSpec {
        name: "gemini",
        // Gemini also accepts OAuth Bearer tokens, so Authorization goes too.
        credential_headers: &["x-goog-api-key", "authorization"],
        credential_query: &["key"],
        error_shape: ErrorShape::Gemini,
    },
    SchemeSpec {
        name: "generic",
        // Plus the configured header (see `Splicer::generic_header`).
        credential_headers: &[],
        credential_query: &[],
        // Most internal gateways are OpenAI-compatible.
        error_shape: ErrorShape::OpenAi,
    },
];

/// The Anthropic header form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnthropicAuth {
    XApiKey,
    Bearer,
}

/// Why a Splicer could not be built or applied. Never carries a credential.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error("unknown scheme {0:?}")]
    UnknownScheme(String),
    #[error("scheme generic needs a valid `header`: {0}")]
    BadGenericHeader(String),
    /// The credential has bytes that cannot go in an HTTP header.
    #[error("credential (fingerprint {0}) is not a valid header value")]
    InvalidCredential(String),
    #[error("cannot rebuild the request URI without its credential parameter")]
    BadUri,
}

/// An agent-supplied credential that looks real: only where and a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The header name or `?param` it was found in.
    pub location: String,
    pub fingerprint: String,
}

/// The splicing rules of one `[[upstream]]`.
#[derive(Debug, Clone)]
pub struct Splicer {
    spec: &'static SchemeSpec,
    generic_header: Option<HeaderName>,
    value_template: String,
    anthropic_auth: Option<AnthropicAuth>,
}

/// The default template for the generic scheme's header value.
pub const DEFAULT_VALUE_TEMPLATE: &str = "{credential}";

impl Splicer {
    pub fn from_config(upstream: &UpstreamConfig) -> Result<Splicer, SpliceError> {
        let scheme = upstream.scheme.get_ref().as_str();
        let spec = SCHEMES
            .iter()
            .find(|s| s.name == scheme)
            .ok_or_else(|| SpliceError::UnknownScheme(scheme.to_owned()))?;
        let generic_header = match (&upstream.header, scheme) {
            (Some(name), "generic") => Some(
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|e| SpliceError::BadGenericHeader(e.to_string()))?,
            ),
            (None, "generic") => {
                return Err(SpliceError::BadGenericHeader("missing".to_owned()));
            }
            _ => None,
        };
        let anthropic_auth = match upstream
            .anthropic_auth
            .as_ref()
            .map(|s| s.get_ref().as_str())
        {
            Some("bearer") => Some(AnthropicAuth::Bearer),
            Some("x-api-key") => Some(AnthropicAuth::XApiKey),
            _ => None,
        };
        Ok(Splicer {
            spec,
            generic_header,
            value_template: upstream
                .value_template
                .clone()
                .unwrap_or_else(|| DEFAULT_VALUE_TEMPLATE.to_owned()),
            anthropic_auth,
        })
    }

    pub fn scheme(&self) -> &'static SchemeSpec {
        self.spec
    }

    fn credential_headers(&self) -> impl Iterator<Item = &str> {
        self.spec
            .credential_headers
            .iter()
            .copied()
            .chain(self.generic_header.as_ref().map(HeaderName::as_str))
    }

    /// Agent-supplied credentials that look like real keys rather than
    /// placeholders. Read-only: the caller decides to refuse or warn.
    pub fn inspect(&self, headers: &HeaderMap, uri: &Uri) -> Vec<Finding> {
        let mut findings = Vec::new();
        for name in self.credential_headers() {
            // HeaderMap names are lower case, so `get_all` covers every
            // letter case the agent used and every duplicate.
            for value in headers.get_all(name) {
                if looks_like_real_key(value.as_bytes()) {
                    findings.push(Finding {
                        location: name.to_owned(),
                        fingerprint: secret::fingerprint(strip_bearer(value.as_bytes())),
                    });
                }
            }
        }
        if let Some(query) = uri.query() {
            for pair in query.split('&') {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                if self.is_credential_param(name) && looks_like_real_key(value.as_bytes()) {
                    findings.push(Finding {
                        location: format!("?{}", self.spec.credential_query.join(",")),
                        fingerprint: secret::fingerprint(value.as_bytes()),
                    });
                }
            }
        }
        findings
    }

    fn is_credential_param(&self, raw_name: &str) -> bool {
        let name = percent_decode(raw_name);
        self.spec.credential_query.iter().any(|q| *q == name)
    }

    /// Strips every agent-supplied credential and injects `credential`.
    /// Returns the URI with credential query parameters removed.
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        uri: &Uri,
        credential: &Secret,
    ) -> Result<Uri, SpliceError> {
        // The Anthropic form the agent used, read before stripping.
        let agent_form = if headers.contains_key("x-api-key") {
            Some(AnthropicAuth::XApiKey)
        } else if headers.contains_key(http::header::AUTHORIZATION) {
            Some(AnthropicAuth::Bearer)
        } else {
            None
        };
        for name in self.credential_headers() {
            // `remove` drops every value stored under the name.
            while headers.remove(name).is_some() {}
        }
        let value = |text: Zeroizing<String>| -> Result<HeaderValue, SpliceError> {
            let mut value = HeaderValue::from_str(&text)
                .map_err(|_| SpliceError::InvalidCredential(credential.fingerprint()))?;
            // HPACK never-indexed: the credential stays out of h2 tables.
            value.set_sensitive(true);
            Ok(value)
        };
        let bearer = || Zeroizing::new(format!("Bearer {}", credential.expose()));
        let raw = || Zeroizing::new(credential.expose().to_owned());
        match self.spec.name {
            "openai" => {
                headers.insert(http::header::AUTHORIZATION, value(bearer())?);
            }
            "anthropic" => {
                // OAuth access tokens (sk-ant-oat...) and federated tokens
                // (JWTs, from workload identity federation) are only
                // accepted as Bearer.
                let token = credential.expose();
                let oauth = token.starts_with("sk-ant-oat") || token.starts_with("eyJ");
                match self.anthropic_form(agent_form, oauth) {
                    AnthropicAuth::Bearer => {
                        headers.insert(http::header::AUTHORIZATION, value(bearer())?);
                    }
                    AnthropicAuth::XApiKey => {
                        headers.insert(HeaderName::from_static("x-api-key"), value(raw())?);
                    }
                }
            }
            "gemini" => {
                headers.insert(HeaderName::from_static("x-goog-api-key"), value(raw())?);
            }
            _ => {
                if let Some(name) = &self.generic_header {
                    let text = Zeroizing::new(
                        self.value_template
                            .replace("{credential}", credential.expose()),
                    );
                    headers.insert(name.clone(), value(text)?);
                }
            }
        }
        self.strip_query(uri)
    }

    /// OAuth tokens always go as Bearer; otherwise the configured form, else
    /// the agent's, else x-api-key (the form every Anthropic API version takes).
    fn anthropic_form(&self, agent_form: Option<AnthropicAuth>, oauth: bool) -> AnthropicAuth {
        if oauth {
            return AnthropicAuth::Bearer;
        }
        self.anthropic_auth
            .or(agent_form)
            .unwrap_or(AnthropicAuth::XApiKey)
    }

    fn strip_query(&self, uri: &Uri) -> Result<Uri, SpliceError> {
        let Some(query) = uri.query() else {
            return Ok(uri.clone());
        };
        if self.spec.credential_query.is_empty() {
            return Ok(uri.clone());
        }
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
                !self.is_credential_param(name)
            })
            .collect();
        let path_and_query = if kept.is_empty() {
            uri.path().to_owned()
        } else {
            format!("{}?{}", uri.path(), kept.join("&"))
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse().map_err(|_| SpliceError::BadUri)?);
        Uri::from_parts(parts).map_err(|_| SpliceError::BadUri)
    }

    /// A JSON error body in this provider's own shape.
    pub fn error_body(&self, status: StatusCode, message: &str) -> String {
        error_body(self.spec.error_shape, status, message)
    }
}

/// A JSON error body in `shape`, so SDKs show warrant's message cleanly.
pub fn error_body(shape: ErrorShape, status: StatusCode, message: &str) -> String {
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    };
    let body = match shape {
        ErrorShape::OpenAi => serde_json::json!({
            "error": { "message": message, "type": kind, "code": format!("warrant_{}", status.as_u16()) }
        }),
        ErrorShape::Anthropic => serde_json::json!({
            "type": "error",
            "error": { "type": kind, "message": message }
        }),
        ErrorShape::Gemini => serde_json::json!({
            "error": {
                "code": status.as_u16(),
                "message": message,
                "status": gemini_status(status),
            }
        }),
    };
    body.to_string()
}

/// google.rpc.Code names, as Gemini puts them in `error.status`.
fn gemini_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
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
const KEY_PREFIXES: &[&str] = &["sk-ant-", "sk-", "AIza", "ya29.", "eyJ", "gsk_", "xai-"];

/// Whether an agent-supplied credential looks like a real key. Anything but
/// an obvious placeholder counts: a prompt-injected agent must not be able to
/// use a key it found elsewhere through the injector unnoticed.
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

#[cfg(test)]
mod tests;
