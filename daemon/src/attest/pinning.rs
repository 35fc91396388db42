//! When a process's program can be pinned at all: the facts beside the
//! hashes that decide whether `exe`, `exe_sha256`, `entrypoint_sha256` and
//! policy `exe_signers` may match it.
//!
//! A hash pins a file's content. The process may still run other code:
//!
//! - Code injected through its environment, which the dynamic loader or
//!   the interpreter acts on before the pinned program's first line
//!   (`LD_PRELOAD`, `PYTHONPATH`, `NODE_OPTIONS`, ...: [`injecting`]). The
//!   environment is read from `/proc/PID/environ` (the block the process
//!   got at exec) once per process image, and only the names of these
//!   variables are kept, never a value. A workload accepts one by naming it
//!   in `allow_env`.
//! - A file the agent can rewrite after it was executed and before warrant
//!   hashed it, which is at the first connection ([`writable`]): warrant
//!   refuses to pin a file that the process's uids or gids could change,
//!   directly or by replacing an entry in a directory on its path (every
//!   directory walked, symlinks followed one by one), rather than hash at
//!   exec. An agent that can rewrite its own program cannot be pinned.
//!   A process with uid 0 or a capability that overrides file permissions
//!   can change anything and is never pinned.
//!
//! What the pinned program loads later (its modules and packages,
//! configuration read from its directory) is not pinned: the README's known
//! limits say which configuration closes that.

use std::{
    collections::VecDeque,
    ffi::{CString, OsStr},
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path},
};

/// Variables that make the loader or an interpreter run other code first,
/// by name.
const INJECTING: &[&str] = &[
    // glibc: iconv modules and OpenSSL engines/providers are shared objects
    // loaded from these paths.
    "GCONV_PATH",
    "OPENSSL_CONF",
    "OPENSSL_ENGINES",
    "OPENSSL_MODULES",
    // Python: module search paths, startup files, a breakpoint hook, warning
    // categories (imported by name), an interactive prompt after the script,
    // a cache of compiled code, the user site directory (.pth files run).
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONINSPECT",
    "PYTHONWARNINGS",
    "PYTHONBREAKPOINT",
    "PYTHONPYCACHEPREFIX",
    "PYTHONUSERBASE",
    "PYTHONPLATLIBDIR",
    "PYTHONEXECUTABLE",
    // Node: options (--require, --import) and module search paths.
    "NODE_OPTIONS",
    "NODE_PATH",
    "NODE_REPL_EXTERNAL_MODULE",
    // Perl and Ruby: options (-M, -r) and library paths.
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "PERL5DB",
    "RUBYOPT",
    "RUBYLIB",
    // Shells: a file sourced first, imported options (xtrace runs PS4's
    // command substitutions), the trace prompt.
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
];

/// Variables that inject code by prefix: every `LD_*` variable of the
/// dynamic loader (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, ...), and bash's
/// exported functions, which replace commands a script calls.
const INJECTING_PREFIXES: &[&str] = &["LD_", "BASH_FUNC_"];

/// Whether `name` injects code.
pub fn is_injecting(name: &str) -> bool {
    INJECTING.contains(&name) || INJECTING_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The names of the variables in an environment block (NUL-separated
/// `NAME=value` entries) that inject code, in order, without repeats.
pub fn injecting(environ: &[u8]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for (name, _) in entries(environ) {
        if is_injecting(&name) && !found.contains(&name) {
            found.push(name);
        }
    }
    found
}

/// Whether `name` is set to a non-empty value in the block.
pub fn is_set(environ: &[u8], name: &str) -> bool {
    entries(environ).any(|(n, non_empty)| n == name && non_empty)
}

/// (name, whether the value is non-empty) of each entry; values are never
/// copied.
fn entries(environ: &[u8]) -> impl Iterator<Item = (String, bool)> + '_ {
    environ
        .split(|&b| b == 0)
        .filter(|entry| !entry.is_empty())
        .filter_map(|entry| {
            let eq = memchr::memchr(b'=', entry)?;
            let name = String::from_utf8_lossy(&entry[..eq]).into_owned();
            Some((name, eq + 1 < entry.len()))
        })
}

/// Who a process is, for the question "could it change this file": every
/// uid and gid it holds or can switch to (real, effective, saved, fs), its
/// supplementary groups, and whether a capability lets it ignore file
/// permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    /// Why this process can change any file, if it can.
    pub overrides: Option<String>,
}

/// CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_SYS_ADMIN (capability
/// numbers from linux/capability.h).
const OVERRIDING_CAPS: &[(u32, &str)] = &[
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (21, "CAP_SYS_ADMIN"),
];

impl Writer {
    /// From the text of /proc/PID/status.
    pub fn from_status(status: &str) -> io::Result<Writer> {
        let line = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
        let ids = |name: &str| -> io::Result<Vec<u32>> {
            let mut ids: Vec<u32> = line(name)
                .ok_or_else(|| io::Error::other(format!("no {name} in /proc/PID/status")))?
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            Ok(ids)
        };
        let uids = ids("Uid:")?;
        let mut gids = ids("Gid:")?;
        gids.extend(ids("Groups:").unwrap_or_default());
        gids.sort_unstable();
        gids.dedup();
        let cap_eff = line("CapEff:")
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0);
        let cap_prm = line("CapPrm:")
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0);
        let overrides = if uids.contains(&0) {
            Some("the process runs as root".to_owned())
        } else {
            OVERRIDING_CAPS
                .iter()
                .find(|(bit, _)| (cap_eff | cap_prm) & (1 << bit) != 0)
                .map(|(_, name)| format!("the process holds {name}"))
        };
        Ok(Writer {
            uids,
            gids,
            overrides,
        })
    }

    pub fn of(tgid: u32) -> io::Result<Writer> {
        Writer::from_status(&std::fs::read_to_string(format!("/proc/{tgid}/status"))?)
    }

    /// Whether these ids may change a file (or add, remove and rename
    /// entries of a directory) with this metadata. The owner may always
    /// chmod it, so owning it is enough.
    fn may_write(&self, meta: &Stat) -> bool {
        let mode = meta.mode;
        self.uids.contains(&meta.uid)
            || (mode & 0o020 != 0 && self.gids.contains(&meta.gid))
            || mode & 0o002 != 0
    }

    /// In a sticky directory (/tmp) writing the directory lets one replace
    /// only one's own entries (and the directory owner's).
    fn may_replace_entry(&self, dir: &Stat, entry: &Stat) -> bool {
        if !self.may_write(dir) {
            return false;
        }
        if dir.mode & 0o1000 == 0 {
            return true;
        }
        self.uids.contains(&entry.uid) || self.uids.contains(&dir.uid)
    }
}

/// Symlinks followed at most while walking a path (the kernel's limit).
const MAX_LINKS: usize = 40;

/// Why `writer` could change the file that process `tgid` names `path`
/// (absolute, in the process's own root), or a directory entry on the way
/// to it; None when it cannot. `file` is the file that was hashed: the walk
/// must end on it, else the path no longer names it (and that is a reason).
pub fn writable(tgid: u32, path: &Path, writer: &Writer, file: &File) -> Option<String> {
    if let Some(why) = &writer.overrides {
        return Some(format!("{why}, and can change any file"));
    }
    match walk(tgid, path, writer, file) {
        Ok(found) => found,
        Err(error) => Some(format!(
            "cannot check who may change {}: {error}",
            path.display()
        )),
    }
}

/// [`writable`] for the executable, named by /proc/PID/exe. An executable
/// unlinked since it started (" (deleted)") has no path left to walk: only
/// the file itself is checked then.
pub fn writable_exe(tgid: u32, exe: &Path, writer: &Writer, file: &File) -> Option<String> {
    if !super::process::is_deleted(exe) {
        return writable(tgid, exe, writer, file);
    }
    if let Some(why) = &writer.overrides {
        return Some(format!("{why}, and can change any file"));
    }
    match fstat(file) {
        Ok(st) if writer.may_write(&st) => Some(format!(
            "{} is writable by the process (owner uid {}, mode {:o})",
            exe.display(),
            st.uid,
            st.mode & 0o7777
        )),
        Ok(_) => None,
        Err(error) => Some(format!("cannot stat {}: {error}", exe.display())),
    }
}

fn walk(tgid: u32, path: &Path, writer: &Writer, file: &File) -> io::Result<Option<String>> {
    if !path.is_absolute() {
        return Ok(Some(format!(
            "{} is a relative path, resolved against a working directory that may have changed since exec",
            path.display()
        )));
    }
    let root = open_path(None, Path::new(&format!("/proc/{tgid}/root")), true)?;
    let root_meta = fstat(&root)?;
    if let Some(why) = acl(&root)? {
        return Ok(Some(why));
    }
    let mut dir = dup(&root)?;
    let mut dir_meta = root_meta;
    let mut dir_name = "/".to_owned();
    let mut queue: VecDeque<std::ffi::OsString> = components(path)?;
    let mut links = 0;
    while let Some(name) = queue.pop_front() {
        let entry = open_path(Some(&dir), Path::new(&name), false)?;
        let meta = fstat(&entry)?;
        if writer.may_replace_entry(&dir_meta, &meta) {
            return Ok(Some(format!(
                "directory {dir_name} is writable by the process (uid/gids {:?}/{:?})",
                writer.uids, writer.gids
            )));
        }
        if meta.is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = readlink(&entry)?;
            let mut rest = components(&target)?;
            rest.extend(queue);
            queue = rest;
            if target.is_absolute() {
                dir = dup(&root)?;
                dir_meta = root_meta;
                dir_name = "/".to_owned();
            }
            continue;
        }
        dir_name = if dir_name == "/" {
            format!("/{}", Path::new(&name).display())
        } else {
            format!("{dir_name}/{}", Path::new(&name).display())
        };
        if let Some(why) = acl(&entry)? {
            return Ok(Some(why));
        }
        dir = entry;
        dir_meta = meta;
    }
    // `dir` is now the file the path names.
    let hashed = fstat(file)?;
    if (dir_meta.dev, dir_meta.ino) != (hashed.dev, hashed.ino) {
        return Ok(Some(format!(
            "{} no longer names the file that was hashed",
            path.display()
        )));
    }
    if writer.may_write(&dir_meta) {
        return Ok(Some(format!(
            "{} is writable by the process (owner uid {}, mode {:o})",
            path.display(),
            dir_meta.uid,
            dir_meta.mode & 0o7777
        )));
    }
    acl(&dir)
}

/// The normal components of an absolute or relative path; `..` is refused
/// (lexical resolution would be wrong across symlinks, and a script path
/// has no need of it).
fn components(path: &Path) -> io::Result<VecDeque<std::ffi::OsString>> {
    let mut out = VecDeque::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push_back(name.to_owned()),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::other(format!(
                    "{} has a '..' component",
                    path.display()
                )));
            }
        }
    }
    Ok(out)
}

fn open_path(dir: Option<&OwnedFd>, path: &Path, follow: bool) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut flags = libc::O_PATH | libc::O_CLOEXEC;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let at = dir.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
    // Safety: openat with a NUL-terminated path and a directory descriptor
    // we own (or AT_FDCWD); O_PATH opens nothing for reading or writing.
    let fd = unsafe { libc::openat(at, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: a new descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

/// What the walk needs of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    dev: u64,
    ino: u64,
    uid: u32,
    gid: u32,
    mode: u32,
}

impl Stat {
    fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

/// fstat, which on an O_PATH|O_NOFOLLOW descriptor of a symlink describes
/// the link itself.
fn fstat(fd: &impl AsRawFd) -> io::Result<Stat> {
    // Safety: libc::stat is plain data that fstat fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // Safety: fstat on a descriptor we hold, into `st`.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Stat {
        dev: st.st_dev,
        ino: st.st_ino,
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode,
    })
}

fn readlink(fd: &OwnedFd) -> io::Result<std::path::PathBuf> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    let empty = CString::default();
    // Safety: readlinkat on an O_PATH|O_NOFOLLOW descriptor of a symlink
    // with an empty path reads that link, into our buffer of the size we pass.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            empty.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(usize::try_from(n).unwrap_or(0));
    Ok(OsStr::from_bytes(&buf).into())
}

/// A POSIX ACL on the file or directory can grant write access that the
/// mode bits do not show; warrant does not evaluate ACLs and refuses.
fn acl(fd: &OwnedFd) -> io::Result<Option<String>> {
    let path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let name = c"system.posix_acl_access";
    // Safety: NUL-terminated strings; a null buffer of size 0 asks only for
    // the value's size.
    let rc = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    if rc >= 0 {
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        return Ok(Some(format!(
            "{target} has a POSIX ACL, which may grant write access (warrant does not evaluate ACLs)"
        )));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
        _ => Err(error),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn injecting_variables_are_found_by_name_and_prefix_without_values() {
        let environ = b"PATH=/usr/bin\0LD_PRELOAD=/tmp/x.so\0PYTHONPATH=\0HOME=/h\0\
                        BASH_FUNC_ls%%=() { evil; }\0NODE_EXTRA_CA_CERTS=/b.pem\0LD_PRELOAD=again\0";
        assert_eq!(
            injecting(environ),
            ["LD_PRELOAD", "PYTHONPATH", "BASH_FUNC_ls%%"]
        );
        assert!(is_set(environ, "HOME"));
        assert!(!is_set(environ, "PYTHONPATH"), "set but empty");
        assert!(!is_set(environ, "PYTHONNOUSERSITE"));
        for name in [
            "LD_AUDIT",
            "LD_LIBRARY_PATH",
            "NODE_OPTIONS",
            "PERL5OPT",
            "RUBYOPT",
            "RUBYLIB",
            "PYTHONHOME",
            "PYTHONSTARTUP",
        ] {
            assert!(is_injecting(name), "{name}");
        }
        for name in [
            "PATH",
            "SSL_CERT_FILE",
            "NODE_EXTRA_CA_CERTS",
            "OPENAI_API_KEY",
        ] {
            assert!(!is_injecting(name), "{name}");
        }
    }

    #[test]
    fn the_writer_holds_every_id_and_root_or_override_caps_change_anything() {
        let status = "Name:\tx\nUid:\t1001\t1001\t1002\t1001\nGid:\t50\t50\t50\t50\nGroups:\t7 8\n\
                      CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n";
        let w = Writer::from_status(status).unwrap();
        assert_eq!(w.uids, [1001, 1002]);
        assert_eq!(w.gids, [7, 8, 50]);
        assert_eq!(w.overrides, None);
        let root = status.replace("1002\t1001", "0\t1001");
        assert!(Writer::from_status(&root).unwrap().overrides.is_some());
        let dac = status.replace("CapEff:\t0000000000000000", "CapEff:\t0000000000000002");
        assert_eq!(
            Writer::from_status(&dac).unwrap().overrides.as_deref(),
            Some("the process holds CAP_DAC_OVERRIDE")
        );
    }
}
