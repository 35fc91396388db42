//! What a test needs from the host, and what happens when it is missing.
//!
//! A test that cannot run everywhere (it needs root, the IPv6 loopback, a
//! group, cgroup2, tracefs or a program) asks [`require`] first:
//!
//! - with `WARRANT_REQUIRE_PREREQS=1` (`.ci/run` exports it, and `cargo
//!   xtask test` sets it unless `--unprivileged`), a missing prerequisite
//!   fails the test, naming it: a CI host without it must be fixed, and a
//!   test that proved nothing must not count as passed;
//! - otherwise the test is skipped, visibly: a `SKIPPED` line on stderr
//!   (written past the test harness's capture) and one in the file
//!   `WARRANT_SKIP_LOG` names, which `cargo xtask test` counts and lists
//!   at the end of the run. The test then returns without asserting.

use std::{io::Write, path::Path};

/// Set to 1 where a missing prerequisite must fail the test (CI).
pub const REQUIRE_VAR: &str = "WARRANT_REQUIRE_PREREQS";
/// A file to which each skipped test appends one line.
pub const SKIP_LOG_VAR: &str = "WARRANT_SKIP_LOG";

/// One thing a test needs from the host.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// Running as root.
    Root,
    /// An address on ::1 can be bound.
    Ipv6Loopback,
    /// A group with this gid exists.
    Group(u32),
    /// A cgroup2 hierarchy is mounted.
    Cgroup2,
    /// tracefs is mounted at /sys/kernel/tracing.
    Tracefs,
    /// A program is on PATH (it answers `--version`).
    Program(&'static str),
}

impl Need {
    pub fn available(&self) -> bool {
        match self {
            Need::Root => nix::unistd::geteuid().is_root(),
            Need::Ipv6Loopback => std::net::TcpListener::bind("[::1]:0").is_ok(),
            Need::Group(gid) => nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(*gid))
                .is_ok_and(|group| group.is_some()),
            Need::Cgroup2 => warrant::mounts::cgroup2().is_ok(),
            Need::Tracefs => Path::new("/sys/kernel/tracing/events").is_dir(),
            Need::Program(name) => std::process::Command::new(name)
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Need::Root => "root".to_owned(),
            Need::Ipv6Loopback => "the IPv6 loopback (::1)".to_owned(),
            Need::Group(gid) => format!("a group with gid {gid}"),
            Need::Cgroup2 => "a cgroup2 mount".to_owned(),
            Need::Tracefs => "tracefs at /sys/kernel/tracing".to_owned(),
            Need::Program(name) => format!("{name} on PATH (cargo xtask setup installs it)"),
        }
    }
}

/// Whether this run must fail on a missing prerequisite.
pub fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1")
}

/// True when every need is met. Otherwise: panics when the run requires
/// prerequisites ([`REQUIRE_VAR`]), else reports the calling test as
/// skipped and returns false, and the test returns.
#[must_use = "a test whose prerequisite is missing must return at once"]
pub fn require(needs: &[Need]) -> bool {
    let missing: Vec<String> = needs
        .iter()
        .filter(|need| !need.available())
        .map(Need::describe)
        .collect();
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned();
    let what = missing.join(", ");
    assert!(
        !required(),
        "{test} needs {what}, which this host lacks ({REQUIRE_VAR}=1: a missing prerequisite fails)"
    );
    let line = format!("SKIPPED {test}: needs {what}\n");
    // Past the harness's capture (which only takes print! and eprint!), so
    // the skip shows in every run, passing or not.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os(SKIP_LOG_VAR) {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(err) = appended {
            let _ = writeln!(std::io::stderr(), "cannot append to {path:?}: {err}");
        }
    }
    false
}
