//! No credential value reaches the logs, whatever the providers do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use jiff::Timestamp;
use warrant::clock::ManualClock;
use warrant::credentials::{
    CredentialSource, CredentialStore,
    exec::ExecProvider,
    file::FileProvider,
    oauth::{ClientAuth, Grant, OAuthProvider, TokenClient},
};
use warrant_test_support::{
    credentials::{
        ExpectAuth, MockConfig, MockTokenEndpoint, my_uid, refresh_settings, write_private,
    },
    logs::Logs,
};

#[tokio::test]
async fn no_credential_value_in_captured_logs() {
    let logs = Logs::capture();
    let start: Timestamp = "2026-01-14T15:00:00Z".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("k");
    write_private(&key_path, "sk-secret-from-file-7731");
    let idp = MockTokenEndpoint::start(MockConfig {
        grant_type: "client_credentials",
        auth: ExpectAuth::Basic("cid".into(), "sk-secret-from-file-7731".into()),
        audience: None,
        subject_token: None,
        expires_in: 600,
    })
    .await;
    let oauth = |auth| OAuthProvider {
        client: TokenClient::new().unwrap(),
        token_url: idp.url.clone(),
        client_id: Some("cid".into()),
        auth,
        grant: Grant::ClientCredentials,
        scope: None,
        audience: None,
        resource: None,
        timeout: Duration::from_secs(5),
    };
    let clock = Arc::new(ManualClock::new(start));
    let store = CredentialStore::new(clock.clone())
        .with("file", Box::new(FileProvider::new(key_path, my_uid())), refresh_settings())
        .with(
            "exec",
            Box::new(ExecProvider::new(
                vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "echo sk-secret-on-stderr-5521 >&2; echo '{\"value\":\"sk-secret-on-stdout-8832\",'".into(),
                ],
                Duration::from_secs(5),
            )),
            refresh_settings(),
        )
        .with("oauth", Box::new(oauth(ClientAuth::SecretBasic("file".into()))), refresh_settings())
        .with("oauth-post", Box::new(oauth(ClientAuth::SecretPost("file".into()))), refresh_settings());
    store.current("file").await.unwrap();
    let issued = store.current("oauth").await.unwrap();
    assert_eq!(issued.expose(), "issued-access-token-1");
    assert!(store.current("exec").await.is_err());
    assert!(
        store.current("oauth-post").await.is_err(),
        "the mock expects basic auth"
    );
    clock.advance(Duration::from_secs(3400));
    store.refresh_due().await;
    tracing::info!(status = ?store.status(), secret = ?issued, "status");
    let text = logs.text();
    assert!(
        text.contains("credential issued"),
        "logs were not captured: {text}"
    );
    assert!(text.contains("credential issuer failed"), "{text}");
    for secret in [
        "sk-secret-from-file-7731",
        "sk-secret-on-stderr-5521",
        "sk-secret-on-stdout-8832",
        "issued-access-token-1",
        "issued-access-token-2",
    ] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the logs:\n{text}"
        );
    }
}
