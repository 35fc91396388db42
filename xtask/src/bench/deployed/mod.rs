//! `cargo xtask bench deployed`: warrant as users run it, against nginx as
//! the proxy they would pick instead.
//!
//! The release binary (built here, with its eBPF programs) runs with its
//! embedded default config, attached to a cgroup the bench creates. Clients
//! are separate processes in a tagged cgroup, with a private /etc/hosts
//! that sends api.openai.com to a loopback upstream: connect() is
//! redirected to warrant, which attests the client, injects the credential
//! and forwards to the upstream, as on a real host. See world.rs for the
//! setup and its cleanup.
//!
//! - Upstream: nginx on 127.0.0.161:443 (fast fixed answers, a static SSE
//!   stream); it answers 401 unless the real key is present, so every 2xx
//!   through a proxy proves the injection happened.
//! - Peer: nginx as a TLS reverse proxy on 127.0.0.162:443 setting the same
//!   header. Both nginx instances have as many workers as warrant has tokio
//!   worker threads.
//! - Direct (client to upstream) is the baseline for added latency and for
//!   streaming.
//! - Clients: wrk (HTTP/1.1), h2load (HTTP/2), and bench_client
//!   (daemon/examples/bench_client.rs: new connections, idle connections).
//!
//! Every figure is measured in runs; within a run the targets are measured
//! back to back, in alternating order from run to run, and a ratio is
//! taken within each run; the table shows the median and quartiles of
//! those ratios. A missed target is reported, never an error; a failed
//! request (error, timeout, non-2xx) is, since then the setup is broken.

mod figures;
mod load;
mod procfs;
mod report;
mod stats;
mod world;

use std::{
    fmt::Write as _,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use nix::sys::{
    resource::{Resource, getrlimit, setrlimit},
    signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction},
};

use self::{
    report::{Report, thousands},
    world::{Binaries, NOFILE, Target, World},
};
use crate::{cargo, setup, target_dir, workspace_root};

#[derive(Args)]
pub struct Options {
    /// deployed: fewer and shorter runs (3 per figure, 2,000 idle
    /// connections, a 20 s soak): for iterating, not for the README.
    #[arg(long)]
    quick: bool,
    /// deployed: measure only these figures (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Figure>,
    /// deployed: runs per figure (default 5; 3 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// deployed: length of the soak in seconds (default 120; 20 with
    /// --quick).
    #[arg(long)]
    soak_secs: Option<u64>,
}

/// The figures, in the order they are measured (memory, scaling and soak
/// restart the processes, so they come last).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Figure {
    /// Added keep-alive latency p50/p99, HTTP/1.1, c=1.
    Latency,
    /// Requests/s and CPU per request, HTTP/1.1, c=64.
    RpsH1,
    /// Requests/s and CPU per request, HTTP/2, 64×1 and 4×32 streams.
    RpsH2,
    /// New connection + one request.
    NewConnection,
    /// SSE streaming throughput.
    Sse,
    /// RSS idle, memory per idle TLS connection, RSS after they close.
    Memory,
    /// RSS and latency with 1 to 10,000 live connections.
    Scaling,
    /// RSS sampled through a soak at c=64.
    Soak,
}

impl Figure {
    fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

/// How much of each figure: the full plan or --quick.
struct Plan {
    runs: usize,
    latency: Duration,
    rps: Duration,
    connects: usize,
    sse: Duration,
    idle: usize,
    scaling: Vec<usize>,
    scaling_run: Duration,
    soak: Duration,
}

impl Plan {
    fn new(options: &Options) -> Plan {
        let secs = Duration::from_secs;
        let mut plan = if options.quick {
            Plan {
                runs: 3,
                latency: secs(2),
                rps: secs(2),
                connects: 50,
                sse: secs(2),
                idle: 2_000,
                scaling: vec![0, 100, 1_000],
                scaling_run: secs(2),
                soak: secs(20),
            }
        } else {
            Plan {
                runs: 5,
                latency: secs(5),
                rps: secs(8),
                connects: 200,
                sse: secs(5),
                idle: 10_000,
                scaling: vec![0, 100, 1_000, 10_000],
                scaling_run: secs(5),
                soak: secs(120),
            }
        };
        if let Some(runs) = options.runs {
            plan.runs = runs.max(1);
        }
        if let Some(secs) = options.soak_secs {
            plan.soak = Duration::from_secs(secs.max(10));
        }
        plan
    }
}

/// Set by SIGINT/SIGTERM/SIGHUP; the bench stops at the next step and
/// cleans up (its children are in their own process groups and do not see
/// a Ctrl-C).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: std::ffi::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn catch_interrupts() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // Safety: the handler only stores to an atomic, which is
        // async-signal-safe; nothing else in xtask installs handlers.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn run(options: &Options) -> Result<()> {
    if !crate::nix_is_root() {
        bail!("bench deployed needs root (eBPF, cgroups, mount namespaces)");
    }
    catch_interrupts()?;
    let bins = build()?;
    check_interrupted()?;
    let nofile = raise_nofile()?;
    let mut plan = Plan::new(options);
    let fitted = fit_to_nofile(&mut plan, nofile);
    // In the order declared, whatever the order asked.
    let figures: Vec<Figure> = Figure::value_variants()
        .iter()
        .copied()
        .filter(|f| options.only.is_empty() || options.only.contains(f))
        .collect();
    let workers = tokio_workers();
    let mut report = Report {
        header: header(options, &plan, workers),
        ..Report::default()
    };
    report.header.extend(fitted);
    let started = Instant::now();
    let mut world = World::start(bins, workers, nofile)?;
    let result = check_interrupted()
        .and_then(|()| smoke(&world))
        .and_then(|()| {
            figures
                .iter()
                .try_for_each(|&figure| figures::measure(&mut world, &plan, figure, &mut report))
        });
    if result.is_err() && !INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!(
            "bench deployed failed; the logs end with:\n{}",
            world.logs()
        );
    }
    drop(world);
    result?;
    report.header.push(format!(
        "Took {:.1} min.",
        started.elapsed().as_secs_f64() / 60.0
    ));
    publish(&report)
}

/// The nginx, wrk and h2load packages; the release warrant (with its eBPF
/// programs) and bench_client.
fn build() -> Result<Binaries> {
    setup::install_bench_tools(setup::BENCH_PACKAGES)?;
    cargo(&[
        "build",
        "--release",
        "-p",
        "warrant",
        "--bin",
        "warrant",
        "--example",
        "bench_client",
    ])?;
    let release = target_dir()?.join("release");
    Ok(Binaries {
        warrant: release.join("warrant"),
        client: release.join("examples/bench_client"),
        nginx: ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .context("nginx is not installed")?,
    })
}

/// Prints the report and writes it to target/bench/deployed.md (in the
/// workspace, wherever CARGO_TARGET_DIR points).
fn publish(report: &Report) -> Result<()> {
    let markdown = report.markdown();
    println!("\n{markdown}");
    let out = workspace_root().join("target/bench/deployed.md");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, markdown)?;
    println!("written to {}", out.display());
    Ok(())
}

/// Tokio's default: one worker thread per CPU, unless TOKIO_WORKER_THREADS
/// (which warrant inherits from us) says otherwise.
fn tokio_workers() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// 10,000 idle connections need an fd each in the client and the proxy.
/// Children inherit the limit (warrant raises its soft limit to the hard
/// one; nginx is told with worker_rlimit_nofile). The hard limit is raised
/// to NOFILE where we may (root outside a container); returns the limit in
/// force.
fn raise_nofile() -> Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if hard < NOFILE && setrlimit(Resource::RLIMIT_NOFILE, NOFILE, NOFILE).is_ok() {
        return Ok(NOFILE);
    }
    let limit = hard.min(NOFILE).max(soft);
    setrlimit(Resource::RLIMIT_NOFILE, limit, hard).context("raising RLIMIT_NOFILE")?;
    Ok(limit)
}

/// Fits the idle-connection counts under the fd limit (a connection is an
/// fd in the client and one in the proxy, and each process has others).
fn fit_to_nofile(plan: &mut Plan, nofile: u64) -> Option<String> {
    let cap = usize::try_from(nofile.saturating_sub(1024)).unwrap_or(usize::MAX);
    if plan.idle <= cap && plan.scaling.iter().all(|&n| n <= cap) {
        return None;
    }
    plan.idle = plan.idle.min(cap);
    for n in &mut plan.scaling {
        *n = (*n).min(cap);
    }
    plan.scaling.dedup();
    Some(format!(
        "RLIMIT_NOFILE is {nofile} here (its hard limit cannot be raised): at most {} idle \
         connections.",
        thousands(cap as f64)
    ))
}

fn header(options: &Options, plan: &Plan, workers: usize) -> Vec<String> {
    let mut command = String::from("cargo xtask bench deployed");
    if options.quick {
        command.push_str(" --quick");
    }
    if let Some(runs) = options.runs {
        let _ = write!(command, " --runs {runs}");
    }
    if let Some(secs) = options.soak_secs {
        let _ = write!(command, " --soak-secs {secs}");
    }
    if !options.only.is_empty() {
        let only: Vec<String> = options.only.iter().map(|f| f.name()).collect();
        let _ = write!(command, " --only {}", only.join(","));
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace_root())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let dirty = if git(&["status", "--porcelain", "--untracked-files=no"]).is_empty() {
        ""
    } else {
        " (with uncommitted changes)"
    };
    let shell = |cmd: &str| {
        Command::new("sh")
            .args(["-c", cmd])
            .output()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                text.lines().next().unwrap_or_default().trim().to_owned()
            })
            .unwrap_or_default()
    };
    vec![
        format!(
            "Commit {}{dirty}, `{command}`, {}.",
            git(&["rev-parse", "--short=12", "HEAD"]),
            shell("date -u '+%Y-%m-%d %H:%M UTC'")
        ),
        format!(
            "Machine: {workers} CPUs, Linux {}, load average {} at the start; {}; {}; {}.",
            shell("uname -r"),
            shell("cut -d' ' -f1-3 /proc/loadavg"),
            shell("nginx -v"),
            shell("wrk -v").split(" [").next().unwrap_or_default(),
            shell("h2load --version"),
        ),
        format!(
            "warrant: {workers} tokio worker threads (its default); each nginx: {workers} workers. \
             {} runs per figure, targets in alternating order; ratios are taken within a run, then \
             the median and quartiles of the runs'.",
            plan.runs
        ),
    ]
}

/// One request through each target before anything is measured: a broken
/// setup fails here, with the logs.
fn smoke(world: &World) -> Result<()> {
    for target in [Target::Direct, Target::Warrant, Target::Nginx] {
        load::new_connections(world, target, 3)
            .with_context(|| format!("the first request through {}", target.label()))?;
    }
    Ok(())
}
