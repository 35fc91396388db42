//! The configuration file: one TOML document, parsed with serde.
//!
//! This module holds the syntax and the defaults, and imports no domain
//! module: every domain imports its section from here and compiles it into
//! its runtime form, once (`WorkloadMatcher::compile`, `Policy::compile`,
//! `credentials::compile`, `UsageSettings::compile`, ...; the daemon's
//! `service::compile` runs them all, and so does `warrant check-config`).
//!
//! What `Config::parse` checks itself is what needs no domain knowledge:
//! serde's types and spellings (unknown keys are errors), limits of plain
//! values, and names between sections (every reference is defined, no name
//! twice). Every error names the file, line and column: a `Config` keeps its
//! [`Source`] so that the domains' compile steps can too.
//!
//! Every key has a documented default (the `default_*` functions and the
//! `Default` impls say why). The embedded default config (`DEFAULT_CONFIG`)
//! is what `warrant run` uses when no file is given, and is the commented
//! reference for every key.

mod gateway;
mod location;
mod metadata;
mod observe;
pub mod usage;

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use globset::{Glob, GlobMatcher};
use serde::Deserialize;
use toml::Spanned;

pub use gateway::{
    EnrollConfig, ForwardConfig, GatewayConfig, GatewayProblem, IssuerConfig, NodeConfig,
    defaults as gateway_defaults, gateway_authority, parse_node_key,
};
pub use location::{ConfigError, ConfigErrorKind, Location, Source};
pub use metadata::{DEFAULT_METADATA_ADDRESSES, MetadataConfig};
pub use observe::{
    AuditConfig, AuditFailureMode, ControlConfig, DEFAULT_CONTROL_SOCKET, ResponseConfig,
};
pub use usage::{LedgerKind, PriceConfig, RedisUnreachable, UsageConfig};

/// The embedded default configuration: a host-only setup whose credentials
/// come from files under /etc/warrant/credentials.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the file came from, for errors found after parsing.
    #[serde(skip)]
    pub source: Source,
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
    pub usage: UsageConfig,
    /// Prices per model, before the built-in table (see `usage::price`).
    #[serde(default, rename = "price")]
    pub prices: Vec<PriceConfig>,
    /// Tagged agents' requests to the cloud metadata service (see
    /// `metadata`).
    #[serde(default)]
    pub metadata: MetadataConfig,
    /// This file is a gateway's (`warrant gateway`; see `gateway`).
    #[serde(default)]
    pub gateway: Option<GatewayConfig>,
    /// This host's daemon forwards to a gateway instead of injecting.
    #[serde(default)]
    pub forward: Option<ForwardConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Destinations warrant refuses to relay a connection it passes through
    /// (an SNI or plain-HTTP host that is not an upstream) to: CIDRs, or
    /// "loopback", "link-local" and "metadata" (cloud metadata services).
    /// Default: those three, so that an agent never reaches the host's own
    /// services or an instance's metadata through warrant. Relayed sockets
    /// are also opened in the agent's own cgroup (`proxy::egress`), so the
    /// unit's own egress controls apply; this list holds even where they
    /// do not.
    #[serde(default = "default_passthrough_deny")]
    pub passthrough_deny: Vec<Spanned<String>>,
    /// CIDRs exempted from `passthrough_deny`, e.g. "127.0.0.1/32" for a
    /// local service an agent reaches on an intercepted port.
    #[serde(default)]
    pub passthrough_allow: Vec<Spanned<String>>,
}

/// The default `[intercept] passthrough_deny` (the names `proxy::egress`
/// knows).
pub const DEFAULT_PASSTHROUGH_DENY: [&str; 3] = ["loopback", "link-local", "metadata"];

fn default_passthrough_deny() -> Vec<Spanned<String>> {
    DEFAULT_PASSTHROUGH_DENY
        .iter()
        .map(|name| Spanned::new(0..0, (*name).to_owned()))
        .collect()
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
            passthrough_deny: default_passthrough_deny(),
            passthrough_allow: Vec::new(),
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Largest request body of an upstream whose requests are signed over
    /// their body (scheme bedrock: SigV4 hashes the payload), in bytes. The
    /// body is held in memory until it is whole; a larger one is refused
    /// with 413 in the provider's error shape.
    #[serde(default = "default_max_signed_body_bytes")]
    pub max_signed_body_bytes: usize,
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
/// 20 MiB: a Converse request with several images or documents (Bedrock
/// takes images up to 3.75 MB and documents up to 4.5 MB each, base64 in
/// the JSON body), while bounding what one request can pin in memory.
pub const DEFAULT_MAX_SIGNED_BODY_BYTES: usize = 20 * 1024 * 1024;
fn default_max_signed_body_bytes() -> usize {
    DEFAULT_MAX_SIGNED_BODY_BYTES
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
            max_signed_body_bytes: default_max_signed_body_bytes(),
        }
    }
}

/// The link-local metadata address of AWS, GCP and Azure. Only ever used as
/// the default endpoint of a cloud provider that the config selects.
pub const DEFAULT_METADATA_ENDPOINT: &str = "http://169.254.169.254";

#[derive(Debug, Clone, PartialEq, Deserialize)]
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
/// Default for `[instance] refresh_secs`: AWS and GCP documents are stable
/// for the life of the instance, GCP identity tokens live an hour; five
/// minutes notices a failing metadata service soon enough.
pub const DEFAULT_INSTANCE_REFRESH_SECS: u64 = 300;
/// Default for `[instance] timeout_ms`: link-local metadata answers in
/// milliseconds; two seconds is generous without stalling start-up.
pub const DEFAULT_INSTANCE_TIMEOUT_MS: u64 = 2_000;
/// Default for `[instance] audience` (gcp): the token's aud claim.
pub const DEFAULT_GCP_AUDIENCE: &str = "warrant";

fn default_refresh_secs() -> u64 {
    DEFAULT_INSTANCE_REFRESH_SECS
}
fn default_timeout_ms() -> u64 {
    DEFAULT_INSTANCE_TIMEOUT_MS
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestConfig {
    /// Files (executables, entrypoint scripts) larger than this are not
    /// hashed, and hash selectors on them fail closed: hashing attacker-chosen
    /// huge files would be a denial of service. Default 512 MiB
    /// ([`DEFAULT_MAX_HASH_BYTES`]), above any real interpreter.
    #[serde(default = "default_max_hash_bytes")]
    pub max_hash_bytes: u64,
}

/// Default for `[attest] max_hash_bytes`: 512 MiB covers any real interpreter
/// or agent binary (bun and node are ~100 MiB) while bounding the cost of a
/// cold hash to about a second.
pub const DEFAULT_MAX_HASH_BYTES: u64 = 512 * 1024 * 1024;

fn default_max_hash_bytes() -> u64 {
    DEFAULT_MAX_HASH_BYTES
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
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    pub name: Spanned<String>,
    /// A system manager unit, e.g. "support-agent.service": the unit
    /// directly below the root or a chain of slices (in whatever slice it
    /// was placed), never a name-alike below another unit. See
    /// `attest::scope` for the exact rules.
    #[serde(default)]
    pub unit: Option<Spanned<String>>,
    /// A system manager slice, e.g. "warrant-agents.slice": the slice at its
    /// exact path (/warrant.slice/warrant-agents.slice), so every unit
    /// placed in it is covered.
    #[serde(default)]
    pub slice: Option<Spanned<String>>,
    /// A cgroup path glob relative to the cgroup2 mount, e.g.
    /// "/system.slice/agent-*.service".
    #[serde(default)]
    pub cgroup: Option<Spanned<CgroupGlob>>,
    /// Accept the unit named by `unit` although systemd delegated it
    /// (Delegate=yes), and the sub-cgroups it makes itself: for a unit that
    /// manages its own cgroups, such as a container runtime. Default false:
    /// a delegated cgroup, one not owned by root, or one below a user's
    /// service manager never matches, since its owner names what is below
    /// it. Needs `unit`.
    #[serde(default)]
    pub delegated: bool,
    /// Environment variables that inject code (LD_PRELOAD, PYTHONPATH,
    /// NODE_OPTIONS, ...; `attest::pinning` lists them) that this workload
    /// accepts by name. By default a process that has one in its
    /// environment does not match the selectors on what program runs
    /// (exe, exe_sha256, entrypoint_sha256, and policy exe_signers).
    #[serde(default)]
    pub allow_env: Vec<Spanned<String>>,
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
    /// Callers from the network (`warrant gateway`): enrolled nodes (globs
    /// over `[[gateway.node]]` names) that may forward requests of this
    /// workload. With them, unit, exe, exe_sha256, entrypoint_sha256, uid
    /// and gid narrow what the node's statement must say (checked by
    /// `check_callers`).
    #[serde(default)]
    pub nodes: Vec<Spanned<String>>,
    /// The node's own workload that its statement names. Default: this
    /// workload's name.
    #[serde(default)]
    pub node_workload: Option<Spanned<String>>,
    /// Instance claims of a node enrolled by its cloud instance identity
    /// (`[[gateway.enroll]]`), as the gateway verified them ("region",
    /// "zone", "account", "project", "instance_id", ...), each a glob over
    /// the value. A node enrolled by key has none, so it never matches.
    #[serde(default)]
    pub node_instance: std::collections::BTreeMap<String, Spanned<String>>,
    /// At a gateway, a SPIFFE ID glob: an X.509-SVID's (a client
    /// certificate verified against `[gateway] svid_bundle`), or a
    /// JWT-SVID's subject (issuers with `spiffe_trust_domain`).
    #[serde(default)]
    pub spiffe_id: Option<Spanned<String>>,
    /// At a gateway, the `[[gateway.issuer]]` whose tokens this workload
    /// accepts.
    #[serde(default)]
    pub issuer: Option<Spanned<String>>,
    /// A glob over the token's `sub`.
    #[serde(default)]
    pub subject: Option<Spanned<String>>,
    /// Claims the token must carry, by dotted path
    /// ("kubernetes.io.namespace" finds {"kubernetes.io": {"namespace":
    /// ...}}), each a glob over the value (or over any element of an array).
    #[serde(default)]
    pub claims: std::collections::BTreeMap<String, Spanned<String>>,
}

impl WorkloadConfig {
    /// Whether any selector of a token is set.
    pub fn selects_tokens(&self) -> bool {
        self.spiffe_id.is_some()
            || self.issuer.is_some()
            || self.subject.is_some()
            || !self.claims.is_empty()
    }

    /// Whether the workload accepts statements of nodes.
    pub fn selects_nodes(&self) -> bool {
        !self.nodes.is_empty() || self.node_workload.is_some() || !self.node_instance.is_empty()
    }

    /// Whether it selects callers from the network (nodes, tokens) rather
    /// than local processes.
    pub fn selects_remote(&self) -> bool {
        self.selects_tokens() || self.selects_nodes()
    }
}

/// An upstream's API, as the config names it: `openai | anthropic | gemini |
/// bedrock | vertex | azure | generic`. Only the syntax: what each one means (how it takes its
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
    /// Amazon Bedrock runtime: requests re-signed with SigV4.
    Bedrock,
    /// Google Vertex AI: `Authorization: Bearer` with an OAuth access token.
    Vertex,
    /// Azure OpenAI and AI Foundry: `api-key`, or Bearer for Entra ID tokens.
    Azure,
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
            Scheme::Bedrock => "bedrock",
            Scheme::Vertex => "vertex",
            Scheme::Azure => "azure",
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

/// A cgroup path glob (`[[workload]] cgroup`), compiled when the file is
/// read: a bad glob is a syntax error at its place in the file, and the
/// tagger and the workload matcher share the one compiled matcher.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct CgroupGlob {
    text: String,
    matcher: GlobMatcher,
}

/// A `[[workload]] cgroup` that is not a glob.
#[derive(Debug, thiserror::Error)]
#[error("bad cgroup glob {text:?}: {source}")]
pub struct BadCgroupGlob {
    text: String,
    #[source]
    source: globset::Error,
}

impl TryFrom<String> for CgroupGlob {
    type Error = BadCgroupGlob;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match Glob::new(&text) {
            Ok(glob) => Ok(CgroupGlob {
                matcher: glob.compile_matcher(),
                text,
            }),
            Err(source) => Err(BadCgroupGlob { text, source }),
        }
    }
}

impl CgroupGlob {
    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a cgroup path (relative to the cgroup2 mount, with a leading
    /// slash) matches.
    pub fn is_match(&self, path: &str) -> bool {
        self.matcher.is_match(path)
    }
}

/// Two globs are the same setting when they are written the same.
impl PartialEq for CgroupGlob {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub host: Spanned<String>,
    pub scheme: Spanned<Scheme>,
    /// The `[[credential]]` injected. Required, except on a node that
    /// forwards to a gateway (`[forward]`), which holds none.
    #[serde(default)]
    pub credential: Option<Spanned<String>>,
    /// For scheme "generic": the header to set and its value template, where
    /// "{credential}" is replaced by the credential.
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub value_template: Option<String>,
    /// anthropic only: forces that form; default is the form the agent used.
    #[serde(default)]
    pub anthropic_auth: Option<AnthropicAuth>,
    /// bedrock only: the region requests are signed for. Default: the one
    /// in the host name (`bedrock-runtime.<region>.amazonaws.com`); needed
    /// only for hosts that do not name it (VPC endpoints).
    #[serde(default)]
    pub region: Option<Spanned<String>>,
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

/// Where a `[[credential]]` comes from (`source`); what each needs is in
/// `credentials::settings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialSourceKind {
    /// A root-only file (`path`).
    File,
    /// A systemd credential in $CREDENTIALS_DIRECTORY (`id`).
    Systemd,
    /// A command's output (`command`).
    Exec,
    /// An OAuth 2.0 client-credentials grant (`token_url`, `client_id`).
    Oauth2,
    /// An RFC 8693 token exchange or RFC 7523 JWT bearer grant.
    TokenExchange,
    /// AWS keys of the EC2 instance role, from IMDSv2 (opt in).
    AwsImds,
    /// AWS keys from STS AssumeRoleWithWebIdentity (`role_arn`, a token).
    AwsWebIdentity,
    /// A Google OAuth access token from a service-account key (`path`).
    GcpServiceAccount,
    /// A Google OAuth access token from the GCE metadata server (opt in).
    GcpMetadata,
    /// A Google OAuth access token by workload identity federation.
    GcpWorkloadIdentity,
    /// An Entra ID token of the Azure VM's managed identity (IMDS, opt in).
    AzureManagedIdentity,
}

impl CredentialSourceKind {
    /// The name the file spells it with.
    pub fn name(self) -> &'static str {
        match self {
            CredentialSourceKind::File => "file",
            CredentialSourceKind::Systemd => "systemd",
            CredentialSourceKind::Exec => "exec",
            CredentialSourceKind::Oauth2 => "oauth2",
            CredentialSourceKind::TokenExchange => "token-exchange",
            CredentialSourceKind::AwsImds => "aws-imds",
            CredentialSourceKind::AwsWebIdentity => "aws-web-identity",
            CredentialSourceKind::GcpServiceAccount => "gcp-service-account",
            CredentialSourceKind::GcpMetadata => "gcp-metadata",
            CredentialSourceKind::GcpWorkloadIdentity => "gcp-workload-identity",
            CredentialSourceKind::AzureManagedIdentity => "azure-managed-identity",
        }
    }
}

/// What a credential's value is (`format`, for the sources that read a
/// value as it is: file, systemd, exec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialFormat {
    /// One token or key (exec: `{"value", "expires_at"}`).
    Token,
    /// AWS keys as an AWS credential_process prints them:
    /// `{"Version": 1, "AccessKeyId", "SecretAccessKey", "SessionToken",
    /// "Expiration"}` (the last two optional).
    Aws,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    pub name: Spanned<String>,
    /// file | systemd | exec | oauth2 | token-exchange | aws-imds |
    /// aws-web-identity | gcp-service-account | gcp-metadata |
    /// gcp-workload-identity | azure-managed-identity
    pub source: Spanned<CredentialSourceKind>,
    /// file, systemd, exec: what the value is. Default "token".
    #[serde(default)]
    pub format: Option<Spanned<CredentialFormat>>,
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
    // The cloud sources' keys, documented in `credentials::settings` too.
    /// aws-imds, gcp-metadata, azure-managed-identity: the metadata service
    /// (default the link-local address; tests point it at loopback).
    #[serde(default)]
    pub endpoint: Option<Spanned<String>>,
    /// aws-imds: the instance role (default the one the instance has).
    #[serde(default)]
    pub role: Option<String>,
    /// aws-web-identity: the role to assume.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// aws-web-identity: the RoleSessionName (default "warrant").
    #[serde(default)]
    pub session_name: Option<String>,
    /// aws-web-identity: the regional STS endpoint's region.
    #[serde(default)]
    pub region: Option<String>,
    /// aws-web-identity: DurationSeconds of the session, e.g. "1h".
    #[serde(default)]
    pub duration: Option<Spanned<String>>,
    /// gcp-metadata: the service account (default "default");
    /// gcp-workload-identity: the one to impersonate (default none).
    #[serde(default)]
    pub service_account: Option<String>,
    /// Durations such as "10s", "5m", "1h".
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub refresh_ahead: Option<Spanned<String>>,
    #[serde(default)]
    pub refresh_interval: Option<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub workload: Spanned<String>,
    #[serde(default)]
    pub upstreams: Vec<Spanned<String>>,
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    #[serde(default)]
    pub models: Vec<Spanned<String>>,
    /// Globs on the cloud project the request names (Vertex's path).
    #[serde(default)]
    pub projects: Vec<Spanned<String>>,
    /// Globs on the location the request names (Vertex's path).
    #[serde(default)]
    pub locations: Vec<Spanned<String>>,
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
    /// Work the budget cannot meter that this rule still allows under a
    /// token or cost budget: "batch", "background", "fine-tuning",
    /// "assistants", "evals", "long-running", "realtime"
    /// (`provider::Unmetered`).
    #[serde(default)]
    pub allow_unmetered: Vec<Spanned<String>>,
    /// OpenSSH ed25519 public keys ("ssh-ed25519 AAAA... comment"); when
    /// given, the executable must carry an sshsig signature by one of them.
    #[serde(default)]
    pub exe_signers: Vec<Spanned<String>>,
    /// The sshsig namespace the signature was made for.
    #[serde(default)]
    pub exe_signature_namespace: Option<String>,
}

/// Where a `[[posture]]` check's result is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PostureSourceKind {
    /// A JSON file a scanner writes (`path`).
    File,
    /// A command that prints the JSON (`command`).
    Command,
}

/// A named posture check: the latest result of a scanner or EDR, read from a
/// file or a command's output as JSON `{"status": "pass", "checked_at": RFC3339}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostureConfig {
    pub name: Spanned<String>,
    /// file | command
    pub source: Spanned<PostureSourceKind>,
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

/// What `Config::parse` finds wrong beyond serde's types: values no
/// domain needs to judge, and names between sections.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    /// serde's (toml's) message; its position is in the `ConfigError`.
    #[error("{}", .0.message())]
    Syntax(toml::de::Error),
    #[error(
        "[daemon] listen = {0} is not a loopback address; the injector must not be reachable from other hosts"
    )]
    ListenNotLoopback(SocketAddr),
    #[error(
        "[daemon] metrics = {0} is not a loopback address; metrics name workloads and models and are served without authentication"
    )]
    MetricsNotLoopback(SocketAddr),
    #[error("[response] rate_multiple must be 0 (off) or a positive number")]
    RateMultiple,
    #[error("[intercept] ports must not contain the listener's own port")]
    InterceptsListener,
    #[error("[proxy] {0} is too small (zero, or under 1024 bytes for max_header_bytes)")]
    ProxyLimit(&'static str),
    #[error("{what} {name:?} is defined twice")]
    Duplicate { what: &'static str, name: String },
    #[error("{referrer} names {what} {name:?}, which no {section} defines")]
    Undefined {
        /// Who names it: `policy`, `upstream "api.openai.com"`, ...
        referrer: String,
        what: &'static str,
        section: &'static str,
        name: String,
    },
    #[error(
        "upstream host {0:?} must be a DNS name (no IP address, port, scheme or wildcard: list each concrete host, e.g. each <resource>.openai.azure.com): the local CA is name-constrained to exactly these names"
    )]
    HostNotDnsName(String),
    #[error("scheme \"generic\" needs `header` (and optionally `value_template`)")]
    GenericWithoutHeader,
}

impl Config {
    /// Parses and checks a configuration document (see the module comment
    /// for what is checked here and what by the domains). `origin` names it
    /// in errors (a path, or "<embedded default config>").
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let source = Source::new(origin, text);
        let mut config: Config = toml::from_str(text).map_err(|err| {
            let at = err.span().map(|span| Location::of(text, span.start));
            ConfigError::new(origin, at, ConfigErrorKind::Syntax, Problem::Syntax(err))
        })?;
        config.source = source;
        config.validate()?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| {
            ConfigError::new(&origin, None, ConfigErrorKind::Read, Problem::Read(err))
        })?;
        Self::parse(&text, &origin)
    }

    pub fn embedded_default() -> Result<Config, ConfigError> {
        Self::parse(DEFAULT_CONFIG, "<embedded default config>")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.check_values()?;
        self.check_gateway_mode()?;
        self.check_names()
    }

    /// Limits of plain values, each reported at its key.
    fn check_values(&self) -> Result<(), ConfigError> {
        let at = |path: &[&str], problem: Problem| {
            self.source
                .error_at_key(path, ConfigErrorKind::Invalid, problem)
        };
        if !self.daemon.listen.ip().is_loopback() {
            return Err(at(
                &["daemon", "listen"],
                Problem::ListenNotLoopback(self.daemon.listen),
            ));
        }
        if let Some(metrics) = self.daemon.metrics
            && !metrics.ip().is_loopback()
        {
            return Err(at(
                &["daemon", "metrics"],
                Problem::MetricsNotLoopback(metrics),
            ));
        }
        if self.response.rate_multiple < 0.0 || !self.response.rate_multiple.is_finite() {
            return Err(at(&["response", "rate_multiple"], Problem::RateMultiple));
        }
        if self.intercept.ports.contains(&self.daemon.listen.port()) {
            // Two keys conflict: placed at the ports if the file sets them,
            // else at the listener that runs into the default ports.
            let place = self
                .source
                .locate_key(&["intercept", "ports"])
                .or_else(|| self.source.locate_key(&["daemon", "listen"]));
            return Err(ConfigError::new(
                self.source.origin(),
                place,
                ConfigErrorKind::Invalid,
                Problem::InterceptsListener,
            ));
        }
        let proxy = &self.proxy;
        let too_small = [
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
            ("max_signed_body_bytes", proxy.max_signed_body_bytes == 0),
        ];
        if let Some((key, _)) = too_small.iter().find(|(_, bad)| *bad) {
            return Err(at(&["proxy", key], Problem::ProxyLimit(key)));
        }
        self.check_upstream_values()
    }

    /// An upstream's host and scheme-specific keys (the scheme itself is
    /// serde's).
    fn check_upstream_values(&self) -> Result<(), ConfigError> {
        for upstream in &self.upstreams {
            let host = upstream.host.get_ref().as_str();
            if host.parse::<std::net::IpAddr>().is_ok()
                || rustls::pki_types::DnsName::try_from(host).is_err()
            {
                return Err(self.invalid(&upstream.host, Problem::HostNotDnsName(host.to_owned())));
            }
            if *upstream.scheme.get_ref() == Scheme::Generic && upstream.header.is_none() {
                return Err(self.invalid(&upstream.scheme, Problem::GenericWithoutHeader));
            }
        }
        Ok(())
    }

    /// Names between sections: each defined once, each reference defined.
    fn check_names(&self) -> Result<(), ConfigError> {
        let as_written = |name: &str| name.to_owned();
        let defined = |kind: Named| match kind {
            Named::Workload => unique(
                self.workloads.iter().map(|w| &w.name),
                kind,
                as_written,
                &self.source,
            ),
            Named::Credential => unique(
                self.credentials.iter().map(|c| &c.name),
                kind,
                as_written,
                &self.source,
            ),
            Named::Posture => unique(
                self.postures.iter().map(|p| &p.name),
                kind,
                as_written,
                &self.source,
            ),
            // Host names are case-insensitive.
            Named::Upstream => unique(
                self.upstreams.iter().map(|u| &u.host),
                kind,
                |h| h.to_ascii_lowercase(),
                &self.source,
            ),
            Named::Node => unique(
                self.gateway
                    .iter()
                    .flat_map(|g| g.nodes.iter().map(|n| &n.name)),
                kind,
                as_written,
                &self.source,
            ),
        };
        let names = [
            defined(Named::Workload)?,
            defined(Named::Credential)?,
            defined(Named::Posture)?,
            defined(Named::Upstream)?,
            defined(Named::Node)?,
        ];
        for (referrer, name, kind) in self.references() {
            let key = match kind {
                Named::Upstream => name.get_ref().to_ascii_lowercase(),
                _ => name.get_ref().clone(),
            };
            if !names[kind as usize].contains(&key) {
                return Err(self.source.error_at(
                    &name.span(),
                    ConfigErrorKind::Reference,
                    Problem::Undefined {
                        referrer,
                        what: kind.what(),
                        section: kind.section(),
                        name: name.get_ref().clone(),
                    },
                ));
            }
        }
        Ok(())
    }

    /// Every name one section gives of another: who names it, the name, and
    /// what kind of section it must name.
    fn references(&self) -> Vec<(String, &Spanned<String>, Named)> {
        let mut references = Vec::new();
        for upstream in &self.upstreams {
            let referrer = format!("upstream {:?}", upstream.host.get_ref());
            if let Some(credential) = &upstream.credential {
                references.push((referrer, credential, Named::Credential));
            }
        }
        for credential in &self.credentials {
            let others = [
                &credential.client_secret_credential,
                &credential.subject_token_credential,
            ];
            for other in others.into_iter().flatten() {
                let referrer = format!("credential {:?}", credential.name.get_ref());
                references.push((referrer, other, Named::Credential));
            }
        }
        for policy in &self.policies {
            let policy_names = std::iter::once((&policy.workload, Named::Workload))
                .chain(policy.upstreams.iter().map(|h| (h, Named::Upstream)))
                .chain(policy.posture.iter().map(|p| (p, Named::Posture)));
            for (name, kind) in policy_names {
                references.push(("policy".to_owned(), name, kind));
            }
        }
        references
    }

    /// An error at a `Spanned` value that is well-formed but unusable.
    fn invalid<T>(&self, value: &Spanned<T>, problem: Problem) -> ConfigError {
        self.source
            .error_at(&value.span(), ConfigErrorKind::Invalid, problem)
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

/// The sections that others name.
#[derive(Debug, Clone, Copy)]
enum Named {
    Workload = 0,
    Credential = 1,
    Posture = 2,
    Upstream = 3,
    Node = 4,
}

impl Named {
    /// What a reference names, in errors.
    fn what(self) -> &'static str {
        match self {
            Named::Workload => "workload",
            Named::Credential => "credential",
            Named::Posture => "posture check",
            Named::Upstream => "upstream",
            Named::Node => "node",
        }
    }

    fn section(self) -> &'static str {
        match self {
            Named::Workload => "[[workload]]",
            Named::Credential => "[[credential]]",
            Named::Posture => "[[posture]]",
            Named::Upstream => "[[upstream]]",
            Named::Node => "[[gateway.node]]",
        }
    }

    /// What a section defined twice is called, in errors.
    fn defined(self) -> &'static str {
        match self {
            Named::Posture => "posture",
            other => other.what(),
        }
    }
}

/// The names of one kind of section (by `key`, e.g. lower-cased hosts);
/// the second definition of a name is an error at its place.
fn unique<'a>(
    names: impl Iterator<Item = &'a Spanned<String>>,
    kind: Named,
    key: impl Fn(&str) -> String,
    source: &Source,
) -> Result<HashSet<String>, ConfigError> {
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(key(name.get_ref())) {
            return Err(source.error_at(
                &name.span(),
                ConfigErrorKind::Reference,
                Problem::Duplicate {
                    what: kind.defined(),
                    name: name.get_ref().clone(),
                },
            ));
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests;
