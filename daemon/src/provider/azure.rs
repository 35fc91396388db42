//! Azure OpenAI (`<resource>.openai.azure.com`) and Azure AI Foundry
//! (`<resource>.services.ai.azure.com`, `<resource>.cognitiveservices.azure.com`).
//!
//! - **Credentials.** A resource key goes in `api-key`; an Entra ID access
//!   token (client credentials through `oauth2`, or a managed identity:
//!   `credentials::azure`) in `Authorization: Bearer`. Entra tokens are
//!   JWTs and resource keys never are, so the value says which header it
//!   takes. Whatever the agent sent in either is stripped.
//! - **Errors and usage** are OpenAI's (the SDK is openai's `AzureOpenAI`).
//! - **The parse.** The model is the deployment the path names
//!   (`/openai/deployments/{deployment}/...`): it is what Azure runs,
//!   whatever the body's `model` says. Paths without one (the v1 API
//!   `/openai/v1/...`, the responses API, Foundry's `/models/...`) name the
//!   deployment in the body's `model`. `api-version` passes through as the
//!   agent sent it.

use http::{HeaderMap, HeaderName, StatusCode};

use super::{
    AgentHeaders, AmbiguousRequest, Api, AuthSettings, Request, RequestHead, SpliceError,
    UsageFormat, bearer, openai, raw, request::json_request,
};
use crate::secret::Secret;

pub struct Azure;

impl Api for Azure {
    fn credential_headers(&self) -> &'static [&'static str] {
        &["api-key", "authorization"]
    }

    fn inject(
        &self,
        headers: &mut HeaderMap,
        credential: &Secret,
        _: &AuthSettings,
        _: AgentHeaders,
    ) -> Result<(), SpliceError> {
        // Entra ID tokens are JWTs (base64url of '{"'); resource keys are
        // hex or base62 and never start so.
        if credential.expose().starts_with("eyJ") {
            headers.insert(http::header::AUTHORIZATION, bearer(credential)?);
        } else {
            headers.insert(HeaderName::from_static("api-key"), raw(credential)?);
        }
        Ok(())
    }

    fn error_body(&self, status: StatusCode, kind: &str, message: &str) -> serde_json::Value {
        openai::error_body(status, kind, message)
    }

    fn parse(
        &self,
        head: &RequestHead<'_>,
        body_prefix: &[u8],
    ) -> Result<Request, AmbiguousRequest> {
        let mut request = json_request(head, body_prefix);
        if let Some(deployment) = deployment_of(&request.path) {
            // The deployment must be what Azure routes, whatever it does
            // with escapes and dot segments.
            let path = &request.path;
            let dotted = path
                .split('/')
                .skip(1)
                .any(|s| s.is_empty() || s == "." || s == "..");
            if dotted || path.contains(['%', '\\', ';']) {
                return Err(AmbiguousRequest::ModelPath {
                    segment: path.clone(),
                    why: "an escape, a backslash, a ; parameter or an empty or dot segment",
                });
            }
            request.model = Some(deployment.to_owned());
        }
        Ok(request)
    }

    fn usage(&self) -> &'static UsageFormat {
        &openai::USAGE
    }
}

/// The `{deployment}` of `/openai/deployments/{deployment}/...`.
fn deployment_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/openai/deployments/")?;
    rest.split('/').next().filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployment_is_the_model() {
        assert_eq!(
            deployment_of("/openai/deployments/gpt-4o-prod/chat/completions"),
            Some("gpt-4o-prod")
        );
        assert_eq!(deployment_of("/openai/v1/chat/completions"), None);
        assert_eq!(deployment_of("/openai/deployments//chat/completions"), None);
    }
}
