//! The host's side: the cgroup2 and bpffs mounts, perf_event_paranoid,
//! systemd and the clock.

use std::path::Path;

use super::{Check, Facts};
use crate::{
    mounts,
    redirect::features::{Feature, State},
};

pub fn checks(facts: &Facts) -> Vec<Check> {
    let daemon = facts.config.as_ref().map(|c| &c.daemon);
    vec![
        cgroup2(&facts.mounts, daemon.and_then(|d| d.cgroup_root.as_deref())),
        bpffs(&facts.mounts, daemon.map(|d| d.bpf_pin_dir.as_path())),
        perf_event_paranoid(
            facts.perf_event_paranoid,
            facts
                .kernel
                .get(Feature::PrctlWatch)
                .is_some_and(|f| f.state == State::Present),
        ),
        systemd(facts.systemd_version, facts.systemd_booted),
        clock(facts.clock.synchronised, facts.clock.source),
    ]
}

/// Every mount point of filesystem type `fstype` in a /proc/mounts text.
fn mount_points(mounts: &str, fstype: &str) -> Vec<std::path::PathBuf> {
    mounts
        .lines()
        .filter_map(|line| mounts::of_type(line, fstype))
        .collect()
}

/// cgroup v2 is mounted, and holds `[daemon] cgroup_root` when one is set.
pub fn cgroup2(mounts: &str, cgroup_root: Option<&Path>) -> Check {
    const NAME: &str = "cgroup2";
    let points = mount_points(mounts, "cgroup2");
    let Some(first) = points.first() else {
        return Check::fail(
            NAME,
            "no cgroup2 filesystem is mounted: warrant attaches its programs to a cgroup v2 hierarchy",
            "boot with cgroup v2 (kernel command line: systemd.unified_cgroup_hierarchy=1), or: mount -t cgroup2 none /sys/fs/cgroup/unified",
        );
    };
    match cgroup_root {
        Some(root) if !points.iter().any(|p| root.starts_with(p)) => Check::fail(
            NAME,
            format!(
                "[daemon] cgroup_root = {} is not in a cgroup2 mount ({})",
                root.display(),
                first.display()
            ),
            format!(
                "in the [daemon] section: cgroup_root = \"{}\" (or remove the line: the default is the cgroup2 mount)",
                first.display()
            ),
        ),
        Some(root) => Check::pass(
            NAME,
            format!(
                "mounted at {}; cgroup_root {}",
                first.display(),
                root.display()
            ),
        ),
        None => Check::pass(NAME, format!("mounted at {}", first.display())),
    }
}

/// The pin directory is on bpffs: pins are what keep redirection across
/// restarts, and the unit has no CAP_SYS_ADMIN to mount bpffs itself.
pub fn bpffs(mounts: &str, pin_dir: Option<&Path>) -> Check {
    const NAME: &str = "bpffs";
    let points = mount_points(mounts, "bpf");
    let pin_dir = pin_dir.unwrap_or(Path::new("/sys/fs/bpf/warrant"));
    match points.iter().find(|p| pin_dir.starts_with(p)) {
        Some(point) => Check::pass(
            NAME,
            format!(
                "mounted at {}; pins in {}",
                point.display(),
                pin_dir.display()
            ),
        ),
        None => {
            let parent = pin_dir.parent().unwrap_or(Path::new("/sys/fs/bpf"));
            Check::fail(
                NAME,
                format!(
                    "{} is not on a bpffs mount: the daemon cannot pin its programs (and warrant.service has no CAP_SYS_ADMIN to mount one)",
                    pin_dir.display()
                ),
                format!(
                    "mount -t bpf bpf {} (systemd mounts it at boot: systemctl start sys-fs-bpf.mount)",
                    parent.display()
                ),
            )
        }
    }
}

/// The sysctl that lets CAP_PERFMON open perf events: Debian's default of
/// 3 allows it to CAP_SYS_ADMIN only, which warrant does not have. Only
/// the prctl(PR_SET_MM) watch's tracepoint fallback uses perf events, so
/// where the watch attaches by fentry (`prctl_by_fentry`: the probe found
/// it present) the value does not matter and a warning would be noise.
pub fn perf_event_paranoid(value: Option<i32>, prctl_by_fentry: bool) -> Check {
    const NAME: &str = "perf_event_paranoid";
    match value {
        None => Check::warn(
            NAME,
            "/proc/sys/kernel/perf_event_paranoid cannot be read",
            "check that /proc is mounted: mount -t proc proc /proc",
        ),
        Some(v) if v <= 2 => Check::pass(NAME, format!("{v} (CAP_PERFMON may open perf events)")),
        Some(v) if prctl_by_fentry => Check::pass(
            NAME,
            format!(
                "{v}: only CAP_SYS_ADMIN may open perf events, but warrant needs none here: the prctl(PR_SET_MM) watch attaches by fentry"
            ),
        ),
        Some(v) => Check::warn(
            NAME,
            format!(
                "{v}: only CAP_SYS_ADMIN may open perf events (a Debian patch), so the prctl(PR_SET_MM) watch cannot attach as a tracepoint"
            ),
            "echo 'kernel.perf_event_paranoid = 2' > /etc/sysctl.d/60-warrant.conf && sysctl --system && systemctl restart warrant",
        ),
    }
}

/// The oldest systemd warrant's unit is tested on (Debian 11).
pub const MIN_SYSTEMD: u32 = 247;

/// systemd runs the host, and is new enough for warrant.service's settings.
pub fn systemd(version: Option<u32>, booted: bool) -> Check {
    const NAME: &str = "systemd";
    match (version, booted) {
        (_, false) => Check::warn(
            NAME,
            "systemd is not the init system here: warrant.service, warrant.socket, `warrant tag` and the systemd credential source need it",
            "run warrant under systemd (apt install ./warrant_*.deb on a systemd host), or start `warrant run` from your supervisor and select agents by cgroup",
        ),
        (None, true) => Check::warn(
            NAME,
            "systemctl --version gives no version",
            "check that systemctl works: systemctl --version",
        ),
        (Some(v), true) if v < MIN_SYSTEMD => Check::fail(
            NAME,
            format!(
                "systemd {v}: warrant.service needs {MIN_SYSTEMD} or later (CAP_BPF and CAP_PERFMON by name, ProtectClock=)"
            ),
            format!("upgrade systemd to {MIN_SYSTEMD} or later (Debian 11 or newer)"),
        ),
        (Some(v), true) if v < 250 => Check::pass(
            NAME,
            format!("systemd {v} (LoadCredentialEncrypted= needs 250; LoadCredential= works)"),
        ),
        (Some(v), true) => Check::pass(NAME, format!("systemd {v}")),
    }
}

/// Time-of-day policies, budget windows, certificates and Redis buckets
/// all read the clock.
pub fn clock(synchronised: Option<bool>, source: &str) -> Check {
    const NAME: &str = "clock";
    match synchronised {
        Some(true) => Check::pass(NAME, format!("synchronised ({source})")),
        Some(false) => Check::warn(
            NAME,
            format!(
                "not synchronised ({source}): policy time windows, budget windows and certificate validity follow this clock, and hosts sharing Redis budgets must agree"
            ),
            "timedatectl set-ntp true (systemd-timesyncd), or install chrony",
        ),
        None => Check::warn(
            NAME,
            "cannot tell whether the clock is synchronised (no timedatectl, adjtimex failed)",
            "check with: timedatectl status",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;

    const UNIFIED: &str =
        "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n";
    const NO_BPFFS: &str = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";

    #[test]
    fn bpffs_unmounted_fails_with_the_mount_command() {
        let ok = bpffs(UNIFIED, Some(Path::new("/sys/fs/bpf/warrant")));
        assert_eq!(ok.verdict, Verdict::Pass);
        let broken = bpffs(NO_BPFFS, Some(Path::new("/sys/fs/bpf/warrant")));
        assert_eq!(broken.verdict, Verdict::Fail);
        assert!(broken.detail.contains("not on a bpffs mount"));
        assert!(
            broken
                .fix
                .unwrap_or_default()
                .starts_with("mount -t bpf bpf /sys/fs/bpf")
        );
    }

    #[test]
    fn cgroup2_missing_or_a_cgroup_root_outside_it_fails() {
        assert_eq!(cgroup2(UNIFIED, None).verdict, Verdict::Pass);
        let hybrid = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert!(
            cgroup2(hybrid, None)
                .detail
                .contains("/sys/fs/cgroup/unified")
        );
        let outside = cgroup2(hybrid, Some(Path::new("/sys/fs/cgroup/system.slice")));
        assert_eq!(outside.verdict, Verdict::Fail);
        assert!(
            outside
                .fix
                .unwrap_or_default()
                .contains("cgroup_root = \"/sys/fs/cgroup/unified\"")
        );
        let none = cgroup2("proc /proc proc rw 0 0\n", None);
        assert_eq!(none.verdict, Verdict::Fail);
    }

    #[test]
    fn debian_perf_event_paranoid_warns_with_the_sysctl_fix() {
        assert_eq!(perf_event_paranoid(Some(2), false).verdict, Verdict::Pass);
        let debian = perf_event_paranoid(Some(3), false);
        assert_eq!(debian.verdict, Verdict::Warn);
        assert!(
            debian
                .fix
                .unwrap_or_default()
                .contains("kernel.perf_event_paranoid = 2")
        );
        // Where fentry serves the watch, no perf event is opened at all.
        let fentry = perf_event_paranoid(Some(3), true);
        assert_eq!(fentry.verdict, Verdict::Pass);
        assert!(fentry.detail.contains("by fentry"), "{}", fentry.detail);
    }

    #[test]
    fn systemd_older_than_the_tested_one_fails_and_no_systemd_warns() {
        assert_eq!(systemd(Some(252), true).verdict, Verdict::Pass);
        assert!(
            systemd(Some(247), true)
                .detail
                .contains("LoadCredentialEncrypted")
        );
        assert_eq!(systemd(Some(241), true).verdict, Verdict::Fail);
        assert_eq!(systemd(Some(252), false).verdict, Verdict::Warn);
    }

    #[test]
    fn an_unsynchronised_clock_warns() {
        assert_eq!(clock(Some(true), "timedatectl").verdict, Verdict::Pass);
        let off = clock(Some(false), "adjtimex");
        assert_eq!(off.verdict, Verdict::Warn);
        assert!(
            off.fix
                .unwrap_or_default()
                .contains("timedatectl set-ntp true")
        );
    }
}
