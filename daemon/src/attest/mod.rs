//! Attestation: from the Origin of a connection to the identity of the
//! program that made it.
//!
//! [`Attestor::attest`] turns an [`Origin`] into an [`Attestation`]: uid,
//! gid, cgroup path and systemd unit, executable path and SHA-256, the
//! entrypoint script of interpreted agents and its SHA-256, and the host's
//! instance identity. [`workload::WorkloadMatcher`] then says which
//! `[[workload]]` it is, selector by selector.
//!
//! The identity must be that of the program that made the connection, so
//! the process is pinned with a pidfd, its start time is compared with the
//! connect time (pid reuse), and its exec generation with the one recorded at
//! connect (exec since connect), once before and once after /proc is read.
//! Anything that changed refuses the connection ([`AttestError`]).
//!
//! What a process runs (executable, its hash, the entrypoint) cannot change
//! without an exec, short of `prctl(PR_SET_MM_MAP)`, so it is read once per
//! process image and cached with the pidfd that pinned it, its start time
//! and its exec generation. While that pidfd's process is alive (or a
//! zombie), its pid cannot have been reused, so a later connection of the
//! same process costs one pidfd_send_signal, one readlink of its user namespace
//! and the generation lookup. Argv rewritten by the process after its first
//! attestation is therefore ignored, which makes the entrypoint harder to
//! spoof, not easier.
//!
//! Each cached image holds one file descriptor: the daemon should raise its
//! RLIMIT_NOFILE soft limit (systemd starts services at 1024).
//!
//! The user namespace is read on every attestation, never cached: the exe
//! link can be repointed with `PR_SET_MM_MAP` by a process holding
//! CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN in its *own* user namespace,
//! which any process that can create one has, so [`UserNamespace::Nested`]
//! tells the matcher not to trust the exe and entrypoint selectors. A process
//! can enter a nested namespace after its first attestation but cannot
//! return to the host's, so a read after the image is conservative. Only the
//! connecting process is looked at: a `CLONE_VM` child in a namespace of its
//! own shares the mm and can repoint its exe too (README, Known limits).
//!
//! Attestation does blocking file I/O (a cold hash reads the whole binary):
//! async callers run it with `tokio::task::spawn_blocking`.

pub mod cgroup;
pub mod entrypoint;
pub mod explain;
pub mod hash;
pub mod instance;
pub mod pinning;
pub mod process;
pub mod scope;
pub mod workload;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use serde::Serialize;

use crate::{config::AttestConfig, origin::Origin};

pub use entrypoint::{Entrypoint, Interpreter, Target};
pub use hash::{FileHash, HashCache};
pub use instance::{InstanceHandle, InstanceState};
pub use workload::{MatchReport, WorkloadMatcher};

/// The exec generation of a process: bumped each time it execs. The eBPF
/// programs store the boot time twice per exec: as the exec begins
/// (`sched_prepare_exec`, or entry to `begin_new_exec` before Linux 6.10),
/// before `/proc/PID/exe` shows the new program, so a /proc read that sees
/// the new program also sees a new generation; and again at
/// `sched_process_exec` once the exec has succeeded. The redirect module
/// implements this on the eBPF map; [`MemoryExecGenerations`] serves tests.
pub trait ExecGenerations: Send + Sync {
    /// The current generation of `tgid`; `None` when none is recorded. The
    /// connect program records one for every connection it redirects (the
    /// boot time, if the process had none), so for a connection a missing
    /// one means the record was evicted, never "unchanged".
    fn current(&self, tgid: u32) -> Option<u64>;

    /// When a task in cgroup `cgroup_id` last called prctl(PR_SET_MM),
    /// which can repoint `/proc/PID/exe` and argv of any process sharing
    /// its memory (boot ns); None if none did since the programs were loaded.
    fn mm_tampered(&self, cgroup_id: u64) -> Option<u64> {
        let _ = cgroup_id;
        None
    }

    /// The counters of changes to `tgid` (see `redirect::changes`), read
    /// without a system call; None when they are not kept (then every
    /// request is checked in full).
    fn change_stamp(&self, tgid: u32) -> Option<ChangeStamp> {
        let _ = tgid;
        None
    }
}

/// Where a process's identity-change counters stood: its own (exec, new
/// credentials, a task exiting) and the one every prctl(PR_SET_MM) mark
/// moves. Equal stamps mean none of those happened in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeStamp {
    pub process: u64,
    pub any: u64,
}

/// In-memory exec generations, set by hand (tests, and hosts without the
/// eBPF exec programs). A process with no generation set is at generation
/// 0, as if the connect program had recorded 0 for it.
#[derive(Debug, Default)]
pub struct MemoryExecGenerations {
    by_tgid: Mutex<HashMap<u32, u64>>,
    tampered: Mutex<HashMap<u64, u64>>,
    /// Change counters, when a test keeps them (`keep_change_counters`).
    changes: Option<Mutex<HashMap<u32, u64>>>,
}

impl MemoryExecGenerations {
    /// Records an exec of `tgid` at generation `generation`, as the eBPF
    /// exec programs would.
    pub fn set(&self, tgid: u32, generation: u64) {
        if let Ok(mut map) = self.by_tgid.lock() {
            map.insert(tgid, generation);
        }
        self.count_change(tgid);
    }

    /// Records a prctl(PR_SET_MM) in cgroup `cgroup_id` at `at_boot_ns`, as
    /// the eBPF prctl watch would.
    pub fn set_mm_tampered(&self, cgroup_id: u64, at_boot_ns: u64) {
        if let Ok(mut map) = self.tampered.lock() {
            map.insert(cgroup_id, at_boot_ns);
        }
        // The all-processes counter, kept under a tgid no process has.
        self.count_change(0);
    }

    /// Keeps change counters, as the eBPF programs do: `set`,
    /// `set_mm_tampered` and `count_change` move them.
    pub fn with_change_counters() -> MemoryExecGenerations {
        MemoryExecGenerations {
            changes: Some(Mutex::new(HashMap::new())),
            ..MemoryExecGenerations::default()
        }
    }

    /// Counts a change to `tgid` (new credentials, a task exiting), as the
    /// eBPF programs would.
    pub fn count_change(&self, tgid: u32) {
        if let Some(Ok(mut changes)) = self.changes.as_ref().map(Mutex::lock) {
            *changes.entry(tgid).or_default() += 1;
        }
    }
}

impl ExecGenerations for MemoryExecGenerations {
    fn current(&self, tgid: u32) -> Option<u64> {
        Some(self.by_tgid.lock().ok()?.get(&tgid).copied().unwrap_or(0))
    }

    fn mm_tampered(&self, cgroup_id: u64) -> Option<u64> {
        self.tampered.lock().ok()?.get(&cgroup_id).copied()
    }

    fn change_stamp(&self, tgid: u32) -> Option<ChangeStamp> {
        let changes = self.changes.as_ref()?.lock().ok()?;
        let count = |tgid| changes.get(&tgid).copied().unwrap_or(0);
        Some(ChangeStamp {
            process: count(tgid),
            any: count(0),
        })
    }
}

/// Why a connection's process could not be attested. Each variant names
/// what changed or failed; none holds anything secret.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("process {tgid} no longer exists")]
    ProcessGone { tgid: u32 },
    #[error(
        "process {tgid} started at {started_ns} ns after boot, after the connect at {connect_ns} ns: its pid was reused"
    )]
    PidReused {
        tgid: u32,
        started_ns: u64,
        connect_ns: u64,
    },
    #[error(
        "process {tgid} exec'd another program since it connected (exec generation {at_connect} at connect, {now} now)"
    )]
    ExecedSinceConnect {
        tgid: u32,
        at_connect: u64,
        now: u64,
    },
    #[error(
        "a process in cgroup {cgroup_id} (that of process {tgid}) called prctl(PR_SET_MM) at {at_boot_ns} ns after boot, which can repoint the executable and argv /proc shows: nothing in that cgroup is attested until it is recreated (restart the unit)"
    )]
    MmTampered {
        tgid: u32,
        cgroup_id: u64,
        at_boot_ns: u64,
    },
    #[error(
        "the exec generation recorded for process {tgid} at connect ({at_connect}) is no longer in the kernel's map (evicted: more than 65,536 processes exec'd or connected in tagged cgroups since): whether it exec'd cannot be told, so it is refused; a new connection is recorded afresh"
    )]
    GenerationLost { tgid: u32, at_connect: u64 },
    #[error("process {tgid} changed while being attested: {what}")]
    ChangedDuringAttestation { tgid: u32, what: &'static str },
    #[error("internal error: {0}")]
    Internal(String),
    #[error("cannot read {what} of process {tgid}: {source}")]
    Read {
        tgid: u32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Whether a process runs in the daemon's user namespace (the host's: the
/// daemon runs there to load eBPF) or in one nested below it. Serialized
/// for audit and `explain` as "host" or "nested:<inode>".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserNamespace {
    Host,
    /// `inode` is that of /proc/PID/ns/user, as `ls -l` shows it
    /// ("user:[inode]").
    Nested {
        inode: u64,
    },
}

impl UserNamespace {
    pub fn is_nested(&self) -> bool {
        matches!(self, UserNamespace::Nested { .. })
    }
}

impl std::fmt::Display for UserNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserNamespace::Host => f.write_str("host"),
            UserNamespace::Nested { inode } => write!(f, "nested:{inode}"),
        }
    }
}

impl Serialize for UserNamespace {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Read back from audit records: "host" or "nested:<inode>".
impl<'de> serde::Deserialize<'de> for UserNamespace {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "host" => Ok(UserNamespace::Host),
            other => other
                .strip_prefix("nested:")
                .and_then(|inode| inode.parse().ok())
                .map(|inode| UserNamespace::Nested { inode })
                .ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "user namespace {other:?}: expected \"host\" or \"nested:<inode>\""
                    ))
                }),
        }
    }
}

/// Who made a connection, as far as the host can tell.
#[derive(Debug, Clone, Serialize)]
pub struct Attestation {
    pub tgid: u32,
    pub pid: u32,
    /// As the kernel recorded them at connect.
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// Relative to the cgroup2 mount, e.g. "/system.slice/agent.service";
    /// absent if the cgroup no longer exists.
    pub cgroup: Option<String>,
    /// The system manager unit the cgroup belongs to: the unit directly
    /// below its chain of slices (`scope::Hierarchy::unit_of`).
    pub unit: Option<String>,
    /// Owner, mode and delegation of every directory from the system
    /// manager's root down to the cgroup, read at this attestation: what
    /// the unit, slice and cgroup selectors decide on (`scope`).
    #[serde(skip)]
    pub cgroup_chain: Option<Arc<scope::CgroupChain>>,
    /// The target of /proc/PID/exe (ends in " (deleted)" if the file was
    /// replaced or removed after the program started).
    pub exe: PathBuf,
    pub exe_hash: FileHash,
    /// argv[0], for the record.
    pub argv0: Option<String>,
    pub entrypoint: Option<Entrypoint>,
    /// Variables in the process's environment at exec that inject code
    /// (`pinning::is_injecting`): names only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub injected_env: Vec<String>,
    /// Why the process could have changed its executable file, if it could
    /// (`pinning::writable`): then the selectors on what program runs do
    /// not match it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_writable: Option<String>,
    /// Read at this attestation (not cached with the image).
    pub user_namespace: UserNamespace,
    /// The host's instance identity when the connection was attested.
    #[serde(serialize_with = "instance::serialize_shared")]
    pub instance: Arc<InstanceState>,
}

/// What a process image runs: read from /proc once per (tgid, start time,
/// exec generation).
#[derive(Debug)]
struct ProcessImage {
    exe: PathBuf,
    exe_hash: FileHash,
    argv0: Option<String>,
    entrypoint: Option<Entrypoint>,
    injected_env: Vec<String>,
    exe_writable: Option<String>,
}

impl ProcessImage {
    /// Whether the image is worth keeping: a hash that failed for a reason
    /// that may pass (a read error, a file changing under us) is retried on
    /// the next connection instead. Inline code and missing scripts are stable.
    fn is_stable(&self) -> bool {
        !matches!(self.exe_hash, FileHash::Unavailable { .. })
            && self.entrypoint.as_ref().is_none_or(|ep| {
                ep.path.is_none() || !matches!(ep.hash, FileHash::Unavailable { .. })
            })
    }
}

/// A process image with the pidfd that pinned the process when it was read.
#[derive(Debug)]
struct CachedImage {
    pidfd: process::PidFd,
    start_ticks: u64,
    exec_gen: u64,
    image: Arc<ProcessImage>,
    /// The last full check of the process that passed, for a connection
    /// from which cgroup; None until one did, or without change counters.
    checked: Mutex<Option<FullCheck>>,
}

/// A full check of a cached process that passed: alive, on the image's
/// exec generation, no prctl mark on `cgroup_id`, in `user_namespace`,
/// with its change counters at `stamp` when the check began.
#[derive(Debug, Clone, Copy)]
struct FullCheck {
    stamp: ChangeStamp,
    cgroup_id: u64,
    user_namespace: UserNamespace,
}

impl CachedImage {
    /// The user namespace of the last full check, if it still holds for a
    /// connection from `cgroup_id` with the counters now at `stamp`.
    fn still_checked(&self, stamp: ChangeStamp, cgroup_id: u64) -> Option<UserNamespace> {
        let checked = (*self.checked.lock().ok()?)?;
        (checked.stamp == stamp && checked.cgroup_id == cgroup_id).then_some(checked.user_namespace)
    }

    fn record_check(&self, check: FullCheck) {
        if let Ok(mut checked) = self.checked.lock() {
            *checked = Some(check);
        }
    }
}

/// Process images kept before the cache is emptied. Each holds a pidfd, so
/// this bounds the descriptors too; entries of exited processes are dropped
/// when next looked up, or by the emptying.
const MAX_IMAGES: usize = 1_024;

/// Counters of the process-image cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImageStats {
    pub hits: u64,
    pub misses: u64,
}

pub struct Attestor {
    images: Mutex<HashMap<u32, Arc<CachedImage>>>,
    image_hits: std::sync::atomic::AtomicU64,
    image_misses: std::sync::atomic::AtomicU64,
    hashes: HashCache,
    cgroups: cgroup::CgroupResolver,
    /// Where the system manager's tree is, for the cgroup selectors.
    hierarchy: scope::Hierarchy,
    /// The facts of each cgroup's directories, by cgroup id, read at its
    /// first attestation. Ids are never reused, and a cgroup's processes
    /// run only once systemd has set it up (owner, delegation xattrs);
    /// after that only root changes them (chown, CAP_SYS_ADMIN for
    /// trusted.*), and root is trusted. A delegate can change the user.*
    /// xattrs of a cgroup it owns, but what it owns is refused (or its
    /// unit's opt-in exempts it) whatever they say.
    chains: Mutex<HashMap<u64, Arc<scope::CgroupChain>>>,
    generations: Arc<dyn ExecGenerations>,
    instance: InstanceHandle,
    ticks_per_second: u64,
    /// The daemon's own user namespace, read once; `None` if unreadable, and
    /// then every process counts as nested (fail closed).
    own_user_ns: Option<process::NamespaceId>,
}

impl Attestor {
    /// An attestor for this host: the cgroup2 mount from /proc/mounts.
    pub fn new(
        config: &AttestConfig,
        generations: Arc<dyn ExecGenerations>,
        instance: InstanceHandle,
    ) -> Attestor {
        Attestor::with_cgroup_mount(config, crate::mounts::cgroup2().ok(), generations, instance)
    }

    pub fn with_cgroup_mount(
        config: &AttestConfig,
        cgroup_mount: Option<PathBuf>,
        generations: Arc<dyn ExecGenerations>,
        instance: InstanceHandle,
    ) -> Attestor {
        Attestor {
            images: Mutex::new(HashMap::new()),
            image_hits: Default::default(),
            image_misses: Default::default(),
            hashes: HashCache::new(config.max_hash_bytes),
            hierarchy: scope::Hierarchy::from_test_env(cgroup_mount.clone().unwrap_or_default()),
            chains: Mutex::new(HashMap::new()),
            cgroups: cgroup::CgroupResolver::new(cgroup_mount),
            generations,
            instance,
            ticks_per_second: process::ticks_per_second(),
            own_user_ns: match process::own_user_namespace() {
                Ok(ns) => Some(ns),
                Err(err) => {
                    tracing::warn!(
                        "cannot read /proc/self/ns/user ({err}): every process will count as in a nested user namespace"
                    );
                    None
                }
            },
        }
    }

    pub fn hashes(&self) -> &HashCache {
        &self.hashes
    }

    pub fn image_stats(&self) -> ImageStats {
        use std::sync::atomic::Ordering::Relaxed;
        ImageStats {
            hits: self.image_hits.load(Relaxed),
            misses: self.image_misses.load(Relaxed),
        }
    }

    /// Drops the per-process cache (file hashes stay): for benchmarks of
    /// a process's first connection.
    pub fn forget_processes(&self) {
        if let Ok(mut images) = self.images.lock() {
            images.clear();
        }
    }

    pub fn cgroups(&self) -> &cgroup::CgroupResolver {
        &self.cgroups
    }

    /// Treats `manager_root` (relative to the cgroup2 mount) as the system
    /// manager's root: for tests that lay out a manager's tree in a cgroup
    /// of their own.
    pub fn with_manager_root(mut self, manager_root: &str) -> Attestor {
        self.hierarchy.manager_root = manager_root.to_owned();
        self
    }

    pub fn hierarchy(&self) -> &scope::Hierarchy {
        &self.hierarchy
    }

    /// The facts of the directories of cgroup `id` at `path` (see
    /// `chains`). A chain with a directory that could not be read (a
    /// cgroup being removed) is not kept: it is read again next time.
    fn chain_of(&self, id: u64, path: &str) -> Arc<scope::CgroupChain> {
        if let Some(chain) = self.chains.lock().ok().and_then(|c| c.get(&id).cloned()) {
            return chain;
        }
        let chain = Arc::new(scope::CgroupChain::read(&self.hierarchy, path));
        let complete = chain.dirs.iter().all(|(_, facts)| facts.is_ok());
        if complete && let Ok(mut chains) = self.chains.lock() {
            if chains.len() >= MAX_IMAGES {
                chains.clear();
            }
            chains.insert(id, chain.clone());
        }
        chain
    }

    pub fn generations(&self) -> &dyn ExecGenerations {
        self.generations.as_ref()
    }

    pub fn instance(&self) -> &InstanceHandle {
        &self.instance
    }

    /// Attests the process that made the connection described by `origin`.
    pub fn attest(&self, origin: &Origin) -> Result<Attestation, AttestError> {
        self.attest_with(origin, Records::Connect)
    }

    /// Attests a live process for `warrant explain`, with `origin` made up
    /// from /proc (`explain::origin_for_pid`): a process that never
    /// connected has no generation recorded, which is generation 0 there.
    pub fn attest_live(&self, origin: &Origin) -> Result<Attestation, AttestError> {
        self.attest_with(origin, Records::Live)
    }

    fn attest_with(&self, origin: &Origin, records: Records) -> Result<Attestation, AttestError> {
        let (image, userns) = match self.cached_image(origin, records)? {
            Some(found) => found,
            None => self.attest_image(origin, records)?,
        };
        let cgroup = self.cgroups.path_of(origin.cgroup_id, origin.tgid);
        Ok(self.assemble(origin, &image, userns, cgroup))
    }

    /// [`Attestor::attest`] for async callers: a process already attested
    /// (and a known cgroup) is answered inline (a pidfd signal, a readlink of
    /// its user namespace, the generation lookup); the first connection of a
    /// process, which reads /proc and may hash a binary, runs on the
    /// blocking pool.
    pub async fn attest_async(
        self: &Arc<Self>,
        origin: Origin,
    ) -> Result<Attestation, AttestError> {
        if let Some(rechecked) = self.recheck(&origin)? {
            return Ok(self.assemble_rechecked(&origin, &rechecked));
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.attest(&origin))
            .await
            .map_err(|err| AttestError::Internal(format!("attestation task: {err}")))?
    }

    /// A process already attested (and a known cgroup), checked again now,
    /// as every request is: what its attestation is made of, without
    /// making it. None when it must be attested in full
    /// ([`Attestor::attest_async`]); an error refuses the request.
    pub fn recheck(&self, origin: &Origin) -> Result<Option<Rechecked>, AttestError> {
        let Some(cgroup) = self.cgroups.cached(origin.cgroup_id) else {
            return Ok(None);
        };
        let Some((image, user_namespace)) = self.cached_image(origin, Records::Connect)? else {
            return Ok(None);
        };
        Ok(Some(Rechecked {
            image,
            user_namespace,
            cgroup,
            instance: self.instance.current(),
        }))
    }

    /// The attestation of a rechecked process.
    pub fn assemble_rechecked(&self, origin: &Origin, rechecked: &Rechecked) -> Attestation {
        self.assemble(
            origin,
            &rechecked.image,
            rechecked.user_namespace,
            Some(rechecked.cgroup.clone()),
        )
    }

    fn assemble(
        &self,
        origin: &Origin,
        image: &ProcessImage,
        user_namespace: UserNamespace,
        cgroup: Option<String>,
    ) -> Attestation {
        Attestation {
            tgid: origin.tgid,
            pid: origin.pid,
            uid: origin.uid,
            gid: origin.gid,
            cgroup_id: origin.cgroup_id,
            unit: cgroup
                .as_deref()
                .and_then(|path| self.hierarchy.unit_of(path))
                .map(str::to_owned),
            cgroup_chain: cgroup
                .as_deref()
                .map(|path| self.chain_of(origin.cgroup_id, path)),
            cgroup,
            exe: image.exe.clone(),
            exe_hash: image.exe_hash.clone(),
            argv0: image.argv0.clone(),
            entrypoint: image.entrypoint.clone(),
            injected_env: image.injected_env.clone(),
            exe_writable: image.exe_writable.clone(),
            user_namespace,
            instance: self.instance.current(),
        }
    }

    /// The cached image of the process, if the process pinned when it was
    /// read is still alive (so `tgid` still names it) and has not exec'd,
    /// with its user namespace as of now.
    fn cached_image(
        &self,
        origin: &Origin,
        records: Records,
    ) -> Result<Option<CurrentImage>, AttestError> {
        use std::sync::atomic::Ordering::Relaxed;
        let tgid = origin.tgid;
        let Some(cached) = self.images.lock().ok().and_then(|m| m.get(&tgid).cloned()) else {
            return Ok(None);
        };
        if cached.exec_gen != origin.exec_gen {
            return Ok(None);
        }
        let stamp = self.change_stamp(tgid, records);
        if let Some(stamp) = stamp
            && let Some(userns) = cached.still_checked(stamp, origin.cgroup_id)
        {
            // Nothing changed for the process since a full check: only what
            // differs between its connections is left to compare (a pid
            // reused since an earlier connection was made).
            self.check_start(origin, cached.start_ticks)?;
            self.image_hits.fetch_add(1, Relaxed);
            return Ok(Some((cached.image.clone(), userns)));
        }
        // Read before the liveness check: a pid is not reused before its
        // process is reaped, so the pinned process still alive afterwards
        // means `tgid` named it when its namespace was read.
        let userns = self.user_namespace(tgid)?;
        if !cached.pidfd.is_alive() {
            // That process was reaped; `tgid` may now be another one.
            if let Ok(mut images) = self.images.lock() {
                images.remove(&tgid);
            }
            return Ok(None);
        }
        // Exiting (not yet a zombie) is gone too. The exit program counts
        // every task's exit after the task is marked exiting, the main
        // thread's included, so the full check its count brings on sees
        // the mark.
        if self.start_ticks(tgid)? != cached.start_ticks {
            return Ok(None);
        }
        self.check_start(origin, cached.start_ticks)?;
        self.check_unchanged(origin, records)?;
        if let Some(stamp) = stamp {
            cached.record_check(FullCheck {
                stamp,
                cgroup_id: origin.cgroup_id,
                user_namespace: userns,
            });
        }
        self.image_hits.fetch_add(1, Relaxed);
        Ok(Some((cached.image.clone(), userns)))
    }

    /// The process's change counters, read before a full check begins (so
    /// a change during it moves them past the stamp the check records);
    /// none for `explain`, whose checks are not a connection's.
    fn change_stamp(&self, tgid: u32, records: Records) -> Option<ChangeStamp> {
        match records {
            Records::Connect => self.generations.change_stamp(tgid),
            Records::Live => None,
        }
    }

    /// The full path: pin the process, check it, read its image, cache it.
    fn attest_image(&self, origin: &Origin, records: Records) -> Result<CurrentImage, AttestError> {
        use std::sync::atomic::Ordering::Relaxed;
        let tgid = origin.tgid;
        self.image_misses.fetch_add(1, Relaxed);
        let stamp = self.change_stamp(tgid, records);
        // Pin the process first: from here on, the pidfd tells whether the
        // process we read is still the one we pinned.
        let pidfd = process::PidFd::open(tgid).map_err(|err| match err.raw_os_error() {
            Some(libc::ESRCH) => AttestError::ProcessGone { tgid },
            _ => AttestError::Read {
                tgid,
                what: "pidfd",
                source: err,
            },
        })?;
        let started = self.start_ticks(tgid)?;
        self.check_start(origin, started)?;
        self.check_unchanged(origin, records)?;
        let (image, userns) = self.read_image(origin, &pidfd, started, records)?;
        let image = Arc::new(image);
        if image.is_stable()
            && let Ok(mut images) = self.images.lock()
        {
            if images.len() >= MAX_IMAGES {
                images.clear();
            }
            images.insert(
                tgid,
                Arc::new(CachedImage {
                    pidfd,
                    start_ticks: started,
                    exec_gen: origin.exec_gen,
                    image: image.clone(),
                    checked: Mutex::new(stamp.map(|stamp| FullCheck {
                        stamp,
                        cgroup_id: origin.cgroup_id,
                        user_namespace: userns,
                    })),
                }),
            );
        }
        Ok((image, userns))
    }

    /// A process that started after the connect is not the one that made
    /// it: its pid was reused. Start times have clock-tick granularity
    /// (10 ms), so a process started within the tick of the connect passes
    /// here; the pidfd and the exec generation are checked as well.
    fn check_start(&self, origin: &Origin, start_ticks: u64) -> Result<(), AttestError> {
        let started_ns = self.ticks_to_ns(start_ticks);
        if started_ns > origin.connect_boot_ns {
            return Err(AttestError::PidReused {
                tgid: origin.tgid,
                started_ns,
                connect_ns: origin.connect_boot_ns,
            });
        }
        Ok(())
    }

    /// Reads what the process runs from /proc, and its user namespace, then
    /// checks that it is still the process pinned by `pidfd`, with the start
    /// time and generation it had, running the same executable.
    fn read_image(
        &self,
        origin: &Origin,
        pidfd: &process::PidFd,
        started: u64,
        records: Records,
    ) -> Result<(ProcessImage, UserNamespace), AttestError> {
        let tgid = origin.tgid;
        let exe = process::exe_path(tgid).map_err(|e| read_err(tgid, "exe", e))?;
        let argv = process::cmdline(tgid).map_err(|e| read_err(tgid, "cmdline", e))?;
        let environ = process::environ(tgid).map_err(|e| read_err(tgid, "environ", e))?;
        let writer = pinning::Writer::of(tgid).ok();
        // Hash the running file through /proc/PID/exe: the content of the
        // program actually running, even if the path now names another file.
        let (exe_hash, exe_writable) =
            match process::open_nonblocking(&process::proc_dir(tgid).join("exe")) {
                Ok(mut file) => {
                    let writable = match &writer {
                        Some(writer) => pinning::writable_exe(tgid, &exe, writer, &file),
                        None => Some("who the process is could not be read".to_owned()),
                    };
                    (self.hashes.hash_file(&mut file), writable)
                }
                Err(err) => return Err(read_err(tgid, "exe", err)),
            };
        let exe_name = process::file_name(&exe).trim_end_matches(" (deleted)");
        let entrypoint = entrypoint::resolve(
            tgid,
            exe_name,
            &argv,
            &environ,
            writer.as_ref(),
            &self.hashes,
        );
        let injected_env = pinning::injecting(&environ);
        drop(environ);
        // The namespace is read after the exe and argv: repointing them takes
        // a nested namespace, which a process cannot leave for the host's, so
        // a process that repointed them before those reads shows as nested
        // here. Read first, it could unshare and repoint in between.
        let userns = self.user_namespace(tgid)?;

        // Everything above was read from /proc/PID; make sure PID is still
        // the process we pinned, running the program it connected with.
        if !pidfd.is_alive() {
            return Err(AttestError::ProcessGone { tgid });
        }
        if self.start_ticks(tgid)? != started {
            return Err(AttestError::ChangedDuringAttestation {
                tgid,
                what: "start time (pid reused)",
            });
        }
        self.check_unchanged(origin, records)?;
        match process::exe_path(tgid) {
            Ok(again) if again == exe => {}
            _ => {
                return Err(AttestError::ChangedDuringAttestation {
                    tgid,
                    what: "executable",
                });
            }
        }
        let image = ProcessImage {
            exe,
            exe_hash,
            argv0: argv.first().cloned(),
            entrypoint,
            injected_env,
            exe_writable,
        };
        Ok((image, userns))
    }

    /// Where `tgid` runs relative to the daemon's own user namespace.
    fn user_namespace(&self, tgid: u32) -> Result<UserNamespace, AttestError> {
        let ns = process::user_namespace(tgid).map_err(|e| read_err(tgid, "user namespace", e))?;
        Ok(classify_user_namespace(self.own_user_ns, ns))
    }

    /// The process runs what it ran at connect: no prctl(PR_SET_MM) in its
    /// cgroup, and no exec since. A generation missing from the map now is
    /// refused, never read as the value at connect: the connect program
    /// recorded one, so it was evicted, and an exec since cannot be ruled
    /// out (flushing the LRU would otherwise make any exec invisible).
    fn check_unchanged(&self, origin: &Origin, records: Records) -> Result<(), AttestError> {
        if let Some(at_boot_ns) = self.generations.mm_tampered(origin.cgroup_id) {
            return Err(AttestError::MmTampered {
                tgid: origin.tgid,
                cgroup_id: origin.cgroup_id,
                at_boot_ns,
            });
        }
        let now = match (self.generations.current(origin.tgid), records) {
            (Some(now), _) => now,
            (None, Records::Live) => 0,
            (None, Records::Connect) => {
                return Err(AttestError::GenerationLost {
                    tgid: origin.tgid,
                    at_connect: origin.exec_gen,
                });
            }
        };
        if now != origin.exec_gen {
            return Err(AttestError::ExecedSinceConnect {
                tgid: origin.tgid,
                at_connect: origin.exec_gen,
                now,
            });
        }
        Ok(())
    }

    fn start_ticks(&self, tgid: u32) -> Result<u64, AttestError> {
        process::start_ticks(tgid).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => AttestError::ProcessGone { tgid },
            _ => read_err(tgid, "stat", err),
        })
    }

    fn ticks_to_ns(&self, ticks: u64) -> u64 {
        ticks.saturating_mul(1_000_000_000 / self.ticks_per_second)
    }
}

/// What a rechecked process's attestation is made of ([`Attestor::recheck`]).
/// Two are the same when they would make the same attestation for one
/// Origin: the same cached image (not merely an equal one), user
/// namespace, cgroup path and instance identity.
#[derive(Debug)]
pub struct Rechecked {
    image: Arc<ProcessImage>,
    user_namespace: UserNamespace,
    cgroup: String,
    instance: Arc<InstanceState>,
}

impl Rechecked {
    pub fn same_as(&self, other: &Rechecked) -> bool {
        Arc::ptr_eq(&self.image, &other.image)
            && self.user_namespace == other.user_namespace
            && self.cgroup == other.cgroup
            && Arc::ptr_eq(&self.instance, &other.instance)
    }
}

/// A process image and the user namespace its process is in now.
type CurrentImage = (Arc<ProcessImage>, UserNamespace);

/// Where the exec generation an Origin carries came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Records {
    /// The connect program recorded it: one must still be in the map.
    Connect,
    /// `explain` read it a moment ago, or found none (generation 0).
    Live,
}

/// Host only when the namespace is exactly the daemon's; anything else,
/// including an unknown daemon namespace, is nested.
fn classify_user_namespace(
    own: Option<process::NamespaceId>,
    ns: process::NamespaceId,
) -> UserNamespace {
    if own == Some(ns) {
        UserNamespace::Host
    } else {
        UserNamespace::Nested { inode: ns.ino }
    }
}

fn read_err(tgid: u32, what: &'static str, source: std::io::Error) -> AttestError {
    if source.kind() == std::io::ErrorKind::NotFound || source.raw_os_error() == Some(libc::ESRCH) {
        return AttestError::ProcessGone { tgid };
    }
    AttestError::Read { tgid, what, source }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_attestor_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Attestor>();
        shared::<Attestation>();
    }

    #[test]
    fn only_the_daemons_own_user_namespace_is_the_host() {
        let own = process::NamespaceId { ino: 100 };
        let other = process::NamespaceId { ino: 200 };
        assert_eq!(classify_user_namespace(Some(own), own), UserNamespace::Host);
        assert_eq!(
            classify_user_namespace(Some(own), other),
            UserNamespace::Nested { inode: 200 }
        );
        // Without our own namespace nothing counts as the host.
        assert!(classify_user_namespace(None, own).is_nested());
    }

    #[test]
    fn user_namespaces_serialize_as_host_or_nested_inode() {
        assert_eq!(
            serde_json::to_value(UserNamespace::Host).unwrap(),
            serde_json::json!("host")
        );
        assert_eq!(
            serde_json::to_value(UserNamespace::Nested { inode: 4026532210 }).unwrap(),
            serde_json::json!("nested:4026532210")
        );
    }

    #[test]
    fn in_memory_processes_start_at_generation_zero() {
        let generations = MemoryExecGenerations::default();
        assert_eq!(generations.current(7), Some(0));
        generations.set(7, 99);
        assert_eq!(generations.current(7), Some(99));
    }
}
