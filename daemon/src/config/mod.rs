//! The configuration file: one TOML document, parsed with serde.
//!
//! Every key has a documented default (the `default_*` functions and the
//! `Default` impls say why). Unknown keys are errors, and every error names the
//! file, line and column (see `check`). The embedded default config
//! (`DEFAULT_CONFIG`) is what `warrant run` uses when no file is given, and is
//! the commented reference for every key.

mod location;
mod observe;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

pub use location::{ConfigError, Location};
pub use observe::{
    AuditConfig, AuditFailureMode, ControlConfig, DEFAULT_CONTROL_SOCKET, ResponseConfig,
};

/// The embedded default configuration: a host-only setup whose credentials
/// come from files under /etc/warrant/credentials.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub intercept: InterceptConfig,
    #[serde(default)]
    pub instance: InstanceConfig,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub attest: AttestConfig,
    #[serde(default, rename = "workload")]
    pub workloads: Vec<WorkloadConfig>,
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default, rename = "credential")]
    pub credentials: Vec<CredentialConfig>,
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicyConfig>,
    #[serde(default, rename = "posture")]
    pub postures: Vec<PostureConfig>,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub response: ResponseConfig,
    /// Metering and budgets (see `usage::settings`).
    #[serde(default)]
    pub usage: crate::usage::UsageConfig,
    /// Prices per model, before the built-in table (see `usage::price`).
    #[serde(default, rename = "price")]
    pub prices: Vec<crate::usage::PriceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Where redirected connections land. Loopback only: the listener must not
    /// be reachable from other hosts.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// An IPv6 listener for connections to IPv6 destinations. Default: `[::1]`
    /// on the same port as `listen`, when the host has IPv6; set to "" to use
    /// the IPv4 listener (v4-mapped) for everything.
    #[serde(default)]
    pub listen6: Option<String>,
    /// Root-only directory for the CA key and the host key.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_audit_log")]
    pub audit_log: PathBuf,
    /// Prometheus text-format endpoint; loopback by default.
    #[serde(default = "default_metrics")]
    pub metrics: Option<SocketAddr>,
    /// The cgroup the eBPF programs attach to; they act on tagged cgroups at
    /// or below it. Default: the cgroup2 mount point read from /proc/mounts.
    #[serde(default)]
    pub cgroup_root: Option<PathBuf>,
    /// Where links and maps are pinned in bpffs, so that redirection survives
    /// a daemon restart. Mounted if bpffs is not.
    #[serde(default = "default_bpf_pin_dir")]
    pub bpf_pin_dir: PathBuf,
    /// SO_MARK put on the daemon's own upstream sockets so that the programs
    /// never redirect them. Any non-zero value unused by your firewall rules.
    #[serde(default = "default_bypass_mark")]
    pub bypass_mark: u32,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15443))
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/warrant")
}
fn default_audit_log() -> PathBuf {
    PathBuf::from("/var/log/warrant/audit.jsonl")
}
fn default_metrics() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
}
fn default_bpf_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/warrant")
}
/// "WRNT" in ASCII: unlikely to collide with marks set by firewall tooling.
pub const DEFAULT_BYPASS_MARK: u32 = 0x5752_4e54;
fn default_bypass_mark() -> u32 {
    DEFAULT_BYPASS_MARK
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            listen6: None,
            state_dir: default_state_dir(),
            audit_log: default_audit_log(),
            metrics: default_metrics(),
            cgroup_root: None,
            bpf_pin_dir: default_bpf_pin_dir(),
            bypass_mark: default_bypass_mark(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptConfig {
    /// Destination ports redirected for tagged cgroups, whatever the address
    /// (so IP literals are caught too). 443 covers every provider API.
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    /// Refuse UDP to the intercepted ports from tagged cgroups, so HTTP/3
    /// (QUIC) clients fall back to TCP, which is redirected.
    #[serde(default = "default_true")]
    pub block_quic: bool,
}

fn default_ports() -> Vec<u16> {
    vec![443]
}
fn default_true() -> bool {
    true
}

impl Default for InterceptConfig {
    fn default() -> Self {
        Self {
            ports: default_ports(),
            block_quic: true,
        }
    }
}

/// What the injector does when an agent sends a credential that looks real.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentKeyAction {
    /// Answer 403 in the provider's error shape; nothing is forwarded.
    Refuse,
    /// Log a warning (with a fingerprint, never the value) and forward the
    /// request with the agent's key replaced by the real credential.
    Warn,
}

/// The injector's limits and behaviour. Every default is chosen so that the
/// official SDKs (long streaming responses, large prompts) work unchanged
/// while a slow or hostile client cannot hold resources for long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// An agent-supplied credential that looks like a real provider key is a
    /// finding (the agent should hold only a placeholder): "refuse" (default:
    /// the safe choice) or "warn".
    #[serde(default = "default_agent_keys")]
    pub agent_keys: AgentKeyAction,
    /// Seconds a client has to send its TLS ClientHello or a request's
    /// headers (slowloris). SDKs send both at once. For HTTP/1.1 this also
    /// bounds how long an idle keep-alive connection waits for its next
    /// request (SDK pools expire idle connections sooner: httpx after 5 s).
    #[serde(default = "default_header_read_timeout_secs")]
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may see no byte in either direction before it is
    /// closed. Long enough for a model that thinks before streaming.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Largest request head (h1) or header list (h2) accepted, in bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Agent connections handled at once; more are closed on accept.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds to open TCP and TLS to the upstream before answering 502.
    #[serde(default = "default_upstream_connect_timeout_secs")]
    pub upstream_connect_timeout_secs: u64,
    /// Seconds to wait for the upstream's response headers before answering
    /// 504. Non-streaming completions of large models can take minutes.
    #[serde(default = "default_upstream_response_timeout_secs")]
    pub upstream_response_timeout_secs: u64,
}

fn default_agent_keys() -> AgentKeyAction {
    AgentKeyAction::Refuse
}
fn default_header_read_timeout_secs() -> u64 {
    10
}
fn default_idle_timeout_secs() -> u64 {
    300
}
/// hyper's own default (h1 buffer); SDK requests carry a few hundred bytes.
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_connections() -> usize {
    4096
}
fn default_upstream_connect_timeout_secs() -> u64 {
    10
}
fn default_upstream_response_timeout_secs() -> u64 {
    600
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            agent_keys: default_agent_keys(),
            header_read_timeout_secs: default_header_read_timeout_secs(),
            idle_timeout_secs: default_idle_timeout_secs(),
            max_header_bytes: default_max_header_bytes(),
            max_connections: default_max_connections(),
            upstream_connect_timeout_secs: default_upstream_connect_timeout_secs(),
            upstream_response_timeout_secs: default_upstream_response_timeout_secs(),
        }
    }
}

/// The link-local metadata address of AWS, GCP and Azure. Only ever used as
/// the default endpoint of a cloud provider that the config selects.
pub const DEFAULT_METADATA_ENDPOINT: &str = "http://169.254.169.254";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// host | aws | gcp | azure. Cloud providers are opt-in: the default never
    /// contacts a metadata endpoint.
    #[serde(default = "default_instance_provider")]
    pub provider: String,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// Metadata service base URL for aws, gcp and azure. Default: the
    /// link-local address ([`DEFAULT_METADATA_ENDPOINT`]);
    /// contacted only when `provider` names a cloud. Tests point it at a
    /// loopback mock.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// PEM certificates trusted to sign the identity: aws, the AWS RSA public
    /// certificate of the region (required; none is bundled); azure, the
    /// CA(s) the metadata.azure.com signing certificate chains to (required).
    #[serde(default)]
    pub trust_file: Option<PathBuf>,
    /// gcp: Google's JWKS (JSON) to verify identity tokens with. Without it,
    /// claims are recorded unverified and conditions on them fail closed.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// gcp: the audience of the identity token. Default "warrant".
    #[serde(default)]
    pub audience: Option<String>,
    /// Seconds between identity refreshes (default 300: documents are stable,
    /// GCP tokens live an hour, and a failing metadata service shows soon).
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// Deadline of each metadata request in ms (default 2000: link-local
    /// services answer in milliseconds).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_instance_provider() -> String {
    "host".to_owned()
}
fn default_refresh_secs() -> u64 {
    crate::attest::instance::DEFAULT_REFRESH_SECS
}
fn default_timeout_ms() -> u64 {
    crate::attest::instance::DEFAULT_TIMEOUT_MS
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            provider: default_instance_provider(),
            environment: None,
            region: None,
            endpoint: None,
            trust_file: None,
            jwks_file: None,
            audience: None,
            refresh_secs: default_refresh_secs(),
            timeout_ms: default_timeout_ms(),
        }
    }
}

/// `[attest]`: process attestation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestConfig {
    /// Files (executables, entrypoint scripts) larger than this are not
    /// hashed, and hash selectors on them fail closed: hashing attacker-chosen
    /// huge files would be a denial of service. Default 512 MiB
    /// (`attest::hash::DEFAULT_MAX_HASH_BYTES`), above any real interpreter.
    #[serde(default = "default_max_hash_bytes")]
    pub max_hash_bytes: u64,
}

fn default_max_hash_bytes() -> u64 {
    crate::attest::hash::DEFAULT_MAX_HASH_BYTES
}

impl Default for AttestConfig {
    fn default() -> Self {
        Self {
            max_hash_bytes: default_max_hash_bytes(),
        }
    }
}

/// A workload: which cgroups are tagged for redirection, and which processes
/// the injector accepts as this workload. Every selector given must match.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    pub name: Spanned<String>,
    /// A systemd unit name, e.g. "support-agent.service": tags the cgroup of
    /// that name wherever it sits under the cgroup root.
    #[serde(default)]
    pub unit: Option<Spanned<String>>,
    /// A systemd slice, e.g. "warrant-agents.slice": tags the slice's cgroup,
    /// so every unit placed in it is covered.
    #[serde(default)]
    pub slice: Option<Spanned<String>>,
    /// A cgroup path glob relative to the cgroup2 mount, e.g.
    /// "/system.slice/agent-*.service".
    #[serde(default)]
    pub cgroup: Option<Spanned<String>>,
    #[serde(default)]
    pub exe: Option<Spanned<String>>,
    #[serde(default)]
    pub exe_sha256: Vec<Spanned<String>>,
    #[serde(default)]
    pub entrypoint_sha256: Vec<Spanned<String>>,
    /// Whether exe, exe_sha256 and entrypoint_sha256 may match a process in
    /// a nested user namespace. Default false: there the process can hold
    /// the capabilities that let prctl(PR_SET_MM_MAP) repoint /proc/PID/exe,
    /// so those selectors would attest whatever program it names. Units with
    /// PrivateUsers=yes and rootless containers need it. Selectors on unit,
    /// slice, cgroup, uid and gid are unaffected.
    #[serde(default)]
    pub allow_user_namespaces: bool,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

/// An upstream's API, as the config names it: `openai | anthropic | gemini |
/// generic`. Only the syntax: what each one means (how it takes its
/// credential, shapes its errors, names its model, reports its usage) is the
/// `provider` module's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// `Authorization: Bearer`.
    OpenAi,
    /// `x-api-key` (Bearer for OAuth tokens).
    Anthropic,
    /// `x-goog-api-key`; `?key=` is stripped.
    Gemini,
    /// A gateway: the configured `header` and `value_template`.
    Generic,
}

impl Scheme {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::OpenAi => "openai",
            Scheme::Anthropic => "anthropic",
            Scheme::Gemini => "gemini",
            Scheme::Generic => "generic",
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `anthropic_auth`: the header an Anthropic credential goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnthropicAuth {
    /// `x-api-key: <key>`, the form every Anthropic API version takes.
    XApiKey,
    /// `Authorization: Bearer <key>`.
    Bearer,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub host: Spanned<String>,
    pub scheme: Spanned<Scheme>,
    pub credential: Spanned<String>,
    /// For scheme "generic": the header to set and its value template, where
    /// "{credential}" is replaced by the credential.
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub value_template: Option<String>,
    /// anthropic only: forces that form; default is the form the agent used.
    #[serde(default)]
    pub anthropic_auth: Option<AnthropicAuth>,
    /// Extra CA certificates (PEM) trusted for this upstream, beside the
    /// system roots: for private gateways and tests.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Also inject into plain HTTP (no TLS) requests to this host, e.g. an
    /// internal gateway on port 80; the credential then crosses the network
    /// in clear text. Default false: only TLS connections, whose upstream
    /// certificate authenticates the destination, get a credential. With
    /// true, the address the agent dialled must be one this host name
    /// resolves to, since nothing else authenticates it.
    #[serde(default)]
    pub plain_http: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    pub name: Spanned<String>,
    /// file | systemd | exec | oauth2 | token-exchange
    pub source: Spanned<String>,
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// For source "systemd": the credential's name in $CREDENTIALS_DIRECTORY.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    // The keys below are documented, with their defaults, in
    // `credentials::settings` (one place for what they mean and why).
    /// oauth2 / token-exchange: the token endpoint (https, or http on loopback).
    #[serde(default)]
    pub token_url: Option<Spanned<String>>,
    #[serde(default)]
    pub client_id: Option<String>,
    /// none | client_secret_basic | client_secret_post | private_key_jwt.
    #[serde(default)]
    pub client_auth: Option<Spanned<String>>,
    /// The [[credential]] holding the OAuth client secret.
    #[serde(default)]
    pub client_secret_credential: Option<Spanned<String>>,
    /// PEM private key signing private_key_jwt client assertions.
    #[serde(default)]
    pub private_key_path: Option<PathBuf>,
    /// RS256 | RS384 | RS512 | ES256 | ES384 | PS256 | EdDSA.
    #[serde(default)]
    pub signing_alg: Option<Spanned<String>>,
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub assertion_audience: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub resource: Option<String>,
    /// token-exchange: "token-exchange" (RFC 8693) or "jwt-bearer" (RFC 7523).
    #[serde(default)]
    pub grant: Option<Spanned<String>>,
    #[serde(default)]
    pub requested_token_type: Option<String>,
    #[serde(default)]
    pub subject_token_path: Option<PathBuf>,
    #[serde(default)]
    pub subject_token_credential: Option<Spanned<String>>,
    #[serde(default)]
    pub subject_token_type: Option<String>,
    /// Durations such as "10s", "5m", "1h".
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub refresh_ahead: Option<Spanned<String>>,
    #[serde(default)]
    pub refresh_interval: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub workload: Spanned<String>,
    #[serde(default)]
    pub upstreams: Vec<Spanned<String>>,
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    #[serde(default)]
    pub models: Vec<Spanned<String>>,
    #[serde(default)]
    pub environments: Vec<String>,
    #[serde(default)]
    pub regions: Vec<Spanned<String>>,
    #[serde(default)]
    pub time: Option<TimeWindowConfig>,
    #[serde(default)]
    pub posture: Vec<Spanned<String>>,
    #[serde(default)]
    pub tokens_per_hour: Option<u64>,
    #[serde(default)]
    pub cost_per_day_usd: Option<f64>,
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// OpenSSH ed25519 public keys ("ssh-ed25519 AAAA... comment"); when
    /// given, the executable must carry an sshsig signature by one of them.
    #[serde(default)]
    pub exe_signers: Vec<Spanned<String>>,
    /// The sshsig namespace the signature was made for.
    #[serde(default)]
    pub exe_signature_namespace: Option<String>,
}

/// A named posture check: the latest result of a scanner or EDR, read from a
/// file or a command's output as JSON `{"status": "pass", "checked_at": RFC3339}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureConfig {
    pub name: Spanned<String>,
    /// file | command
    pub source: Spanned<String>,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// A result older than this (by its checked_at) denies. Default "1h".
    #[serde(default)]
    pub max_age: Option<Spanned<String>>,
    /// How often the source is read. Default "60s".
    #[serde(default)]
    pub interval: Option<Spanned<String>>,
    /// command only: how long it may run. Default "10s".
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindowConfig {
    /// "Mon-Fri", "Sat,Sun", "*"; default every day.
    #[serde(default)]
    pub days: Option<Spanned<String>>,
    /// "08:00-18:00"; "22:00-06:00" crosses midnight; default all day.
    #[serde(default)]
    pub hours: Option<Spanned<String>>,
    /// IANA zone name; default "UTC".
    #[serde(default)]
    pub tz: Option<Spanned<String>>,
}

impl Config {
    /// Parses and validates a configuration document. `origin` names it in
    /// errors (a path, or "<embedded default>").
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| {
            let at = err.span().map(|span| Location::of(text, span.start));
            ConfigError::new(origin, at, err.message().to_owned())
        })?;
        config.validate(text, origin)?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|err| ConfigError::new(&origin, None, format!("cannot read: {err}")))?;
        Self::parse(&text, &origin)
    }

    pub fn embedded_default() -> Result<Config, ConfigError> {
        Self::parse(DEFAULT_CONFIG, "<embedded default config>")
    }

    /// Checks what serde cannot: references between sections, globs, values.
    fn validate(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let err = |span: std::ops::Range<usize>, msg: String| {
            ConfigError::new(origin, Some(Location::of(text, span.start)), msg)
        };
        if !self.daemon.listen.ip().is_loopback() {
            return Err(ConfigError::new(
                origin,
                None,
                format!(
                    "[daemon] listen = {} is not a loopback address; the injector must not be reachable from other hosts",
                    self.daemon.listen
                ),
            ));
        }
        if let Some(metrics) = self.daemon.metrics
            && !metrics.ip().is_loopback()
        {
            return Err(ConfigError::new(
                origin,
                None,
                format!(
                    "[daemon] metrics = {metrics} is not a loopback address; metrics name workloads and models and are served without authentication"
                ),
            ));
        }
        if self.response.rate_multiple < 0.0 || !self.response.rate_multiple.is_finite() {
            return Err(ConfigError::new(
                origin,
                None,
                "[response] rate_multiple must be 0 (off) or a positive number".to_owned(),
            ));
        }
        if self.intercept.ports.contains(&self.daemon.listen.port()) {
            return Err(ConfigError::new(
                origin,
                None,
                "[intercept] ports must not contain the listener's own port".to_owned(),
            ));
        }
        let proxy = &self.proxy;
        let zero = [
            (
                "header_read_timeout_secs",
                proxy.header_read_timeout_secs == 0,
            ),
            ("idle_timeout_secs", proxy.idle_timeout_secs == 0),
            ("max_header_bytes", proxy.max_header_bytes < 1024),
            ("max_connections", proxy.max_connections == 0),
            (
                "upstream_connect_timeout_secs",
                proxy.upstream_connect_timeout_secs == 0,
            ),
            (
                "upstream_response_timeout_secs",
                proxy.upstream_response_timeout_secs == 0,
            ),
        ];
        if let Some((key, _)) = zero.iter().find(|(_, bad)| *bad) {
            return Err(ConfigError::new(
                origin,
                None,
                format!(
                    "[proxy] {key} is too small (zero, or under 1024 bytes for max_header_bytes)"
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for workload in &self.workloads {
            if !names.insert(workload.name.get_ref().as_str()) {
                return Err(err(
                    workload.name.span(),
                    format!("workload {:?} is defined twice", workload.name.get_ref()),
                ));
            }
            if let Some(glob) = &workload.cgroup {
                globset::Glob::new(glob.get_ref()).map_err(|e| {
                    err(
                        glob.span(),
                        format!("bad cgroup glob {:?}: {e}", glob.get_ref()),
                    )
                })?;
            }
            for hash in workload
                .exe_sha256
                .iter()
                .chain(&workload.entrypoint_sha256)
            {
                let valid = hash.get_ref().len() == 64
                    && hash.get_ref().bytes().all(|b| b.is_ascii_hexdigit());
                if !valid {
                    return Err(err(
                        hash.span(),
                        format!(
                            "{:?} is not a SHA-256 in hex (64 hex digits)",
                            hash.get_ref()
                        ),
                    ));
                }
            }
        }
        let credential_names: std::collections::HashSet<&str> = self
            .credentials
            .iter()
            .map(|c| c.name.get_ref().as_str())
            .collect();
        for credential in &self.credentials {
            const SOURCES: &[&str] = &["file", "systemd", "exec", "oauth2", "token-exchange"];
            if !SOURCES.contains(&credential.source.get_ref().as_str()) {
                return Err(err(
                    credential.source.span(),
                    format!(
                        "unknown credential source {:?}; expected one of {}",
                        credential.source.get_ref(),
                        SOURCES.join(", ")
                    ),
                ));
            }
        }
        crate::credentials::settings::validate(&self.credentials, text, origin)?;
        crate::policy::posture::validate(&self.postures, text, origin)?;
        let mut hosts = std::collections::HashSet::new();
        for upstream in &self.upstreams {
            if !credential_names.contains(upstream.credential.get_ref().as_str()) {
                return Err(err(
                    upstream.credential.span(),
                    format!(
                        "upstream {:?} names credential {:?}, which no [[credential]] defines",
                        upstream.host.get_ref(),
                        upstream.credential.get_ref()
                    ),
                ));
            }
            let host = upstream.host.get_ref().as_str();
            if host.parse::<std::net::IpAddr>().is_ok()
                || rustls::pki_types::DnsName::try_from(host).is_err()
            {
                return Err(err(
                    upstream.host.span(),
                    format!(
                        "upstream host {host:?} must be a DNS name (no IP address, port or scheme): the local CA is name-constrained to DNS names"
                    ),
                ));
            }
            if !hosts.insert(upstream.host.get_ref().to_ascii_lowercase()) {
                return Err(err(
                    upstream.host.span(),
                    format!("upstream {:?} is defined twice", upstream.host.get_ref()),
                ));
            }
            if *upstream.scheme.get_ref() == Scheme::Generic && upstream.header.is_none() {
                return Err(err(
                    upstream.scheme.span(),
                    "scheme \"generic\" needs `header` (and optionally `value_template`)"
                        .to_owned(),
                ));
            }
        }
        for policy in &self.policies {
            if !names.contains(policy.workload.get_ref().as_str()) {
                return Err(err(
                    policy.workload.span(),
                    format!(
                        "policy names workload {:?}, which no [[workload]] defines",
                        policy.workload.get_ref()
                    ),
                ));
            }
            for host in &policy.upstreams {
                if !hosts.contains(&host.get_ref().to_ascii_lowercase()) {
                    return Err(err(
                        host.span(),
                        format!(
                            "policy names upstream {:?}, which no [[upstream]] defines",
                            host.get_ref()
                        ),
                    ));
                }
            }
            for glob in policy
                .models
                .iter()
                .chain(&policy.regions)
                .chain(&policy.paths)
            {
                globset::Glob::new(glob.get_ref())
                    .map_err(|e| err(glob.span(), format!("bad glob {:?}: {e}", glob.get_ref())))?;
            }
        }
        crate::policy::validate(&self.policies, &self.postures, text, origin)?;
        self.usage
            .validate()
            .map_err(|msg| ConfigError::new(origin, None, msg))?;
        crate::usage::PriceTable::new(&self.prices, false)
            .map_err(|msg| ConfigError::new(origin, None, msg))?;
        Ok(())
    }

    /// The IPv6 listener address, if there is to be one.
    pub fn listen6(&self) -> Option<SocketAddr> {
        self.listen6_on(self.daemon.listen.port())
    }

    /// The IPv6 listener address when the IPv4 listener got `port` (they
    /// share one port: the eBPF programs redirect to a single port).
    pub fn listen6_on(&self, port: u16) -> Option<SocketAddr> {
        match self.daemon.listen6.as_deref() {
            Some("") => None,
            Some(addr) => addr.parse().ok(),
            None => Some(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))),
        }
    }
}

#[cfg(test)]
mod tests;
