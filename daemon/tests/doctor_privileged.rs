//! `warrant doctor` (the binary, as root) on this host's real facts: the
//! mounts, the sysctl, credential files the test makes with real owners
//! and modes, a CA and trust bundle made by the daemon's own code,
//! listeners the test holds on loopback and a control socket answering.
//! Each verdict is checked against what the host says independently.
//! Needs root; run by `cargo xtask test` (feature `privileged-tests`).
#![cfg(feature = "privileged-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::TcpListener, os::unix::fs::PermissionsExt, path::Path, sync::Arc};

use serde_json::Value;
use warrant::{
    control::{ControlServer, NoBackend},
    tls::LocalCa,
};
use warrant_test_support::{
    monitored::Monitored,
    pki::TestPki,
    prereq::{self, Need},
};

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn config(dir: &Path, listen: u16, metrics: u16) -> String {
    let d = dir.display();
    format!(
        r#"
[daemon]
listen = "127.0.0.1:{listen}"
listen6 = ""
metrics = "127.0.0.1:{metrics}"
state_dir = "{d}/state"
audit_log = "{d}/audit.jsonl"

[control]
socket = "{d}/control.sock"

[[workload]]
name = "agents"
slice = "warrant-agents.slice"

[[upstream]]
host = "api.openai.com"
scheme = "openai"
credential = "good"

[[upstream]]
host = "api.anthropic.com"
scheme = "anthropic"
credential = "loose"

[[credential]]
name = "good"
source = "file"
path = "{d}/good.key"

[[credential]]
name = "loose"
source = "file"
path = "{d}/loose.key"
"#
    )
}

/// `warrant doctor --json --config FILE`: (exit success, the checks by name).
async fn doctor(config: &Path) -> (bool, Vec<Value>) {
    let config = config.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_warrant"))
            .args(["doctor", "--json", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        out.status.success(),
        report["checks"].as_array().cloned().unwrap_or_default(),
    )
}

fn check<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks:#?}"))
}

#[tokio::test]
async fn doctor_reports_this_hosts_real_state_and_fails_on_a_loose_credential_file() {
    if !prereq::require(&[Need::Root, Need::Cgroup2]) {
        return;
    }
    let pki = TestPki::new();
    let daemon = Monitored::start(&pki, None, "").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("good.key"), "sk-good", 0o600);
    write(&d.join("loose.key"), "sk-loose", 0o644);
    let state = d.join("state");
    let ca = LocalCa::load_or_create(&state, &["api.openai.com".into()]).unwrap();
    ca.write_trust_bundle(&[]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = |l: &TcpListener| l.local_addr().unwrap().port();
    let config_path = d.join("warrant.toml");
    std::fs::write(&config_path, config(d, port(&listener), port(&metrics))).unwrap();
    let control = ControlServer::bind(
        &d.join("control.sock"),
        None,
        daemon.responder.clone(),
        Arc::new(NoBackend),
    )
    .unwrap();
    tokio::spawn(control.serve());

    let (ok, checks) = doctor(&config_path).await;
    assert!(!ok, "a failing check makes the exit status non-zero");
    let verdict = |name: &str| {
        check(&checks, name)["verdict"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let mount = warrant::mounts::cgroup2().unwrap();
    assert_eq!(verdict("cgroup2"), "pass");
    assert!(
        check(&checks, "cgroup2")["detail"]
            .as_str()
            .unwrap()
            .contains(&mount.display().to_string())
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let bpffs_here = mounts.lines().any(|l| {
        l.split_whitespace().nth(2) == Some("bpf")
            && l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
    });
    assert_eq!(verdict("bpffs"), if bpffs_here { "pass" } else { "fail" });
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap();
    let paranoid: i32 = paranoid.trim().parse().unwrap();
    assert!(
        check(&checks, "perf_event_paranoid")["detail"]
            .as_str()
            .unwrap()
            .starts_with(&paranoid.to_string())
    );
    // The kernel checks are the daemon's own probe, finding by finding
    // (cgroup v2 and bpffs are the mount checks above).
    use warrant::redirect::features::{Feature, State, probe};
    let report = probe(&Default::default());
    // The sysctl matters only where the prctl watch needs a perf event
    // (no fentry: on this host fentry programs may be refused).
    let by_fentry = report
        .get(Feature::PrctlWatch)
        .is_some_and(|f| f.state == State::Present);
    assert_eq!(
        verdict("perf_event_paranoid"),
        if paranoid <= 2 || by_fentry {
            "pass"
        } else {
            "warn"
        }
    );
    assert!(
        check(&checks, "kernel")["detail"]
            .as_str()
            .unwrap()
            .contains(&report.release)
    );
    for finding in report
        .findings
        .iter()
        .filter(|f| !matches!(f.feature, Feature::CgroupV2 | Feature::Bpffs))
    {
        let key = serde_json::to_value(finding.feature).unwrap();
        let name = format!("kernel {}", key.as_str().unwrap());
        let expected = match finding.state {
            State::Present => "pass",
            State::Absent if finding.required => "fail",
            _ => "warn",
        };
        assert_eq!(verdict(&name), expected, "{name}: {finding}");
    }
    assert_eq!(
        verdict("kernel connect_hooks"),
        "pass",
        "this host redirects"
    );

    assert_eq!(verdict("credential good"), "pass");
    let loose = check(&checks, "credential loose");
    assert_eq!(loose["verdict"], "fail");
    assert_eq!(
        loose["fix"],
        format!("chmod 0600 {}", d.join("loose.key").display())
    );
    // check-config refuses the same file, naming it.
    let config_check = check(&checks, "config");
    assert_eq!(config_check["verdict"], "fail");
    assert!(
        config_check["detail"]
            .as_str()
            .unwrap()
            .contains("loose.key")
    );

    assert_eq!(verdict("local CA"), "pass");
    assert_eq!(verdict("trust bundle"), "pass");
    assert_eq!(verdict("listener (IPv4)"), "pass");
    assert_eq!(verdict("metrics"), "pass");
    assert_eq!(verdict("daemon"), "pass");
    assert_eq!(verdict("audit log"), "pass");

    // Fixed as told: the only failures left are gone.
    std::fs::set_permissions(d.join("loose.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    // A bundle without the CA (written before a reissue, say) fails.
    std::fs::write(state.join(warrant::tls::TRUST_BUNDLE_FILE), "").unwrap();
    let (_, checks) = doctor(&config_path).await;
    assert_eq!(check(&checks, "credential loose")["verdict"], "pass");
    assert_eq!(check(&checks, "config")["verdict"], "pass");
    let bundle = check(&checks, "trust bundle");
    assert_eq!(bundle["verdict"], "fail");
    assert!(
        bundle["fix"]
            .as_str()
            .unwrap()
            .starts_with("systemctl restart warrant")
    );
    // With the listener gone, redirected connections have nowhere to land.
    drop(listener);
    let (_, checks) = doctor(&config_path).await;
    assert_eq!(check(&checks, "listener (IPv4)")["verdict"], "fail");
}
