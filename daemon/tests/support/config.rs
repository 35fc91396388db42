//! Configuration text the config tests share.

/// A minimal valid configuration: one workload, one upstream, its
/// credential (from systemd, so nothing is read when it is checked).
pub const BASE: &str = r#"[[workload]]
name = "agent"
unit = "agent.service"
[[upstream]]
host = "api.openai.com"
scheme = "openai"
credential = "openai"
[[credential]]
name = "openai"
source = "systemd"
id = "openai"
"#;

/// Lines in [`BASE`], so that expected line numbers read naturally.
pub const BASE_LINES: usize = 11;
