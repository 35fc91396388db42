//! The configuration keys the injector added: `[proxy]` and the upstream
//! `plain_http`, their documented defaults and their validation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use warrant::config::{AgentKeyAction, Config};

const UPSTREAM: &str = r#"
[[upstream]]
host = "api.openai.com"
scheme = "openai"
credential = "c"

[[credential]]
name = "c"
source = "file"
path = "/x"
"#;

#[test]
fn proxy_defaults_are_the_documented_ones() {
    let config = Config::parse(UPSTREAM, "t.toml").unwrap();
    let proxy = &config.proxy;
    assert_eq!(proxy.agent_keys, AgentKeyAction::Refuse);
    assert_eq!(proxy.header_read_timeout_secs, 10);
    assert_eq!(proxy.idle_timeout_secs, 300);
    assert_eq!(proxy.max_header_bytes, 64 * 1024);
    assert_eq!(proxy.max_connections, 4096);
    assert_eq!(proxy.upstream_connect_timeout_secs, 10);
    assert_eq!(proxy.upstream_response_timeout_secs, 600);
    assert!(!config.upstreams[0].plain_http);
    // The embedded default config documents the same section.
    let default = Config::embedded_default().unwrap();
    assert_eq!(default.proxy.agent_keys, AgentKeyAction::Refuse);
    assert!(warrant::config::DEFAULT_CONFIG.contains("# agent_keys = \"refuse\""));
}

#[test]
fn proxy_keys_parse_and_bad_values_are_refused() {
    let text = format!("[proxy]\nagent_keys = \"warn\"\nmax_connections = 3\n{UPSTREAM}");
    let config = Config::parse(&text, "t.toml").unwrap();
    assert_eq!(config.proxy.agent_keys, AgentKeyAction::Warn);
    assert_eq!(config.proxy.max_connections, 3);

    let err = Config::parse("[proxy]\nagent_keys = \"ignore\"\n", "t.toml").unwrap_err();
    assert!(err.to_string().contains("t.toml:2:"), "{err}");
    let err = Config::parse("[proxy]\nidle_timeout_secs = 0\n", "t.toml").unwrap_err();
    assert!(err.message().contains("idle_timeout_secs"), "{err}");
}

#[test]
fn an_upstream_host_must_be_a_dns_name() {
    for host in ["10.0.0.1", "api.openai.com:443", "https://api.openai.com"] {
        let text = UPSTREAM.replace("api.openai.com", host);
        let err = Config::parse(&text, "t.toml").unwrap_err();
        assert!(err.message().contains("DNS name"), "{host}: {err}");
        assert_eq!(err.at.unwrap().line, 3, "{err}");
    }
}
