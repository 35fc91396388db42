//! The `[audit]`, `[control]` and `[response]` keys, as the commented
//! reference in default.toml documents them, parse with their defaults; a
//! non-loopback metrics address is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use warrant::config::{AuditFailureMode, Config};

/// The commented keys of default.toml between `[audit]` and `[intercept]`,
/// uncommented.
fn documented_sections() -> String {
    let text = warrant::config::DEFAULT_CONFIG;
    let start = text.find("\n[audit]\n").unwrap() + 1;
    let end = text.find("\n[intercept]\n").unwrap();
    text[start..end]
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if rest.contains(" = ") && !rest.contains(':') => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_documented_audit_control_and_response_key_parses_with_its_default() {
    let sections = documented_sections();
    assert!(sections.contains("\nmax_bytes = 104857600"), "{sections}");
    let config = Config::parse(&sections, "documented").unwrap();
    let defaults = Config::parse("", "empty").unwrap();
    assert_eq!(config.audit.max_bytes, defaults.audit.max_bytes);
    assert_eq!(config.audit.keep, defaults.audit.keep);
    assert_eq!(config.audit.on_failure, AuditFailureMode::Closed);
    assert_eq!(defaults.audit.on_failure, AuditFailureMode::Closed);
    assert_eq!(config.control.socket, defaults.control.socket);
    assert_eq!(config.control.admin_group.as_deref(), Some("warrant-admin"));
    assert_eq!(config.response.denials, defaults.response.denials);
    assert_eq!(
        config.response.exe_check_secs,
        defaults.response.exe_check_secs
    );
    assert_eq!(
        config.response.quarantine_secs,
        defaults.response.quarantine_secs
    );
    assert_eq!(config.response.rate_multiple, 0.0);
    assert!(config.response.agent_key);
}

#[test]
fn a_metrics_address_off_loopback_is_refused() {
    let err = Config::parse("[daemon]\nmetrics = \"0.0.0.0:9464\"\n", "t").unwrap_err();
    assert!(err.to_string().contains("not a loopback address"), "{err}");
    let err = Config::parse("[response]\nrate_multiple = -1.0\n", "t").unwrap_err();
    assert!(err.to_string().contains("rate_multiple"), "{err}");
    let err = Config::parse("[audit]\non_failure = \"maybe\"\n", "t").unwrap_err();
    assert!(err.to_string().contains("maybe"), "{err}");
}
