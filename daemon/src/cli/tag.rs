//! `warrant tag UNIT` / `warrant untag UNIT`: a systemd drop-in that makes a
//! service a tagged workload without touching the agent. It moves the unit
//! into warrant-agents.slice (selected by the default `[[workload]]`) and
//! points the usual TLS trust variables of Python, requests and Node at
//! warrant's trust bundle (system roots plus the local CA).

use std::{io::Write as _, path::Path};

use anyhow::{Context as _, Result, bail};

use crate::install::{DROPIN_NAME, dropin_path, dropin_text};

/// Checks a unit name and completes a bare name with ".service". Only
/// services are taggable this way: Slice= and Environment= both belong to
/// [Service] (a scope's slice is chosen by whoever creates it).
pub fn service_name(unit: &str) -> Result<String> {
    let name = if unit.contains('.') {
        unit.to_owned()
    } else {
        format!("{unit}.service")
    };
    let Some(stem) = name.strip_suffix(".service") else {
        bail!(
            "{unit}: only .service units can be tagged (Slice= and Environment= are service settings)"
        );
    };
    let valid = !stem.is_empty()
        && name.len() <= 255
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@'));
    if !valid {
        bail!("{unit}: not a valid systemd unit name");
    }
    Ok(name)
}

/// What `tag` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Tagged {
    Written,
    AlreadyTagged,
}

/// Writes the drop-in for `unit` (replacing an older text of ours).
pub fn tag(root: &Path, unit: &str, bundle: &Path) -> Result<Tagged> {
    let path = dropin_path(root, unit);
    let text = dropin_text(bundle);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
        return Ok(Tagged::AlreadyTagged);
    }
    let dir = path.parent().context("drop-in path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Write then rename: systemd never reads half a file.
    let tmp = dir.join(format!(".{DROPIN_NAME}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Tagged::Written)
}

/// Removes exactly the drop-in `tag` wrote (and its directory when that
/// leaves it empty). False when the unit was not tagged.
pub fn untag(root: &Path, unit: &str) -> Result<bool> {
    let path = dropin_path(root, unit);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        // Other drop-ins of the admin stay; an empty directory goes.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(true)
}

/// Whether systemd runs `unit` now (its processes keep their old slice and
/// environment until restarted).
pub fn unit_is_active(unit: &str) -> bool {
    std::process::Command::new("systemctl")
        .args(["is-active", "--quiet", unit])
        .status()
        .is_ok_and(|s| s.success())
}

pub fn daemon_reload() -> Result<()> {
    let status = std::process::Command::new("systemctl")
        .arg("daemon-reload")
        .status()
        .context("cannot run systemctl daemon-reload")?;
    if !status.success() {
        bail!("systemctl daemon-reload failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bare_names_become_services_and_other_types_are_refused() {
        assert_eq!(service_name("agent").unwrap(), "agent.service");
        assert_eq!(service_name("agent@1.service").unwrap(), "agent@1.service");
        assert!(service_name("agent.socket").is_err());
        assert!(service_name("../etc/passwd").is_err());
        assert!(service_name("a b.service").is_err());
        assert!(service_name(".service").is_err());
    }

    #[test]
    fn tag_writes_the_dropin_once_and_untag_removes_exactly_it() {
        let root = tempfile::tempdir().unwrap();
        let bundle = Path::new("/var/lib/warrant/trust-bundle.pem");
        assert_eq!(
            tag(root.path(), "agent.service", bundle).unwrap(),
            Tagged::Written
        );
        let path = root
            .path()
            .join("etc/systemd/system/agent.service.d/50-warrant.conf");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), dropin_text(bundle));
        assert_eq!(
            tag(root.path(), "agent.service", bundle).unwrap(),
            Tagged::AlreadyTagged
        );
        // An admin's own drop-in next to ours survives untag.
        let other = path.with_file_name("10-limits.conf");
        std::fs::write(&other, "[Service]\nMemoryMax=1G\n").unwrap();
        assert!(untag(root.path(), "agent.service").unwrap());
        assert!(!path.exists());
        assert!(other.exists());
        assert!(!untag(root.path(), "agent.service").unwrap());
    }

    #[test]
    fn untag_removes_the_directory_it_emptied() {
        let root = tempfile::tempdir().unwrap();
        tag(root.path(), "agent.service", Path::new("/b.pem")).unwrap();
        assert!(untag(root.path(), "agent.service").unwrap());
        assert!(
            !root
                .path()
                .join("etc/systemd/system/agent.service.d")
                .exists()
        );
    }

    #[test]
    fn a_changed_bundle_path_rewrites_the_dropin() {
        let root = tempfile::tempdir().unwrap();
        tag(root.path(), "agent.service", Path::new("/old.pem")).unwrap();
        assert_eq!(
            tag(root.path(), "agent.service", Path::new("/new.pem")).unwrap(),
            Tagged::Written
        );
        let text = std::fs::read_to_string(dropin_path(root.path(), "agent.service")).unwrap();
        assert!(text.contains("SSL_CERT_FILE=/new.pem"));
    }
}
