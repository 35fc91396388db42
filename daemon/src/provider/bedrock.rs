//! Amazon Bedrock runtime (`bedrock-runtime.<region>.amazonaws.com`):
//! InvokeModel, InvokeModelWithResponseStream, Converse, ConverseStream.
//!
//! - **Credentials.** Agents sign with placeholder AWS keys (SigV4). A
//!   proxy that swaps a key breaks such a signature, so warrant drops every
//!   part of the agent's (`Authorization`, `X-Amz-Date`,
//!   `X-Amz-Security-Token`, `X-Amz-Content-Sha256`, query-string auth) and
//!   signs the request again with the real keys, using AWS's own signer
//!   (`aws-sigv4`), never hand-written code. SigV4 hashes the payload, so
//!   the proxy hands over the whole body ([`Api::signs`]; bodies above
//!   `[proxy] max_signed_body_bytes` are refused). The region is the host
//!   name's (`[[upstream]] region` for hosts that do not name it). A
//!   Bedrock API key (a `Token` credential) goes in `Authorization: Bearer`
//!   instead, unsigned, as AWS's SDKs send it.
//! - **Errors** are restJson1's: `{"message"}` with the error type in
//!   `__type`, which botocore and the anthropic SDK read.
//! - **The parse.** The model is the path's `/model/{modelId}/...` segment,
//!   percent-decoded (model ids contain `:` and may be ARNs, whose `/` the
//!   SDKs encode as `%2F`). The segment must decode one way only: no dot
//!   segments, no control bytes, valid UTF-8. The output cap is
//!   InvokeModel's native `max_tokens` (read by the JSON parse) or
//!   Converse's `inferenceConfig.maxTokens`.
//! - **Usage.** Converse reports `usage.inputTokens/outputTokens`;
//!   InvokeModel's body is the model's own (Anthropic's `usage`), and its
//!   headers carry `X-Amzn-Bedrock-Input-Token-Count` and `-Output-`;
//!   streams are `application/vnd.amazon.eventstream` (read by
//!   `usage::eventstream`): ConverseStream's `metadata` event, or
//!   InvokeModelWithResponseStream chunks carrying the model's own events
//!   and, last, `amazon-bedrock-invocationMetrics`.

use std::time::SystemTime;

use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign},
    sign::v4,
};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;

use super::{
    AgentHeaders, AmbiguousRequest, Api, AuthSettings, Request, RequestHead, SpliceError, Usage,
    UsageFields, UsageFormat, bearer, request::json_request, usage::or_zero,
};
use crate::{
    credentials::{CredentialKind, aws::AwsKeys},
    secret::Secret,
};

pub struct Bedrock;

/// The SigV4 signing name of the Bedrock runtime.
const SIGNING_NAME: &str = "bedrock";

/// Headers of the agent's own SigV4 signature: meaningless once the request
/// is signed again (and stale ones would be signed in).
const SIGNATURE_HEADERS: &[&str] = &["x-amz-date", "x-amz-content-sha256"];

/// Query-string (presigned) auth parameters of the agent's signature.
const SIGNATURE_QUERY: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
];

impl Api for Bedrock {
    fn credential_headers(&self) -> &'static [&'static str] {
        &["authorization", "x-amz-security-token"]
    }

    fn credential_query(&self) -> &'static [&'static str] {
        // The two parameters that name keys; the rest of a presigned URL's
        // auth goes when the request is signed again (`sign`).
        &["X-Amz-Credential", "X-Amz-Security-Token"]
    }

    fn key_in<'a>(&self, header: &str, value: &'a [u8]) -> &'a [u8] {
        // A SigV4 Authorization names its key as Credential=<id>/<scope>:
        // that id is what is judged (the signature is no key).
        if header == "authorization"
            && let Some(at) = memchr::memmem::find(value, b"Credential=")
        {
            let rest = &value[at + "Credential=".len()..];
            let end = rest
                .iter()
                .position(|b| matches!(b, b'/' | b',' | b' '))
                .unwrap_or(rest.len());
            return &rest[..end];
        }
        value
    }

    fn inject(
        &self,
        headers: &mut HeaderMap,
        credential: &Secret,
        auth: &AuthSettings,
        _: AgentHeaders,
    ) -> Result<(), SpliceError> {
        // AWS keys sign (`sign`, once the request is final); a Bedrock API
        // key is a bearer token.
        if auth.credential == CredentialKind::Token {
            headers.insert(http::header::AUTHORIZATION, bearer(credential)?);
        }
        Ok(())
    }

    fn signs(&self, auth: &AuthSettings) -> bool {
        auth.credential == CredentialKind::AwsKeys
    }

    fn sign(
        &self,
        parts: &mut http::request::Parts,
        body: &[u8],
        credential: &Secret,
        auth: &AuthSettings,
        now: SystemTime,
    ) -> Result<(), SpliceError> {
        if auth.credential != CredentialKind::AwsKeys {
            return Ok(());
        }
        let keys = AwsKeys::from_secret(credential)
            .map_err(|_| SpliceError::InvalidCredential(credential.fingerprint()))?;
        let region = auth
            .region
            .as_deref()
            .ok_or_else(|| SpliceError::NoRegion(auth.host.clone()))?;
        for name in SIGNATURE_HEADERS {
            while parts.headers.remove(*name).is_some() {}
        }
        parts.uri = super::strip_query(&parts.uri, SIGNATURE_QUERY)?;
        let identity = aws_credential_types::Credentials::new(
            keys.access_key_id.as_str(),
            keys.secret_access_key.as_str(),
            keys.session_token.as_deref().map(|t| t.as_str().to_owned()),
            None,
            "warrant",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name(SIGNING_NAME)
            .time(now)
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| SpliceError::Sign(e.to_string()))?
            .into();
        let uri = parts.uri.to_string();
        // Headers that are not text cannot be signed; AWS verifies only the
        // headers a signature names, so leaving them out is safe.
        let headers: Vec<(&str, &str)> = parts
            .headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
            .collect();
        let signable = SignableRequest::new(
            parts.method.as_str(),
            uri,
            headers.into_iter(),
            SignableBody::Bytes(body),
        )
        .map_err(|e| SpliceError::Sign(e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| SpliceError::Sign(e.to_string()))?
            .into_parts();
        let (signed, _query) = instructions.into_parts();
        for header in signed {
            let mut value = HeaderValue::from_str(header.value())
                .map_err(|_| SpliceError::InvalidCredential(credential.fingerprint()))?;
            // The session token and the signature: kept out of h2 tables.
            value.set_sensitive(true);
            parts.headers.insert(header.name(), value);
        }
        Ok(())
    }

    fn error_body(&self, status: StatusCode, _: &str, message: &str) -> serde_json::Value {
        serde_json::json!({ "__type": error_type(status), "message": message })
    }

    fn parse(
        &self,
        head: &RequestHead<'_>,
        body_prefix: &[u8],
    ) -> Result<Request, AmbiguousRequest> {
        let mut request = json_request(head, body_prefix);
        if let Some(target) = path_target(head.uri.path())? {
            request.model = Some(target.model);
            request.stream = target.stream;
        } else if head.uri.path() == "/async-invoke" {
            // StartAsyncInvoke names its model in the body.
            request.model = async_model(body_prefix)?;
        }
        if let Some(cap) = converse_cap(body_prefix)? {
            let old = request.max_output_tokens.unwrap_or(0);
            request.max_output_tokens = Some(old.max(cap));
        }
        Ok(request)
    }

    fn usage(&self) -> &'static UsageFormat {
        &USAGE
    }
}

/// The restJson1 error type botocore maps to its exception classes.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "ValidationException",
        401 | 403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        413 => "ValidationException",
        429 => "ThrottlingException",
        503 | 529 => "ServiceUnavailableException",
        504 => "ModelTimeoutException",
        _ => "InternalServerException",
    }
}

/// What the path names.
struct Target {
    model: String,
    stream: bool,
}

/// `/model/{modelId}/{operation}`: the model id, decoded, and whether the
/// operation streams. Other paths (guardrails, async invocations) name no
/// model.
fn path_target(path: &str) -> Result<Option<Target>, AmbiguousRequest> {
    let mut segments = path.split('/');
    if segments.next() != Some("") || segments.next() != Some("model") {
        return Ok(None);
    }
    let (Some(raw), Some(operation), None) = (segments.next(), segments.next(), segments.next())
    else {
        return Ok(None);
    };
    let model = decode_segment(raw)?;
    let stream = operation.ends_with("-stream");
    Ok(Some(Target { model, stream }))
}

/// One path segment, percent-decoded, refused when it could mean two things.
fn decode_segment(raw: &str) -> Result<String, AmbiguousRequest> {
    let ambiguous = |why: &'static str| AmbiguousRequest::ModelPath {
        segment: raw.to_owned(),
        why,
    };
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ambiguous("a malformed percent-escape"))?;
                out.push(hex);
                i += 3;
            }
            b'\\' => return Err(ambiguous("a backslash")),
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(out).map_err(|_| ambiguous("invalid UTF-8"))?;
    if text.is_empty() || text == "." || text == ".." {
        return Err(ambiguous("an empty or dot segment"));
    }
    if text.chars().any(char::is_control) {
        return Err(ambiguous("a control character"));
    }
    Ok(text)
}

/// Reads `T` from the start of a body prefix: None when the prefix is cut
/// off (or not JSON) before the fields are read; refused when the fields
/// are there but could be read two ways (a duplicate, a wrong type), as
/// Bedrock would act on the last of duplicates.
fn body_fields<T: serde::de::DeserializeOwned>(
    body_prefix: &[u8],
    field: &'static str,
) -> Result<Option<T>, AmbiguousRequest> {
    let mut de = serde_json::Deserializer::from_slice(body_prefix);
    match T::deserialize(&mut de) {
        Ok(fields) => Ok(Some(fields)),
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            Err(AmbiguousRequest::DuplicateField { field })
        }
        Err(_) => Ok(None),
    }
}

/// StartAsyncInvoke's `modelId`, when the body prefix has it.
fn async_model(body_prefix: &[u8]) -> Result<Option<String>, AmbiguousRequest> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        model_id: Option<String>,
    }
    Ok(body_fields::<Body>(body_prefix, "modelId")?.and_then(|b| b.model_id))
}

/// Converse's `inferenceConfig.maxTokens`, when the body prefix has it.
fn converse_cap(body_prefix: &[u8]) -> Result<Option<u64>, AmbiguousRequest> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        inference_config: Option<InferenceConfig>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct InferenceConfig {
        max_tokens: Option<u64>,
    }
    Ok(body_fields::<Body>(body_prefix, "inferenceConfig")?
        .and_then(|b| b.inference_config)
        .and_then(|c| c.max_tokens))
}

static USAGE: UsageFormat = UsageFormat {
    usage: tokens,
    // Anthropic's message_delta inside a chunk; ConverseStream's metadata
    // event (its event type stands for the kind).
    final_count: |kind| matches!(kind, Some("message_delta" | "metadata")),
    last_event_only: false,
    json_array_stream: |_| false,
    header_usage: Some(header_usage),
};

/// Converse's camelCase counts, else the model's own (Anthropic's, with
/// its cache counts; OpenAI's for OpenAI-compatible models).
fn tokens(fields: &UsageFields) -> Usage {
    if fields.converse_input_tokens.is_some() || fields.converse_output_tokens.is_some() {
        let cache_read = or_zero(fields.converse_cache_read_input_tokens);
        return Usage {
            input_tokens: or_zero(fields.converse_input_tokens)
                .saturating_add(cache_read)
                .saturating_add(or_zero(fields.converse_cache_write_input_tokens)),
            cached_input_tokens: cache_read,
            output_tokens: or_zero(fields.converse_output_tokens),
        };
    }
    Usage {
        input_tokens: or_zero(fields.input_tokens.or(fields.prompt_tokens))
            .saturating_add(or_zero(fields.cache_creation_input_tokens))
            .saturating_add(or_zero(fields.cache_read_input_tokens)),
        cached_input_tokens: or_zero(fields.cache_read_input_tokens),
        output_tokens: or_zero(fields.output_tokens.or(fields.completion_tokens)),
    }
}

/// InvokeModel's token-count headers (every model, not only those whose
/// body reports usage).
fn header_usage(headers: &HeaderMap) -> Option<Usage> {
    let count =
        |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
    let input = count("x-amzn-bedrock-input-token-count");
    let output = count("x-amzn-bedrock-output-token-count");
    if input.is_none() && output.is_none() {
        return None;
    }
    Some(Usage {
        input_tokens: input.unwrap_or(0),
        cached_input_tokens: count("x-amzn-bedrock-cache-read-input-token-count").unwrap_or(0),
        output_tokens: output.unwrap_or(0),
    })
}

/// The region of a Bedrock runtime host name:
/// `bedrock-runtime[-fips].<region>.amazonaws.com[.cn]`.
pub fn region_of_host(host: &str) -> Option<String> {
    let mut labels = host.split('.');
    let service = labels.next()?;
    if service != "bedrock-runtime" && service != "bedrock-runtime-fips" {
        return None;
    }
    let region = labels.next()?;
    let rest: Vec<&str> = labels.collect();
    let known_suffix = rest == ["amazonaws", "com"] || rest == ["amazonaws", "com", "cn"];
    let plausible = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    (known_suffix && plausible).then(|| region.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_region_comes_from_the_host_name() {
        assert_eq!(
            region_of_host("bedrock-runtime.us-east-1.amazonaws.com").as_deref(),
            Some("us-east-1")
        );
        assert_eq!(
            region_of_host("bedrock-runtime-fips.us-west-2.amazonaws.com").as_deref(),
            Some("us-west-2")
        );
        assert_eq!(
            region_of_host("bedrock-runtime.cn-north-1.amazonaws.com.cn").as_deref(),
            Some("cn-north-1")
        );
        assert_eq!(region_of_host("bedrock.us-east-1.amazonaws.com"), None);
        assert_eq!(
            region_of_host("bedrock-runtime.us-east-1.example.com"),
            None
        );
    }

    #[test]
    fn the_model_id_is_the_decoded_path_segment() {
        let target = path_target("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse")
            .unwrap()
            .unwrap();
        assert_eq!(target.model, "anthropic.claude-3-haiku-20240307-v1:0");
        assert!(!target.stream);
        // The anthropic SDK leaves ':' as it is; the same model either way.
        let target = path_target(
            "/model/anthropic.claude-3-haiku-20240307-v1:0/invoke-with-response-stream",
        )
        .unwrap()
        .unwrap();
        assert_eq!(target.model, "anthropic.claude-3-haiku-20240307-v1:0");
        assert!(target.stream);
        // ARNs: '/' encoded inside the one segment.
        let arn = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream";
        let target = path_target(arn).unwrap().unwrap();
        assert_eq!(
            target.model,
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0"
        );
        assert!(target.stream);
        assert!(
            path_target("/guardrail/g/version/1/apply")
                .unwrap()
                .is_none()
        );
        assert!(path_target("/model/m/converse/extra").unwrap().is_none());
    }

    #[test]
    fn a_model_segment_that_decodes_two_ways_is_refused() {
        for bad in [
            "/model/%2E%2E/converse",
            "/model/../converse",
            "/model/a%0Ab/converse",
            "/model/a%zz/converse",
            "/model/a%C3/converse",
            "/model/a\\b/converse",
        ] {
            assert!(path_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn async_invocations_name_their_model_in_the_body() {
        assert_eq!(
            async_model(br#"{"modelId":"amazon.nova-reel-v1:0","modelInput":{}}"#)
                .unwrap()
                .as_deref(),
            Some("amazon.nova-reel-v1:0")
        );
        assert!(async_model(br#"{"modelId":"a","modelId":"b"}"#).is_err());
    }

    #[test]
    fn converse_caps_are_read_from_inference_config() {
        let body = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":300,"temperature":0.5}}"#;
        assert_eq!(converse_cap(body).unwrap(), Some(300));
        assert_eq!(converse_cap(br#"{"messages":[]}"#).unwrap(), None);
        // Cut off by the read limit: nothing read, nothing refused.
        assert_eq!(converse_cap(br#"{"messages":[{"role":"us"#).unwrap(), None);
        // Bedrock acts on the last of duplicates: refused, not guessed at.
        for ambiguous in [
            &br#"{"inferenceConfig":{"maxTokens":10,"maxTokens":100000}}"#[..],
            br#"{"inferenceConfig":{"maxTokens":10},"inferenceConfig":{"maxTokens":100000}}"#,
            br#"{"inferenceConfig":{"maxTokens":"lots"}}"#,
        ] {
            assert!(converse_cap(ambiguous).is_err());
        }
    }

    #[test]
    fn token_count_headers_are_usage() {
        let mut headers = HeaderMap::new();
        headers.insert("x-amzn-bedrock-input-token-count", "12".parse().unwrap());
        headers.insert("x-amzn-bedrock-output-token-count", "7".parse().unwrap());
        assert_eq!(
            header_usage(&headers),
            Some(Usage {
                input_tokens: 12,
                cached_input_tokens: 0,
                output_tokens: 7
            })
        );
        assert_eq!(header_usage(&HeaderMap::new()), None);
    }
}
