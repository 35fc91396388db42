//! Finding cgroup v2 and naming cgroups.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::RedirectError;

/// The cgroup2 mount point (see `crate::mounts`).
pub fn cgroup2_mount() -> Result<PathBuf, RedirectError> {
    crate::mounts::cgroup2().map_err(|e| RedirectError::Cgroup(e.to_string()))
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
    fn relative_paths_look_like_systemd_ones() {
        let mount = Path::new("/sys/fs/cgroup");
        assert_eq!(relative_path(mount, Path::new("/sys/fs/cgroup")), "/");
        assert_eq!(
            relative_path(mount, Path::new("/sys/fs/cgroup/system.slice/a.service")),
            "/system.slice/a.service"
        );
    }
}
