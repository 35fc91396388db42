//! Where the kernel's filesystems are mounted, read from /proc/mounts: the
//! one place that finds cgroup2 (for redirection, tagging and attestation)
//! and bpffs.

use std::path::PathBuf;

/// Why a filesystem could not be found.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot read /proc/mounts: {0}")]
    Read(#[source] std::io::Error),
    #[error("no cgroup2 filesystem is mounted (warrant needs cgroup v2)")]
    NoCgroup2,
}

/// The cgroup2 mount point (it is /sys/fs/cgroup on most hosts,
/// /sys/fs/cgroup/unified on hybrid ones).
pub fn cgroup2() -> Result<PathBuf, MountError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(MountError::Read)?;
    of_type(&mounts, "cgroup2").ok_or(MountError::NoCgroup2)
}

/// The first mount point of filesystem type `fstype` in a /proc/mounts text.
pub fn of_type(mounts: &str, fstype: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == fstype).then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// /proc/mounts escapes spaces and a few other bytes as \ooo octal.
fn unescape_mount_path(raw: &str) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid =
            "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            of_type(hybrid, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n";
        assert_eq!(
            of_type(unified, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(of_type(unified, "bpf"), Some(PathBuf::from("/sys/fs/bpf")));
        assert_eq!(of_type("proc /proc proc rw 0 0\n", "cgroup2"), None);
    }

    #[test]
    fn mount_paths_with_spaces_are_unescaped() {
        let text = "cgroup2 /mnt/my\\040cg cgroup2 rw 0 0\n";
        assert_eq!(of_type(text, "cgroup2"), Some(PathBuf::from("/mnt/my cg")));
    }
}
