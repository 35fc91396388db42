//! The kernel half: load warrant's eBPF programs, attach them to the cgroup
//! root, keep them pinned, and give the injector the Origin of each redirected
//! connection.
//!
//! Design (see also ebpf/programs/src/main.rs):
//! - One attach point, `[daemon] cgroup_root`, for all programs; a map of
//!   tagged cgroup ids, checked against every ancestor of the calling task, so
//!   a grandchild of a tagged cgroup is redirected the moment it exists.
//! - The Origin is keyed first by socket cookie (at connect, before the source
//!   port exists), then re-keyed by the socket's local address in sockops at
//!   TCP_CONNECT_CB, which runs after the port is bound and before the SYN is
//!   sent: so the entry is there before the injector can accept, and the
//!   injector finds it by the accepted socket's peer address. Both entries are
//!   deleted when the agent's socket closes, so a later socket reusing the port
//!   cannot inherit an Origin.
//! - Links and maps are pinned under `[daemon] bpf_pin_dir`. A restarted
//!   daemon reuses the pinned maps, attaches fresh links, then unpins the old
//!   ones: redirection never stops. While no daemon runs, tagged connections
//!   are still redirected to the listener address, where nothing listens (or
//!   systemd's socket unit queues them): they fail fast with ECONNREFUSED and
//!   never reach a provider. Fail closed.

pub mod bpffs;
pub mod cgroup;
pub mod changes;
pub mod features;
pub mod tagging;

use std::{
    fs,
    net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData},
    programs::{
        CgroupAttachMode, CgroupSockAddr, FEntry, RawTracePoint, SockOps, TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use warrant_common::{
    AF_INET, AF_INET6, DestinationKey, FLAG_BLOCK_QUIC, FLAG_ENABLED, Origin as RawOrigin, PeerKey,
    RedirectConfig, map_names, program_names,
};

use crate::{
    config::Config,
    origin::{self, Origin, OriginSource},
};

/// The eBPF object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/warrant-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error(
        "this warrant binary was built without its eBPF programs (AYA_BUILD_SKIP); rebuild without it"
    )]
    NotBuilt,
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("loading the eBPF programs: {0}")]
    Load(String),
    #[error("attaching {program}: {reason}")]
    Attach {
        program: &'static str,
        reason: String,
    },
    #[error("eBPF map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("pinning in {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
}

/// What the programs need to know, resolved from the config.
#[derive(Debug, Clone)]
pub struct RedirectSettings {
    /// Absolute path of the cgroup the programs attach to.
    pub cgroup_root: PathBuf,
    pub pin_dir: PathBuf,
    pub listen4: SocketAddrV4,
    pub listen6: Option<SocketAddrV6>,
    pub ports: Vec<u16>,
    /// Single destinations redirected although their port is not (the
    /// cloud metadata service: `metadata::Emulator::destinations`).
    pub destinations: Vec<SocketAddr>,
    pub block_quic: bool,
    pub bypass_mark: u32,
}

impl RedirectSettings {
    /// `listen4`/`listen6` are the addresses the listeners actually bound;
    /// `destinations` the single destinations to redirect too.
    pub fn from_config(
        config: &Config,
        listen4: SocketAddr,
        listen6: Option<SocketAddr>,
        destinations: Vec<SocketAddr>,
    ) -> Result<RedirectSettings, RedirectError> {
        let cgroup_root = match &config.daemon.cgroup_root {
            Some(root) => root.clone(),
            None => cgroup::cgroup2_mount()?,
        };
        let SocketAddr::V4(listen4) = listen4 else {
            return Err(RedirectError::Load(format!(
                "[daemon] listen must be an IPv4 address, not {listen4}"
            )));
        };
        let listen6 = match listen6 {
            Some(SocketAddr::V6(v6)) => Some(v6),
            _ => None,
        };
        Ok(RedirectSettings {
            cgroup_root,
            pin_dir: config.daemon.bpf_pin_dir.clone(),
            listen4,
            listen6,
            ports: config.intercept.ports.clone(),
            destinations,
            block_quic: config.intercept.block_quic,
            bypass_mark: config.daemon.bypass_mark,
        })
    }

    fn kernel_config(&self) -> RedirectConfig {
        let mut flags = FLAG_ENABLED;
        if self.block_quic {
            flags |= FLAG_BLOCK_QUIC;
        }
        RedirectConfig {
            listen_ip4: origin::word_from_ipv4(*self.listen4.ip()),
            listen_ip6: self
                .listen6
                .map_or([0; 4], |a| origin::words_from_ip(IpAddr::V6(*a.ip()))),
            listen_port_be: self.listen4.port().to_be(),
            flags,
            bypass_mark: self.bypass_mark,
        }
    }
}

/// Handles on the pinned maps, shared by the injector (Origins), the tagger
/// and attestation (exec generations).
pub struct RedirectMaps {
    config: Mutex<Array<MapData, RedirectConfig>>,
    ports: Mutex<HashMap<MapData, u16, u8>>,
    destinations: Mutex<HashMap<MapData, DestinationKey, u8>>,
    tagged: Mutex<HashMap<MapData, u64, u8>>,
    origin_by_peer: Mutex<HashMap<MapData, PeerKey, RawOrigin>>,
    exec_gen: Mutex<HashMap<MapData, u32, u64>>,
    mm_tampered: Mutex<HashMap<MapData, u64, u64>>,
    identity_changes: changes::IdentityChanges,
    /// Set once every program that moves the identity-change counters is
    /// attached: only then do unchanged counters mean nothing changed.
    identity_watched: std::sync::atomic::AtomicBool,
}

/// The identity-change counters' map, mapped into this process.
fn identity_changes(map: aya::maps::Map) -> Result<changes::IdentityChanges, RedirectError> {
    let name = map_names::IDENTITY_CHANGES;
    let aya::maps::Map::Array(data) = map else {
        return Err(RedirectError::Map {
            map: name,
            reason: "not an array in the object".into(),
        });
    };
    changes::IdentityChanges::map(data).map_err(|e| RedirectError::Map {
        map: name,
        reason: format!("mmap: {e}"),
    })
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> RedirectError {
    move |e| RedirectError::Map {
        map,
        reason: e.to_string(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves only a map handle
    // behind, which stays valid: recover it rather than poisoning the daemon.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RedirectMaps {
    fn take_from(ebpf: &mut Ebpf) -> Result<RedirectMaps, RedirectError> {
        fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, RedirectError> {
            ebpf.take_map(name).ok_or(RedirectError::Map {
                map: name,
                reason: "missing from the object".into(),
            })
        }
        Ok(RedirectMaps {
            config: Mutex::new(
                Array::try_from(take(ebpf, map_names::CONFIG)?)
                    .map_err(map_err(map_names::CONFIG))?,
            ),
            ports: Mutex::new(
                HashMap::try_from(take(ebpf, map_names::PORTS)?)
                    .map_err(map_err(map_names::PORTS))?,
            ),
            destinations: Mutex::new(
                HashMap::try_from(take(ebpf, map_names::DESTINATIONS)?)
                    .map_err(map_err(map_names::DESTINATIONS))?,
            ),
            tagged: Mutex::new(
                HashMap::try_from(take(ebpf, map_names::TAGGED)?)
                    .map_err(map_err(map_names::TAGGED))?,
            ),
            origin_by_peer: Mutex::new(
                HashMap::try_from(take(ebpf, map_names::ORIGIN_BY_PEER)?)
                    .map_err(map_err(map_names::ORIGIN_BY_PEER))?,
            ),
            exec_gen: Mutex::new(
                HashMap::try_from(take(ebpf, map_names::EXEC_GEN)?)
                    .map_err(map_err(map_names::EXEC_GEN))?,
            ),
            mm_tampered: Mutex::new(
                HashMap::try_from(take(ebpf, map_names::MM_TAMPERED)?)
                    .map_err(map_err(map_names::MM_TAMPERED))?,
            ),
            identity_changes: identity_changes(take(ebpf, map_names::IDENTITY_CHANGES)?)?,
            identity_watched: Default::default(),
        })
    }

    fn write_settings(&self, settings: &RedirectSettings) -> Result<(), RedirectError> {
        let mut ports = lock(&self.ports);
        let stale: Vec<u16> = ports
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !settings.ports.contains(p))
            .collect();
        for port in stale {
            ports.remove(&port).map_err(map_err(map_names::PORTS))?;
        }
        for port in &settings.ports {
            ports
                .insert(port, 1, 0)
                .map_err(map_err(map_names::PORTS))?;
        }
        drop(ports);
        self.set_destinations(&settings.destinations)?;
        lock(&self.config)
            .set(0, settings.kernel_config(), 0)
            .map_err(map_err(map_names::CONFIG))
    }

    /// Changes the intercepted ports and the QUIC refusal (config reload).
    pub fn set_intercept(&self, ports: &[u16], block_quic: bool) -> Result<(), RedirectError> {
        {
            let mut map = lock(&self.ports);
            let stale: Vec<u16> = map
                .keys()
                .filter_map(Result::ok)
                .filter(|p| !ports.contains(p))
                .collect();
            for port in stale {
                map.remove(&port).map_err(map_err(map_names::PORTS))?;
            }
            for port in ports {
                map.insert(port, 1, 0).map_err(map_err(map_names::PORTS))?;
            }
        }
        let mut config = lock(&self.config);
        let mut current = config.get(&0, 0).map_err(map_err(map_names::CONFIG))?;
        if block_quic {
            current.flags |= FLAG_BLOCK_QUIC;
        } else {
            current.flags &= !FLAG_BLOCK_QUIC;
        }
        config
            .set(0, current, 0)
            .map_err(map_err(map_names::CONFIG))
    }

    /// Sets the single destinations redirected beside the intercepted
    /// ports (those of an earlier run that are not listed go).
    pub fn set_destinations(&self, destinations: &[SocketAddr]) -> Result<(), RedirectError> {
        let keys: Vec<DestinationKey> = destinations.iter().map(|d| destination_key(*d)).collect();
        let mut map = lock(&self.destinations);
        let stale: Vec<DestinationKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keys.contains(k))
            .collect();
        for key in stale {
            map.remove(&key).map_err(map_err(map_names::DESTINATIONS))?;
        }
        for key in keys {
            map.insert(key, 1, 0)
                .map_err(map_err(map_names::DESTINATIONS))?;
        }
        Ok(())
    }

    /// Tags a cgroup (by id): its processes and all its descendants' are redirected.
    pub fn tag(&self, cgroup_id: u64) -> Result<(), RedirectError> {
        lock(&self.tagged)
            .insert(cgroup_id, 1, 0)
            .map_err(map_err(map_names::TAGGED))
    }

    pub fn untag(&self, cgroup_id: u64) -> Result<(), RedirectError> {
        match lock(&self.tagged).remove(&cgroup_id) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(map_names::TAGGED)(e)),
        }
    }

    /// The cgroup ids currently tagged.
    pub fn tagged(&self) -> Vec<u64> {
        lock(&self.tagged).keys().filter_map(Result::ok).collect()
    }

    /// The exec generation recorded for a process: by its last exec in a
    /// tagged cgroup, or by its first redirected connect; None when there
    /// is none (never recorded, or evicted from the LRU map).
    pub fn exec_generation(&self, tgid: u32) -> Option<u64> {
        lock(&self.exec_gen).get(&tgid, 0).ok()
    }

    /// Forgets the exec generation of `tgid`, as an LRU eviction would:
    /// for tests of what attestation makes of a lost record.
    pub fn forget_exec_generation(&self, tgid: u32) -> Result<(), RedirectError> {
        match lock(&self.exec_gen).remove(&tgid) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(map_names::EXEC_GEN)(e)),
        }
    }
}

/// What a reload changes in the kernel: the intercepted ports and the QUIC
/// refusal. A seam, so that the reload path runs in tests without eBPF.
pub trait Intercept: Send + Sync {
    fn set_intercept(&self, ports: &[u16], block_quic: bool) -> Result<(), RedirectError>;
}

impl Intercept for RedirectMaps {
    fn set_intercept(&self, ports: &[u16], block_quic: bool) -> Result<(), RedirectError> {
        RedirectMaps::set_intercept(self, ports, block_quic)
    }
}

impl crate::attest::ExecGenerations for RedirectMaps {
    fn current(&self, tgid: u32) -> Option<u64> {
        self.exec_generation(tgid)
    }

    fn mm_tampered(&self, cgroup_id: u64) -> Option<u64> {
        lock(&self.mm_tampered).get(&cgroup_id, 0).ok()
    }

    fn change_stamp(&self, tgid: u32) -> Option<crate::attest::ChangeStamp> {
        self.identity_watched
            .load(std::sync::atomic::Ordering::Acquire)
            .then(|| self.identity_changes.stamp(tgid))
    }
}

/// A destination as the connect programs look it up: v4-mapped for IPv4.
fn destination_key(dst: SocketAddr) -> DestinationKey {
    let dst = origin::normalize(dst);
    DestinationKey {
        addr: origin::words_from_ip(dst.ip()),
        port: dst.port(),
        _pad: 0,
    }
}

fn peer_key(peer: SocketAddr) -> PeerKey {
    match origin::normalize(peer) {
        SocketAddr::V4(v4) => PeerKey {
            family: AF_INET,
            port: v4.port(),
            addr: [0, 0, 0, origin::word_from_ipv4(*v4.ip())],
        },
        SocketAddr::V6(v6) => PeerKey {
            family: AF_INET6,
            port: v6.port(),
            addr: origin::words_from_ip(IpAddr::V6(*v6.ip())),
        },
    }
}

impl OriginSource for RedirectMaps {
    fn take(&self, peer: SocketAddr) -> Option<Origin> {
        let key = peer_key(peer);
        let mut map = lock(&self.origin_by_peer);
        let raw = map.get(&key, 0).ok()?;
        // Taken once: a second connection from the same address (after this
        // one closed) must come with its own Origin.
        let _ = map.remove(&key);
        Some(Origin::from_kernel(&raw))
    }
}

/// The loaded, attached and pinned programs.
pub struct Redirector {
    settings: RedirectSettings,
    maps: Arc<RedirectMaps>,
    links: Vec<PinnedLink>,
    /// Which mechanism each hook with a choice got (for status).
    hooks: features::Hooks,
    /// Keeps the program fds open for the daemon's lifetime.
    _ebpf: Ebpf,
}

/// Attached as bpf_links (kernel >= 5.7), which always coexist with other
/// programs on the cgroup; the kernel rejects the multi flag on link_create.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

const SOCK_ADDR_PROGRAMS: &[&str] = &[
    program_names::CONNECT4,
    program_names::CONNECT6,
    program_names::GETPEERNAME4,
    program_names::GETPEERNAME6,
    program_names::SENDMSG4,
    program_names::SENDMSG6,
];

/// The cgroup programs (connect, getpeername, sendmsg, sockops), loaded and
/// attached to the cgroup root, as links not yet pinned.
fn attach_cgroup_programs(
    ebpf: &mut Ebpf,
    cgroup: &fs::File,
) -> Result<Vec<(&'static str, FdLink)>, RedirectError> {
    let mut fd_links = Vec::new();
    for &name in SOCK_ADDR_PROGRAMS {
        let program: &mut CgroupSockAddr = program_mut(ebpf, name)?;
        program.load().map_err(attach_err(name))?;
        let id = program
            .attach(cgroup, LINK_MODE)
            .map_err(attach_err(name))?;
        let link = program.take_link(id).map_err(attach_err(name))?;
        fd_links.push((name, fd_link(name, link)?));
    }
    let name = program_names::SOCKOPS;
    let sockops: &mut SockOps = program_mut(ebpf, name)?;
    sockops.load().map_err(attach_err(name))?;
    let id = sockops
        .attach(cgroup, LINK_MODE)
        .map_err(attach_err(name))?;
    let link = sockops.take_link(id).map_err(attach_err(name))?;
    fd_links.push((name, fd_link(name, link)?));
    Ok(fd_links)
}

/// A program's link as a file-descriptor link, which can be pinned.
fn fd_link<L>(name: &'static str, link: L) -> Result<FdLink, RedirectError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    FdLink::try_from(link).map_err(|e| RedirectError::Attach {
        program: name,
        reason: e.to_string(),
    })
}

/// Pins the new links in a directory of their own, then retires the links
/// of a previous run: new links first, so redirection never lapses.
fn pin_links(
    pin_dir: &Path,
    fd_links: Vec<(&'static str, FdLink)>,
) -> Result<Vec<PinnedLink>, RedirectError> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let links_dir = pin_dir.join(format!("links-{stamp}"));
    create_private_dir(&links_dir)?;
    let mut links = Vec::new();
    for (name, link) in fd_links {
        let path = links_dir.join(name);
        links.push(link.pin(&path).map_err(|e| RedirectError::Pin {
            path,
            reason: e.to_string(),
        })?);
    }
    let retired = retire_old_links(pin_dir, &links_dir);
    if retired > 0 {
        tracing::info!(
            retired,
            "adopted pinned maps and replaced the links of a previous run"
        );
    }
    Ok(links)
}

impl Redirector {
    /// Loads the programs (reusing pinned maps left by a previous daemon),
    /// attaches them to the cgroup root, pins the new links and only then
    /// removes the links of a previous run, so redirection never lapses.
    pub fn start(settings: RedirectSettings) -> Result<Redirector, RedirectError> {
        if EBPF_OBJECT.is_empty() {
            return Err(RedirectError::NotBuilt);
        }
        bpffs::ensure_mounted(&settings.pin_dir)?;
        let maps_dir = settings.pin_dir.join("maps");
        create_private_dir(&maps_dir)?;
        // Tracing programs may call bpf_get_current_ancestor_cgroup_id from
        // Linux 5.11; before, the `_compat` ones walk the task's cgroup
        // ancestors themselves, at offsets read from the kernel's BTF.
        let tracing = TracingPrograms::for_this_kernel()?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&maps_dir);
        if let Some(layout) = &tracing.layout {
            loader.override_global(warrant_common::CGROUP_LAYOUT_GLOBAL, layout, true);
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| RedirectError::Load(crate::error::chain(&e)))?;
        let maps = Arc::new(RedirectMaps::take_from(&mut ebpf)?);
        maps.write_settings(&settings)?;

        let cgroup = fs::File::open(&settings.cgroup_root).map_err(|e| {
            RedirectError::Cgroup(format!(
                "cannot open cgroup root {}: {e}",
                settings.cgroup_root.display()
            ))
        })?;
        let mut fd_links = attach_cgroup_programs(&mut ebpf, &cgroup)?;
        // The kernel's BTF, for the fentry programs: parsed once (it is
        // large), dropped once they are attached.
        let btf = Btf::from_sys_fs().map_err(|e| {
            format!(
                "reading the kernel's BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF): {}",
                crate::error::chain(&e)
            )
        });
        // The exec generation moves twice per exec (see ebpf/programs):
        // before /proc/PID/exe shows the new program, and once the exec has
        // succeeded.
        let (exec_start, exec_start_hook) = attach_exec_start(&mut ebpf, btf.as_ref(), &tracing);
        fd_links.extend(exec_start);
        fd_links.push((
            tracing.exec,
            attach_raw_tracepoint(&mut ebpf, tracing.exec, "sched_process_exec")?,
        ));
        let (prctl, prctl_hook) = attach_prctl_watch(&mut ebpf, btf.as_ref(), &tracing);
        fd_links.extend(prctl);
        let (identity, identity_hook) = attach_identity_watch(&mut ebpf, btf.as_ref());
        fd_links.extend(identity);
        drop(btf);
        let hooks = features::Hooks {
            exec_start: exec_start_hook,
            exec_done: features::Hook::attached(features::EXEC_DONE_VIA),
            prctl_watch: prctl_hook,
            tracing_tags: features::Hook::attached(tracing.tags_via),
            identity_watch: identity_hook,
        };

        let links = pin_links(&settings.pin_dir, fd_links)?;
        maps.identity_watched.store(
            hooks.identity_watch.attached,
            std::sync::atomic::Ordering::Release,
        );
        tracing::info!(
            cgroup_root = %settings.cgroup_root.display(),
            pin_dir = %settings.pin_dir.display(),
            ports = ?settings.ports,
            destinations = ?settings.destinations,
            exec_start = hooks.exec_start.via.unwrap_or("none"),
            prctl_watch = hooks.prctl_watch.via.unwrap_or("none"),
            "eBPF redirection attached"
        );
        Ok(Redirector {
            settings,
            maps,
            links,
            hooks,
            _ebpf: ebpf,
        })
    }

    pub fn maps(&self) -> Arc<RedirectMaps> {
        self.maps.clone()
    }

    /// The mechanism each optional hook got (see `features`).
    pub fn hooks(&self) -> &features::Hooks {
        &self.hooks
    }

    pub fn settings(&self) -> &RedirectSettings {
        &self.settings
    }

    /// Detaches everything and removes the pins: tagged processes connect
    /// directly again. For demos, tests and uninstall; a daemon that is only
    /// restarting keeps its pins (just drop the Redirector).
    pub fn detach(self) -> Result<(), RedirectError> {
        for link in self.links {
            // Unpinning returns the link; dropping it closes the last reference.
            let _ = link.unpin();
        }
        remove_pins(&self.settings.pin_dir)?;
        Ok(())
    }
}

/// Which variant of each tracing program this kernel runs (see
/// `features::Feature::TracingTags`).
struct TracingPrograms {
    /// The walk's offsets, for the `_compat` programs (None: the helper).
    layout: Option<warrant_common::CgroupLayout>,
    exec_begin: &'static str,
    exec: &'static str,
    prctl_x64: &'static str,
    prctl_ia32: &'static str,
    tags_via: &'static str,
}

impl TracingPrograms {
    fn for_this_kernel() -> Result<TracingPrograms, RedirectError> {
        if matches!(
            features::tracing_ancestor_helper(),
            features::Check::Yes | features::Check::Unknown(_)
        ) {
            // Unknown: load the usual programs; if the helper is missing
            // after all, their load fails and the daemon does not start.
            return Ok(TracingPrograms {
                layout: None,
                exec_begin: program_names::EXEC_BEGIN,
                exec: program_names::EXEC,
                prctl_x64: program_names::PRCTL_X64,
                prctl_ia32: program_names::PRCTL_IA32,
                tags_via: features::TAGS_VIA_HELPER,
            });
        }
        let layout = features::cgroup_layout().map_err(|e| {
            RedirectError::Load(format!(
                "tracing programs cannot call bpf_get_current_ancestor_cgroup_id on this kernel (Linux < 5.11) and {e}"
            ))
        })?;
        tracing::info!(
            ?layout,
            "Linux < 5.11: the tracing programs walk the task's cgroup ancestors at offsets from the kernel's BTF"
        );
        Ok(TracingPrograms {
            layout: Some(layout),
            exec_begin: program_names::EXEC_BEGIN_COMPAT,
            exec: program_names::EXEC_COMPAT,
            prctl_x64: program_names::PRCTL_X64_COMPAT,
            prctl_ia32: program_names::PRCTL_IA32_COMPAT,
            tags_via: features::TAGS_VIA_BTF_WALK,
        })
    }
}

/// Attaches the program that bumps the exec generation as an exec begins:
/// the `sched_prepare_exec` tracepoint where the kernel has it (6.10+; it
/// fires at the point of no return, so a failed exec never moves the
/// generation), else an fentry on `begin_new_exec` (which needs BTF: Debian
/// 11's 5.10 and 12's 6.1). With neither, generations move only once an
/// exec has succeeded: the daemon still runs (refusing to would cut every
/// agent off on such kernels), and says so, as the README's known limits
/// describe that window.
fn attach_exec_start(
    ebpf: &mut Ebpf,
    btf: Result<&Btf, &String>,
    tracing: &TracingPrograms,
) -> (Option<(&'static str, FdLink)>, features::Hook) {
    let tracepoint_err = if tracing.layout.is_some() {
        // Linux < 5.11: no sched_prepare_exec (6.10+) to try, and the
        // program calls the helper this kernel's tracing programs lack.
        "Linux < 6.10".to_owned()
    } else {
        match attach_raw_tracepoint(ebpf, program_names::EXEC_PREPARE, "sched_prepare_exec") {
            Ok(link) => {
                return (
                    Some((program_names::EXEC_PREPARE, link)),
                    features::Hook::attached(features::EXEC_START_VIA_TRACEPOINT),
                );
            }
            Err(e) => e.to_string(),
        }
    };
    let name = tracing.exec_begin;
    match attach_fentry(ebpf, name, "begin_new_exec", btf) {
        Ok(link) => {
            tracing::info!(
                tracepoint_error = %tracepoint_err,
                "no sched_prepare_exec tracepoint (Linux < 6.10): exec generations move on entry to begin_new_exec (fentry)"
            );
            (
                Some((name, link)),
                features::Hook::attached(features::EXEC_START_VIA_FENTRY),
            )
        }
        Err(fentry_err) => {
            tracing::warn!(
                tracepoint_error = %tracepoint_err,
                fentry_error = %fentry_err,
                "nothing can stamp exec generations before the executable switches; they move only once an exec has succeeded (see the README's known limits); fix: a kernel with BTF (CONFIG_DEBUG_INFO_BTF), or Linux 6.10+"
            );
            (
                None,
                features::Hook::missing(format!(
                    "sched_prepare_exec: {tracepoint_err}; fentry begin_new_exec: {fentry_err}"
                )),
            )
        }
    }
}

/// Attaches the two watches that, with the exec programs and the prctl
/// watch, move the identity-change counters (`changes`): credentials, by
/// fentry on `commit_creds` where fentry programs load (BTF), else the
/// unshare and setns calls on the raw `sys_enter` tracepoint; and exits,
/// on the `sched_process_exit` raw tracepoint. Without both, the counters
/// could stay put through a change, so the daemon does not use them and
/// checks every request by system calls.
fn attach_identity_watch(
    ebpf: &mut Ebpf,
    btf: Result<&Btf, &String>,
) -> (Vec<(&'static str, FdLink)>, features::Hook) {
    let creds = match attach_fentry(ebpf, program_names::CREDS_CHANGE, "commit_creds", btf) {
        Ok(link) => Ok((program_names::CREDS_CHANGE, link, features::IDENTITY_WATCH_VIA_FENTRY)),
        Err(fentry_err) => {
            attach_raw_tracepoint(ebpf, program_names::NAMESPACE_CALLS, "sys_enter")
                .map(|link| {
                    tracing::info!(
                        fentry_error = %fentry_err,
                        "fentry programs cannot be loaded: user namespace changes are watched on the sys_enter tracepoint (unshare, setns)"
                    );
                    (
                        program_names::NAMESPACE_CALLS,
                        link,
                        features::IDENTITY_WATCH_VIA_SYS_ENTER,
                    )
                })
                .map_err(|e| format!("fentry commit_creds: {fentry_err}; sys_enter: {e}"))
        }
    };
    let exit = attach_raw_tracepoint(ebpf, program_names::EXIT, "sched_process_exit")
        .map_err(|e| format!("sched_process_exit: {e}"));
    match (creds, exit) {
        (Ok((creds_name, creds, via)), Ok(exit)) => (
            vec![(creds_name, creds), (program_names::EXIT, exit)],
            features::Hook::attached(via),
        ),
        (creds, exit) => {
            let note = [creds.err(), exit.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(
                error = %note,
                "the identity-change counters cannot be kept: every request's process is checked by system calls (slower, as safe)"
            );
            (Vec::new(), features::Hook::missing(note))
        }
    }
}

/// Attaches the watch on prctl(PR_SET_MM). Preferred: fentry on the
/// system call's entry points, `__x64_sys_prctl` and (where the kernel has
/// IA32 emulation) `__ia32_sys_prctl`, which sees `int $0x80` too; it needs
/// BTF but no perf_event_open. Else the `syscalls:sys_enter_prctl`
/// tracepoint (found through tracefs, opened with perf_event_open, which
/// Debian's kernels keep to CAP_SYS_ADMIN at their default
/// perf_event_paranoid of 3, and pinnable only as a perf link, Linux
/// 5.15+), which misses 32-bit calls. With neither the daemon still runs
/// and says so: the README's known limits describe what it then cannot see.
fn attach_prctl_watch(
    ebpf: &mut Ebpf,
    btf: Result<&Btf, &String>,
    tracing: &TracingPrograms,
) -> (Vec<(&'static str, FdLink)>, features::Hook) {
    let fentry_err = match attach_fentry(ebpf, tracing.prctl_x64, "__x64_sys_prctl", btf) {
        Ok(x64) => {
            let mut links = vec![(tracing.prctl_x64, x64)];
            let has_ia32 = btf.is_ok_and(|btf| {
                btf.id_by_type_name_kind("__ia32_sys_prctl", aya_obj::btf::BtfKind::Func)
                    .is_ok()
            });
            if !has_ia32 {
                // No 32-bit entry point in this kernel: nothing else to watch.
                return (
                    links,
                    features::Hook::attached(features::PRCTL_VIA_FENTRY_X64),
                );
            }
            return match attach_fentry(ebpf, tracing.prctl_ia32, "__ia32_sys_prctl", btf) {
                Ok(ia32) => {
                    links.push((tracing.prctl_ia32, ia32));
                    (
                        links,
                        features::Hook::attached(features::PRCTL_VIA_FENTRY_BOTH),
                    )
                }
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "the prctl(PR_SET_MM) watch sees 64-bit calls only: 32-bit ones (int $0x80) go unnoticed"
                    );
                    (
                        links,
                        features::Hook::degraded(
                            features::PRCTL_VIA_FENTRY_X64,
                            format!("32-bit calls unwatched: {error}"),
                        ),
                    )
                }
            };
        }
        Err(e) => e,
    };
    let name = program_names::PRCTL;
    match attach_tracepoint(ebpf, name, "syscalls", "sys_enter_prctl") {
        Ok(link) => {
            tracing::warn!(
                fentry_error = %fentry_err,
                "the prctl(PR_SET_MM) watch is the syscalls:sys_enter_prctl tracepoint, which misses 32-bit calls (int $0x80); fix: a kernel with BTF (CONFIG_DEBUG_INFO_BTF)"
            );
            (
                vec![(name, link)],
                features::Hook::degraded(
                    features::PRCTL_VIA_TRACEPOINT,
                    format!("32-bit calls (int $0x80) unwatched; fentry: {fentry_err}"),
                ),
            )
        }
        Err(tracepoint_err) => {
            tracing::warn!(
                fentry_error = %fentry_err,
                tracepoint_error = %tracepoint_err,
                "no prctl(PR_SET_MM) watch: exe repointing via a CLONE_VM child goes unnoticed; fix: a kernel with BTF (CONFIG_DEBUG_INFO_BTF), or Linux 5.15+ with perf_event_paranoid <= 2"
            );
            (
                Vec::new(),
                features::Hook::missing(format!(
                    "fentry: {fentry_err}; tracepoint: {tracepoint_err}"
                )),
            )
        }
    }
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    category: &str,
    tracepoint: &str,
) -> Result<FdLink, RedirectError> {
    let program: &mut TracePoint = program_mut(ebpf, name)?;
    program.load().map_err(attach_err(name))?;
    let id = program
        .attach(category, tracepoint)
        .map_err(attach_err(name))?;
    let link = program.take_link(id).map_err(attach_err(name))?;
    FdLink::try_from(link).map_err(|e| RedirectError::Attach {
        program: name,
        reason: e.to_string(),
    })
}

fn attach_fentry(
    ebpf: &mut Ebpf,
    name: &'static str,
    function: &str,
    btf: Result<&Btf, &String>,
) -> Result<FdLink, RedirectError> {
    let btf = btf.map_err(|reason| RedirectError::Attach {
        program: name,
        reason: reason.clone(),
    })?;
    let program: &mut FEntry = program_mut(ebpf, name)?;
    program.load(function, btf).map_err(attach_err(name))?;
    let id = program.attach().map_err(attach_err(name))?;
    let link = program.take_link(id).map_err(attach_err(name))?;
    Ok(FdLink::from(link))
}

fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    name: &'static str,
    tracepoint: &str,
) -> Result<FdLink, RedirectError> {
    let program: &mut RawTracePoint = program_mut(ebpf, name)?;
    program.load().map_err(attach_err(name))?;
    let id = program.attach(tracepoint).map_err(attach_err(name))?;
    let link = program.take_link(id).map_err(attach_err(name))?;
    Ok(FdLink::from(link))
}

/// Removes every pin under `pin_dir` (links, maps) and the directory itself:
/// used by `detach` and by `warrant detach` when no daemon is running.
pub fn remove_pins(pin_dir: &Path) -> Result<(), RedirectError> {
    match fs::remove_dir_all(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RedirectError::Pin {
            path: pin_dir.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Unpins every links-* generation other than `keep`; returns how many.
fn retire_old_links(pin_dir: &Path, keep: &Path) -> usize {
    let Ok(entries) = fs::read_dir(pin_dir) else {
        return 0;
    };
    let mut retired = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let is_links = entry.file_name().to_string_lossy().starts_with("links-");
        if is_links && path != keep {
            match fs::remove_dir_all(&path) {
                Ok(()) => retired += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove stale pinned links")
                }
            }
        }
    }
    retired
}

fn create_private_dir(dir: &Path) -> Result<(), RedirectError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| RedirectError::Pin {
            path: dir.to_owned(),
            reason: e.to_string(),
        })
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, RedirectError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or(RedirectError::Attach {
        program: name,
        reason: "missing from the object".into(),
    })?;
    program.try_into().map_err(attach_err(name))
}

fn attach_err(program: &'static str) -> impl Fn(aya::programs::ProgramError) -> RedirectError {
    move |e| RedirectError::Attach {
        program,
        reason: crate::error::chain(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_keys_match_what_sockops_records() {
        let v4 = peer_key("127.0.0.1:40000".parse().unwrap());
        assert_eq!(v4.family, AF_INET);
        assert_eq!(v4.port, 40000);
        assert_eq!(v4.addr, [0, 0, 0, u32::from_ne_bytes([127, 0, 0, 1])]);
        // A dual-stack listener reports IPv4 peers v4-mapped: same key.
        assert_eq!(peer_key("[::ffff:127.0.0.1]:40000".parse().unwrap()), v4);
        let v6 = peer_key("[::1]:40001".parse().unwrap());
        assert_eq!(v6.family, AF_INET6);
        assert_eq!(v6.addr[3], u32::from_ne_bytes([0, 0, 0, 1]));
    }

    #[test]
    fn kernel_config_is_in_network_order() {
        let settings = RedirectSettings {
            cgroup_root: "/x".into(),
            pin_dir: "/sys/fs/bpf/t".into(),
            listen4: "127.0.0.1:15443".parse().unwrap(),
            listen6: Some("[::1]:15443".parse().unwrap()),
            ports: vec![443],
            destinations: Vec::new(),
            block_quic: true,
            bypass_mark: 7,
        };
        let config = settings.kernel_config();
        assert_eq!(config.listen_port_be, 15443u16.to_be());
        assert_eq!(config.listen_ip4.to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!(config.flags, FLAG_ENABLED | FLAG_BLOCK_QUIC);
        assert_ne!(config.listen_ip6, [0; 4]);
    }
}
