//! The cloud metadata service as tagged agents see it.
//!
//! On a cloud instance any process can read the instance role's real
//! credentials from the metadata service at 169.254.169.254, so a
//! prompt-injected agent can steal them with one HTTP request. Under
//! warrant a tagged agent never reaches it: the eBPF programs redirect the
//! agent's connections to the metadata addresses (port 80, those addresses
//! only: `redirect`) to the injector, which hands each request to the
//! [`Emulator`] here instead of relaying it (`proxy`). The emulator:
//!
//! - answers the credential endpoints the SDKs' default credential chains
//!   call with **placeholders**: AWS IMDSv2 (`PUT /latest/api/token`, then
//!   `/latest/meta-data/iam/security-credentials/` and the role's
//!   document), GCE (`/computeMetadata/v1/instance/service-accounts/*/token`
//!   and the e-mail, scopes, project id and universe domain google-auth
//!   asks for, behind `Metadata-Flavor: Google`), and Azure's managed
//!   identity token (`/metadata/identity/oauth2/token`, behind `Metadata:
//!   true`). The SDK then calls Bedrock, Vertex or Azure OpenAI with the
//!   placeholder, and warrant puts the real credential in (or signs again);
//! - keeps IMDSv2's rules: a session token from a PUT (refused with
//!   `X-Forwarded-For`, as IMDS refuses proxied PUTs) must accompany every
//!   AWS read, so a server-side request forgery that can only make GETs
//!   gets nothing;
//! - refuses everything else (403, a text body naming warrant), unless the
//!   path matches `[metadata] passthrough`: then the request is relayed to
//!   the real service like any passthrough, and for AWS with a session
//!   token of warrant's own in place of the emulator's.
//!
//! Nothing here is ever real: the placeholders hold the word "warrant"
//! (so the agent-key check knows them), and the identity endpoints that
//! could only be answered with a real signed token (GCE `identity`, AWS's
//! signed instance identity document) are refused unless passed through.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::Duration,
};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use http::{HeaderMap, Method, StatusCode, Uri};
use jiff::Timestamp;

use crate::config::{ConfigError, ConfigErrorKind, MetadataConfig, Source};

/// The metadata services listen on port 80.
pub const PORT: u16 = 80;
/// IMDSv2 session tokens live at most six hours (AWS's limit).
const MAX_TOKEN_TTL_SECS: u64 = 21_600;
/// IMDSv2 tokens kept at most; the oldest go first. An agent making more
/// than this many sessions at once loses its oldest (it asks again).
const MAX_TOKENS: usize = 4096;

/// The placeholder credentials. They carry "warrant" so that a copy an
/// agent sends back is known for a placeholder, never a key.
pub const AWS_ACCESS_KEY_ID: &str = "WARRANTPLACEHOLDER";
pub const AWS_SECRET_ACCESS_KEY: &str = "warrant-placeholder-secret-access-key";
pub const AWS_SESSION_TOKEN: &str = "warrant-placeholder-session-token";
pub const GOOGLE_ACCESS_TOKEN: &str = "warrant-placeholder-google-access-token";
pub const AZURE_ACCESS_TOKEN: &str = "warrant-placeholder-azure-access-token";
const GCP_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// A `[metadata] passthrough` glob that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("bad passthrough glob {pattern:?}: {source}")]
pub struct BadGlob {
    pattern: String,
    #[source]
    source: globset::Error,
}

/// What the emulator makes of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Answered here.
    Respond(Reply),
    /// Relayed to the real service (an allowed path). `imds_token`: an AWS
    /// read, which needs a session token of warrant's own.
    PassThrough { imds_token: bool },
}

/// A response of the emulator's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub content_type: &'static str,
    pub body: String,
    /// What the audit line says it was: "aws-token", "aws-credentials",
    /// "gcp-token", ..., or why it was refused.
    pub what: &'static str,
}

impl Reply {
    fn text(status: StatusCode, what: &'static str, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            content_type: "text/plain",
            body: body.into(),
            what,
        }
    }

    fn json(what: &'static str, body: serde_json::Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            headers: Vec::new(),
            content_type: "application/json",
            body: body.to_string(),
            what,
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// Whether the reply refused the request.
    pub fn refused(&self) -> bool {
        !self.status.is_success()
    }
}

/// The metadata service as tagged agents see it (see the module comment).
pub struct Emulator {
    addresses: Vec<IpAddr>,
    passthrough: GlobSet,
    aws_role: String,
    gcp_account: String,
    gcp_project: Option<String>,
    lifetime: Duration,
    /// IMDSv2 session tokens handed out, and when each expires.
    tokens: Mutex<HashMap<String, Timestamp>>,
}

impl Emulator {
    /// The emulator of `[metadata]`; None when it does not intercept.
    pub fn compile(
        config: &MetadataConfig,
        source: &Source,
    ) -> Result<Option<Emulator>, ConfigError> {
        if !config.intercept {
            return Ok(None);
        }
        let mut globs = GlobSetBuilder::new();
        for pattern in &config.passthrough {
            let glob = GlobBuilder::new(pattern.get_ref())
                .literal_separator(true)
                .build()
                .map_err(|source_error| {
                    source.error_at(
                        &pattern.span(),
                        ConfigErrorKind::Invalid,
                        BadGlob {
                            pattern: pattern.get_ref().clone(),
                            source: source_error,
                        },
                    )
                })?;
            globs.add(glob);
        }
        let passthrough = globs.build().map_err(|e| {
            source.error_at_key(
                &["metadata", "passthrough"],
                ConfigErrorKind::Invalid,
                BadGlob {
                    pattern: String::new(),
                    source: e,
                },
            )
        })?;
        Ok(Some(Emulator {
            addresses: config.addresses.clone(),
            passthrough,
            aws_role: config.aws_role.clone(),
            gcp_account: config.gcp_service_account.clone(),
            gcp_project: config.gcp_project.clone(),
            lifetime: Duration::from_secs(config.placeholder_lifetime_secs.max(60)),
            tokens: Mutex::new(HashMap::new()),
        }))
    }

    /// Whether a connection to `dst` is a request to the metadata service.
    pub fn serves(&self, dst: SocketAddr) -> bool {
        let dst = crate::origin::normalize(dst);
        dst.port() == PORT && self.addresses.contains(&dst.ip())
    }

    /// What to do with one request, at `now`.
    pub fn answer(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        now: Timestamp,
    ) -> Answer {
        let path = uri.path();
        let query = uri.query().unwrap_or("");
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if path.starts_with("/latest/") {
            return self.aws(method, path, headers, now);
        }
        if path == "/" || path.starts_with("/computeMetadata/") {
            // Every GCE request says it is one (a browser-borne request
            // cannot set the header).
            if header("metadata-flavor") != Some("Google") {
                return refuse(StatusCode::FORBIDDEN, "missing Metadata-Flavor: Google");
            }
            return match self.gcp(method, path) {
                Some(reply) => Answer::Respond(reply.with("metadata-flavor", "Google")),
                None => self.other(path, false),
            };
        }
        if path == "/metadata/identity/oauth2/token" {
            if header("metadata") != Some("true") {
                return refuse(StatusCode::BAD_REQUEST, "missing Metadata: true");
            }
            return Answer::Respond(self.azure(query, now));
        }
        self.other(path, false)
    }

    /// A path the emulator does not answer: passed through when allowed.
    fn other(&self, path: &str, imds_token: bool) -> Answer {
        if plain_path(path) && self.passthrough.is_match(path) {
            return Answer::PassThrough { imds_token };
        }
        refuse(StatusCode::FORBIDDEN, "not an emulated endpoint")
    }

    fn aws(&self, method: &Method, path: &str, headers: &HeaderMap, now: Timestamp) -> Answer {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if path == "/latest/api/token" {
            if method != Method::PUT {
                return refuse(StatusCode::METHOD_NOT_ALLOWED, "IMDSv2 tokens are PUT");
            }
            // IMDS refuses token requests that went through a proxy.
            if headers.contains_key("x-forwarded-for") {
                return refuse(StatusCode::FORBIDDEN, "X-Forwarded-For on a token request");
            }
            let ttl = header("x-aws-ec2-metadata-token-ttl-seconds")
                .and_then(|t| t.trim().parse::<u64>().ok())
                .filter(|t| (1..=MAX_TOKEN_TTL_SECS).contains(t));
            let Some(ttl) = ttl else {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "X-aws-ec2-metadata-token-ttl-seconds must be 1 to 21600",
                );
            };
            let token = self.new_token(now, ttl);
            return Answer::Respond(
                Reply::text(StatusCode::OK, "aws-token", token)
                    .with("x-aws-ec2-metadata-token-ttl-seconds", ttl.to_string()),
            );
        }
        // Every read needs a session token (IMDSv2 only, as AWS advises).
        let valid = header("x-aws-ec2-metadata-token").is_some_and(|t| self.token_valid(t, now));
        if !valid {
            return refuse(StatusCode::UNAUTHORIZED, "no valid IMDSv2 session token");
        }
        if method != Method::GET {
            return refuse(StatusCode::METHOD_NOT_ALLOWED, "metadata reads are GET");
        }
        const ROLES: &str = "/latest/meta-data/iam/security-credentials/";
        match path.strip_prefix(ROLES) {
            Some("") => Answer::Respond(Reply::text(
                StatusCode::OK,
                "aws-role",
                self.aws_role.clone(),
            )),
            Some(role) if role == self.aws_role => {
                let expires = crate::clock::add(now, self.lifetime);
                Answer::Respond(Reply::json(
                    "aws-credentials",
                    serde_json::json!({
                        "Code": "Success",
                        "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                        "Type": "AWS-HMAC",
                        "AccessKeyId": AWS_ACCESS_KEY_ID,
                        "SecretAccessKey": AWS_SECRET_ACCESS_KEY,
                        "Token": AWS_SESSION_TOKEN,
                        "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    }),
                ))
            }
            Some(_) => refuse(StatusCode::NOT_FOUND, "no such role"),
            None => self.other(path, true),
        }
    }

    fn gcp(&self, method: &Method, path: &str) -> Option<Reply> {
        if method != Method::GET {
            return None;
        }
        if path == "/" {
            // google-auth's "am I on GCE?" ping.
            return Some(Reply::text(StatusCode::OK, "gcp-ping", ""));
        }
        const ACCOUNTS: &str = "/computeMetadata/v1/instance/service-accounts/";
        if let Some(rest) = path.strip_prefix(ACCOUNTS) {
            let (account, item) = rest.split_once('/').unwrap_or((rest, ""));
            let known = account == "default" || account == self.gcp_account;
            if !known {
                return None;
            }
            return match item {
                "" => Some(Reply::json(
                    "gcp-account",
                    serde_json::json!({
                        "aliases": ["default"],
                        "email": self.gcp_account,
                        "scopes": [GCP_SCOPE],
                    }),
                )),
                "email" => Some(Reply::text(
                    StatusCode::OK,
                    "gcp-account",
                    self.gcp_account.clone(),
                )),
                "scopes" => Some(Reply::text(StatusCode::OK, "gcp-account", GCP_SCOPE)),
                "token" => Some(Reply::json(
                    "gcp-token",
                    serde_json::json!({
                        "access_token": GOOGLE_ACCESS_TOKEN,
                        "expires_in": self.lifetime.as_secs(),
                        "token_type": "Bearer",
                    }),
                )),
                _ => None,
            };
        }
        match path {
            "/computeMetadata/v1/project/project-id" => self
                .gcp_project
                .as_ref()
                .map(|p| Reply::text(StatusCode::OK, "gcp-project", p.clone())),
            // Not secret, and google-auth asks before it uses a token.
            "/computeMetadata/v1/universe/universe-domain" => Some(Reply::text(
                StatusCode::OK,
                "gcp-universe",
                "googleapis.com",
            )),
            _ => None,
        }
    }

    fn azure(&self, query: &str, now: Timestamp) -> Reply {
        let resource = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "resource")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| "https://cognitiveservices.azure.com".to_owned());
        let lifetime = self.lifetime.as_secs();
        let expires_on = now.as_second().saturating_add(lifetime as i64);
        Reply::json(
            "azure-token",
            serde_json::json!({
                "access_token": AZURE_ACCESS_TOKEN,
                "client_id": "00000000-0000-0000-0000-000000000000",
                "expires_in": lifetime.to_string(),
                "expires_on": expires_on.to_string(),
                "ext_expires_in": lifetime.to_string(),
                "not_before": now.as_second().to_string(),
                "resource": resource,
                "token_type": "Bearer",
            }),
        )
    }

    fn new_token(&self, now: Timestamp, ttl: u64) -> String {
        let mut bytes = [0u8; 24];
        // The OS random source failing is not recoverable; a token of
        // zeros would still be single-process and short-lived.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        let token = format!("warrant-imds-{}", hex::encode(bytes));
        let expires = crate::clock::add(now, Duration::from_secs(ttl));
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.retain(|_, expiry| *expiry > now);
            if tokens.len() >= MAX_TOKENS
                && let Some(oldest) = tokens
                    .iter()
                    .min_by_key(|(_, expiry)| **expiry)
                    .map(|(t, _)| t.clone())
            {
                tokens.remove(&oldest);
            }
            tokens.insert(token.clone(), expires);
        }
        token
    }

    fn token_valid(&self, token: &str, now: Timestamp) -> bool {
        self.tokens
            .lock()
            .ok()
            .and_then(|tokens| tokens.get(token.trim()).copied())
            .is_some_and(|expiry| expiry > now)
    }
}

/// The destinations the eBPF programs redirect for tagged agents: the
/// metadata addresses on port 80, or none when `[metadata]` does not
/// intercept.
pub fn destinations(config: &MetadataConfig) -> Vec<SocketAddr> {
    if !config.intercept {
        return Vec::new();
    }
    config
        .addresses
        .iter()
        .map(|ip| SocketAddr::new(*ip, PORT))
        .collect()
}

fn refuse(status: StatusCode, what: &'static str) -> Answer {
    Answer::Respond(Reply::text(
        status,
        what,
        format!(
            "warrant: refused ({what}); tagged agents get placeholder credentials from the metadata service and nothing else unless [metadata] passthrough allows the path\n"
        ),
    ))
}

/// A path whose meaning cannot depend on how a server normalises it: no
/// escapes, dot segments, empty segments, backslashes, `;` or controls.
fn plain_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains(['%', '\\', ';'])
        && !path.contains("//")
        && !path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        && !path.chars().any(char::is_control)
}

#[cfg(test)]
mod tests;
