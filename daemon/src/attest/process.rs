//! Race-safe reads of one process's /proc entries.
//!
//! The process is pinned with a pidfd before anything is read, and its start
//! time is read before and after: a pid that was reused in between shows a
//! different start time, and a process that died shows in the pidfd. The
//! caller adds the exec-generation check (see `attest::Attestor`).

use std::{
    ffi::OsStr,
    fs::File,
    io::{self, Read},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

/// A pidfd: a handle on one process that stays valid (and keeps naming that
/// process, never a successor with the same pid) until it is closed.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pub tgid: u32,
}

impl PidFd {
    /// Pins `tgid`. Fails with ESRCH when no such process exists.
    pub fn open(tgid: u32) -> io::Result<PidFd> {
        let pid =
            libc::pid_t::try_from(tgid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
        // Safety: pidfd_open takes a pid and flags and returns a new file
        // descriptor or -1; it touches no memory of ours.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // Safety: the kernel just returned `fd` as a new descriptor that
        // nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(PidFd { fd, tgid })
    }

    /// Whether the pinned process is still running: its pidfd is readable
    /// once every thread of it has exited, whether or not it was reaped yet.
    /// (A zombie is not running: a child holding the connection its parent
    /// made must not pass for the parent while the parent awaits reaping;
    /// signal 0 would still find the zombie.) A failed poll counts as gone.
    pub fn is_alive(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Safety: one pollfd of our own, polled without waiting.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        ready == 0
    }
}

/// Where /proc/PID lives; tests and `explain` use the same path.
pub fn proc_dir(tgid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{tgid}"))
}

/// PF_EXITING in a task's flags (include/linux/sched.h): set as the task
/// enters do_exit, before anything of it is torn down.
const PF_EXITING: u64 = 0x0000_0004;

/// The start time of the process (field 22 of /proc/PID/stat), in clock
/// ticks since boot (CLOCK_BOOTTIME-based). A process whose main thread is
/// exiting (PF_EXITING in field 9) counts as gone (NotFound): it is not
/// yet a zombie, and has already closed its files, so whoever it handed a
/// connection to may be running on.
pub fn start_ticks(tgid: u32) -> io::Result<u64> {
    let mut buf = [0u8; 1024];
    let mut file = File::open(format!("/proc/{tgid}/stat"))?;
    let len = read_full(&mut file, &mut buf)?;
    let stat = &buf[..len];
    let malformed = || io::Error::other("malformed /proc/PID/stat");
    let flags = stat_field(stat, 9).ok_or_else(malformed)?;
    if flags & PF_EXITING != 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the process is exiting",
        ));
    }
    parse_start_ticks(stat).ok_or_else(malformed)
}

/// Field 22 of a stat line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last ')'.
pub fn parse_start_ticks(stat: &[u8]) -> Option<u64> {
    stat_field(stat, 22)
}

/// Numeric field `n` (1-based, as proc(5) numbers them, n >= 3) of a stat
/// line: after ')' come field 3 (state) onwards.
fn stat_field(stat: &[u8], n: usize) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let field = stat[close + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty())
        .nth(n - 3)?;
    std::str::from_utf8(field).ok()?.trim().parse().ok()
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        let n = file.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    Ok(len)
}

/// Clock ticks per second (USER_HZ), for converting start times.
pub fn ticks_per_second() -> u64 {
    procfs::ticks_per_second().max(1)
}

/// CLOCK_BOOTTIME now, in ns: the clock eBPF's bpf_ktime_get_boot_ns reads.
pub fn boot_time_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safety: clock_gettime writes one timespec into the value we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The target of /proc/PID/exe (may end in " (deleted)" when the file was
/// replaced or removed since the program started).
pub fn exe_path(tgid: u32) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/{tgid}/exe"))
}

/// A namespace as the kernel identifies it: the number in its
/// `/proc/PID/ns/*` link (`user:[4026531837]`), the inode of its nsfs file.
/// The kernel allocates these from one system-wide pool, so two processes
/// are in the same namespace exactly when the numbers are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceId {
    pub ino: u64,
}

/// The user namespace of process `tgid`. Reading another user's link needs
/// ptrace-read access, which the daemon has.
pub fn user_namespace(tgid: u32) -> io::Result<NamespaceId> {
    namespace_of(&proc_dir(tgid).join("ns/user"))
}

/// The daemon's own user namespace.
pub fn own_user_namespace() -> io::Result<NamespaceId> {
    namespace_of(Path::new("/proc/self/ns/user"))
}

/// Reads the link rather than stat-ing through it: the kernel formats the
/// link from the namespace's number, where a stat would look up its nsfs
/// file (several times dearer, on every attestation).
fn namespace_of(link: &Path) -> io::Result<NamespaceId> {
    let target = std::fs::read_link(link)?;
    parse_namespace_link(target.as_os_str().as_encoded_bytes()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} points at {target:?}, not type:[number]", link.display()),
        )
    })
}

fn parse_namespace_link(target: &[u8]) -> Option<NamespaceId> {
    let open = memchr::memchr(b'[', target)?;
    let number = target.get(open + 1..)?.strip_suffix(b"]")?;
    let ino = std::str::from_utf8(number).ok()?.parse().ok()?;
    Some(NamespaceId { ino })
}

/// The process's current working directory.
pub fn cwd(tgid: u32) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/{tgid}/cwd"))
}

/// argv, as the process currently presents it.
pub fn cmdline(tgid: u32) -> io::Result<Vec<String>> {
    Ok(split_cmdline(&std::fs::read(format!(
        "/proc/{tgid}/cmdline"
    ))?))
}

/// argv from the NUL-terminated strings of /proc/PID/cmdline. An empty
/// argument is an argument (`python3 -W "" evil.py agent.py` runs evil.py:
/// -W takes the empty string), so only the terminator of the last one is
/// dropped.
pub fn split_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// The environment block the process got at exec (NUL-separated
/// `NAME=value` entries). Values may be secret: callers keep only names
/// (see `pinning`).
pub fn environ(tgid: u32) -> io::Result<Vec<u8>> {
    std::fs::read(format!("/proc/{tgid}/environ"))
}

/// The cgroup v2 path of the process ("0::/path" line of /proc/PID/cgroup).
pub fn cgroup_v2_path(tgid: u32) -> io::Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/cgroup"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.trim_end_matches(" (deleted)").to_owned())
        .ok_or_else(|| io::Error::other("no cgroup v2 entry in /proc/PID/cgroup"))
}

/// Real uid and gid from /proc/PID/status (for `explain`, which has no
/// kernel-recorded Origin).
pub fn uid_gid(tgid: u32) -> io::Result<(u32, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{tgid}/status"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
    };
    match (field("Uid:"), field("Gid:")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(io::Error::other("no Uid/Gid in /proc/PID/status")),
    }
}

/// The credentials file access is checked with: fs uid, fs gid and the
/// supplementary groups, from /proc/PID/status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsCreds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl FsCreds {
    pub fn of(tgid: u32) -> io::Result<FsCreds> {
        let text = std::fs::read_to_string(format!("/proc/{tgid}/status"))?;
        let line = |name: &str| text.lines().find_map(|l| l.strip_prefix(name));
        // "Uid:\treal\teffective\tsaved\tfs"
        let fs_id = |name: &str| {
            line(name)
                .and_then(|rest| rest.split_whitespace().nth(3))
                .and_then(|v| v.parse::<u32>().ok())
        };
        let (Some(uid), Some(gid)) = (fs_id("Uid:"), fs_id("Gid:")) else {
            return Err(io::Error::other("no Uid/Gid in /proc/PID/status"));
        };
        let groups = line("Groups:")
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        Ok(FsCreds { uid, gid, groups })
    }

    /// Whether the permission bits let these credentials read the file
    /// (ACLs aside; root reads everything).
    pub fn can_read(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode();
        if self.uid == 0 {
            return true;
        }
        if meta.uid() == self.uid {
            return mode & 0o400 != 0;
        }
        if meta.gid() == self.gid || self.groups.contains(&meta.gid()) {
            return mode & 0o040 != 0;
        }
        mode & 0o004 != 0
    }
}

/// Opens a script the process names in its argv, as the process sees it:
/// relative paths through its cwd, absolute ones through its root (so
/// chroots and mount namespaces are honoured).
///
/// argv is under the process's control and the daemon runs as root, so the
/// path is first opened with O_PATH (which opens no device and reads
/// nothing), checked to be a regular file the process itself may read, and
/// only then reopened for reading through that descriptor: a device such as
/// /dev/watchdog is never opened, a symlink swapped in between changes
/// nothing, and the daemon never hashes a file the agent could not read
/// (the hash would be an oracle on root-only files).
pub fn open_script_in_process(tgid: u32, path: &Path, creds: &FsCreds) -> io::Result<File> {
    let through = if path.is_absolute() {
        let mut p = proc_dir(tgid).join("root").into_os_string();
        p.push(path.as_os_str());
        PathBuf::from(p)
    } else {
        proc_dir(tgid).join("cwd").join(path)
    };
    let probe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(&through)?;
    let meta = probe.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if !creds.can_read(&meta) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "not readable by the process",
        ));
    }
    open_nonblocking(Path::new(&format!("/proc/self/fd/{}", probe.as_raw_fd())))
}

pub fn open_nonblocking(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
}

/// The path a descriptor refers to, as the kernel names it.
pub fn fd_path(file: &File) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// The file name of a path as text, for interpreter detection.
pub fn file_name(path: &Path) -> &str {
    path.file_name().and_then(OsStr::to_str).unwrap_or_default()
}

/// Whether a path text ends with the marker the kernel adds for an unlinked
/// executable.
pub fn is_deleted(path: &Path) -> bool {
    path.as_os_str().as_bytes().ends_with(b" (deleted)")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn empty_arguments_are_kept() {
        assert_eq!(
            split_cmdline(b"python3\0-W\0\0evil.py\0agent.py\0"),
            ["python3", "-W", "", "evil.py", "agent.py"]
        );
        assert_eq!(split_cmdline(b"a\0\0"), ["a", ""]);
        assert_eq!(split_cmdline(b""), Vec::<String>::new());
        // A rewritten argv without a terminator.
        assert_eq!(split_cmdline(b"title"), ["title"]);
    }

    #[test]
    fn namespace_links_parse_to_their_number() {
        assert_eq!(
            parse_namespace_link(b"user:[4026531837]"),
            Some(NamespaceId { ino: 4026531837 })
        );
        for bad in [
            &b"user:4026531837"[..],
            b"user:[]",
            b"user:[12a]",
            b"user:[1",
        ] {
            assert_eq!(parse_namespace_link(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn start_time_is_field_22_even_with_parentheses_in_the_name() {
        let stat = b"4242 (we ird) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        assert_eq!(parse_start_ticks(stat), Some(987654));
    }

    #[test]
    fn our_user_namespace_read_through_our_pid_is_our_own() {
        let mine = own_user_namespace().unwrap();
        assert_eq!(user_namespace(std::process::id()).unwrap(), mine);
        assert_ne!(mine.ino, 0);
    }

    #[test]
    fn our_own_process_is_alive_and_started_before_now() {
        let me = std::process::id();
        let pidfd = PidFd::open(me).unwrap();
        assert!(pidfd.is_alive());
        let start_ns = start_ticks(me).unwrap() * 1_000_000_000 / ticks_per_second();
        assert!(start_ns <= boot_time_ns());
    }
}
