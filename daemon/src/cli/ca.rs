//! `warrant ca export | install | uninstall`: the local CA certificate, and
//! the system trust store (Debian's update-ca-certificates) for agents that
//! do not honour SSL_CERT_FILE and friends. The CA is name-constrained to the
//! intercepted hosts, so trusting it system-wide lets it vouch for nothing
//! else.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::install::system_ca_path;

/// Copies the CA certificate (`pem`) into the local CA directory under
/// `root`. True when the file changed.
pub fn install(root: &Path, pem: &str) -> Result<bool> {
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        bail!("the CA file holds no PEM certificate");
    }
    let path = system_ca_path(root);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == pem) {
        return Ok(false);
    }
    let dir = path.parent().context("CA path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    Ok(true)
}

/// Removes the file `install` wrote. False when it was not there.
pub fn uninstall(root: &Path) -> Result<bool> {
    let path = system_ca_path(root);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Rebuilds the system bundle (/etc/ssl/certs/ca-certificates.crt).
pub fn update_ca_certificates(fresh: bool) -> Result<()> {
    let mut cmd = std::process::Command::new("update-ca-certificates");
    if fresh {
        // A removed local CA is only dropped from the bundle by a rebuild.
        cmd.arg("--fresh");
    }
    let status = cmd
        .status()
        .context("cannot run update-ca-certificates (package ca-certificates)")?;
    if !status.success() {
        bail!("update-ca-certificates failed: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn install_writes_the_certificate_where_update_ca_certificates_looks() {
        let root = tempfile::tempdir().unwrap();
        assert!(install(root.path(), PEM).unwrap());
        let path = root
            .path()
            .join("usr/local/share/ca-certificates/warrant-ca.crt");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), PEM);
        assert!(
            !install(root.path(), PEM).unwrap(),
            "unchanged the second time"
        );
        assert!(uninstall(root.path()).unwrap());
        assert!(!path.exists());
        assert!(!uninstall(root.path()).unwrap());
    }

    #[test]
    fn install_refuses_what_is_not_a_certificate() {
        let root = tempfile::tempdir().unwrap();
        assert!(install(root.path(), "not a certificate").is_err());
    }
}
