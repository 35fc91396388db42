//! `cargo xtask`: the project's developer tasks.
//!
//! setup   install what building and testing need (idempotent, fast when done)
//! build   build the daemon with its eBPF programs
//! test    setup, then every test: unit, integration, privileged (root)
//! lint    rustfmt check and clippy with warnings denied
//! demo    the daemon injecting a credential into a sample agent
//! bench   the benchmarks, printed as ratios against a baseline in one run
//! package the Debian package (target/debian/warrant_VERSION_amd64.deb)
//! vm-test the package and its systemd units in Debian VMs (6.1 and 6.12)

mod demo;
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
    /// Run the demo: the daemon injecting a credential into a sample agent.
    Demo,
    /// Run a benchmark: redirect | attest | policy (all if none given).
    Bench { name: Option<String> },
    /// Build the Debian package (release binary with its eBPF programs).
    Package,
    /// Install, tag, restart and purge the .deb in Debian VMs under qemu:
    /// one verdict per kernel (6.1 and 6.12). Needs root (debootstrap).
    VmTest {
        /// Only this kernel: 6.1 or 6.12.
        #[arg(long)]
        kernel: Option<String>,
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
            cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                "warrant-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])?;
            cargo(&[
                "clippy",
                "-p",
                "warrant",
                "--all-targets",
                "--features",
                "privileged-tests",
                "--",
                "-D",
                "warnings",
            ])
        }
        Task::Demo => demo::run(),
        Task::Bench { name } => bench(name.as_deref()),
        Task::Package => package::run().map(|_| ()),
        Task::VmTest { kernel } => vm::run(kernel.as_deref()),
    }
}

fn test(unprivileged: bool) -> Result<()> {
    setup::run()?;
    // warrant-ebpf builds only for the bpf target (daemon/build.rs does that).
    cargo(&["test", "--workspace", "--exclude", "warrant-ebpf"])?;
    if unprivileged {
        println!("xtask: skipping the privileged tests (--unprivileged)");
        return Ok(());
    }
    if !nix_is_root() {
        bail!(
            "the privileged tests (eBPF, cgroups) need root: run as root, or pass --unprivileged to skip them"
        );
    }
    let bpffs_was_mounted = bpffs_mounted();
    // The prctl watch is a tracepoint, found through tracefs; systemd hosts
    // mount it, a bare build machine may not.
    let tracefs_was_mounted = tracefs_mounted();
    if !tracefs_was_mounted {
        run_cmd(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))?;
    }
    let result = cargo(&[
        "test",
        "-p",
        "warrant",
        "--features",
        "privileged-tests",
        "--test",
        "*privileged*",
    ]);
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

const BENCHES: &[&str] = &["redirect", "attest", "policy", "proxy", "usage"];

fn bench(name: Option<&str>) -> Result<()> {
    setup::run()?;
    let names: Vec<&str> = match name {
        Some(name) if BENCHES.contains(&name) => vec![name],
        Some(name) => bail!(
            "unknown bench {name:?}; expected one of {}",
            BENCHES.join(", ")
        ),
        None => BENCHES.to_vec(),
    };
    if names.contains(&"proxy") {
        setup::install_nginx()?;
    }
    for name in names {
        let example = format!("bench_{name}");
        if !std::path::Path::new("daemon/examples")
            .join(format!("{example}.rs"))
            .exists()
        {
            println!("xtask: bench {name} is not written yet");
            continue;
        }
        println!("== bench {name}");
        cargo(&[
            "run",
            "--quiet",
            "--release",
            "-p",
            "warrant",
            "--example",
            &example,
        ])?;
    }
    Ok(())
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

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.to_owned())
        .unwrap_or_default()
}
