//! The figures of the deployed bench, one function each: how it is
//! measured, the rows it adds to the report and their targets (the issue's,
//! restated in the README's table of figures).

use std::{
    collections::HashMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Figure, Plan, check_interrupted,
    load::{self, H2Load, IdleHolder, Wrk, WrkResult},
    procfs::{self, Processes},
    report::{self, Report, Row, signed, spread, thousands},
    stats::{Spread, differences, slope},
    world::{STREAM_BYTES, STREAM_PATH, Target, World},
};

pub(super) fn measure(
    world: &mut World,
    plan: &Plan,
    figure: Figure,
    report: &mut Report,
) -> Result<()> {
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
    let accepted = server.accepted_connections()?;
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
    // Accepted connections, not descriptors: a proxy keeps its pooled
    // upstream connections (warrant one pool per lane) to their own idle
    // timeout, and the server ones are what the client closed.
    wait_for(Duration::from_secs(60), || {
        Ok(server.accepted_connections()? <= accepted)
    })
    .with_context(|| {
        let left = server.accepted_connections().unwrap_or(usize::MAX);
        format!(
            "{} did not close its connections ({left} left)",
            target.label()
        )
    })?;
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

/// The RSS once it stops moving: unchanged for 2 s (read every 200 ms),
/// at most 15 s. Memory freed by tasks that end after their sockets close
/// counts, and so does what the allocator returns on its decay schedule
/// (warrant's jemalloc purges freed pages over about a second, gradually:
/// two equal readings 200 ms apart can fall mid-decay).
fn settled_rss(server: &Processes) -> Result<u64> {
    const STEADY: Duration = Duration::from_secs(2);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = server.rss_kib()?;
    let mut since = Instant::now();
    while since.elapsed() < STEADY && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = server.rss_kib()?;
        if now != last {
            last = now;
            since = Instant::now();
        }
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
