//! `warrant doctor`: is this host ready? Each check says pass, warn or fail
//! and, for anything not passing, the exact fix: a command to run or a
//! config line to write. Any fail makes the exit status non-zero.
//!
//! Two halves, so that every check runs without root in tests:
//! - [`facts`] gathers what the host says (mounts, sysctls, `systemctl`,
//!   `timedatectl`, the files warrant reads, the sockets listening), once,
//!   with no side effect: nothing is written, started or attached, and no
//!   process is signalled or read beyond what `systemctl show` reports
//!   (doctor only lifts its own RLIMIT_MEMLOCK, as the daemon does, so that
//!   the probe sees what the daemon will on kernels before 5.11);
//! - the checks ([`kernel`], [`host`], [`setup`], [`trust`], [`listen`])
//!   are pure functions of those facts; tests hand them facts of their own.
//!
//! What the kernel offers each eBPF program is `redirect::features`'s
//! knowledge: gathering runs its probe (it loads trivial programs and
//! closes them, attaching nothing) and [`kernel`] renders the report.

pub mod facts;
mod host;
mod kernel;
mod listen;
mod setup;
mod trust;

use serde::Serialize;

pub use facts::Facts;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    /// Works, with less: a hook missing, a certificate near expiry, a unit
    /// not restarted yet.
    Warn,
    /// Agents will fail, or warrant will not start.
    Fail,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked, e.g. "perf_event_paranoid" or "unit agent.service".
    pub name: String,
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// For a warning or a failure: the command to run or the config line to
    /// write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            verdict: Verdict::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            verdict: Verdict::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            verdict: Verdict::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check, in the order they are printed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub passed: usize,
    pub warnings: usize,
    pub failures: usize,
}

impl Report {
    fn of(checks: Vec<Check>) -> Report {
        let count = |v: Verdict| checks.iter().filter(|c| c.verdict == v).count();
        Report {
            passed: count(Verdict::Pass),
            warnings: count(Verdict::Warn),
            failures: count(Verdict::Fail),
            checks,
        }
    }

    pub fn ok(&self) -> bool {
        self.failures == 0
    }

    /// The report for people: one line per check, its fix indented below.
    pub fn render(&self) -> String {
        let width = self
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for check in &self.checks {
            let verdict = match check.verdict {
                Verdict::Pass => "pass",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            };
            let pad = width.saturating_sub(check.name.chars().count());
            out.push_str(&format!(
                "{verdict}  {}{}  {}\n",
                check.name,
                " ".repeat(pad),
                check.detail
            ));
            if let Some(fix) = &check.fix {
                for (i, line) in fix.lines().enumerate() {
                    let label = if i == 0 { "fix:" } else { "    " };
                    out.push_str(&format!("      {label} {line}\n"));
                }
            }
        }
        out.push_str(&format!(
            "{} passed, {} warning(s), {} failure(s): {}\n",
            self.passed,
            self.warnings,
            self.failures,
            if self.ok() {
                "this host is ready"
            } else {
                "this host is NOT ready"
            }
        ));
        out
    }
}

/// Runs every check on `facts`.
pub fn run(facts: &Facts) -> Report {
    let mut checks = kernel::checks(&facts.kernel);
    checks.extend(host::checks(facts));
    checks.extend(setup::checks(facts));
    checks.extend(trust::checks(facts));
    checks.extend(listen::checks(facts));
    Report::of(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_counts_verdicts_and_prints_each_fix_under_its_check() {
        let report = Report::of(vec![
            Check::pass("cgroup2", "mounted at /sys/fs/cgroup"),
            Check::fail(
                "bpffs",
                "/sys/fs/bpf is not a bpffs mount",
                "mount -t bpf bpf /sys/fs/bpf",
            ),
            Check::warn("clock", "not synchronised", "timedatectl set-ntp true"),
        ]);
        assert_eq!((report.passed, report.warnings, report.failures), (1, 1, 1));
        assert!(!report.ok());
        let text = report.render();
        assert!(text.contains("FAIL  bpffs    /sys/fs/bpf is not a bpffs mount\n      fix: mount -t bpf bpf /sys/fs/bpf\n"), "{text}");
        assert!(text.contains("pass  cgroup2  mounted"), "{text}");
        assert!(text.ends_with("1 passed, 1 warning(s), 1 failure(s): this host is NOT ready\n"));
    }
}
