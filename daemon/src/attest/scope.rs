//! Which cgroups a workload's `unit`, `slice` and `cgroup` selectors name:
//! the one decision the tagger (which cgroups the eBPF programs redirect)
//! and the attestor (which connections get a credential) both make, so the
//! two cannot disagree.
//!
//! A cgroup's name proves nothing by itself. Whoever may create
//! directories in a cgroup subtree names them as they like: systemd hands
//! every user their `user@UID.service` (so `systemd-run --user
//! --slice=warrant-agents.slice` makes a name-alike of the operator's
//! slice), any unit with `Delegate=yes` manages its own subtree, and a
//! directory owned by another uid is that uid's to fill. So a selector
//! matches by *place* and by *who made it*:
//!
//! - a `slice` names the system manager's slice at its exact path: systemd
//!   nests slices by the dashes in their names, so `a-b-c.slice` lives at
//!   `/a.slice/a-b.slice/a-b-c.slice`, and nowhere else;
//! - a `unit` names a system manager unit: a `.service`, `.scope`,
//!   `.socket`, `.mount` or `.swap` directly below the root or below a
//!   chain of such slices (in whatever slice it was placed), never a
//!   directory below another unit;
//! - a `cgroup` glob names paths; the shallowest match on a path is the one
//!   selected (tagging it covers its subtree);
//! - and every directory from the manager's root down to the cgroup must be
//!   owned by root, writable by nobody else, not delegated by systemd (the
//!   `trusted.delegate` xattr, and `user.delegate` which newer systemd sets
//!   as well) and not a user manager (`user@UID.service`). A workload that
//!   sets `delegated = true` accepts a delegated unit, for a unit that
//!   manages its own sub-cgroups (a container runtime): then the unit named
//!   by its `unit` selector and what lies below it are exempt, and nothing
//!   else is.
//!
//! [`decide`] answers for one cgroup path: `Selected` (the cgroup a
//! selector names: the tagger tags it), `Within` (below a selected one: its
//! processes are covered), or why not. Paths are relative to the cgroup2
//! mount; the system manager's root is that mount's root in production. The
//! privileged tests run the daemon on a cgroup subtree they created and
//! treat it as the manager's root; that switch is compiled only into
//! test builds ([`Hierarchy::from_test_env`]).
//!
//! The facts about each directory (owner, mode, delegation) come from a
//! [`FactSource`]: the tagger reads the live tree, and the attestor reads
//! the chain of directories above the connecting process's cgroup once per
//! attestation and hands the same facts to the matcher.

use std::{
    collections::HashMap,
    ffi::CString,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Mutex,
};

use globset::{Glob, GlobMatcher};
use serde::Serialize;

/// The extended attributes systemd sets on a cgroup it delegated
/// (`Delegate=yes`): `trusted.delegate` since systemd 251, `user.delegate`
/// as well since 254 (readable without privileges).
pub const DELEGATE_XATTRS: [&str; 2] = ["trusted.delegate", "user.delegate"];

/// Unit types that have a cgroup of their own and can hold processes.
const UNIT_SUFFIXES: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];

/// What the decision needs to know of one cgroup directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DirFacts {
    pub uid: u32,
    /// The permission bits.
    pub mode: u32,
    /// systemd delegated it (one of [`DELEGATE_XATTRS`] is set).
    pub delegated: bool,
}

impl DirFacts {
    /// What systemd makes for the cgroups it manages itself.
    pub const SYSTEM: DirFacts = DirFacts {
        uid: 0,
        mode: 0o755,
        delegated: false,
    };
}

/// Why the facts of a cgroup directory could not be read. Kept as the
/// errno rather than an `io::Error` so that a chain of facts can be cloned
/// and compared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactsError {
    #[error("{}", std::io::Error::from_raw_os_error(*errno))]
    Stat { errno: i32 },
    #[error("not a directory")]
    NotADirectory,
    #[error("reading xattr {name}: {}", std::io::Error::from_raw_os_error(*errno))]
    Xattr { name: &'static str, errno: i32 },
    #[error("{dir} was not read")]
    NotRead { dir: String },
}

impl FactsError {
    fn errno(err: &std::io::Error) -> i32 {
        err.raw_os_error().unwrap_or(libc::EIO)
    }
}

/// Where [`decide`] gets the facts of a directory, by its path relative to
/// the cgroup2 mount.
pub trait FactSource {
    fn facts(&self, rel: &str) -> Result<DirFacts, FactsError>;
}

/// Facts read from the cgroup2 filesystem.
pub struct LiveFacts<'a> {
    pub mount: &'a Path,
}

impl FactSource for LiveFacts<'_> {
    fn facts(&self, rel: &str) -> Result<DirFacts, FactsError> {
        read_facts(&absolute(self.mount, rel))
    }
}

/// [`LiveFacts`] that remembers what it read: one rescan of the tree asks
/// for the same ancestors over and over.
pub struct CachedFacts<'a> {
    live: LiveFacts<'a>,
    seen: Mutex<HashMap<String, Result<DirFacts, FactsError>>>,
}

impl<'a> CachedFacts<'a> {
    pub fn new(mount: &'a Path) -> CachedFacts<'a> {
        CachedFacts {
            live: LiveFacts { mount },
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl FactSource for CachedFacts<'_> {
    fn facts(&self, rel: &str) -> Result<DirFacts, FactsError> {
        let Ok(mut seen) = self.seen.lock() else {
            return self.live.facts(rel);
        };
        seen.entry(rel.to_owned())
            .or_insert_with(|| self.live.facts(rel))
            .clone()
    }
}

/// The facts of every directory from the manager's root down to one
/// cgroup, read once: what the attestor records, and what the matcher
/// decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupChain {
    /// The cgroup, relative to the cgroup2 mount.
    pub path: String,
    /// Where the system manager's root is.
    pub hierarchy: Hierarchy,
    /// (path, facts or why they could not be read), root first.
    pub dirs: Vec<(String, Result<DirFacts, FactsError>)>,
}

impl CgroupChain {
    /// Reads the facts of `path` and each of its ancestors up to the
    /// manager's root (none when `path` is not below it).
    pub fn read(hierarchy: &Hierarchy, path: &str) -> CgroupChain {
        let live = LiveFacts {
            mount: &hierarchy.mount,
        };
        let dirs = match hierarchy.components(path) {
            Some(components) => (0..=components.len())
                .map(|k| {
                    let dir = join(&hierarchy.manager_root, &components[..k]);
                    let facts = live.facts(&dir);
                    (dir, facts)
                })
                .collect(),
            None => Vec::new(),
        };
        CgroupChain {
            path: path.to_owned(),
            hierarchy: hierarchy.clone(),
            dirs,
        }
    }
}

impl CgroupChain {
    /// A chain whose facts are given rather than read: for tests and
    /// benchmarks of the matcher.
    pub fn given(
        hierarchy: &Hierarchy,
        path: &str,
        facts: impl Fn(&str) -> DirFacts,
    ) -> CgroupChain {
        let dirs = match hierarchy.components(path) {
            Some(components) => (0..=components.len())
                .map(|k| {
                    let dir = join(&hierarchy.manager_root, &components[..k]);
                    let f = facts(&dir);
                    (dir, Ok(f))
                })
                .collect(),
            None => Vec::new(),
        };
        CgroupChain {
            path: path.to_owned(),
            hierarchy: hierarchy.clone(),
            dirs,
        }
    }
}

impl FactSource for CgroupChain {
    fn facts(&self, rel: &str) -> Result<DirFacts, FactsError> {
        self.dirs
            .iter()
            .find(|(dir, _)| dir == rel)
            .map(|(_, facts)| facts.clone())
            .unwrap_or_else(|| {
                Err(FactsError::NotRead {
                    dir: rel.to_owned(),
                })
            })
    }
}

/// The cgroup2 mount and the system manager's root within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    /// Relative to `mount`: "/" in production.
    pub manager_root: String,
}

/// The environment variable the privileged tests set to treat the cgroup
/// subtree they created as the system manager's root. Read only by builds
/// with the `privileged-tests` feature, never by a release build.
pub const TEST_MANAGER_ROOT_ENV: &str = "WARRANT_TEST_MANAGER_ROOT";

impl Hierarchy {
    /// The system manager's tree: the whole cgroup2 mount.
    pub fn system(mount: PathBuf) -> Hierarchy {
        Hierarchy {
            mount,
            manager_root: "/".to_owned(),
        }
    }

    /// [`Hierarchy::system`], except in test builds, where
    /// [`TEST_MANAGER_ROOT_ENV`] (an absolute path under the mount) moves
    /// the manager's root to a subtree the test created.
    pub fn from_test_env(mount: PathBuf) -> Hierarchy {
        #[cfg(feature = "privileged-tests")]
        if let Some(root) = std::env::var_os(TEST_MANAGER_ROOT_ENV) {
            let root = PathBuf::from(root);
            if let Ok(rel) = root.strip_prefix(&mount) {
                let manager_root = format!("/{}", rel.display());
                tracing::warn!(%manager_root, "test build: the system manager's root is a test cgroup");
                return Hierarchy {
                    mount,
                    manager_root: manager_root.trim_end_matches('/').to_owned(),
                };
            }
        }
        Hierarchy::system(mount)
    }

    /// The components of `path` below the manager's root ([] for the root
    /// itself); None when `path` is not at or below it.
    pub fn components<'p>(&self, path: &'p str) -> Option<Vec<&'p str>> {
        let below = if self.manager_root == "/" {
            Some(path)
        } else {
            path.strip_prefix(self.manager_root.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        }?;
        Some(below.split('/').filter(|c| !c.is_empty()).collect())
    }

    /// `path` relative to the manager's root, as selectors see it ("/" for
    /// the root itself).
    pub fn manager_path(&self, path: &str) -> Option<String> {
        self.components(path).map(|c| join("/", &c))
    }

    /// The system manager unit `path` belongs to: the unit directly below
    /// its chain of slices; None outside every unit (a slice, the root, a
    /// path the manager did not lay out).
    pub fn unit_of<'p>(&self, path: &'p str) -> Option<&'p str> {
        let components = self.components(path)?;
        Placement::of(&components).unit.map(|i| components[i])
    }
}

/// Where a path sits in the system manager's layout.
struct Placement {
    /// How many leading components form a valid chain of nested slices.
    slices: usize,
    /// The index of the unit directly below those slices, if any.
    unit: Option<usize>,
}

impl Placement {
    fn of(components: &[&str]) -> Placement {
        let mut slices = 0;
        let mut parent: Option<&str> = None;
        for component in components {
            let Some(stem) = component.strip_suffix(".slice") else {
                break;
            };
            if !nests_in(stem, parent) {
                break;
            }
            parent = Some(stem);
            slices += 1;
        }
        let unit = components
            .get(slices)
            .filter(|c| is_unit_name(c))
            .map(|_| slices);
        Placement { slices, unit }
    }
}

/// Whether a slice named `stem`.slice sits where systemd puts it: directly
/// below the root when it has no dash, else directly below the slice named
/// by its stem up to the last dash.
fn nests_in(stem: &str, parent: Option<&str>) -> bool {
    if !is_name(stem) {
        return false;
    }
    match (stem.rsplit_once('-'), parent) {
        (None, None) => true,
        (Some((up, last)), Some(parent)) => !last.is_empty() && up == parent,
        _ => false,
    }
}

/// systemd's unit name characters.
fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":_.-@\\".contains(&b))
}

fn is_unit_name(component: &str) -> bool {
    UNIT_SUFFIXES.iter().any(|suffix| {
        component
            .strip_suffix(suffix)
            .is_some_and(|stem| is_name(stem) && !stem.ends_with('.'))
    })
}

/// `user@UID.service`: a user's own systemd, whose subtree is delegated to
/// that user.
fn is_user_manager(component: &str) -> bool {
    component
        .strip_prefix("user@")
        .and_then(|rest| rest.strip_suffix(".service"))
        .is_some()
}

/// Whether no cgroup a selector could name lies strictly below `rel`: its
/// directory is not root's (or is writable by others), is delegated, or is
/// a user manager. [`decide`] refuses everything below such a directory
/// but a delegated unit's own subtree, and even there only the unit itself
/// is ever selected; so the tagger need not enter it.
pub fn is_sealed(rel: &str, facts: &dyn FactSource) -> bool {
    if rel.rsplit('/').next().is_some_and(is_user_manager) {
        return true;
    }
    match facts.facts(rel) {
        Ok(f) => f.uid != 0 || f.mode & 0o022 != 0 || f.delegated,
        Err(_) => true,
    }
}

/// The directories a slice name stands for, root first:
/// "a-b-c.slice" -> ["a.slice", "a-b.slice", "a-b-c.slice"].
pub fn slice_path(name: &str) -> Result<Vec<String>, ScopeError> {
    let bad = |why: &str| ScopeError::Slice {
        name: name.to_owned(),
        why: why.to_owned(),
    };
    let stem = name
        .strip_suffix(".slice")
        .ok_or_else(|| bad("a slice name ends in .slice"))?;
    if stem == "-" {
        return Err(bad(
            "-.slice is the root slice: it would select every cgroup",
        ));
    }
    if !is_name(stem) {
        return Err(bad("it holds characters systemd does not allow"));
    }
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad(
            "systemd nests slices by dashes: a dash may not start, end or double in the name",
        ));
    }
    Ok((1..=parts.len())
        .map(|n| format!("{}.slice", parts[..n].join("-")))
        .collect())
}

/// Why a selector cannot be used; the config loader reports these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("slice {name:?}: {why}")]
    Slice { name: String, why: String },
    #[error(
        "unit {name:?} is not a systemd unit name with a cgroup (it must end in .service, .scope, .socket, .mount or .swap)"
    )]
    Unit { name: String },
    #[error("bad cgroup glob {glob:?}: {why}")]
    Glob { glob: String, why: String },
    #[error(
        "delegated = true needs a unit selector: delegation is accepted only below the unit the workload names"
    )]
    DelegatedWithoutUnit,
}

/// One workload's cgroup selectors, compiled.
#[derive(Debug, Clone)]
pub struct Scope {
    unit: Option<String>,
    slice: Option<(String, Vec<String>)>,
    glob: Option<(String, GlobMatcher)>,
    delegated: bool,
}

impl Scope {
    /// None when no cgroup selector is given (the workload is not selected
    /// by place, and tags nothing).
    pub fn new(
        unit: Option<&str>,
        slice: Option<&str>,
        glob: Option<&str>,
        delegated: bool,
    ) -> Result<Option<Scope>, ScopeError> {
        if delegated && unit.is_none() {
            return Err(ScopeError::DelegatedWithoutUnit);
        }
        if unit.is_none() && slice.is_none() && glob.is_none() {
            return Ok(None);
        }
        if let Some(name) = unit
            && !is_unit_name(name)
        {
            return Err(ScopeError::Unit {
                name: name.to_owned(),
            });
        }
        let slice = slice
            .map(|name| slice_path(name).map(|path| (name.to_owned(), path)))
            .transpose()?;
        let glob = glob
            .map(|text| {
                Glob::new(text)
                    .map(|g| (text.to_owned(), g.compile_matcher()))
                    .map_err(|e| ScopeError::Glob {
                        glob: text.to_owned(),
                        why: e.to_string(),
                    })
            })
            .transpose()?;
        Ok(Some(Scope {
            unit: unit.map(str::to_owned),
            slice,
            glob,
            delegated,
        }))
    }

    /// The scope of a `[[workload]]` section.
    pub fn of_workload(w: &crate::config::WorkloadConfig) -> Result<Option<Scope>, ScopeError> {
        Scope::new(
            w.unit.as_ref().map(|u| u.get_ref().as_str()),
            w.slice.as_ref().map(|s| s.get_ref().as_str()),
            w.cgroup.as_ref().map(|g| g.get_ref().as_str()),
            w.delegated,
        )
    }

    /// What the selectors ask for, for explanations.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(unit) = &self.unit {
            parts.push(format!("unit {unit}"));
        }
        if let Some((_, path)) = &self.slice {
            parts.push(format!("slice /{}", path.join("/")));
        }
        if let Some((text, _)) = &self.glob {
            parts.push(format!("cgroup {text}"));
        }
        if self.delegated {
            parts.push("delegated".to_owned());
        }
        parts.join(", ")
    }
}

/// Why a cgroup is not one the selectors name (the selector does not
/// apply to it; nothing is refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotNamed {
    #[error("{path} is not below the system manager's root {root}")]
    NotBelowRoot { path: String, root: String },
    #[error("the cgroup was not found")]
    NotFound,
    #[error("{path} does not match the cgroup glob {glob}")]
    Glob { path: String, glob: String },
    #[error("{path} is not in the system slice {slice} (at {at})")]
    NotInSlice {
        path: String,
        slice: String,
        at: String,
    },
    #[error(
        "{path} is not in a system manager unit (a unit sits directly below the root or a chain of slices)"
    )]
    NotInUnit { path: String },
    #[error("in unit {found}, not {want}")]
    OtherUnit { found: String, want: String },
    #[error("unit {unit} does not match the cgroup glob {glob}")]
    UnitGlob { unit: String, glob: String },
}

/// The answer for one cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The cgroup a selector names: tagged, and its processes match.
    Selected,
    /// Below a selected cgroup: its processes match.
    Within { anchor: String },
    /// Not what the selectors name.
    Outside { why: NotNamed },
    /// At or below what the selectors name, but not made by the system
    /// manager (or delegated): refused.
    Refused { why: String },
}

impl Decision {
    /// Whether a process in this cgroup is in the workload's scope.
    pub fn matches(&self) -> bool {
        matches!(self, Decision::Selected | Decision::Within { .. })
    }
}

impl CgroupChain {
    /// [`decide`] on the facts this chain holds.
    pub fn decide(&self, scope: &Scope) -> Decision {
        decide(scope, &self.hierarchy, &self.path, self)
    }
}

/// Decides whether the cgroup at `path` (relative to the cgroup2 mount)
/// is in `scope`, reading directory facts from `facts`.
pub fn decide(
    scope: &Scope,
    hierarchy: &Hierarchy,
    path: &str,
    facts: &dyn FactSource,
) -> Decision {
    let Some(components) = hierarchy.components(path) else {
        return Decision::Outside {
            why: NotNamed::NotBelowRoot {
                path: path.to_owned(),
                root: hierarchy.manager_root.clone(),
            },
        };
    };
    let placement = Placement::of(&components);
    let manager = |depth: usize| join("/", &components[..depth]);
    let anchor = match anchor_depth(scope, &components, &placement, &manager) {
        Ok(depth) => depth,
        Err(why) => return Decision::Outside { why },
    };
    // With `delegated`, the named unit (at depth `anchor`) and its subtree
    // are the unit's own business; everything above it must still be the
    // system manager's.
    let trusted_to = if scope.delegated {
        anchor.min(components.len() + 1)
    } else {
        components.len() + 1
    };
    for depth in 0..trusted_to.min(components.len() + 1) {
        let dir = join(&hierarchy.manager_root, &components[..depth]);
        if depth > 0 && is_user_manager(components[depth - 1]) {
            return Decision::Refused {
                why: format!(
                    "{dir} is a user's own service manager, whose subtree that user names as they like"
                ),
            };
        }
        match facts.facts(&dir) {
            Err(error) => {
                return Decision::Refused {
                    why: format!("cannot read cgroup {dir}: {error}"),
                };
            }
            Ok(f) if f.uid != 0 => {
                return Decision::Refused {
                    why: format!(
                        "cgroup {dir} is owned by uid {}, not root: its owner can create and name cgroups in it",
                        f.uid
                    ),
                };
            }
            Ok(f) if f.mode & 0o022 != 0 => {
                return Decision::Refused {
                    why: format!(
                        "cgroup {dir} is writable by group or others (mode {:o})",
                        f.mode & 0o7777
                    ),
                };
            }
            Ok(f) if f.delegated => {
                return Decision::Refused {
                    why: format!(
                        "cgroup {dir} was delegated by systemd (Delegate=yes): what is below it is named by the delegate; \
                         a workload that names that unit may accept it with delegated = true"
                    ),
                };
            }
            Ok(_) => {}
        }
    }
    if anchor == components.len() {
        Decision::Selected
    } else {
        Decision::Within {
            anchor: manager(anchor),
        }
    }
}

/// How many components down the selected cgroup is, or why the path holds
/// none.
fn anchor_depth(
    scope: &Scope,
    components: &[&str],
    placement: &Placement,
    manager: &dyn Fn(usize) -> String,
) -> Result<usize, NotNamed> {
    let glob_from = |first: usize| -> Result<usize, NotNamed> {
        let Some((text, glob)) = &scope.glob else {
            return Ok(first);
        };
        (first..=components.len())
            .find(|&depth| glob.is_match(manager(depth)))
            .ok_or_else(|| NotNamed::Glob {
                path: manager(components.len()),
                glob: text.clone(),
            })
    };
    let in_slice = |slices: usize| -> Result<(), NotNamed> {
        let Some((name, path)) = &scope.slice else {
            return Ok(());
        };
        let inside = path.len() <= slices.min(components.len())
            && path.iter().zip(components).all(|(want, got)| want == got);
        if inside {
            Ok(())
        } else {
            Err(NotNamed::NotInSlice {
                path: manager(components.len()),
                slice: name.clone(),
                at: format!("/{}", path.join("/")),
            })
        }
    };
    if let Some(unit) = &scope.unit {
        let Some(index) = placement.unit else {
            return Err(NotNamed::NotInUnit {
                path: manager(components.len()),
            });
        };
        if components[index] != unit {
            return Err(NotNamed::OtherUnit {
                found: components[index].to_owned(),
                want: unit.clone(),
            });
        }
        in_slice(placement.slices)?;
        let depth = index + 1;
        if let Some((text, glob)) = &scope.glob
            && !glob.is_match(manager(depth))
        {
            return Err(NotNamed::UnitGlob {
                unit: manager(depth),
                glob: text.clone(),
            });
        }
        return Ok(depth);
    }
    if let Some((_, path)) = &scope.slice {
        in_slice(placement.slices)?;
        return glob_from(path.len());
    }
    glob_from(0)
}

fn join(root: &str, components: &[&str]) -> String {
    let mut path = root.trim_end_matches('/').to_owned();
    for component in components {
        path.push('/');
        path.push_str(component);
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

fn absolute(mount: &Path, rel: &str) -> PathBuf {
    mount.join(rel.trim_start_matches('/'))
}

/// Owner, mode and delegation of one cgroup directory. The directory is
/// stat-ed without following a link (cgroupfs has none), and the
/// delegation xattrs are read by name; a missing one is ENODATA.
pub fn read_facts(dir: &Path) -> Result<DirFacts, FactsError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| FactsError::Stat {
        errno: FactsError::errno(&e),
    })?;
    if !meta.is_dir() {
        return Err(FactsError::NotADirectory);
    }
    let mut delegated = false;
    for name in DELEGATE_XATTRS {
        if has_xattr(dir, name)? {
            delegated = true;
        }
    }
    Ok(DirFacts {
        uid: meta.uid(),
        mode: meta.mode() & 0o7777,
        delegated,
    })
}

fn has_xattr(dir: &Path, name: &'static str) -> Result<bool, FactsError> {
    let xattr_error = |errno| FactsError::Xattr { name, errno };
    // A path or name with a NUL byte cannot be asked for (cgroupfs names
    // have none).
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(|_| xattr_error(libc::EINVAL))?;
    let name_c = CString::new(name).map_err(|_| xattr_error(libc::EINVAL))?;
    // Safety: both strings are NUL-terminated and live across the call; a
    // null buffer with size 0 asks only for the value's size.
    let rc = unsafe { libc::lgetxattr(path.as_ptr(), name_c.as_ptr(), std::ptr::null_mut(), 0) };
    if rc >= 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(false),
        _ => Err(xattr_error(FactsError::errno(&err))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Facts from a table; a directory not listed is the system's own.
    struct Table(HashMap<String, DirFacts>);

    impl FactSource for Table {
        fn facts(&self, rel: &str) -> Result<DirFacts, FactsError> {
            Ok(self.0.get(rel).copied().unwrap_or(DirFacts::SYSTEM))
        }
    }

    fn system() -> Table {
        Table(HashMap::new())
    }

    fn with(entries: &[(&str, DirFacts)]) -> Table {
        Table(entries.iter().map(|(p, f)| (p.to_string(), *f)).collect())
    }

    const USER: DirFacts = DirFacts {
        uid: 1000,
        mode: 0o755,
        delegated: false,
    };
    const DELEGATED: DirFacts = DirFacts {
        uid: 0,
        mode: 0o755,
        delegated: true,
    };

    fn hierarchy() -> Hierarchy {
        Hierarchy::system("/sys/fs/cgroup".into())
    }

    fn scope(unit: Option<&str>, slice: Option<&str>, glob: Option<&str>) -> Scope {
        Scope::new(unit, slice, glob, false).unwrap().unwrap()
    }

    fn decide_on(scope: &Scope, path: &str, facts: &Table) -> Decision {
        decide(scope, &hierarchy(), path, facts)
    }

    #[test]
    fn slice_names_map_to_their_nested_paths() {
        assert_eq!(
            slice_path("warrant-agents.slice").unwrap(),
            ["warrant.slice", "warrant-agents.slice"]
        );
        assert_eq!(slice_path("system.slice").unwrap(), ["system.slice"]);
        assert_eq!(
            slice_path("a-b-c.slice").unwrap(),
            ["a.slice", "a-b.slice", "a-b-c.slice"]
        );
        for bad in [
            "-.slice",
            "a--b.slice",
            "-a.slice",
            "a-.slice",
            "a.service",
            "a b.slice",
        ] {
            assert!(slice_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_slice_selector_names_the_slice_at_its_exact_path_only() {
        let s = scope(None, Some("warrant-agents.slice"), None);
        let t = system();
        assert_eq!(
            decide_on(&s, "/warrant.slice/warrant-agents.slice", &t),
            Decision::Selected
        );
        assert!(decide_on(&s, "/warrant.slice/warrant-agents.slice/a.service", &t).matches());
        assert!(decide_on(&s, "/warrant.slice/warrant-agents.slice/a.service/sub", &t).matches());
        // Name-alikes anywhere else.
        for path in [
            "/warrant-agents.slice",
            "/other.slice/warrant-agents.slice",
            "/user.slice/user-1000.slice/user@1000.service/warrant.slice/warrant-agents.slice",
            "/system.slice/x.service/warrant.slice/warrant-agents.slice",
            "/warrant.slice",
        ] {
            let d = decide_on(&s, path, &t);
            assert!(matches!(d, Decision::Outside { .. }), "{path}: {d:?}");
        }
    }

    #[test]
    fn a_unit_selector_names_a_unit_directly_below_a_slice_chain() {
        let s = scope(Some("agent.service"), None, None);
        let t = system();
        for path in [
            "/system.slice/agent.service",
            "/warrant.slice/warrant-agents.slice/agent.service",
            "/agent.service",
        ] {
            assert_eq!(decide_on(&s, path, &t), Decision::Selected, "{path}");
        }
        assert!(decide_on(&s, "/system.slice/agent.service/payload", &t).matches());
        for path in [
            // Below another unit: named by that unit, not the manager.
            "/system.slice/outer.service/agent.service",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/agent.service",
            // Not placed as systemd places units.
            "/x/agent.service",
            "/warrant-agents.slice/agent.service",
            "/system.slice/agent.service.d",
            "/system.slice/other.service",
        ] {
            let d = decide_on(&s, path, &t);
            assert!(matches!(d, Decision::Outside { .. }), "{path}: {d:?}");
        }
    }

    #[test]
    fn unit_and_slice_together_need_the_unit_in_that_slice() {
        let s = scope(Some("a.service"), Some("warrant-agents.slice"), None);
        let t = system();
        assert_eq!(
            decide_on(&s, "/warrant.slice/warrant-agents.slice/a.service", &t),
            Decision::Selected
        );
        assert!(!decide_on(&s, "/system.slice/a.service", &t).matches());
    }

    #[test]
    fn a_glob_selects_the_shallowest_match_and_covers_what_is_below() {
        let s = scope(None, None, Some("/system.slice/agent-*.service"));
        let t = system();
        assert_eq!(
            decide_on(&s, "/system.slice/agent-1.service", &t),
            Decision::Selected
        );
        assert_eq!(
            decide_on(&s, "/system.slice/agent-1.service/sub", &t),
            Decision::Within {
                anchor: "/system.slice/agent-1.service".into()
            }
        );
        assert!(!decide_on(&s, "/user.slice/agent-1.service", &t).matches());
        // globset's "/**" matches what is below, not the directory itself.
        let all = scope(None, None, Some("/system.slice/**"));
        assert!(!decide_on(&all, "/system.slice", &t).matches());
        assert_eq!(
            decide_on(&all, "/system.slice/a.service", &t),
            Decision::Selected
        );
        assert!(matches!(
            decide_on(&all, "/system.slice/a.service/x", &t),
            Decision::Within { .. }
        ));
    }

    #[test]
    fn cgroups_not_owned_by_root_are_refused_wherever_the_name_fits() {
        let s = scope(Some("agent.service"), None, None);
        let t = with(&[("/evil.slice/agent.service", USER)]);
        assert!(matches!(
            decide_on(&s, "/evil.slice/agent.service", &t),
            Decision::Refused { .. }
        ));
        // An ancestor owned by a user: its owner made what is below.
        let t = with(&[("/evil.slice", USER)]);
        assert!(matches!(
            decide_on(&s, "/evil.slice/agent.service", &t),
            Decision::Refused { .. }
        ));
        // Group- or world-writable is the same.
        let loose = DirFacts {
            mode: 0o775,
            ..DirFacts::SYSTEM
        };
        let t = with(&[("/system.slice", loose)]);
        assert!(matches!(
            decide_on(&s, "/system.slice/agent.service", &t),
            Decision::Refused { .. }
        ));
        // Globs obey the same rule, and so does a process below a tagged
        // unit in a sub-cgroup its owner made.
        let g = scope(None, None, Some("/system.slice/*.service"));
        let t = with(&[("/system.slice/agent-9.service", USER)]);
        assert!(matches!(
            decide_on(&g, "/system.slice/agent-9.service", &t),
            Decision::Refused { .. }
        ));
        let t = with(&[("/system.slice/agent.service/mine", USER)]);
        assert!(matches!(
            decide_on(&s, "/system.slice/agent.service/mine", &t),
            Decision::Refused { .. }
        ));
    }

    #[test]
    fn delegated_cgroups_and_user_managers_are_refused_unless_the_workload_opts_in() {
        let s = scope(Some("ctr.service"), None, None);
        let t = with(&[("/system.slice/ctr.service", DELEGATED)]);
        let d = decide_on(&s, "/system.slice/ctr.service", &t);
        assert!(
            matches!(&d, Decision::Refused { why } if why.contains("delegated = true")),
            "{d:?}"
        );
        let opted = Scope::new(Some("ctr.service"), None, None, true)
            .unwrap()
            .unwrap();
        // The delegate owns its subtree and names it as it likes.
        let t = with(&[
            ("/system.slice/ctr.service", DELEGATED),
            ("/system.slice/ctr.service/payload", USER),
        ]);
        assert_eq!(
            decide_on(&opted, "/system.slice/ctr.service", &t),
            Decision::Selected
        );
        assert!(decide_on(&opted, "/system.slice/ctr.service/payload", &t).matches());
        // ... but the opt-in covers only the named unit: its slice must
        // still be the system's.
        let t = with(&[("/x.slice", DELEGATED), ("/x.slice/ctr.service", DELEGATED)]);
        assert!(matches!(
            decide_on(&opted, "/x.slice/ctr.service", &t),
            Decision::Refused { .. }
        ));
        // A slice over a delegated unit: what is below the unit is refused.
        let sl = scope(None, Some("warrant-agents.slice"), None);
        let t = with(&[("/warrant.slice/warrant-agents.slice/ctr.service", DELEGATED)]);
        assert!(matches!(
            decide_on(&sl, "/warrant.slice/warrant-agents.slice/ctr.service/x", &t),
            Decision::Refused { .. }
        ));
        // A user manager, even root's own and not marked: never.
        let g = scope(None, Some("user.slice"), None);
        let d = decide_on(
            &g,
            "/user.slice/user-0.slice/user@0.service/app.slice/a.service",
            &system(),
        );
        assert!(
            matches!(&d, Decision::Refused { why } if why.contains("user's own service manager")),
            "{d:?}"
        );
        assert_eq!(
            Scope::new(None, Some("a.slice"), None, true).unwrap_err(),
            ScopeError::DelegatedWithoutUnit
        );
    }

    #[test]
    fn a_test_manager_root_moves_every_path_below_it() {
        let h = Hierarchy {
            mount: "/sys/fs/cgroup".into(),
            manager_root: "/warrant-test-1".into(),
        };
        let s = scope(None, Some("warrant-agents.slice"), None);
        let t = system();
        assert_eq!(
            decide(
                &s,
                &h,
                "/warrant-test-1/warrant.slice/warrant-agents.slice",
                &t
            ),
            Decision::Selected
        );
        assert!(!decide(&s, &h, "/warrant.slice/warrant-agents.slice", &t).matches());
        assert!(
            !decide(
                &s,
                &h,
                "/warrant-test-10/warrant.slice/warrant-agents.slice",
                &t
            )
            .matches()
        );
        assert_eq!(
            h.unit_of("/warrant-test-1/system.slice/a.service/sub"),
            Some("a.service")
        );
        assert_eq!(h.manager_path("/warrant-test-1"), Some("/".into()));
    }

    #[test]
    fn the_unit_of_a_path_is_the_one_below_its_slices() {
        let h = hierarchy();
        assert_eq!(
            h.unit_of("/system.slice/agent.service"),
            Some("agent.service")
        );
        assert_eq!(
            h.unit_of("/user.slice/user-1000.slice/session-3.scope/inner"),
            Some("session-3.scope")
        );
        assert_eq!(
            h.unit_of("/system.slice/outer.service/payload.scope"),
            Some("outer.service")
        );
        assert_eq!(
            h.unit_of("/user.slice/user-1000.slice/user@1000.service/app.slice/x.service"),
            Some("user@1000.service")
        );
        assert_eq!(h.unit_of("/warrant.slice/warrant-agents.slice"), None);
        assert_eq!(h.unit_of("/"), None);
        assert_eq!(h.unit_of("/x/agent.service"), None);
    }

    #[test]
    fn a_chain_read_once_decides_like_the_live_tree() {
        let chain = CgroupChain {
            path: "/system.slice/a.service".into(),
            hierarchy: hierarchy(),
            dirs: vec![
                ("/".into(), Ok(DirFacts::SYSTEM)),
                ("/system.slice".into(), Ok(DirFacts::SYSTEM)),
                ("/system.slice/a.service".into(), Ok(USER)),
            ],
        };
        let s = scope(Some("a.service"), None, None);
        assert!(matches!(
            decide(&s, &hierarchy(), "/system.slice/a.service", &chain),
            Decision::Refused { .. }
        ));
        // A directory the chain does not hold is refused, never assumed.
        assert!(matches!(
            decide(&s, &hierarchy(), "/other.slice/a.service", &chain),
            Decision::Refused { .. }
        ));
    }
}
