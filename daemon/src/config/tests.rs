#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn embedded_default_config_parses() {
    let config = Config::embedded_default().unwrap();
    assert_eq!(config.daemon.listen.port(), 15443);
    assert_eq!(config.intercept.ports, vec![443]);
    assert_eq!(config.upstreams.len(), 3);
    assert_eq!(
        config.workloads[0].slice.as_ref().unwrap().get_ref(),
        "warrant-agents.slice"
    );
}

#[test]
fn empty_file_gets_documented_defaults() {
    let config = Config::parse("", "t.toml").unwrap();
    assert_eq!(config.daemon.listen, default_listen());
    assert_eq!(config.daemon.bypass_mark, DEFAULT_BYPASS_MARK);
    assert!(config.intercept.block_quic);
    assert_eq!(config.instance.provider, "host");
}

#[test]
fn unknown_key_is_reported_with_line_and_column() {
    let text = "[daemon]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n";
    let err = Config::parse(text, "w.toml").unwrap_err();
    assert_eq!(err.at, Some(Location { line: 3, column: 1 }), "{err}");
    assert!(err.to_string().starts_with("w.toml:3:1: "), "{err}");
    assert!(err.message.contains("lisen"), "{err}");
}

#[test]
fn unknown_credential_reference_points_at_the_value() {
    let text = r#"
[[upstream]]
host = "api.openai.com"
scheme = "openai"
credential = "nope"
"#;
    let err = Config::parse(text, "w.toml").unwrap_err();
    assert_eq!(
        err.at,
        Some(Location {
            line: 5,
            column: 14
        }),
        "{err}"
    );
    assert!(err.message.contains("\"nope\""), "{err}");
}

#[test]
fn bad_cgroup_glob_is_rejected() {
    let text = "[[workload]]\nname = \"a\"\ncgroup = \"/x/[oops\"\n";
    let err = Config::parse(text, "w.toml").unwrap_err();
    assert_eq!(err.at.map(|l| l.line), Some(3), "{err}");
    assert!(err.message.contains("bad cgroup glob"), "{err}");
}

#[test]
fn non_loopback_listener_is_rejected() {
    let err = Config::parse("[daemon]\nlisten = \"0.0.0.0:15443\"\n", "w.toml").unwrap_err();
    assert!(err.message.contains("not a loopback"), "{err}");
}

#[test]
fn policy_must_name_a_defined_workload() {
    let text = "[[policy]]\nworkload = \"ghost\"\n";
    let err = Config::parse(text, "w.toml").unwrap_err();
    assert!(err.message.contains("ghost"), "{err}");
    assert_eq!(err.at.map(|l| l.line), Some(2));
}

#[test]
fn malformed_hash_is_rejected() {
    let text = "[[workload]]\nname = \"a\"\nexe_sha256 = [\"abc\"]\n";
    let err = Config::parse(text, "w.toml").unwrap_err();
    assert!(err.message.contains("SHA-256"), "{err}");
}

#[test]
fn listen6_defaults_to_ipv6_loopback_on_the_same_port() {
    let config = Config::parse("[daemon]\nlisten = \"127.0.0.1:1234\"\n", "t").unwrap();
    assert_eq!(config.listen6(), Some("[::1]:1234".parse().unwrap()));
    let config = Config::parse("[daemon]\nlisten6 = \"\"\n", "t").unwrap();
    assert_eq!(config.listen6(), None);
}

#[test]
fn allow_user_namespaces_defaults_to_false_and_parses_per_workload() {
    let text = "[[workload]]\nname = \"a\"\nunit = \"a.service\"\n\n\
                [[workload]]\nname = \"b\"\nexe = \"/usr/bin/b\"\nallow_user_namespaces = true\n";
    let config = Config::parse(text, "w.toml").unwrap();
    assert!(!config.workloads[0].allow_user_namespaces);
    assert!(config.workloads[1].allow_user_namespaces);
}

#[test]
fn allow_user_namespaces_must_be_a_boolean_and_spelled_right() {
    let text = "[[workload]]\nname = \"a\"\nallow_user_namespaces = \"yes\"\n";
    let err = Config::parse(text, "w.toml").unwrap_err();
    assert_eq!(err.at.map(|l| l.line), Some(3), "{err}");
    assert!(err.to_string().starts_with("w.toml:3:"), "{err}");
    assert!(err.message.contains("bool"), "{err}");

    let text = "[[workload]]\nname = \"a\"\nallow_user_namespace = true\n";
    let err = Config::parse(text, "w.toml").unwrap_err();
    assert_eq!(err.at, Some(Location { line: 3, column: 1 }), "{err}");
    assert!(err.message.contains("allow_user_namespace"), "{err}");
}
