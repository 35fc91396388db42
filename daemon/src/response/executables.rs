//! The executable-changed check: is the program behind a live connection
//! still the file on disk that was attested?

use std::path::Path;

use crate::audit::AttestationSummary;

/// Why the executable or entrypoint behind `attestation` no longer matches
/// the file on disk, if it does not.
pub(super) fn changed_on_disk(attestation: &AttestationSummary) -> Option<String> {
    let files = [
        (
            "executable",
            Some(&attestation.exe),
            &attestation.exe_sha256,
        ),
        (
            "entrypoint",
            attestation.entrypoint.as_ref(),
            &attestation.entrypoint_sha256,
        ),
    ];
    for (what, path, attested) in files {
        let (Some(path), Some(attested)) = (path, attested) else {
            continue;
        };
        // /proc/PID/exe names a replaced or removed file "PATH (deleted)".
        if let Some(original) = path.strip_suffix(" (deleted)") {
            return Some(format!(
                "the {what} {original} was replaced or removed on disk while the process runs"
            ));
        }
        match sha256_of(Path::new(path)) {
            Ok(now) if &now == attested => {}
            Ok(now) => {
                return Some(format!(
                    "the {what} {path} changed on disk (attested sha256 {}, now {})",
                    short(attested),
                    short(&now)
                ));
            }
            Err(error) => {
                return Some(format!(
                    "the {what} {path} cannot be read any more: {error}"
                ));
            }
        }
    }
    None
}

fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}
