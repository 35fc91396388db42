//! What the bench reads from /proc about the processes it started (warrant,
//! the nginx masters it spawned and their workers), never about others.

use std::{collections::HashSet, fs, time::Duration};

use anyhow::{Context as _, Result};

/// Resident set size in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (did the process exit?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// User + system CPU time of the whole process (every thread, live or
/// exited), from /proc/PID/stat: USER_HZ ticks, 10 ms on Linux, so runs
/// that use seconds of CPU measure it within a percent.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted
    // after its closing parenthesis, where field 3 (state) is index 0.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("malformed /proc/{pid}/stat"))
    };
    let ticks = tick(11)? + tick(12)?; // utime, stime
    Ok(Duration::from_secs_f64(ticks as f64 / ticks_per_second()))
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// CPU time of our children that have been waited for (getrusage
/// RUSAGE_CHILDREN): the difference around one client run is its CPU.
pub fn waited_children_cpu_time() -> Result<Duration> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(Duration::from_secs_f64(
        secs(usage.user_time()) + secs(usage.system_time()),
    ))
}

/// Open file descriptors: a proxy's live connections show up here.
pub fn fd_count(pid: u32) -> Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count())
}

/// Connections `pid` accepted and still holds: its TCP sockets, not
/// listening, whose local port is one it listens on. Sockets it opened
/// itself (a proxy's pooled upstream connections, kept up to their own
/// idle timeout) are not counted.
pub fn accepted_connections(pid: u32) -> Result<usize> {
    let mut owned = HashSet::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
    {
        // A descriptor closed while the directory is read is skipped.
        let Ok(target) = fs::read_link(fd?.path()) else {
            continue;
        };
        if let Some(inode) = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .and_then(|t| t.parse::<u64>().ok())
        {
            owned.insert(inode);
        }
    }
    let mut listening = HashSet::new();
    let mut connected = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{table}"))
            .with_context(|| format!("reading /proc/{pid}/net/{table}"))?;
        for line in text.lines().skip(1) {
            // sl local_address rem_address st ... uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if !inode.parse().is_ok_and(|i: u64| owned.contains(&i)) {
                continue;
            }
            let Some(port) = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            else {
                continue;
            };
            // 0A: TCP_LISTEN.
            if *state == "0A" {
                listening.insert(port);
            } else {
                connected.push(port);
            }
        }
    }
    Ok(connected.iter().filter(|p| listening.contains(p)).count())
}

/// The children of `pid` (an nginx master's workers).
pub fn children(pid: u32) -> Result<Vec<u32>> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .with_context(|| format!("reading /proc/{pid}/task/{pid}/children"))?;
    Ok(text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Several processes measured as one (nginx's workers).
#[derive(Clone, Debug)]
pub struct Processes(pub Vec<u32>);

impl Processes {
    pub fn rss_kib(&self) -> Result<u64> {
        self.0.iter().map(|&p| rss_kib(p)).sum()
    }

    pub fn cpu_time(&self) -> Result<Duration> {
        self.0.iter().map(|&p| cpu_time(p)).sum()
    }

    pub fn fd_count(&self) -> Result<usize> {
        self.0.iter().map(|&p| fd_count(p)).sum()
    }

    pub fn accepted_connections(&self) -> Result<usize> {
        self.0.iter().map(|&p| accepted_connections(p)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(fd_count(me).unwrap() >= 3);
        // Spin until the kernel has charged a clock tick to this process:
        // a fixed spin can get no tick of CPU on a loaded machine.
        let spin = std::time::Instant::now();
        while cpu_time(me).unwrap() == Duration::ZERO {
            assert!(
                spin.elapsed() < Duration::from_secs(60),
                "no CPU time counted"
            );
        }
        let pair = Processes(vec![me, me]);
        assert!(pair.fd_count().unwrap() >= 6);
    }

    #[test]
    fn counts_accepted_connections_not_the_ones_made() {
        use std::net::{TcpListener, TcpStream};
        let me = std::process::id();
        let before = accepted_connections(me).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let made = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        // `made` is ours too, but its local port is an ephemeral one.
        assert_eq!(accepted_connections(me).unwrap(), before + 1);
        drop(accepted);
        assert_eq!(accepted_connections(me).unwrap(), before);
        drop(made);
    }
}
