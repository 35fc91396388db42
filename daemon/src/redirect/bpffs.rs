//! bpffs: where links and maps are pinned so redirection outlives the daemon.

use std::{fs, path::Path};

use super::RedirectError;

/// Makes sure `pin_dir` lies on a mounted bpffs, mounting one at
/// /sys/fs/bpf when none is (many hosts do not mount it until asked).
pub fn ensure_mounted(pin_dir: &Path) -> Result<(), RedirectError> {
    let mounts = fs::read_to_string("/proc/mounts")
        .map_err(|e| RedirectError::Bpffs(format!("cannot read /proc/mounts: {e}")))?;
    if on_bpffs(&mounts, pin_dir) {
        return Ok(());
    }
    let default = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(default) {
        return Err(RedirectError::Bpffs(format!(
            "{} is not on a bpffs mount; mount bpffs there or use a pin directory under /sys/fs/bpf",
            pin_dir.display()
        )));
    }
    if crate::mounts::of_type(&mounts, "bpf").as_deref() == Some(default) {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        default,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| RedirectError::Bpffs(format!("cannot mount bpffs at /sys/fs/bpf: {e}")))?;
    tracing::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Whether `pin_dir` lies on a bpffs mount of a /proc/mounts text.
pub fn on_bpffs(mounts: &str, pin_dir: &Path) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let target = fields.nth(1);
        let kind = fields.next();
        kind == Some("bpf") && target.is_some_and(|t| pin_dir.starts_with(t))
    })
}
