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

mod load;
mod procfs;
mod report;
mod stats;
mod world;

use std::{
    collections::HashMap,
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
    load::{H2Load, IdleHolder, Wrk, WrkResult},
    procfs::Processes,
    report::{Report, Row, signed, spread, thousands},
    stats::{Spread, differences, slope},
    world::{Binaries, NOFILE, STREAM_BYTES, STREAM_PATH, Target, World},
};
use crate::{cargo, setup, target_dir, workspace_root};

#[derive(Args, Default)]
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
    const ALL: [Figure; 8] = [
        Figure::Latency,
        Figure::RpsH1,
        Figure::RpsH2,
        Figure::NewConnection,
        Figure::Sse,
        Figure::Memory,
        Figure::Scaling,
        Figure::Soak,
    ];

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
    let figures: Vec<Figure> = if options.only.is_empty() {
        Figure::ALL.to_vec()
    } else {
        Figure::ALL
            .into_iter()
            .filter(|f| options.only.contains(f))
            .collect()
    };
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
                .try_for_each(|&figure| measure(&mut world, &plan, figure, &mut report))
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

fn measure(world: &mut World, plan: &Plan, figure: Figure, report: &mut Report) -> Result<()> {
    println!("== {}", figure.name());
    match figure {
        Figure::Latency => latency(world, plan, report),
        Figure::RpsH1 => rps(world, plan, report, &Load::H1, "HTTP/1.1, c=64"),
        Figure::RpsH2 => {
            rps(
                world,
                plan,
                report,
                &Load::H2 {
                    connections: 64,
                    streams: 1,
                },
                "HTTP/2, 64 connections × 1 stream",
            )?;
            rps(
                world,
                plan,
                report,
                &Load::H2 {
                    connections: 4,
                    streams: 32,
                },
                "HTTP/2, 4 connections × 32 streams",
            )
        }
        Figure::NewConnection => new_connection(world, plan, report),
        Figure::Sse => sse(world, plan, report),
        Figure::Memory => memory(world, plan, report),
        Figure::Scaling => scaling(world, plan, report),
        Figure::Soak => soak(world, plan, report),
    }
}

/// The targets of a run in this run's order: reversed every other run, so
/// that drift and warm-up favour none.
fn order(run: usize, targets: &[Target]) -> Vec<Target> {
    let mut targets = targets.to_vec();
    if run % 2 == 1 {
        targets.reverse();
    }
    targets
}

/// Per-target results of every run, in run order.
struct Runs<T>(HashMap<Target, Vec<T>>);

impl<T: Copy> Runs<T> {
    fn new() -> Self {
        Runs(HashMap::new())
    }

    fn push(&mut self, target: Target, value: T) {
        self.0.entry(target).or_default().push(value);
    }

    fn values(&self, target: Target, f: impl Fn(T) -> f64) -> Vec<f64> {
        self.0
            .get(&target)
            .map(|v| v.iter().copied().map(f).collect())
            .unwrap_or_default()
    }
}

fn ms(s: Spread) -> String {
    spread(s, 3, "ms")
}

fn latency(world: &mut World, plan: &Plan, report: &mut Report) -> Result<()> {
    let targets = [Target::Direct, Target::Warrant, Target::Nginx];
    let spec = Wrk {
        connections: 1,
        duration: plan.latency,
        get: None,
    };
    warm_up(world, &targets, &Load::H1)?;
    let mut runs = Runs::new();
    for run in 0..plan.runs {
        let mut line = format!("  run {}/{}:", run + 1, plan.runs);
        for target in order(run, &targets) {
            check_interrupted()?;
            let r = load::wrk(world, target, &spec)?;
            let _ = write!(
                line,
                " {} p50 {:.3} p99 {:.3} ms;",
                target.label(),
                r.p50_ms,
                r.p99_ms
            );
            runs.push(target, r);
        }
        println!("{line}");
    }
    // Both are judged on what each proxy adds over direct in the same run.
    // The p50 ratio is of the added latencies; the p99 ratio is of the
    // totals, since an added p99 near zero (scheduler noise on a shared
    // machine) makes a ratio of added values meaningless.
    struct Percentile {
        name: &'static str,
        pick: fn(WrkResult) -> f64,
        allowance_ms: f64,
        target: &'static str,
        ratio_of: &'static str,
    }
    let percentiles = [
        Percentile {
            name: "p50",
            pick: |r| r.p50_ms,
            allowance_ms: 0.05,
            target: "≤ nginx's + 0.05 ms",
            ratio_of: "ratio of the added",
        },
        Percentile {
            name: "p99",
            pick: |r| r.p99_ms,
            allowance_ms: 0.0,
            target: "≤ nginx's",
            ratio_of: "ratio of total p99",
        },
    ];
    for Percentile {
        name,
        pick,
        allowance_ms,
        target,
        ratio_of,
    } in percentiles
    {
        let values = |t| runs.values(t, pick);
        let (direct, warrant, nginx) = (
            values(Target::Direct),
            values(Target::Warrant),
            values(Target::Nginx),
        );
        let warrant_added = differences(&warrant, &direct);
        let nginx_added = differences(&nginx, &direct);
        let excess = Spread::of(&differences(&warrant_added, &nginx_added));
        report.rows.push(Row {
            figure: format!("added keep-alive latency {name}, HTTP/1.1, c=1 ({ratio_of})"),
            warrant: signed(Spread::of(&warrant_added), 3, "ms"),
            baseline: format!("nginx {}", signed(Spread::of(&nginx_added), 3, "ms")),
            ratio: Some(if name == "p50" {
                Spread::of_ratios(&warrant_added, &nginx_added)
            } else {
                Spread::of_ratios(&warrant, &nginx)
            }),
            target: target.to_owned(),
            met: Some(excess.median <= allowance_ms),
        });
        report.sections.push(format!(
            "Keep-alive {name}, c=1: direct {}, warrant {}, nginx {}; warrant's added minus \
             nginx's {}.",
            ms(Spread::of(&direct)),
            ms(Spread::of(&warrant)),
            ms(Spread::of(&nginx)),
            signed(excess, 3, "ms"),
        ));
    }
    Ok(())
}

/// A load generator for the throughput figures.
enum Load {
    /// wrk, 64 connections.
    H1,
    /// h2load.
    H2 { connections: u32, streams: u32 },
}

impl Load {
    /// Requests and seconds of one run through `target`.
    fn run(&self, world: &World, target: Target, duration: Duration) -> Result<(u64, f64)> {
        Ok(match *self {
            Load::H1 => {
                let r = load::wrk(
                    world,
                    target,
                    &Wrk {
                        connections: 64,
                        duration,
                        get: None,
                    },
                )?;
                (r.requests, r.seconds)
            }
            Load::H2 {
                connections,
                streams,
            } => {
                let r = load::h2load(
                    world,
                    target,
                    &H2Load {
                        connections,
                        streams,
                        duration,
                    },
                )?;
                (r.requests, r.seconds)
            }
        })
    }
}

/// A second of load through each target, unmeasured: pools, caches,
/// attestation and the CPU's clock settle before the first run.
fn warm_up(world: &World, targets: &[Target], load: &Load) -> Result<()> {
    for &target in targets {
        check_interrupted()?;
        load.run(world, target, Duration::from_secs(1))?;
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Throughput {
    rps: f64,
    /// Server CPU time per request, µs (NaN for the direct upstream).
    cpu_us: f64,
}

fn rps(world: &mut World, plan: &Plan, report: &mut Report, load: &Load, what: &str) -> Result<()> {
    let targets = [Target::Warrant, Target::Nginx, Target::Direct];
    warm_up(world, &targets, load)?;
    let mut runs = Runs::new();
    for run in 0..plan.runs {
        let mut line = format!("  run {}/{}:", run + 1, plan.runs);
        for target in order(run, &targets) {
            check_interrupted()?;
            let server = world.server(target)?;
            let cpu = server.cpu_time()?;
            let (requests, seconds) = load.run(world, target, plan.rps)?;
            let cpu = server.cpu_time()?.saturating_sub(cpu);
            let t = Throughput {
                rps: requests as f64 / seconds,
                cpu_us: cpu.as_secs_f64() * 1e6 / requests as f64,
            };
            let _ = write!(
                line,
                " {} {} req/s ({:.1} µs CPU/req);",
                target.label(),
                thousands(t.rps),
                t.cpu_us
            );
            runs.push(target, t);
        }
        println!("{line}");
    }
    let rps = |t| runs.values(t, |r: Throughput| r.rps);
    let cpu = |t| runs.values(t, |r: Throughput| r.cpu_us);
    let ratio = Spread::of_ratios(&rps(Target::Warrant), &rps(Target::Nginx));
    report.rows.push(Row {
        figure: format!("requests/s, {what}"),
        warrant: thousands(Spread::of(&rps(Target::Warrant)).median),
        baseline: format!(
            "nginx {}",
            thousands(Spread::of(&rps(Target::Nginx)).median)
        ),
        ratio: Some(ratio),
        target: "≥ 1.0×".to_owned(),
        met: Some(ratio.median >= 1.0),
    });
    report.rows.push(Row {
        figure: format!("CPU time per request (server process), {what}"),
        warrant: spread(Spread::of(&cpu(Target::Warrant)), 1, "µs"),
        baseline: format!("nginx {}", spread(Spread::of(&cpu(Target::Nginx)), 1, "µs")),
        ratio: Some(Spread::of_ratios(
            &cpu(Target::Warrant),
            &cpu(Target::Nginx),
        )),
        target: "—".to_owned(),
        met: None,
    });
    report.sections.push(format!(
        "Requests/s, {what}: direct to the upstream {} req/s (quartiles {}–{}), the ceiling of this machine.",
        thousands(Spread::of(&rps(Target::Direct)).median),
        thousands(Spread::of(&rps(Target::Direct)).q1),
        thousands(Spread::of(&rps(Target::Direct)).q3),
    ));
    Ok(())
}

fn new_connection(world: &mut World, plan: &Plan, report: &mut Report) -> Result<()> {
    let targets = [Target::Direct, Target::Warrant, Target::Nginx];
    let mut runs = Runs::new();
    for run in 0..plan.runs {
        let mut line = format!("  run {}/{}:", run + 1, plan.runs);
        for target in order(run, &targets) {
            check_interrupted()?;
            let r = load::new_connections(world, target, plan.connects)?;
            let _ = write!(line, " {} p50 {:.3} ms;", target.label(), r.p50_ms);
            runs.push(target, r.p50_ms);
        }
        println!("{line}");
    }
    let p50 = |t| runs.values(t, |v: f64| v);
    let ratio = Spread::of_ratios(&p50(Target::Warrant), &p50(Target::Nginx));
    report.rows.push(Row {
        figure: "new connection + one request (TCP, full TLS handshake), p50".to_owned(),
        warrant: ms(Spread::of(&p50(Target::Warrant))),
        baseline: format!("nginx {}", ms(Spread::of(&p50(Target::Nginx)))),
        ratio: Some(ratio),
        target: "≤ 1.05×".to_owned(),
        met: Some(ratio.median <= 1.05),
    });
    report.sections.push(format!(
        "New connection + one request: direct {} ({} connections a run).",
        ms(Spread::of(&p50(Target::Direct))),
        plan.connects
    ));
    Ok(())
}

#[derive(Clone, Copy)]
struct Stream {
    mib_per_s: f64,
    /// CPU of the client (wrk, one thread) over the run, in cores: near 1
    /// means the client, not the path, bounds the figure.
    client_cores: f64,
}

fn sse(world: &mut World, plan: &Plan, report: &mut Report) -> Result<()> {
    let targets = [Target::Direct, Target::Warrant, Target::Nginx];
    let spec = Wrk {
        connections: 1,
        duration: plan.sse,
        get: Some(STREAM_PATH),
    };
    let mut runs = Runs::new();
    for run in 0..plan.runs {
        let mut line = format!("  run {}/{}:", run + 1, plan.runs);
        for target in order(run, &targets) {
            check_interrupted()?;
            let client_cpu = procfs::waited_children_cpu_time()?;
            let r = load::wrk(world, target, &spec)?;
            let client_cpu = procfs::waited_children_cpu_time()?.saturating_sub(client_cpu);
            let s = Stream {
                mib_per_s: r.mib_per_s(),
                client_cores: client_cpu.as_secs_f64() / r.seconds,
            };
            let _ = write!(
                line,
                " {} {:.0} MiB/s (client {:.0}% of a core);",
                target.label(),
                s.mib_per_s,
                s.client_cores * 100.0
            );
            runs.push(target, s);
        }
        println!("{line}");
    }
    let mibs = |t| runs.values(t, |s: Stream| s.mib_per_s);
    let client = |t| Spread::of(&runs.values(t, |s: Stream| s.client_cores)).median * 100.0;
    let ratio = Spread::of_ratios(&mibs(Target::Warrant), &mibs(Target::Direct));
    report.rows.push(Row {
        figure: format!(
            "SSE streaming, one {} MiB OpenAI chat stream, HTTP/1.1",
            STREAM_BYTES >> 20
        ),
        warrant: spread(Spread::of(&mibs(Target::Warrant)), 0, "MiB/s"),
        baseline: format!(
            "direct {}",
            spread(Spread::of(&mibs(Target::Direct)), 0, "MiB/s")
        ),
        ratio: Some(ratio),
        target: "≥ 0.9× direct".to_owned(),
        met: Some(ratio.median >= 0.9),
    });
    report.sections.push(format!(
        "SSE: nginx as the proxy {}; warrant / nginx {}. The client (wrk, one thread) used \
         {:.0}% of a core direct, {:.0}% through warrant, {:.0}% through nginx (near 100%: the \
         client bounds that figure).",
        spread(Spread::of(&mibs(Target::Nginx)), 0, "MiB/s"),
        report::ratio(Spread::of_ratios(
            &mibs(Target::Warrant),
            &mibs(Target::Nginx)
        )),
        client(Target::Direct),
        client(Target::Warrant),
        client(Target::Nginx),
    ));
    Ok(())
}

#[derive(Clone, Copy)]
struct IdleMemory {
    /// KiB per connection while they are open.
    per_connection_kib: f64,
    /// MiB above the RSS before they opened, once they are closed.
    left_mib: f64,
    /// Share of the added memory given back after the close.
    returned: f64,
    peak_mib: f64,
}

fn memory(world: &mut World, plan: &Plan, report: &mut Report) -> Result<()> {
    let targets = [Target::Warrant, Target::Nginx];
    let mut idle_rss = Runs::new();
    let mut runs = Runs::new();
    for run in 0..plan.runs {
        check_interrupted()?;
        // Fresh processes each run: memory one run freed but kept would
        // flatter the next.
        world.start_warrant()?;
        world.start_proxy()?;
        let mut line = format!("  run {}/{}:", run + 1, plan.runs);
        for target in targets {
            // Once it stops moving: nginx's workers are still touching
            // their memory just after they start.
            let mib = mib(settled_rss(&world.server(target)?)?);
            let _ = write!(line, " {} idle {mib:.1} MiB;", target.label());
            idle_rss.push(target, mib);
        }
        for target in order(run, &targets) {
            check_interrupted()?;
            let m = idle_connections(world, target, plan.idle)?;
            let _ = write!(
                line,
                " {} {:.1} KiB/conn, peak {:.1} MiB, {} returned;",
                target.label(),
                m.per_connection_kib,
                m.peak_mib,
                percent(m.returned)
            );
            runs.push(target, m);
        }
        println!("{line}");
    }
    let idle = Spread::of(&idle_rss.values(Target::Warrant, |v| v));
    report.rows.push(Row {
        figure: "RSS idle (fresh start, once it stops moving)".to_owned(),
        warrant: spread(idle, 1, "MiB"),
        baseline: format!(
            "nginx workers {}",
            spread(Spread::of(&idle_rss.values(Target::Nginx, |v| v)), 1, "MiB")
        ),
        ratio: None,
        target: "≤ 12 MiB".to_owned(),
        met: Some(idle.median <= 12.0),
    });
    let per = |t| runs.values(t, |m: IdleMemory| m.per_connection_kib);
    let ratio = Spread::of_ratios(&per(Target::Warrant), &per(Target::Nginx));
    report.rows.push(Row {
        figure: format!(
            "memory per idle TLS connection ({} open, each after one request)",
            thousands(plan.idle as f64)
        ),
        warrant: spread(Spread::of(&per(Target::Warrant)), 1, "KiB"),
        baseline: format!(
            "nginx workers {}",
            spread(Spread::of(&per(Target::Nginx)), 1, "KiB")
        ),
        ratio: Some(ratio),
        target: "≤ 0.5×".to_owned(),
        met: Some(ratio.median <= 0.5),
    });
    let returned = |t| Spread::of(&runs.values(t, |m: IdleMemory| m.returned));
    let left = |t| Spread::of(&runs.values(t, |m: IdleMemory| m.left_mib));
    let describe = |t| {
        format!(
            "{} left, {} returned",
            signed(left(t), 1, "MiB"),
            percent(returned(t).median)
        )
    };
    report.rows.push(Row {
        figure: "RSS after those connections close (above the RSS before)".to_owned(),
        warrant: describe(Target::Warrant),
        baseline: format!("nginx {}", describe(Target::Nginx)),
        ratio: None,
        target: "returned (≥ 90%)".to_owned(),
        met: Some(returned(Target::Warrant).median >= 0.9),
    });
    let peak = |t| Spread::of(&runs.values(t, |m: IdleMemory| m.peak_mib));
    report.sections.push(format!(
        "Idle connections: RSS with {} open: warrant {}, nginx workers {}. Both proxies keep \
         idle keep-alive connections for 300 s here (warrant's header_read_timeout_secs, nginx's \
         keepalive_timeout); warrant's max_connections is raised to 30,000.",
        thousands(plan.idle as f64),
        spread(peak(Target::Warrant), 1, "MiB"),
        spread(peak(Target::Nginx), 1, "MiB"),
    ));
    Ok(())
}

/// "42%", never "-0%".
fn percent(share: f64) -> String {
    let p = (share * 100.0).round();
    format!("{}%", if p == 0.0 { 0.0 } else { p })
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Opens `n` idle connections through `target`, checks the server holds
/// them, closes them and waits until the server has let them go.
fn idle_connections(world: &World, target: Target, n: usize) -> Result<IdleMemory> {
    let server = world.server(target)?;
    let before = server.rss_kib()?;
    let fds = server.fd_count()?;
    let mut holder = IdleHolder::start(world, target)?;
    holder.open(n)?;
    let held = server.fd_count()?.saturating_sub(fds);
    if held < n * 99 / 100 {
        bail!(
            "{} holds {held} more descriptors with {n} connections open",
            target.label()
        );
    }
    let peak = server.rss_kib()?;
    let alive = holder.alive()?;
    if alive != n {
        bail!("{} closed {} idle connections", target.label(), n - alive);
    }
    holder.close()?;
    drop(holder);
    wait_for(
        Duration::from_secs(60),
        || Ok(server.fd_count()? <= fds + 2),
    )
    .with_context(|| format!("{} did not close its connections", target.label()))?;
    let after = settled_rss(&server)?;
    let added = peak.saturating_sub(before) as f64;
    Ok(IdleMemory {
        per_connection_kib: added / n as f64,
        left_mib: mib(after) - mib(before),
        returned: if added > 0.0 {
            (peak as f64 - after as f64) / added
        } else {
            1.0
        },
        peak_mib: mib(peak),
    })
}

/// Polls `done` every 20 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done()? {
        check_interrupted()?;
        if Instant::now() > deadline {
            bail!("still waiting after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The RSS once it stops moving (the same reading 200 ms apart, at most
/// 5 s): memory freed by tasks that end after their sockets close counts.
fn settled_rss(server: &Processes) -> Result<u64> {
    let mut last = server.rss_kib()?;
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(200));
        let now = server.rss_kib()?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(last)
}

fn scaling(world: &mut World, plan: &Plan, report: &mut Report) -> Result<()> {
    world.start_warrant()?;
    world.start_proxy()?;
    let spec = Wrk {
        connections: 1,
        duration: plan.scaling_run,
        get: None,
    };
    let mut table = String::from(
        "Cost of live connections: idle keep-alive connections (each after one request) plus \
         one client measuring keep-alive latency at c=1 (HTTP/1.1); fresh processes; CPU per \
         request is the server's over that client's run.\n\n\
         | live connections | warrant RSS | warrant p50 / p99 | warrant CPU/req | nginx RSS (workers) | nginx p50 / p99 | nginx CPU/req |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut cells: Vec<Vec<String>> = plan
        .scaling
        .iter()
        .map(|n| vec![thousands(*n as f64 + 1.0)])
        .collect();
    for target in [Target::Warrant, Target::Nginx] {
        let server = world.server(target)?;
        let mut holder = IdleHolder::start(world, target)?;
        for (i, &n) in plan.scaling.iter().enumerate() {
            check_interrupted()?;
            holder.open(n)?;
            let rss = mib(server.rss_kib()?);
            let cpu = server.cpu_time()?;
            let r = load::wrk(world, target, &spec)?;
            let cpu_us =
                server.cpu_time()?.saturating_sub(cpu).as_secs_f64() * 1e6 / r.requests as f64;
            println!(
                "  {} with {} live: RSS {rss:.1} MiB, p50 {:.3} ms, p99 {:.3} ms, {cpu_us:.1} µs CPU/req",
                target.label(),
                n + 1,
                r.p50_ms,
                r.p99_ms
            );
            cells[i].extend([
                format!("{rss:.1} MiB"),
                format!("{:.3} / {:.3} ms", r.p50_ms, r.p99_ms),
                format!("{cpu_us:.1} µs"),
            ]);
        }
        holder.close()?;
    }
    for row in cells {
        let _ = writeln!(table, "| {} |", row.join(" | "));
    }
    report.sections.push(table);
    Ok(())
}

/// RSS every 5 s through a soak; a leak shows as a slope that does not
/// flatten. Judged on the second half of the soak (the first is the
/// allocator and pools growing to their working size).
const SOAK_SAMPLE: Duration = Duration::from_secs(5);
/// The verdict's bound: 0.5 MiB a minute is about 0.5 bytes per request at
/// 20,000 requests/s, below any per-request leak.
const SOAK_SLOPE_MIB_PER_MIN: f64 = 0.5;

fn soak(world: &mut World, plan: &Plan, report: &mut Report) -> Result<()> {
    // Fresh: memory freed by earlier figures and reused would hide growth.
    world.start_warrant()?;
    let server = world.server(Target::Warrant)?;
    let cpu = server.cpu_time()?;
    let mut wrk = load::WrkRun::start(
        world,
        Target::Warrant,
        &Wrk {
            connections: 64,
            duration: plan.soak,
            get: None,
        },
    )?;
    let start = Instant::now();
    let mut samples: Vec<(f64, f64)> = vec![(0.0, mib(server.rss_kib()?))];
    let result = loop {
        if let Err(err) = check_interrupted() {
            wrk.kill();
            return Err(err);
        }
        let next = SOAK_SAMPLE * samples.len() as u32;
        std::thread::sleep(next.saturating_sub(start.elapsed()));
        if let Some(result) = wrk.try_finish()? {
            break result;
        }
        samples.push((start.elapsed().as_secs_f64(), mib(server.rss_kib()?)));
    };
    let cpu_us =
        server.cpu_time()?.saturating_sub(cpu).as_secs_f64() * 1e6 / result.requests as f64;
    let half = plan.soak.as_secs_f64() / 2.0;
    let late: Vec<(f64, f64)> = samples.iter().copied().filter(|s| s.0 >= half).collect();
    let per_min = slope(&late) * 60.0;
    let (first, last) = (
        samples.first().map_or(f64::NAN, |s| s.1),
        samples.last().map_or(f64::NAN, |s| s.1),
    );
    println!(
        "  {} req/s, RSS {first:.1} → {last:.1} MiB, second-half slope {per_min:+.2} MiB/min",
        thousands(result.rps())
    );
    report.rows.push(Row {
        figure: format!(
            "soak, {} s at c=64 (HTTP/1.1): RSS slope over its second half",
            plan.soak.as_secs()
        ),
        warrant: format!("{per_min:+.2} MiB/min (RSS {first:.1} → {last:.1} MiB)"),
        baseline: "—".to_owned(),
        ratio: None,
        target: format!("≤ {SOAK_SLOPE_MIB_PER_MIN} MiB/min (judged on a soak ≥ 60 s)"),
        met: (plan.soak >= Duration::from_secs(60)).then_some(per_min <= SOAK_SLOPE_MIB_PER_MIN),
    });
    report.rows.push(Row {
        figure: "CPU time per request through the soak".to_owned(),
        warrant: format!("{cpu_us:.1} µs at {} req/s", thousands(result.rps())),
        baseline: "—".to_owned(),
        ratio: None,
        target: "—".to_owned(),
        met: None,
    });
    let series: Vec<String> = samples.iter().map(|s| format!("{:.1}", s.1)).collect();
    report.sections.push(format!(
        "Soak: warrant's RSS every 5 s (MiB): {}.",
        series.join(" ")
    ));
    Ok(())
}
