//! No credential value reaches the logs, whatever the providers do. Alone in
//! its test binary: tracing caches per-callsite interest process-wide, so a
//! scoped subscriber would miss events from callsites other tests registered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{ExpectAuth, MockConfig, MockTokenEndpoint};
use jiff::Timestamp;
use warrant::clock::ManualClock;
use warrant::credentials::{
    CredentialSource, CredentialStore,
    exec::ExecProvider,
    file::FileProvider,
    oauth::{ClientAuth, Grant, OAuthProvider, TokenClient},
    store::RefreshSettings,
};

fn settings() -> RefreshSettings {
    RefreshSettings {
        refresh_ahead: Duration::from_secs(300),
        refresh_interval: Duration::from_secs(600),
        jitter: 0.1,
        backoff_initial: Duration::from_secs(10),
        backoff_max: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn no_credential_value_in_captured_logs() {
    let logs = common::CapturedLogs::default();
    let _guard = logs.install();
    let start: Timestamp = "2026-01-14T15:00:00Z".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("k");
    common::write_private(&key_path, "sk-secret-from-file-7731");
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
        .with("file", Box::new(FileProvider::new(key_path, common::my_uid())), settings())
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
            settings(),
        )
        .with("oauth", Box::new(oauth(ClientAuth::SecretBasic("file".into()))), settings())
        .with("oauth-post", Box::new(oauth(ClientAuth::SecretPost("file".into()))), settings());
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
