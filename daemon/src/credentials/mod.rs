//! Credentials: where the real keys come from, and the interface the injector
//! uses to get the current value of one.
//!
//! `CredentialStore` (store.rs) implements `CredentialSource` over the
//! providers (file, systemd, exec, oauth2/token-exchange, and the clouds':
//! `aws`, `gcp`, `azure`), caching and refreshing each credential;
//! `settings::compile` builds it from the config. Every value is one
//! [`Secret`]; what it holds ([`CredentialKind`]: a token, or AWS keys that
//! sign rather than travel) decides which upstreams may use it.

pub mod aws;
pub mod azure;
pub mod exec;
pub mod file;
pub mod gcp;
pub mod oauth;
pub mod provider;
pub mod settings;
pub mod store;

// The clock credentials are judged by is the daemon's one clock.
pub use crate::clock::{self, Clock, ManualClock, SystemClock};
pub use settings::{StoreOptions, compile, kind_named, kind_of};
pub use store::{CredentialStatus, CredentialStore, Described};

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc};

use crate::secret::Secret;

pub type CredentialFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Arc<Secret>, CredentialError>> + Send + 'a>>;

/// Gives the current value of a named `[[credential]]`.
pub trait CredentialSource: Send + Sync + 'static {
    fn current(&self, name: &str) -> CredentialFuture<'_>;

    /// The upstream refused `refused` (401 or 403): fetch the credential
    /// again now, outside its schedule, and give the value in force after
    /// that. The same value back means nothing new was issued; an error
    /// means no fetch was made ([`CredentialError::NotRefreshed`]: the
    /// default, for sources that cannot fetch) or it failed.
    fn refresh(&self, name: &str, refused: &Secret) -> CredentialFuture<'_> {
        let _ = refused;
        let name = name.to_owned();
        Box::pin(async move {
            Err(CredentialError::NotRefreshed {
                name,
                why: "this source cannot fetch again",
            })
        })
    }
}

/// What a credential's value is: it decides which upstreams may use it
/// (checked when the configuration is compiled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    /// One token or key, sent as a header value.
    Token,
    /// AWS keys ([`aws::AwsKeys`]): they sign requests (SigV4) and never
    /// travel.
    AwsKeys,
}

/// Why no credential could be had. Never carries a credential value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    #[error("no credential named {0:?} is configured")]
    NotConfigured(String),
    /// The issuer failed and no unexpired cached value is left.
    #[error("credential {name:?} is unavailable: {reason}")]
    Unavailable {
        name: String,
        /// The last failure (shared: every request waiting on the entry
        /// gets it).
        #[source]
        reason: Arc<provider::IssueError>,
    },
    /// A refresh after an upstream refused the credential was not made.
    #[error("credential {name:?} was not fetched again: {why}")]
    NotRefreshed { name: String, why: &'static str },
}

/// Fixed credentials, for tests and the demo.
#[derive(Default)]
pub struct StaticCredentials {
    values: HashMap<String, Arc<Secret>>,
}

impl StaticCredentials {
    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.values
            .insert(name.to_owned(), Arc::new(Secret::new(value.to_owned())));
        self
    }
}

impl CredentialSource for StaticCredentials {
    fn current(&self, name: &str) -> CredentialFuture<'_> {
        let found = self
            .values
            .get(name)
            .cloned()
            .ok_or_else(|| CredentialError::NotConfigured(name.to_owned()));
        Box::pin(async move { found })
    }
}

/// Makes the process non-dumpable: no core dumps, and other processes of
/// the same uid cannot ptrace it or read /proc/self/mem, so credentials in
/// memory stay in memory. Call once at startup, before any credential is
/// fetched.
pub fn make_non_dumpable() -> Result<(), nix::Error> {
    nix::sys::prctl::set_dumpable(false)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn process_becomes_non_dumpable() {
        make_non_dumpable().unwrap();
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
    }
}
