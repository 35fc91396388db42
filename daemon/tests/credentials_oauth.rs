//! oauth2 (client credentials) and token-exchange against mock token
//! endpoints on loopback that check grant type, client authentication and
//! audience as the RFCs require.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{path::Path, sync::Arc, time::Duration};

use warrant::{
    clock::ManualClock,
    config::{CredentialConfig, Source},
    credentials::{self, CredentialError, CredentialSource, CredentialStore, StoreOptions},
};
use warrant_test_support::credentials::{
    ExpectAuth, MockConfig, MockTokenEndpoint, my_uid, write_private,
};

#[derive(serde::Deserialize)]
struct Credentials {
    credential: Vec<CredentialConfig>,
}

const CLIENT_SECRET: &str = "client-secret-value-9f2c";

fn build(toml_text: &str) -> (CredentialStore, Arc<ManualClock>) {
    let parsed: Credentials = toml::from_str(toml_text).unwrap();
    let clock = Arc::new(ManualClock::new("2026-01-14T15:00:00Z".parse().unwrap()));
    let options = StoreOptions {
        file_owner_uid: my_uid(),
        credentials_directory: None,
    };
    (
        credentials::compile(
            &parsed.credential,
            &Source::default(),
            clock.clone(),
            &options,
        )
        .unwrap(),
        clock,
    )
}

fn secret_file(dir: &Path) -> String {
    let path = dir.join("client-secret");
    write_private(&path, CLIENT_SECRET);
    format!(
        "[[credential]]\nname = \"idp-secret\"\nsource = \"file\"\npath = \"{}\"\n",
        path.display()
    )
}

fn mock(grant_type: &'static str, auth: ExpectAuth) -> MockConfig {
    MockConfig {
        grant_type,
        auth,
        audience: Some("https://api.openai.com".into()),
        subject_token: None,
        expires_in: 3600,
    }
}

#[tokio::test]
async fn client_credentials_with_client_secret_basic() {
    let idp = MockTokenEndpoint::start(mock(
        "client_credentials",
        ExpectAuth::Basic("warrant host/1".into(), CLIENT_SECRET.into()),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = build(&format!(
        "{}[[credential]]\nname = \"openai\"\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"warrant host/1\"\nclient_secret_credential = \"idp-secret\"\naudience = \"https://api.openai.com\"\nscope = \"model.request\"\n",
        secret_file(dir.path()),
        idp.url
    ));
    let token = store.current("openai").await.unwrap();
    assert_eq!(token.expose(), "issued-access-token-1");
    let form = idp.requests.lock().unwrap()[0].clone();
    assert_eq!(form["scope"], "model.request");
    assert!(!form.contains_key("client_secret"));
    let status = store.status();
    let openai = status.iter().find(|s| s.name == "openai").unwrap();
    assert_eq!(
        openai.expires_at,
        Some("2026-01-14T16:00:00Z".parse().unwrap())
    );
    // Served from the cache: no second call.
    store.current("openai").await.unwrap();
    assert_eq!(idp.calls(), 1);
}

#[tokio::test]
async fn client_credentials_with_client_secret_post() {
    let idp = MockTokenEndpoint::start(mock(
        "client_credentials",
        ExpectAuth::Post("cid".into(), CLIENT_SECRET.into()),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = build(&format!(
        "{}[[credential]]\nname = \"openai\"\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"cid\"\nclient_auth = \"client_secret_post\"\nclient_secret_credential = \"idp-secret\"\naudience = \"https://api.openai.com\"\n",
        secret_file(dir.path()),
        idp.url
    ));
    assert_eq!(
        store.current("openai").await.unwrap().expose(),
        "issued-access-token-1"
    );
}

#[tokio::test]
async fn wrong_client_secret_is_rejected_with_the_oauth_error_code() {
    let idp = MockTokenEndpoint::start(mock(
        "client_credentials",
        ExpectAuth::Basic("cid".into(), "a-different-secret".into()),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = build(&format!(
        "{}[[credential]]\nname = \"openai\"\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"cid\"\nclient_secret_credential = \"idp-secret\"\naudience = \"https://api.openai.com\"\n",
        secret_file(dir.path()),
        idp.url
    ));
    match store.current("openai").await {
        Err(CredentialError::Unavailable { reason, .. }) => {
            let reason = reason.to_string();
            assert!(
                reason.contains("401") && reason.contains("invalid_client"),
                "{reason}"
            );
            assert!(!reason.contains(CLIENT_SECRET), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wrong_audience_is_rejected() {
    let idp = MockTokenEndpoint::start(mock(
        "client_credentials",
        ExpectAuth::Basic("cid".into(), CLIENT_SECRET.into()),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = build(&format!(
        "{}[[credential]]\nname = \"openai\"\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"cid\"\nclient_secret_credential = \"idp-secret\"\naudience = \"https://api.anthropic.com\"\n",
        secret_file(dir.path()),
        idp.url
    ));
    let err = store.current("openai").await.unwrap_err().to_string();
    assert!(err.contains("invalid_target"), "{err}");
}

/// An ES256 key pair: (private key PEM, public key PEM).
fn es256_key() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    (key.serialize_pem(), key.public_key_pem())
}

#[tokio::test]
async fn client_credentials_with_private_key_jwt() {
    let (private_pem, public_pem) = es256_key();
    let idp = MockTokenEndpoint::start(mock(
        "client_credentials",
        ExpectAuth::PrivateKeyJwt("cid".into(), public_pem),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("client.pem");
    write_private(&key_path, &private_pem);
    let config = format!(
        "[[credential]]\nname = \"openai\"\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"cid\"\nprivate_key_path = \"{}\"\nsigning_alg = \"ES256\"\nkey_id = \"host-key-1\"\naudience = \"https://api.openai.com\"\n",
        idp.url,
        key_path.display()
    );
    let (store, _) = build(&config);
    assert_eq!(
        store.current("openai").await.unwrap().expose(),
        "issued-access-token-1"
    );
    let form = idp.requests.lock().unwrap()[0].clone();
    let header = jsonwebtoken::decode_header(&form["client_assertion"]).unwrap();
    assert_eq!(header.kid.as_deref(), Some("host-key-1"));

    // Signed by another key: the endpoint refuses the client.
    let (other_private, _) = es256_key();
    write_private(&key_path, &other_private);
    let (store, _) = build(&config);
    let err = store.current("openai").await.unwrap_err().to_string();
    assert!(err.contains("invalid_client"), "{err}");
}

#[tokio::test]
async fn token_exchange_with_subject_token_from_a_file() {
    let subject = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJpbnN0YW5jZSJ9.";
    let idp = MockTokenEndpoint::start(MockConfig {
        subject_token: Some(subject.into()),
        ..mock(
            "urn:ietf:params:oauth:grant-type:token-exchange",
            ExpectAuth::None,
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let subject_path = dir.path().join("identity.jwt");
    write_private(&subject_path, &format!("{subject}\n"));
    let (store, _) = build(&format!(
        "[[credential]]\nname = \"openai\"\nsource = \"token-exchange\"\ntoken_url = \"{}\"\nsubject_token_path = \"{}\"\naudience = \"https://api.openai.com\"\nrequested_token_type = \"urn:ietf:params:oauth:token-type:access_token\"\n",
        idp.url,
        subject_path.display()
    ));
    assert_eq!(
        store.current("openai").await.unwrap().expose(),
        "issued-access-token-1"
    );
    let form = idp.requests.lock().unwrap()[0].clone();
    assert_eq!(
        form["requested_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
}

#[tokio::test]
async fn token_exchange_with_subject_from_another_credential_and_client_auth() {
    let subject = "subject-token-from-exec";
    let idp = MockTokenEndpoint::start(MockConfig {
        subject_token: Some(subject.into()),
        ..mock(
            "urn:ietf:params:oauth:grant-type:token-exchange",
            ExpectAuth::Basic("cid".into(), CLIENT_SECRET.into()),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = build(&format!(
        "{}[[credential]]\nname = \"identity\"\nsource = \"exec\"\ncommand = [\"/bin/echo\", '{{\"value\": \"{subject}\"}}']\n[[credential]]\nname = \"openai\"\nsource = \"token-exchange\"\ntoken_url = \"{}\"\nclient_id = \"cid\"\nclient_secret_credential = \"idp-secret\"\nsubject_token_credential = \"identity\"\naudience = \"https://api.openai.com\"\n",
        secret_file(dir.path()),
        idp.url
    ));
    assert_eq!(
        store.current("openai").await.unwrap().expose(),
        "issued-access-token-1"
    );
}

#[tokio::test]
async fn jwt_bearer_grant_sends_the_subject_as_assertion() {
    let subject = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJob3N0In0.";
    let idp = MockTokenEndpoint::start(MockConfig {
        subject_token: Some(subject.into()),
        ..mock(
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
            ExpectAuth::None,
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let subject_path = dir.path().join("identity.jwt");
    write_private(&subject_path, subject);
    let (store, _) = build(&format!(
        "[[credential]]\nname = \"openai\"\nsource = \"token-exchange\"\ngrant = \"jwt-bearer\"\ntoken_url = \"{}\"\nsubject_token_path = \"{}\"\naudience = \"https://api.openai.com\"\n",
        idp.url,
        subject_path.display()
    ));
    assert_eq!(
        store.current("openai").await.unwrap().expose(),
        "issued-access-token-1"
    );
}

#[tokio::test]
async fn refresh_ahead_backoff_and_serve_stale_against_the_token_endpoint() {
    let idp = MockTokenEndpoint::start(mock(
        "client_credentials",
        ExpectAuth::Basic("cid".into(), CLIENT_SECRET.into()),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (store, clock) = build(&format!(
        "{}[[credential]]\nname = \"openai\"\nsource = \"oauth2\"\ntoken_url = \"{}\"\nclient_id = \"cid\"\nclient_secret_credential = \"idp-secret\"\naudience = \"https://api.openai.com\"\nrefresh_ahead = \"5m\"\n",
        secret_file(dir.path()),
        idp.url
    ));
    assert_eq!(
        store.current("openai").await.unwrap().expose(),
        "issued-access-token-1"
    );
    // Refresh is due between 54m30s and 55m after issue (5m ahead, ≤10% jitter).
    clock.advance(Duration::from_secs(54 * 60));
    store.refresh_due().await;
    assert_eq!(idp.calls(), 1);
    idp.fail(Some(hyper::StatusCode::SERVICE_UNAVAILABLE));
    clock.advance(Duration::from_secs(60));
    store.refresh_due().await;
    assert_eq!(idp.calls(), 2);
    // The issuer fails: the cached token is still served.
    assert_eq!(
        store.current("openai").await.unwrap().expose(),
        "issued-access-token-1"
    );
    // Backing off: no call within the first second.
    store.refresh_due().await;
    assert_eq!(idp.calls(), 2);
    clock.advance(Duration::from_millis(1100));
    store.refresh_due().await;
    assert_eq!(idp.calls(), 3);
    // Recovered: a new token replaces the old.
    idp.fail(None);
    clock.advance(Duration::from_secs(3));
    store.refresh_due().await;
    assert_eq!(
        store.current("openai").await.unwrap().expose(),
        "issued-access-token-2"
    );
}
