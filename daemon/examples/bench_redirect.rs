//! `cargo xtask bench redirect`: what the eBPF programs cost a connect().
//!
//! Three processes connect to a loopback server in a loop, each from its own
//! cgroup: one outside the attach point (baseline, no programs run), one below
//! it but untagged (programs run and leave it alone), one tagged (redirected to
//! a listener). Rounds are interleaved so drift hits all three alike; the
//! median of the rounds is reported with ratios against the baseline.
//! Needs root. Creates its own cgroups and pins and removes them on exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    os::{
        fd::{AsFd, AsRawFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use warrant::redirect::{RedirectSettings, Redirector, cgroup, remove_pins};

const CONNECTS_PER_ROUND: usize = 2000;
const ROUNDS: usize = 7;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(args[2].parse().unwrap(), args[3].parse().unwrap());
        return;
    }
    let mount = cgroup::cgroup2_mount().unwrap();
    let world = World::new(&mount);
    let destination = listen_deep();
    let injector = listen_deep();
    let port = destination.local_addr().unwrap().port();
    for listener in [&destination, &injector] {
        let listener = listener.try_clone().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        });
    }
    let SocketAddr::V4(listen4) = injector.local_addr().unwrap() else {
        unreachable!()
    };
    let redirector = Redirector::start(RedirectSettings {
        cgroup_root: world.root.clone(),
        pin_dir: world.pins.clone(),
        listen4,
        listen6: None,
        ports: vec![port],
        destinations: Vec::new(),
        block_quic: true,
        bypass_mark: warrant::config::DEFAULT_BYPASS_MARK,
    })
    .expect("attach the programs");
    redirector
        .maps()
        .tag(cgroup::cgroup_id(&world.tagged).unwrap())
        .unwrap();

    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let conditions = [
        ("no programs (baseline)", &world.plain),
        ("attached, untagged", &world.untagged),
        ("attached, tagged (redirected)", &world.tagged),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); conditions.len()];
    for _ in 0..ROUNDS {
        for (i, (_, dir)) in conditions.iter().enumerate() {
            samples[i].push(run_child(dir, target));
        }
    }
    let medians: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
    println!(
        "connect() on loopback: median per connect over {CONNECTS_PER_ROUND}, median of {ROUNDS} interleaved rounds"
    );
    for (i, (name, _)) in conditions.iter().enumerate() {
        println!(
            "  {name:<32} {:>8.2} µs/connect   ratio {:.3}",
            medians[i] / 1000.0,
            medians[i] / medians[0]
        );
    }
    let overhead = (medians[1] / medians[0] - 1.0) * 100.0;
    println!("untagged overhead: {overhead:+.1}% (target <= 3%)");
    redirector.detach().unwrap();
}

/// A loopback listener with a deep accept queue, so that connect() never
/// waits on a full backlog (which would measure the accept thread, not the
/// programs).
fn listen_deep() -> TcpListener {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, socket,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
    listen(&fd, Backlog::MAXCONN).unwrap();
    TcpListener::from(fd)
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

/// Runs the connect loop in a child placed in `cgroup_dir`; returns ns/connect.
fn run_child(cgroup_dir: &Path, target: SocketAddr) -> f64 {
    let procs = cgroup_dir.join("cgroup.procs");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg("--child")
        .arg(CONNECTS_PER_ROUND.to_string())
        .arg(target.to_string());
    // Safety: runs in the forked child before exec; writing our own pid to
    // cgroup.procs moves the child into the cgroup before it runs the loop.
    unsafe {
        cmd.pre_exec(move || fs::write(&procs, b"0"));
    }
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Times each connect() on its own and prints the median in ns: the median
/// is what a typical connect costs, unmoved by the occasional scheduling
/// hiccup on a shared machine.
fn child(count: usize, target: SocketAddr) {
    let linger = nix::sys::socket::sockopt::Linger;
    let no_time_wait = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        let stream = TcpStream::connect(target).unwrap();
        times.push(start.elapsed().as_nanos() as f64);
        // Reset on close so the loop does not run out of ports in TIME_WAIT.
        nix::sys::socket::setsockopt(&stream.as_fd(), linger, &no_time_wait).unwrap();
    }
    println!("{}", median(&mut times));
}

/// The bench's cgroups and pins, removed on drop.
struct World {
    root: PathBuf,
    tagged: PathBuf,
    untagged: PathBuf,
    plain: PathBuf,
    pins: PathBuf,
}

impl World {
    fn new(mount: &Path) -> World {
        let id = std::process::id();
        let root = mount.join(format!("warrant-bench-{id}"));
        let plain = mount.join(format!("warrant-bench-{id}-plain"));
        let world = World {
            tagged: root.join("tagged"),
            untagged: root.join("untagged"),
            root,
            plain,
            pins: PathBuf::from(format!("/sys/fs/bpf/warrant-bench-{id}")),
        };
        for dir in [&world.tagged, &world.untagged, &world.plain] {
            fs::create_dir_all(dir).unwrap();
        }
        world
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for dir in [&self.tagged, &self.untagged, &self.root, &self.plain] {
            let _ = fs::remove_dir(dir);
        }
        let _ = remove_pins(&self.pins);
    }
}
