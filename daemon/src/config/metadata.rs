//! `[metadata]`: what tagged agents get from the cloud metadata service.
//!
//! On a cloud instance any process can read the instance role's real
//! credentials from the metadata service (169.254.169.254). warrant
//! redirects tagged agents' connections to it (port 80, these addresses
//! only) and answers the credential endpoints itself with placeholders, so
//! an SDK's default credential chain works unchanged and never holds a real
//! key; everything else is refused unless `passthrough` names it. The
//! behaviour is `metadata`'s; this is the syntax and the defaults.

use std::net::IpAddr;

use serde::Deserialize;
use toml::Spanned;

/// The link-local metadata address of AWS, GCP and Azure, and AWS's IPv6
/// one (Nitro instances).
pub const DEFAULT_METADATA_ADDRESSES: [&str; 2] = ["169.254.169.254", "fd00:ec2::254"];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    /// Redirect tagged agents' connections to the metadata addresses (port
    /// 80) and answer them here. Default true: a tagged agent must not read
    /// the instance role's credentials. On a host that is no cloud instance
    /// nothing answers those addresses anyway.
    #[serde(default = "default_true")]
    pub intercept: bool,
    /// The metadata service's addresses. Tests use a loopback address with
    /// the SDKs' endpoint overrides (`AWS_EC2_METADATA_SERVICE_ENDPOINT`,
    /// `GCE_METADATA_HOST`), never the real one.
    #[serde(default = "default_addresses")]
    pub addresses: Vec<IpAddr>,
    /// Paths (globs, `*` within a segment, `**` across) passed through to the
    /// real metadata service, e.g. "/latest/meta-data/placement/*". Default
    /// none: every path but the emulated credential endpoints is refused.
    #[serde(default)]
    pub passthrough: Vec<Spanned<String>>,
    /// The role name the AWS placeholder credentials are listed under.
    #[serde(default = "default_aws_role")]
    pub aws_role: String,
    /// The service account e-mail the GCE emulation names.
    #[serde(default = "default_gcp_service_account")]
    pub gcp_service_account: String,
    /// The project id the GCE emulation answers (google-auth asks for it
    /// when no project is configured). Default none: 404.
    #[serde(default)]
    pub gcp_project: Option<String>,
    /// How long the placeholder credentials say they live. SDKs refresh
    /// before; an hour is what the real services issue.
    #[serde(default = "default_placeholder_lifetime_secs")]
    pub placeholder_lifetime_secs: u64,
}

fn default_true() -> bool {
    true
}
fn default_addresses() -> Vec<IpAddr> {
    DEFAULT_METADATA_ADDRESSES
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}
fn default_aws_role() -> String {
    "warrant-placeholder".to_owned()
}
fn default_gcp_service_account() -> String {
    "placeholder@warrant.invalid".to_owned()
}
fn default_placeholder_lifetime_secs() -> u64 {
    3600
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            intercept: true,
            addresses: default_addresses(),
            passthrough: Vec::new(),
            aws_role: default_aws_role(),
            gcp_service_account: default_gcp_service_account(),
            gcp_project: None,
            placeholder_lifetime_secs: default_placeholder_lifetime_secs(),
        }
    }
}
