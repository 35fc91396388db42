//! `warrant check-config` for the policy, posture and credential sections:
//! each mistake is reported at its file:line:column.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;

use warrant::{
    config::{Config, ConfigError, Location},
    service::CheckReport,
};
use warrant_test_support::config::{BASE, BASE_LINES};

/// What `warrant check-config` does: parse, then compile every section.
fn check(text: &str) -> Result<CheckReport, ConfigError> {
    warrant::service::check_config(&Config::parse(text, "w.toml")?)
}

fn error_at(extra: &str) -> (Location, String) {
    let err = check(&format!("{BASE}{extra}")).unwrap_err();
    let at = err.at.unwrap_or_else(|| panic!("no location: {err}"));
    (
        Location {
            line: at.line - BASE_LINES,
            column: at.column,
        },
        err.to_string(),
    )
}

fn loc(line: usize, column: usize) -> Location {
    Location { line, column }
}

#[test]
fn bad_time_zone_is_located() {
    let (at, msg) = error_at(
        "[[policy]]\nworkload = \"agent\"\nupstreams = [\"api.openai.com\"]\ntime = { days = \"Mon-Fri\", tz = \"America/Nowhere\" }\n",
    );
    assert_eq!(at, loc(4, 33), "{msg}");
    assert!(msg.contains("America/Nowhere"), "{msg}");
}

#[test]
fn bad_days_and_hours_are_located() {
    let (at, msg) = error_at("[[policy]]\nworkload = \"agent\"\ntime = { days = \"Mon-Fry\" }\n");
    assert_eq!(at, loc(3, 17), "{msg}");
    assert!(msg.contains("Mon-Fry"), "{msg}");
    let (at, msg) = error_at("[[policy]]\nworkload = \"agent\"\ntime = { hours = \"8-18\" }\n");
    assert_eq!(at, loc(3, 18), "{msg}");
    assert!(msg.contains("HH:MM-HH:MM"), "{msg}");
}

#[test]
fn bad_model_glob_is_located() {
    let (at, msg) = error_at("[[policy]]\nworkload = \"agent\"\nmodels = [\"gpt-[4o\"]\n");
    assert_eq!(at, loc(3, 11), "{msg}");
}

#[test]
fn unknown_posture_reference_is_located() {
    let (at, msg) = error_at("[[policy]]\nworkload = \"agent\"\nposture = [\"edr\"]\n");
    assert_eq!(at, loc(3, 12), "{msg}");
    assert!(msg.contains("no [[posture]] defines"), "{msg}");
}

#[test]
fn posture_sections_are_checked() {
    let (at, msg) = error_at(
        "[[posture]]\nname = \"edr\"\nsource = \"file\"\npath = \"/x\"\nmax_age = \"soon\"\n",
    );
    assert_eq!(at, loc(5, 11), "{msg}");
    let (at, msg) = error_at("[[posture]]\nname = \"edr\"\nsource = \"command\"\n");
    assert_eq!(at, loc(3, 10), "{msg}");
    assert!(msg.contains("command"), "{msg}");
    let ok = check(&format!(
        "{BASE}[[posture]]\nname = \"edr\"\nsource = \"command\"\ncommand = [\"/usr/bin/edr-status\", \"--json\"]\nmax_age = \"15m\"\n[[policy]]\nworkload = \"agent\"\nposture = [\"edr\"]\n"
    ));
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn bad_exe_signer_is_located() {
    let (at, msg) =
        error_at("[[policy]]\nworkload = \"agent\"\nexe_signers = [\"ssh-rsa nope\"]\n");
    assert_eq!(at, loc(3, 16), "{msg}");
}

#[test]
fn credential_references_must_exist_and_not_loop() {
    let (at, msg) = error_at(
        "[[credential]]\nname = \"tok\"\nsource = \"oauth2\"\ntoken_url = \"https://idp.example/token\"\nclient_id = \"c\"\nclient_secret_credential = \"nope\"\n",
    );
    assert_eq!(at, loc(6, 28), "{msg}");
    assert!(msg.contains("\"nope\""), "{msg}");
    let (at, msg) = error_at(
        "[[credential]]\nname = \"a\"\nsource = \"token-exchange\"\ntoken_url = \"https://idp.example/token\"\nsubject_token_credential = \"b\"\n[[credential]]\nname = \"b\"\nsource = \"token-exchange\"\ntoken_url = \"https://idp.example/token\"\nsubject_token_credential = \"a\"\n",
    );
    assert_eq!(at, loc(2, 8), "{msg}");
    assert!(msg.contains("depends on itself"), "{msg}");
}

#[test]
fn oauth_settings_are_checked() {
    let (at, msg) = error_at(
        "[[credential]]\nname = \"tok\"\nsource = \"oauth2\"\ntoken_url = \"http://idp.example/token\"\nclient_id = \"c\"\nclient_secret_credential = \"openai\"\n",
    );
    assert_eq!(at, loc(4, 13), "{msg}");
    assert!(msg.contains("https"), "{msg}");
    let (_, msg) = error_at(
        "[[credential]]\nname = \"tok\"\nsource = \"oauth2\"\ntoken_url = \"https://idp.example/token\"\nclient_id = \"c\"\n",
    );
    assert!(msg.contains("client authentication"), "{msg}");
    let (at, msg) = error_at(
        "[[credential]]\nname = \"tok\"\nsource = \"oauth2\"\ntoken_url = \"https://idp.example/token\"\nclient_id = \"c\"\nclient_auth = \"private_key_jwt\"\n",
    );
    assert_eq!(at, loc(6, 15), "{msg}");
    let (at, msg) = error_at(
        "[[credential]]\nname = \"tok\"\nsource = \"oauth2\"\ntoken_url = \"https://idp.example/token\"\nclient_id = \"c\"\nprivate_key_path = \"/k.pem\"\nsigning_alg = \"XS999\"\n",
    );
    assert_eq!(at, loc(7, 15), "{msg}");
    let (at, msg) = error_at(
        "[[credential]]\nname = \"x\"\nsource = \"exec\"\ncommand = [\"/bin/x\"]\ntimeout = \"-3s\"\n",
    );
    assert_eq!(at, loc(5, 11), "{msg}");
    // Loopback http is allowed (a local token agent, tests).
    let ok = check(&format!(
        "{BASE}[[credential]]\nname = \"tok\"\nsource = \"oauth2\"\ntoken_url = \"http://127.0.0.1:8080/token\"\nclient_id = \"c\"\nclient_secret_credential = \"openai\"\nrefresh_ahead = \"2m\"\n"
    ));
    assert!(ok.is_ok(), "{:?}", ok.err());
}

#[test]
fn loose_credential_file_is_refused_with_its_path_and_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openai-key");
    std::fs::write(&path, "sk-test").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (at, msg) = error_at(&format!(
        "[[credential]]\nname = \"file-key\"\nsource = \"file\"\npath = \"{}\"\n",
        path.display()
    ));
    assert_eq!(at, loc(2, 8), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    // As root: the mode is what is wrong. As another user: the owner.
    assert!(
        msg.contains("0644") || msg.contains("owned by uid"),
        "{msg}"
    );
}

#[test]
fn missing_required_keys_are_reported() {
    let (at, msg) = error_at("[[credential]]\nname = \"k\"\nsource = \"file\"\n");
    assert_eq!(at, loc(3, 10), "{msg}");
    assert!(msg.contains("`path`"), "{msg}");
    let (_, msg) = error_at("[[credential]]\nname = \"k\"\nsource = \"systemd\"\n");
    assert!(msg.contains("`id`"), "{msg}");
    let (_, msg) = error_at(
        "[[credential]]\nname = \"k\"\nsource = \"token-exchange\"\ntoken_url = \"https://i/t\"\n",
    );
    assert!(msg.contains("subject_token_path"), "{msg}");
}

#[test]
fn embedded_default_still_parses() {
    Config::embedded_default().unwrap();
}

/// Every key the commented reference in default.toml documents for the
/// credential, posture and policy sections is accepted.
#[test]
fn every_documented_key_parses() {
    let text = format!(
        r#"{BASE}
[[credential]]
name = "anthropic-exec"
source = "exec"
command = ["/usr/local/bin/fetch-key", "anthropic"]
timeout = "10s"
[[credential]]
name = "idp-client-secret"
source = "systemd"
id = "idp-client-secret"
[[credential]]
name = "openai-oauth"
source = "oauth2"
token_url = "https://idp.example.com/oauth2/token"
client_id = "warrant-host-1"
client_secret_credential = "idp-client-secret"
client_auth = "client_secret_post"
audience = "https://api.openai.com"
scope = "model.request"
resource = "https://api.openai.com/"
refresh_ahead = "5m"
refresh_interval = "5m"
[[credential]]
name = "openai-jwt"
source = "oauth2"
token_url = "https://idp.example.com/oauth2/token"
client_id = "warrant-host-1"
private_key_path = "/nonexistent/host-key.pem"
signing_alg = "ES256"
key_id = "host-key-1"
assertion_audience = "https://idp.example.com/"
[[credential]]
name = "anthropic-federated"
source = "token-exchange"
token_url = "https://idp.example.com/oauth2/token"
subject_token_path = "/run/warrant/identity.jwt"
subject_token_type = "urn:ietf:params:oauth:token-type:jwt"
requested_token_type = "urn:ietf:params:oauth:token-type:access_token"
audience = "https://api.anthropic.com"
[[credential]]
name = "jwt-bearer"
source = "token-exchange"
grant = "jwt-bearer"
token_url = "https://idp.example.com/oauth2/token"
subject_token_credential = "anthropic-federated"
[[posture]]
name = "vuln-scan"
source = "file"
path = "/var/lib/scanner/latest.json"
max_age = "1h"
interval = "60s"
[[posture]]
name = "edr"
source = "command"
command = ["/usr/bin/edr-status", "--json"]
timeout = "10s"
[[policy]]
workload = "agent"
upstreams = ["api.openai.com"]
paths = ["/v1/chat/completions", "/v1beta/models/*"]
models = ["gpt-4o*"]
environments = ["production"]
regions = ["us-*"]
time = {{ days = "Mon-Fri", hours = "22:00-06:00", tz = "America/New_York" }}
posture = ["vuln-scan", "edr"]
exe_signers = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEzZqFN1uBpGFJVwLtJWUxbqbR6PUVmz9DjuYJ8TzLdm release"]
exe_signature_namespace = "warrant-exe"
tokens_per_hour = 200000
cost_per_day_usd = 50.0
requests_per_minute = 60
"#
    );
    // Parsed, and every section compiled into its runtime form.
    check(&text).unwrap();
}
