//! The file, systemd and exec providers, through the store built from config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{os::unix::fs::PermissionsExt, path::Path, sync::Arc, time::Duration};

use warrant::{
    clock::ManualClock,
    config::{CredentialConfig, Source},
    credentials::{self, CredentialError, CredentialSource, CredentialStore, StoreOptions},
};
use warrant_test_support::credentials::{my_uid, write_private};

#[derive(serde::Deserialize)]
struct Credentials {
    credential: Vec<CredentialConfig>,
}

fn start() -> jiff::Timestamp {
    "2026-01-14T15:00:00Z".parse().unwrap()
}

fn build(
    toml_text: &str,
    credentials_directory: Option<&Path>,
) -> (CredentialStore, Arc<ManualClock>) {
    let parsed: Credentials = toml::from_str(toml_text).unwrap();
    let clock = Arc::new(ManualClock::new(start()));
    let options = StoreOptions {
        file_owner_uid: my_uid(),
        credentials_directory: credentials_directory.map(Path::to_path_buf),
    };
    let store = credentials::compile(
        &parsed.credential,
        &Source::default(),
        clock.clone(),
        &options,
    )
    .unwrap();
    (store, clock)
}

fn unavailable(result: Result<Arc<warrant::secret::Secret>, CredentialError>) -> String {
    match result {
        Err(CredentialError::Unavailable { reason, .. }) => reason.to_string(),
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(secret) => panic!("expected Unavailable, got {secret:?}"),
    }
}

#[tokio::test]
async fn file_credential_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openai");
    write_private(&path, "sk-file-credential-1\n");
    let (store, _) = build(
        &format!(
            "[[credential]]\nname = \"openai\"\nsource = \"file\"\npath = \"{}\"\n",
            path.display()
        ),
        None,
    );
    assert_eq!(
        store.current("openai").await.unwrap().expose(),
        "sk-file-credential-1"
    );
    assert!(matches!(
        store.current("other").await,
        Err(CredentialError::NotConfigured(_))
    ));
}

/// A loose file at start is a config error (policy_config.rs); these two
/// tests give the file its fault after the store is built, as a file
/// provisioned or changed later would: the fetch refuses it.
#[tokio::test]
async fn group_or_world_readable_file_is_refused_with_path_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openai");
    let (store, _) = build(
        &format!(
            "[[credential]]\nname = \"openai\"\nsource = \"file\"\npath = \"{}\"\n",
            path.display()
        ),
        None,
    );
    write_private(&path, "sk-file-credential-2");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let reason = unavailable(store.current("openai").await);
    assert!(reason.contains(&path.display().to_string()), "{reason}");
    assert!(reason.contains("0640"), "{reason}");
}

#[tokio::test]
async fn file_not_owned_by_the_required_owner_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openai");
    let parsed: Credentials = toml::from_str(&format!(
        "[[credential]]\nname = \"openai\"\nsource = \"file\"\npath = \"{}\"\n",
        path.display()
    ))
    .unwrap();
    let options = StoreOptions {
        file_owner_uid: my_uid() + 1,
        credentials_directory: None,
    };
    let store = credentials::compile(
        &parsed.credential,
        &Source::default(),
        Arc::new(ManualClock::new(start())),
        &options,
    )
    .unwrap();
    write_private(&path, "sk-file-credential-3");
    let reason = unavailable(store.current("openai").await);
    assert!(reason.contains("owned by uid"), "{reason}");
}

#[tokio::test]
async fn file_rotation_is_picked_up_at_the_refresh_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    write_private(&path, "sk-before-rotation");
    let (store, clock) = build(
        &format!(
            "[[credential]]\nname = \"k\"\nsource = \"file\"\npath = \"{}\"\nrefresh_interval = \"1m\"\n",
            path.display()
        ),
        None,
    );
    assert_eq!(
        store.current("k").await.unwrap().expose(),
        "sk-before-rotation"
    );
    write_private(&path, "sk-after-rotation");
    clock.advance(Duration::from_secs(59));
    assert_eq!(store.refresh_due().await, 0);
    assert_eq!(
        store.current("k").await.unwrap().expose(),
        "sk-before-rotation"
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(store.refresh_due().await, 1);
    assert_eq!(
        store.current("k").await.unwrap().expose(),
        "sk-after-rotation"
    );
}

#[tokio::test]
async fn systemd_credential_comes_from_the_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("anthropic-key"), "sk-ant-systemd-1\n").unwrap();
    let (store, _) = build(
        "[[credential]]\nname = \"anthropic\"\nsource = \"systemd\"\nid = \"anthropic-key\"\n",
        Some(dir.path()),
    );
    assert_eq!(
        store.current("anthropic").await.unwrap().expose(),
        "sk-ant-systemd-1"
    );
}

#[tokio::test]
async fn systemd_credential_without_credentials_directory_says_so() {
    let (store, _) = build(
        "[[credential]]\nname = \"a\"\nsource = \"systemd\"\nid = \"a\"\n",
        None,
    );
    let reason = unavailable(store.current("a").await);
    assert!(reason.contains("CREDENTIALS_DIRECTORY"), "{reason}");
}

fn exec_config(script: &str, extra: &str) -> String {
    format!(
        "[[credential]]\nname = \"x\"\nsource = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", {}]\n{extra}",
        toml::Value::String(script.to_owned())
    )
}

#[tokio::test]
async fn exec_credential_with_expiry() {
    let (store, clock) = build(
        &exec_config(
            r#"echo '{"value": "sk-exec-1", "expires_at": "2026-01-14T16:00:00Z"}'"#,
            "refresh_ahead = \"5m\"\n",
        ),
        None,
    );
    assert_eq!(store.current("x").await.unwrap().expose(), "sk-exec-1");
    let status = &store.status()[0];
    assert_eq!(
        status.expires_at,
        Some("2026-01-14T16:00:00Z".parse().unwrap())
    );
    assert!(
        status
            .fingerprint
            .as_deref()
            .unwrap()
            .starts_with("sha256:")
    );
    // After expiry the command runs again; it prints an expired value now.
    clock.set("2026-01-14T16:00:00Z".parse().unwrap());
    let reason = unavailable(store.current("x").await);
    assert!(reason.contains("expired"), "{reason}");
}

#[tokio::test]
async fn exec_failure_does_not_reveal_stderr_or_stdout() {
    let (store, _) = build(&exec_config("echo sk-leaky-stderr >&2; exit 3", ""), None);
    let reason = unavailable(store.current("x").await);
    assert!(reason.contains("exit status: 3"), "{reason}");
    assert!(!reason.contains("sk-leaky-stderr"), "{reason}");

    let (store, _) = build(
        &exec_config(
            r#"echo '{"value": "sk-leaky-stdout", "expires_at": 5}'"#,
            "",
        ),
        None,
    );
    let reason = unavailable(store.current("x").await);
    assert!(reason.contains("invalid output"), "{reason}");
    assert!(!reason.contains("sk-leaky-stdout"), "{reason}");
}

#[tokio::test]
async fn exec_that_hangs_is_killed_at_the_timeout() {
    let (store, _) = build(&exec_config("exec sleep 30", "timeout = \"200ms\"\n"), None);
    let reason = unavailable(store.current("x").await);
    assert!(reason.contains("did not finish within"), "{reason}");
}
