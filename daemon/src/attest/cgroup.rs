//! From a cgroup v2 id to its path and systemd unit.
//!
//! A cgroup v2 id is the inode number of the cgroup's directory in the
//! cgroup2 filesystem, and ids are never reused, so id -> path is cached for
//! good. A miss is resolved first from the process's /proc/PID/cgroup
//! (checked against the id: the process may have moved since connect), then
//! by a walk of the tree.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::RwLock,
};

/// Directories visited by one walk before giving up: a bound on the cost of
/// resolving an id that no longer exists (its cgroup was removed).
const MAX_WALK: usize = 100_000;
/// Cached ids before the cache is emptied (removed cgroups leave entries).
const MAX_ENTRIES: usize = 65_536;

/// The systemd unit of a cgroup path: its last `*.service` or `*.scope`
/// component.
pub fn unit_of(path: &str) -> Option<&str> {
    path.split('/')
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
}

pub struct CgroupResolver {
    mount: Option<PathBuf>,
    by_id: RwLock<HashMap<u64, String>>,
}

impl CgroupResolver {
    /// `mount`: the cgroup2 mount point; `None` when the host has none (then
    /// every path is unknown and cgroup selectors fail closed).
    pub fn new(mount: Option<PathBuf>) -> CgroupResolver {
        CgroupResolver {
            mount,
            by_id: RwLock::new(HashMap::new()),
        }
    }

    pub fn mount(&self) -> Option<&Path> {
        self.mount.as_deref()
    }

    /// The id of a cgroup path (relative to the mount, e.g. "/" or
    /// "/system.slice/x.service").
    pub fn id_of(&self, path: &str) -> Option<u64> {
        let mount = self.mount.as_ref()?;
        let full = mount.join(path.trim_start_matches('/'));
        std::fs::metadata(full).ok().map(|m| m.ino())
    }

    /// The path of cgroup `id` if it was resolved before (no I/O).
    pub fn cached(&self, id: u64) -> Option<String> {
        self.by_id.read().ok()?.get(&id).cloned()
    }

    /// The path of cgroup `id`, relative to the mount ("/" for the root).
    /// `tgid` is a hint: the process that was in that cgroup at connect.
    pub fn path_of(&self, id: u64, tgid: u32) -> Option<String> {
        if let Some(path) = self.by_id.read().ok().and_then(|m| m.get(&id).cloned()) {
            return Some(path);
        }
        let from_proc = super::process::cgroup_v2_path(tgid)
            .ok()
            .filter(|path| self.id_of(path) == Some(id));
        let path = match from_proc {
            Some(path) => path,
            None => self.walk_for(id)?,
        };
        self.remember(id, path.clone());
        Some(path)
    }

    fn remember(&self, id: u64, path: String) {
        if let Ok(mut map) = self.by_id.write() {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(id, path);
        }
    }

    /// Breadth-first walk of the cgroup2 tree for the directory whose inode
    /// is `id`, remembering every directory seen on the way.
    fn walk_for(&self, id: u64) -> Option<String> {
        let mount = self.mount.as_ref()?;
        let mut queue = std::collections::VecDeque::from([(mount.clone(), "/".to_owned())]);
        let mut seen = Vec::new();
        let mut found = None;
        while let Some((dir, rel)) = queue.pop_front() {
            if seen.len() >= MAX_WALK {
                break;
            }
            let Ok(meta) = std::fs::symlink_metadata(&dir) else {
                continue;
            };
            seen.push((meta.ino(), rel.clone()));
            if meta.ino() == id {
                found = Some(rel);
                break;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let child = if rel == "/" {
                        format!("/{name}")
                    } else {
                        format!("{rel}/{name}")
                    };
                    queue.push_back((entry.path(), child));
                }
            }
        }
        for (ino, rel) in seen {
            self.remember(ino, rel);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_unit_is_the_last_service_or_scope_component() {
        assert_eq!(
            unit_of("/system.slice/agent.service"),
            Some("agent.service")
        );
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/session-3.scope/inner"),
            Some("session-3.scope")
        );
        assert_eq!(
            unit_of("/system.slice/outer.service/payload.scope"),
            Some("payload.scope")
        );
        assert_eq!(unit_of("/warrant.slice/warrant-agents.slice"), None);
        assert_eq!(unit_of("/"), None);
    }
}
