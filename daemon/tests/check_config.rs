//! `warrant check-config FILE`, the binary: every section compiled as
//! `warrant run` would, so a mistake only a domain finds is reported with
//! its place in the file; and a dry run, so checking a file runs no
//! credential command, contacts no token endpoint and writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::TcpListener, path::Path, process::Output};

use warrant_test_support::config::BASE;

fn check_config(path: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_warrant"))
        .arg("check-config")
        .arg(path)
        .env("WARRANT_LOG", "warn")
        .output()
        .unwrap()
}

/// A file that parses (every name defined, every type right) but whose
/// time zone only the policy's compile step can refuse.
#[test]
fn an_error_only_a_domain_finds_is_reported_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warrant.toml");
    std::fs::write(
        &path,
        format!(
            "{BASE}[[policy]]\nworkload = \"agent\"\nupstreams = [\"api.openai.com\"]\ntime = {{ tz = \"Mars/Olympus_Mons\" }}\n"
        ),
    )
    .unwrap();
    assert!(warrant::config::Config::load(&path).is_ok());
    let out = check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let expected = format!("{}:15:15: ", path.display());
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(stderr.contains("Mars/Olympus_Mons"), "{stderr}");

    // The same for an [instance] the daemon could not use, and a CA file
    // an upstream names that is not there.
    std::fs::write(&path, format!("[instance]\nprovider = \"aws\"\n{BASE}")).unwrap();
    let out = check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}:2:12: ", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("trust_file"), "{stderr}");
    let missing = dir.path().join("no-such-ca.pem");
    std::fs::write(
        &path,
        BASE.replace(
            "credential = \"openai\"\n[[credential]]",
            &format!(
                "credential = \"openai\"\nca_file = \"{}\"\n[[credential]]",
                missing.display()
            ),
        ),
    )
    .unwrap();
    let out = check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}:8:11: ", path.display())),
        "{stderr}"
    );
}

/// The identity keys: a slice systemd would not lay out, `delegated`
/// without the unit it applies to, and a passthrough entry that is neither
/// a CIDR nor a known name are refused at their place.
#[test]
fn identity_keys_that_cannot_work_are_reported_at_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warrant.toml");
    let cases = [
        (
            BASE.replace(
                "unit = \"agent.service\"",
                "slice = \"warrant--agents.slice\"",
            ),
            "3:9: ",
            "dash",
        ),
        (
            BASE.replace(
                "unit = \"agent.service\"",
                "slice = \"warrant-agents.slice\"\ndelegated = true",
            ),
            "2:8: ",
            "needs a unit",
        ),
        (
            format!("[intercept]\npassthrough_deny = [\"localhost\"]\n{BASE}"),
            "2:21: ",
            "passthrough_deny",
        ),
    ];
    for (text, place, says) in cases {
        std::fs::write(&path, &text).unwrap();
        let out = check_config(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: {stderr}");
        assert!(
            stderr.starts_with(&format!("{}:{place}", path.display())),
            "{text}: {stderr}"
        );
        assert!(stderr.contains(says), "{text}: {stderr}");
    }
}

/// The attacker's angle: if checking a file ran its commands or called its
/// endpoints, `check-config` on an untrusted file would run code as root.
#[test]
fn checking_runs_no_command_contacts_no_endpoint_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let state_dir = dir.path().join("state");
    let token_endpoint = TcpListener::bind("127.0.0.1:0").unwrap();
    token_endpoint.set_nonblocking(true).unwrap();
    let path = dir.path().join("warrant.toml");
    std::fs::write(
        &path,
        format!(
            r#"[daemon]
state_dir = "{state}"
audit_log = "{state}/audit.jsonl"
{BASE}[[credential]]
name = "by-command"
source = "exec"
command = ["/bin/sh", "-c", "touch {ran}-credential; echo '{{\"value\": \"x\"}}'"]
[[credential]]
name = "by-token"
source = "oauth2"
token_url = "http://{endpoint}/token"
client_id = "warrant"
client_secret_credential = "openai"
[[posture]]
name = "edr"
source = "command"
command = ["/bin/sh", "-c", "touch {ran}-posture"]
[[policy]]
workload = "agent"
upstreams = ["api.openai.com"]
posture = ["edr"]
"#,
            state = state_dir.display(),
            ran = ran.display(),
            endpoint = token_endpoint.local_addr().unwrap(),
        ),
    )
    .unwrap();
    let out = check_config(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(": ok (1 workloads, 1 upstreams, 3 credentials, 1 policies)"),
        "{stdout}"
    );
    assert!(!dir.path().join("ran-credential").exists());
    assert!(!dir.path().join("ran-posture").exists());
    assert!(
        !state_dir.exists(),
        "check-config created the state directory"
    );
    // The process has exited: a connection it made would be queued.
    let accepted = token_endpoint.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "check-config contacted the token endpoint: {accepted:?}"
    );
}

/// Cloud platforms: AWS keys sign Bedrock requests and nothing else, a
/// Bedrock host must name its region (or `region` be set), and a metadata
/// credential source is not contacted by a check.
#[test]
fn cloud_credentials_are_checked_against_their_upstreams_without_contacting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warrant.toml");
    let metadata = TcpListener::bind("127.0.0.1:0").unwrap();
    metadata.set_nonblocking(true).unwrap();
    let keys = format!(
        "[[credential]]\nname = \"role\"\nsource = \"aws-imds\"\nendpoint = \"http://{}\"\n",
        metadata.local_addr().unwrap()
    );
    let upstream = |host: &str, scheme: &str| {
        format!("[[upstream]]\nhost = \"{host}\"\nscheme = \"{scheme}\"\ncredential = \"role\"\n")
    };
    std::fs::write(
        &path,
        format!(
            "{BASE}{}{keys}",
            upstream("bedrock-runtime.eu-west-1.amazonaws.com", "bedrock")
        ),
    )
    .unwrap();
    let out = check_config(&path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // AWS keys on another scheme: at that upstream's credential.
    std::fs::write(
        &path,
        format!("{BASE}{}{keys}", upstream("api.anthropic.com", "anthropic")),
    )
    .unwrap();
    let out = check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}:15:14: ", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("cannot use AWS keys"), "{stderr}");
    // A Bedrock host that names no region.
    std::fs::write(
        &path,
        format!(
            "{BASE}{}{keys}",
            upstream("vpce-0abc.bedrock.example.com", "bedrock")
        ),
    )
    .unwrap();
    let out = check_config(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("names no region"), "{stderr}");
    assert!(
        stderr.starts_with(&format!("{}:13:8: ", path.display())),
        "{stderr}"
    );
    let accepted = metadata.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "check-config contacted the metadata service: {accepted:?}"
    );
}
