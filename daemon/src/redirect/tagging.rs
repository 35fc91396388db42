//! Which cgroups are tagged: the ones the `[[workload]]` unit, slice and
//! cgroup selectors name, found under the cgroup root now and as they appear.
//!
//! Tagging a cgroup covers its whole subtree (the programs check every
//! ancestor), so only cgroups that match a selector are put in the map. New
//! and removed cgroups are seen through inotify on cgroupfs, with a periodic
//! rescan as a safety net.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};

use super::{RedirectError, RedirectMaps, cgroup};
use crate::config::{CgroupGlob, Config};

/// Walks per event at most while new directories keep appearing.
const MAX_SETTLE_WALKS: usize = 8;
/// How often the tree is rescanned even without inotify events.
const RESCAN_INTERVAL: Duration = Duration::from_secs(30);
/// Deeper trees are not walked (the eBPF side looks 32 levels up, too).
const MAX_DEPTH: usize = warrant_common::MAX_CGROUP_DEPTH as usize;

/// One workload's cgroup selectors.
#[derive(Debug, Clone)]
pub struct CgroupSelector {
    pub workload: String,
    unit: Option<String>,
    slice: Option<String>,
    glob: Option<CgroupGlob>,
}

impl CgroupSelector {
    /// Does the cgroup at `rel_path` (relative to the cgroup2 mount, e.g.
    /// "/system.slice/a.service") match? Every selector given must match.
    pub fn matches(&self, rel_path: &str) -> bool {
        let last = rel_path.rsplit('/').next().unwrap_or("");
        let unit_ok = self.unit.as_deref().is_none_or(|unit| last == unit);
        let slice_ok = self.slice.as_deref().is_none_or(|slice| last == slice);
        let glob_ok = self
            .glob
            .as_ref()
            .is_none_or(|glob| glob.is_match(rel_path));
        unit_ok && slice_ok && glob_ok
    }
}

/// The selectors of every workload that has at least one cgroup selector;
/// workloads without one are not tagged by warrant (they may be tagged by a
/// slice another workload names).
pub fn selectors(config: &Config) -> Vec<CgroupSelector> {
    config
        .workloads
        .iter()
        .filter(|w| w.unit.is_some() || w.slice.is_some() || w.cgroup.is_some())
        .map(|w| CgroupSelector {
            workload: w.name.get_ref().clone(),
            unit: w.unit.as_ref().map(|u| u.get_ref().clone()),
            slice: w.slice.as_ref().map(|s| s.get_ref().clone()),
            glob: w.cgroup.as_ref().map(|g| g.get_ref().clone()),
        })
        .collect()
}

/// Keeps the TAGGED map equal to the set of cgroups the selectors match.
pub struct Tagger {
    mount: PathBuf,
    root: PathBuf,
    selectors: Vec<CgroupSelector>,
    maps: Arc<RedirectMaps>,
    /// Tagged cgroup id -> (relative path, workload).
    tagged: BTreeMap<u64, (String, String)>,
}

impl Tagger {
    pub fn new(
        root: &Path,
        selectors: Vec<CgroupSelector>,
        maps: Arc<RedirectMaps>,
    ) -> Result<Tagger, RedirectError> {
        Ok(Tagger {
            mount: cgroup::cgroup2_mount()?,
            root: root.to_owned(),
            selectors,
            maps,
            tagged: BTreeMap::new(),
        })
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
    /// every directory seen (for inotify watches).
    pub fn rescan(&mut self) -> Result<Vec<PathBuf>, RedirectError> {
        let mut dirs = Vec::new();
        walk(&self.root, 0, &mut dirs);
        let mut wanted = BTreeMap::new();
        for dir in &dirs {
            let rel = cgroup::relative_path(&self.mount, dir);
            if let Some(selector) = self.selectors.iter().find(|s| s.matches(&rel)) {
                // The directory may vanish between the walk and the stat.
                if let Ok(id) = cgroup::cgroup_id(dir) {
                    wanted.insert(id, (rel, selector.workload.clone()));
                }
            }
        }
        for (id, (path, _)) in &self.tagged {
            if !wanted.contains_key(id) {
                self.maps.untag(*id)?;
                tracing::info!(cgroup = %path, "cgroup untagged");
            }
        }
        for (id, (path, workload)) in &wanted {
            if !self.tagged.contains_key(id) {
                self.maps.tag(*id)?;
                tracing::info!(cgroup = %path, workload = %workload, "cgroup tagged");
            }
        }
        self.tagged = wanted;
        Ok(dirs)
    }

    /// Follows the tree until `shutdown` resolves: rescans on every cgroup
    /// created or removed below the root, and every RESCAN_INTERVAL.
    pub async fn watch(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Tagger, RedirectError> {
        let (_keep, updates) = tokio::sync::mpsc::unbounded_channel();
        self.watch_with_updates(updates, shutdown).await
    }

    /// As `watch`, also taking new selectors (config reload) from `updates`.
    pub async fn watch_with_updates(
        mut self,
        mut updates: tokio::sync::mpsc::UnboundedReceiver<Vec<CgroupSelector>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Tagger, RedirectError> {
        let inotify =
            Inotify::init().map_err(|e| RedirectError::Cgroup(format!("inotify: {e}")))?;
        let mut watches = inotify.watches();
        let mut stream = inotify
            .into_event_stream([0u8; 4096])
            .map_err(|e| RedirectError::Cgroup(format!("inotify: {e}")))?;
        let mask = WatchMask::CREATE | WatchMask::DELETE | WatchMask::ONLYDIR;
        let mut ticker = tokio::time::interval(RESCAN_INTERVAL);
        tokio::pin!(shutdown);
        loop {
            // A directory created after the walk but before its parent's
            // watch was added sends no event (systemd creates
            // warrant.slice/warrant-agents.slice/agent.service in one go):
            // walk again once the watches are in place, until a walk finds
            // nothing new. Bounded, in case the tree never stops changing;
            // the periodic rescan covers what is left.
            let mut dirs = self.rescan()?;
            for _ in 0..MAX_SETTLE_WALKS {
                for dir in &dirs {
                    // Adding a watch twice returns the existing one; a
                    // vanished directory simply fails.
                    let _ = watches.add(dir, mask);
                }
                let again = self.rescan()?;
                if again == dirs {
                    break;
                }
                dirs = again;
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(self),
                _ = ticker.tick() => {}
                Some(selectors) = updates.recv() => self.selectors = selectors,
                event = stream.next() => {
                    if event.is_none() {
                        return Err(RedirectError::Cgroup("inotify stream ended".into()));
                    }
                }
            }
        }
    }
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&entry.path(), depth + 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(unit: Option<&str>, slice: Option<&str>, glob: Option<&str>) -> CgroupSelector {
        CgroupSelector {
            workload: "w".into(),
            unit: unit.map(Into::into),
            slice: slice.map(Into::into),
            glob: glob.map(|g| CgroupGlob::try_from(g.to_owned()).unwrap()),
        }
    }

    #[test]
    fn unit_selector_matches_the_unit_wherever_it_sits() {
        let s = selector(Some("agent.service"), None, None);
        assert!(s.matches("/system.slice/agent.service"));
        assert!(s.matches("/warrant-agents.slice/agent.service"));
        assert!(!s.matches("/system.slice/agent.service.d"));
        assert!(!s.matches("/system.slice/other.service"));
    }

    #[test]
    fn slice_selector_matches_the_slice_itself() {
        let s = selector(None, Some("warrant-agents.slice"), None);
        assert!(s.matches("/warrant-agents.slice"));
        // Units below are covered through the eBPF ancestor walk, not by tagging them.
        assert!(!s.matches("/warrant-agents.slice/a.service"));
    }

    #[test]
    fn glob_selector_matches_paths_and_all_selectors_must_match() {
        let s = selector(None, None, Some("/system.slice/agent-*.service"));
        assert!(s.matches("/system.slice/agent-1.service"));
        assert!(!s.matches("/user.slice/agent-1.service"));
        let both = selector(Some("agent-1.service"), None, Some("/system.slice/*"));
        assert!(both.matches("/system.slice/agent-1.service"));
        assert!(!both.matches("/system.slice/agent-2.service"));
    }
}
