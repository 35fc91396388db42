//! `[[credential]]` compiled: the keys' defaults (and why), what each source
//! needs, and the `CredentialStore` built from them. Names (each defined
//! once, every reference defined) are checked by `config`; everything else
//! here, once, with the error at its place in the file.
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

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use toml::Spanned;

use super::{
    exec::ExecProvider,
    file::{FileError, FileProvider, SystemdProvider, check_root_only},
    oauth::{
        ClientAuth, Grant, OAuthError, OAuthProvider, PrivateKeyJwt, SubjectSource, TOKEN_TYPE_JWT,
        TokenClient,
    },
    provider::Provider,
    store::{CredentialStore, RefreshSettings},
};
use crate::{
    clock::Clock,
    config::{
        ConfigError, ConfigErrorKind, CredentialConfig, CredentialSourceKind as Kind, Source,
    },
    duration::DurationError,
};

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

/// The `client_auth` values.
const CLIENT_AUTHS: &[&str] = &[
    "none",
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
];

/// What a `[[credential]]` gets wrong beyond names (those are `config`'s).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Duration(#[from] DurationError),
    #[error("bad token_url {url:?}: {source}")]
    BadTokenUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("token_url {0:?} must be https (http is allowed only on loopback)")]
    PlainHttpTokenUrl(String),
    #[error("token_url {0:?} must be an https URL")]
    NotHttpsTokenUrl(String),
    #[error("unknown signing_alg {0:?}; expected e.g. RS256, ES256, EdDSA")]
    UnknownSigningAlg(String),
    #[error("unknown client_auth {0:?}; expected one of {list}", list = CLIENT_AUTHS.join(", "))]
    UnknownClientAuth(String),
    #[error("unknown grant {0:?}; expected \"token-exchange\" or \"jwt-bearer\"")]
    UnknownGrant(String),
    /// A key the source or the client authentication needs.
    #[error("credential {name:?}: {needs}")]
    Missing { name: String, needs: &'static str },
    /// Loose permissions are a leak already: the config is refused.
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "credential {0:?} depends on itself (through client_secret_credential or subject_token_credential)"
    )]
    DependsOnItself(String),
    #[error(transparent)]
    Client(#[from] OAuthError),
}

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

/// Builds the store for every `[[credential]]`, checking each key once.
/// Nothing is fetched and nothing is written: call `prefetch` and
/// `spawn_refresher` on the result. Files that exist are checked for their
/// owner and mode (a missing one is reported when it is read: it may be
/// provisioned later).
pub fn compile(
    configs: &[CredentialConfig],
    source: &Source,
    clock: Arc<dyn Clock>,
    options: &StoreOptions,
) -> Result<CredentialStore, ConfigError> {
    let mut store = CredentialStore::new(clock);
    let mut client = None;
    for config in configs {
        let compiled = Compiler {
            config,
            source,
            options,
        };
        let provider = compiled.provider(&mut client)?;
        let settings = compiled.refresh_settings()?;
        store = store.with(config.name.get_ref(), provider, settings);
    }
    no_cycles(configs, source)?;
    Ok(store)
}

/// One `[[credential]]` being compiled; errors point into `source`.
struct Compiler<'a> {
    config: &'a CredentialConfig,
    source: &'a Source,
    options: &'a StoreOptions,
}

impl Compiler<'_> {
    fn invalid<T>(&self, at: &Spanned<T>, problem: impl Into<SettingsError>) -> ConfigError {
        self.source
            .error_at(&at.span(), ConfigErrorKind::Invalid, problem.into())
    }

    fn duration(
        &self,
        value: &Option<Spanned<String>>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            Some(text) => crate::duration::parse(text.get_ref()).map_err(|e| self.invalid(text, e)),
            None => Ok(default),
        }
    }

    fn refresh_settings(&self) -> Result<RefreshSettings, ConfigError> {
        Ok(RefreshSettings {
            refresh_ahead: self.duration(&self.config.refresh_ahead, DEFAULT_REFRESH_AHEAD)?,
            refresh_interval: self
                .duration(&self.config.refresh_interval, DEFAULT_REFRESH_INTERVAL)?,
            jitter: DEFAULT_JITTER,
            backoff_initial: BACKOFF_INITIAL,
            backoff_max: BACKOFF_MAX,
        })
    }

    /// A key the source needs is missing: reported at `at` (the source, or
    /// the key that asks for it).
    fn missing(&self, at: std::ops::Range<usize>, needs: &'static str) -> ConfigError {
        self.source.error_at(
            &at,
            ConfigErrorKind::Invalid,
            SettingsError::Missing {
                name: self.config.name.get_ref().clone(),
                needs,
            },
        )
    }

    fn provider(&self, client: &mut Option<TokenClient>) -> Result<Box<dyn Provider>, ConfigError> {
        let config = self.config;
        let kind = *config.source.get_ref();
        // The keys every source may set are checked first, so that their
        // errors point at them rather than at a missing key.
        let timeout = self.duration(&config.timeout, DEFAULT_TIMEOUT)?;
        self.duration(&config.refresh_ahead, DEFAULT_REFRESH_AHEAD)?;
        self.duration(&config.refresh_interval, DEFAULT_REFRESH_INTERVAL)?;
        self.check_files(kind)?;
        Ok(match kind {
            Kind::File => {
                let path = config.path.clone().ok_or_else(|| {
                    self.missing(config.source.span(), "source \"file\" needs `path`")
                })?;
                Box::new(FileProvider::new(path, self.options.file_owner_uid))
            }
            Kind::Systemd => {
                let id = config.id.as_deref().ok_or_else(|| {
                    self.missing(
                        config.source.span(),
                        "source \"systemd\" needs `id` (the LoadCredential= name)",
                    )
                })?;
                Box::new(SystemdProvider::new(
                    self.options.credentials_directory.clone(),
                    id,
                ))
            }
            Kind::Exec => match &config.command {
                Some(argv) if !argv.is_empty() => {
                    Box::new(ExecProvider::new(argv.clone(), timeout))
                }
                _ => {
                    return Err(self.missing(
                        config.source.span(),
                        "source \"exec\" needs `command = [\"program\", \"arg\", ...]`",
                    ));
                }
            },
            Kind::Oauth2 | Kind::TokenExchange => Box::new(self.oauth(kind, timeout, client)?),
        })
    }

    /// Loose permissions are a leak already: refuse the config.
    fn check_files(&self, kind: Kind) -> Result<(), ConfigError> {
        let config = self.config;
        let files = [
            (kind == Kind::File)
                .then_some(config.path.as_ref())
                .flatten(),
            config.private_key_path.as_ref(),
        ];
        for path in files.into_iter().flatten() {
            if path.exists() {
                check_root_only(path, self.options.file_owner_uid)
                    .map_err(|e| self.invalid(&config.name, e))?;
            }
        }
        Ok(())
    }

    fn oauth(
        &self,
        kind: Kind,
        timeout: Duration,
        client: &mut Option<TokenClient>,
    ) -> Result<OAuthProvider, ConfigError> {
        let config = self.config;
        let token_url = match &config.token_url {
            Some(url) => {
                check_token_url(url.get_ref()).map_err(|e| self.invalid(url, e))?;
                url.get_ref().clone()
            }
            None => return Err(self.missing(config.source.span(), "this source needs `token_url`")),
        };
        let auth = self.client_auth(kind)?;
        let grant = self.grant(kind)?;
        let client = match client {
            Some(c) => c.clone(),
            None => client
                .insert(TokenClient::new().map_err(|e| self.invalid(&config.source, e))?)
                .clone(),
        };
        Ok(OAuthProvider {
            client,
            token_url,
            client_id: config.client_id.clone(),
            auth,
            grant,
            scope: config.scope.clone(),
            audience: config.audience.clone(),
            resource: config.resource.clone(),
            timeout,
        })
    }

    /// How the client authenticates: `client_auth`, or what the keys given
    /// imply.
    fn client_auth(&self, kind: Kind) -> Result<ClientAuth, ConfigError> {
        let config = self.config;
        let alg = match &config.signing_alg {
            Some(name) => Some(name.get_ref().parse::<jsonwebtoken::Algorithm>().map_err(
                |_| {
                    self.invalid(
                        name,
                        SettingsError::UnknownSigningAlg(name.get_ref().clone()),
                    )
                },
            )?),
            None => None,
        };
        let auth_name = match &config.client_auth {
            Some(name) if !CLIENT_AUTHS.contains(&name.get_ref().as_str()) => {
                return Err(self.invalid(
                    name,
                    SettingsError::UnknownClientAuth(name.get_ref().clone()),
                ));
            }
            Some(name) => name.get_ref().as_str(),
            None if config.private_key_path.is_some() => "private_key_jwt",
            None if config.client_secret_credential.is_some() => "client_secret_basic",
            None => "none",
        };
        if kind == Kind::Oauth2 {
            if config.client_id.is_none() {
                return Err(
                    self.missing(config.source.span(), "source \"oauth2\" needs `client_id`")
                );
            }
            if auth_name == "none" {
                return Err(self.missing(
                    config.source.span(),
                    "source \"oauth2\" needs client authentication: `client_secret_credential` or `private_key_path`",
                ));
            }
        }
        // A missing key that client_auth asks for is reported at client_auth.
        let auth_at = config
            .client_auth
            .as_ref()
            .map_or(config.source.span(), Spanned::span);
        let secret = || {
            config
                .client_secret_credential
                .as_ref()
                .map(|c| c.get_ref().clone())
                .ok_or_else(|| {
                    self.missing(
                        auth_at.clone(),
                        "this client_auth needs `client_secret_credential`",
                    )
                })
        };
        let auth = match auth_name {
            "client_secret_basic" => ClientAuth::SecretBasic(secret()?),
            "client_secret_post" => ClientAuth::SecretPost(secret()?),
            "private_key_jwt" => ClientAuth::PrivateKeyJwt(PrivateKeyJwt {
                key_path: config.private_key_path.clone().ok_or_else(|| {
                    self.missing(auth_at.clone(), "private_key_jwt needs `private_key_path`")
                })?,
                key_owner_uid: self.options.file_owner_uid,
                // RS256: the one algorithm every server must support.
                alg: alg.unwrap_or(jsonwebtoken::Algorithm::RS256),
                key_id: config.key_id.clone(),
                audience: config.assertion_audience.clone(),
            }),
            _ => ClientAuth::None,
        };
        Ok(auth)
    }

    fn grant(&self, kind: Kind) -> Result<Grant, ConfigError> {
        let config = self.config;
        if kind == Kind::Oauth2 {
            return Ok(Grant::ClientCredentials);
        }
        let name = config
            .grant
            .as_ref()
            .map_or("token-exchange", |g| g.get_ref().as_str());
        if let Some(grant) = &config.grant
            && !["token-exchange", "jwt-bearer"].contains(&name)
        {
            return Err(self.invalid(grant, SettingsError::UnknownGrant(name.to_owned())));
        }
        let subject = match (&config.subject_token_path, &config.subject_token_credential) {
            (Some(path), None) => SubjectSource::File(path.clone()),
            (None, Some(name)) => SubjectSource::Credential(name.get_ref().clone()),
            _ => {
                return Err(self.missing(
                    config.source.span(),
                    "source \"token-exchange\" needs exactly one of `subject_token_path` and `subject_token_credential`",
                ));
            }
        };
        Ok(match name {
            "jwt-bearer" => Grant::JwtBearer { subject },
            _ => Grant::TokenExchange {
                subject,
                subject_token_type: config
                    .subject_token_type
                    .clone()
                    .unwrap_or_else(|| TOKEN_TYPE_JWT.to_owned()),
                requested_token_type: config.requested_token_type.clone(),
            },
        })
    }
}

/// A credential that (indirectly) needs itself would wait for itself.
fn no_cycles(configs: &[CredentialConfig], source: &Source) -> Result<(), ConfigError> {
    let depends: HashMap<&str, Vec<&str>> = configs
        .iter()
        .map(|c| {
            let refs = [&c.client_secret_credential, &c.subject_token_credential]
                .into_iter()
                .flatten()
                .map(|r| r.get_ref().as_str())
                .collect();
            (c.name.get_ref().as_str(), refs)
        })
        .collect();
    for config in configs {
        let start = config.name.get_ref().as_str();
        let mut stack: Vec<&str> = depends.get(start).cloned().unwrap_or_default();
        let mut visited = HashSet::new();
        while let Some(next) = stack.pop() {
            if next == start {
                return Err(source.error_at(
                    &config.name.span(),
                    ConfigErrorKind::Reference,
                    SettingsError::DependsOnItself(start.to_owned()),
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
fn check_token_url(url: &str) -> Result<(), SettingsError> {
    let uri: http::Uri = url.parse().map_err(|source| SettingsError::BadTokenUrl {
        url: url.to_owned(),
        source,
    })?;
    let host = uri.host().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if loopback => Ok(()),
        Some("http") => Err(SettingsError::PlainHttpTokenUrl(url.to_owned())),
        _ => Err(SettingsError::NotHttpsTokenUrl(url.to_owned())),
    }
}
