#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::config::Config;

fn emulator(extra: &str) -> Emulator {
    let config = Config::parse(&format!("[metadata]\n{extra}\n"), "t.toml").unwrap();
    Emulator::compile(&config.metadata, &config.source)
        .unwrap()
        .unwrap()
}

fn now() -> Timestamp {
    "2026-01-14T15:00:00Z".parse().unwrap()
}

fn ask(e: &Emulator, method: Method, target: &str, headers: &[(&str, &str)]) -> Answer {
    let uri: Uri = target.parse().unwrap();
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    e.answer(&method, &uri, &map, now())
}

fn reply(answer: Answer) -> Reply {
    match answer {
        Answer::Respond(reply) => reply,
        other => panic!("not answered here: {other:?}"),
    }
}

#[test]
fn aws_sdks_get_placeholder_role_credentials_through_imdsv2() {
    let e = emulator("");
    let token = reply(ask(
        &e,
        Method::PUT,
        "/latest/api/token",
        &[("x-aws-ec2-metadata-token-ttl-seconds", "21600")],
    ));
    assert_eq!(token.status, StatusCode::OK);
    let session = [("x-aws-ec2-metadata-token", token.body.as_str())];
    let role = reply(ask(
        &e,
        Method::GET,
        "/latest/meta-data/iam/security-credentials/",
        &session,
    ));
    assert_eq!(role.body, "warrant-placeholder");
    let creds = reply(ask(
        &e,
        Method::GET,
        "/latest/meta-data/iam/security-credentials/warrant-placeholder",
        &session,
    ));
    let doc: serde_json::Value = serde_json::from_str(&creds.body).unwrap();
    assert_eq!(doc["AccessKeyId"], AWS_ACCESS_KEY_ID);
    assert_eq!(doc["Token"], AWS_SESSION_TOKEN);
    // botocore's format, without fractions.
    assert_eq!(doc["Expiration"], "2026-01-14T16:00:00Z");
    // Placeholders are known for placeholders by the agent-key check.
    for value in [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN] {
        assert!(!crate::provider::looks_like_real_key(value.as_bytes()));
    }
}

#[test]
fn imdsv2_rules_hold_for_reads_and_token_requests() {
    let e = emulator("");
    // A GET-only request forgery gets nothing.
    let no_token = reply(ask(
        &e,
        Method::GET,
        "/latest/meta-data/iam/security-credentials/",
        &[],
    ));
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    let forged = reply(ask(
        &e,
        Method::GET,
        "/latest/meta-data/iam/security-credentials/",
        &[("x-aws-ec2-metadata-token", "warrant-imds-guessed")],
    ));
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    let proxied = reply(ask(
        &e,
        Method::PUT,
        "/latest/api/token",
        &[
            ("x-aws-ec2-metadata-token-ttl-seconds", "60"),
            ("x-forwarded-for", "10.0.0.1"),
        ],
    ));
    assert_eq!(proxied.status, StatusCode::FORBIDDEN);
    let no_ttl = reply(ask(&e, Method::PUT, "/latest/api/token", &[]));
    assert_eq!(no_ttl.status, StatusCode::BAD_REQUEST);
    let get_token = reply(ask(&e, Method::GET, "/latest/api/token", &[]));
    assert_eq!(get_token.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[test]
fn everything_else_is_refused_unless_passthrough_allows_it() {
    let e = emulator(
        "passthrough = [\"/latest/meta-data/placement/*\", \"/computeMetadata/v1/instance/zone\"]",
    );
    let token = reply(ask(
        &e,
        Method::PUT,
        "/latest/api/token",
        &[("x-aws-ec2-metadata-token-ttl-seconds", "60")],
    ))
    .body;
    let session = [("x-aws-ec2-metadata-token", token.as_str())];
    assert_eq!(
        ask(
            &e,
            Method::GET,
            "/latest/meta-data/placement/region",
            &session
        ),
        Answer::PassThrough { imds_token: true }
    );
    // `*` stays within a segment; dot segments and escapes never pass.
    for path in [
        "/latest/meta-data/placement/../iam/security-credentials/x",
        "/latest/meta-data/placement/a/b",
        "/latest/meta-data/placement/%2E%2E",
        "/latest/dynamic/instance-identity/document",
        "/latest/user-data",
    ] {
        let answer = reply(ask(&e, Method::GET, path, &session));
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{path}");
        assert!(answer.body.contains("warrant"));
    }
    let google = [("metadata-flavor", "Google")];
    assert_eq!(
        ask(
            &e,
            Method::GET,
            "/computeMetadata/v1/instance/zone",
            &google
        ),
        Answer::PassThrough { imds_token: false }
    );
    // A signed identity token cannot be a placeholder: refused.
    let identity = reply(ask(
        &e,
        Method::GET,
        "/computeMetadata/v1/instance/service-accounts/default/identity?audience=x",
        &google,
    ));
    assert_eq!(identity.status, StatusCode::FORBIDDEN);
}

#[test]
fn gce_answers_what_google_auth_asks_and_only_with_its_header() {
    let e = emulator("gcp_project = \"agents-prod\"");
    let google = [("metadata-flavor", "Google")];
    let ping = reply(ask(&e, Method::GET, "/", &google));
    assert_eq!(ping.status, StatusCode::OK);
    assert!(
        ping.headers
            .contains(&("metadata-flavor", "Google".to_owned()))
    );
    let info = reply(ask(
        &e,
        Method::GET,
        "/computeMetadata/v1/instance/service-accounts/default/?recursive=true",
        &google,
    ));
    let info: serde_json::Value = serde_json::from_str(&info.body).unwrap();
    assert_eq!(info["email"], "placeholder@warrant.invalid");
    let token = reply(ask(
        &e,
        Method::GET,
        "/computeMetadata/v1/instance/service-accounts/placeholder@warrant.invalid/token?scopes=x",
        &google,
    ));
    let token: serde_json::Value = serde_json::from_str(&token.body).unwrap();
    assert_eq!(token["access_token"], GOOGLE_ACCESS_TOKEN);
    assert_eq!(
        reply(ask(
            &e,
            Method::GET,
            "/computeMetadata/v1/project/project-id",
            &google
        ))
        .body,
        "agents-prod"
    );
    let without = reply(ask(
        &e,
        Method::GET,
        "/computeMetadata/v1/instance/service-accounts/default/token",
        &[],
    ));
    assert_eq!(without.status, StatusCode::FORBIDDEN);
}

#[test]
fn azure_managed_identity_gets_a_placeholder_token() {
    let e = emulator("");
    let token = reply(ask(
        &e,
        Method::GET,
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fcognitiveservices.azure.com",
        &[("metadata", "true")],
    ));
    let doc: serde_json::Value = serde_json::from_str(&token.body).unwrap();
    assert_eq!(doc["access_token"], AZURE_ACCESS_TOKEN);
    assert_eq!(doc["resource"], "https://cognitiveservices.azure.com");
    let without = reply(ask(&e, Method::GET, "/metadata/identity/oauth2/token", &[]));
    assert_eq!(without.status, StatusCode::BAD_REQUEST);
}

#[test]
fn only_the_metadata_addresses_on_port_80_are_served() {
    let e = emulator("addresses = [\"169.254.169.254\", \"fd00:ec2::254\"]");
    assert!(e.serves("169.254.169.254:80".parse().unwrap()));
    assert!(e.serves("[::ffff:169.254.169.254]:80".parse().unwrap()));
    assert!(e.serves("[fd00:ec2::254]:80".parse().unwrap()));
    assert!(!e.serves("169.254.169.254:443".parse().unwrap()));
    assert!(!e.serves("10.0.0.1:80".parse().unwrap()));
    let off = Config::parse("[metadata]\nintercept = false\n", "t.toml").unwrap();
    assert!(
        Emulator::compile(&off.metadata, &off.source)
            .unwrap()
            .is_none()
    );
    let bad = Config::parse("[metadata]\npassthrough = [\"/a/[\"]\n", "t.toml").unwrap();
    let error = Emulator::compile(&bad.metadata, &bad.source).err().unwrap();
    assert!(error.to_string().starts_with("t.toml:2:"), "{error}");
}
