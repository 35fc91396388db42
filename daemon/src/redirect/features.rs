//! What warrant needs from the kernel, in one place: each [`Feature`] the
//! daemon uses, the oldest Linux that has it, how to tell whether the
//! running kernel has it, and what warrant does without it.
//!
//! [`probe`] asks the running kernel, never its version number:
//! distributions backport features and patch others out (Debian keeps
//! perf_event_open from CAP_PERFMON with its perf_event_paranoid of 3). It
//! loads trivial programs and closes them at once (it never attaches one to
//! a cgroup), reads the kernel's BTF, tracefs and resource limits, and
//! returns a [`Report`]: one [`Finding`] per feature, present, degraded or
//! absent, with the reason and, where there is one, the fix.
//!
//! Two kinds of feature:
//! - **required**: fail-closed redirection depends on it (the cgroup
//!   connect, sendmsg and getpeername hooks, sockops, pinnable links, the
//!   helpers the programs call, the exec-done tracepoint, room for the maps).
//!   [`Report::require`] fails, naming each missing one, and the daemon
//!   refuses to start rather than run half-attached;
//! - **optional**: a hook with a fallback (the exec-start stamp, the
//!   prctl(PR_SET_MM) watch). Where no mechanism works the daemon runs
//!   without it, warns at start, and `warrant status` says so.
//!
//! Who does what: this module knows and probes; `redirect` attaches, trying
//! the mechanisms in the order described here, and records what it attached
//! in [`Hooks`]; `warrant status` shows the report and the hooks. [`probe`]
//! needs no daemon (only root, for bpf(2)), for `warrant doctor`.
//!
//! The kernel table in the README is [`readme_table`]'s output (a test
//! keeps them equal), and the VM tests (tests/vm) check the hooks on each
//! kernel of the matrix.

use std::{
    fmt,
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Btf,
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported, is_program_supported},
};
use aya_obj::{
    ProgramSection,
    btf::BtfKind,
    generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_prog_type},
};
use serde::Serialize;

/// Something warrant uses from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// bpf(2) for the daemon's capabilities (CAP_BPF).
    Bpf,
    /// The cgroup v2 hierarchy the programs attach to.
    CgroupV2,
    /// bpffs, where links and maps are pinned.
    Bpffs,
    /// cgroup/connect4 and connect6: the redirect itself.
    ConnectHooks,
    /// cgroup/sendmsg4 and sendmsg6: UDP to intercepted ports (QUIC) refused.
    SendmsgHooks,
    /// cgroup/getpeername4 and getpeername6: agents see what they dialled.
    GetpeernameHooks,
    /// sockops: the Origin re-keyed by the connection's address.
    SockOps,
    /// bpf_link for cgroup programs, pinned so that redirection outlives the
    /// daemon.
    CgroupLinks,
    /// The BPF helpers the programs call, for their program types.
    Helpers,
    /// Tracing programs (exec generations, the prctl watch) tell tagged
    /// tasks apart: bpf_get_current_ancestor_cgroup_id (tracing programs
    /// may call it from 5.11), else a walk of the task's cgroup ancestors at
    /// offsets read from the kernel's BTF.
    TracingTags,
    /// Room for the maps: charged to the memory cgroup (5.11+) or, before,
    /// to RLIMIT_MEMLOCK.
    BpfMemory,
    /// The raw tracepoint `sched_process_exec`: exec generations.
    ExecDone,
    /// The exec generation's stamp before the executable switches.
    ExecStart,
    /// The prctl(PR_SET_MM) watch.
    PrctlWatch,
}

impl Feature {
    /// Every feature, in the order reports list them.
    pub const ALL: &'static [Feature] = &[
        Feature::Bpf,
        Feature::CgroupV2,
        Feature::Bpffs,
        Feature::ConnectHooks,
        Feature::SendmsgHooks,
        Feature::GetpeernameHooks,
        Feature::SockOps,
        Feature::CgroupLinks,
        Feature::Helpers,
        Feature::TracingTags,
        Feature::BpfMemory,
        Feature::ExecDone,
        Feature::ExecStart,
        Feature::PrctlWatch,
    ];

    /// What the feature is, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Feature::Bpf => "bpf(2) with CAP_BPF",
            Feature::CgroupV2 => "cgroup v2",
            Feature::Bpffs => "bpffs (pinned links and maps)",
            Feature::ConnectHooks => "cgroup/connect4, connect6 (the redirect)",
            Feature::SendmsgHooks => "cgroup/sendmsg4, sendmsg6 (QUIC refused)",
            Feature::GetpeernameHooks => "cgroup/getpeername4, getpeername6",
            Feature::SockOps => "sockops (Origin by connection address)",
            Feature::CgroupLinks => "bpf_link for cgroup programs, pinned",
            Feature::Helpers => "the BPF helpers the programs call",
            Feature::TracingTags => "tracing programs find the task's cgroup ancestors",
            Feature::BpfMemory => "memory for the maps",
            Feature::ExecDone => "raw tracepoint sched_process_exec (exec generations)",
            Feature::ExecStart => "exec generation stamped before the executable switches",
            Feature::PrctlWatch => "prctl(PR_SET_MM) watch",
        }
    }

    /// Without it the daemon refuses to start.
    pub fn required(self) -> bool {
        !matches!(self, Feature::ExecStart | Feature::PrctlWatch)
    }

    /// The oldest Linux with the feature (mainline; the mechanisms of the
    /// optional ones in the order the daemon tries them).
    pub fn min_kernel(self) -> &'static str {
        match self {
            Feature::Bpf => "5.8",
            Feature::CgroupV2 => "4.5",
            Feature::Bpffs => "4.4",
            Feature::ConnectHooks => "4.17",
            Feature::SendmsgHooks => "4.18",
            Feature::GetpeernameHooks => "5.8",
            Feature::SockOps => "4.16",
            Feature::CgroupLinks => "5.7",
            Feature::Helpers => "5.8",
            Feature::TracingTags => "5.11; 5.8 with BTF",
            Feature::BpfMemory => "any",
            Feature::ExecDone => "5.7",
            Feature::ExecStart => "6.10; 5.7 with BTF",
            Feature::PrctlWatch => "5.7 with BTF; 5.15",
        }
    }

    /// What the daemon does on a kernel without it (the README's table).
    pub fn without(self) -> &'static str {
        match self {
            Feature::Bpf => "refuses to start",
            Feature::CgroupV2 => "refuses to start",
            Feature::Bpffs => "mounts it at /sys/fs/bpf, or refuses to start",
            Feature::ConnectHooks => "refuses to start",
            Feature::SendmsgHooks => "refuses to start",
            Feature::GetpeernameHooks => "refuses to start",
            Feature::SockOps => "refuses to start",
            Feature::CgroupLinks => "refuses to start",
            Feature::Helpers => "refuses to start, naming the helper",
            Feature::TracingTags => {
                "before 5.11 the tracing programs walk `current->cgroups->dfl_cgrp->ancestor_ids` at offsets from the kernel's BTF; without BTF, refuses to start"
            }
            Feature::BpfMemory => {
                "before 5.11 the maps are charged to RLIMIT_MEMLOCK: the unit sets LimitMEMLOCK=infinity; too low a limit refuses to start"
            }
            Feature::ExecDone => "refuses to start",
            Feature::ExecStart => {
                "`sched_prepare_exec` (6.10+), else fentry on `begin_new_exec`; with neither, warns and the generation moves only after the exec (Known limits)"
            }
            Feature::PrctlWatch => {
                "fentry on the 64- and 32-bit syscall entries; without BTF the `syscalls:sys_enter_prctl` tracepoint (5.15+, perf_event_paranoid <= 2; misses `int $0x80`); with neither, warns and runs without the watch"
            }
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// How the kernel has a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Present,
    /// Through a fallback that covers less (the finding says what).
    Degraded,
    Absent,
    /// Could not be probed (no permission for bpf(2), a binary built
    /// without its programs, an unexpected error).
    Unknown,
}

/// What [`probe`] found about one feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub feature: Feature,
    pub state: State,
    pub required: bool,
    /// The mechanism that provides it, when there are several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Why: what was found, or what is missing.
    pub detail: String,
    /// What would make it present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    pub min_kernel: &'static str,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (Linux {}): {:?}",
            self.feature,
            self.feature.min_kernel(),
            self.state
        )?;
        if let Some(via) = &self.via {
            write!(f, " via {via}")?;
        }
        write!(f, ": {}", self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

/// The kernel's features, as [`probe`] found them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `uname -r`.
    pub release: String,
    pub findings: Vec<Finding>,
}

/// The kernel lacks something fail-closed redirection needs.
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel ({release}) lacks what warrant's fail-closed redirection needs; not starting:\n  {}",
    .missing.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")
)]
pub struct MissingFeatures {
    pub release: String,
    pub missing: Vec<Finding>,
}

impl Report {
    pub fn get(&self, feature: Feature) -> Option<&Finding> {
        self.findings.iter().find(|f| f.feature == feature)
    }

    /// Fails when a required feature is absent. Features that could not be
    /// probed do not block: attaching them is the final test, and its
    /// failure stops the daemon too.
    pub fn require(&self) -> Result<(), MissingFeatures> {
        let missing: Vec<Finding> = self
            .findings
            .iter()
            .filter(|f| f.required && f.state == State::Absent)
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(MissingFeatures {
                release: self.release.clone(),
                missing,
            })
        }
    }

    /// Findings that are not simply present, for a warning at start.
    pub fn concerns(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.state != State::Present)
    }

    /// Classifies raw observations (the unprivileged seam: tests feed
    /// observations, [`probe`] gathers real ones).
    pub fn from_observations(obs: &Observations) -> Report {
        let findings = Feature::ALL
            .iter()
            .map(|&feature| classify(feature, obs))
            .collect();
        Report {
            release: obs.release.clone(),
            findings,
        }
    }
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Check {
    Yes,
    No(String),
    #[default]
    NotProbed,
    Unknown(String),
}

impl Check {
    fn yes(&self) -> bool {
        matches!(self, Check::Yes)
    }
}

/// One helper call found in the programs and whether the kernel allows it
/// for that program type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperCheck {
    /// The kind of program making the call ("cgroup/sock_addr", ...).
    pub program: &'static str,
    /// `bpf_get_current_ancestor_cgroup_id`, ...
    pub helper: String,
    pub check: Check,
}

/// Raw facts about the running kernel, gathered by [`observe`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observations {
    pub release: String,
    /// A trivial socket filter loads.
    pub bpf: Check,
    pub cgroup2: Option<PathBuf>,
    /// The pin directory is on a mounted bpffs.
    pub bpffs: bool,
    /// cgroup/sock_addr programs load for these attach types.
    pub connect: [Check; 2],
    pub sendmsg: [Check; 2],
    pub getpeername: [Check; 2],
    pub sockops: Check,
    /// BPF_LINK_CREATE accepts a cgroup attach type.
    pub cgroup_link: Check,
    /// Every helper call of the embedded programs; None when the binary
    /// was built without them.
    pub helpers: Option<Vec<HelperCheck>>,
    pub raw_tracepoint: Check,
    /// Tracing programs may call bpf_get_current_ancestor_cgroup_id.
    pub tracing_ancestor_helper: Check,
    /// The offsets of the cgroup ancestor walk are in the kernel's BTF.
    pub cgroup_layout: Check,
    /// The kernel's BTF (/sys/kernel/btf/vmlinux) parses.
    pub btf: Check,
    /// fentry programs load and attach (BPF trampolines).
    pub fentry: Check,
    pub prepare_exec_tracepoint: bool,
    pub begin_new_exec: bool,
    pub prctl_x64: bool,
    pub prctl_ia32: bool,
    pub prctl_tracepoint: bool,
    /// BPF_LINK_CREATE accepts perf events (tracepoints as pinnable links).
    pub perf_link: Check,
    pub perf_event_paranoid: Option<i32>,
    /// Maps are charged to the memory cgroup (Linux 5.11+), not to
    /// RLIMIT_MEMLOCK.
    pub memcg_accounting: Check,
    /// The RLIMIT_MEMLOCK this process can raise itself to (bytes; None:
    /// unlimited).
    pub memlock_reachable: Option<u64>,
    /// About how many bytes of locked memory the maps take.
    pub maps_bytes: u64,
}

fn finding(feature: Feature, state: State, detail: impl Into<String>) -> Finding {
    Finding {
        feature,
        state,
        required: feature.required(),
        via: None,
        detail: detail.into(),
        fix: None,
        min_kernel: feature.min_kernel(),
    }
}

impl Finding {
    fn via(mut self, via: impl Into<String>) -> Finding {
        self.via = Some(via.into());
        self
    }

    fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

/// Present when every check passed; absent when one says no; unknown
/// otherwise (naming each check that did not pass).
fn all_of(feature: Feature, checks: &[(&str, &Check)], fix: &str) -> Finding {
    let mut absent = Vec::new();
    let mut unknown = Vec::new();
    for (name, check) in checks {
        match check {
            Check::Yes => {}
            Check::No(why) => absent.push(format!("{name}: {why}")),
            Check::Unknown(why) => unknown.push(format!("{name}: {why}")),
            Check::NotProbed => unknown.push(format!("{name}: not probed")),
        }
    }
    if !absent.is_empty() {
        finding(feature, State::Absent, absent.join("; ")).fix(fix)
    } else if !unknown.is_empty() {
        finding(feature, State::Unknown, unknown.join("; "))
    } else {
        let names: Vec<&str> = checks.iter().map(|(name, _)| *name).collect();
        finding(
            feature,
            State::Present,
            format!("{} load", names.join(", ")),
        )
    }
}

const NEWER_KERNEL: &str = "a newer kernel";

fn classify(feature: Feature, obs: &Observations) -> Finding {
    match feature {
        Feature::Bpf => bpf(obs),
        Feature::CgroupV2 => cgroup_v2(obs),
        Feature::Bpffs => bpffs(obs),
        Feature::ConnectHooks => all_of(
            feature,
            &[
                ("cgroup/connect4", &obs.connect[0]),
                ("cgroup/connect6", &obs.connect[1]),
            ],
            NEWER_KERNEL,
        ),
        Feature::SendmsgHooks => all_of(
            feature,
            &[
                ("cgroup/sendmsg4", &obs.sendmsg[0]),
                ("cgroup/sendmsg6", &obs.sendmsg[1]),
            ],
            NEWER_KERNEL,
        ),
        Feature::GetpeernameHooks => all_of(
            feature,
            &[
                ("cgroup/getpeername4", &obs.getpeername[0]),
                ("cgroup/getpeername6", &obs.getpeername[1]),
            ],
            NEWER_KERNEL,
        ),
        Feature::SockOps => all_of(feature, &[("sockops", &obs.sockops)], NEWER_KERNEL),
        Feature::CgroupLinks => cgroup_links(obs),
        Feature::Helpers => helpers(obs),
        Feature::TracingTags => tracing_tags(obs),
        Feature::BpfMemory => bpf_memory(obs),
        Feature::ExecDone => all_of(
            feature,
            &[("raw tracepoint programs", &obs.raw_tracepoint)],
            NEWER_KERNEL,
        ),
        Feature::ExecStart => exec_start(obs),
        Feature::PrctlWatch => prctl_watch(obs),
    }
}

fn bpf(obs: &Observations) -> Finding {
    let feature = Feature::Bpf;
    match &obs.bpf {
        Check::Yes => finding(feature, State::Present, "a socket filter loads"),
        Check::No(why) => finding(feature, State::Absent, why.clone()).fix(
            "run as root, or in warrant.service (CAP_BPF needs Linux 5.8+; before, bpf(2) needs CAP_SYS_ADMIN)",
        ),
        other => finding(feature, State::Unknown, format!("{other:?}")),
    }
}

fn cgroup_v2(obs: &Observations) -> Finding {
    let feature = Feature::CgroupV2;
    match &obs.cgroup2 {
        Some(path) => finding(
            feature,
            State::Present,
            format!("mounted at {}", path.display()),
        ),
        None => finding(feature, State::Absent, "no cgroup2 filesystem is mounted")
            .fix("boot with systemd's unified hierarchy (systemd.unified_cgroup_hierarchy=1)"),
    }
}

fn bpffs(obs: &Observations) -> Finding {
    let feature = Feature::Bpffs;
    if obs.bpffs {
        return finding(feature, State::Present, "the pin directory is on bpffs");
    }
    finding(
        feature,
        State::Degraded,
        "the pin directory is not on a mounted bpffs: the daemon mounts one at /sys/fs/bpf at start (systemd does at boot)",
    )
    .fix("mount -t bpf bpf /sys/fs/bpf")
}

fn cgroup_links(obs: &Observations) -> Finding {
    let feature = Feature::CgroupLinks;
    match &obs.cgroup_link {
        Check::Yes => finding(
            feature,
            State::Present,
            "BPF_LINK_CREATE takes cgroup attach types",
        ),
        Check::No(why) => finding(feature, State::Absent, why.clone()).fix(NEWER_KERNEL),
        Check::Unknown(why) => finding(feature, State::Unknown, why.clone()),
        Check::NotProbed => finding(feature, State::Unknown, "not probed"),
    }
}

fn helpers(obs: &Observations) -> Finding {
    let feature = Feature::Helpers;
    let Some(helpers) = &obs.helpers else {
        return finding(
            feature,
            State::Unknown,
            "this binary was built without its eBPF programs (AYA_BUILD_SKIP)",
        );
    };
    // Tracing programs that may not call the ancestor helper have their
    // fallback: see Feature::TracingTags.
    let helpers: Vec<&HelperCheck> = helpers
        .iter()
        .filter(|h| !(h.helper == ANCESTOR_HELPER && TRACING_KINDS.contains(&h.program)))
        .collect();
    let named: Vec<(String, &Check)> = helpers
        .iter()
        .map(|h| (format!("{} in {} programs", h.helper, h.program), &h.check))
        .collect();
    let checks: Vec<(&str, &Check)> = named.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let mut found = all_of(feature, &checks, NEWER_KERNEL);
    if found.state == State::Present {
        found.detail = format!("all {} helper calls are allowed", helpers.len());
    }
    found
}

/// The helper whose absence from tracing programs (before 5.11) the compat
/// programs work around, and the program kinds concerned.
const ANCESTOR_HELPER: &str = "bpf_get_current_ancestor_cgroup_id";
const TRACING_KINDS: &[&str] = &["raw tracepoint", "fentry", "tracepoint"];

fn tracing_tags(obs: &Observations) -> Finding {
    let feature = Feature::TracingTags;
    match (&obs.tracing_ancestor_helper, &obs.cgroup_layout) {
        (Check::Yes, _) => finding(
            feature,
            State::Present,
            "tracing programs may call bpf_get_current_ancestor_cgroup_id",
        )
        .via(TAGS_VIA_HELPER),
        (Check::No(why), Check::Yes) => finding(
            feature,
            State::Present,
            format!(
                "tracing programs walk current->cgroups->dfl_cgrp->ancestor_ids at offsets from the kernel's BTF (the helper: {why})"
            ),
        )
        .via(TAGS_VIA_BTF_WALK),
        (Check::No(helper), layout) => finding(
            feature,
            State::Absent,
            format!(
                "tracing programs may not call bpf_get_current_ancestor_cgroup_id ({helper}), and the ancestor walk's offsets are not in the kernel's BTF ({layout:?})"
            ),
        )
        .fix("a kernel with BTF (CONFIG_DEBUG_INFO_BTF), or Linux 5.11+"),
        (other, _) => finding(feature, State::Unknown, format!("{other:?}")),
    }
}

fn bpf_memory(obs: &Observations) -> Finding {
    let feature = Feature::BpfMemory;
    let need = obs.maps_bytes;
    match &obs.memcg_accounting {
        Check::Yes => finding(
            feature,
            State::Present,
            "maps are charged to the memory cgroup",
        )
        .via(MEMORY_VIA_MEMCG),
        Check::No(_) => match obs.memlock_reachable {
            None => finding(
                feature,
                State::Present,
                "maps are charged to RLIMIT_MEMLOCK (before Linux 5.11), which is unlimited",
            )
            .via(MEMORY_VIA_MEMLOCK),
            Some(limit) if limit >= need => finding(
                feature,
                State::Present,
                format!(
                    "maps are charged to RLIMIT_MEMLOCK (before Linux 5.11): {} KiB reachable, about {} KiB needed",
                    limit / 1024,
                    need / 1024
                ),
            )
            .via(MEMORY_VIA_MEMLOCK),
            Some(limit) => finding(
                feature,
                State::Absent,
                format!(
                    "maps are charged to RLIMIT_MEMLOCK on this kernel (before Linux 5.11): {} KiB reachable, about {} KiB needed",
                    limit / 1024,
                    need / 1024
                ),
            )
            .fix("LimitMEMLOCK=infinity in warrant.service (the shipped unit sets it), or run as root"),
        },
        other => finding(feature, State::Unknown, format!("{other:?}")),
    }
}

/// The fentry mechanisms need the kernel's BTF and BPF trampolines.
fn fentry_unavailable(obs: &Observations) -> Option<String> {
    match (&obs.btf, &obs.fentry) {
        (Check::Yes, Check::Yes) => None,
        (Check::Yes, other) => Some(format!("fentry programs cannot attach: {other:?}")),
        (other, _) => Some(format!("no kernel BTF: {other:?}")),
    }
}

fn exec_start(obs: &Observations) -> Finding {
    let feature = Feature::ExecStart;
    if obs.prepare_exec_tracepoint && obs.raw_tracepoint.yes() {
        return finding(feature, State::Present, "at the exec's point of no return")
            .via(EXEC_START_VIA_TRACEPOINT);
    }
    let why = match fentry_unavailable(obs) {
        None if obs.begin_new_exec => {
            return finding(
                feature,
                State::Present,
                "on entry to begin_new_exec (no sched_prepare_exec tracepoint before Linux 6.10)",
            )
            .via(EXEC_START_VIA_FENTRY);
        }
        None => "the kernel's BTF has no begin_new_exec".to_owned(),
        Some(why) => why,
    };
    finding(
        feature,
        State::Absent,
        format!(
            "neither sched_prepare_exec nor an fentry on begin_new_exec ({why}): generations move only once an exec has succeeded"
        ),
    )
    .fix("a kernel with BTF (CONFIG_DEBUG_INFO_BTF), or Linux 6.10+")
}

fn prctl_watch(obs: &Observations) -> Finding {
    let feature = Feature::PrctlWatch;
    let fentry_why = match fentry_unavailable(obs) {
        None if obs.prctl_x64 => {
            return if obs.prctl_ia32 {
                finding(
                    feature,
                    State::Present,
                    "64-bit and 32-bit (int $0x80) calls",
                )
                .via(PRCTL_VIA_FENTRY_BOTH)
            } else {
                finding(
                    feature,
                    State::Present,
                    "64-bit calls (this kernel has no 32-bit entry point)",
                )
                .via(PRCTL_VIA_FENTRY_X64)
            };
        }
        None => "the kernel's BTF has no __x64_sys_prctl (not x86-64?)".to_owned(),
        Some(why) => why,
    };
    if !obs.prctl_tracepoint {
        return finding(
            feature,
            State::Absent,
            format!(
                "no fentry ({fentry_why}) and no syscalls:sys_enter_prctl tracepoint in tracefs"
            ),
        )
        .fix("a kernel with BTF (CONFIG_DEBUG_INFO_BTF)");
    }
    if !obs.perf_link.yes() {
        return finding(
            feature,
            State::Absent,
            format!("no fentry ({fentry_why}), and tracepoints cannot be pinned as links before Linux 5.15"),
        )
        .fix("a kernel with BTF (CONFIG_DEBUG_INFO_BTF), or Linux 5.15+");
    }
    if obs.perf_event_paranoid.is_some_and(|p| p > 2) {
        return finding(
            feature,
            State::Absent,
            format!(
                "no fentry ({fentry_why}), and kernel.perf_event_paranoid = {} keeps perf_event_open from CAP_PERFMON (a Debian patch)",
                obs.perf_event_paranoid.unwrap_or(3)
            ),
        )
        .fix("sysctl kernel.perf_event_paranoid=2 (in /etc/sysctl.d/), or a kernel with BTF");
    }
    finding(
        feature,
        State::Degraded,
        format!("64-bit calls only: the syscall tracepoints skip 32-bit (int $0x80) calls; no fentry ({fentry_why})"),
    )
    .via(PRCTL_VIA_TRACEPOINT)
    .fix("a kernel with BTF (CONFIG_DEBUG_INFO_BTF)")
}

/// The mechanisms of the optional hooks, as [`Hooks`] and [`Finding::via`]
/// name them.
pub const EXEC_START_VIA_TRACEPOINT: &str = "sched_prepare_exec";
pub const EXEC_START_VIA_FENTRY: &str = "fentry:begin_new_exec";
pub const EXEC_DONE_VIA: &str = "sched_process_exec";
pub const IDENTITY_WATCH_VIA_FENTRY: &str = "fentry:commit_creds+sched_process_exit";
pub const IDENTITY_WATCH_VIA_SYS_ENTER: &str = "sys_enter(unshare,setns)+sched_process_exit";
pub const PRCTL_VIA_FENTRY_BOTH: &str = "fentry:__x64_sys_prctl+__ia32_sys_prctl";
pub const PRCTL_VIA_FENTRY_X64: &str = "fentry:__x64_sys_prctl";
pub const PRCTL_VIA_TRACEPOINT: &str = "tracepoint:syscalls:sys_enter_prctl";
/// How the tracing programs tell tagged tasks ([`Feature::TracingTags`]).
pub const TAGS_VIA_HELPER: &str = "bpf_get_current_ancestor_cgroup_id";
pub const TAGS_VIA_BTF_WALK: &str = "btf:task->cgroups->dfl_cgrp->ancestor_ids";
/// How the kernel accounts for the maps' memory ([`Feature::BpfMemory`]).
pub const MEMORY_VIA_MEMCG: &str = "memcg";
pub const MEMORY_VIA_MEMLOCK: &str = "RLIMIT_MEMLOCK";

/// What the running daemon attached for each hook with a choice of
/// mechanisms (`redirect` fills it; `warrant status` shows it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Hooks {
    pub exec_start: Hook,
    pub exec_done: Hook,
    pub prctl_watch: Hook,
    /// How those tracing programs tell tagged tasks apart.
    pub tracing_tags: Hook,
    /// The programs that count credential changes and exits, with which
    /// a request is attested from memory (`redirect::changes`).
    pub identity_watch: Hook,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Hook {
    pub attached: bool,
    /// The mechanism (one of the `*_VIA_*` names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'static str>,
    /// Why it is missing or degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Hook {
    pub fn attached(via: &'static str) -> Hook {
        Hook {
            attached: true,
            via: Some(via),
            note: None,
        }
    }

    pub fn degraded(via: &'static str, note: impl Into<String>) -> Hook {
        Hook {
            attached: true,
            via: Some(via),
            note: Some(note.into()),
        }
    }

    pub fn missing(note: impl Into<String>) -> Hook {
        Hook {
            attached: false,
            via: None,
            note: Some(note.into()),
        }
    }
}

/// Where [`probe`] looks.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// `[daemon] bpf_pin_dir`: is it on a bpffs?
    pub pin_dir: PathBuf,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            pin_dir: PathBuf::from("/sys/fs/bpf/warrant"),
        }
    }
}

/// Probes the running kernel (see the module's comment). Needs root (or
/// CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) for an answer on the BPF
/// features; without them those are [`State::Absent`] ("not permitted").
pub fn probe(options: &ProbeOptions) -> Report {
    Report::from_observations(&observe(options))
}

/// The README's table of features: one row per feature, generated here so
/// that it cannot drift from what the daemon does (a test compares them).
pub fn readme_table() -> String {
    let mut out =
        String::from("| feature | needs Linux | on an older kernel, warrant |\n|---|---|---|\n");
    for feature in Feature::ALL {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            feature.describe(),
            feature.min_kernel(),
            feature.without()
        ));
    }
    out
}

/// Gathers the raw facts [`probe`] classifies.
pub fn observe(options: &ProbeOptions) -> Observations {
    let mut obs = Observations {
        release: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        cgroup2: crate::mounts::cgroup2().ok(),
        bpffs: on_bpffs(&options.pin_dir),
        ..Observations::default()
    };
    let object = EmbeddedPrograms::parse();
    obs.maps_bytes = object.as_ref().map_or(0, EmbeddedPrograms::maps_bytes);

    obs.bpf = load_check(bpf_prog_type::BPF_PROG_TYPE_SOCKET_FILTER, None, 0).check;
    observe_cgroup_hooks(&mut obs);
    if !obs.bpf.yes() {
        return obs;
    }
    obs.sockops = load_check(bpf_prog_type::BPF_PROG_TYPE_SOCK_OPS, None, 0).check;
    obs.raw_tracepoint = load_check(bpf_prog_type::BPF_PROG_TYPE_RAW_TRACEPOINT, None, 0).check;
    let tracepoint = load_check(bpf_prog_type::BPF_PROG_TYPE_TRACEPOINT, None, 0);
    obs.perf_link = match &tracepoint.fd {
        Some(fd) => link_check(fd, bpf_attach_type::BPF_PERF_EVENT),
        None => Check::NotProbed,
    };
    obs.helpers = object.as_ref().map(EmbeddedPrograms::helper_checks);
    obs.tracing_ancestor_helper = tracing_ancestor_helper();
    if !obs.tracing_ancestor_helper.yes() {
        // Parsing the whole BTF again costs time; only where it is needed.
        obs.cgroup_layout = match cgroup_layout() {
            Ok(_) => Check::Yes,
            Err(why) => Check::No(why.to_string()),
        };
    }
    obs.memcg_accounting = match is_helper_supported(
        ProgramType::SocketFilter,
        BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
    ) {
        // bpf_ktime_get_coarse_ns came in the release (5.11) that moved BPF
        // memory to the memory cgroup: libbpf's proxy for the change.
        Ok(true) => Check::Yes,
        Ok(false) => Check::No("bpf_ktime_get_coarse_ns is missing: Linux < 5.11".into()),
        Err(e) => Check::Unknown(crate::error::chain(&e)),
    };
    obs.memlock_reachable = memlock_reachable();
    observe_exec_hooks(&mut obs);
    obs.perf_event_paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    obs
}

/// The cgroup socket hooks: each attach type loaded (when bpf(2) is allowed
/// at all: whatever it refuses for lack of privilege, the rest cannot tell)
/// and whether cgroup links can be made.
fn observe_cgroup_hooks(obs: &mut Observations) {
    let bpf_ok = obs.bpf.yes();
    let sock_addr = |attach: bpf_attach_type| {
        if bpf_ok {
            load_check(
                bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                Some(attach),
                1,
            )
        } else {
            ProgCheck::not_probed()
        }
    };
    let connect4 = sock_addr(bpf_attach_type::BPF_CGROUP_INET4_CONNECT);
    obs.cgroup_link = match &connect4.fd {
        Some(fd) => link_check(fd, bpf_attach_type::BPF_CGROUP_INET4_CONNECT),
        None => Check::NotProbed,
    };
    obs.connect = [
        connect4.check,
        sock_addr(bpf_attach_type::BPF_CGROUP_INET6_CONNECT).check,
    ];
    obs.sendmsg = [
        sock_addr(bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG).check,
        sock_addr(bpf_attach_type::BPF_CGROUP_UDP6_SENDMSG).check,
    ];
    obs.getpeername = [
        sock_addr(bpf_attach_type::BPF_CGROUP_INET4_GETPEERNAME).check,
        sock_addr(bpf_attach_type::BPF_CGROUP_INET6_GETPEERNAME).check,
    ];
}

/// The kernel's BTF and the exec and prctl hooks it allows.
fn observe_exec_hooks(obs: &mut Observations) {
    match Btf::from_sys_fs() {
        Ok(btf) => {
            obs.btf = Check::Yes;
            let has = |name: &str, kind: BtfKind| btf.id_by_type_name_kind(name, kind).is_ok();
            // Raw tracepoints have a `btf_trace_<name>` typedef.
            obs.prepare_exec_tracepoint = has("btf_trace_sched_prepare_exec", BtfKind::Typedef);
            obs.begin_new_exec = has("begin_new_exec", BtfKind::Func);
            obs.prctl_x64 = has("__x64_sys_prctl", BtfKind::Func);
            obs.prctl_ia32 = has("__ia32_sys_prctl", BtfKind::Func);
        }
        Err(e) => obs.btf = Check::No(crate::error::chain(&e)),
    }
    obs.prepare_exec_tracepoint |= tracefs_has("events/sched/sched_prepare_exec");
    obs.prctl_tracepoint = tracefs_has("events/syscalls/sys_enter_prctl");
    obs.fentry = if obs.btf.yes() {
        match is_program_supported(ProgramType::Tracing) {
            Ok(true) => Check::Yes,
            Ok(false) => Check::No("BPF trampolines are not supported".into()),
            Err(e) => Check::Unknown(crate::error::chain(&e)),
        }
    } else {
        Check::NotProbed
    };
}

/// Whether tracing programs may call bpf_get_current_ancestor_cgroup_id
/// (Linux 5.11+); the redirector picks the `_compat` programs when not.
pub fn tracing_ancestor_helper() -> Check {
    match is_helper_supported(
        ProgramType::RawTracePoint,
        BpfHelper::BPF_FUNC_get_current_ancestor_cgroup_id,
    ) {
        Ok(true) => Check::Yes,
        Ok(false) => Check::No("not allowed in tracing programs before Linux 5.11".into()),
        Err(e) => Check::Unknown(crate::error::chain(&e)),
    }
}

/// The kernel's BTF has no offsets for the cgroup ancestor walk.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the cgroup ancestor walk: {0}")]
pub struct LayoutError(String);

/// The offsets of `current->cgroups->dfl_cgrp->ancestor_ids` in the running
/// kernel, from its BTF (see [`warrant_common::CgroupLayout`]). Kernels
/// from 6.1 name the array `ancestors` and hold pointers there: they need
/// no walk (their tracing programs have the helper), and are refused here.
/// Parsed once per process (the whole BTF is read; the kernel's does not
/// change while it runs).
pub fn cgroup_layout() -> Result<warrant_common::CgroupLayout, LayoutError> {
    static LAYOUT: std::sync::OnceLock<Result<warrant_common::CgroupLayout, LayoutError>> =
        std::sync::OnceLock::new();
    LAYOUT.get_or_init(read_cgroup_layout).clone()
}

fn read_cgroup_layout() -> Result<warrant_common::CgroupLayout, LayoutError> {
    let bytes = std::fs::read("/sys/kernel/btf/vmlinux")
        .map_err(|e| LayoutError(format!("/sys/kernel/btf/vmlinux: {e}")))?;
    let types = btfparse::TypeInformation::new(&BtfBytes(&bytes))
        .map_err(|e| LayoutError(format!("parsing the kernel's BTF: {e:?}")))?;
    let offset = |ty: &str, member: &str| -> Result<u32, LayoutError> {
        let id = types
            .id_of(ty)
            .ok_or_else(|| LayoutError(format!("no struct {ty} in the kernel's BTF")))?;
        match types.offset_of(id, member) {
            Ok((_, btfparse::Offset::ByteOffset(offset))) => Ok(offset),
            Ok((_, other)) => Err(LayoutError(format!(
                "{ty}.{member} is a bitfield ({other:?})"
            ))),
            Err(e) => Err(LayoutError(format!("{ty}.{member}: {e:?}"))),
        }
    };
    Ok(warrant_common::CgroupLayout {
        task_cgroups: offset("task_struct", "cgroups")?,
        css_set_dfl_cgrp: offset("css_set", "dfl_cgrp")?,
        cgroup_level: offset("cgroup", "level")?,
        cgroup_ancestor_ids: offset("cgroup", "ancestor_ids")?,
    })
}

/// The kernel's BTF, for btfparse.
struct BtfBytes<'a>(&'a [u8]);

impl btfparse::Readable for BtfBytes<'_> {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
        {
            Some(bytes) => {
                buffer.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(btfparse::Error::new(
                btfparse::ErrorKind::EOF,
                "read past the end of the BTF",
            )),
        }
    }
}

/// Raises RLIMIT_MEMLOCK as far as this process may (unlimited with
/// CAP_SYS_RESOURCE, else to the hard limit): before Linux 5.11 the maps
/// are charged to it. Returns the soft limit now in force (None: unlimited).
pub fn lift_memlock_limit() -> Option<u64> {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};
    if setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_err()
        && let Ok((_, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK)
    {
        let _ = setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard);
    }
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft != RLIM_INFINITY => Some(soft),
        _ => None,
    }
}

/// The RLIMIT_MEMLOCK this process can reach (see [`lift_memlock_limit`]).
fn memlock_reachable() -> Option<u64> {
    use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
    if has_effective_capability(CAP_SYS_RESOURCE) {
        return None;
    }
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((_, hard)) if hard != RLIM_INFINITY => Some(hard),
        Ok(_) => None,
        Err(_) => Some(0),
    }
}

const CAP_SYS_RESOURCE: u32 = 24;

/// Reads CapEff from /proc/self/status.
fn has_effective_capability(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

fn on_bpffs(pin_dir: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| super::bpffs::on_bpffs(&m, pin_dir))
}

fn tracefs_has(path: &str) -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|root| Path::new(root).join(path).exists())
}

/// A program-load probe's outcome, with the loaded program when it loaded
/// (a link probe needs one).
struct ProgCheck {
    check: Check,
    fd: Option<OwnedFd>,
}

impl ProgCheck {
    fn not_probed() -> ProgCheck {
        ProgCheck {
            check: Check::NotProbed,
            fd: None,
        }
    }
}

/// Loads `r0 = ret; exit` as a program of `prog_type` (and expected attach
/// type): the kernel refuses a type or attach type it does not know with
/// EINVAL, and any load without the privilege with EPERM.
fn load_check(prog_type: bpf_prog_type, attach: Option<bpf_attach_type>, ret: i32) -> ProgCheck {
    match prog_load(prog_type, attach, ret) {
        Ok(fd) => ProgCheck {
            check: Check::Yes,
            fd: Some(fd),
        },
        Err(e) => ProgCheck {
            check: match e.raw_os_error() {
                Some(libc::EINVAL) | Some(libc::E2BIG) => {
                    Check::No(format!("the kernel refuses it ({e})"))
                }
                Some(libc::EPERM) | Some(libc::EACCES) => Check::No(format!(
                    "bpf(2) not permitted ({e}): needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or root"
                )),
                _ => Check::Unknown(e.to_string()),
            },
            fd: None,
        },
    }
}

/// BPF_LINK_CREATE for `prog` with an invalid target fd: a kernel that
/// knows links for this attach type looks the target up and answers EBADF;
/// one that does not rejects the command or the attach type first (EINVAL).
/// No link is ever made. (libbpf probes perf links the same way.)
fn link_check(prog: &OwnedFd, attach: bpf_attach_type) -> Check {
    use std::os::fd::AsRawFd as _;
    // Safety: an all-zero bpf_attr is the documented "no options" value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // The link_create member, the one BPF_LINK_CREATE reads (writes to
    // union fields are plain stores).
    attr.link_create.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    attr.link_create.__bindgen_anon_2.target_fd = u32::MAX;
    attr.link_create.attach_type = attach as u32;
    match sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr) {
        Ok(fd) => {
            // Unexpected: nothing to attach to. Close what was made.
            // Safety: the kernel returned a new fd that we own.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            Check::Yes
        }
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Check::Yes,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            Check::No(format!("BPF_LINK_CREATE refuses this attach type ({e})"))
        }
        Err(e) => Check::Unknown(e.to_string()),
    }
}

/// One instruction of a probe program (struct bpf_insn): no register
/// fields are set, so the bitfield's layout does not matter.
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// BPF_ALU64 | BPF_MOV | BPF_K: r0 = imm.
const MOV64_R0_IMM: u8 = 0xb7;
/// BPF_JMP | BPF_EXIT.
const EXIT: u8 = 0x95;

fn prog_load(
    prog_type: bpf_prog_type,
    attach: Option<bpf_attach_type>,
    ret: i32,
) -> std::io::Result<OwnedFd> {
    let insns = [
        Insn {
            code: MOV64_R0_IMM,
            regs: 0,
            off: 0,
            imm: ret,
        },
        Insn {
            code: EXIT,
            regs: 0,
            off: 0,
            imm: 0,
        },
    ];
    let license = c"GPL";
    // Safety: an all-zero bpf_attr is the documented "no options" value.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // Safety: writing plain integer fields of the program-load member, the
    // one BPF_PROG_LOAD reads; the pointers stay valid during the call.
    unsafe {
        let load = &mut attr.__bindgen_anon_3;
        load.prog_type = prog_type as u32;
        load.insn_cnt = insns.len() as u32;
        load.insns = insns.as_ptr() as u64;
        load.license = license.as_ptr() as u64;
        if let Some(attach) = attach {
            load.expected_attach_type = attach as u32;
        }
    }
    let fd = sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)?;
    // Safety: the kernel returned a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<i32> {
    // Safety: bpf(2) reads (and for some commands writes) `attr`, whose
    // full size is passed; the kernel checks that bytes it does not know
    // are zero.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        i32::try_from(ret).map_err(|_| std::io::Error::other("bpf(2) returned an invalid fd"))
    }
}

/// The helpers warrant's programs call: the table [`probe`] recognises in
/// the embedded object (a unit test fails when a program calls one that is
/// missing here).
const KNOWN_HELPERS: &[BpfHelper] = &[
    BpfHelper::BPF_FUNC_map_lookup_elem,
    BpfHelper::BPF_FUNC_map_update_elem,
    BpfHelper::BPF_FUNC_map_delete_elem,
    BpfHelper::BPF_FUNC_get_current_pid_tgid,
    BpfHelper::BPF_FUNC_get_current_uid_gid,
    BpfHelper::BPF_FUNC_get_current_cgroup_id,
    BpfHelper::BPF_FUNC_get_current_ancestor_cgroup_id,
    BpfHelper::BPF_FUNC_get_current_task,
    BpfHelper::BPF_FUNC_get_socket_cookie,
    BpfHelper::BPF_FUNC_ktime_get_boot_ns,
    BpfHelper::BPF_FUNC_sock_ops_cb_flags_set,
    BpfHelper::BPF_FUNC_probe_read_kernel,
    BpfHelper::BPF_FUNC_probe_read,
];

fn helper_name(helper: BpfHelper) -> String {
    let debug = format!("{helper:?}");
    format!(
        "bpf_{}",
        debug.strip_prefix("BPF_FUNC_").unwrap_or(debug.as_str())
    )
}

/// The embedded eBPF object, parsed for what it asks of the kernel.
struct EmbeddedPrograms {
    object: aya_obj::Object,
}

/// BPF_JMP | BPF_CALL; a helper call has src_reg 0 (1 calls a subprogram,
/// 2 a kfunc).
const CALL: u8 = 0x85;

impl EmbeddedPrograms {
    fn parse() -> Option<EmbeddedPrograms> {
        let bytes = super::EBPF_OBJECT;
        if bytes.is_empty() {
            return None;
        }
        aya_obj::Object::parse(bytes)
            .ok()
            .map(|object| EmbeddedPrograms { object })
    }

    /// (program kind, helper id) of every helper call, deduplicated.
    fn helper_calls(&self) -> Vec<(&'static str, ProgramType, i32)> {
        let mut calls = Vec::new();
        for program in self.object.programs.values() {
            let Some((kind, program_type)) = program_kind(&program.section) else {
                continue;
            };
            let Some(function) = self.object.functions.get(&program.function_key()) else {
                continue;
            };
            for insn in &function.instructions {
                if insn.code == CALL && insn.src_reg() == 0 {
                    let call = (kind, program_type, insn.imm);
                    if !calls.contains(&call) {
                        calls.push(call);
                    }
                }
            }
        }
        calls
    }

    fn helper_checks(&self) -> Vec<HelperCheck> {
        self.helper_calls()
            .into_iter()
            .map(|(program, program_type, id)| {
                match KNOWN_HELPERS.iter().find(|h| **h as i32 == id) {
                    Some(&helper) => HelperCheck {
                        program,
                        helper: helper_name(helper),
                        check: match is_helper_supported(program_type, helper) {
                            Ok(true) => Check::Yes,
                            Ok(false) => Check::No("not allowed for this program type".into()),
                            Err(e) => Check::Unknown(crate::error::chain(&e)),
                        },
                    },
                    None => HelperCheck {
                        program,
                        helper: format!("helper #{id}"),
                        check: Check::Unknown(
                            "not in redirect/features.rs's table of helpers".into(),
                        ),
                    },
                }
            })
            .collect()
    }

    /// About how much memory the maps lock: each entry's key and value
    /// (8-byte aligned) plus the kernel's per-element header, for every
    /// entry (the LRU maps preallocate them all).
    fn maps_bytes(&self) -> u64 {
        const ELEMENT_HEADER: u64 = 64;
        self.object
            .maps
            .values()
            .map(|map| {
                let key = u64::from(map.key_size()).next_multiple_of(8);
                let value = u64::from(map.value_size()).next_multiple_of(8);
                (key + value + ELEMENT_HEADER) * u64::from(map.max_entries())
            })
            .sum()
    }
}

/// The kind of a program section and the program type whose helper set
/// stands for it. fentry programs cannot be probed without a target (aya
/// refuses); their helper set contains the raw tracepoints'.
fn program_kind(section: &ProgramSection) -> Option<(&'static str, ProgramType)> {
    Some(match section {
        ProgramSection::CgroupSockAddr { .. } => ("cgroup/sock_addr", ProgramType::CgroupSockAddr),
        ProgramSection::SockOps => ("sockops", ProgramType::SockOps),
        ProgramSection::RawTracePoint => ("raw tracepoint", ProgramType::RawTracePoint),
        ProgramSection::FEntry { .. } => ("fentry", ProgramType::RawTracePoint),
        ProgramSection::TracePoint => ("tracepoint", ProgramType::TracePoint),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a Debian 11 cloud kernel (5.10) offers, as the VM test sees it.
    fn linux_5_10() -> Observations {
        Observations {
            release: "5.10.0-46-cloud-amd64".into(),
            bpf: Check::Yes,
            cgroup2: Some("/sys/fs/cgroup".into()),
            bpffs: true,
            connect: [Check::Yes, Check::Yes],
            sendmsg: [Check::Yes, Check::Yes],
            getpeername: [Check::Yes, Check::Yes],
            sockops: Check::Yes,
            cgroup_link: Check::Yes,
            helpers: Some(vec![HelperCheck {
                program: "cgroup/sock_addr",
                helper: "bpf_ktime_get_boot_ns".into(),
                check: Check::Yes,
            }]),
            raw_tracepoint: Check::Yes,
            tracing_ancestor_helper: Check::No("not allowed before 5.11".into()),
            cgroup_layout: Check::Yes,
            btf: Check::Yes,
            fentry: Check::Yes,
            prepare_exec_tracepoint: false,
            begin_new_exec: true,
            prctl_x64: true,
            prctl_ia32: true,
            prctl_tracepoint: true,
            perf_link: Check::No("BPF_LINK_CREATE refuses this attach type".into()),
            perf_event_paranoid: Some(3),
            memcg_accounting: Check::No("Linux < 5.11".into()),
            memlock_reachable: None,
            maps_bytes: 20 << 20,
        }
    }

    fn state(report: &Report, feature: Feature) -> (State, Option<String>) {
        let finding = report.get(feature).unwrap();
        (finding.state, finding.via.clone())
    }

    #[test]
    fn linux_5_10_with_btf_has_everything_through_fallbacks() {
        let report = Report::from_observations(&linux_5_10());
        assert!(report.require().is_ok());
        assert_eq!(
            state(&report, Feature::ExecStart),
            (State::Present, Some(EXEC_START_VIA_FENTRY.into()))
        );
        assert_eq!(
            state(&report, Feature::PrctlWatch),
            (State::Present, Some(PRCTL_VIA_FENTRY_BOTH.into()))
        );
        assert_eq!(
            state(&report, Feature::BpfMemory),
            (State::Present, Some(MEMORY_VIA_MEMLOCK.into()))
        );
        assert_eq!(
            state(&report, Feature::TracingTags),
            (State::Present, Some(TAGS_VIA_BTF_WALK.into()))
        );
        assert_eq!(report.concerns().count(), 0, "{report:#?}");
    }

    #[test]
    fn linux_6_12_stamps_exec_at_the_tracepoint() {
        let obs = Observations {
            prepare_exec_tracepoint: true,
            memcg_accounting: Check::Yes,
            tracing_ancestor_helper: Check::Yes,
            cgroup_layout: Check::NotProbed,
            ..linux_5_10()
        };
        let report = Report::from_observations(&obs);
        assert_eq!(
            state(&report, Feature::ExecStart),
            (State::Present, Some(EXEC_START_VIA_TRACEPOINT.into()))
        );
        assert_eq!(
            state(&report, Feature::BpfMemory),
            (State::Present, Some(MEMORY_VIA_MEMCG.into()))
        );
    }

    #[test]
    fn a_missing_getpeername_hook_refuses_to_start_and_names_it() {
        let obs = Observations {
            getpeername: [Check::No("the kernel refuses it".into()), Check::Yes],
            ..linux_5_10()
        };
        let report = Report::from_observations(&obs);
        let error = report.require().unwrap_err();
        assert_eq!(error.missing.len(), 1);
        assert_eq!(error.missing[0].feature, Feature::GetpeernameHooks);
        let text = error.to_string();
        assert!(text.contains("cgroup/getpeername4"), "{text}");
        assert!(text.contains("5.8"), "{text}");
    }

    #[test]
    fn every_required_feature_blocks_and_no_optional_one_does() {
        for &feature in Feature::ALL {
            let mut obs = linux_5_10();
            let no = || Check::No("missing".into());
            match feature {
                Feature::Bpf => obs.bpf = no(),
                Feature::CgroupV2 => obs.cgroup2 = None,
                // Not on bpffs is not fatal: the daemon mounts it.
                Feature::Bpffs => continue,
                Feature::ConnectHooks => obs.connect[1] = no(),
                Feature::SendmsgHooks => obs.sendmsg[0] = no(),
                Feature::GetpeernameHooks => obs.getpeername[1] = no(),
                Feature::SockOps => obs.sockops = no(),
                Feature::CgroupLinks => obs.cgroup_link = no(),
                Feature::Helpers => {
                    obs.helpers = Some(vec![HelperCheck {
                        program: "cgroup/sock_addr",
                        helper: "bpf_get_current_ancestor_cgroup_id".into(),
                        check: no(),
                    }])
                }
                Feature::TracingTags => obs.cgroup_layout = no(),
                Feature::BpfMemory => obs.memlock_reachable = Some(64 << 10),
                Feature::ExecDone => obs.raw_tracepoint = no(),
                Feature::ExecStart => {
                    obs.btf = no();
                }
                Feature::PrctlWatch => {
                    obs.btf = no();
                    obs.prctl_tracepoint = false;
                }
            }
            let report = Report::from_observations(&obs);
            let finding = report.get(feature).unwrap();
            assert_eq!(finding.state, State::Absent, "{feature:?}: {finding}");
            assert_eq!(
                report.require().is_err(),
                feature.required(),
                "{feature:?}: {finding}"
            );
            assert!(finding.fix.is_some(), "{feature:?} says how to fix it");
        }
    }

    #[test]
    fn without_bpf_permission_nothing_is_claimed_present() {
        let obs = Observations {
            bpf: Check::No("bpf(2) not permitted".into()),
            connect: [Check::NotProbed, Check::NotProbed],
            ..Observations::default()
        };
        let report = Report::from_observations(&obs);
        assert_eq!(report.get(Feature::Bpf).unwrap().state, State::Absent);
        assert_eq!(
            report.get(Feature::ConnectHooks).unwrap().state,
            State::Unknown
        );
    }

    #[test]
    fn the_prctl_watch_falls_back_to_the_tracepoint_and_says_what_it_misses() {
        let obs = Observations {
            btf: Check::No("no /sys/kernel/btf/vmlinux".into()),
            perf_link: Check::Yes,
            perf_event_paranoid: Some(2),
            ..linux_5_10()
        };
        let report = Report::from_observations(&obs);
        let finding = report.get(Feature::PrctlWatch).unwrap();
        assert_eq!(finding.state, State::Degraded);
        assert_eq!(finding.via.as_deref(), Some(PRCTL_VIA_TRACEPOINT));
        assert!(finding.detail.contains("int $0x80"), "{finding}");
        // Debian's default perf_event_paranoid: not even the tracepoint.
        let obs = Observations {
            perf_event_paranoid: Some(3),
            ..obs
        };
        let finding = Report::from_observations(&obs)
            .get(Feature::PrctlWatch)
            .cloned()
            .unwrap();
        assert_eq!(finding.state, State::Absent);
        assert!(finding.fix.unwrap().contains("perf_event_paranoid"));
    }

    #[test]
    fn the_missing_ancestor_helper_in_tracing_programs_is_not_a_missing_helper() {
        // What Debian 11's 5.10 answers: every tracing kind lacks the helper,
        // the socket programs have it. The walk covers the former.
        let mut obs = linux_5_10();
        obs.helpers = Some(
            ["raw tracepoint", "fentry", "tracepoint", "cgroup/sock_addr"]
                .into_iter()
                .map(|program| HelperCheck {
                    program,
                    helper: ANCESTOR_HELPER.into(),
                    check: if program == "cgroup/sock_addr" {
                        Check::Yes
                    } else {
                        Check::No("not allowed for this program type".into())
                    },
                })
                .collect(),
        );
        let report = Report::from_observations(&obs);
        assert!(report.require().is_ok(), "{report:#?}");
        // Without the walk's offsets, that is what stops the daemon.
        obs.cgroup_layout = Check::No("no struct cgroup".into());
        let error = Report::from_observations(&obs).require().unwrap_err();
        assert_eq!(error.missing.len(), 1);
        assert_eq!(error.missing[0].feature, Feature::TracingTags);
        // And a socket program without it is a missing helper.
        obs.cgroup_layout = Check::Yes;
        if let Some(helpers) = obs.helpers.as_mut() {
            helpers[3].check = Check::No("not allowed for this program type".into());
        }
        let error = Report::from_observations(&obs).require().unwrap_err();
        assert_eq!(error.missing[0].feature, Feature::Helpers);
    }

    #[test]
    fn too_little_locked_memory_before_5_11_blocks_with_the_unit_fix() {
        let obs = Observations {
            memlock_reachable: Some(64 << 10),
            ..linux_5_10()
        };
        let finding = Report::from_observations(&obs)
            .get(Feature::BpfMemory)
            .cloned()
            .unwrap();
        assert_eq!(finding.state, State::Absent);
        assert!(finding.fix.unwrap().contains("LimitMEMLOCK=infinity"));
    }

    #[test]
    fn the_readme_table_is_the_one_generated_here() {
        let readme = include_str!("../../../README.md");
        let table = readme_table();
        assert!(
            readme.contains(&table),
            "README.md's kernel table differs from features::readme_table(); paste this:\n{table}"
        );
    }

    #[test]
    fn every_helper_the_programs_call_is_known() {
        let Some(programs) = EmbeddedPrograms::parse() else {
            // The userspace-only build (AYA_BUILD_SKIP) has no object; the
            // test suite (`cargo xtask test`) always builds it.
            assert!(
                std::env::var("AYA_BUILD_SKIP").is_ok(),
                "the eBPF object is empty but AYA_BUILD_SKIP is not set"
            );
            return;
        };
        let calls = programs.helper_calls();
        assert!(!calls.is_empty());
        for (kind, _, id) in calls {
            assert!(
                KNOWN_HELPERS.iter().any(|h| *h as i32 == id),
                "a {kind} program calls helper #{id}, missing from KNOWN_HELPERS"
            );
        }
        // The maps need a few MiB; the estimate is in that range.
        let bytes = programs.maps_bytes();
        assert!(bytes > (1 << 20) && bytes < (1 << 30), "{bytes}");
    }
}
