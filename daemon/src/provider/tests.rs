#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::{config::Config, secret};

const REAL: &str = "sk-real-credential-0123456789abcdefABCDEF";

fn provider(upstream_toml: &str) -> Provider {
    let text = format!(
        "[[credential]]\nname = \"c\"\nsource = \"file\"\npath = \"/x\"\n\n[[upstream]]\ncredential = \"c\"\n{upstream_toml}\n"
    );
    let config = Config::parse(&text, "test").unwrap();
    Provider::from_config(&config.upstreams[0]).unwrap()
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
    let request = gemini.parse(&head, br#"{"model":"m"}"#).unwrap();
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
