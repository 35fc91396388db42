//! `[gateway]` and `[forward]`: the two ends of gateway mode, syntax and
//! defaults only (the `gateway` module compiles them; `proxy` serves them).
//!
//! * `[gateway]` makes the file a gateway's: `warrant gateway` serves agents
//!   and nodes over the network on `listen`, with its own certificate. Nodes
//!   are enrolled by public key (`[[gateway.node]]`) or by a verified cloud
//!   instance identity (`[[gateway.enroll]]`); agents without a node
//!   are identified by short-lived JWTs from configured issuers
//!   (`[[gateway.issuer]]`), through base URLs (`routes`) or HTTP CONNECT.
//! * `[forward]` makes the file a node's: `warrant run` redirects, attests
//!   and applies its policy as ever, then forwards each request to the
//!   gateway with a signed statement instead of injecting. A node holds no
//!   credential, so its `[[upstream]]`s name none and it has no
//!   `[[credential]]`.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The defaults, each with its reason.
pub mod defaults {
    /// The port HTTPS proxies and gateways commonly use; any address, since
    /// the gateway serves other hosts.
    pub const LISTEN: &str = "0.0.0.0:8443";
    /// Where an agent that cannot put its token in Proxy-Authorization
    /// sends it (an SDK's extra headers).
    pub const TOKEN_HEADER: &str = "x-warrant-token";
    /// Clocks of nodes, issuers and the gateway may differ by this much:
    /// NTP keeps hosts well within it, and it stays short next to a token's
    /// lifetime.
    pub const CLOCK_SKEW_SECS: u64 = 60;
    /// A node signs each statement as it forwards the request, so a
    /// statement older than this was held back or replayed; the replay cache
    /// keeps nonces this long (plus the skew).
    pub const MAX_STATEMENT_AGE_SECS: u64 = 30;
    /// Request bodies forwarded by nodes are read whole (their hash is
    /// signed); the largest the provider APIs take for a chat or responses
    /// request with images is about this size.
    pub const MAX_BODY_BYTES: usize = 32 << 20;
    /// Tokens that live longer are refused as static secrets. Kubernetes
    /// projected tokens live one hour by default, CI OIDC tokens minutes.
    pub const MAX_TOKEN_LIFETIME_SECS: u64 = 24 * 3600;
    /// How often a JWKS fetched from a URL is fetched again: issuers rotate
    /// keys over days, and publish the next key before they use it.
    pub const JWKS_REFRESH_SECS: u64 = 300;
    /// How old a node's instance evidence may be (gcp `iat`, azure
    /// `createdOn`): a node fetches it again every `[instance]
    /// refresh_secs` (five minutes by default), and GCE identity tokens live
    /// an hour; so fifteen minutes leaves room for two failed refreshes.
    pub const MAX_EVIDENCE_AGE_SECS: u64 = 900;
}

/// `[gateway]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The TLS listener for agents and nodes (node forwarding, base URLs
    /// and HTTP CONNECT all on this one port).
    #[serde(default = "listen")]
    pub listen: SocketAddr,
    /// The gateway's certificate chain (PEM), what agents and nodes verify.
    pub certificate: Spanned<PathBuf>,
    /// Its private key (PEM, PKCS#8 or SEC1 or PKCS#1), readable by the
    /// gateway's user only.
    pub key: Spanned<PathBuf>,
    /// This gateway's name: the audience node statements are signed for.
    /// Gateways behind one load balancer share it (and a Redis, for budgets
    /// and the replay cache); another deployment has another name, so that
    /// nothing signed for one is accepted by the other.
    pub name: Spanned<String>,
    /// Base URLs: `openai = "api.openai.com"` serves
    /// `https://<gateway>/openai/...` as `https://api.openai.com/...`. Each
    /// host must be a configured `[[upstream]]`.
    #[serde(default)]
    pub routes: BTreeMap<String, Spanned<String>>,
    /// The header agents may send their token in, besides
    /// Proxy-Authorization.
    #[serde(default = "token_header")]
    pub token_header: String,
    #[serde(default = "clock_skew_secs")]
    pub clock_skew_secs: u64,
    #[serde(default = "max_statement_age_secs")]
    pub max_statement_age_secs: u64,
    #[serde(default = "max_body_bytes")]
    pub max_body_bytes: usize,
    #[serde(default = "max_token_lifetime_secs")]
    pub max_token_lifetime_secs: u64,
    /// CA certificates (PEM) of a SPIFFE trust domain: client certificates
    /// that chain to them are X.509-SVIDs, which identify agents as tokens
    /// do.
    #[serde(default)]
    pub svid_bundle: Option<Spanned<PathBuf>>,
    /// The trust domain of `svid_bundle` ("example.org"): an SVID naming
    /// another is refused. Required with `svid_bundle`.
    #[serde(default)]
    pub svid_trust_domain: Option<Spanned<String>>,
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeConfig>,
    #[serde(default, rename = "enroll")]
    pub enroll: Vec<EnrollConfig>,
    #[serde(default, rename = "issuer")]
    pub issuers: Vec<IssuerConfig>,
}

/// `[[gateway.enroll]]`: host daemons allowed to forward by their cloud
/// instance identity, verified here as the `[instance]` provider of the
/// same name verifies its host's. The node's name is
/// "<provider>:<project, account or subscription>/<instance id>".
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollConfig {
    /// "gcp", "aws" or "azure".
    pub provider: Spanned<String>,
    /// gcp: Google's JWKS (https://www.googleapis.com/oauth2/v3/certs,
    /// fetched by the operator).
    #[serde(default)]
    pub jwks_file: Option<Spanned<PathBuf>>,
    /// aws: the AWS RSA certificates of the regions (PEM); azure: the CA
    /// certificates of the IMDS signing certificate (PEM).
    #[serde(default)]
    pub trust_file: Option<Spanned<PathBuf>>,
    /// gcp: the project ids whose instances are enrolled.
    #[serde(default)]
    pub projects: Vec<String>,
    /// aws: the account ids whose instances are enrolled.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// azure: the subscription ids whose VMs are enrolled.
    #[serde(default)]
    pub subscriptions: Vec<String>,
    #[serde(default = "max_evidence_age_secs")]
    pub max_age_secs: u64,
}

/// `[[gateway.node]]`: a host daemon allowed to forward, by its host key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// What workloads' `nodes` selectors and the audit line call it.
    pub name: Spanned<String>,
    /// "ed25519:<64 hex digits>": the node's host key, as its `warrant
    /// status` shows it (instance claim `host_key_ed25519`).
    pub public_key: Spanned<String>,
}

/// `[[gateway.issuer]]`: who may identify agents with a JWT.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` of its tokens: the Kubernetes API server's issuer
    /// URL, "https://token.actions.githubusercontent.com", ...
    pub issuer: Spanned<String>,
    /// The `aud` its tokens must carry for this gateway. Default: `[gateway]
    /// name`.
    #[serde(default)]
    pub audience: Option<String>,
    /// Its public keys as a JWKS file; or
    #[serde(default)]
    pub jwks_file: Option<Spanned<PathBuf>>,
    /// as a JWKS URL (https; http only to a loopback address).
    #[serde(default)]
    pub jwks_url: Option<Spanned<String>>,
    #[serde(default = "jwks_refresh_secs")]
    pub jwks_refresh_secs: u64,
    /// Its tokens are SPIFFE JWT-SVIDs of this trust domain: their `sub` is
    /// the SPIFFE ID that `spiffe_id` selectors match.
    #[serde(default)]
    pub spiffe_trust_domain: Option<String>,
}

/// `[forward]`: this host's daemon forwards to a gateway.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// "https://gw.example:8443".
    pub gateway: Spanned<String>,
    /// CA certificates (PEM) that the gateway's certificate chains to,
    /// beside the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The gateway's `[gateway] name`. Default: the host and port of
    /// `gateway`.
    #[serde(default)]
    pub audience: Option<String>,
    /// Bodies are read whole before forwarding (their hash is signed); a
    /// larger one is refused with 413.
    #[serde(default = "max_body_bytes")]
    pub max_body_bytes: usize,
}

fn listen() -> SocketAddr {
    // A constant that parses.
    defaults::LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 8443)))
}
fn token_header() -> String {
    defaults::TOKEN_HEADER.to_owned()
}
fn max_token_lifetime_secs() -> u64 {
    defaults::MAX_TOKEN_LIFETIME_SECS
}
fn jwks_refresh_secs() -> u64 {
    defaults::JWKS_REFRESH_SECS
}
fn clock_skew_secs() -> u64 {
    defaults::CLOCK_SKEW_SECS
}
fn max_statement_age_secs() -> u64 {
    defaults::MAX_STATEMENT_AGE_SECS
}
fn max_body_bytes() -> usize {
    defaults::MAX_BODY_BYTES
}
fn max_evidence_age_secs() -> u64 {
    defaults::MAX_EVIDENCE_AGE_SECS
}

/// What `Config::parse` finds wrong in gateway mode's sections and
/// selectors (their syntax and how they combine; what the values mean is
/// the `gateway` module's).
#[derive(Debug, thiserror::Error)]
pub enum GatewayProblem {
    #[error(
        "[forward] and [gateway] cannot be in one file: a node (`warrant run`) forwards to a gateway (`warrant gateway`), which is another host"
    )]
    BothModes,
    #[error(
        "a node that forwards to a gateway holds no credential: remove [[credential]] {0:?} (the gateway holds the credentials)"
    )]
    CredentialOnNode(String),
    #[error(
        "upstream {0:?} names a credential, but this node forwards to a gateway, which injects its own: remove `credential`"
    )]
    UpstreamCredentialOnNode(String),
    #[error(
        "upstream {0:?} names no credential (only a node that forwards to a gateway, with [forward], leaves it out)"
    )]
    UpstreamWithoutCredential(String),
    #[error("[forward] gateway = {0:?}: expected https://HOST[:PORT] (no path)")]
    GatewayUrl(String),
    #[error("[gateway] name must not be empty")]
    EmptyName,
    #[error(
        "[gateway] routes key {0:?}: a base URL prefix is one path segment of a-z, 0-9, '-', '_' or '.'"
    )]
    RoutePrefix(String),
    #[error("[gateway] routes {0:?} = {1:?}: not a configured [[upstream]] host")]
    RouteUpstream(String, String),
    #[error("[gateway] token_header {0:?} is not an HTTP header name")]
    TokenHeader(String),
    #[error("[gateway] {0} must not be zero")]
    Zero(&'static str),
    #[error("[gateway] svid_bundle and svid_trust_domain go together")]
    SvidHalf,
    #[error("issuer {0:?} needs exactly one of jwks_file and jwks_url")]
    IssuerKeys(String),
    #[error("jwks_url {0:?}: expected https://..., or http:// to a loopback address")]
    JwksUrl(String),
    #[error("issuer {0:?} is configured twice")]
    IssuerTwice(String),
    #[error("node public_key {0:?}: expected \"ed25519:\" and 64 hex digits")]
    NodeKey(String),
    #[error(
        "[[gateway.enroll]] provider {0:?}: expected gcp, aws or azure (a host key is enrolled with [[gateway.node]])"
    )]
    EnrollProvider(String),
    #[error(
        "[[gateway.enroll]] provider {0:?} needs {1}: without it any instance of the cloud would be enrolled"
    )]
    EnrollNeeds(&'static str, &'static str),
    #[error("[[gateway.enroll]] provider {0:?} does not take `{1}`")]
    EnrollNotFor(&'static str, &'static str),
    #[error("[[gateway.enroll]] provider {0:?} is configured twice")]
    EnrollTwice(String),
    #[error(
        "workload {0:?} selects callers from the network ({1}), which only `warrant gateway` serves: this file has no [gateway]"
    )]
    RemoteWithoutGateway(String, &'static str),
    #[error(
        "workload {0:?} selects local processes only, but `warrant gateway` serves no local process: add `nodes` to accept them from enrolled nodes, or select a token (issuer, spiffe_id)"
    )]
    LocalOnGateway(String),
    #[error(
        "workload {0:?} mixes node selectors (nodes, node_workload, node_instance) with token selectors (issuer, subject, claims, spiffe_id): a caller is one or the other"
    )]
    NodesAndTokens(String),
    #[error(
        "workload {0:?}: `{1}` does not apply to callers identified by a token (they are not processes of this host)"
    )]
    LocalSelectorOnToken(String, &'static str),
    #[error("workload {0:?}: issuer {1:?} is not a [[gateway.issuer]]")]
    UnknownIssuer(String, String),
    #[error(
        "workload {0:?}: `{1}` is decided by the node (with its own [[workload]]); on the gateway, name that workload with node_workload"
    )]
    NodeDecides(String, &'static str),
    #[error("workload {0:?}: `{1}` needs `{2}`")]
    Needs(String, &'static str, &'static str),
}

/// Which local-process selectors a workload sets, by key.
fn local_selectors(w: &super::WorkloadConfig) -> Vec<&'static str> {
    [
        ("unit", w.unit.is_some()),
        ("slice", w.slice.is_some()),
        ("cgroup", w.cgroup.is_some()),
        ("delegated", w.delegated),
        ("allow_env", !w.allow_env.is_empty()),
        ("exe", w.exe.is_some()),
        ("exe_sha256", !w.exe_sha256.is_empty()),
        ("entrypoint_sha256", !w.entrypoint_sha256.is_empty()),
        ("allow_user_namespaces", w.allow_user_namespaces),
        ("uid", w.uid.is_some()),
        ("gid", w.gid.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}

/// Local selectors a node's statement carries the facts of (so that a
/// gateway workload can narrow what the node vouches for with them).
const NARROWING: [&str; 6] = [
    "unit",
    "exe",
    "exe_sha256",
    "entrypoint_sha256",
    "uid",
    "gid",
];

impl super::Config {
    /// Gateway mode's sections and the network callers' selectors (see
    /// [`GatewayProblem`]).
    pub(super) fn check_gateway_mode(&self) -> Result<(), super::ConfigError> {
        let at_key = |path: &[&str], problem: GatewayProblem| {
            self.source
                .error_at_key(path, super::ConfigErrorKind::Invalid, problem)
        };
        if self.gateway.is_some() && self.forward.is_some() {
            return Err(at_key(&["forward"], GatewayProblem::BothModes));
        }
        self.check_credentials_by_mode()?;
        if let Some(forward) = &self.forward {
            let url = forward.gateway.get_ref();
            if gateway_authority(url).is_none() {
                return Err(
                    self.gateway_invalid(&forward.gateway, GatewayProblem::GatewayUrl(url.clone()))
                );
            }
        }
        if let Some(gateway) = &self.gateway {
            self.check_gateway_section(gateway)?;
        }
        for workload in &self.workloads {
            self.check_callers(workload)?;
        }
        Ok(())
    }

    /// A node holds no credential; every other host names one per upstream.
    fn check_credentials_by_mode(&self) -> Result<(), super::ConfigError> {
        let node = self.forward.is_some();
        if node && let Some(credential) = self.credentials.first() {
            return Err(self.gateway_invalid(
                &credential.name,
                GatewayProblem::CredentialOnNode(credential.name.get_ref().clone()),
            ));
        }
        for upstream in &self.upstreams {
            let host = upstream.host.get_ref().clone();
            match (&upstream.credential, node) {
                (Some(credential), true) => {
                    return Err(self.gateway_invalid(
                        credential,
                        GatewayProblem::UpstreamCredentialOnNode(host),
                    ));
                }
                (None, false) => {
                    return Err(self.gateway_invalid(
                        &upstream.host,
                        GatewayProblem::UpstreamWithoutCredential(host),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_gateway_section(&self, gateway: &GatewayConfig) -> Result<(), super::ConfigError> {
        let at_key = |path: &[&str], problem: GatewayProblem| {
            self.source
                .error_at_key(path, super::ConfigErrorKind::Invalid, problem)
        };
        if gateway.name.get_ref().trim().is_empty() {
            return Err(self.gateway_invalid(&gateway.name, GatewayProblem::EmptyName));
        }
        let zero = [
            (
                "max_statement_age_secs",
                gateway.max_statement_age_secs == 0,
            ),
            ("max_body_bytes", gateway.max_body_bytes == 0),
            (
                "max_token_lifetime_secs",
                gateway.max_token_lifetime_secs == 0,
            ),
        ];
        if let Some((key, _)) = zero.iter().find(|(_, bad)| *bad) {
            return Err(at_key(&["gateway", key], GatewayProblem::Zero(key)));
        }
        for node in &gateway.nodes {
            if parse_node_key(node.public_key.get_ref()).is_none() {
                return Err(self.gateway_invalid(
                    &node.public_key,
                    GatewayProblem::NodeKey(node.public_key.get_ref().clone()),
                ));
            }
        }
        self.check_routes(gateway)?;
        self.check_enroll(gateway)?;
        if gateway.svid_bundle.is_some() != gateway.svid_trust_domain.is_some() {
            return Err(at_key(
                &["gateway", "svid_bundle"],
                GatewayProblem::SvidHalf,
            ));
        }
        if http::HeaderName::from_bytes(gateway.token_header.as_bytes()).is_err() {
            return Err(at_key(
                &["gateway", "token_header"],
                GatewayProblem::TokenHeader(gateway.token_header.clone()),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for issuer in &gateway.issuers {
            self.check_issuer(issuer)?;
            if !seen.insert(issuer.issuer.get_ref()) {
                return Err(self.gateway_invalid(
                    &issuer.issuer,
                    GatewayProblem::IssuerTwice(issuer.issuer.get_ref().clone()),
                ));
            }
        }
        Ok(())
    }

    /// Base URL prefixes are one plain path segment, each to an upstream.
    fn check_routes(&self, gateway: &GatewayConfig) -> Result<(), super::ConfigError> {
        for (prefix, host) in &gateway.routes {
            let ok = prefix
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'))
                && !matches!(prefix.as_str(), "" | "." | "..");
            if !ok {
                return Err(self.source.error_at_key(
                    &["gateway", "routes", prefix],
                    super::ConfigErrorKind::Invalid,
                    GatewayProblem::RoutePrefix(prefix.clone()),
                ));
            }
            let known = self
                .upstreams
                .iter()
                .any(|u| u.host.get_ref().eq_ignore_ascii_case(host.get_ref()));
            if !known {
                return Err(self.gateway_invalid(
                    host,
                    GatewayProblem::RouteUpstream(prefix.clone(), host.get_ref().clone()),
                ));
            }
        }
        Ok(())
    }

    /// Each enrolling provider has its trust and a non-empty scope (the
    /// projects, accounts or subscriptions), and nothing of another's.
    fn check_enroll(&self, gateway: &GatewayConfig) -> Result<(), super::ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for rule in &gateway.enroll {
            let invalid = |problem| self.gateway_invalid(&rule.provider, problem);
            let (provider, trust, scope) = match rule.provider.get_ref().as_str() {
                "gcp" => ("gcp", "jwks_file", "projects"),
                "aws" => ("aws", "trust_file", "accounts"),
                "azure" => ("azure", "trust_file", "subscriptions"),
                other => return Err(invalid(GatewayProblem::EnrollProvider(other.to_owned()))),
            };
            if !seen.insert(provider) {
                return Err(invalid(GatewayProblem::EnrollTwice(provider.to_owned())));
            }
            let set = [
                ("jwks_file", rule.jwks_file.is_some()),
                ("trust_file", rule.trust_file.is_some()),
                ("projects", !rule.projects.is_empty()),
                ("accounts", !rule.accounts.is_empty()),
                ("subscriptions", !rule.subscriptions.is_empty()),
            ];
            for (key, present) in set {
                let needed = key == trust || key == scope;
                if needed && !present {
                    return Err(invalid(GatewayProblem::EnrollNeeds(provider, key)));
                }
                if present && !needed {
                    return Err(invalid(GatewayProblem::EnrollNotFor(provider, key)));
                }
            }
            if rule.max_age_secs == 0 {
                return Err(invalid(GatewayProblem::Zero("enroll max_age_secs")));
            }
        }
        Ok(())
    }

    fn check_issuer(&self, issuer: &IssuerConfig) -> Result<(), super::ConfigError> {
        let name = issuer.issuer.get_ref().clone();
        if issuer.jwks_file.is_some() == issuer.jwks_url.is_some() {
            return Err(self.gateway_invalid(&issuer.issuer, GatewayProblem::IssuerKeys(name)));
        }
        if let Some(url) = &issuer.jwks_url
            && !jwks_url_allowed(url.get_ref())
        {
            return Err(self.gateway_invalid(url, GatewayProblem::JwksUrl(url.get_ref().clone())));
        }
        if issuer.jwks_refresh_secs == 0 {
            return Err(self.gateway_invalid(
                &issuer.issuer,
                GatewayProblem::Zero("issuer jwks_refresh_secs"),
            ));
        }
        Ok(())
    }

    /// Which callers a workload selects, and whether its selectors fit
    /// them and the file's mode.
    fn check_callers(&self, w: &super::WorkloadConfig) -> Result<(), super::ConfigError> {
        let name = w.name.get_ref().clone();
        let at_name = |problem| self.gateway_invalid(&w.name, problem);
        let local = local_selectors(w);
        if w.selects_remote() && self.gateway.is_none() {
            let what = if w.selects_nodes() {
                "nodes"
            } else {
                "a token"
            };
            return Err(at_name(GatewayProblem::RemoteWithoutGateway(name, what)));
        }
        if self.gateway.is_some() && !w.selects_remote() {
            return Err(at_name(GatewayProblem::LocalOnGateway(name)));
        }
        if w.selects_nodes() && w.selects_tokens() {
            return Err(at_name(GatewayProblem::NodesAndTokens(name)));
        }
        if w.selects_tokens() {
            return self.check_token_selectors(w, &local);
        }
        if w.selects_remote() {
            if let Some(key) = local.iter().find(|key| !NARROWING.contains(key)) {
                return Err(at_name(GatewayProblem::NodeDecides(name, key)));
            }
            if w.nodes.is_empty() {
                let key = if w.node_instance.is_empty() {
                    "node_workload"
                } else {
                    "node_instance"
                };
                return Err(at_name(GatewayProblem::Needs(name, key, "nodes")));
            }
        }
        Ok(())
    }

    /// A token workload names a configured issuer (or only a SPIFFE ID)
    /// and no selector of local processes.
    fn check_token_selectors(
        &self,
        w: &super::WorkloadConfig,
        local: &[&'static str],
    ) -> Result<(), super::ConfigError> {
        let name = w.name.get_ref().clone();
        let at_name = |problem| self.gateway_invalid(&w.name, problem);
        if let Some(key) = local.first() {
            return Err(at_name(GatewayProblem::LocalSelectorOnToken(name, key)));
        }
        let Some(issuer) = &w.issuer else {
            if w.subject.is_some() || !w.claims.is_empty() {
                let key = if w.subject.is_some() {
                    "subject"
                } else {
                    "claims"
                };
                return Err(at_name(GatewayProblem::Needs(name, key, "issuer")));
            }
            return Ok(());
        };
        let configured = self.gateway.as_ref().is_some_and(|g| {
            g.issuers
                .iter()
                .any(|i| i.issuer.get_ref() == issuer.get_ref())
        });
        if !configured {
            return Err(self.gateway_invalid(
                issuer,
                GatewayProblem::UnknownIssuer(name, issuer.get_ref().clone()),
            ));
        }
        Ok(())
    }

    fn gateway_invalid<T>(
        &self,
        value: &Spanned<T>,
        problem: GatewayProblem,
    ) -> super::ConfigError {
        self.source
            .error_at(&value.span(), super::ConfigErrorKind::Invalid, problem)
    }
}

/// "host[:port]" of a gateway URL "https://host[:port][/]"; None when the
/// URL is not of that form.
pub fn gateway_authority(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("https") {
        return None;
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    if path != "/" && !path.is_empty() {
        return None;
    }
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    Some(authority.as_str().to_ascii_lowercase())
}

/// A JWKS URL is https, or http to a loopback address (a test's issuer):
/// keys fetched in clear over a network could be anyone's.
fn jwks_url_allowed(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    match uri.scheme_str() {
        Some("https") => true,
        Some("http") => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

/// The 32 bytes of an "ed25519:<64 hex>" node key.
pub fn parse_node_key(text: &str) -> Option<[u8; 32]> {
    let hex_text = text.strip_prefix("ed25519:")?;
    let bytes = hex::decode(hex_text).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::Config;

    const UPSTREAM: &str = "[[upstream]]\nhost = \"api.openai.com\"\nscheme = \"openai\"\n";
    const GATEWAY: &str =
        "[gateway]\ncertificate = \"/gw.pem\"\nkey = \"/gw.key\"\nname = \"gw\"\n";
    const NODE_KEY: &str =
        "ed25519:0000000000000000000000000000000000000000000000000000000000000000";

    fn error(text: &str) -> String {
        Config::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_node_holds_no_credential_and_names_none() {
        let forward = "[forward]\ngateway = \"https://gw.example:8443\"\n";
        assert!(Config::parse(&format!("{UPSTREAM}{forward}"), "t.toml").is_ok());
        let named = format!("{UPSTREAM}credential = \"k\"\n{forward}");
        assert!(
            error(&named).contains("remove `credential`"),
            "{}",
            error(&named)
        );
        let held = format!(
            "{UPSTREAM}{forward}[[credential]]\nname = \"k\"\nsource = \"file\"\npath = \"/k\"\n"
        );
        assert!(
            error(&held).contains("holds no credential"),
            "{}",
            error(&held)
        );
        // Elsewhere an upstream without a credential is a mistake.
        assert!(error(UPSTREAM).contains("names no credential"));
        let path = format!("{UPSTREAM}[forward]\ngateway = \"https://gw.example/v1\"\n");
        assert!(error(&path).contains("expected https://HOST[:PORT]"));
    }

    #[test]
    fn gateway_workloads_select_enrolled_nodes_only() {
        let ok = format!(
            "{GATEWAY}[[gateway.node]]\nname = \"web-1\"\npublic_key = \"{NODE_KEY}\"\n\n[[workload]]\nname = \"w\"\nnodes = [\"web-*\"]\nexe = \"/usr/bin/python3\"\n"
        );
        assert!(Config::parse(&ok, "t.toml").is_ok(), "{}", error(&ok));
        let local = format!("{GATEWAY}[[workload]]\nname = \"w\"\nunit = \"a.service\"\n");
        assert!(error(&local).contains("serves no local process"));
        let decided =
            format!("{GATEWAY}[[workload]]\nname = \"w\"\nnodes = [\"a\"]\nslice = \"x.slice\"\n");
        assert!(error(&decided).contains("decided by the node"));
        let remote = "[[workload]]\nname = \"w\"\nnodes = [\"a\"]\n";
        assert!(error(remote).contains("only `warrant gateway` serves"));
        let bad_key =
            format!("{GATEWAY}[[gateway.node]]\nname = \"a\"\npublic_key = \"ed25519:00\"\n");
        assert!(error(&bad_key).contains("64 hex digits"));
        let both = format!("{GATEWAY}[forward]\ngateway = \"https://gw\"\n");
        assert!(error(&both).contains("cannot be in one file"));
    }

    #[test]
    fn token_selectors_issuers_and_routes_are_checked() {
        let issuer =
            "[[gateway.issuer]]\nissuer = \"https://k8s\"\njwks_url = \"https://k8s/jwks\"\n";
        let workload =
            "[[workload]]\nname = \"w\"\nissuer = \"https://k8s\"\nsubject = \"system:*\"\n";
        let ok = format!("{GATEWAY}{issuer}{workload}");
        assert!(Config::parse(&ok, "t.toml").is_ok(), "{}", error(&ok));
        let unknown = format!("{GATEWAY}{workload}");
        assert!(error(&unknown).contains("not a [[gateway.issuer]]"));
        let mixed = format!("{GATEWAY}{issuer}{workload}nodes = [\"a\"]\n");
        assert!(error(&mixed).contains("mixes node selectors"));
        let local = format!("{GATEWAY}{issuer}{workload}exe = \"/bin/sh\"\n");
        assert!(error(&local).contains("does not apply to callers identified by a token"));
        let clear = format!(
            "{GATEWAY}[[gateway.issuer]]\nissuer = \"i\"\njwks_url = \"http://k8s.example/jwks\"\n"
        );
        assert!(error(&clear).contains("loopback"));
        let both = format!(
            "{GATEWAY}[[gateway.issuer]]\nissuer = \"i\"\njwks_url = \"https://a\"\njwks_file = \"/j\"\n"
        );
        assert!(error(&both).contains("exactly one of jwks_file and jwks_url"));
        let route = format!("{GATEWAY}routes = {{ openai = \"api.openai.com\" }}\n");
        assert!(error(&route).contains("not a configured [[upstream]]"));
        let half = format!("{GATEWAY}svid_bundle = \"/b.pem\"\n");
        assert!(error(&half).contains("go together"));
    }

    #[test]
    fn enrolling_by_instance_needs_the_trust_and_a_scope_of_the_provider() {
        let enroll = |body: &str| format!("{GATEWAY}[[gateway.enroll]]\n{body}");
        let ok = enroll("provider = \"gcp\"\njwks_file = \"/j\"\nprojects = [\"p\"]\n");
        assert!(Config::parse(&ok, "t.toml").is_ok(), "{}", error(&ok));
        let any_project = enroll("provider = \"gcp\"\njwks_file = \"/j\"\n");
        assert!(
            error(&any_project).contains("needs projects"),
            "{}",
            error(&any_project)
        );
        let no_trust = enroll("provider = \"aws\"\naccounts = [\"1\"]\n");
        assert!(error(&no_trust).contains("needs trust_file"));
        let other = enroll("provider = \"azure\"\ntrust_file = \"/t\"\nprojects = [\"p\"]\n");
        assert!(error(&other).contains("does not take `projects`"));
        let host = enroll("provider = \"host\"\n");
        assert!(error(&host).contains("expected gcp, aws or azure"));
        let twice = format!(
            "{ok}[[gateway.enroll]]\nprovider = \"gcp\"\njwks_file = \"/j\"\nprojects = [\"q\"]\n"
        );
        assert!(error(&twice).contains("configured twice"));
    }
}
