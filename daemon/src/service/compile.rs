//! One configuration compiled: each domain turns its section into its
//! runtime form, once, with errors at their place in the file.
//!
//! Compiling has no side effects: nothing is fetched (credentials, posture
//! results, the instance identity), nothing is written, nothing is
//! contacted; files the config names are only read (CA and trust files) or
//! looked at (the owner and mode of credential files). `warrant run` starts
//! from a `Compiled`, a reload builds the next generation from one, and
//! `warrant check-config` builds one and drops it ([`check`]).

use std::{path::Path, sync::Arc};

use crate::{
    attest::{WorkloadMatcher, instance},
    clock::{Clock, SystemClock},
    config::{Config, ConfigError, ConfigErrorKind},
    credentials::{self, CredentialStore, StoreOptions},
    policy::{Policy, PostureStore},
    provider,
    redirect::tagging::{self, CgroupSelector},
    usage::UsageSettings,
};

/// The runtime form of the sections a reload replaces.
pub struct Compiled {
    pub workloads: WorkloadMatcher,
    /// The checks; none read yet.
    pub posture: Arc<PostureStore>,
    pub policy: Policy,
    /// The store; nothing fetched yet.
    pub credentials: CredentialStore,
    pub usage: UsageSettings,
    /// The cgroups the tagger puts in the TAGGED map.
    pub selectors: Vec<CgroupSelector>,
    /// Some rule limits models: the gate reads request bodies for the model.
    pub rules_name_models: bool,
    /// Some rule sets a token or cost budget: admission reads request bodies
    /// for max_tokens and the model.
    pub rules_have_token_budgets: bool,
    /// The workloads that select node statements (`warrant gateway`).
    pub remote_workloads: crate::gateway::RemoteWorkloads,
}

impl Compiled {
    /// Compiles for the daemon: the system clock, root-owned credential
    /// files, `$CREDENTIALS_DIRECTORY`.
    pub fn new(config: &Config) -> Result<Compiled, ConfigError> {
        Compiled::with(config, Arc::new(SystemClock), &StoreOptions::default())
    }

    /// Compiles with the clock and credential options given (tests).
    pub fn with(
        config: &Config,
        clock: Arc<dyn Clock>,
        options: &StoreOptions,
    ) -> Result<Compiled, ConfigError> {
        let source = &config.source;
        let workloads = WorkloadMatcher::compile(&config.workloads, source)?;
        let posture = Arc::new(PostureStore::compile(&config.postures, source)?);
        let policy = Policy::compile(&config.policies, posture.clone(), source)?;
        let credentials = credentials::compile(&config.credentials, source, clock, options)?;
        let usage = UsageSettings::compile(&config.usage, &config.prices, source)?;
        let remote_workloads = crate::gateway::RemoteWorkloads::compile(&config.workloads, source)?;
        // Built by the injector at start; checked here with the rest, so a
        // bad entry stops the daemon (or check-config) at its place.
        check_destinations(config)?;
        Ok(Compiled {
            workloads,
            posture,
            policy,
            credentials,
            usage,
            selectors: tagging::selectors(config),
            rules_name_models: config.policies.iter().any(|p| !p.models.is_empty()),
            rules_have_token_budgets: config
                .policies
                .iter()
                .any(|p| p.tokens_per_hour.is_some() || p.cost_per_day_usd.is_some()),
            remote_workloads,
        })
    }
}

/// `[intercept] passthrough_deny` and `passthrough_allow`, as the injector
/// compiles them (`proxy::egress::Destinations`).
fn check_destinations(config: &Config) -> Result<(), ConfigError> {
    let source = &config.source;
    crate::proxy::egress::Destinations::from_config(&config.intercept)
        .map(drop)
        .map_err(|e| match e.span.clone().filter(|span| !span.is_empty()) {
            Some(span) => source.error_at(&span, ConfigErrorKind::Invalid, e),
            None => source.error_at_key(&["intercept", e.key], ConfigErrorKind::Invalid, e),
        })
}

/// What `warrant check-config` found in a file that compiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub workloads: usize,
    pub upstreams: usize,
    pub credentials: usize,
    pub policies: usize,
}

/// `warrant check-config`: parses the file and compiles every section as
/// `warrant run` would at start (the reloadable sections, `[instance]`, and
/// the upstreams' splicing and CA files), then drops it all: a dry run that
/// fetches, contacts and writes nothing.
pub fn check(path: &Path) -> Result<CheckReport, ConfigError> {
    check_config(&Config::load(path)?)
}

/// As [`check`], for a configuration already parsed.
pub fn check_config(config: &Config) -> Result<CheckReport, ConfigError> {
    Compiled::new(config)?;
    instance::Provider::compile(&config.instance, &config.daemon.state_dir, &config.source)?;
    check_upstreams(config)?;
    crate::metadata::Emulator::compile(&config.metadata, &config.source)?;
    Ok(CheckReport {
        workloads: config.workloads.len(),
        upstreams: config.upstreams.len(),
        credentials: config.credentials.len(),
        policies: config.policies.len(),
    })
}

/// What the injector builds per upstream at start (`Injector::new`), built
/// here to be checked: the provider's splicing settings (a generic scheme's
/// `header`) and the TLS client configuration with the upstream's `ca_file`
/// (without the system roots, which are the host's, not the config's).
fn check_upstreams(config: &Config) -> Result<(), ConfigError> {
    let source = &config.source;
    for (index, upstream) in config.upstreams.iter().enumerate() {
        let index = index.to_string();
        let name = upstream.credential.as_ref().map_or("", |c| c.get_ref());
        let kind = credentials::kind_named(&config.credentials, name);
        provider::Provider::from_config(upstream, kind).map_err(|e| {
            source.error_at_key(&["upstream", &index, e.key()], ConfigErrorKind::Invalid, e)
        })?;
        crate::tls::client_config(&[], upstream.ca_file.as_deref()).map_err(|e| {
            source.error_at_key(
                &["upstream", &index, "ca_file"],
                ConfigErrorKind::Invalid,
                e,
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The embedded default config's commented cloud examples, uncommented
    /// (`# key = ...` and `# [[section]]` lines; `# #` lines are the
    /// examples' own alternatives and comments), form a valid configuration
    /// that compiles: the examples the README points at work as written.
    #[test]
    fn the_commented_cloud_examples_compile() {
        let text = crate::config::DEFAULT_CONFIG;
        let start = text.find("# Cloud model platforms").unwrap();
        let end = text[start..].find("# Posture checks").unwrap() + start;
        let mut examples = String::new();
        for line in text[start..end].lines() {
            let Some(code) = line.strip_prefix("# ") else {
                continue;
            };
            let is_toml = code.starts_with('[')
                || code.split_once(" = ").is_some_and(|(key, _)| {
                    key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
            if is_toml {
                examples.push_str(code);
                examples.push('\n');
            }
        }
        assert!(examples.contains("scheme = \"bedrock\""), "{examples}");
        // The Entra example names the client secret of the oauth2 example.
        let file = format!(
            "{examples}\n[[credential]]\nname = \"idp-client-secret\"\nsource = \"file\"\npath = \"/nonexistent\"\n"
        );
        let config = Config::parse(&file, "examples.toml").unwrap();
        assert_eq!(config.upstreams.len(), 3);
        assert!(config.metadata.intercept);
        check_config(&config).unwrap();
    }
}
