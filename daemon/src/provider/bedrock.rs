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
//! - **The parse** is the shared strict one (`request`), but for the path's
//!   `/model/{modelId}/...` segment: the model, percent-decoded (model ids
//!   contain `:` and may be ARNs, whose `/` the SDKs encode as `%2F`; see
//!   [`canonical`]). The segment must decode one way only. The output cap
//!   is InvokeModel's native `max_tokens` (read by the JSON parse) or
//!   Converse's `inferenceConfig.maxTokens`; StartAsyncInvoke
//!   (`/async-invoke`) names its model in the body, and is work no
//!   response meters (`Unmetered::LongRunning`).
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
    AgentHeaders, AmbiguousRequest, Api, AuthSettings, PathProblem, Request, RequestHead,
    SpliceError, Unmetered, Usage, UsageFields, UsageFormat, bearer, canonical_path,
    request::json_request_at, usage::or_zero,
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
        let raw = head.uri.path();
        let (path, target) = canonical(raw).map_err(|problem| AmbiguousRequest::Path {
            path: raw.to_owned(),
            problem,
        })?;
        let mut request = json_request_at(head, path, body_prefix)?;
        if let Some(target) = target {
            request.model = Some(target.model);
            request.stream = target.stream;
        } else if request.path == ASYNC_INVOKE {
            // StartAsyncInvoke names its model in the body.
            request.model = async_model(body_prefix)?;
        }
        if let Some(cap) = converse_cap(body_prefix)? {
            let old = request.max_output_tokens.unwrap_or(0);
            request.max_output_tokens = Some(old.max(cap));
        }
        Ok(request)
    }

    fn unmetered(&self, request: &Request) -> Option<Unmetered> {
        // StartAsyncInvoke's job runs after this request returns, its
        // output written to S3: no response meters it.
        (request.method == http::Method::POST && request.path == ASYNC_INVOKE)
            .then_some(Unmetered::LongRunning)
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

/// StartAsyncInvoke's path.
const ASYNC_INVOKE: &str = "/async-invoke";

/// What the path names.
#[derive(Debug)]
struct Target {
    model: String,
    stream: bool,
}

/// Bedrock's canonical path and, for `/model/{modelId}/{operation}`, the
/// model id it names and whether the operation streams.
///
/// The shared `canonical_path` refuses an encoded `/` everywhere, since a
/// server may decode it and route otherwise. Bedrock's model ids may be
/// ARNs, whose `/` every SDK encodes as `%2F` inside the one `{modelId}`
/// segment, and Bedrock reads that segment as one label. So here the
/// segment is decoded on its own, with the same refusals as the shared
/// parse (a backslash, `;`, a bad escape, a control byte, invalid UTF-8)
/// plus an escaped `%` and empty or dot parts between its slashes; the
/// rest of the path goes through `canonical_path`. In the canonical path
/// the id's `/` stays `%2F`, so that `/model/*/converse` matches every
/// model and the path has one reading; the model id itself is decoded.
fn canonical(raw: &str) -> Result<(String, Option<Target>), PathProblem> {
    let segments: Vec<&str> = raw.split('/').collect();
    let ["", "model", id, operation] = segments.as_slice() else {
        return Ok((canonical_path(raw)?, None));
    };
    let model = decode_model_id(id)?;
    // The operation, checked as any path is.
    let rest = canonical_path(&format!("/{operation}"))?;
    let operation = &rest[1..];
    if operation.is_empty() {
        return Err(PathProblem::EmptySegment);
    }
    let path = format!("/model/{}/{operation}", model.replace('/', "%2F"));
    let stream = operation.ends_with("-stream");
    Ok((path, Some(Target { model, stream })))
}

/// One `{modelId}` segment, percent-decoded (see [`canonical`]).
fn decode_model_id(raw: &str) -> Result<String, PathProblem> {
    if raw.contains('\\') {
        return Err(PathProblem::Backslash);
    }
    if raw.contains(';') {
        return Err(PathProblem::Parameter);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let byte = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(PathProblem::BadEscape)?;
        match byte {
            b'\\' => return Err(PathProblem::EncodedSeparator),
            b';' => return Err(PathProblem::Parameter),
            // A `%` in the id would make `%2F` in the canonical path read
            // two ways; no model id has one.
            b'%' => return Err(PathProblem::BadEscape),
            _ => out.push(byte),
        }
        i += 3;
    }
    if out.iter().any(u8::is_ascii_control) {
        return Err(PathProblem::ControlByte);
    }
    let text = String::from_utf8(out).map_err(|_| PathProblem::NotUtf8)?;
    for part in text.split('/') {
        match part {
            "" => return Err(PathProblem::EmptySegment),
            "." | ".." => return Err(PathProblem::DotSegment),
            _ => {}
        }
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
            Err(AmbiguousRequest::DuplicateField {
                field: field.to_owned(),
            })
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
        let path_target = |raw: &str| canonical(raw).map(|(_, target)| target);
        let (path, target) =
            canonical("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse").unwrap();
        assert_eq!(
            path,
            "/model/anthropic.claude-3-haiku-20240307-v1:0/converse"
        );
        let target = target.unwrap();
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
        let (path, target) = canonical(arn).unwrap();
        let target = target.unwrap();
        assert_eq!(
            target.model,
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0"
        );
        // The canonical path keeps the id's '/' encoded: one segment.
        assert_eq!(
            path,
            "/model/arn:aws:bedrock:us-east-1:123456789012:inference-profile%2Fus.anthropic.claude-3-5-sonnet-20240620-v1:0/converse-stream"
        );
        assert!(target.stream);
        assert!(
            path_target("/guardrail/g/version/1/apply")
                .unwrap()
                .is_none()
        );
        // Anything else is checked as every path is.
        assert!(path_target("/model/m/converse/extra").unwrap().is_none());
        assert_eq!(
            canonical("/guardrail/a%2Fb/apply").unwrap_err(),
            PathProblem::EncodedSeparator
        );
    }

    #[test]
    fn a_model_segment_that_decodes_two_ways_is_refused() {
        for bad in [
            "/model/%2E%2E/converse",
            "/model/../converse",
            "/model/a%2F..%2Fb/converse",
            "/model/a%2F%2Fb/converse",
            "/model/a%2F/converse",
            "/model/a%0Ab/converse",
            "/model/a%zz/converse",
            "/model/a%C3/converse",
            "/model/a%25b/converse",
            "/model/a%5Cb/converse",
            "/model/a%3Bb/converse",
            "/model/a\\b/converse",
            "/model/m/%2E%2E",
            "/model/m/converse;x",
            "/model//converse",
        ] {
            assert!(canonical(bad).is_err(), "{bad}");
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
