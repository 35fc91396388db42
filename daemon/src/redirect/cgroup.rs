//! Finding cgroup v2 and naming cgroups.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::RedirectError;

/// The cgroup2 mount point, read from /proc/mounts (it is /sys/fs/cgroup on
/// most hosts, /sys/fs/cgroup/unified on hybrid ones).
pub fn cgroup2_mount() -> Result<PathBuf, RedirectError> {
    let mounts = fs::read_to_string("/proc/mounts")
        .map_err(|e| RedirectError::Cgroup(format!("cannot read /proc/mounts: {e}")))?;
    mount_of_type(&mounts, "cgroup2").ok_or_else(|| {
        RedirectError::Cgroup("no cgroup2 filesystem is mounted (warrant needs cgroup v2)".into())
    })
}

/// The first mount point of filesystem type `fstype` in a /proc/mounts text.
pub fn mount_of_type(mounts: &str, fstype: &str) -> Option<PathBuf> {
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

/// The id of a cgroup v2 directory: the kernel's cgroup id is the inode number
/// of its directory in cgroupfs, which is what bpf_get_current_cgroup_id returns.
pub fn cgroup_id(dir: &Path) -> Result<u64, RedirectError> {
    fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|e| RedirectError::Cgroup(format!("cannot stat cgroup {}: {e}", dir.display())))
}

/// `dir` relative to the cgroup2 mount, as systemd and /proc/PID/cgroup write
/// it: "/system.slice/foo.service" ("/" for the root).
pub fn relative_path(mount: &Path, dir: &Path) -> String {
    match dir.strip_prefix(mount) {
        Ok(rel) if rel.as_os_str().is_empty() => "/".to_owned(),
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => dir.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid =
            "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            mount_of_type(hybrid, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n";
        assert_eq!(
            mount_of_type(unified, "cgroup2"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            mount_of_type(unified, "bpf"),
            Some(PathBuf::from("/sys/fs/bpf"))
        );
        assert_eq!(mount_of_type("proc /proc proc rw 0 0\n", "cgroup2"), None);
    }

    #[test]
    fn mount_paths_with_spaces_are_unescaped() {
        let text = "cgroup2 /mnt/my\\040cg cgroup2 rw 0 0\n";
        assert_eq!(
            mount_of_type(text, "cgroup2"),
            Some(PathBuf::from("/mnt/my cg"))
        );
    }

    #[test]
    fn relative_paths_look_like_systemd_ones() {
        let mount = Path::new("/sys/fs/cgroup");
        assert_eq!(relative_path(mount, Path::new("/sys/fs/cgroup")), "/");
        assert_eq!(
            relative_path(mount, Path::new("/sys/fs/cgroup/system.slice/a.service")),
            "/system.slice/a.service"
        );
    }
}
