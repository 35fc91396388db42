//! `azure-managed-identity`: an Entra ID access token of the Azure VM's
//! managed identity, from the instance metadata service (opt in: only a
//! configured credential contacts it). Azure OpenAI takes it as
//! `Authorization: Bearer`. (Entra ID client credentials need no source of
//! their own: they are `oauth2` with the tenant's token endpoint.)
//!
//! Errors name the URL, the status and the error code, never a token.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use jiff::Timestamp;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{
    oauth::{OAuthError, TokenClient},
    provider::{IssueContext, IssueError, IssueFuture, Issued, Provider},
};
use crate::secret::Secret;

/// The audience Azure OpenAI and AI Foundry accept.
pub const DEFAULT_RESOURCE: &str = "https://cognitiveservices.azure.com";
/// The IMDS API version of the token endpoint (the one every VM serves).
const API_VERSION: &str = "2018-02-01";

#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    #[error(transparent)]
    Http(#[from] OAuthError),
    #[error("{url} answered {status}: {code}")]
    Refused {
        url: String,
        status: u16,
        /// IMDS's `error` code, or "no error code".
        code: String,
    },
    #[error("{url} answered an unreadable token response")]
    BadResponse { url: String },
}

impl From<AzureError> for IssueError {
    fn from(error: AzureError) -> IssueError {
        IssueError::Azure(error)
    }
}

pub struct ManagedIdentityProvider {
    pub client: TokenClient,
    /// Base URL, no trailing slash (default the link-local address).
    pub endpoint: String,
    pub resource: String,
    /// A user-assigned identity's client id; None: the system-assigned one.
    pub client_id: Option<String>,
    pub timeout: Duration,
}

/// IMDS writes its numbers as strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Number {
    Text(String),
    Int(u64),
}

impl Number {
    fn get(&self) -> Option<u64> {
        match self {
            Number::Text(text) => text.trim().parse().ok(),
            Number::Int(n) => Some(*n),
        }
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<Number>,
    #[serde(default)]
    expires_on: Option<Number>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl ManagedIdentityProvider {
    async fn fetch(&self, now: Timestamp) -> Result<Issued, AzureError> {
        let mut url = format!(
            "{}/metadata/identity/oauth2/token?api-version={API_VERSION}&resource={}",
            self.endpoint,
            encode(&self.resource)
        );
        if let Some(id) = &self.client_id {
            url.push_str("&client_id=");
            url.push_str(&encode(id));
        }
        let request = http::Request::get(&url)
            .header("metadata", "true")
            .body(Full::new(Bytes::new()))
            .map_err(|source| OAuthError::BadUrl {
                url: url.clone(),
                source,
            })?;
        let (status, body) = self.client.send(request, self.timeout).await?;
        let body = Zeroizing::new(body.to_vec());
        if !status.is_success() {
            let code = serde_json::from_slice::<ErrorAnswer>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| "no error code".to_owned());
            return Err(AzureError::Refused {
                url,
                status: status.as_u16(),
                code,
            });
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| AzureError::BadResponse { url: url.clone() })?;
        if answer.access_token.is_empty() {
            return Err(AzureError::BadResponse { url });
        }
        let expires_at = match (
            answer.expires_on.as_ref().and_then(Number::get),
            answer.expires_in.as_ref().and_then(Number::get),
        ) {
            (Some(epoch), _) => i64::try_from(epoch)
                .ok()
                .and_then(|s| Timestamp::from_second(s).ok()),
            (None, Some(secs)) => Some(crate::clock::add(now, Duration::from_secs(secs))),
            (None, None) => None,
        };
        Ok(Issued {
            value: Secret::new(answer.access_token),
            expires_at,
        })
    }
}

impl Provider for ManagedIdentityProvider {
    fn issue<'a>(&'a self, ctx: &'a IssueContext<'a>) -> IssueFuture<'a> {
        Box::pin(async move { Ok(self.fetch(ctx.now).await?) })
    }
}
