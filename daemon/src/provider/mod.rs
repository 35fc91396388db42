//! Providers: everything warrant knows about each provider's API, one file
//! per provider.
//!
//! An `[[upstream]]` names its API with `scheme` (`config::Scheme`, syntax
//! only); [`api`] maps that name to the provider's [`Api`], and a new
//! provider is one new file here and one arm there. Each file says, for its
//! provider:
//! - how a credential travels (the headers and query parameters an agent
//!   could put one in, all stripped) and how warrant injects the real one;
//! - the JSON error body its SDKs know how to show;
//! - how a request is read: the one parse ([`Request`]) that policy,
//!   budgets and the audit line all use, so they can never disagree on what
//!   a request asks for;
//! - how its responses report token usage ([`UsageFormat`], read by
//!   `usage::meter`);
//! - for an API whose requests are signed over their body (Bedrock's
//!   SigV4), how to sign ([`Api::signs`], [`Api::sign`]): the proxy then
//!   hands over the whole body and signs once the request is final.
//!
//! [`Provider`] is one configured upstream's provider, ready to use: the
//! proxy calls [`Provider::inspect`] (did the agent send something that
//! looks like a real key?), [`Provider::parse`] and, the one rewriting
//! step, [`Provider::splice`], which removes every agent-supplied credential
//! (all duplicates, any letter case) and injects the real one. Nothing here
//! logs or returns a credential value: findings carry only
//! `secret::fingerprint`.

mod anthropic;
mod azure;
mod bedrock;
mod gemini;
mod generic;
mod keys;
mod openai;
mod request;
mod usage;
mod vertex;

use std::{sync::Arc, time::SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use zeroize::Zeroizing;

pub use crate::config::{AnthropicAuth, Scheme};
use crate::{config::UpstreamConfig, credentials::CredentialKind, secret::Secret};
pub use keys::{Finding, looks_like_real_key};
pub use request::{
    AmbiguousRequest, Body, PathProblem, Request, RequestHead, Unmetered, canonical_path,
};
pub use usage::{Usage, UsageFields, UsageFormat, UsageMetadata};

/// How one provider's API works. Implemented once per provider file.
pub trait Api: Sync {
    /// Headers (lower case) through which an agent could send this
    /// provider a credential; all are stripped before the real one goes in.
    fn credential_headers(&self) -> &'static [&'static str];

    /// Query parameters that carry a credential; removed from the URI.
    fn credential_query(&self) -> &'static [&'static str] {
        &[]
    }

    /// The part of a credential header's value that is the key, for the
    /// real-looking-key check (a SigV4 `Authorization` names its key id
    /// among other things). Default: the whole value.
    fn key_in<'a>(&self, _header: &str, value: &'a [u8]) -> &'a [u8] {
        value
    }

    /// Whether requests are signed over their whole body ([`Api::sign`]).
    fn signs(&self, _auth: &AuthSettings) -> bool {
        false
    }

    /// Signs the request once it is final (`parts.uri` absolute, headers
    /// as they will be sent), over `body`, the whole body. Only when
    /// [`Api::signs`].
    fn sign(
        &self,
        _parts: &mut http::request::Parts,
        _body: &[u8],
        _credential: &Secret,
        _auth: &AuthSettings,
        _now: SystemTime,
    ) -> Result<(), SpliceError> {
        Ok(())
    }

    /// Puts `credential` in `headers`. `agent` tells which credential
    /// headers the agent used (they are already stripped).
    fn inject(
        &self,
        headers: &mut HeaderMap,
        credential: &Secret,
        auth: &AuthSettings,
        agent: AgentHeaders,
    ) -> Result<(), SpliceError>;

    /// The provider's JSON error body for `status` and `message`; `kind` is
    /// the error type name SDKs know (`permission_error`, ...).
    fn error_body(&self, status: StatusCode, kind: &str, message: &str) -> serde_json::Value;

    /// Reads one request: see [`Request`]. The default reads a JSON body's
    /// top-level fields (`request::json_request`), which every provider's
    /// API takes; a provider that names more elsewhere (Gemini's path)
    /// adds to it.
    fn parse(
        &self,
        head: &RequestHead<'_>,
        body_prefix: &[u8],
    ) -> Result<Request, AmbiguousRequest> {
        request::json_request(head, body_prefix)
    }

    /// Which of this provider's endpoints start work that the response does
    /// not meter (batches, jobs, sessions): see [`Unmetered`]. `request` is
    /// the parse, with the canonical path.
    fn unmetered(&self, _request: &Request) -> Option<Unmetered> {
        None
    }

    /// How its responses report usage.
    fn usage(&self) -> &'static UsageFormat;

    /// The body to forward instead of `body` (the whole request body, as
    /// parsed into `request`) so that the response reports its usage, when
    /// it would not otherwise: an OpenAI stream without
    /// `stream_options.include_usage`. None: forwarded as it is.
    fn usage_option(&self, _request: &Request, _body: &[u8]) -> Option<Vec<u8>> {
        None
    }

    /// The usage one message of a WebSocket session from the provider
    /// reports (to be added to the session's), if any. A provider without
    /// metered sessions reads none, and its upgrades stay
    /// [`Unmetered::WebSocket`].
    fn session_usage(&self, _message: &[u8]) -> Option<Usage> {
        None
    }

    /// Whether one message of a session from the provider says a response
    /// (a turn) has started whose usage a later message will report. A
    /// session that closes between the two has spent tokens no message
    /// reports: its meter charges a guess for it (`usage::SessionMeter`).
    fn session_turn_started(&self, _message: &[u8]) -> bool {
        false
    }
}

/// The provider behind a scheme: the one place a scheme becomes behaviour.
pub fn api(scheme: Scheme) -> &'static dyn Api {
    match scheme {
        Scheme::OpenAi => &openai::OpenAi,
        Scheme::Anthropic => &anthropic::Anthropic,
        Scheme::Gemini => &gemini::Gemini,
        Scheme::Bedrock => &bedrock::Bedrock,
        Scheme::Vertex => &vertex::Vertex,
        Scheme::Azure => &azure::Azure,
        Scheme::Generic => &generic::Generic,
    }
}

/// The credential settings of one `[[upstream]]`.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Scheme generic: the header to set.
    pub header: Option<HeaderName>,
    /// Scheme generic: the header's value, `{credential}` replaced.
    pub value_template: String,
    /// Scheme anthropic: forces one form.
    pub anthropic_auth: Option<AnthropicAuth>,
    /// The upstream host, lower case.
    pub host: String,
    /// Scheme bedrock: the region requests are signed for.
    pub region: Option<String>,
    /// What the upstream's credential is (AWS keys sign; tokens travel).
    pub credential: CredentialKind,
}

/// Which credential headers the agent sent (before they were stripped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentHeaders {
    pub authorization: bool,
    pub x_api_key: bool,
}

/// The default template for the generic scheme's header value.
pub const DEFAULT_VALUE_TEMPLATE: &str = "{credential}";

/// Why a Provider could not be built or a credential spliced. Never
/// carries a credential.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error("scheme generic needs a valid `header`: {0}")]
    BadGenericHeader(String),
    /// The credential has bytes that cannot go in an HTTP header.
    #[error("credential (fingerprint {0}) is not a valid header value")]
    InvalidCredential(String),
    #[error("cannot rebuild the request URI without its credential parameter")]
    BadUri,
    #[error(
        "upstream {0:?} names no region to sign for: set `region` (bedrock-runtime.<region>.amazonaws.com names its own)"
    )]
    NoRegion(String),
    /// The signer refused its input (never carries a key).
    #[error("cannot sign the request: {0}")]
    Sign(String),
    #[error(
        "scheme {scheme} cannot use AWS keys (they sign Bedrock requests); name a credential that holds a token"
    )]
    AwsKeysElsewhere { scheme: Scheme },
}

impl SpliceError {
    /// The `[[upstream]]` key an error is about, for the config error's
    /// place.
    pub fn key(&self) -> &'static str {
        match self {
            SpliceError::BadGenericHeader(_) => "header",
            SpliceError::NoRegion(_) => "host",
            SpliceError::AwsKeysElsewhere { .. } => "credential",
            _ => "scheme",
        }
    }
}

/// One configured upstream's provider.
#[derive(Debug, Clone)]
pub struct Provider {
    scheme: Scheme,
    auth: AuthSettings,
}

impl Provider {
    /// The provider of `upstream`, whose credential is a `credential`.
    pub fn from_config(
        upstream: &UpstreamConfig,
        credential: CredentialKind,
    ) -> Result<Provider, SpliceError> {
        let scheme = *upstream.scheme.get_ref();
        if credential == CredentialKind::AwsKeys && scheme != Scheme::Bedrock {
            return Err(SpliceError::AwsKeysElsewhere { scheme });
        }
        let host = upstream.host.get_ref().to_ascii_lowercase();
        let region = match (&upstream.region, scheme) {
            (Some(region), _) => Some(region.get_ref().clone()),
            (None, Scheme::Bedrock) => Some(
                bedrock::region_of_host(&host)
                    .ok_or_else(|| SpliceError::NoRegion(host.clone()))?,
            ),
            (None, _) => None,
        };
        let header = match (&upstream.header, scheme) {
            (Some(name), Scheme::Generic) => Some(
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|e| SpliceError::BadGenericHeader(e.to_string()))?,
            ),
            (None, Scheme::Generic) => {
                return Err(SpliceError::BadGenericHeader("missing".to_owned()));
            }
            _ => None,
        };
        Ok(Provider {
            scheme,
            auth: AuthSettings {
                header,
                value_template: upstream
                    .value_template
                    .clone()
                    .unwrap_or_else(|| DEFAULT_VALUE_TEMPLATE.to_owned()),
                anthropic_auth: upstream.anthropic_auth,
                host,
                region,
                credential,
            },
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    fn api(&self) -> &'static dyn Api {
        api(self.scheme)
    }

    fn credential_headers(&self) -> impl Iterator<Item = &str> {
        self.api()
            .credential_headers()
            .iter()
            .copied()
            .chain(self.auth.header.as_ref().map(HeaderName::as_str))
    }

    /// Agent-supplied credentials that look like real keys rather than
    /// placeholders. Read-only: the caller decides to refuse or warn.
    pub fn inspect(&self, headers: &HeaderMap, uri: &Uri) -> Vec<Finding> {
        let api = self.api();
        let mut findings = keys::in_headers(headers, self.credential_headers(), |name, value| {
            api.key_in(name, value)
        });
        let query = self.api().credential_query();
        findings.extend(keys::in_query(uri, query));
        findings
    }

    /// Reads the request: method, path, model, caps (see [`Request`]).
    pub fn parse(
        &self,
        head: &RequestHead<'_>,
        body_prefix: &[u8],
    ) -> Result<Request, AmbiguousRequest> {
        let mut request = self.api().parse(head, body_prefix)?;
        if request.unmetered.is_none() && request.method == http::Method::POST {
            request.unmetered = self.api().unmetered(&request);
        }
        request.query = request
            .query
            .map(|q| without_params(&q, self.api().credential_query()))
            .filter(|q| !q.is_empty());
        Ok(request)
    }

    /// Strips every agent-supplied credential and injects `credential`.
    /// Returns the URI with credential query parameters removed.
    pub fn splice(
        &self,
        headers: &mut HeaderMap,
        uri: &Uri,
        credential: &Secret,
    ) -> Result<Uri, SpliceError> {
        let agent = AgentHeaders {
            authorization: headers.contains_key(http::header::AUTHORIZATION),
            x_api_key: headers.contains_key("x-api-key"),
        };
        let names: Vec<String> = self.credential_headers().map(str::to_owned).collect();
        for name in names {
            // `remove` drops every value stored under the name; HeaderMap
            // names are lower case, so every letter case the agent used goes.
            while headers.remove(name.as_str()).is_some() {}
        }
        self.api().inject(headers, credential, &self.auth, agent)?;
        strip_query(uri, self.api().credential_query())
    }

    /// Whether the proxy must hand over the whole body to [`Provider::sign`].
    pub fn signs_body(&self) -> bool {
        self.api().signs(&self.auth)
    }

    /// Signs the final request over `body` (see [`Api::sign`]).
    pub fn sign(
        &self,
        parts: &mut http::request::Parts,
        body: &[u8],
        credential: &Secret,
        now: SystemTime,
    ) -> Result<(), SpliceError> {
        self.api().sign(parts, body, credential, &self.auth, now)
    }

    /// The part of `credential` that travels with a request, and so could
    /// be echoed in a response (which redacts it): the credential itself,
    /// or for AWS keys the session token (else the access key id: the
    /// secret key only signs).
    pub fn echoable(&self, credential: Arc<Secret>) -> Arc<Secret> {
        if self.auth.credential != CredentialKind::AwsKeys {
            return credential;
        }
        match crate::credentials::aws::AwsKeys::from_secret(&credential) {
            Ok(keys) => Arc::new(Secret::new(match keys.session_token {
                Some(token) => token.as_str().to_owned(),
                None => keys.access_key_id,
            })),
            Err(_) => credential,
        }
    }

    /// The body to forward instead, so that the response reports its usage
    /// (see [`Api::usage_option`]); the agent is answered as if it had not
    /// been changed (`proxy::strip`).
    pub fn usage_option(&self, request: &Request, body: &[u8]) -> Option<Vec<u8>> {
        if request.body != (Body::Json { complete: true }) {
            return None;
        }
        self.api().usage_option(request, body)
    }

    /// A JSON error body in this provider's own shape.
    pub fn error_body(&self, status: StatusCode, message: &str) -> String {
        error_body(self.scheme, status, message)
    }

    /// How this provider's responses report usage.
    pub fn usage_format(&self) -> &'static UsageFormat {
        self.api().usage()
    }
}

/// A JSON error body in `scheme`'s shape, so SDKs show warrant's message
/// cleanly.
pub fn error_body(scheme: Scheme, status: StatusCode, message: &str) -> String {
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        413 => "request_too_large",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    };
    api(scheme).error_body(status, kind, message).to_string()
}

/// A header value holding a credential: HPACK never-indexed, so the
/// credential stays out of h2 tables.
fn sensitive(text: Zeroizing<String>, credential: &Secret) -> Result<HeaderValue, SpliceError> {
    let mut value = HeaderValue::from_str(&text)
        .map_err(|_| SpliceError::InvalidCredential(credential.fingerprint()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// `Bearer <credential>`.
fn bearer(credential: &Secret) -> Result<HeaderValue, SpliceError> {
    sensitive(
        Zeroizing::new(format!("Bearer {}", credential.expose())),
        credential,
    )
}

/// The credential as it is.
fn raw(credential: &Secret) -> Result<HeaderValue, SpliceError> {
    sensitive(Zeroizing::new(credential.expose().to_owned()), credential)
}

/// `uri` without the query parameters named `params`.
fn strip_query(uri: &Uri, params: &[&str]) -> Result<Uri, SpliceError> {
    let Some(query) = uri.query() else {
        return Ok(uri.clone());
    };
    if params.is_empty() {
        return Ok(uri.clone());
    }
    let kept = without_params(query, params);
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{kept}", uri.path())
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| SpliceError::BadUri)?);
    Uri::from_parts(parts).map_err(|_| SpliceError::BadUri)
}

/// `query` without the parameters named `params` (names percent-decoded).
fn without_params(query: &str, params: &[&str]) -> String {
    query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !keys::is_param(name, params)
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests;
