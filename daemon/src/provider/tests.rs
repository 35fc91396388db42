#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::{config::Config, secret};

const REAL: &str = "sk-real-credential-0123456789abcdefABCDEF";

fn provider(upstream_toml: &str) -> Provider {
    let text = format!(
        "[[credential]]\nname = \"c\"\nsource = \"file\"\npath = \"/x\"\n\n[[upstream]]\ncredential = \"c\"\n{upstream_toml}\n"
    );
    let config = Config::parse(&text, "test").unwrap();
    let kind = crate::credentials::kind_named(&config.credentials, "c");
    Provider::from_config(&config.upstreams[0], kind).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn values<'a>(map: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    map.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

fn secret() -> Secret {
    Secret::new(REAL.to_owned())
}

#[test]
fn openai_replaces_every_duplicate_in_any_letter_case_with_one_bearer() {
    let s = provider("host = \"api.openai.com\"\nscheme = \"openai\"");
    let mut h = headers(&[
        ("Authorization", "Bearer placeholder"),
        ("AUTHORIZATION", "Bearer placeholder-2"),
        ("authorization", "Basic Zm9vOmJhcg=="),
        ("Api-Key", "placeholder"),
        ("content-type", "application/json"),
    ]);
    let uri: Uri = "/v1/chat/completions".parse().unwrap();
    s.splice(&mut h, &uri, &secret()).unwrap();
    assert_eq!(values(&h, "authorization"), vec![format!("Bearer {REAL}")]);
    assert!(h.get("api-key").is_none());
    assert_eq!(values(&h, "content-type"), vec!["application/json"]);
    assert!(h.get("authorization").unwrap().is_sensitive());
}

#[test]
fn anthropic_keeps_the_agents_form_and_strips_both_header_names() {
    let s = provider("host = \"api.anthropic.com\"\nscheme = \"anthropic\"");
    let uri: Uri = "/v1/messages".parse().unwrap();

    let mut bearer = headers(&[("authorization", "Bearer placeholder")]);
    s.splice(&mut bearer, &uri, &secret()).unwrap();
    assert_eq!(
        values(&bearer, "authorization"),
        vec![format!("Bearer {REAL}")]
    );
    assert!(bearer.get("x-api-key").is_none());

    let mut x_api_key = headers(&[
        ("X-Api-Key", "placeholder"),
        ("x-api-key", "placeholder"),
        ("Authorization", "Bearer placeholder"),
    ]);
    s.splice(&mut x_api_key, &uri, &secret()).unwrap();
    assert_eq!(values(&x_api_key, "x-api-key"), vec![REAL]);
    assert!(x_api_key.get("authorization").is_none());

    let mut neither = HeaderMap::new();
    s.splice(&mut neither, &uri, &secret()).unwrap();
    assert_eq!(values(&neither, "x-api-key"), vec![REAL]);
}

#[test]
fn anthropic_auth_forces_one_form_and_oauth_tokens_always_go_as_bearer() {
    let uri: Uri = "/v1/messages".parse().unwrap();
    let forced = provider(
        "host = \"api.anthropic.com\"\nscheme = \"anthropic\"\nanthropic_auth = \"x-api-key\"",
    );
    let mut h = headers(&[("authorization", "Bearer placeholder")]);
    forced.splice(&mut h, &uri, &secret()).unwrap();
    assert_eq!(values(&h, "x-api-key"), vec![REAL]);
    assert!(h.get("authorization").is_none());

    let oauth = Secret::new("sk-ant-oat01-abcdef".to_owned());
    let mut h = headers(&[("x-api-key", "placeholder")]);
    forced.splice(&mut h, &uri, &oauth).unwrap();
    assert_eq!(
        values(&h, "authorization"),
        vec!["Bearer sk-ant-oat01-abcdef"]
    );
    assert!(h.get("x-api-key").is_none());

    let jwt = Secret::new("eyJhbGciOiJSUzI1NiJ9.e30.sig".to_owned());
    let mut h = headers(&[("x-api-key", "placeholder")]);
    forced.splice(&mut h, &uri, &jwt).unwrap();
    assert_eq!(
        values(&h, "authorization"),
        vec!["Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig"]
    );
}

#[test]
fn gemini_sets_x_goog_api_key_and_removes_every_key_query_parameter() {
    let s = provider("host = \"generativelanguage.googleapis.com\"\nscheme = \"gemini\"");
    let mut h = headers(&[("x-goog-api-key", "placeholder"), ("X-Goog-Api-Key", "p2")]);
    let uri: Uri = "https://generativelanguage.googleapis.com/v1beta/models/m:generateContent?key=placeholder&alt=sse&%6Bey=other&keys=kept"
        .parse()
        .unwrap();
    let uri = s.splice(&mut h, &uri, &secret()).unwrap();
    assert_eq!(values(&h, "x-goog-api-key"), vec![REAL]);
    assert_eq!(uri.query(), Some("alt=sse&keys=kept"));
    assert_eq!(uri.host(), Some("generativelanguage.googleapis.com"));

    let only_key: Uri = "/v1beta/models?key=placeholder".parse().unwrap();
    let uri = s
        .splice(&mut HeaderMap::new(), &only_key, &secret())
        .unwrap();
    assert_eq!(uri.to_string(), "/v1beta/models");
}

#[test]
fn generic_uses_the_configured_header_and_template() {
    let s = provider(
        "host = \"gw.internal\"\nscheme = \"generic\"\nheader = \"X-Gateway-Token\"\nvalue_template = \"Token {credential}\"",
    );
    let mut h = headers(&[("x-gateway-token", "placeholder"), ("X-GATEWAY-TOKEN", "p")]);
    s.splice(&mut h, &"/".parse().unwrap(), &secret()).unwrap();
    assert_eq!(values(&h, "x-gateway-token"), vec![format!("Token {REAL}")]);
}

#[test]
fn real_looking_agent_keys_are_findings_with_fingerprints_only() {
    let s = provider("host = \"api.openai.com\"\nscheme = \"openai\"");
    let leaked = "sk-proj-AbCdEf0123456789AbCdEf0123456789";
    let h = headers(&[
        ("Authorization", "Bearer placeholder"),
        ("authorization", &format!("Bearer {leaked}")),
    ]);
    let findings = s.inspect(&h, &"/".parse().unwrap());
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].location, "authorization");
    assert_eq!(
        findings[0].fingerprint,
        secret::fingerprint(leaked.as_bytes())
    );
    assert!(!format!("{findings:?}").contains(leaked));

    let g = provider("host = \"generativelanguage.googleapis.com\"\nscheme = \"gemini\"");
    let uri: Uri = "/v1?key=AIzaSyA0123456789abcdefghijklmnopqrstu"
        .parse()
        .unwrap();
    assert_eq!(g.inspect(&HeaderMap::new(), &uri).len(), 1);
}

#[test]
fn placeholders_are_not_findings() {
    for value in [
        "placeholder",
        "Bearer placeholder",
        "sk-placeholder-0123456789abcdefghijkl",
        "dummy",
        "x",
        "",
        "Bearer sk-...",
        "YOUR_API_KEY",
    ] {
        assert!(!looks_like_real_key(value.as_bytes()), "{value}");
    }
    for value in [
        "sk-ant-api03-AbCdEf0123456789",
        "Bearer sk-proj-AbCdEf0123456789xyz",
        "AIzaSyA0123456789abcdefghijklmnopqrstu",
        "3f9a0c1b2d4e5f60718293a4b5c6d7e8",
    ] {
        assert!(looks_like_real_key(value.as_bytes()), "{value}");
    }
}

#[test]
fn error_bodies_have_each_providers_shape() {
    let openai: serde_json::Value =
        serde_json::from_str(&error_body(Scheme::OpenAi, StatusCode::BAD_GATEWAY, "m")).unwrap();
    assert_eq!(openai["error"]["message"], "m");
    assert!(openai["error"]["type"].is_string() && openai["error"]["code"].is_string());
    let anthropic: serde_json::Value =
        serde_json::from_str(&error_body(Scheme::Anthropic, StatusCode::BAD_GATEWAY, "m")).unwrap();
    assert_eq!(anthropic["type"], "error");
    assert_eq!(anthropic["error"]["message"], "m");
    let gemini: serde_json::Value = serde_json::from_str(&error_body(
        Scheme::Gemini,
        StatusCode::GATEWAY_TIMEOUT,
        "m",
    ))
    .unwrap();
    assert_eq!(gemini["error"]["code"], 504);
    assert_eq!(gemini["error"]["status"], "DEADLINE_EXCEEDED");
}

#[test]
fn each_scheme_reads_its_model_and_the_query_loses_its_credential() {
    let gemini = provider("host = \"generativelanguage.googleapis.com\"\nscheme = \"gemini\"");
    let uri: Uri = "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key=placeholder"
        .parse()
        .unwrap();
    let headers = HeaderMap::new();
    let head = RequestHead {
        method: &http::Method::POST,
        uri: &uri,
        headers: &headers,
    };
    // The path's model (a body naming another is refused: see gemini.rs).
    let request = gemini
        .parse(&head, br#"{"model":"models/gemini-2.0-flash"}"#)
        .unwrap();
    assert_eq!(request.model.as_deref(), Some("gemini-2.0-flash"));
    assert!(request.stream);
    assert_eq!(request.query.as_deref(), Some("alt=sse"));
    // Not a model path: the body's model.
    let files: Uri = "/v1beta/files".parse().unwrap();
    let head = RequestHead {
        uri: &files,
        ..head
    };
    assert_eq!(
        gemini
            .parse(&head, br#"{"model":"m"}"#)
            .unwrap()
            .model
            .as_deref(),
        Some("m")
    );
    // OpenAI never reads the model from the path.
    let openai = provider("host = \"api.openai.com\"\nscheme = \"openai\"");
    let request = openai.parse(&head, b"{}").unwrap();
    assert_eq!((request.model, request.stream), (None, false));
}

#[test]
fn an_unknown_scheme_or_anthropic_auth_is_a_config_error_naming_the_choices() {
    let error = |upstream: &str| {
        let text = format!(
            "[[credential]]\nname = \"c\"\nsource = \"file\"\npath = \"/x\"\n\n[[upstream]]\ncredential = \"c\"\nhost = \"h.example\"\n{upstream}\n"
        );
        crate::config::Config::parse(&text, "test")
            .err()
            .unwrap()
            .to_string()
    };
    let scheme = error("scheme = \"mistral\"");
    assert!(
        scheme.contains("mistral") && scheme.contains("gemini"),
        "{scheme}"
    );
    assert!(scheme.contains("test:9:"), "{scheme}");
    let auth = error("scheme = \"anthropic\"\nanthropic_auth = \"basic\"");
    assert!(
        auth.contains("basic") && auth.contains("x-api-key"),
        "{auth}"
    );
}

/// A provider whose credential is AWS keys (`format = "aws"`).
fn bedrock(host: &str) -> Provider {
    let text = format!(
        "[[credential]]\nname = \"c\"\nsource = \"file\"\npath = \"/x\"\nformat = \"aws\"\n\n[[upstream]]\ncredential = \"c\"\nhost = \"{host}\"\nscheme = \"bedrock\"\n"
    );
    let config = Config::parse(&text, "test").unwrap();
    let kind = crate::credentials::kind_named(&config.credentials, "c");
    assert_eq!(kind, crate::credentials::CredentialKind::AwsKeys);
    Provider::from_config(&config.upstreams[0], kind).unwrap()
}

fn aws_keys() -> Secret {
    crate::credentials::aws::AwsKeys::from_json(
        br#"{"Version":1,"AccessKeyId":"AKIDREALREALREAL","SecretAccessKey":"real-secret-access-key","SessionToken":"real-session-token"}"#,
    )
    .unwrap()
    .to_secret()
}

/// The request head as the proxy has it when it signs: the credential
/// spliced, the URI absolute.
fn signed_parts(
    provider: &Provider,
    uri: &str,
    pairs: &[(&str, &str)],
    body: &[u8],
) -> http::request::Parts {
    let (mut parts, ()) = http::Request::post(uri).body(()).unwrap().into_parts();
    parts.headers = headers(pairs);
    let relative: Uri = parts
        .uri
        .path_and_query()
        .unwrap()
        .as_str()
        .parse()
        .unwrap();
    let stripped = provider
        .splice(&mut parts.headers, &relative, &aws_keys())
        .unwrap();
    let mut absolute = parts.uri.clone().into_parts();
    absolute.path_and_query = stripped.path_and_query().cloned();
    parts.uri = Uri::from_parts(absolute).unwrap();
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_893_456_000);
    provider.sign(&mut parts, body, &aws_keys(), when).unwrap();
    parts
}

#[test]
fn bedrock_drops_the_agents_signature_and_signs_with_the_real_keys_for_the_hosts_region() {
    let s = bedrock("bedrock-runtime.eu-west-3.amazonaws.com");
    assert!(s.signs_body());
    let agent = [
        (
            "authorization",
            "AWS4-HMAC-SHA256 Credential=placeholder/20200101/eu-west-3/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=0000",
        ),
        ("x-amz-date", "20200101T000000Z"),
        ("x-amz-security-token", "placeholder-token"),
        (
            "X-Amz-Content-Sha256",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        ("content-type", "application/json"),
    ];
    let uri = "https://bedrock-runtime.eu-west-3.amazonaws.com/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse?X-Amz-Signature=00&x=1";
    let parts = signed_parts(&s, uri, &agent, b"{\"messages\":[]}");
    let auth = values(&parts.headers, "authorization");
    assert_eq!(auth.len(), 1);
    assert!(
        auth[0].starts_with(
            "AWS4-HMAC-SHA256 Credential=AKIDREALREALREAL/20300101/eu-west-3/bedrock/aws4_request"
        ),
        "{}",
        auth[0]
    );
    assert!(
        auth[0].contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token"),
        "{}",
        auth[0]
    );
    assert_eq!(
        values(&parts.headers, "x-amz-date"),
        vec!["20300101T000000Z"]
    );
    assert_eq!(
        values(&parts.headers, "x-amz-security-token"),
        vec!["real-session-token"]
    );
    assert!(parts.headers.get("x-amz-content-sha256").is_none());
    assert!(parts.headers.get("authorization").unwrap().is_sensitive());
    // The agent's query-string auth is gone; the rest of the query stays.
    assert_eq!(parts.uri.query(), Some("x=1"));
    // The body is signed: another body, another signature.
    let other = signed_parts(&s, uri, &agent, b"{\"messages\":[1]}");
    assert_ne!(values(&other.headers, "authorization"), auth);
}

#[test]
fn bedrock_judges_the_key_id_of_a_sigv4_authorization_not_its_signature() {
    let s = bedrock("bedrock-runtime.us-east-1.amazonaws.com");
    let uri: Uri = "/model/m/converse".parse().unwrap();
    let placeholder = headers(&[(
        "authorization",
        "AWS4-HMAC-SHA256 Credential=placeholder/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=host;x-amz-date, Signature=4f7e1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8",
    )]);
    assert!(s.inspect(&placeholder, &uri).is_empty());
    let real = headers(&[(
        "authorization",
        "AWS4-HMAC-SHA256 Credential=AKIA4REALKEYID7Q2XYZ/20260101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=00",
    )]);
    let findings = s.inspect(&real, &uri);
    assert_eq!(findings.len(), 1);
    assert_eq!(
        findings[0].fingerprint,
        secret::fingerprint(b"AKIA4REALKEYID7Q2XYZ")
    );
}

#[test]
fn bedrock_needs_a_region_and_aws_keys_sign_only_bedrock() {
    let text = "[[credential]]\nname = \"c\"\nsource = \"file\"\npath = \"/x\"\nformat = \"aws\"\n\n[[upstream]]\ncredential = \"c\"\nhost = \"vpce-1.bedrock.example\"\nscheme = \"bedrock\"\n";
    let config = Config::parse(text, "test").unwrap();
    let kind = crate::credentials::CredentialKind::AwsKeys;
    assert!(matches!(
        Provider::from_config(&config.upstreams[0], kind),
        Err(SpliceError::NoRegion(_))
    ));
    let openai = Config::parse(
        &text
            .replace("vpce-1.bedrock.example", "api.openai.com")
            .replace("bedrock\"", "openai\""),
        "test",
    )
    .unwrap();
    assert!(matches!(
        Provider::from_config(&openai.upstreams[0], kind),
        Err(SpliceError::AwsKeysElsewhere { .. })
    ));
    // A Bedrock API key is a bearer token, not signed.
    let token = Provider::from_config(
        &config.upstreams[0],
        crate::credentials::CredentialKind::Token,
    );
    assert!(token.is_err(), "still needs a region");
}

#[test]
fn bedrock_errors_are_rest_json_with_the_type_botocore_reads() {
    let body: serde_json::Value =
        serde_json::from_str(&error_body(Scheme::Bedrock, StatusCode::FORBIDDEN, "no")).unwrap();
    assert_eq!(body["__type"], "AccessDeniedException");
    assert_eq!(body["message"], "no");
}

#[test]
fn vertex_reads_project_location_and_model_and_takes_a_bearer_token() {
    let s = provider("host = \"us-central1-aiplatform.googleapis.com\"\nscheme = \"vertex\"");
    let uri: Uri = "/v1/projects/p1/locations/us-central1/publishers/anthropic/models/claude-sonnet-4@20250514:streamRawPredict?key=AIzaSyREALlookingkey0123456789"
        .parse()
        .unwrap();
    let mut h = headers(&[
        ("authorization", "Bearer placeholder"),
        ("x-goog-api-key", "placeholder"),
    ]);
    let head = RequestHead {
        method: &http::Method::POST,
        uri: &uri,
        headers: &h,
    };
    let request = s
        .parse(
            &head,
            br#"{"anthropic_version":"vertex-2023-10-16","max_tokens":64}"#,
        )
        .unwrap();
    assert_eq!(request.model.as_deref(), Some("claude-sonnet-4@20250514"));
    assert_eq!(request.project.as_deref(), Some("p1"));
    assert_eq!(request.location.as_deref(), Some("us-central1"));
    assert!(request.stream);
    assert_eq!(request.max_output_tokens, Some(64));
    assert_eq!(request.query, None);
    assert_eq!(s.inspect(&h, &uri).len(), 1, "the ?key= looks real");
    let uri = s.splice(&mut h, &uri, &secret()).unwrap();
    assert_eq!(values(&h, "authorization"), vec![format!("Bearer {REAL}")]);
    assert!(h.get("x-goog-api-key").is_none());
    assert_eq!(uri.query(), None);
}

#[test]
fn azure_reads_the_deployment_and_keeps_api_version() {
    let s = provider("host = \"myres.openai.azure.com\"\nscheme = \"azure\"");
    let uri: Uri = "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
        .parse()
        .unwrap();
    let mut h = headers(&[
        ("api-key", "placeholder"),
        ("authorization", "Bearer placeholder"),
    ]);
    let head = RequestHead {
        method: &http::Method::POST,
        uri: &uri,
        headers: &h,
    };
    let request = s.parse(&head, br#"{"model":"something-else"}"#).unwrap();
    assert_eq!(request.model.as_deref(), Some("gpt-4o-prod"));
    assert_eq!(request.query.as_deref(), Some("api-version=2024-10-21"));
    let out = s.splice(&mut h, &uri, &secret()).unwrap();
    assert_eq!(values(&h, "api-key"), vec![REAL]);
    assert!(h.get("authorization").is_none());
    assert_eq!(out.query(), Some("api-version=2024-10-21"));
    // An Entra ID token goes as Bearer.
    let jwt = Secret::new("eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2ln".to_owned());
    let mut h = headers(&[("api-key", "placeholder")]);
    s.splice(&mut h, &uri, &jwt).unwrap();
    assert_eq!(
        values(&h, "authorization"),
        vec![format!("Bearer {}", jwt.expose())]
    );
    assert!(h.get("api-key").is_none());
}
