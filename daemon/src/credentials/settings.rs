//! `[[credential]]` keys: their defaults (and why), their validation, and
//! how a `CredentialStore` is built from them.
//!
//! | key | sources | default |
//! |---|---|---|
//! | `path` | file | required |
//! | `id` | systemd | required: the name given to LoadCredential= |
//! | `command` | exec | required: argv, no shell |
//! | `token_url` | oauth2, token-exchange | required; https (http only on loopback) |
//! | `client_id` | oauth2, token-exchange | required for oauth2 |
//! | `client_auth` | oauth2, token-exchange | private_key_jwt if `private_key_path`, else client_secret_basic if `client_secret_credential`, else none |
//! | `client_secret_credential` | oauth2, token-exchange | the [[credential]] holding the client secret |
//! | `private_key_path` | oauth2, token-exchange | root-only PEM key for private_key_jwt |
//! | `signing_alg` | private_key_jwt | RS256 (the one every server must support) |
//! | `key_id` | private_key_jwt | none (no `kid` header) |
//! | `assertion_audience` | private_key_jwt | token_url (RFC 7523 §3) |
//! | `audience`, `scope`, `resource` | oauth2, token-exchange | not sent |
//! | `grant` | token-exchange | "token-exchange" (RFC 8693); or "jwt-bearer" (RFC 7523 §2.1) |
//! | `subject_token_path` / `subject_token_credential` | token-exchange | one of them required |
//! | `subject_token_type` | token-exchange | urn:ietf:params:oauth:token-type:jwt |
//! | `requested_token_type` | token-exchange | not sent (the server's default) |
//! | `timeout` | exec, oauth2, token-exchange | 10s |
//! | `refresh_ahead` | all | 5m |
//! | `refresh_interval` | all, values without expiry | 5m |

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use super::{
    clock::Clock,
    exec::ExecProvider,
    file::{FileProvider, SystemdProvider, check_root_only},
    oauth::{ClientAuth, Grant, OAuthProvider, SubjectSource, TOKEN_TYPE_JWT, TokenClient},
    provider::Provider,
    store::{CredentialStore, RefreshSettings},
};
use crate::config::{ConfigError, CredentialConfig, Location};

/// An issuer call (command, token endpoint) that takes longer than this is
/// abandoned: a request waiting on it would time out anyway.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Refresh this long before expiry: enough to ride out an issuer outage of a
/// few minutes with backoff, without holding tokens much shorter than issued.
pub const DEFAULT_REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// Values without expiry (files, systemd credentials) are re-read this often,
/// so a rotated key is picked up without a reload.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// Up to 10% of the refresh lead time or backoff delay is added at random.
pub const DEFAULT_JITTER: f64 = 0.1;
/// First retry after a failure; doubles up to `BACKOFF_MAX`.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Retry at least this often, so a recovered issuer is used within minutes.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What differs between the daemon and tests.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The owner `file` credentials and private keys must have: root.
    pub file_owner_uid: u32,
    /// `$CREDENTIALS_DIRECTORY`.
    pub credentials_directory: Option<PathBuf>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            file_owner_uid: 0,
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        }
    }
}

fn duration(value: &Option<toml::Spanned<String>>, default: Duration) -> Result<Duration, String> {
    value
        .as_ref()
        .map_or(Ok(default), |d| crate::duration::parse(d.get_ref()))
}

pub fn refresh_settings(config: &CredentialConfig) -> Result<RefreshSettings, String> {
    Ok(RefreshSettings {
        refresh_ahead: duration(&config.refresh_ahead, DEFAULT_REFRESH_AHEAD)?,
        refresh_interval: duration(&config.refresh_interval, DEFAULT_REFRESH_INTERVAL)?,
        jitter: DEFAULT_JITTER,
        backoff_initial: BACKOFF_INITIAL,
        backoff_max: BACKOFF_MAX,
    })
}

/// The client authentication a config asks for, by name.
fn client_auth_name(config: &CredentialConfig) -> &str {
    match &config.client_auth {
        Some(name) => name.get_ref(),
        None if config.private_key_path.is_some() => "private_key_jwt",
        None if config.client_secret_credential.is_some() => "client_secret_basic",
        None => "none",
    }
}

fn provider_for(
    config: &CredentialConfig,
    options: &StoreOptions,
    client: &mut Option<TokenClient>,
) -> Result<Box<dyn Provider>, String> {
    let timeout = duration(&config.timeout, DEFAULT_TIMEOUT)?;
    Ok(match config.source.get_ref().as_str() {
        "file" => Box::new(FileProvider::new(
            config.path.clone().ok_or("source \"file\" needs `path`")?,
            options.file_owner_uid,
        )),
        "systemd" => Box::new(SystemdProvider::new(
            options.credentials_directory.clone(),
            config
                .id
                .as_deref()
                .ok_or("source \"systemd\" needs `id`")?,
        )),
        "exec" => Box::new(ExecProvider::new(
            config.command.clone().unwrap_or_default(),
            timeout,
        )),
        source @ ("oauth2" | "token-exchange") => {
            let client = match client {
                Some(c) => c.clone(),
                None => client.insert(TokenClient::new()?).clone(),
            };
            let secret = || {
                config
                    .client_secret_credential
                    .as_ref()
                    .map(|c| c.get_ref().clone())
                    .ok_or_else(|| "client_secret_credential is required".to_owned())
            };
            let auth = match client_auth_name(config) {
                "none" => ClientAuth::None,
                "client_secret_basic" => ClientAuth::SecretBasic(secret()?),
                "client_secret_post" => ClientAuth::SecretPost(secret()?),
                "private_key_jwt" => ClientAuth::PrivateKeyJwt {
                    key_path: config
                        .private_key_path
                        .clone()
                        .ok_or("private_key_jwt needs `private_key_path`")?,
                    key_owner_uid: options.file_owner_uid,
                    alg: signing_alg(config)?,
                    key_id: config.key_id.clone(),
                    audience: config.assertion_audience.clone(),
                },
                other => return Err(format!("unknown client_auth {other:?}")),
            };
            let grant = if source == "oauth2" {
                Grant::ClientCredentials
            } else {
                let subject = match (&config.subject_token_path, &config.subject_token_credential) {
                    (Some(path), None) => SubjectSource::File(path.clone()),
                    (None, Some(name)) => SubjectSource::Credential(name.get_ref().clone()),
                    _ => {
                        return Err(
                            "token-exchange needs exactly one of subject_token_path and subject_token_credential"
                                .to_owned(),
                        );
                    }
                };
                match config
                    .grant
                    .as_ref()
                    .map_or("token-exchange", |g| g.get_ref().as_str())
                {
                    "token-exchange" => Grant::TokenExchange {
                        subject,
                        subject_token_type: config
                            .subject_token_type
                            .clone()
                            .unwrap_or_else(|| TOKEN_TYPE_JWT.to_owned()),
                        requested_token_type: config.requested_token_type.clone(),
                    },
                    "jwt-bearer" => Grant::JwtBearer { subject },
                    other => {
                        return Err(format!(
                            "unknown grant {other:?}; expected \"token-exchange\" or \"jwt-bearer\""
                        ));
                    }
                }
            };
            Box::new(OAuthProvider {
                client,
                token_url: config
                    .token_url
                    .as_ref()
                    .map(|u| u.get_ref().clone())
                    .ok_or("`token_url` is required")?,
                client_id: config.client_id.clone(),
                auth,
                grant,
                scope: config.scope.clone(),
                audience: config.audience.clone(),
                resource: config.resource.clone(),
                timeout,
            })
        }
        other => return Err(format!("unknown credential source {other:?}")),
    })
}

fn signing_alg(config: &CredentialConfig) -> Result<jsonwebtoken::Algorithm, String> {
    let name = config
        .signing_alg
        .as_ref()
        .map_or("RS256", |a| a.get_ref().as_str());
    name.parse()
        .map_err(|_| format!("unknown signing_alg {name:?}; expected e.g. RS256, ES256, EdDSA"))
}

/// Builds the store for every `[[credential]]`. Nothing is fetched yet:
/// call `prefetch` and `spawn_refresher` on the result.
pub fn store_from_config(
    configs: &[CredentialConfig],
    clock: Arc<dyn Clock>,
    options: &StoreOptions,
) -> Result<CredentialStore, String> {
    let mut store = CredentialStore::new(clock);
    let mut client = None;
    for config in configs {
        let name = config.name.get_ref();
        let provider = provider_for(config, options, &mut client)
            .map_err(|e| format!("credential {name:?}: {e}"))?;
        let settings = refresh_settings(config).map_err(|e| format!("credential {name:?}: {e}"))?;
        store = store.with(name, provider, settings);
    }
    Ok(store)
}

/// Validation of `[[credential]]`, called from `Config::validate`. Checks
/// what each source needs, references between credentials (and cycles),
/// durations, URLs, and the permissions of credential files that exist
/// (a missing file is reported when it is read: it may be provisioned later).
pub fn validate(configs: &[CredentialConfig], text: &str, origin: &str) -> Result<(), ConfigError> {
    let err = |span: std::ops::Range<usize>, msg: String| {
        ConfigError::new(origin, Some(Location::of(text, span.start)), msg)
    };
    let mut seen = std::collections::HashSet::new();
    for config in configs {
        let name = config.name.get_ref();
        if !seen.insert(name.as_str()) {
            return Err(err(
                config.name.span(),
                format!("credential {name:?} is defined twice"),
            ));
        }
    }
    let mut depends: HashMap<&str, Vec<&str>> = HashMap::new();
    for config in configs {
        let name = config.name.get_ref();
        for value in [
            &config.timeout,
            &config.refresh_ahead,
            &config.refresh_interval,
        ]
        .into_iter()
        .flatten()
        {
            crate::duration::parse(value.get_ref()).map_err(|e| err(value.span(), e))?;
        }
        for reference in [
            &config.client_secret_credential,
            &config.subject_token_credential,
        ]
        .into_iter()
        .flatten()
        {
            if !seen.contains(reference.get_ref().as_str()) {
                return Err(err(
                    reference.span(),
                    format!(
                        "credential {name:?} names credential {:?}, which no [[credential]] defines",
                        reference.get_ref()
                    ),
                ));
            }
            depends.entry(name).or_default().push(reference.get_ref());
        }
        if let Some(url) = &config.token_url {
            check_token_url(url.get_ref()).map_err(|e| err(url.span(), e))?;
        }
        if let Some(alg) = &config.signing_alg {
            signing_alg(config).map_err(|e| err(alg.span(), e))?;
        }
        if let Some(auth) = &config.client_auth {
            const AUTHS: &[&str] = &[
                "none",
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
            ];
            if !AUTHS.contains(&auth.get_ref().as_str()) {
                return Err(err(
                    auth.span(),
                    format!(
                        "unknown client_auth {:?}; expected one of {}",
                        auth.get_ref(),
                        AUTHS.join(", ")
                    ),
                ));
            }
        }
        if let Some(grant) = &config.grant
            && !["token-exchange", "jwt-bearer"].contains(&grant.get_ref().as_str())
        {
            return Err(err(
                grant.span(),
                format!(
                    "unknown grant {:?}; expected \"token-exchange\" or \"jwt-bearer\"",
                    grant.get_ref()
                ),
            ));
        }
        let source = config.source.get_ref().as_str();
        let missing = match source {
            "file" if config.path.is_none() => Some("source \"file\" needs `path`"),
            "systemd" if config.id.is_none() => {
                Some("source \"systemd\" needs `id` (the LoadCredential= name)")
            }
            "exec" if config.command.as_ref().is_none_or(Vec::is_empty) => {
                Some("source \"exec\" needs `command = [\"program\", \"arg\", ...]`")
            }
            "oauth2" | "token-exchange" if config.token_url.is_none() => {
                Some("this source needs `token_url`")
            }
            "oauth2" if config.client_id.is_none() => Some("source \"oauth2\" needs `client_id`"),
            "oauth2" if client_auth_name(config) == "none" => Some(
                "source \"oauth2\" needs client authentication: `client_secret_credential` or `private_key_path`",
            ),
            "token-exchange"
                if config.subject_token_path.is_some()
                    == config.subject_token_credential.is_some() =>
            {
                Some(
                    "source \"token-exchange\" needs exactly one of `subject_token_path` and `subject_token_credential`",
                )
            }
            _ => None,
        };
        if let Some(message) = missing {
            return Err(err(
                config.source.span(),
                format!("credential {name:?}: {message}"),
            ));
        }
        if matches!(source, "oauth2" | "token-exchange") {
            let needs = match client_auth_name(config) {
                "client_secret_basic" | "client_secret_post"
                    if config.client_secret_credential.is_none() =>
                {
                    Some("this client_auth needs `client_secret_credential`")
                }
                "private_key_jwt" if config.private_key_path.is_none() => {
                    Some("private_key_jwt needs `private_key_path`")
                }
                _ => None,
            };
            if let Some(message) = needs {
                let span = config
                    .client_auth
                    .as_ref()
                    .map_or(config.source.span(), |a| a.span());
                return Err(err(span, format!("credential {name:?}: {message}")));
            }
        }
        // Loose permissions are a leak already: refuse the config.
        let files = [
            (source == "file").then_some(config.path.as_ref()).flatten(),
            config.private_key_path.as_ref(),
        ];
        for path in files.into_iter().flatten() {
            if path.exists() {
                check_root_only(path, 0).map_err(|e| err(config.name.span(), e))?;
            }
        }
    }
    // A credential that (indirectly) needs itself would wait for itself.
    for config in configs {
        let start = config.name.get_ref().as_str();
        let mut stack: Vec<&str> = depends.get(start).cloned().unwrap_or_default();
        let mut visited = std::collections::HashSet::new();
        while let Some(next) = stack.pop() {
            if next == start {
                return Err(err(
                    config.name.span(),
                    format!(
                        "credential {start:?} depends on itself (through client_secret_credential or subject_token_credential)"
                    ),
                ));
            }
            if visited.insert(next) {
                stack.extend(depends.get(next).into_iter().flatten().copied());
            }
        }
    }
    Ok(())
}

/// Token endpoints must be https; plain http only on loopback (tests, or a
/// local token agent), where nothing crosses the network.
fn check_token_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("bad token_url {url:?}: {e}"))?;
    let host = uri.host().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if loopback => Ok(()),
        Some("http") => Err(format!(
            "token_url {url:?} must be https (http is allowed only on loopback)"
        )),
        _ => Err(format!("token_url {url:?} must be an https URL")),
    }
}
