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
    assert!(err.message().contains("lisen"), "{err}");
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
    assert!(err.message().contains("\"nope\""), "{err}");
}

#[test]
fn bad_cgroup_glob_is_rejected() {
    let text = "[[workload]]\nname = \"a\"\ncgroup = \"/x/[oops\"\n";
    let err = Config::parse(text, "w.toml").unwrap_err();
    assert_eq!(err.at.map(|l| l.line), Some(3), "{err}");
    assert!(err.message().contains("bad cgroup glob"), "{err}");
}

#[test]
fn non_loopback_listener_is_rejected() {
    let err = Config::parse("[daemon]\nlisten = \"0.0.0.0:15443\"\n", "w.toml").unwrap_err();
    assert!(err.message().contains("not a loopback"), "{err}");
}

#[test]
fn policy_must_name_a_defined_workload() {
    let text = "[[policy]]\nworkload = \"ghost\"\n";
    let err = Config::parse(text, "w.toml").unwrap_err();
    assert!(err.message().contains("ghost"), "{err}");
    assert_eq!(err.at.map(|l| l.line), Some(2));
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
    assert!(err.message().contains("bool"), "{err}");

    let text = "[[workload]]\nname = \"a\"\nallow_user_namespace = true\n";
    let err = Config::parse(text, "w.toml").unwrap_err();
    assert_eq!(err.at, Some(Location { line: 3, column: 1 }), "{err}");
    assert!(err.message().contains("allow_user_namespace"), "{err}");
}

#[test]
fn errors_are_typed_and_keep_their_place() {
    let text = "[[policy]]\nworkload = \"ghost\"\n";
    let err = Config::parse(text, "w.toml").unwrap_err();
    assert_eq!(err.kind, ConfigErrorKind::Reference);
    assert!(matches!(
        err.problem().downcast_ref::<Problem>(),
        Some(Problem::Undefined { name, .. }) if name == "ghost"
    ));
    assert_eq!(
        err.to_string(),
        "w.toml:2:12: policy names workload \"ghost\", which no [[workload]] defines"
    );
    // A plain (not Spanned) value is placed at its key.
    let err = Config::parse("[proxy]\n\nmax_connections = 0\n", "w.toml").unwrap_err();
    assert_eq!(err.kind, ConfigErrorKind::Invalid);
    assert!(
        err.to_string()
            .starts_with("w.toml:3:19: [proxy] max_connections"),
        "{err}"
    );
    let err = Config::parse("[daemon]\nlisten = \"0.0.0.0:15443\"\n", "w.toml").unwrap_err();
    assert!(err.to_string().starts_with("w.toml:2:10: "), "{err}");
    // A default that conflicts is placed at the section that leaves it so.
    let err = Config::parse("[daemon]\nlisten = \"127.0.0.1:443\"\n", "w.toml").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("w.toml:2:10: [intercept] ports"),
        "{err}"
    );
    let err = Config::parse(
        "[intercept]\nblock_quic = true\n[daemon]\nlisten = \"127.0.0.1:443\"\n",
        "w.toml",
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("w.toml:1:1: "), "{err}");
    let err = Config::load(std::path::Path::new("/nonexistent/warrant.toml")).unwrap_err();
    assert_eq!(err.kind, ConfigErrorKind::Read);
    assert!(
        err.to_string()
            .starts_with("/nonexistent/warrant.toml: cannot read: "),
        "{err}"
    );
}

#[test]
fn credential_and_posture_sources_are_spelled_as_the_enums_say() {
    let text = "[[credential]]\nname = \"k\"\nsource = \"vault\"\n";
    let err = Config::parse(text, "w.toml").unwrap_err();
    assert_eq!(err.kind, ConfigErrorKind::Syntax);
    assert_eq!(
        err.at,
        Some(Location {
            line: 3,
            column: 10
        }),
        "{err}"
    );
    assert!(err.message().contains("token-exchange"), "{err}");
    let text = "[[posture]]\nname = \"p\"\nsource = \"http\"\n";
    let err = Config::parse(text, "w.toml").unwrap_err();
    assert_eq!(
        err.at,
        Some(Location {
            line: 3,
            column: 10
        }),
        "{err}"
    );
    let config = Config::parse(
        "[[credential]]\nname = \"k\"\nsource = \"token-exchange\"\n",
        "w.toml",
    )
    .unwrap();
    assert_eq!(
        *config.credentials[0].source.get_ref(),
        CredentialSourceKind::TokenExchange
    );
}

/// config holds syntax and defaults: it names no other module of the crate
/// (domains import config, never the reverse).
#[test]
fn config_imports_no_other_module_of_the_crate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                let after = &rest[at + "crate::".len()..];
                assert!(
                    after.starts_with("config"),
                    "{}:{}: {line}",
                    path.display(),
                    n + 1
                );
                rest = after;
            }
            assert!(
                !code.contains("super::super"),
                "{}:{}",
                path.display(),
                n + 1
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 4,
        "only {checked} files read from {}",
        dir.display()
    );
}

/// The local CA is name-constrained to exactly the intercepted hosts, and
/// a leaf is minted per SNI: a wildcard upstream would need a `*.` name
/// constraint covering every customer's resource under it (a stolen CA key
/// could then impersonate all of them). So a wildcard is refused, saying
/// to list the concrete hosts.
#[test]
fn a_wildcard_upstream_host_is_refused() {
    for host in [
        "*.openai.azure.com",
        "*.services.ai.azure.com",
        "res*.openai.azure.com",
    ] {
        let text = format!(
            "[[upstream]]\nhost = \"{host}\"\nscheme = \"azure\"\ncredential = \"k\"\n\n[[credential]]\nname = \"k\"\nsource = \"file\"\npath = \"/etc/warrant/k\"\n"
        );
        let err = Config::parse(&text, "w.toml").unwrap_err();
        assert_eq!(err.at.map(|at| at.line), Some(2), "{err}");
        assert!(err.message().contains("wildcard"), "{host}: {err}");
    }
}
