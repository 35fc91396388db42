//! Attestation benchmark: `cargo xtask bench attest` (as root), or
//! `cargo run --release -p warrant --example bench_attest [MiB]`.
//!
//! Prints
//! - the cost of attesting one connection with a warm cache (target: at most
//!   20 µs), on a child process this program spawns (a copy of /bin/sh named
//!   python3 running a script, so that entrypoint resolution is included):
//!   once for a process already attested (the usual case: an agent opens
//!   many connections), and once for a process's first connection when its
//!   binary and script are already hashed (the /proc reads included). As
//!   root, the exec generations and prctl marks are read from the real eBPF
//!   maps, as the daemon's attestor reads them: the programs are attached to
//!   a cgroup this program creates (removed on exit), the child runs in a
//!   tagged cgroup below it, so its exec was stamped by the kernel. Without
//!   root it says so and uses an in-memory map instead;
//! - cold hashing throughput (MB/s) of a fresh cache on a file of MiB
//!   mebibytes (default 256), against the machine's `sha256sum` on the same
//!   file in the same run, with the ratio.
//!
//! The file is read from the page cache in both cases (it was just written),
//! so the comparison is of hashing, not of the disk.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use warrant::{
    attest::{
        Attestor, ExecGenerations, HashCache, InstanceHandle, MemoryExecGenerations, process,
    },
    config::AttestConfig,
    origin::Origin,
    redirect::{RedirectSettings, Redirector, cgroup},
};
use warrant_test_support::cgroups::{TestCgroup, TestPins};

const WARM_ITERATIONS: usize = 20_000;
const TARGET_US: f64 = 20.0;

fn main() -> anyhow::Result<()> {
    let mib: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 256,
    };
    let dir = tempfile::tempdir()?;
    warm_attestation(dir.path())?;
    cold_hashing(dir.path(), mib)?;
    Ok(())
}

fn warm_attestation(dir: &std::path::Path) -> anyhow::Result<()> {
    let python = dir.join("python3");
    std::fs::copy("/bin/sh", &python)?;
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(dir.join("agent.py"), "echo ready\nread line\n")?;
    let kernel = Kernel::attach()?;
    let mut command = Command::new(&python);
    command.arg("agent.py").current_dir(dir);
    if let Some(kernel) = &kernel {
        // Started in the tagged cgroup: the programs stamp its exec.
        let agent = kernel.agent_cgroup.clone();
        let procs = std::ffi::CString::new(
            agent
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )?;
        // Safety: the closure runs in the forked child before exec and only
        // calls async-signal-safe functions on memory prepared before.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let result = (|| -> anyhow::Result<()> {
        let mut line = String::new();
        if let Some(out) = child.stdout.as_mut() {
            BufReader::new(out).read_line(&mut line)?;
        }
        anyhow::ensure!(line == "ready\n", "child did not start: {line:?}");
        let tgid = child.id();
        let (generations, exec_gen): (Arc<dyn ExecGenerations>, u64) = match &kernel {
            Some(kernel) => {
                let maps = kernel.redirector.maps();
                let exec_gen = maps
                    .exec_generation(tgid)
                    .filter(|&generation| generation != 0)
                    .ok_or_else(|| anyhow::anyhow!("the child's exec was not stamped"))?;
                println!("exec generations and prctl marks: the real eBPF maps");
                (maps, exec_gen)
            }
            None => {
                println!("exec generations: an in-memory map (not root: no eBPF maps)");
                (Arc::new(MemoryExecGenerations::default()), 0)
            }
        };
        let attestor = Attestor::new(
            &AttestConfig::default(),
            generations,
            InstanceHandle::default(),
        );
        let cgroup = process::cgroup_v2_path(tgid)?;
        let origin = Origin {
            original_dst: "127.0.0.1:443".parse()?,
            pid: tgid,
            tgid,
            uid: 0,
            gid: 0,
            cgroup_id: attestor.cgroups().id_of(&cgroup).unwrap_or(0),
            exec_gen,
            connect_boot_ns: process::boot_time_ns(),
        };
        let cold = Instant::now();
        let first = attestor.attest(&origin)?;
        let cold = cold.elapsed();
        anyhow::ensure!(first.entrypoint.is_some(), "entrypoint not resolved");

        println!(
            "attestation ({WARM_ITERATIONS} connections of one process; first, cold: {:.1} µs):",
            micros(cold)
        );
        let mut warm_mean = 0.0;
        for (label, forget) in [
            ("warm: process already attested     ", false),
            ("new process, binary already hashed ", true),
        ] {
            let mut samples = Vec::with_capacity(WARM_ITERATIONS);
            for _ in 0..WARM_ITERATIONS {
                if forget {
                    attestor.forget_processes();
                }
                let one = Instant::now();
                let att = attestor.attest(&origin)?;
                samples.push(one.elapsed());
                std::hint::black_box(att);
            }
            let mean = samples.iter().map(|d| micros(*d)).sum::<f64>() / samples.len() as f64;
            samples.sort();
            let pct = |p: f64| micros(samples[((samples.len() - 1) as f64 * p) as usize]);
            println!(
                "  {label} mean {mean:6.1} µs   p50 {:6.1} µs   p99 {:6.1} µs",
                pct(0.5),
                pct(0.99)
            );
            if !forget {
                warm_mean = mean;
            }
        }
        println!(
            "  warm target {TARGET_US:.0} µs: {} (mean/target = {:.2})",
            if warm_mean <= TARGET_US {
                "met"
            } else {
                "MISSED"
            },
            warm_mean / TARGET_US
        );
        let stats = attestor.hashes().stats();
        println!("  hash cache: {} hits, {} misses", stats.hits, stats.misses);
        Ok(())
    })();
    if let Some(stdin) = child.stdin.as_mut() {
        let _ = stdin.write_all(b"\n");
    }
    let _ = child.kill();
    let _ = child.wait();
    if let Some(kernel) = kernel {
        kernel.detach();
    }
    result
}

/// The eBPF programs attached to a cgroup this benchmark created, with a
/// tagged cgroup below it; detached and removed on drop (root only).
struct Kernel {
    redirector: Redirector,
    agent_cgroup: std::path::PathBuf,
    // Dropped after the redirector: processes first, then the directories.
    _cgroups: TestCgroup,
    _pins: TestPins,
}

impl Kernel {
    fn attach() -> anyhow::Result<Option<Kernel>> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let cgroups = TestCgroup::new();
        let agent_cgroup = cgroups.sub("agent.service");
        let pins = TestPins::new();
        let redirector = Redirector::start(RedirectSettings {
            cgroup_root: cgroups.path.clone(),
            pin_dir: pins.path.clone(),
            listen4: "127.0.0.1:9".parse()?,
            listen6: None,
            ports: Vec::new(),
            destinations: Vec::new(),
            block_quic: false,
            bypass_mark: warrant::config::DEFAULT_BYPASS_MARK,
        })?;
        redirector.maps().tag(cgroup::cgroup_id(&agent_cgroup)?)?;
        Ok(Some(Kernel {
            redirector,
            agent_cgroup,
            _cgroups: cgroups,
            _pins: pins,
        }))
    }

    fn detach(self) {
        let Kernel {
            redirector,
            _cgroups,
            _pins,
            ..
        } = self;
        if let Err(error) = redirector.detach() {
            eprintln!("detaching the benchmark's programs: {error}");
        }
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn cold_hashing(dir: &std::path::Path, mib: u64) -> anyhow::Result<()> {
    let path = dir.join("blob");
    {
        // Incompressible content, written once, read from the page cache.
        let mut chunk = vec![0u8; 1 << 20];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut chunk)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        let mut file = std::fs::File::create(&path)?;
        for i in 0..mib {
            chunk[0] = i as u8;
            file.write_all(&chunk)?;
        }
        file.sync_all()?;
    }
    let bytes = (mib << 20) as f64;

    // Best of three for each, so that neither pays for a first read alone.
    let mut ours = Duration::MAX;
    let mut our_hex = String::new();
    for _ in 0..3 {
        let cache = HashCache::new(u64::MAX);
        let mut file = std::fs::File::open(&path)?;
        let start = Instant::now();
        let hash = cache.hash_file(&mut file);
        ours = ours.min(start.elapsed());
        our_hex = hash.hex().unwrap_or_default().to_owned();
    }
    let mut theirs = Duration::MAX;
    let mut their_hex = String::new();
    for _ in 0..3 {
        let start = Instant::now();
        let out = Command::new("sha256sum").arg(&path).output()?;
        theirs = theirs.min(start.elapsed());
        anyhow::ensure!(out.status.success(), "sha256sum failed");
        their_hex = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
    }
    anyhow::ensure!(
        our_hex == their_hex,
        "hashes differ: {our_hex} vs {their_hex}"
    );
    let ours_mbs = bytes / 1e6 / ours.as_secs_f64();
    let theirs_mbs = bytes / 1e6 / theirs.as_secs_f64();
    println!("cold hashing, {mib} MiB file (best of 3, page cache warm):");
    println!("  warrant HashCache  {ours_mbs:8.0} MB/s");
    println!("  sha256sum          {theirs_mbs:8.0} MB/s   (baseline, includes process start)");
    println!("  ratio warrant/sha256sum = {:.2}", ours_mbs / theirs_mbs);
    Ok(())
}
