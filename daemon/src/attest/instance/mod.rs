//! Instance identity: "somewhere the agent runs".
//!
//! One provider per host ([instance] provider): `host` (the default; no
//! network: /etc/machine-id and a host key pair), `aws` (IMDSv2 instance
//! identity document and its RSA signature), `gcp` (metadata server identity
//! token, a JWT) or `azure` (IMDS attested data, PKCS#7). Cloud endpoints
//! default to the real link-local metadata address but are contacted only
//! when their provider is configured.
//!
//! The identity is fetched at start and refreshed periodically into an
//! [`InstanceHandle`]; each attestation carries the current
//! [`InstanceState`]. A failed fetch replaces the state with `Failed`, and
//! [`InstanceState::claim`] then refuses, so that policy conditions on the
//! instance fail closed.
//!
//! On a node (`[forward]`), the signed document or token itself is kept
//! too ([`Evidence`]): the node hands it to its gateway, which verifies it
//! with the same functions (`gateway::enroll`) to enroll the node by its
//! instance rather than by its key. There the provider is bound to the
//! node's key first ([`Provider::bind_to_node`]): gcp asks for a token
//! whose audience names the key, azure for a document whose nonce is
//! derived from it; an AWS document cannot name anything.

pub mod aws;
pub mod azure;
pub mod der;
pub mod gcp;
pub mod host;
pub mod http;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::config::{
    ConfigError, ConfigErrorKind, DEFAULT_GCP_AUDIENCE, DEFAULT_METADATA_ENDPOINT, InstanceConfig,
    Source,
};

/// Verified (or, where the config allows, unverified) claims of a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Whether a signature over the claims was checked against configured
    /// trust. Only gcp without a JWKS yields unverified claims.
    pub verified: bool,
    pub claims: BTreeMap<String, String>,
    /// The signed document or token the claims came from (none for `host`).
    #[serde(skip)]
    pub evidence: Option<Evidence>,
    /// When the provider signed it, if it says (gcp `iat`, azure
    /// `timeStamp.createdOn`), unix seconds.
    #[serde(skip)]
    pub issued_at: Option<u64>,
}

/// A cloud's signed statement of the instance, exactly as its metadata
/// service served it, for a gateway to verify again. Not a secret that
/// grants anything alone (a gcp token and an azure document name the node
/// key they were asked for), but never shown by `warrant status` either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Evidence {
    /// The GCE identity token (a JWT, `format=full`).
    GcpToken { token: String },
    /// The instance identity document (its exact bytes, UTF-8 JSON) and
    /// its base64 RSA signature.
    AwsDocument { document: String, signature: String },
    /// The IMDS attested-data response (`{"encoding":"pkcs7",...}`).
    AzureAttested { document: String },
}

impl Evidence {
    /// The provider that issues it.
    pub fn provider(&self) -> &'static str {
        match self {
            Evidence::GcpToken { .. } => "gcp",
            Evidence::AwsDocument { .. } => "aws",
            Evidence::AzureAttested { .. } => "azure",
        }
    }
}

/// What a node's evidence names to bind it to the node's Ed25519 key: the
/// gcp token's audience. (Azure's nonce is [`node_nonce`].)
pub fn node_audience(public_key: &[u8; 32]) -> String {
    format!("warrant-node:ed25519:{}", hex::encode(public_key))
}

/// The nonce an azure node asks its attested document for: ten digits of
/// the SHA-256 of [`node_audience`] (IMDS takes a 10-digit nonce).
pub fn node_nonce(public_key: &[u8; 32]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(node_audience(public_key).as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    format!("{:010}", u64::from_be_bytes(head) % 10_000_000_000)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum InstanceState {
    /// Not fetched yet (the daemon attests the instance before it accepts
    /// connections, so this is seen only at start).
    Pending,
    Attested {
        provider: String,
        verified: bool,
        claims: BTreeMap<String, String>,
        fetched_at_unix: u64,
        /// The signed document or token, for a node's gateway; never
        /// serialized (`warrant status` shows the claims, not it).
        #[serde(skip)]
        evidence: Option<Arc<Evidence>>,
    },
    Failed {
        provider: String,
        reason: String,
        at_unix: u64,
    },
}

/// Why a claim of the instance identity cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("instance identity not fetched yet")]
    Pending,
    #[error("instance identity ({provider}) failed: {reason}")]
    Failed { provider: String, reason: String },
    #[error("instance identity ({provider}) is unverified (no trust configured)")]
    Unverified { provider: String },
    #[error("instance identity ({provider}) has no claim {name:?}")]
    Absent { provider: String, name: String },
}

impl InstanceState {
    /// A claim that a policy condition needs (region, environment,
    /// account...). Refuses, with the reason, when the instance is not
    /// attested, its claims are unverified, or the claim is absent.
    pub fn claim(&self, name: &str) -> Result<&str, ClaimError> {
        match self {
            InstanceState::Pending => Err(ClaimError::Pending),
            InstanceState::Failed {
                provider, reason, ..
            } => Err(ClaimError::Failed {
                provider: provider.clone(),
                reason: reason.clone(),
            }),
            InstanceState::Attested {
                provider,
                verified: false,
                ..
            } => Err(ClaimError::Unverified {
                provider: provider.clone(),
            }),
            InstanceState::Attested {
                provider, claims, ..
            } => claims
                .get(name)
                .map(String::as_str)
                .ok_or_else(|| ClaimError::Absent {
                    provider: provider.clone(),
                    name: name.to_owned(),
                }),
        }
    }
}

/// Serializes an `Arc<InstanceState>` (serde's `rc` feature is not enabled).
pub fn serialize_shared<S: serde::Serializer>(
    state: &Arc<InstanceState>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    state.as_ref().serialize(serializer)
}

/// The current instance state, shared by the refresher and the attestor.
#[derive(Debug, Clone)]
pub struct InstanceHandle {
    state: Arc<RwLock<Arc<InstanceState>>>,
}

impl Default for InstanceHandle {
    fn default() -> Self {
        InstanceHandle::new(InstanceState::Pending)
    }
}

impl InstanceHandle {
    pub fn new(state: InstanceState) -> InstanceHandle {
        InstanceHandle {
            state: Arc::new(RwLock::new(Arc::new(state))),
        }
    }

    pub fn current(&self) -> Arc<InstanceState> {
        match self.state.read() {
            Ok(guard) => guard.clone(),
            Err(_) => Arc::new(InstanceState::Failed {
                provider: "unknown".to_owned(),
                reason: "instance state lock poisoned".to_owned(),
                at_unix: now_unix(),
            }),
        }
    }

    pub fn set(&self, state: InstanceState) {
        if let Ok(mut guard) = self.state.write() {
            *guard = Arc::new(state);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("instance config: {0}")]
    Config(String),
    #[error("metadata endpoint {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("metadata endpoint {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("malformed identity document: {0}")]
    BadDocument(String),
    #[error("identity signature does not verify: {0}")]
    BadSignature(String),
    #[error("host identity: {0}")]
    Host(String),
}

/// The configured provider.
pub enum Provider {
    Host(host::HostProvider),
    Aws(aws::AwsProvider),
    Gcp(gcp::GcpProvider),
    Azure(azure::AzureProvider),
}

impl Provider {
    /// `[instance]` compiled: the provider it selects, with its trust read
    /// (nothing is fetched; `refresh` does that). An error is placed at
    /// `[instance] provider`, whose choice decides what else is needed.
    pub fn compile(
        config: &InstanceConfig,
        state_dir: &Path,
        source: &Source,
    ) -> Result<Provider, ConfigError> {
        Provider::from_config(config, state_dir).map_err(|e| {
            source.error_at_key(&["instance", "provider"], ConfigErrorKind::Invalid, e)
        })
    }

    /// The provider the config selects. `state_dir` holds the host key.
    pub fn from_config(
        config: &InstanceConfig,
        state_dir: &Path,
    ) -> Result<Provider, InstanceError> {
        let endpoint = config
            .endpoint
            .clone()
            .unwrap_or_else(|| DEFAULT_METADATA_ENDPOINT.to_owned());
        let timeout = Duration::from_millis(config.timeout_ms);
        let need = |key: &str, what: &str| {
            InstanceError::Config(format!(
                "provider {:?} needs [instance] {key} ({what})",
                config.provider
            ))
        };
        Ok(match config.provider.as_str() {
            "host" => Provider::Host(host::HostProvider::new(
                PathBuf::from(host::MACHINE_ID_PATH),
                state_dir.join(host::HOST_KEY_FILE),
                config.region.clone(),
                config.environment.clone(),
            )),
            "aws" => {
                let trust = config.trust_file.as_ref().ok_or_else(|| {
                    need(
                        "trust_file",
                        "the AWS signing certificate for your partition, PEM",
                    )
                })?;
                Provider::Aws(aws::AwsProvider::new(
                    endpoint,
                    load_pem_certs(trust)?,
                    timeout,
                    config.environment.clone(),
                ))
            }
            "gcp" => {
                let jwks = match &config.jwks_file {
                    Some(path) => Some(gcp::Jwks::load(path)?),
                    None => None,
                };
                Provider::Gcp(gcp::GcpProvider::new(
                    endpoint,
                    config
                        .audience
                        .clone()
                        .unwrap_or_else(|| DEFAULT_GCP_AUDIENCE.to_owned()),
                    jwks,
                    timeout,
                    config.environment.clone(),
                ))
            }
            "azure" => {
                let trust = config.trust_file.as_ref().ok_or_else(|| {
                    need(
                        "trust_file",
                        "the CA certificates of the IMDS signing certificate, PEM",
                    )
                })?;
                Provider::Azure(azure::AzureProvider::new(
                    endpoint,
                    load_pem_certs(trust)?,
                    timeout,
                    config.region.clone(),
                    config.environment.clone(),
                ))
            }
            other => {
                return Err(InstanceError::Config(format!(
                    "unknown provider {other:?}; expected host, aws, gcp or azure"
                )));
            }
        })
    }

    /// On a node: binds what the provider fetches to the node's key, so
    /// that its gateway can tell the evidence was made for this node (gcp:
    /// the token's audience is [`node_audience`]; azure: the document's
    /// nonce is [`node_nonce`]). AWS documents carry neither; `host` has
    /// no evidence.
    pub fn bind_to_node(&mut self, public_key: &[u8; 32]) {
        match self {
            Provider::Gcp(p) => p.set_audience(node_audience(public_key)),
            Provider::Azure(p) => p.set_nonce(node_nonce(public_key)),
            Provider::Host(_) | Provider::Aws(_) => {}
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Provider::Host(_) => "host",
            Provider::Aws(_) => "aws",
            Provider::Gcp(_) => "gcp",
            Provider::Azure(_) => "azure",
        }
    }

    pub async fn fetch(&self) -> Result<Identity, InstanceError> {
        match self {
            Provider::Host(p) => p.fetch(),
            Provider::Aws(p) => p.fetch().await,
            Provider::Gcp(p) => p.fetch().await,
            Provider::Azure(p) => p.fetch().await,
        }
    }

    /// Fetches once and records the outcome in `handle`.
    pub async fn refresh(&self, handle: &InstanceHandle) -> Result<(), InstanceError> {
        match self.fetch().await {
            Ok(identity) => {
                handle.set(InstanceState::Attested {
                    provider: self.name().to_owned(),
                    verified: identity.verified,
                    claims: identity.claims,
                    fetched_at_unix: now_unix(),
                    evidence: identity.evidence.map(Arc::new),
                });
                Ok(())
            }
            Err(err) => {
                tracing::warn!(provider = self.name(), error = %err, "instance identity failed");
                handle.set(InstanceState::Failed {
                    provider: self.name().to_owned(),
                    reason: err.to_string(),
                    at_unix: now_unix(),
                });
                Err(err)
            }
        }
    }

    /// Refreshes every `interval` until the task is dropped; after a failure,
    /// retries sooner (every 30 s at most) so a metadata hiccup heals fast.
    pub fn spawn_refresh(
        self,
        handle: InstanceHandle,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let wait = match self.refresh(&handle).await {
                    Ok(()) => interval,
                    Err(_) => interval.min(Duration::from_secs(30)),
                };
                tokio::time::sleep(wait).await;
            }
        })
    }
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// DER certificates from a PEM file.
pub fn load_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, InstanceError> {
    let text = std::fs::read(path)
        .map_err(|e| InstanceError::Config(format!("cannot read {}: {e}", path.display())))?;
    let certs: Vec<Vec<u8>> = rustls_pemfile::certs(&mut text.as_slice())
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect();
    if certs.is_empty() {
        return Err(InstanceError::Config(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// Adds `environment` from config when the provider's document has none.
pub(crate) fn add_config_claims(
    claims: &mut BTreeMap<String, String>,
    region: Option<&String>,
    environment: Option<&String>,
) {
    if let Some(region) = region {
        claims
            .entry("region".to_owned())
            .or_insert_with(|| region.clone());
    }
    if let Some(env) = environment {
        claims.insert("environment".to_owned(), env.clone());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn attested(verified: bool) -> InstanceState {
        InstanceState::Attested {
            provider: "aws".into(),
            verified,
            claims: BTreeMap::from([("region".to_owned(), "us-east-1".to_owned())]),
            fetched_at_unix: 0,
            evidence: None,
        }
    }

    #[test]
    fn claims_are_given_only_from_a_verified_identity() {
        assert_eq!(attested(true).claim("region"), Ok("us-east-1"));
        assert!(attested(true).claim("account").is_err());
        assert!(attested(false).claim("region").is_err());
        assert!(InstanceState::Pending.claim("region").is_err());
        let failed = InstanceState::Failed {
            provider: "gcp".into(),
            reason: "timeout".into(),
            at_unix: 0,
        };
        assert!(
            failed
                .claim("region")
                .unwrap_err()
                .to_string()
                .contains("timeout")
        );
    }

    #[test]
    fn the_handle_hands_out_the_latest_state() {
        let handle = InstanceHandle::default();
        assert_eq!(*handle.current(), InstanceState::Pending);
        handle.set(attested(true));
        assert_eq!(*handle.current(), attested(true));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            http::encode_query("https://a.example/x y"),
            "https%3A%2F%2Fa.example%2Fx%20y"
        );
    }
}
