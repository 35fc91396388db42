//! Google OAuth access tokens (Vertex AI takes them as `Authorization:
//! Bearer`), from three sources:
//!
//! - `gcp-service-account`: a service-account key file (root-only JSON, as
//!   the console downloads it). A JWT signed with its key is exchanged at
//!   its `token_uri` (the RFC 7523 JWT bearer grant, Google's
//!   "service account" flow); jsonwebtoken signs it.
//! - `gcp-metadata`: the GCE metadata server's token for the instance's
//!   service account (opt in: only a configured credential contacts it).
//! - `gcp-workload-identity`: workload identity federation. A subject
//!   token (an OIDC token of this host, from a file or another credential)
//!   is exchanged at Google's STS (RFC 8693, reusing `oauth`), then, when a
//!   `service_account` is named, exchanged again for that account's token
//!   through the IAM Credentials API (`generateAccessToken`).
//!
//! Errors name files, URLs, statuses and OAuth error codes, never a key, a
//! token or a response body.

use std::{path::PathBuf, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    file::{FileError, check_root_only},
    oauth::{OAuthError, OAuthProvider, TokenClient, token_response},
    provider::{IssueContext, IssueError, IssueFuture, Issued, Provider},
};
use crate::secret::Secret;

/// Vertex AI (and every Google Cloud API) accepts this scope.
pub const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Google's STS.
pub const DEFAULT_STS_URL: &str = "https://sts.googleapis.com/v1/token";
/// The IAM Credentials API (service account impersonation).
pub const DEFAULT_IAM_CREDENTIALS: &str = "https://iamcredentials.googleapis.com";
/// What STS issues for impersonation and direct access alike.
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// A service-account assertion lives this long (Google's maximum).
const ASSERTION_LIFETIME_SECONDS: i64 = 3600;
/// The JWT bearer grant (RFC 7523 §2.1).
const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Why no Google token could be had. Never carries a key or a token.
#[derive(Debug, thiserror::Error)]
pub enum GcpError {
    #[error(transparent)]
    KeyFile(#[from] FileError),
    /// serde_json's messages can quote the value (the key): only the class
    /// and position.
    #[error(
        "{} is not a service-account key ({category:?} error at line {line} column {column}); expected the JSON key file Google issues",
        path.display()
    )]
    BadKeyFile {
        path: PathBuf,
        category: serde_json::error::Category,
        line: usize,
        column: usize,
    },
    #[error("{} is a {kind:?} key, not a \"service_account\" key", path.display())]
    NotServiceAccount { path: PathBuf, kind: String },
    #[error("{}: token_uri {uri:?} must be https (http only on loopback)", path.display())]
    BadTokenUri { path: PathBuf, uri: String },
    #[error("{} holds no RSA private key in PEM: {source}", path.display())]
    BadPrivateKey {
        path: PathBuf,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error("cannot sign the service-account assertion: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error(transparent)]
    Token(#[from] OAuthError),
    #[error("{url} answered {status} to generateAccessToken")]
    ImpersonationRefused { url: String, status: u16 },
    #[error("{url} answered an unreadable generateAccessToken response")]
    ImpersonationBadResponse { url: String },
}

impl From<GcpError> for IssueError {
    fn from(error: GcpError) -> IssueError {
        IssueError::Gcp(error)
    }
}

/// The fields of a service-account key file that are used.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: String,
    private_key: Zeroizing<String>,
    #[serde(default)]
    private_key_id: Option<String>,
    token_uri: String,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

/// `gcp-service-account`.
pub struct ServiceAccountProvider {
    pub client: TokenClient,
    pub key_path: PathBuf,
    /// root (0) in the daemon; tests pass their own uid.
    pub key_owner_uid: u32,
    pub scope: String,
    pub timeout: Duration,
}

impl ServiceAccountProvider {
    /// Reads the key file (checked root-only each time: it may be replaced).
    fn read_key(&self) -> Result<KeyFile, GcpError> {
        let path = &self.key_path;
        check_root_only(path, self.key_owner_uid)?;
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| FileError::Read {
            path: path.clone(),
            source,
        })?);
        let key: KeyFile = serde_json::from_slice(&bytes).map_err(|e| GcpError::BadKeyFile {
            path: path.clone(),
            category: e.classify(),
            line: e.line(),
            column: e.column(),
        })?;
        if key.kind != "service_account" {
            return Err(GcpError::NotServiceAccount {
                path: path.clone(),
                kind: key.kind,
            });
        }
        // The key file names where its assertion goes: a tampered file must
        // not send a signed assertion to plain http off the host.
        if super::settings::check_token_url(&key.token_uri).is_err() {
            return Err(GcpError::BadTokenUri {
                path: path.clone(),
                uri: key.token_uri,
            });
        }
        Ok(key)
    }

    async fn fetch(&self, now: Timestamp) -> Result<Issued, GcpError> {
        let key = self.read_key()?;
        let signing_key = jsonwebtoken::EncodingKey::from_rsa_pem(key.private_key.as_bytes())
            .map_err(|source| GcpError::BadPrivateKey {
                path: self.key_path.clone(),
                source,
            })?;
        let iat = now.as_second();
        let claims = AssertionClaims {
            iss: &key.client_email,
            scope: &self.scope,
            aud: &key.token_uri,
            iat,
            exp: iat + ASSERTION_LIFETIME_SECONDS,
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid.clone_from(&key.private_key_id);
        let assertion = Zeroizing::new(
            jsonwebtoken::encode(&header, &claims, &signing_key).map_err(GcpError::Sign)?,
        );
        let form = Zeroizing::new(format!(
            "grant_type={}&assertion={}",
            form_urlencoded::byte_serialize(GRANT_JWT_BEARER.as_bytes()).collect::<String>(),
            assertion.as_str(),
        ));
        let (status, body) = self
            .client
            .post_form(&key.token_uri, None, form, self.timeout)
            .await?;
        let body = Zeroizing::new(body.to_vec());
        Ok(token_response(&key.token_uri, status, &body, now)?)
    }
}

impl Provider for ServiceAccountProvider {
    fn issue<'a>(&'a self, ctx: &'a IssueContext<'a>) -> IssueFuture<'a> {
        Box::pin(async move { Ok(self.fetch(ctx.now).await?) })
    }
}

/// `gcp-metadata`: the instance service account's token.
pub struct MetadataProvider {
    pub client: TokenClient,
    /// Base URL, no trailing slash (default the link-local address).
    pub endpoint: String,
    /// "default", or the account's e-mail.
    pub service_account: String,
    /// None: the scopes the instance was given.
    pub scope: Option<String>,
    pub timeout: Duration,
}

impl MetadataProvider {
    async fn fetch(&self, now: Timestamp) -> Result<Issued, GcpError> {
        let mut url = format!(
            "{}/computeMetadata/v1/instance/service-accounts/{}/token",
            self.endpoint,
            form_urlencoded::byte_serialize(self.service_account.as_bytes()).collect::<String>()
        );
        if let Some(scope) = &self.scope {
            url.push_str("?scopes=");
            url.extend(form_urlencoded::byte_serialize(scope.as_bytes()));
        }
        let request = http::Request::get(&url)
            .header("metadata-flavor", "Google")
            .body(Full::new(Bytes::new()))
            .map_err(|source| OAuthError::BadUrl {
                url: url.clone(),
                source,
            })?;
        let (status, body) = self.client.send(request, self.timeout).await?;
        let body = Zeroizing::new(body.to_vec());
        Ok(token_response(&url, status, &body, now)?)
    }
}

impl Provider for MetadataProvider {
    fn issue<'a>(&'a self, ctx: &'a IssueContext<'a>) -> IssueFuture<'a> {
        Box::pin(async move { Ok(self.fetch(ctx.now).await?) })
    }
}

/// `gcp-workload-identity`: STS, then optionally impersonation.
pub struct WorkloadIdentityProvider {
    /// The STS exchange (grant token-exchange, audience, scope).
    pub sts: OAuthProvider,
    pub client: TokenClient,
    /// The service account to impersonate.
    pub service_account: Option<String>,
    /// Base URL of the IAM Credentials API.
    pub iam_endpoint: String,
    pub scope: String,
    pub timeout: Duration,
}

#[derive(Serialize)]
struct GenerateAccessToken<'a> {
    scope: [&'a str; 1],
    lifetime: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeneratedAccessToken {
    access_token: String,
    expire_time: String,
}

impl WorkloadIdentityProvider {
    async fn fetch(&self, ctx: &IssueContext<'_>) -> Result<Issued, GcpError> {
        let federated = self.sts.issue_token(ctx).await?;
        let Some(account) = &self.service_account else {
            return Ok(federated);
        };
        let url = format!(
            "{}/v1/projects/-/serviceAccounts/{}:generateAccessToken",
            self.iam_endpoint,
            form_urlencoded::byte_serialize(account.as_bytes()).collect::<String>()
        );
        let body = serde_json::to_vec(&GenerateAccessToken {
            scope: [&self.scope],
            lifetime: "3600s",
        })
        .unwrap_or_default();
        let bearer = Zeroizing::new(format!("Bearer {}", federated.value.expose()));
        let request = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::AUTHORIZATION, bearer.as_str())
            .body(Full::new(Bytes::from(body)))
            .map_err(|source| OAuthError::BadUrl {
                url: url.clone(),
                source,
            })?;
        let (status, body) = self.client.send(request, self.timeout).await?;
        let body = Zeroizing::new(body.to_vec());
        if !status.is_success() {
            return Err(GcpError::ImpersonationRefused {
                url,
                status: status.as_u16(),
            });
        }
        let generated: GeneratedAccessToken = serde_json::from_slice(&body)
            .map_err(|_| GcpError::ImpersonationBadResponse { url: url.clone() })?;
        let expires_at = generated
            .expire_time
            .parse::<Timestamp>()
            .map_err(|_| GcpError::ImpersonationBadResponse { url: url.clone() })?;
        if generated.access_token.is_empty() {
            return Err(GcpError::ImpersonationBadResponse { url });
        }
        Ok(Issued {
            value: Secret::new(generated.access_token),
            expires_at: Some(expires_at),
        })
    }
}

impl Provider for WorkloadIdentityProvider {
    fn issue<'a>(&'a self, ctx: &'a IssueContext<'a>) -> IssueFuture<'a> {
        Box::pin(async move { Ok(self.fetch(ctx).await?) })
    }
}
