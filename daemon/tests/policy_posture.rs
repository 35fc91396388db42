//! Posture sources: a file and a command, read by the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use warrant::policy::posture::{PostureCheck, PostureSource, PostureStore};

fn check(name: &str, source: PostureSource) -> PostureCheck {
    PostureCheck {
        name: name.into(),
        source,
        max_age: Duration::from_secs(3600),
        interval: Duration::from_secs(60),
        timeout: Duration::from_secs(5),
    }
}

fn at(text: &str) -> jiff::Timestamp {
    text.parse().unwrap()
}

#[tokio::test]
async fn file_source_pass_then_missing_file_denies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scan.json");
    std::fs::write(
        &path,
        r#"{"status":"pass","checked_at":"2026-01-14T14:00:00Z"}"#,
    )
    .unwrap();
    let store = PostureStore::new(vec![check("vuln-scan", PostureSource::File(path.clone()))]);
    store.refresh_all().await;
    store.check(0, at("2026-01-14T14:30:00Z")).unwrap();
    // Stale an hour after checked_at, whatever the read time.
    let err = store
        .check(0, at("2026-01-14T15:00:01Z"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("stale"), "{err}");
    std::fs::remove_file(&path).unwrap();
    store.refresh_all().await;
    let err = store
        .check(0, at("2026-01-14T14:30:00Z"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");
}

#[tokio::test]
async fn command_source_pass_fail_and_broken() {
    let sh =
        |script: &str| PostureSource::Command(vec!["/bin/sh".into(), "-c".into(), script.into()]);
    let store = PostureStore::new(vec![
        check(
            "edr",
            sh(r#"echo '{"status":"pass","checked_at":"2026-01-14T14:00:00Z"}'"#),
        ),
        check(
            "scanner",
            sh(
                r#"echo '{"status":"fail","checked_at":"2026-01-14T14:00:00Z","detail":"3 critical"}'"#,
            ),
        ),
        check("broken", sh("exit 2")),
    ]);
    store.refresh_all().await;
    let now = at("2026-01-14T14:10:00Z");
    store.check(0, now).unwrap();
    let err = store.check(1, now).unwrap_err().to_string();
    assert!(
        err.contains("failing") && err.contains("3 critical"),
        "{err}"
    );
    let err = store.check(2, now).unwrap_err().to_string();
    assert!(err.contains("exited"), "{err}");
}

#[tokio::test]
async fn command_that_hangs_fails_at_its_timeout() {
    let mut hanging = check(
        "slow",
        PostureSource::Command(vec!["/bin/sh".into(), "-c".into(), "exec sleep 30".into()]),
    );
    hanging.timeout = Duration::from_millis(200);
    let store = PostureStore::new(vec![hanging]);
    store.refresh_all().await;
    let err = store
        .check(0, at("2026-01-14T14:10:00Z"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not finish"), "{err}");
}
