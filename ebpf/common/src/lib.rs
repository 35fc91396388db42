//! The `#[repr(C)]` records shared by warrant's eBPF programs and its daemon.
//!
//! Both sides read these through BPF maps, so every type is plain old data with
//! explicit padding, and the map names below are the single source of truth for
//! the names the daemon looks up (and pins) in the loaded object.
#![no_std]

/// Address families as the kernel numbers them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Names of the maps, as the eBPF object declares them and as they are pinned.
pub mod map_names {
    pub const CONFIG: &str = "WARRANT_CONFIG";
    pub const PORTS: &str = "WARRANT_PORTS";
    pub const DESTINATIONS: &str = "WARRANT_DESTINATIONS";
    pub const TAGGED: &str = "WARRANT_TAGGED";
    pub const ORIGIN_BY_COOKIE: &str = "WARRANT_ORIGIN_BY_COOKIE";
    pub const ORIGIN_BY_PEER: &str = "WARRANT_ORIGIN_BY_PEER";
    pub const EXEC_GEN: &str = "WARRANT_EXEC_GEN";
    pub const MM_TAMPERED: &str = "WARRANT_MM_TAMPERED";
    pub const IDENTITY_CHANGES: &str = "WARRANT_IDENTITY_CHANGES";
}

/// Names of the programs in the eBPF object.
pub mod program_names {
    pub const CONNECT4: &str = "warrant_connect4";
    pub const CONNECT6: &str = "warrant_connect6";
    pub const GETPEERNAME4: &str = "warrant_getpeername4";
    pub const GETPEERNAME6: &str = "warrant_getpeername6";
    pub const SENDMSG4: &str = "warrant_sendmsg4";
    pub const SENDMSG6: &str = "warrant_sendmsg6";
    pub const SOCKOPS: &str = "warrant_sockops";
    /// Raw tracepoint `sched_prepare_exec` (Linux 6.10+): the exec
    /// generation moves before the executable does.
    pub const EXEC_PREPARE: &str = "warrant_sched_prepare_exec";
    /// fentry on `begin_new_exec`: the same, where that tracepoint is missing.
    pub const EXEC_BEGIN: &str = "warrant_begin_new_exec";
    /// Raw tracepoint `sched_process_exec`: it moves again once the exec
    /// has succeeded.
    pub const EXEC: &str = "warrant_sched_process_exec";
    /// syscalls:sys_enter_prctl: PR_SET_MM from a tagged cgroup (where the
    /// fentry programs below cannot attach; sees 64-bit calls only).
    pub const PRCTL: &str = "warrant_sys_enter_prctl";
    /// fentry on `__x64_sys_prctl`: the same watch, preferred (BTF).
    pub const PRCTL_X64: &str = "warrant_x64_sys_prctl";
    /// fentry on `__ia32_sys_prctl`: 32-bit calls (`int $0x80`).
    pub const PRCTL_IA32: &str = "warrant_ia32_sys_prctl";
    /// fentry on `commit_creds`: a process's credentials, and with them
    /// its user namespace, change ([`super::IDENTITY_CHANGES_SLOTS`]).
    pub const CREDS_CHANGE: &str = "warrant_commit_creds";
    /// Raw tracepoint `sys_enter`: unshare and setns calls, the same watch
    /// where fentry programs cannot be loaded.
    pub const NAMESPACE_CALLS: &str = "warrant_sys_enter_namespaces";
    /// Raw tracepoint `sched_process_exit`: a task exits (the same map).
    pub const EXIT: &str = "warrant_sched_process_exit";
    /// The tracing programs again, for kernels whose tracing programs lack
    /// bpf_get_current_ancestor_cgroup_id (before 5.11): they find the
    /// task's cgroup ancestors through [`super::CgroupLayout`] instead.
    pub const EXEC_BEGIN_COMPAT: &str = "warrant_begin_new_exec_compat";
    pub const EXEC_COMPAT: &str = "warrant_sched_process_exec_compat";
    pub const PRCTL_X64_COMPAT: &str = "warrant_x64_sys_prctl_compat";
    pub const PRCTL_IA32_COMPAT: &str = "warrant_ia32_sys_prctl_compat";
}

/// Name of the global holding [`CgroupLayout`] (set by the loader).
/// Slots of the identity-change counters (`WARRANT_IDENTITY_CHANGES`, an
/// array the daemon maps read-only into its memory). The kernel adds one to
/// a process's slot ([`identity_change_slot`]) whenever something that
/// attestation checks per request may have changed for it: an exec, new
/// credentials (which is how a process enters another user namespace), a
/// task of it exiting (its pid may then be reused); and to slot
/// [`IDENTITY_CHANGES_ANY`] on a prctl(PR_SET_MM) mark. While a process's
/// two counters are where they were when it was last fully checked, that
/// check still holds, and the daemon answers from memory, with no system
/// call. Processes share slots (tgid modulo the count): a neighbour's
/// change only costs a full check.
pub const IDENTITY_CHANGES_SLOTS: u32 = 4096;
/// The slot every prctl(PR_SET_MM) mark moves: it concerns a cgroup, not
/// one process, so every process is checked again.
pub const IDENTITY_CHANGES_ANY: u32 = 0;

/// The slot of the identity-change counters that `tgid`'s changes move.
#[inline(always)]
pub fn identity_change_slot(tgid: u32) -> u32 {
    1 + tgid % (IDENTITY_CHANGES_SLOTS - 1)
}

pub const CGROUP_LAYOUT_GLOBAL: &str = "WARRANT_CGROUP_LAYOUT";

/// Byte offsets, read from the running kernel's BTF by the daemon, that let
/// the tracing programs walk `current->cgroups->dfl_cgrp->ancestor_ids[]`
/// themselves on kernels (5.8 to 5.10) where tracing programs may not call
/// bpf_get_current_ancestor_cgroup_id. `ancestor_ids[level]` is the id of
/// the cgroup's ancestor at that level (the cgroup itself at its own level),
/// exactly what that helper returns there. All zero: not set (the walk then
/// finds nothing tagged).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupLayout {
    /// `struct task_struct`'s `cgroups` (a `struct css_set *`).
    pub task_cgroups: u32,
    /// `struct css_set`'s `dfl_cgrp` (a `struct cgroup *`).
    pub css_set_dfl_cgrp: u32,
    /// `struct cgroup`'s `level` (an int).
    pub cgroup_level: u32,
    /// `struct cgroup`'s `ancestor_ids` (a flexible array of u64).
    pub cgroup_ancestor_ids: u32,
}

/// Entries of `WARRANT_TAGGED`: one per cgroup a `[[workload]]` selector
/// names (a unit, a slice, the shallowest match of a glob; their subtrees
/// are covered by the ancestor walk). A host runs at most hundreds of agent
/// units; 4,096 leaves room for globs over many template instances while
/// keeping the map small. Only cgroups root made, outside every delegated
/// subtree, are ever tagged, so no unprivileged user can fill it.
pub const TAGGED_CAPACITY: u32 = 4096;

/// How deep below the root the programs look for a tagged ancestor cgroup.
/// systemd hierarchies are rarely deeper than 6; 32 leaves generous room.
pub const MAX_CGROUP_DEPTH: u32 = 32;

/// Where redirected connections go: the injector's listeners. One entry, index 0.
/// Addresses and the port are in network byte order, as `bpf_sock_addr` holds them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectConfig {
    /// IPv4 listener address (network order).
    pub listen_ip4: u32,
    /// IPv6 listener address (network order words); all zero when there is no
    /// IPv6 listener, in which case IPv6 connects go to the v4-mapped IPv4 listener.
    pub listen_ip6: [u32; 4],
    /// Listener port, network order (same port for both families).
    pub listen_port_be: u16,
    /// `FLAG_*` bits. Without `FLAG_ENABLED` the programs leave every socket alone.
    pub flags: u16,
    /// Sockets carrying this SO_MARK are the daemon's own upstream sockets and
    /// are never redirected (no loop). Setting SO_MARK needs CAP_NET_ADMIN, so an
    /// agent cannot forge it.
    pub bypass_mark: u32,
}

/// `RedirectConfig::flags`: the daemon has filled the config in.
pub const FLAG_ENABLED: u16 = 1;
/// `RedirectConfig::flags`: refuse UDP to intercepted ports (QUIC) from tagged tasks.
pub const FLAG_BLOCK_QUIC: u16 = 2;

/// Who made a redirected connection, and where it was going.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// Original destination address, network-order words. IPv4 destinations
    /// are stored v4-mapped (::ffff:a.b.c.d) whatever the socket family.
    pub dst_addr: [u32; 4],
    /// Original destination port, host order.
    pub dst_port: u16,
    /// Family of the agent's socket (AF_INET or AF_INET6).
    pub socket_family: u16,
    /// Family of the listener the connection was sent to; the accepted socket's
    /// peer address is of this family.
    pub redirect_family: u16,
    pub _pad0: u16,
    /// Thread id and process id (tgid) of the task that called connect().
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// The process's exec generation at connect time (see `EXEC_GEN`): 0 if it
    /// has not exec'd since the programs were loaded.
    pub exec_gen: u64,
    /// CLOCK_BOOTTIME of the connect, in nanoseconds. A process whose start time
    /// is later than this is not the one that connected (pid reuse).
    pub connect_boot_ns: u64,
    /// Socket cookie of the agent's socket.
    pub cookie: u64,
}

/// Key of `DESTINATIONS`: one address and port redirected for tagged tasks
/// although its port is not intercepted (the cloud metadata service,
/// 169.254.169.254:80, answered by warrant with placeholder credentials).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DestinationKey {
    /// Network-order words; IPv4 addresses v4-mapped (::ffff:a.b.c.d), as
    /// the connect programs see them whatever the socket family.
    pub addr: [u32; 4],
    /// Port, host order.
    pub port: u16,
    pub _pad: u16,
}

/// Destinations redirected beside the intercepted ports, at most: the
/// metadata addresses of a few clouds.
pub const DESTINATIONS_CAPACITY: u32 = 64;

/// Key of `ORIGIN_BY_PEER`: the agent socket's local address as the injector
/// sees it as the peer of the accepted connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// AF_INET or AF_INET6: the family of the listener that accepted it.
    pub family: u16,
    /// Port, host order.
    pub port: u16,
    /// Network-order words. IPv4 addresses use only `addr[3]`.
    pub addr: [u32; 4],
}

#[cfg(feature = "user")]
mod user {
    // Safety: all four are #[repr(C)] structs of integers with no implicit
    // padding (fields are laid out to avoid holes), so any bit pattern is valid.
    unsafe impl aya::Pod for super::RedirectConfig {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::DestinationKey {}
    // Safety: as above, four u32s.
    unsafe impl aya::Pod for super::CgroupLayout {}
}
