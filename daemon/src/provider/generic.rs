//! A generic gateway: the credential goes in the configured `header`, as
//! `value_template` with `{credential}` replaced. Most internal LLM
//! gateways are OpenAI-compatible, so errors, the request parse and usage
//! are OpenAI's (a gateway that reports usage otherwise is metered as
//! unknown, charged as reserved, never as zero).

use http::{HeaderMap, StatusCode};
use zeroize::Zeroizing;

use super::{
    AgentHeaders, Api, AuthSettings, Request, SpliceError, Unmetered, UsageFormat, openai,
    sensitive,
};
use crate::secret::Secret;

pub struct Generic;

impl Api for Generic {
    fn credential_headers(&self) -> &'static [&'static str] {
        // Only the configured header (added by `Provider`).
        &[]
    }

    fn inject(
        &self,
        headers: &mut HeaderMap,
        credential: &Secret,
        auth: &AuthSettings,
        _: AgentHeaders,
    ) -> Result<(), SpliceError> {
        if let Some(name) = &auth.header {
            let text = Zeroizing::new(
                auth.value_template
                    .replace("{credential}", credential.expose()),
            );
            headers.insert(name.clone(), sensitive(text, credential)?);
        }
        Ok(())
    }

    fn error_body(&self, status: StatusCode, kind: &str, message: &str) -> serde_json::Value {
        openai::error_body(status, kind, message)
    }

    fn usage(&self) -> &'static UsageFormat {
        &openai::USAGE
    }

    fn unmetered(&self, request: &Request) -> Option<Unmetered> {
        // OpenAI-compatible gateways take OpenAI's async endpoints too.
        openai::unmetered(&request.path)
    }

    fn usage_option(&self, request: &Request, body: &[u8]) -> Option<Vec<u8>> {
        openai::usage_option(request, body)
    }
}
