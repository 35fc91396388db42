//! warrant's kernel half.
//!
//! All programs are attached to one cgroup, `[daemon] cgroup_root`, and so run
//! for every socket below it; each one first asks whether the calling task sits
//! in a *tagged* cgroup (the cgroup itself or any ancestor is in `TAGGED`) and
//! leaves everything else alone.
//!
//! The life of a redirected TCP connection:
//! 1. `connect4/6`: the destination port is intercepted (or the destination
//!    address and port are listed in `DESTINATIONS`: the cloud metadata
//!    service) and the task is tagged, so the destination is rewritten to the
//!    injector's listener and an `Origin` is stored under the socket's cookie.
//! 2. `sockops` at TCP_CONNECT_CB (the source port is now bound, the SYN not yet
//!    sent): the Origin is copied under the socket's local address, which is the
//!    peer address the injector sees when it accepts. The socket also asks for
//!    state callbacks so both entries are deleted when it closes: a stale entry
//!    must never be inherited by a later socket that reuses the port.
//! 3. `getpeername4/6`: the agent sees the address it dialled.
//!
//! UDP to an intercepted port (QUIC) from a tagged task is refused at connect
//! and sendmsg, so HTTP/3 clients fall back to TCP, which is redirected.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's atomic types offer no
// fetch_add there; the intrinsic compiles to the BPF atomic add (built on
// the nightly toolchain, see daemon/build.rs).
#![allow(internal_features)]
#![feature(core_intrinsics)]

use aya_ebpf::{
    Global,
    bindings::{
        BPF_ANY, BPF_F_MMAPABLE, BPF_NOEXIST, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock_addr,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_task,
            bpf_get_socket_cookie, bpf_ktime_get_boot_ns,
        },
    },
    macros::{cgroup_sock_addr, fentry, map, raw_tracepoint, sock_ops, tracepoint},
    maps::{Array, HashMap, LruHashMap},
    programs::{
        FEntryContext, RawTracePointContext, SockAddrContext, SockOpsContext, TracePointContext,
    },
};
use warrant_common::{
    AF_INET, AF_INET6, CgroupLayout, DESTINATIONS_CAPACITY, DestinationKey, FLAG_BLOCK_QUIC,
    FLAG_ENABLED, IDENTITY_CHANGES_ANY, IDENTITY_CHANGES_SLOTS, MAX_CGROUP_DEPTH, Origin, PeerKey,
    RedirectConfig, TAGGED_CAPACITY, identity_change_slot,
};

/// cgroup/sock_addr verdicts.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
/// TCP_CLOSE in the kernel's TCP state numbering.
const TCP_CLOSE: u32 = 7;

/// How many live redirected connections (and processes with an exec
/// generation) are tracked. LRU maps: under pressure the oldest entries go,
/// and a connection whose Origin or exec generation was evicted is refused
/// by the injector (a generation is recorded at every connect, so a missing
/// one is always a lost record).
const MAX_CONNECTIONS: u32 = 65536;

#[map(name = "WARRANT_CONFIG")]
static CONFIG: Array<RedirectConfig> = Array::pinned(1, 0);

#[map(name = "WARRANT_PORTS")]
static PORTS: HashMap<u16, u8> = HashMap::pinned(64, 0);

#[map(name = "WARRANT_DESTINATIONS")]
static DESTINATIONS: HashMap<DestinationKey, u8> = HashMap::pinned(DESTINATIONS_CAPACITY, 0);

#[map(name = "WARRANT_TAGGED")]
static TAGGED: HashMap<u64, u8> = HashMap::pinned(TAGGED_CAPACITY, 0);

#[map(name = "WARRANT_ORIGIN_BY_COOKIE")]
static ORIGIN_BY_COOKIE: LruHashMap<u64, Origin> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

#[map(name = "WARRANT_ORIGIN_BY_PEER")]
static ORIGIN_BY_PEER: LruHashMap<PeerKey, Origin> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

#[map(name = "WARRANT_EXEC_GEN")]
static EXEC_GEN: LruHashMap<u32, u64> = LruHashMap::pinned(MAX_CONNECTIONS, 0);

/// cgroup id -> boot time of the last prctl(PR_SET_MM) made in it by a
/// tagged task (see `warrant_sys_enter_prctl`).
#[map(name = "WARRANT_MM_TAMPERED")]
static MM_TAMPERED: LruHashMap<u64, u64> = LruHashMap::pinned(4096, 0);

/// Counters the daemon reads from its own memory (the map is mmapped) to
/// know, with no system call, that nothing attestation checks per request
/// changed for a process since its last full check (see
/// `warrant_common::IDENTITY_CHANGES_SLOTS`). Not pinned: a restarted
/// daemon knows no process yet, so it starts from full checks anyway.
#[map(name = "WARRANT_IDENTITY_CHANGES")]
static IDENTITY_CHANGES: Array<u64> =
    Array::with_max_entries(IDENTITY_CHANGES_SLOTS, BPF_F_MMAPABLE);

/// Adds one to counter `slot` of `IDENTITY_CHANGES`. Atomic: two CPUs
/// moving one slot at once must both count, or a change could go unseen.
#[inline(always)]
fn count_identity_change(slot: u32) {
    if let Some(counter) = IDENTITY_CHANGES.get_ptr_mut(slot) {
        // Safety: the pointer is to the map's value, valid and 8-byte
        // aligned while the program runs; the result is unused, so this
        // is the BPF atomic add every kernel has (no fetch).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                counter, 1,
            );
        }
    }
}

/// The current task's process's identity-change counter moves.
#[inline(always)]
fn count_current_process_change() {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    count_identity_change(identity_change_slot(tgid));
}

/// Is the current task in a tagged cgroup or below one?
#[inline(always)]
fn current_task_is_tagged() -> bool {
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        // Safety: a BPF helper call with a plain integer argument.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            return false;
        }
        if TAGGED.get_ptr(id).is_some() {
            return true;
        }
        level += 1;
    }
    false
}

/// Set by the daemon for kernels before 5.11 (see [`CgroupLayout`]); read
/// only by the `_compat` tracing programs. The name is the loader's key.
#[unsafe(no_mangle)]
static WARRANT_CGROUP_LAYOUT: Global<CgroupLayout> = Global::new(CgroupLayout {
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_level: 0,
    cgroup_ancestor_ids: 0,
});

/// One kernel word at `base + offset` (0 if unreadable).
#[inline(always)]
fn read_kernel<T: Default>(base: u64, offset: u32) -> T {
    // Safety: bpf_probe_read_kernel checks the read; the address comes from
    // the kernel's own pointers and BTF offsets.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.unwrap_or_default()
}

/// [`current_task_is_tagged`] for tracing programs on kernels before 5.11,
/// whose tracing programs may not call bpf_get_current_ancestor_cgroup_id:
/// the same ancestors, read from `current->cgroups->dfl_cgrp->ancestor_ids`
/// at the offsets the daemon found in the kernel's BTF (the helper reads the
/// same array on those kernels).
#[inline(always)]
fn current_task_is_tagged_compat() -> bool {
    let layout = WARRANT_CGROUP_LAYOUT.load();
    if layout.cgroup_ancestor_ids == 0 {
        return false;
    }
    // Safety: a helper call with no arguments.
    let task = unsafe { bpf_get_current_task() };
    let css_set: u64 = read_kernel(task, layout.task_cgroups);
    if css_set == 0 {
        return false;
    }
    let cgroup: u64 = read_kernel(css_set, layout.css_set_dfl_cgrp);
    if cgroup == 0 {
        return false;
    }
    let level: u32 = read_kernel(cgroup, layout.cgroup_level);
    let mut at = 0;
    while at < MAX_CGROUP_DEPTH {
        if at > level {
            return false;
        }
        let id: u64 = read_kernel(cgroup, layout.cgroup_ancestor_ids + at * 8);
        if id != 0 && TAGGED.get_ptr(id).is_some() {
            return true;
        }
        at += 1;
    }
    false
}

#[inline(always)]
fn config() -> Option<RedirectConfig> {
    let cfg = CONFIG.get(0)?;
    if cfg.flags & FLAG_ENABLED == 0 {
        None
    } else {
        Some(*cfg)
    }
}

#[inline(always)]
fn is_intercepted_port(port_be: u32) -> bool {
    let port = u16::from_be(port_be as u16);
    PORTS.get_ptr(port).is_some()
}

/// Whether this one destination (an IPv6 or v4-mapped address and a
/// network-order port) is redirected although its port is not.
#[inline(always)]
fn is_intercepted_destination(addr: [u32; 4], port_be: u32) -> bool {
    let key = DestinationKey {
        addr,
        port: u16::from_be(port_be as u16),
        _pad: 0,
    };
    DESTINATIONS.get_ptr(&key).is_some()
}

/// Reads the context's `user_ip6` one aligned word at a time, as the
/// verifier requires.
#[inline(always)]
fn user_ip6(sock: &bpf_sock_addr) -> [u32; 4] {
    let src = sock.user_ip6.as_ptr();
    // Safety: `src` points at the four u32 words of the context's user_ip6.
    unsafe {
        [
            core::ptr::read_volatile(src),
            core::ptr::read_volatile(src.add(1)),
            core::ptr::read_volatile(src.add(2)),
            core::ptr::read_volatile(src.add(3)),
        ]
    }
}

/// The socket's SO_MARK. The daemon marks its own upstream sockets.
#[inline(always)]
fn socket_mark(ctx: &SockAddrContext) -> u32 {
    // Safety: the kernel hands cgroup/sock_addr programs a valid context whose
    // `sk` is a non-null PTR_TO_SOCKET; `mark` is a readable bpf_sock field.
    unsafe {
        let sk = (*ctx.sock_addr).__bindgen_anon_1.sk;
        if sk.is_null() { 0 } else { (*sk).mark }
    }
}

#[inline(always)]
fn v4_mapped(ip4_be: u32) -> [u32; 4] {
    [0, 0, u32::to_be(0xffff), ip4_be]
}

/// Writes an IPv6 address into the context one 32-bit word at a time: the
/// verifier only allows aligned 4-byte stores to `user_ip6`, and a plain array
/// assignment may be lowered to a byte-wise copy.
#[inline(always)]
fn set_user_ip6(sock: &mut bpf_sock_addr, ip6: [u32; 4]) {
    let dst = sock.user_ip6.as_mut_ptr();
    // Safety: `dst` points at the four u32 words of the context's user_ip6.
    unsafe {
        core::ptr::write_volatile(dst, ip6[0]);
        core::ptr::write_volatile(dst.add(1), ip6[1]);
        core::ptr::write_volatile(dst.add(2), ip6[2]);
        core::ptr::write_volatile(dst.add(3), ip6[3]);
    }
}

#[inline(always)]
fn is_v4_mapped(ip6: &[u32; 4]) -> bool {
    ip6[0] == 0 && ip6[1] == 0 && ip6[2] == u32::to_be(0xffff)
}

#[inline(always)]
fn new_origin(
    ctx: &SockAddrContext,
    dst_addr: [u32; 4],
    dst_port_be: u32,
    socket_family: u16,
    redirect_family: u16,
) -> Origin {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let tgid = (pid_tgid >> 32) as u32;
    // Safety: helper calls; the context pointer is the one the kernel passed us.
    let (cgroup_id, cookie, now) = unsafe {
        (
            bpf_get_current_cgroup_id(),
            bpf_get_socket_cookie(ctx.sock_addr as *mut _),
            bpf_ktime_get_boot_ns(),
        )
    };
    let exec_gen = exec_generation_at_connect(tgid, now);
    Origin {
        dst_addr,
        dst_port: u16::from_be(dst_port_be as u16),
        socket_family,
        redirect_family,
        _pad0: 0,
        pid: pid_tgid as u32,
        tgid,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id,
        exec_gen,
        connect_boot_ns: now,
        cookie,
    }
}

/// The process's exec generation, recorded now if it has none (no exec
/// seen since the programs were loaded, or its entry was evicted): so every
/// Origin carries a generation that is in the map, and a missing entry at
/// attestation time means the record was lost, never "unchanged". The
/// insert does not overwrite (BPF_NOEXIST), so a concurrent exec's stamp or
/// another thread's record wins, and the value read back is the one kept.
/// 0 means nothing could be recorded: the caller refuses the connect.
#[inline(always)]
fn exec_generation_at_connect(tgid: u32, now: u64) -> u64 {
    // Safety: lookups whose values are copied out at once.
    if let Some(generation) = unsafe { EXEC_GEN.get(&tgid).copied() } {
        return generation;
    }
    let _ = EXEC_GEN.insert(&tgid, &now, BPF_NOEXIST as u64);
    // Safety: as above.
    unsafe { EXEC_GEN.get(&tgid).copied() }.unwrap_or(0)
}

/// What a connect/sendmsg hook should do with this socket address.
enum Verdict {
    Untouched,
    Refuse,
    Redirect(RedirectConfig),
}

/// `dst` is the destination address as a v4-mapped or IPv6 address.
#[inline(always)]
fn classify(ctx: &SockAddrContext, sock: &bpf_sock_addr, dst: [u32; 4]) -> Verdict {
    let Some(cfg) = config() else {
        return Verdict::Untouched;
    };
    let port_intercepted = is_intercepted_port(sock.user_port);
    if !port_intercepted && !is_intercepted_destination(dst, sock.user_port) {
        return Verdict::Untouched;
    }
    if socket_mark(ctx) == cfg.bypass_mark && cfg.bypass_mark != 0 {
        return Verdict::Untouched;
    }
    if !current_task_is_tagged() {
        return Verdict::Untouched;
    }
    match sock.type_ {
        SOCK_STREAM => Verdict::Redirect(cfg),
        // QUIC is refused on the intercepted ports only.
        SOCK_DGRAM if port_intercepted && cfg.flags & FLAG_BLOCK_QUIC != 0 => Verdict::Refuse,
        _ => Verdict::Untouched,
    }
}

#[cgroup_sock_addr(connect4)]
pub fn warrant_connect4(ctx: SockAddrContext) -> i32 {
    // Safety: the kernel passes a valid bpf_sock_addr for the program's lifetime.
    let sock = unsafe { &mut *ctx.sock_addr };
    let dst = v4_mapped(sock.user_ip4);
    match classify(&ctx, sock, dst) {
        Verdict::Untouched => ALLOW,
        Verdict::Refuse => REJECT,
        Verdict::Redirect(cfg) => {
            let origin = new_origin(
                &ctx,
                v4_mapped(sock.user_ip4),
                sock.user_port,
                AF_INET,
                AF_INET,
            );
            if origin.exec_gen == 0
                || ORIGIN_BY_COOKIE
                    .insert(origin.cookie, origin, BPF_ANY as u64)
                    .is_err()
            {
                // Without an Origin the injector would refuse the connection
                // anyway; refusing here says so sooner.
                return REJECT;
            }
            sock.user_ip4 = cfg.listen_ip4;
            sock.user_port = cfg.listen_port_be as u32;
            ALLOW
        }
    }
}

#[cgroup_sock_addr(connect6)]
pub fn warrant_connect6(ctx: SockAddrContext) -> i32 {
    // Safety: as in connect4.
    let sock = unsafe { &mut *ctx.sock_addr };
    let dst = user_ip6(sock);
    match classify(&ctx, sock, dst) {
        Verdict::Untouched => ALLOW,
        Verdict::Refuse => REJECT,
        Verdict::Redirect(cfg) => {
            // A v4-mapped destination is really IPv4: the kernel connects it
            // through the IPv4 stack, so send it to the IPv4 listener (mapped).
            // So do native IPv6 destinations when there is no IPv6 listener.
            let have_ip6_listener = cfg.listen_ip6 != [0; 4];
            let to_ip4 = is_v4_mapped(&dst) || !have_ip6_listener;
            let redirect_family = if to_ip4 { AF_INET } else { AF_INET6 };
            let origin = new_origin(&ctx, dst, sock.user_port, AF_INET6, redirect_family);
            if origin.exec_gen == 0
                || ORIGIN_BY_COOKIE
                    .insert(origin.cookie, origin, BPF_ANY as u64)
                    .is_err()
            {
                return REJECT;
            }
            let listener = if to_ip4 {
                v4_mapped(cfg.listen_ip4)
            } else {
                cfg.listen_ip6
            };
            set_user_ip6(sock, listener);
            sock.user_port = cfg.listen_port_be as u32;
            ALLOW
        }
    }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn warrant_sendmsg4(ctx: SockAddrContext) -> i32 {
    // Safety: as in connect4.
    let sock = unsafe { &*ctx.sock_addr };
    match classify(&ctx, sock, v4_mapped(sock.user_ip4)) {
        Verdict::Refuse => REJECT,
        _ => ALLOW,
    }
}

#[cgroup_sock_addr(sendmsg6)]
pub fn warrant_sendmsg6(ctx: SockAddrContext) -> i32 {
    // Safety: as in connect4.
    let sock = unsafe { &*ctx.sock_addr };
    match classify(&ctx, sock, user_ip6(sock)) {
        Verdict::Refuse => REJECT,
        _ => ALLOW,
    }
}

#[inline(always)]
fn redirected_origin(ctx: &SockAddrContext) -> Option<Origin> {
    // Safety: helper call on the context the kernel passed us; the value is copied out.
    unsafe {
        let cookie = bpf_get_socket_cookie(ctx.sock_addr as *mut _);
        ORIGIN_BY_COOKIE.get(cookie).copied()
    }
}

#[cgroup_sock_addr(getpeername4)]
pub fn warrant_getpeername4(ctx: SockAddrContext) -> i32 {
    if let Some(origin) = redirected_origin(&ctx) {
        // Safety: as in connect4.
        let sock = unsafe { &mut *ctx.sock_addr };
        sock.user_ip4 = origin.dst_addr[3];
        sock.user_port = u16::to_be(origin.dst_port) as u32;
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn warrant_getpeername6(ctx: SockAddrContext) -> i32 {
    if let Some(origin) = redirected_origin(&ctx) {
        // Safety: as in connect4.
        let sock = unsafe { &mut *ctx.sock_addr };
        set_user_ip6(sock, origin.dst_addr);
        sock.user_port = u16::to_be(origin.dst_port) as u32;
    }
    ALLOW
}

#[sock_ops]
pub fn warrant_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_tcp_connect(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => on_tcp_close(&ctx),
        _ => {}
    }
    0
}

#[inline(always)]
fn peer_key(ctx: &SockOpsContext, redirect_family: u16) -> PeerKey {
    // Every context field is read with a fixed offset and volatile loads: the
    // verifier rejects a context access whose offset the compiler computed
    // (e.g. by merging the ip4 and ip6 branches into one load).
    // Safety: `ops` is the valid context the kernel passed to the program.
    let (ip4, ip6, port) = unsafe {
        let ops = ctx.ops;
        let ip6 = core::ptr::addr_of!((*ops).local_ip6) as *const u32;
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip4)),
            [
                core::ptr::read_volatile(ip6),
                core::ptr::read_volatile(ip6.add(1)),
                core::ptr::read_volatile(ip6.add(2)),
                core::ptr::read_volatile(ip6.add(3)),
            ],
            core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_port)),
        )
    };
    let addr = if redirect_family == AF_INET {
        [0, 0, 0, ip4]
    } else {
        ip6
    };
    PeerKey {
        family: redirect_family,
        port: port as u16,
        addr,
    }
}

#[inline(always)]
fn on_tcp_connect(ctx: &SockOpsContext) {
    // Safety: helper call on the context the kernel passed us.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    // Safety: the value is copied out at once.
    let Some(origin) = (unsafe { ORIGIN_BY_COOKIE.get(cookie).copied() }) else {
        return;
    };
    let key = peer_key(ctx, origin.redirect_family);
    if ORIGIN_BY_PEER.insert(&key, &origin, BPF_ANY as u64).is_ok() {
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    }
}

#[inline(always)]
fn on_tcp_close(ctx: &SockOpsContext) {
    // Safety: helper call on the context the kernel passed us.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    // Safety: the value is copied out at once.
    let Some(origin) = (unsafe { ORIGIN_BY_COOKIE.get(cookie).copied() }) else {
        return;
    };
    let key = peer_key(ctx, origin.redirect_family);
    // Only delete the peer entry if it is still ours: the injector may have
    // taken it already and a new socket may have reused the port since.
    // Safety: the value is copied out at once.
    if let Some(current) = unsafe { ORIGIN_BY_PEER.get(&key).copied() } {
        if current.cookie == cookie {
            let _ = ORIGIN_BY_PEER.remove(&key);
        }
    }
    let _ = ORIGIN_BY_COOKIE.remove(&cookie);
}

/// Gives the current task's process a new exec generation (the boot time
/// now), if it is in a tagged cgroup. Keyed by tgid, which an exec keeps even
/// when a non-leader thread execs (de_thread hands it the leader's pid).
#[inline(always)]
fn bump_exec_generation(tagged: impl Fn() -> bool) {
    if !tagged() {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Safety: a helper call with no arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let _ = EXEC_GEN.insert(&tgid, &now, BPF_ANY as u64);
    count_identity_change(identity_change_slot(tgid));
}

/// An exec begins: bump the generation before the kernel switches the
/// process's executable. Either this program or the fentry below is attached
/// (the daemon prefers this one; the tracepoint exists since Linux 6.10).
///
/// `begin_new_exec` installs the new mm, and with it the new
/// `/proc/PID/exe`, in `exec_mmap`; `sched_process_exec` fires only once the
/// whole exec has succeeded, after the old address space is torn down and
/// the new program loaded. `sched_prepare_exec` fires in `begin_new_exec`
/// at the point of no return, before `de_thread` and `exec_mmap`. Bumping
/// there means that whoever sees the new executable in /proc also sees the
/// new generation (the map update precedes the exe switch on this CPU, and
/// the switch is published under task_lock, which the /proc read takes), so
/// an attestation reading /proc during the exec is refused instead of
/// crediting the connection to the new program.
#[raw_tracepoint(tracepoint = "sched_prepare_exec")]
pub fn warrant_sched_prepare_exec(_ctx: RawTracePointContext) -> i32 {
    bump_exec_generation(current_task_is_tagged);
    0
}

/// The same bump for kernels without `sched_prepare_exec` (Debian's 6.1):
/// on entry to `begin_new_exec`. Needs the kernel's BTF.
///
/// Entry is slightly before the point of no return: `bprm_creds_from_file`
/// (the security modules' creds hook) can still fail, and the process then
/// keeps running its old program with a generation that has moved. That
/// only refuses the connections it opened before the failed exec: fail
/// closed, and rare.
#[fentry(function = "begin_new_exec")]
pub fn warrant_begin_new_exec(_ctx: FEntryContext) -> i32 {
    bump_exec_generation(current_task_is_tagged);
    0
}

/// The same for kernels before 5.11 (see [`current_task_is_tagged_compat`]).
#[fentry(function = "begin_new_exec")]
pub fn warrant_begin_new_exec_compat(_ctx: FEntryContext) -> i32 {
    bump_exec_generation(current_task_is_tagged_compat);
    0
}

/// An exec has succeeded: bump the generation again. A connect made by
/// another thread of the process while the exec was under way (between the
/// entry bump and de_thread killing that thread) recorded the intermediate
/// generation; this second bump makes that Origin stale too, so the
/// connection is not attributed to the new program once the exec is done.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn warrant_sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    bump_exec_generation(current_task_is_tagged);
    0
}

/// The same for kernels before 5.11 (see [`current_task_is_tagged_compat`]).
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn warrant_sched_process_exec_compat(_ctx: RawTracePointContext) -> i32 {
    bump_exec_generation(current_task_is_tagged_compat);
    0
}

/// prctl(2) (include/uapi/linux/prctl.h): PR_SET_MM and the two
/// sub-options that can repoint the executable.
const PR_SET_MM: u64 = 35;
const PR_SET_MM_EXE_FILE: u64 = 13;
const PR_SET_MM_MAP: u64 = 14;

/// A tagged task calls prctl(PR_SET_MM, PR_SET_MM_EXE_FILE or
/// PR_SET_MM_MAP): it may repoint the exe link, and with MAP its argv and
/// other fields too (MAP with exe_fd needs only a capability in the
/// caller's own user namespace; its argv part none). The mm may be shared
/// with another process (a CLONE_VM child acting for the agent), so no
/// process's generation can express it: the cgroup is marked instead, and
/// the attestor no longer trusts the program identity of anything in it.
/// Only CRIU-like tools use these; an agent has no reason to. The mark is
/// made on entry, whether or not the call then succeeds: fail closed.
///
/// The other sub-options are left alone: they cannot touch the exe link,
/// and those that move argv or the environment (PR_SET_MM_ARG_START and
/// the like, which need CAP_SYS_RESOURCE) do no more than the in-place
/// rewrite any process may make of its own argv (see the README's known
/// limits). systemd 247 (Debian 11) renames every service's process with
/// PR_SET_MM_ARG_START/ARG_END after moving it into the unit's cgroup and
/// before exec: watching those would mark every unit as it starts.
#[inline(always)]
fn watch_prctl(option: u64, what: u64, tagged: impl Fn() -> bool) {
    if option != PR_SET_MM || !(what == PR_SET_MM_EXE_FILE || what == PR_SET_MM_MAP) || !tagged() {
        return;
    }
    // Safety: helper calls with no arguments.
    let (cgroup, now) = unsafe { (bpf_get_current_cgroup_id(), bpf_ktime_get_boot_ns()) };
    let _ = MM_TAMPERED.insert(&cgroup, &now, BPF_ANY as u64);
    count_identity_change(IDENTITY_CHANGES_ANY);
}

/// New credentials for a task: a setuid, a capability change, and the
/// only ways into another user namespace (unshare and setns with
/// CLONE_NEWUSER both end in commit_creds; both need a single-threaded
/// process, so the thread is the process). Counted for every task, tagged
/// or not: a process moved out of a tagged cgroup after connecting still
/// holds its connection. Entry is before the switch, so whoever reads the
/// counter after the process's next request was sent sees it moved.
#[fentry(function = "commit_creds")]
pub fn warrant_commit_creds(_ctx: FEntryContext) -> i32 {
    count_current_process_change();
    0
}

/// x86-64 system call numbers of unshare(2) and setns(2), the two ways a
/// process enters another user namespace: native, and as `int $0x80`
/// numbers them (which the 64-bit table gives to process_vm_readv and to
/// nothing: a spurious count costs one full check). x32 calls carry bit 30.
const NR_UNSHARE: u64 = 272;
const NR_SETNS: u64 = 308;
const NR_IA32_UNSHARE: u64 = 310;
const NR_IA32_SETNS: u64 = 346;
const X32_SYSCALL_BIT: u64 = 0x4000_0000;

/// The credentials watch where fentry programs cannot be loaded: every
/// system call's entry (the raw `sys_enter` tracepoint, which, unlike the
/// syscalls:* tracepoints, sees 32-bit calls too), counting unshare and
/// setns, whatever their flags, as they begin. Costs a comparison on every
/// system call of the host, so it is only attached when the fentry
/// program above cannot be.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn warrant_sys_enter_namespaces(ctx: RawTracePointContext) -> i32 {
    // sys_enter's arguments: the task's pt_regs, then the call's number.
    let id: u64 = ctx.arg::<u64>(1) & !X32_SYSCALL_BIT;
    if matches!(id, NR_UNSHARE | NR_SETNS | NR_IA32_UNSHARE | NR_IA32_SETNS) {
        count_current_process_change();
    }
    0
}

/// A task exits: once the last one of a process has, its pid can be
/// reused, and a connection it leaves behind (held by a child) must no
/// longer be credited to it. Every exiting task counts, tagged or not, for
/// the reason above.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn warrant_sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    count_current_process_change();
    0
}

/// The prctl watch where the kernel has no BTF for the fentry programs
/// below: the `syscalls:sys_enter_prctl` tracepoint. It sees only the
/// native (64-bit) system call: the kernel skips compat system calls in its
/// syscalls:* tracepoints, so `int $0x80` goes unseen here.
#[tracepoint(category = "syscalls", name = "sys_enter_prctl")]
pub fn warrant_sys_enter_prctl(ctx: TracePointContext) -> u32 {
    // The syscalls:sys_enter_* record: 8 bytes of common fields, the
    // syscall number (padded to 8), then each argument in 8 bytes.
    // Safety: reads within the tracepoint's record.
    let option: u64 = unsafe { ctx.read_at(16) }.unwrap_or(0);
    // Safety: as above.
    let what: u64 = unsafe { ctx.read_at(24) }.unwrap_or(0);
    watch_prctl(option, what, current_task_is_tagged);
    0
}

/// Offsets in x86-64's `struct pt_regs` (arch/x86/include/asm/ptrace.h) of
/// the registers that carry prctl's first two arguments: rdi and rsi for the
/// 64-bit system call, ebx and ecx for the 32-bit one.
const PT_REGS_DI: usize = 14 * 8;
const PT_REGS_SI: usize = 13 * 8;
const PT_REGS_BX: usize = 5 * 8;
const PT_REGS_CX: usize = 11 * 8;

/// One saved register of a system call's `pt_regs` (0 if unreadable, which
/// is no prctl option the watch acts on).
#[inline(always)]
fn syscall_register(regs: *const u8, offset: usize) -> u64 {
    // Safety: `regs` is the kernel's pt_regs pointer passed to a syscall
    // entry point; bpf_probe_read_kernel checks the read.
    unsafe { bpf_probe_read_kernel(regs.wrapping_add(offset) as *const u64) }.unwrap_or(0)
}

/// The prctl watch where the kernel has BTF (the daemon prefers it): fentry
/// on the 64-bit system call's entry point. Needs no perf_event_open.
#[fentry(function = "__x64_sys_prctl")]
pub fn warrant_x64_sys_prctl(ctx: FEntryContext) -> i32 {
    watch_x64_prctl(&ctx, current_task_is_tagged);
    0
}

/// The same for kernels before 5.11 (see [`current_task_is_tagged_compat`]).
#[fentry(function = "__x64_sys_prctl")]
pub fn warrant_x64_sys_prctl_compat(ctx: FEntryContext) -> i32 {
    watch_x64_prctl(&ctx, current_task_is_tagged_compat);
    0
}

#[inline(always)]
fn watch_x64_prctl(ctx: &FEntryContext, tagged: impl Fn() -> bool) {
    let regs: *const u8 = ctx.arg(0);
    watch_prctl(
        syscall_register(regs, PT_REGS_DI),
        syscall_register(regs, PT_REGS_SI),
        tagged,
    );
}

/// The same on the 32-bit entry point, reached by `int $0x80` from any
/// x86-64 process (where the kernel has IA32 emulation), which the
/// tracepoint above cannot see. Arguments are 32 bits wide there.
#[fentry(function = "__ia32_sys_prctl")]
pub fn warrant_ia32_sys_prctl(ctx: FEntryContext) -> i32 {
    watch_ia32_prctl(&ctx, current_task_is_tagged);
    0
}

/// The same for kernels before 5.11 (see [`current_task_is_tagged_compat`]).
#[fentry(function = "__ia32_sys_prctl")]
pub fn warrant_ia32_sys_prctl_compat(ctx: FEntryContext) -> i32 {
    watch_ia32_prctl(&ctx, current_task_is_tagged_compat);
    0
}

#[inline(always)]
fn watch_ia32_prctl(ctx: &FEntryContext, tagged: impl Fn() -> bool) {
    let regs: *const u8 = ctx.arg(0);
    watch_prctl(
        syscall_register(regs, PT_REGS_BX) & 0xffff_ffff,
        syscall_register(regs, PT_REGS_CX) & 0xffff_ffff,
        tagged,
    );
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
