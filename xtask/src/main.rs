//! `cargo xtask`: the project's developer tasks.
//!
//! setup   install what building and testing need (idempotent, fast when done)
//! build   build the daemon with its eBPF programs
//! test    setup, then every test: unit, integration, privileged (root)
//! lint    rustfmt check and clippy with warnings denied
//! demo    the daemon injecting a credential into a sample agent
//! bench   the benchmarks, printed as ratios against a baseline in one run:
//!         redirect, attest, policy, proxy, usage (microbenchmarks) and
//!         deployed (the release binary through its eBPF redirect)
//! package the Debian package (target/debian/warrant_VERSION_amd64.deb)
//! vm-test the package and its systemd units in Debian VMs (5.10, 6.1, 6.12)
//! fuzz    the cargo-fuzz targets (parsers) under libFuzzer; `test` replays their corpus

mod bench;
mod demo;
mod fuzz;
mod package;
mod setup;
mod vm;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "warrant's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install llvm-22-dev, bpf-linker and nightly rust-src if missing.
    Setup,
    /// Build the daemon (release) with its eBPF programs.
    Build,
    /// Run setup, then all tests (the privileged ones need root).
    Test {
        /// Skip the tests that need root (eBPF, cgroups); CI never does.
        #[arg(long)]
        unprivileged: bool,
    },
    /// rustfmt --check and clippy -D warnings.
    Lint,
    /// Fuzz the parsers (cargo fuzz, nightly): client_hello, request_parse,
    /// usage_meter, websocket_meter, config (all if none given); new inputs
    /// join the corpus in fuzz/corpus/.
    Fuzz {
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Run the demo: the daemon injecting a credential into a sample agent.
    Demo,
    /// Run a benchmark (all if none given): redirect | attest | policy |
    /// proxy | usage | deployed.
    Bench(bench::BenchArgs),
    /// Build the Debian package (release binary with its eBPF programs).
    Package,
    /// Install, tag, restart and purge the .deb in Debian VMs under qemu:
    /// one verdict per kernel (5.10 on Debian 11, 6.1 and 6.12 on Debian
    /// 12). Needs root (debootstrap).
    VmTest {
        /// Only this kernel: 5.10, 6.1 or 6.12.
        #[arg(long)]
        kernel: Option<String>,
        /// How many VMs boot at once (default: 1; see vm.rs).
        #[arg(long)]
        jobs: Option<usize>,
        /// Only install the host tools and build the images (CI builds
        /// them while the tests run: it is mostly downloading).
        #[arg(long)]
        images_only: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            cargo(&["build", "--release", "-p", "warrant"])
        }
        Task::Test { unprivileged } => test(unprivileged),
        Task::Lint => {
            cargo(&["fmt", "--all", "--", "--check"])?;
            // One pass with the privileged tests' feature: it lints them and
            // everything else (a second pass without it would check the
            // daemon again for two lines). The eBPF crate is not linted
            // here (it builds only for the bpf target), so its object is
            // not built either.
            let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            run_cmd(
                Command::new(cargo_bin)
                    .args([
                        "clippy",
                        "--workspace",
                        "--exclude",
                        "warrant-ebpf",
                        "--all-targets",
                        "--features",
                        "warrant/privileged-tests",
                        "--",
                        "-D",
                        "warnings",
                    ])
                    .env("AYA_BUILD_SKIP", "1")
                    .current_dir(workspace_root()),
            )
        }
        Task::Demo => demo::run(),
        Task::Fuzz { target, seconds } => {
            setup::run()?;
            setup::cargo_fuzz()?;
            fuzz::run(target.as_deref(), seconds)
        }
        Task::Bench(args) => bench::run(args),
        Task::Package => package::run().map(|_| ()),
        Task::VmTest {
            kernel,
            jobs,
            images_only,
        } => vm::run(kernel.as_deref(), jobs, images_only),
    }
}

/// Set for the tests when a missing prerequisite must fail them (see
/// daemon/tests/support/prereq.rs); `.ci/run` exports it too.
const REQUIRE_PREREQS: &str = "WARRANT_REQUIRE_PREREQS";
/// The file each skipped test appends a line to.
const SKIP_LOG: &str = "WARRANT_SKIP_LOG";

fn test(unprivileged: bool) -> Result<()> {
    setup::run()?;
    if !unprivileged && !nix_is_root() {
        bail!(
            "the privileged tests (eBPF, cgroups) need root: run as root, or pass --unprivileged to skip them"
        );
    }
    // A full run proves everything: a test whose prerequisite (root, ::1, a
    // group, redis-server, ...) is missing fails. --unprivileged lets such
    // tests skip, and says which did.
    let skip_log = workspace_root().join("target/test-skips.log");
    std::fs::create_dir_all(workspace_root().join("target"))?;
    std::fs::write(&skip_log, "")
        .with_context(|| format!("cannot reset {}", skip_log.display()))?;
    let mut env = vec![(SKIP_LOG, skip_log.display().to_string())];
    if !unprivileged {
        env.push((REQUIRE_PREREQS, "1".to_owned()));
    }
    let result = test_all(unprivileged, &env);
    report_skips(&skip_log);
    result
}

/// Prints the tests that were skipped for a missing prerequisite, if any.
fn report_skips(skip_log: &std::path::Path) {
    let skipped = std::fs::read_to_string(skip_log).unwrap_or_default();
    let lines: Vec<&str> = skipped.lines().filter(|l| !l.is_empty()).collect();
    if lines.is_empty() {
        println!("xtask: no test was skipped");
        return;
    }
    println!(
        "xtask: {} test(s) SKIPPED for a missing prerequisite (not proved by this run):",
        lines.len()
    );
    for line in lines {
        println!("  {line}");
    }
}

fn test_all(unprivileged: bool, env: &[(&str, String)]) -> Result<()> {
    let cargo = |args: &[&str]| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        run_cmd(
            Command::new(cargo)
                .args(args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .current_dir(workspace_root()),
        )
    };
    // warrant-ebpf builds only for the bpf target (daemon/build.rs does that).
    let workspace = ["test", "--workspace", "--exclude", "warrant-ebpf"];
    if unprivileged {
        cargo(&workspace)?;
        println!("xtask: skipping the privileged tests (--unprivileged)");
        return Ok(());
    }
    let bpffs_was_mounted = bpffs_mounted();
    // The prctl watch is a tracepoint, found through tracefs; systemd hosts
    // mount it, a bare build machine may not.
    let tracefs_was_mounted = tracefs_mounted();
    if !tracefs_was_mounted {
        run_cmd(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))?;
    }
    // One build with the privileged tests' feature runs every test: a
    // second build of the daemon and its test binaries without the feature
    // would cost minutes and test nothing more (the feature only lets tests
    // move the manager's root and the clone path through variables they set).
    let result = cargo(&[&workspace[..], &["--features", "warrant/privileged-tests"]].concat());
    if !bpffs_was_mounted && bpffs_mounted() {
        // The tests mounted bpffs (as the daemon does); leave the host as found.
        let _ = Command::new("umount").arg("/sys/fs/bpf").status();
    }
    if !tracefs_was_mounted {
        let _ = Command::new("umount").arg(TRACEFS).status();
    }
    result
}

const TRACEFS: &str = "/sys/kernel/tracing";

fn tracefs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(2) == Some("tracefs"))
    })
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
    })
}

/// Runs cargo with `args` from the workspace root, failing on a non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run_cmd(Command::new(cargo).args(args).current_dir(workspace_root()))
}

pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Cargo's target directory (CARGO_TARGET_DIR or the workspace's target/),
/// where `cargo build` puts the binaries.
pub fn target_dir() -> Result<std::path::PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_root())
        .output()
        .context("cannot run cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    metadata["target_directory"]
        .as_str()
        .map(std::path::PathBuf::from)
        .context("cargo metadata names no target_directory")
}

/// The checkout xtask runs from: `cargo run` sets CARGO_MANIFEST_DIR for
/// the process, which is right even when one target directory serves
/// several checkouts (cargo then reuses an xtask binary built in another,
/// whose compile-time path would name that one).
pub fn workspace_root() -> std::path::PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    manifest_dir
        .parent()
        .map(|p| p.to_owned())
        .unwrap_or_default()
}
