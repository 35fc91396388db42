//! Azure OpenAI (`<resource>.openai.azure.com`) and Azure AI Foundry
//! (`<resource>.services.ai.azure.com`, `<resource>.cognitiveservices.azure.com`).
//!
//! - **Credentials.** A resource key goes in `api-key`; an Entra ID access
//!   token (client credentials through `oauth2`, or a managed identity:
//!   `credentials::azure`) in `Authorization: Bearer`. Entra tokens are
//!   JWTs and resource keys never are, so the value says which header it
//!   takes. Whatever the agent sent in either is stripped.
//! - **Errors and usage** are OpenAI's (the SDK is openai's `AzureOpenAI`).
//! - **The parse** is the shared strict one (`request`). The model is the
//!   deployment the canonical path names
//!   (`/openai/deployments/{deployment}/...`): it is what Azure runs,
//!   whatever the body's `model` says. Paths without one (the v1 API
//!   `/openai/v1/...`, the responses API, Foundry's `/models/...`) name the
//!   deployment in the body's `model`. `api-version` passes through as the
//!   agent sent it. Batches, fine-tuning and the like are OpenAI's
//!   unmetered work at Azure's paths.

use http::{HeaderMap, HeaderName, StatusCode};

use super::{
    AgentHeaders, AmbiguousRequest, Api, AuthSettings, Request, RequestHead, SpliceError,
    Unmetered, UsageFormat, bearer, openai, raw, request::json_request,
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
        // The path is canonical (decoded; no dot segments, encoded
        // separators or empty segments), so the deployment it names is the
        // one Azure routes.
        let mut request = json_request(head, body_prefix)?;
        if let Some(deployment) = deployment_of(&request.path) {
            request.model = Some(deployment.to_owned());
        }
        Ok(request)
    }

    fn unmetered(&self, request: &Request) -> Option<Unmetered> {
        // Azure's paths are OpenAI's below `/openai` (`/openai/batches`) or
        // `/openai/v1` (the v1 API): the same work escapes metering.
        let path = &request.path;
        let rest = path
            .strip_prefix("/openai/v1/")
            .or_else(|| path.strip_prefix("/openai/"))?;
        openai::unmetered(&format!("/v1/{rest}"))
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parsed(method: http::Method, path: &str) -> Request {
        let uri: http::Uri = path.parse().unwrap();
        let headers = HeaderMap::new();
        let head = RequestHead {
            method: &method,
            uri: &uri,
            headers: &headers,
        };
        Azure.parse(&head, b"").unwrap()
    }

    #[test]
    fn batches_and_fine_tuning_at_azure_paths_are_unmetered() {
        use http::Method;
        for (path, kind) in [
            ("/openai/batches", Some(Unmetered::Batch)),
            ("/openai/v1/batches", Some(Unmetered::Batch)),
            ("/openai/fine_tuning/jobs", Some(Unmetered::FineTuning)),
            ("/openai/deployments/gpt-4o/chat/completions", None),
        ] {
            assert_eq!(Azure.unmetered(&parsed(Method::POST, path)), kind, "{path}");
        }
    }

    #[test]
    fn the_deployment_is_the_models_decoded_and_ambiguous_paths_are_refused() {
        let request = parsed(
            http::Method::POST,
            "/openai/deployments/gpt%2D4o/chat/completions?api-version=2024-10-21",
        );
        assert_eq!(request.model.as_deref(), Some("gpt-4o"));
        assert_eq!(request.query.as_deref(), Some("api-version=2024-10-21"));
        for bad in [
            "/openai/deployments/allowed/..%2F..%2Fdeployments/other/chat/completions",
            "/openai/deployments/allowed%2F..%2Fother/chat/completions",
            "/openai/deployments/a/../b/chat/completions",
            "/openai/deployments//chat/completions",
        ] {
            let uri: http::Uri = bad.parse().unwrap();
            let headers = HeaderMap::new();
            let head = RequestHead {
                method: &http::Method::POST,
                uri: &uri,
                headers: &headers,
            };
            assert!(Azure.parse(&head, b"").is_err(), "{bad}");
        }
    }

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
