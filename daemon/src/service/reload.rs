//! `warrant reload` and SIGHUP: apply a new configuration without dropping
//! a connection.
//!
//! The new file is parsed and compiled first (`Compiled::new`: every
//! section, with errors at their place in the file); if anything is wrong
//! the running configuration stays and the error is returned. Otherwise what
//! the request path decides with is rebuilt as one `Generation` and swapped
//! in whole, in one step: workloads, policies and posture checks (the gate),
//! credentials (fetched before the swap, so the first request after a
//! reload does not wait) and the configuration they came from; then
//! intercepted ports and tagging. Requests already in flight finish with what they had;
//! new ones use the new configuration. Sections bound to sockets, files or
//! the CA at start ([daemon], [proxy], [audit], [control], [response],
//! [instance], [attest], [[upstream]]) are not changed by a reload: the answer
//! lists those that differ and need a restart.

use std::{path::PathBuf, sync::Arc};

use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

use super::{AbortOnDrop, Compiled, WarrantGate};
use crate::{
    config::{Config, ConfigError},
    credentials::{CredentialSource, CredentialStore},
    proxy::{self, RequestGate},
    redirect::{Intercept, RedirectError, tagging},
    swap::Swap,
};

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("warrant runs on its embedded default config: there is no file to reload")]
    NoFile,
    /// The new file does not parse or a section does not compile.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot update the intercepted ports: {0}")]
    Intercept(#[source] RedirectError),
}

/// What one configuration builds for the request path: swapped in whole,
/// read once per request.
pub struct Generation {
    pub config: Arc<Config>,
    pub gate: Arc<WarrantGate>,
    pub credentials: Arc<CredentialStore>,
}

impl proxy::Generation for Generation {
    fn gate(&self) -> &dyn RequestGate {
        self.gate.as_ref()
    }

    fn credentials(&self) -> &dyn CredentialSource {
        self.credentials.as_ref()
    }
}

/// A generation with the background tasks (refreshers) that belong to it.
pub struct Built {
    pub generation: Generation,
    pub tasks: Vec<AbortOnDrop>,
}

/// Starts a [`Generation`] from a configuration and its compiled form (the
/// same function serves the start and every reload, so both build the same
/// thing).
pub type Builder = Box<
    dyn Fn(
            Arc<Config>,
            Compiled,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Built> + Send>>
        + Send
        + Sync,
>;

pub struct Reloader {
    path: Option<PathBuf>,
    build: Builder,
    /// The tasks of the generation in force; held while a reload runs, so
    /// two reloads never interleave.
    tasks: Mutex<Vec<AbortOnDrop>>,
    /// The generation in force: the proxy reads it once per request, the
    /// control socket for status and explain.
    pub generation: Arc<Swap<Generation>>,
    /// The eBPF maps (the intercepted ports).
    intercept: Arc<dyn Intercept>,
    tagging: mpsc::UnboundedSender<Vec<tagging::CgroupSelector>>,
}

impl Reloader {
    /// `compiled` is `config` compiled (at start, before anything else).
    pub async fn start(
        path: Option<PathBuf>,
        config: Arc<Config>,
        compiled: Compiled,
        build: Builder,
        intercept: Arc<dyn Intercept>,
        tagging: mpsc::UnboundedSender<Vec<tagging::CgroupSelector>>,
    ) -> Reloader {
        let built = build(config, compiled).await;
        Reloader {
            path,
            build,
            tasks: Mutex::new(built.tasks),
            generation: Arc::new(Swap::new(Arc::new(built.generation))),
            intercept,
            tagging,
        }
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Generation> {
        self.generation.get()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.current().config.clone()
    }

    /// Re-reads the file and applies it; on any error the running
    /// configuration stays untouched.
    pub async fn reload(&self) -> Result<Value, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let new = Arc::new(Config::load(path)?);
        let compiled = Compiled::new(&new)?;
        let selectors = compiled.selectors.clone();
        let mut tasks = self.tasks.lock().await;
        let restart_needed = restart_only_changes(&self.config(), &new);
        let built = (self.build)(new.clone(), compiled).await;
        self.intercept
            .set_intercept(&new.intercept.ports, new.intercept.block_quic)
            .map_err(ReloadError::Intercept)?;
        // The tagger applies new selectors on its next turn.
        let _ = self.tagging.send(selectors);
        // One swap: the next request sees the new gate, credentials and
        // configuration together.
        self.generation.set(Arc::new(built.generation));
        // Dropping the old tasks stops the old refreshers.
        *tasks = built.tasks;
        tracing::info!(config = %path.display(), ?restart_needed, "configuration reloaded");
        Ok(json!({
            "config": path.display().to_string(),
            "valid": true,
            "applied": true,
            "restart_needed": restart_needed,
            "workloads": new.workloads.len(),
            "credentials": new.credentials.len(),
            "policies": new.policies.len(),
        }))
    }
}

/// The config sections read only at start: a reload that changes one names
/// it, and it takes a restart. `warrant reload --help` and the README's
/// Reload section list them (a test in `cli` keeps the help equal).
pub const RESTART_ONLY: [&str; 10] = [
    "[daemon]",
    "[proxy]",
    "[audit]",
    "[control]",
    "[response]",
    "[instance]",
    "[attest]",
    "[[upstream]]",
    "[intercept] passthrough_deny/passthrough_allow",
    "[metadata]",
];

/// The sections that differ between `old` and `new` but are only read at
/// start. Compared by value: positions in the file (spans) are not part of
/// a value, so moving a section is not a change.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    // In the order of RESTART_ONLY.
    let changed = [
        old.daemon != new.daemon,
        old.proxy != new.proxy,
        old.audit != new.audit,
        old.control != new.control,
        old.response != new.response,
        old.instance != new.instance,
        old.attest != new.attest,
        old.upstreams != new.upstreams,
        // The injector's relay checks are built at start.
        old.intercept.passthrough_deny != new.intercept.passthrough_deny
            || old.intercept.passthrough_allow != new.intercept.passthrough_allow,
        old.metadata != new.metadata,
    ];
    RESTART_ONLY
        .into_iter()
        .zip(changed)
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[workload]]
name = "a"
unit = "a.service"

[[upstream]]
host = "api.openai.com"
scheme = "openai"
credential = "c"

[[credential]]
name = "c"
source = "exec"
command = ["true"]
"#;

    #[test]
    fn policy_and_workload_changes_need_no_restart() {
        let old = Config::parse(BASE, "old").unwrap();
        let new = Config::parse(
            &format!("{BASE}\n[[policy]]\nworkload = \"a\"\nupstreams = [\"api.openai.com\"]\n"),
            "new",
        )
        .unwrap();
        assert!(restart_only_changes(&old, &new).is_empty());
    }

    #[test]
    fn a_change_deep_in_a_restart_only_section_names_that_section() {
        let old = Config::parse(BASE, "old").unwrap();
        let changed = |extra: &str| {
            let new = Config::parse(&format!("{extra}\n{BASE}"), "new").unwrap();
            restart_only_changes(&old, &new)
        };
        assert_eq!(
            changed("[instance]\nregion = \"eu-west-1\"\n"),
            ["[instance]"]
        );
        assert_eq!(
            changed("[response]\nquarantine_secs = 60\n"),
            ["[response]"]
        );
        assert_eq!(changed("[attest]\nmax_hash_bytes = 1024\n"), ["[attest]"]);
        assert_eq!(changed("[audit]\njournald = false\n"), ["[audit]"]);
        // The same values written out are no change.
        assert!(changed("[proxy]\nidle_timeout_secs = 300\n").is_empty());
        let plain = Config::parse(
            &BASE.replace(
                "credential = \"c\"",
                "credential = \"c\"\nplain_http = true",
            ),
            "new",
        )
        .unwrap();
        assert_eq!(restart_only_changes(&old, &plain), ["[[upstream]]"]);
    }

    #[test]
    fn moving_an_upstream_in_the_file_is_not_a_change_but_editing_it_is() {
        let old = Config::parse(BASE, "old").unwrap();
        let moved = Config::parse(&format!("\n\n{BASE}"), "new").unwrap();
        assert!(restart_only_changes(&old, &moved).is_empty());
        let edited = Config::parse(
            &BASE.replace(
                "scheme = \"openai\"",
                "scheme = \"generic\"\nheader = \"x-key\"",
            ),
            "new",
        )
        .unwrap();
        assert_eq!(restart_only_changes(&old, &edited), ["[[upstream]]"]);
        let listen = Config::parse(
            &format!("[daemon]\nlisten = \"127.0.0.1:1\"\n{BASE}"),
            "new",
        )
        .unwrap();
        assert_eq!(restart_only_changes(&old, &listen), ["[daemon]"]);
    }
}
