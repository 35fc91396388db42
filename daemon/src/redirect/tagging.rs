//! Which cgroups are tagged: the ones the `[[workload]]` unit, slice and
//! cgroup selectors name, found under the cgroup root now and as they appear.
//!
//! What a selector names is decided by `attest::scope::decide`, the same
//! function attestation uses, so that a cgroup is redirected exactly when
//! its processes can match: a slice at its exact path, a unit directly
//! below a system slice, a glob's shallowest match, and only where every
//! directory from the manager's root down is root's and not delegated.
//! Tagging a cgroup covers its whole subtree (the programs check every
//! ancestor), so only the cgroups a selector names are put in the map: one
//! per unit or slice selector, and the shallowest match of a glob. New,
//! removed and re-owned cgroups are seen through inotify on cgroupfs, with
//! a periodic rescan as a safety net.
//!
//! The map holds [`TAGGED_CAPACITY`] entries. Since only root can create
//! the cgroups selectors name, only the operator's own selectors can fill
//! it; if they do, the cgroups that do not fit are not tagged, and the
//! tagger says so at error level, in `warrant status` and in the
//! `warrant_tagger_healthy` and `warrant_tagger_errors_total` metrics, and
//! tries again (on every change of the tree, and every few seconds). It
//! never stops: a failure of its inotify watch restarts it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{FutureExt, StreamExt};
use inotify::{Inotify, WatchDescriptor, WatchMask};
use serde::{Deserialize, Serialize};

use super::{RedirectError, RedirectMaps, cgroup};
use crate::{
    attest::scope::{self, CachedFacts, Decision, Hierarchy, Scope},
    config::Config,
    metrics::TaggerMetrics,
};

/// Entries of the eBPF map of tagged cgroup ids (`WARRANT_TAGGED`); see
/// `warrant_common::TAGGED_CAPACITY` for why this many.
pub const TAGGED_CAPACITY: usize = warrant_common::TAGGED_CAPACITY as usize;

/// Walks per event at most while new directories keep appearing.
const MAX_SETTLE_WALKS: usize = 8;
/// How often the tree is rescanned even without inotify events.
const RESCAN_INTERVAL: Duration = Duration::from_secs(30);
/// How soon a failed rescan or a lost watch is tried again, at first and
/// at most (doubling in between).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long a change of the tree waits for the rest of its burst.
const COALESCE: Duration = Duration::from_millis(50);
/// Deeper trees are not walked (the eBPF side looks 32 levels up, too).
const MAX_DEPTH: usize = warrant_common::MAX_CGROUP_DEPTH as usize;

/// One workload's cgroup selectors.
#[derive(Debug, Clone)]
pub struct CgroupSelector {
    pub workload: String,
    scope: Scope,
}

/// The selectors of every workload that has at least one cgroup selector;
/// workloads without one are not tagged by warrant (they may be tagged by a
/// slice another workload names). A workload whose selectors cannot be used
/// is skipped (the config loader refuses those already).
pub fn selectors(config: &Config) -> Vec<CgroupSelector> {
    config
        .workloads
        .iter()
        .filter_map(|w| match Scope::of_workload(w) {
            Ok(Some(scope)) => Some(CgroupSelector {
                workload: w.name.get_ref().clone(),
                scope,
            }),
            Ok(None) => None,
            Err(error) => {
                tracing::error!(workload = %w.name.get_ref(), %error, "workload not tagged");
                None
            }
        })
        .collect()
}

/// How the tagger is doing, for `warrant status` and the metrics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TaggerStatus {
    /// Every cgroup the selectors name is tagged.
    pub healthy: bool,
    pub tagged: usize,
    /// Cgroups the selectors name that are not tagged (the map is full or
    /// refused them).
    pub untagged: usize,
    pub capacity: usize,
    /// Failed rescans and tag operations since the daemon started.
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Shared between the tagger and whoever reports on it.
#[derive(Default)]
pub struct TaggerHealth {
    status: Mutex<TaggerStatus>,
    metrics: Option<TaggerMetrics>,
}

impl TaggerHealth {
    pub fn new(metrics: Option<TaggerMetrics>) -> TaggerHealth {
        TaggerHealth {
            status: Mutex::new(TaggerStatus {
                capacity: TAGGED_CAPACITY,
                ..TaggerStatus::default()
            }),
            metrics,
        }
    }

    pub fn snapshot(&self) -> TaggerStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn update(&self, change: impl FnOnce(&mut TaggerStatus)) {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut status);
        if let Some(metrics) = &self.metrics {
            metrics.healthy.set(i64::from(status.healthy));
            metrics
                .tagged
                .set(i64::try_from(status.tagged).unwrap_or(i64::MAX));
        }
    }

    fn error(&self, error: &str) {
        tracing::error!(%error, "tagging failed; retrying");
        if let Some(metrics) = &self.metrics {
            metrics.errors.inc();
        }
        self.update(|s| {
            s.healthy = false;
            s.errors += 1;
            s.last_error = Some(error.to_owned());
        });
    }
}

/// Keeps the TAGGED map equal to the set of cgroups the selectors name.
pub struct Tagger {
    hierarchy: Hierarchy,
    root: PathBuf,
    selectors: Vec<CgroupSelector>,
    maps: Arc<RedirectMaps>,
    health: Arc<TaggerHealth>,
    /// Tagged cgroup id -> (relative path, workload).
    tagged: BTreeMap<u64, (String, String)>,
}

impl Tagger {
    /// Tags below `root` (the attach point) the cgroups the selectors name
    /// in the system manager's tree (the cgroup2 mount).
    pub fn new(
        root: &Path,
        selectors: Vec<CgroupSelector>,
        maps: Arc<RedirectMaps>,
    ) -> Result<Tagger, RedirectError> {
        let hierarchy = Hierarchy::from_test_env(cgroup::cgroup2_mount()?);
        Ok(Tagger::with_hierarchy(hierarchy, root, selectors, maps))
    }

    /// As `new`, in a given hierarchy (tests that run without the daemon
    /// treat their own cgroup as the system manager's root).
    pub fn with_hierarchy(
        hierarchy: Hierarchy,
        root: &Path,
        selectors: Vec<CgroupSelector>,
        maps: Arc<RedirectMaps>,
    ) -> Tagger {
        Tagger {
            hierarchy,
            root: root.to_owned(),
            selectors,
            maps,
            health: Arc::new(TaggerHealth::new(None)),
            tagged: BTreeMap::new(),
        }
    }

    /// Reports to `health` (status and metrics) from now on.
    pub fn with_health(mut self, health: Arc<TaggerHealth>) -> Tagger {
        self.health = health;
        self
    }

    pub fn health(&self) -> Arc<TaggerHealth> {
        self.health.clone()
    }

    /// Replaces the selectors (config reload) and rescans.
    pub fn set_selectors(&mut self, selectors: Vec<CgroupSelector>) -> Result<(), RedirectError> {
        self.selectors = selectors;
        self.rescan().map(|_| ())
    }

    /// The tagged cgroups: relative path and workload.
    pub fn tagged(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tagged
            .values()
            .map(|(path, workload)| (path.as_str(), workload.as_str()))
    }

    /// Walks the tree under the root and brings the map up to date. Returns
    /// the directories entered (for inotify watches). A cgroup that cannot be
    /// tagged (the map is full) is reported and left for the next rescan;
    /// the others are still tagged.
    pub fn rescan(&mut self) -> Result<Vec<PathBuf>, RedirectError> {
        let facts = CachedFacts::new(&self.hierarchy.mount);
        let mut walked = Walked::default();
        walk(&self.root, 0, &self.hierarchy, &facts, &mut walked);
        let dirs = walked.entered;
        let mut wanted = BTreeMap::new();
        for dir in &walked.listed {
            let rel = cgroup::relative_path(&self.hierarchy.mount, dir);
            for selector in &self.selectors {
                match scope::decide(&selector.scope, &self.hierarchy, &rel, &facts) {
                    Decision::Selected => {
                        // The directory may vanish between the walk and the stat.
                        if let Ok(id) = cgroup::cgroup_id(dir) {
                            wanted.insert(id, (rel.clone(), selector.workload.clone()));
                        }
                        break;
                    }
                    Decision::Refused { why } => {
                        tracing::debug!(cgroup = %rel, workload = %selector.workload, %why, "not tagged");
                    }
                    _ => {}
                }
            }
        }
        let mut failures = Vec::new();
        for (id, (path, _)) in &self.tagged {
            if !wanted.contains_key(id) {
                match self.maps.untag(*id) {
                    Ok(()) => tracing::info!(cgroup = %path, "cgroup untagged"),
                    Err(e) => failures.push(format!("untagging {path}: {e}")),
                }
            }
        }
        let mut tagged = BTreeMap::new();
        for (id, (path, workload)) in wanted.iter() {
            if self.tagged.contains_key(id) {
                tagged.insert(*id, (path.clone(), workload.clone()));
                continue;
            }
            match self.maps.tag(*id) {
                Ok(()) => {
                    tracing::info!(cgroup = %path, workload = %workload, "cgroup tagged");
                    tagged.insert(*id, (path.clone(), workload.clone()));
                }
                Err(e) => failures.push(format!(
                    "tagging {path} (workload {workload}): {e} (the map holds {TAGGED_CAPACITY} cgroups)"
                )),
            }
        }
        let untagged = wanted.len() - tagged.len();
        self.tagged = tagged;
        let count = self.tagged.len();
        if failures.is_empty() {
            self.health.update(|s| {
                s.healthy = true;
                s.tagged = count;
                s.untagged = 0;
            });
            Ok(dirs)
        } else {
            self.health.update(|s| {
                s.tagged = count;
                s.untagged = untagged;
            });
            let first = failures.first().cloned().unwrap_or_default();
            Err(RedirectError::Map {
                map: warrant_common::map_names::TAGGED,
                reason: format!(
                    "{} cgroup(s) the selectors name are not tagged: {first}",
                    failures.len()
                ),
            })
        }
    }

    /// Follows the tree until `shutdown` resolves: rescans on every cgroup
    /// created, removed or re-owned below the root, and every
    /// RESCAN_INTERVAL. Never gives up: a failed rescan is retried with
    /// backoff, and a lost inotify watch is set up again.
    pub async fn watch(self, shutdown: impl std::future::Future<Output = ()>) -> Tagger {
        let (_keep, updates) = tokio::sync::mpsc::unbounded_channel();
        self.watch_with_updates(updates, shutdown).await
    }

    /// As `watch`, also taking new selectors (config reload) from `updates`.
    pub async fn watch_with_updates(
        mut self,
        mut updates: tokio::sync::mpsc::UnboundedReceiver<Vec<CgroupSelector>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Tagger {
        tokio::pin!(shutdown);
        let mut backoff = RETRY_FIRST;
        loop {
            let error = tokio::select! {
                _ = &mut shutdown => return self,
                error = self.follow(&mut updates) => error,
            };
            self.health.error(&error.to_string());
            tokio::select! {
                _ = &mut shutdown => return self,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    /// Follows the tree until something fails (returns the error).
    async fn follow(
        &mut self,
        updates: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<CgroupSelector>>,
    ) -> RedirectError {
        let inotify = match Inotify::init() {
            Ok(inotify) => inotify,
            Err(e) => return RedirectError::Cgroup(format!("inotify: {e}")),
        };
        let mut watches = inotify.watches();
        let mut watched: HashMap<PathBuf, WatchDescriptor> = HashMap::new();
        let mut stream = match inotify.into_event_stream([0u8; 4096]) {
            Ok(stream) => stream,
            Err(e) => return RedirectError::Cgroup(format!("inotify: {e}")),
        };
        // ATTRIB: a chown or a delegation xattr set on a cgroup changes
        // what may be tagged.
        let mask = WatchMask::CREATE | WatchMask::DELETE | WatchMask::ATTRIB | WatchMask::ONLYDIR;
        let mut ticker = tokio::time::interval(RESCAN_INTERVAL);
        let mut retry = RETRY_FIRST;
        loop {
            // A directory created after the walk but before its parent's
            // watch was added sends no event (systemd creates
            // warrant.slice/warrant-agents.slice/agent.service in one go):
            // walk again once the watches are in place, until a walk finds
            // nothing new. Bounded, in case the tree never stops changing;
            // the periodic rescan covers what is left.
            let mut failure = None;
            let mut dirs = self.rescan_or_note(&mut failure);
            for _ in 0..MAX_SETTLE_WALKS {
                for dir in &dirs {
                    // Adding a watch twice returns the existing one; a
                    // vanished directory simply fails.
                    if let Ok(wd) = watches.add(dir, mask) {
                        watched.insert(dir.clone(), wd);
                    }
                }
                let again = self.rescan_or_note(&mut failure);
                if again == dirs {
                    break;
                }
                dirs = again;
            }
            // A directory no longer entered (re-owned, delegated, removed)
            // is no longer watched: what happens inside costs nothing.
            let current: HashSet<&PathBuf> = dirs.iter().collect();
            watched.retain(|dir, wd| {
                let keep = current.contains(dir);
                if !keep {
                    let _ = watches.remove(wd.clone());
                }
                keep
            });
            // A rescan that left cgroups untagged is tried again soon,
            // whatever happens to the tree meanwhile.
            let wait = match &failure {
                Some(error) => {
                    self.health.error(error);
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
                None => {
                    retry = RETRY_FIRST;
                    RESCAN_INTERVAL
                }
            };
            tokio::select! {
                _ = ticker.tick() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(selectors) = updates.recv() => self.selectors = selectors,
                event = stream.next() => {
                    if event.is_none() {
                        return RedirectError::Cgroup("inotify stream ended".into());
                    }
                    // A burst of changes (a unit's cgroups made at once,
                    // or thousands) becomes one rescan: wait a moment, then
                    // take whatever else has arrived.
                    tokio::time::sleep(COALESCE).await;
                    while let Some(Some(_)) = stream.next().now_or_never() {}
                }
            }
        }
    }

    /// A rescan whose failure is kept in `failure` (the last one wins);
    /// the directories walked are returned either way.
    fn rescan_or_note(&mut self, failure: &mut Option<String>) -> Vec<PathBuf> {
        match self.rescan() {
            Ok(dirs) => {
                *failure = None;
                dirs
            }
            Err(error) => {
                *failure = Some(error.to_string());
                let facts = CachedFacts::new(&self.hierarchy.mount);
                let mut walked = Walked::default();
                walk(&self.root, 0, &self.hierarchy, &facts, &mut walked);
                walked.entered
            }
        }
    }
}

/// Every directory under `dir` that may hold a cgroup a selector names.
/// A directory that no root-made selection can lie below (not owned by
/// root, delegated, a user manager: `scope::is_sealed`) is listed but not
/// entered, nor watched: what its owner makes there costs the daemon
/// nothing, whatever its number.
fn walk(
    dir: &Path,
    depth: usize,
    hierarchy: &Hierarchy,
    facts: &CachedFacts<'_>,
    out: &mut Walked,
) {
    out.listed.push(dir.to_owned());
    if depth >= MAX_DEPTH {
        return;
    }
    let rel = cgroup::relative_path(&hierarchy.mount, dir);
    if scope::is_sealed(&rel, facts) {
        return;
    }
    out.entered.push(dir.to_owned());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&entry.path(), depth + 1, hierarchy, facts, out);
        }
    }
}

/// What one walk found: every directory (each may be selected) and those
/// it entered (watched for changes).
#[derive(Default)]
struct Walked {
    listed: Vec<PathBuf>,
    entered: Vec<PathBuf>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn selectors_come_from_workloads_with_a_cgroup_selector() {
        let config = Config::parse(
            "[[workload]]\nname = \"a\"\nslice = \"warrant-agents.slice\"\n\
             [[workload]]\nname = \"b\"\nuid = 1000\n\
             [[workload]]\nname = \"c\"\nunit = \"c.service\"\ndelegated = true\n",
            "test",
        )
        .unwrap();
        let names: Vec<_> = selectors(&config).into_iter().map(|s| s.workload).collect();
        assert_eq!(names, ["a", "c"]);
    }

    #[test]
    fn health_reports_errors_and_recovery() {
        let health = TaggerHealth::new(Some(TaggerMetrics::default()));
        health.error("the map is full");
        let status = health.snapshot();
        assert!(!status.healthy);
        assert_eq!(status.errors, 1);
        assert_eq!(status.capacity, TAGGED_CAPACITY);
        assert_eq!(status.last_error.as_deref(), Some("the map is full"));
        health.update(|s| s.healthy = true);
        assert!(health.snapshot().healthy);
        assert_eq!(health.metrics.as_ref().unwrap().errors.get(), 1);
        assert_eq!(health.metrics.as_ref().unwrap().healthy.get(), 1);
    }
}
