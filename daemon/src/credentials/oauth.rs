//! `oauth2` and `token-exchange` credentials: short-lived tokens from a token
//! endpoint.
//!
//! - oauth2: the client-credentials grant (RFC 6749 §4.4);
//! - token-exchange: RFC 8693 token exchange, or the RFC 7523 jwt-bearer
//!   grant, with a subject token read from a file or another credential (the
//!   instance identity token plugs in here later).
//!
//! Client authentication (RFC 6749 §2.3, OpenID Connect Core §9):
//! `client_secret_basic`, `client_secret_post` (the secret is another
//! configured credential), `private_key_jwt` (RFC 7523 §2.2: a short JWT
//! signed with a root-only key file), or `none`.
//!
//! Error messages carry the HTTP status and the OAuth `error` code, never a
//! request or response body: both hold secrets.

use std::{path::PathBuf, time::Duration};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    CredentialError,
    file::{FileError, check_root_only},
    provider::{IssueContext, IssueFuture, Issued, Provider},
};
use crate::secret::Secret;

/// Why a token endpoint gave no token. Carries the URL, the HTTP status and
/// the OAuth `error` code, never a request or response body.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("cannot load the system's root certificates: {0}")]
    RootCertificates(#[source] std::io::Error),
    #[error("bad token_url {url:?}: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: http::Error,
    },
    #[error("token endpoint {url} unreachable: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("token endpoint {url}: reading the response: {source}")]
    ReadResponse {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("token endpoint {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("cannot read subject token {}: {source}", path.display())]
    ReadSubjectToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("subject token {} is not UTF-8", path.display())]
    SubjectTokenNotUtf8 { path: PathBuf },
    #[error("subject token: {0}")]
    SubjectCredential(#[source] CredentialError),
    #[error("client secret: {0}")]
    ClientSecret(#[source] CredentialError),
    #[error(transparent)]
    KeyFile(#[from] FileError),
    #[error("signing_alg {0:?} is not supported for private_key_jwt")]
    UnsupportedAlgorithm(jsonwebtoken::Algorithm),
    #[error("{} is not a {alg:?} private key in PEM: {source}", path.display())]
    BadKey {
        path: PathBuf,
        alg: jsonwebtoken::Algorithm,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    #[error("cannot sign the client assertion: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error("token endpoint {url} answered {status}: {code}")]
    Refused {
        url: String,
        status: http::StatusCode,
        /// The OAuth `error` code, or "no OAuth error code".
        code: String,
    },
    #[error(
        "token endpoint {url} answered an unreadable token response ({category:?} error at column {column})"
    )]
    BadResponse {
        url: String,
        category: serde_json::error::Category,
        column: usize,
    },
    #[error("token endpoint {url} issued an empty access_token")]
    EmptyToken { url: String },
}

pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Lifetime of a private_key_jwt client assertion: long enough for clock
/// skew, short enough that a captured assertion is soon useless.
const ASSERTION_LIFETIME_SECONDS: i64 = 120;
/// Token responses larger than this are refused.
const MAX_RESPONSE: usize = 256 * 1024;

/// The HTTPS client for token endpoints (system roots; plain http is
/// accepted by validation only for loopback endpoints, i.e. tests).
#[derive(Clone)]
pub struct TokenClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl TokenClient {
    pub fn new() -> Result<TokenClient, OAuthError> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(OAuthError::RootCertificates)?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(TokenClient { client })
    }

    /// POSTs a form and returns the status and body.
    pub(super) async fn post_form(
        &self,
        url: &str,
        authorization: Option<&str>,
        form: Zeroizing<String>,
        timeout: Duration,
    ) -> Result<(http::StatusCode, Bytes), OAuthError> {
        let mut request = http::Request::post(url)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json");
        if let Some(value) = authorization {
            request = request.header(http::header::AUTHORIZATION, value);
        }
        // The body buffer (which may hold a client secret or subject token)
        // is owned by hyper once sent and is not zeroized; the form it is
        // copied from is.
        let request = request
            .body(Full::new(Bytes::from(form.as_bytes().to_vec())))
            .map_err(|source| OAuthError::BadUrl {
                url: url.to_owned(),
                source,
            })?;
        self.send(request, timeout).await
    }

    /// Sends `request` and returns the status and the body (at most
    /// `MAX_RESPONSE` bytes), all within `timeout`. Also the cloud sources'
    /// client (metadata services and STS), so they share its TLS roots and
    /// its errors, which name the URL and never a body.
    pub(super) async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(http::StatusCode, Bytes), OAuthError> {
        let url = request.uri().to_string();
        let exchange =
            async {
                let response = self.client.request(request).await.map_err(|source| {
                    OAuthError::Unreachable {
                        url: url.clone(),
                        source,
                    }
                })?;
                let status = response.status();
                let body = Limited::new(response.into_body(), MAX_RESPONSE)
                    .collect()
                    .await
                    .map_err(|source| OAuthError::ReadResponse {
                        url: url.clone(),
                        source,
                    })?
                    .to_bytes();
                Ok::<_, OAuthError>((status, body))
            };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| OAuthError::Timeout {
                url: url.clone(),
                timeout,
            })?
    }
}

/// Reads a token endpoint's answer (RFC 6749 §5.1 and §5.2): the access
/// token and its expiry from a 2xx, the OAuth `error` code otherwise.
pub(super) fn token_response(
    url: &str,
    status: http::StatusCode,
    body: &[u8],
    now: jiff::Timestamp,
) -> Result<Issued, OAuthError> {
    if !status.is_success() {
        let code = serde_json::from_slice::<TokenErrorResponse>(body)
            .map(|e| e.error)
            .unwrap_or_else(|_| "no OAuth error code".to_owned());
        return Err(OAuthError::Refused {
            url: url.to_owned(),
            status,
            code,
        });
    }
    let token: TokenResponse =
        serde_json::from_slice(body).map_err(|e| OAuthError::BadResponse {
            url: url.to_owned(),
            category: e.classify(),
            column: e.column(),
        })?;
    if token.access_token.is_empty() {
        return Err(OAuthError::EmptyToken {
            url: url.to_owned(),
        });
    }
    let expires_at = token
        .expires_in
        .map(|secs| crate::clock::add(now, Duration::from_secs(secs)));
    Ok(Issued {
        value: Secret::new(token.access_token),
        expires_at,
    })
}

/// How the client authenticates to the token endpoint.
pub enum ClientAuth {
    None,
    /// The secret is the named credential.
    SecretBasic(String),
    SecretPost(String),
    PrivateKeyJwt(PrivateKeyJwt),
}

/// private_key_jwt: the key that signs each client assertion.
pub struct PrivateKeyJwt {
    pub key_path: PathBuf,
    pub key_owner_uid: u32,
    pub alg: jsonwebtoken::Algorithm,
    pub key_id: Option<String>,
    /// Default: the token endpoint URL (RFC 7523 §3).
    pub audience: Option<String>,
}

/// Where a subject token comes from.
pub enum SubjectSource {
    File(PathBuf),
    Credential(String),
}

pub enum Grant {
    ClientCredentials,
    TokenExchange {
        subject: SubjectSource,
        subject_token_type: String,
        requested_token_type: Option<String>,
    },
    JwtBearer {
        subject: SubjectSource,
    },
}

pub struct OAuthProvider {
    pub client: TokenClient,
    pub token_url: String,
    pub client_id: Option<String>,
    pub auth: ClientAuth,
    pub grant: Grant,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    pub timeout: Duration,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct TokenErrorResponse {
    error: String,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
    jti: String,
}

fn urlencode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A subject token, read now from its file or its credential.
pub(super) async fn subject_token(
    source: &SubjectSource,
    ctx: &IssueContext<'_>,
) -> Result<Secret, OAuthError> {
    match source {
        SubjectSource::File(path) => {
            let bytes = Zeroizing::new(tokio::fs::read(path).await.map_err(|source| {
                OAuthError::ReadSubjectToken {
                    path: path.clone(),
                    source,
                }
            })?);
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| OAuthError::SubjectTokenNotUtf8 { path: path.clone() })?;
            Ok(Secret::new(text.trim().to_owned()))
        }
        SubjectSource::Credential(name) => ctx
            .others
            .current(name)
            .await
            .map(|s| Secret::clone(&s))
            .map_err(OAuthError::SubjectCredential),
    }
}

impl OAuthProvider {
    /// A private_key_jwt client assertion, signed now with `key`.
    fn client_assertion(
        &self,
        ctx: &IssueContext<'_>,
        key: &PrivateKeyJwt,
    ) -> Result<Zeroizing<String>, OAuthError> {
        let PrivateKeyJwt {
            key_path,
            key_owner_uid,
            alg,
            key_id,
            audience,
        } = key;
        check_root_only(key_path, *key_owner_uid)?;
        let pem = Zeroizing::new(std::fs::read(key_path).map_err(|source| FileError::Read {
            path: key_path.clone(),
            source,
        })?);
        use jsonwebtoken::Algorithm as A;
        let key = match alg {
            A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
                jsonwebtoken::EncodingKey::from_rsa_pem(&pem)
            }
            A::ES256 | A::ES384 => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
            A::EdDSA => jsonwebtoken::EncodingKey::from_ed_pem(&pem),
            other => return Err(OAuthError::UnsupportedAlgorithm(*other)),
        }
        .map_err(|source| OAuthError::BadKey {
            path: key_path.clone(),
            alg: *alg,
            source,
        })?;
        let client_id = self.client_id.as_deref().unwrap_or_default();
        let iat = ctx.now.as_second();
        let claims = AssertionClaims {
            iss: client_id,
            sub: client_id,
            aud: audience.as_deref().unwrap_or(&self.token_url),
            iat,
            exp: iat + ASSERTION_LIFETIME_SECONDS,
            // Unique per assertion so the server can refuse replays.
            jti: format!("{:032x}", fastrand::u128(..)),
        };
        let mut header = jsonwebtoken::Header::new(*alg);
        header.kid = key_id.clone();
        jsonwebtoken::encode(&header, &claims, &key)
            .map(Zeroizing::new)
            .map_err(OAuthError::Sign)
    }

    pub(super) async fn issue_token(&self, ctx: &IssueContext<'_>) -> Result<Issued, OAuthError> {
        let mut form = Form::default();
        self.add_grant(&mut form, ctx).await?;
        for (key, value) in [
            ("scope", &self.scope),
            ("audience", &self.audience),
            ("resource", &self.resource),
        ] {
            if let Some(value) = value {
                form.add(key, value);
            }
        }
        let authorization = self.add_client_auth(&mut form, ctx).await?;
        let (status, body) = self
            .client
            .post_form(
                &self.token_url,
                authorization.as_deref().map(String::as_str),
                form.0,
                self.timeout,
            )
            .await?;
        let body = Zeroizing::new(body.to_vec());
        token_response(&self.token_url, status, &body, ctx.now)
    }

    /// The grant's fields (RFC 6749 §4.4, RFC 8693, RFC 7523).
    async fn add_grant(&self, form: &mut Form, ctx: &IssueContext<'_>) -> Result<(), OAuthError> {
        match &self.grant {
            Grant::ClientCredentials => form.add("grant_type", GRANT_CLIENT_CREDENTIALS),
            Grant::TokenExchange {
                subject,
                subject_token_type,
                requested_token_type,
            } => {
                let token = subject_token(subject, ctx).await?;
                form.add("grant_type", GRANT_TOKEN_EXCHANGE);
                form.add("subject_token", token.expose());
                form.add("subject_token_type", subject_token_type);
                if let Some(t) = requested_token_type {
                    form.add("requested_token_type", t);
                }
            }
            Grant::JwtBearer { subject } => {
                let token = subject_token(subject, ctx).await?;
                form.add("grant_type", GRANT_JWT_BEARER);
                form.add("assertion", token.expose());
            }
        }
        Ok(())
    }

    /// How the client authenticates: in the form, or as the returned
    /// Authorization header (client_secret_basic).
    async fn add_client_auth(
        &self,
        form: &mut Form,
        ctx: &IssueContext<'_>,
    ) -> Result<Option<Zeroizing<String>>, OAuthError> {
        match &self.auth {
            ClientAuth::None => {
                if let Some(id) = &self.client_id {
                    form.add("client_id", id);
                }
            }
            ClientAuth::SecretBasic(name) | ClientAuth::SecretPost(name) => {
                let secret = ctx
                    .others
                    .current(name)
                    .await
                    .map_err(OAuthError::ClientSecret)?;
                let id = self.client_id.as_deref().unwrap_or_default();
                if matches!(self.auth, ClientAuth::SecretBasic(_)) {
                    // RFC 6749 §2.3.1: both parts are form-urlencoded first.
                    let pair =
                        Zeroizing::new(format!("{}:{}", urlencode(id), urlencode(secret.expose())));
                    let encoded = base64::engine::general_purpose::STANDARD.encode(pair.as_bytes());
                    return Ok(Some(Zeroizing::new(format!("Basic {encoded}"))));
                }
                form.add("client_id", id);
                form.add("client_secret", secret.expose());
            }
            ClientAuth::PrivateKeyJwt(key) => {
                let assertion = self.client_assertion(ctx, key)?;
                if let Some(id) = &self.client_id {
                    form.add("client_id", id);
                }
                form.add("client_assertion_type", CLIENT_ASSERTION_TYPE);
                form.add("client_assertion", &assertion);
            }
        }
        Ok(None)
    }
}

/// An application/x-www-form-urlencoded body, wiped when dropped (it may
/// hold a client secret or a subject token).
#[derive(Default)]
struct Form(Zeroizing<String>);

impl Form {
    fn add(&mut self, key: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0.push_str(key);
        self.0.push('=');
        self.0.push_str(&urlencode(value));
    }
}

impl Provider for OAuthProvider {
    fn issue<'a>(&'a self, ctx: &'a IssueContext<'a>) -> IssueFuture<'a> {
        Box::pin(async move { Ok(self.issue_token(ctx).await?) })
    }
}
