//! The control socket: status, revoke (closing a live stream within a
//! second), restore, pid quarantines, and refusal of non-admin peers.
//! Loopback and a socket in a temp dir only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::BodyExt;
use serde_json::Value;
use warrant::control::{ControlRequest, ControlServer, NoBackend, client};
use warrant_test_support::{
    injector::*,
    monitored::*,
    pki::*,
    prereq::{self, Need},
    upstream::*,
    wait::eventually,
};

async fn call(socket: &Path, request: ControlRequest) -> Result<Value, client::ClientError> {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || client::call(&socket, &request))
        .await
        .unwrap()
}

fn serve(h: &Monitored) -> PathBuf {
    let socket = h.dir.path().join("run/control.sock");
    let server =
        ControlServer::bind(&socket, None, h.responder.clone(), Arc::new(NoBackend)).unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "root-only socket");
    tokio::spawn(server.serve());
    socket
}

/// Runs `warrant ARGS --socket SOCKET` off the runtime.
fn cli(socket: &Path, args: &[&str]) -> tokio::task::JoinHandle<std::process::Output> {
    let socket = socket.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_warrant"))
            .args(&args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap()
    })
}

fn revoke_workload(name: &str) -> ControlRequest {
    ControlRequest::Revoke {
        workload: Some(name.to_owned()),
        pid: None,
        for_secs: None,
        reason: Some("test".to_owned()),
    }
}

#[tokio::test]
async fn revoking_a_workload_closes_its_live_stream_within_a_second_and_refuses_new_requests() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let h = Monitored::start(&pki, None, "").await;
    let socket = serve(&h);

    // A live SSE stream of workload agent-a, and a connection of agent-b.
    let mut agent = h.h1(mock.addr, OPENAI).await;
    let response = agent.send(request(OPENAI, "/v1/sse", &[])).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().unwrap().starts_with(b"data: {\"n\":1}"));
    let mut other = h.h1_as(mock.addr, OPENAI, 5555).await;
    let ok = other.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(ok.status(), 200);
    body_text(ok).await;

    let status = call(&socket, ControlRequest::Status).await.unwrap();
    assert_eq!(
        status["workloads"][WORKLOAD]["connections"], 1,
        "{status:#}"
    );
    assert_eq!(
        status["workloads"]["agent-b"]["connections"], 1,
        "{status:#}"
    );

    let start = Instant::now();
    let revoked = call(&socket, revoke_workload(WORKLOAD)).await.unwrap();
    assert_eq!(revoked["closed"], 1);
    // The stream ends (error or end) without the upstream finishing.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match body.frame().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the revoked stream was not closed");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "closing took {took:?}");

    // New requests of that workload: 403 in the provider's shape.
    let mut again = h.h1(mock.addr, OPENAI).await;
    let refused = again.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(refused.status(), 403);
    let text = body_text(refused).await;
    let error: Value = serde_json::from_str(&text).unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("quarantined"),
        "{text}"
    );
    // The other workload is untouched.
    let ok = other.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(ok.status(), 200);
    body_text(ok).await;

    let status = call(&socket, ControlRequest::Status).await.unwrap();
    assert_eq!(status["quarantines"][0]["target"]["workload"], WORKLOAD);

    // Restore: served again.
    let restored = call(
        &socket,
        ControlRequest::Restore {
            workload: Some(WORKLOAD.to_owned()),
            pid: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(restored["restored"], true);
    let ok = again.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(ok.status(), 200);
    body_text(ok).await;

    // The audit trail tells the story.
    eventually("the records", || h.audit_lines().len() >= 7).await;
    let lines = h.audit_lines();
    let sse = lines.iter().find(|l| l["path"] == "/v1/sse").unwrap();
    assert_eq!(sse["outcome"], "aborted");
    let quarantines: Vec<_> = lines.iter().filter(|l| l["kind"] == "quarantine").collect();
    assert_eq!(quarantines.len(), 2, "revoke and restore: {quarantines:#?}");
    assert!(
        quarantines[0]["actor"]
            .as_str()
            .unwrap()
            .starts_with("operator (uid ")
    );
    assert_eq!(quarantines[0]["target"]["workload"], WORKLOAD);
    assert_eq!(quarantines[1]["message"], "quarantine lifted");
    assert!(
        lines
            .iter()
            .any(|l| l["outcome"] == "quarantined" && l["status"] == 403)
    );
    let metrics = h.responder.audit().metrics().render();
    assert!(metrics.contains("warrant_denials_total{workload=\"agent-a\",upstream=\"api.openai.com\",reason=\"quarantined\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_pid_quarantine_closes_that_process_only_and_expires_with_for() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let h = Monitored::start(&pki, None, "").await;
    let socket = serve(&h);
    let mut victim = h.h1_as(mock.addr, OPENAI, 6001).await;
    let response = victim.send(request(OPENAI, "/v1/sse", &[])).await;
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    let mut bystander = h.h1_as(mock.addr, OPENAI, 6002).await;

    let revoked = call(
        &socket,
        ControlRequest::Revoke {
            workload: None,
            pid: Some(6001),
            for_secs: Some(3600),
            reason: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(revoked["closed"], 1);
    assert!(revoked["until"].is_string(), "{revoked}");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(ended.is_ok());
    // agent-b from another pid is served; a new connection of 6001 is not.
    let ok = bystander.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(ok.status(), 200);
    let mut again = h.h1_as(mock.addr, OPENAI, 6001).await;
    assert_eq!(
        again
            .send(request(OPENAI, "/v1/models", &[]))
            .await
            .status(),
        403
    );

    // Expiry: the table forgets a quarantine whose time is up.
    let later = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(3601))
        .unwrap();
    assert!(
        h.responder
            .quarantines()
            .check(None, 6001, jiff::Timestamp::now())
            .is_some()
    );
    assert!(h.responder.quarantines().check(None, 6001, later).is_none());
}

#[tokio::test]
async fn bad_requests_get_a_clear_error() {
    let pki = TestPki::new();
    let h = Monitored::start(&pki, None, "").await;
    let socket = serve(&h);
    let both = call(
        &socket,
        ControlRequest::Revoke {
            workload: Some("a".into()),
            pid: Some(1),
            for_secs: None,
            reason: None,
        },
    )
    .await;
    assert!(both.unwrap_err().to_string().contains("exactly one"));
    let explain = call(
        &socket,
        ControlRequest::Explain {
            pid: 1,
            request: None,
        },
    )
    .await;
    assert!(explain.unwrap_err().to_string().contains("not available"));
}

/// Runs `warrant status --socket SOCKET` as uid/gid 65534 (nobody).
fn status_as_nobody(socket: &Path) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    std::process::Command::new(env!("CARGO_BIN_EXE_warrant"))
        .args(["status", "--socket"])
        .arg(socket)
        .uid(65534)
        .gid(65534)
        .env_remove("WARRANT_CONTROL_SOCKET")
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_non_root_peer_is_refused_by_the_socket_mode_and_by_its_peer_credentials() {
    // Root, to run a client as nobody.
    if !prereq::require(&[Need::Root]) {
        return;
    }
    let pki = TestPki::new();
    let h = Monitored::start(&pki, None, "").await;
    let socket = serve(&h);
    // Let nobody reach the socket file (the temp dir is 0700).
    for dir in [
        h.dir.path().to_path_buf(),
        socket.parent().unwrap().to_path_buf(),
    ] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // Mode 0600: the kernel refuses the connect.
    let output = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || status_as_nobody(&socket)
    })
    .await
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");

    // Even when the mode lets it connect, SO_PEERCRED says no.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let output = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || status_as_nobody(&socket)
    })
    .await
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("permission denied: the warrant control socket is for root"),
        "{stderr}"
    );
    assert!(stderr.contains("uid 65534"), "{stderr}");
    // Root is served.
    assert!(call(&socket, ControlRequest::Status).await.is_ok());
}

#[tokio::test]
async fn the_cli_revokes_restores_and_shows_status_through_the_socket() {
    let pki = TestPki::new();
    let h = Monitored::start(&pki, None, "").await;
    let socket = serve(&h);
    let cli = |args: &[&str]| cli(&socket, args);
    let out = cli(&[
        "revoke",
        "--workload",
        "agent-z",
        "--for",
        "1h",
        "--reason",
        "drill",
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("quarantined workload agent-z"), "{stdout}");
    assert!(stdout.contains("until 20"), "{stdout}");
    let out = cli(&["status"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("QUARANTINES"), "{stdout}");
    assert!(stdout.contains("workload agent-z"), "{stdout}");
    assert!(stdout.contains("drill"), "{stdout}");
    let out = cli(&["status", "--json"]).await.unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["quarantines"][0]["reason"], "drill");
    let out = cli(&["restore", "--workload", "agent-z"]).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("restored workload agent-z"));
    let out = cli(&["revoke"]).await.unwrap();
    assert!(!out.status.success(), "a target is required");
}

#[tokio::test]
async fn revoking_closes_a_live_h2_stream_within_a_second() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"h2", b"http/1.1"]).await;
    let h = Monitored::start(&pki, None, "").await;
    let socket = serve(&h);
    let tcp = h.connect_as(mock.addr, 4242).await;
    let tls = tls_over(tcp, roots_from_pem(&h.warrant_ca_pem), OPENAI, &[b"h2"]).await;
    let mut agent = Sender::h2(tls).await;
    let response = agent.send(request(OPENAI, "/v1/sse", &[])).await;
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    let start = Instant::now();
    call(&socket, revoke_workload(WORKLOAD)).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(ended.is_ok(), "the revoked h2 stream was not closed");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn the_configured_admin_group_gets_mode_0660_and_is_served() {
    // Root, to run a client as nobody, and nobody's group.
    if !prereq::require(&[Need::Root, Need::Group(65534)]) {
        return;
    }
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(65534))
        .unwrap()
        .unwrap();
    let pki = TestPki::new();
    let h = Monitored::start(&pki, None, "").await;
    let socket = h.dir.path().join("run/control.sock");
    let server = ControlServer::bind(
        &socket,
        Some(&group.name),
        h.responder.clone(),
        Arc::new(NoBackend),
    )
    .unwrap();
    tokio::spawn(server.serve());
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), 65534);
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || status_as_nobody(&socket)
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("QUARANTINES"));
}

/// A gateway's backend: its enrollment pins.
struct Pins(Arc<dyn warrant::gateway::PinStore>);

impl warrant::control::ControlBackend for Pins {
    fn pins(&self) -> Option<Arc<dyn warrant::gateway::PinStore>> {
        Some(self.0.clone())
    }
}

#[tokio::test]
async fn the_cli_lists_and_releases_a_gateways_enrollment_pins() {
    use warrant::gateway::{FilePins, PINS_FILE, Pin, PinStore};
    let pki = TestPki::new();
    let h = Monitored::start(&pki, None, "").await;
    // The host daemon has no pins to show.
    let socket = serve(&h);
    let refused = call(&socket, ControlRequest::Pins).await.unwrap_err();
    assert!(refused.to_string().contains("not available"), "{refused}");
    let store = Arc::new(FilePins::open(&h.dir.path().join(PINS_FILE)).unwrap());
    let instance = "aws:123456789012/i-0abc";
    let pin = Pin {
        key: format!("ed25519:{}", "ab".repeat(32)),
        launch: 1_764_158_400,
        pinned_at: 1_764_158_500,
    };
    store.claim(instance, pin.clone()).await.unwrap().unwrap();
    let socket = h.dir.path().join("run/gateway.sock");
    let server = ControlServer::bind(
        &socket,
        None,
        h.responder.clone(),
        Arc::new(Pins(store.clone())),
    )
    .unwrap();
    tokio::spawn(server.serve());
    let cli = |args: &[&str]| cli(&socket, args);
    let out = cli(&["pins"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("{instance} pinned to {}", pin.key))
            && stdout.contains("launch 2025-11-26T12:00:00Z"),
        "{stdout}"
    );
    let out = cli(&["pins", "--json"]).await.unwrap();
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["pins"][0]["instance"], instance);
    assert_eq!(listed["pins"][0]["key"], pin.key.as_str());
    let out = cli(&["unpin", instance]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("released the pin of {instance}")),
        "{stdout}"
    );
    assert!(store.list().await.unwrap().is_empty());
    let out = cli(&["unpin", instance]).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("was not pinned"));
    // The release is audited, with who did it.
    let released = format!("enrollment pin of {instance}");
    eventually("the release's record", || {
        h.audit_text().contains(&released)
    })
    .await;
    let record = h
        .audit_lines()
        .into_iter()
        .find(|r| r["message"].as_str().is_some_and(|m| m.contains(&released)))
        .unwrap();
    assert_eq!(record["actor"], "operator (uid 0)", "{record}");
}
