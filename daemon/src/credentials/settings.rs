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
//! | `format` | file, systemd, exec | "token"; "aws": AWS credential_process JSON (`aws::AwsKeys`) |
//! | `endpoint` | aws-imds, gcp-metadata, azure-managed-identity | the link-local metadata address |
//! | `endpoint` | gcp-workload-identity | https://iamcredentials.googleapis.com (impersonation) |
//! | `role` | aws-imds | the one role the instance lists |
//! | `role_arn` | aws-web-identity | required |
//! | `subject_token_path` / `subject_token_credential` | aws-web-identity, gcp-workload-identity | one of them required |
//! | `session_name` | aws-web-identity | "warrant" |
//! | `region` | aws-web-identity | none: the global STS endpoint |
//! | `token_url` | aws-web-identity | the STS endpoint of `region` (or global) |
//! | `token_url` | gcp-workload-identity | https://sts.googleapis.com/v1/token |
//! | `duration` | aws-web-identity | STS's default (1h); 15m to 12h |
//! | `path` | gcp-service-account | required: the JSON key file, root-only |
//! | `scope` | gcp-service-account, gcp-workload-identity | https://www.googleapis.com/auth/cloud-platform |
//! | `scope` | gcp-metadata | the instance's scopes |
//! | `service_account` | gcp-metadata | "default" |
//! | `service_account` | gcp-workload-identity | none (the federated token is used as it is) |
//! | `audience` | gcp-workload-identity | required: the workload identity provider |
//! | `resource` | azure-managed-identity | https://cognitiveservices.azure.com |
//! | `client_id` | azure-managed-identity | none: the system-assigned identity |
//! | `timeout` | exec, oauth2, token-exchange, the cloud sources | 10s |
//! | `refresh_ahead` | all | 5m |
//! | `refresh_interval` | all, values without expiry | 5m |
//!
//! The cloud sources that read a metadata service (aws-imds, gcp-metadata,
//! azure-managed-identity) are opt in like `[instance]` cloud identities:
//! nothing contacts a metadata service unless such a credential is
//! configured.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use toml::Spanned;

use super::{
    CredentialKind,
    aws::{self, AwsFormat, ImdsProvider, WebIdentityProvider},
    azure::{self, ManagedIdentityProvider},
    exec::ExecProvider,
    file::{FileError, FileProvider, SystemdProvider, check_root_only},
    gcp::{self, MetadataProvider, ServiceAccountProvider, WorkloadIdentityProvider},
    oauth::{
        ClientAuth, Grant, OAuthError, OAuthProvider, PrivateKeyJwt, SubjectSource, TOKEN_TYPE_JWT,
        TokenClient,
    },
    provider::Provider,
    store::{CredentialStore, Described, RefreshSettings},
};
use crate::{
    clock::Clock,
    config::{
        ConfigError, ConfigErrorKind, CredentialConfig, CredentialFormat,
        CredentialSourceKind as Kind, DEFAULT_METADATA_ENDPOINT, Source,
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
    #[error(
        "`format` applies to sources file, systemd and exec; source {0:?} issues its own kind of value"
    )]
    FormatNotApplicable(&'static str),
    #[error("bad endpoint {0:?}: expected an http or https URL with a host")]
    BadEndpoint(String),
    #[error("duration {0:?} is outside STS's range of 15 minutes to 12 hours")]
    StsDuration(String),
}

/// STS's DurationSeconds range.
const STS_DURATION: std::ops::RangeInclusive<u64> = 900..=43_200;

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
        let described = Described {
            source: config.source.get_ref().name(),
            kind: compiled.kind(),
        };
        store = store.with_described(config.name.get_ref(), provider, settings, described);
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

    fn kind(&self) -> CredentialKind {
        kind_of(self.config)
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
        let raw_value = matches!(kind, Kind::File | Kind::Systemd | Kind::Exec);
        if let Some(format) = &config.format
            && !raw_value
        {
            return Err(self.invalid(format, SettingsError::FormatNotApplicable(kind.name())));
        }
        let aws_format = self.kind() == CredentialKind::AwsKeys && raw_value;
        let provider: Box<dyn Provider> = match kind {
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
                    let exec = ExecProvider::new(argv.clone(), timeout);
                    Box::new(if aws_format { exec.raw_output() } else { exec })
                }
                _ => {
                    return Err(self.missing(
                        config.source.span(),
                        "source \"exec\" needs `command = [\"program\", \"arg\", ...]`",
                    ));
                }
            },
            Kind::Oauth2 | Kind::TokenExchange => Box::new(self.oauth(kind, timeout, client)?),
            Kind::AwsImds => Box::new(ImdsProvider {
                client: self.client(client)?,
                endpoint: self.endpoint(DEFAULT_METADATA_ENDPOINT)?,
                role: config.role.clone(),
                timeout,
            }),
            Kind::AwsWebIdentity => Box::new(self.web_identity(timeout, client)?),
            Kind::GcpServiceAccount => Box::new(self.gcp_service_account(timeout, client)?),
            Kind::GcpMetadata => Box::new(self.gcp_metadata(timeout, client)?),
            Kind::GcpWorkloadIdentity => Box::new(self.workload_identity(timeout, client)?),
            Kind::AzureManagedIdentity => Box::new(self.managed_identity(timeout, client)?),
        };
        Ok(if aws_format {
            Box::new(AwsFormat { inner: provider })
        } else {
            provider
        })
    }

    fn gcp_service_account(
        &self,
        timeout: Duration,
        client: &mut Option<TokenClient>,
    ) -> Result<ServiceAccountProvider, ConfigError> {
        let config = self.config;
        Ok(ServiceAccountProvider {
            client: self.client(client)?,
            key_path: config.path.clone().ok_or_else(|| {
                self.missing(
                    config.source.span(),
                    "source \"gcp-service-account\" needs `path` (the JSON key file)",
                )
            })?,
            key_owner_uid: self.options.file_owner_uid,
            scope: config
                .scope
                .clone()
                .unwrap_or_else(|| gcp::DEFAULT_SCOPE.to_owned()),
            timeout,
        })
    }

    fn gcp_metadata(
        &self,
        timeout: Duration,
        client: &mut Option<TokenClient>,
    ) -> Result<MetadataProvider, ConfigError> {
        let config = self.config;
        Ok(MetadataProvider {
            client: self.client(client)?,
            endpoint: self.endpoint(DEFAULT_METADATA_ENDPOINT)?,
            service_account: config
                .service_account
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            scope: config.scope.clone(),
            timeout,
        })
    }

    fn managed_identity(
        &self,
        timeout: Duration,
        client: &mut Option<TokenClient>,
    ) -> Result<ManagedIdentityProvider, ConfigError> {
        let config = self.config;
        Ok(ManagedIdentityProvider {
            client: self.client(client)?,
            endpoint: self.endpoint(DEFAULT_METADATA_ENDPOINT)?,
            resource: config
                .resource
                .clone()
                .unwrap_or_else(|| azure::DEFAULT_RESOURCE.to_owned()),
            client_id: config.client_id.clone(),
            timeout,
        })
    }

    /// The HTTP client shared by every credential that calls out.
    fn client(&self, client: &mut Option<TokenClient>) -> Result<TokenClient, ConfigError> {
        Ok(match client {
            Some(c) => c.clone(),
            None => client
                .insert(TokenClient::new().map_err(|e| self.invalid(&self.config.source, e))?)
                .clone(),
        })
    }

    /// `endpoint`, or `default`, without a trailing slash.
    fn endpoint(&self, default: &str) -> Result<String, ConfigError> {
        let Some(endpoint) = &self.config.endpoint else {
            return Ok(default.to_owned());
        };
        let text = endpoint.get_ref();
        let ok = text.parse::<http::Uri>().ok().is_some_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
        });
        if !ok {
            return Err(self.invalid(endpoint, SettingsError::BadEndpoint(text.clone())));
        }
        Ok(text.trim_end_matches('/').to_owned())
    }

    /// The subject token of a federated source: exactly one of the path
    /// and the credential.
    fn subject(&self, needs: &'static str) -> Result<SubjectSource, ConfigError> {
        let config = self.config;
        aws::token_source(
            config.subject_token_path.clone(),
            config
                .subject_token_credential
                .as_ref()
                .map(|c| c.get_ref().clone()),
        )
        .ok_or_else(|| self.missing(config.source.span(), needs))
    }

    /// A `token_url` given, checked; else `default`.
    fn token_url(&self, default: String) -> Result<String, ConfigError> {
        match &self.config.token_url {
            Some(url) => {
                check_token_url(url.get_ref()).map_err(|e| self.invalid(url, e))?;
                Ok(url.get_ref().clone())
            }
            None => Ok(default),
        }
    }

    fn web_identity(
        &self,
        timeout: Duration,
        client: &mut Option<TokenClient>,
    ) -> Result<WebIdentityProvider, ConfigError> {
        let config = self.config;
        let role_arn = config.role_arn.clone().ok_or_else(|| {
            self.missing(
                config.source.span(),
                "source \"aws-web-identity\" needs `role_arn`",
            )
        })?;
        let token = self.subject(
            "source \"aws-web-identity\" needs exactly one of `subject_token_path` and `subject_token_credential` (the web identity token)",
        )?;
        let duration = match &config.duration {
            Some(text) => {
                let duration =
                    crate::duration::parse(text.get_ref()).map_err(|e| self.invalid(text, e))?;
                if !STS_DURATION.contains(&duration.as_secs()) {
                    return Err(
                        self.invalid(text, SettingsError::StsDuration(text.get_ref().clone()))
                    );
                }
                Some(duration)
            }
            None => None,
        };
        let default_url = config
            .region
            .as_deref()
            .map_or_else(|| aws::STS_GLOBAL.to_owned(), aws::sts_endpoint);
        Ok(WebIdentityProvider {
            client: self.client(client)?,
            url: self.token_url(default_url)?,
            role_arn,
            session_name: config
                .session_name
                .clone()
                .unwrap_or_else(|| aws::DEFAULT_SESSION_NAME.to_owned()),
            duration,
            token,
            timeout,
        })
    }

    fn workload_identity(
        &self,
        timeout: Duration,
        client: &mut Option<TokenClient>,
    ) -> Result<WorkloadIdentityProvider, ConfigError> {
        let config = self.config;
        let audience = config.audience.clone().ok_or_else(|| {
            self.missing(
                config.source.span(),
                "source \"gcp-workload-identity\" needs `audience` (//iam.googleapis.com/projects/.../providers/...)",
            )
        })?;
        let subject = self.subject(
            "source \"gcp-workload-identity\" needs exactly one of `subject_token_path` and `subject_token_credential`",
        )?;
        let scope = config
            .scope
            .clone()
            .unwrap_or_else(|| gcp::DEFAULT_SCOPE.to_owned());
        let client = self.client(client)?;
        let sts = OAuthProvider {
            client: client.clone(),
            token_url: self.token_url(gcp::DEFAULT_STS_URL.to_owned())?,
            client_id: None,
            auth: ClientAuth::None,
            grant: Grant::TokenExchange {
                subject,
                subject_token_type: config
                    .subject_token_type
                    .clone()
                    .unwrap_or_else(|| TOKEN_TYPE_JWT.to_owned()),
                requested_token_type: Some(gcp::TOKEN_TYPE_ACCESS_TOKEN.to_owned()),
            },
            scope: Some(scope.clone()),
            audience: Some(audience),
            resource: None,
            timeout,
        };
        Ok(WorkloadIdentityProvider {
            sts,
            client,
            service_account: config.service_account.clone(),
            iam_endpoint: self.endpoint(gcp::DEFAULT_IAM_CREDENTIALS)?,
            scope,
            timeout,
        })
    }

    /// Loose permissions are a leak already: refuse the config.
    fn check_files(&self, kind: Kind) -> Result<(), ConfigError> {
        let config = self.config;
        let files = [
            matches!(kind, Kind::File | Kind::GcpServiceAccount)
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
        let client = self.client(client)?;
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

/// What a credential's value is: AWS keys for the AWS sources and for
/// `format = "aws"`, a token otherwise.
pub fn kind_of(config: &CredentialConfig) -> CredentialKind {
    match config.source.get_ref() {
        Kind::AwsImds | Kind::AwsWebIdentity => CredentialKind::AwsKeys,
        _ if config.format.as_ref().map(|f| *f.get_ref()) == Some(CredentialFormat::Aws) => {
            CredentialKind::AwsKeys
        }
        _ => CredentialKind::Token,
    }
}

/// The kind of the credential `name` among `configs` (a token when no such
/// credential is configured: `config` has refused that file already).
pub fn kind_named(configs: &[CredentialConfig], name: &str) -> CredentialKind {
    configs
        .iter()
        .find(|c| c.name.get_ref() == name)
        .map_or(CredentialKind::Token, kind_of)
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
pub(super) fn check_token_url(url: &str) -> Result<(), SettingsError> {
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
