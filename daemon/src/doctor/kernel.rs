//! The kernel: what each of warrant's eBPF programs needs (the cgroup
//! connect, sendmsg and getpeername hooks, sockops, pinned links, the
//! helpers, exec generations via `sched_prepare_exec` or fentry on
//! `begin_new_exec`, BTF for the tracing programs, map memory). The
//! knowledge and the probe are `redirect::features`'s; doctor renders its
//! [`Report`] as checks and probes nothing itself. cgroup v2 and bpffs are
//! left to `host`, whose checks name the mount to fix.

use super::Check;
use crate::redirect::features::{Feature, Finding, Report, State};

pub fn checks(report: &Report) -> Vec<Check> {
    let mut checks = vec![Check::pass("kernel", format!("Linux {}", report.release))];
    checks.extend(
        report
            .findings
            .iter()
            .filter(|f| !matches!(f.feature, Feature::CgroupV2 | Feature::Bpffs))
            .map(finding),
    );
    checks
}

/// The feature's name as in `warrant status --json` (`connect_hooks`).
fn name(feature: Feature) -> String {
    let key = serde_json::to_value(feature)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{feature:?}"));
    format!("kernel {key}")
}

/// Present passes; degraded, unknown and a missing optional feature warn;
/// a missing required one fails (the daemon refuses to start without it).
pub fn finding(f: &Finding) -> Check {
    let via = f
        .via
        .as_deref()
        .map(|v| format!(" (via {v})"))
        .unwrap_or_default();
    let detail = format!("{}{via}: {}", f.feature.describe(), f.detail);
    // Where the probe knows no fix, the kernel that has the feature is it.
    let fix = f.fix.clone().unwrap_or_else(|| {
        format!(
            "a kernel with it: Linux {} or later (without it warrant {})",
            f.feature.min_kernel(),
            f.feature.without()
        )
    });
    match f.state {
        State::Present => Check::pass(name(f.feature), detail),
        State::Absent if f.required => Check::fail(name(f.feature), detail, fix),
        State::Absent | State::Degraded | State::Unknown => {
            Check::warn(name(f.feature), detail, fix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;

    fn found(feature: Feature, state: State, fix: Option<&str>) -> Finding {
        Finding {
            feature,
            state,
            required: feature.required(),
            via: None,
            detail: "probed".into(),
            fix: fix.map(str::to_owned),
            min_kernel: feature.min_kernel(),
        }
    }

    #[test]
    fn each_finding_becomes_a_check_with_the_probes_fix() {
        let report = Report {
            release: "6.1.0-28-cloud-amd64".into(),
            findings: vec![
                found(Feature::CgroupV2, State::Present, None),
                found(Feature::ConnectHooks, State::Present, None),
                found(Feature::GetpeernameHooks, State::Absent, None),
                found(
                    Feature::PrctlWatch,
                    State::Degraded,
                    Some("echo 2 > /proc/sys/kernel/perf_event_paranoid"),
                ),
                found(Feature::ExecStart, State::Absent, None),
            ],
        };
        let checks = checks(&report);
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kernel",
                "kernel connect_hooks",
                "kernel getpeername_hooks",
                "kernel prctl_watch",
                "kernel exec_start"
            ],
            "cgroup v2 is host's check"
        );
        assert_eq!(checks[0].detail, "Linux 6.1.0-28-cloud-amd64");
        assert_eq!(checks[1].verdict, Verdict::Pass);
        // Required and absent: the daemon would not start.
        assert_eq!(checks[2].verdict, Verdict::Fail);
        assert!(
            checks[2]
                .fix
                .as_deref()
                .unwrap_or_default()
                .contains("Linux 5.8 or later"),
            "{:?}",
            checks[2].fix
        );
        assert_eq!(checks[3].verdict, Verdict::Warn);
        assert_eq!(
            checks[3].fix.as_deref(),
            Some("echo 2 > /proc/sys/kernel/perf_event_paranoid")
        );
        // Optional and absent: it runs without it.
        assert_eq!(checks[4].verdict, Verdict::Warn);
    }
}
