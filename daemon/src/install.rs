//! What warrant places on the host outside its own directories, and where:
//! the systemd drop-in that makes a service a tagged workload (`warrant
//! tag`) and the local CA in the system trust store (`warrant ca install`).
//! The commands that write these (`cli`) and the checks that read them back
//! (`doctor`) share this one description, so that doctor checks exactly what
//! the commands write. It imports nothing from the crate.

use std::path::{Path, PathBuf};

/// The slice `warrant tag` places units in; the default config's workload.
pub const AGENTS_SLICE: &str = "warrant-agents.slice";
/// Sorts after the vendor's and most admin drop-ins (which usually use
/// lower numbers) so an earlier `Slice=` does not win, and is easy to spot.
pub const DROPIN_NAME: &str = "50-warrant.conf";

/// The variables TLS stacks read for their trust store: OpenSSL (Python's
/// ssl, httpx, curl), requests/certifi, Node (added to its roots), and
/// botocore (boto3 and the AWS CLI ignore the others and use certifi).
pub const TRUST_VARIABLES: [&str; 4] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "AWS_CA_BUNDLE",
];

/// Where the drop-in of `unit` lives under `root` ("/" on a real system).
pub fn dropin_path(root: &Path, unit: &str) -> PathBuf {
    root.join("etc/systemd/system")
        .join(format!("{unit}.d"))
        .join(DROPIN_NAME)
}

/// The drop-in's text for a trust bundle at `bundle`.
pub fn dropin_text(bundle: &Path) -> String {
    let mut text = String::from(
        "# Written by `warrant tag`; `warrant untag` removes this file.\n\
         # The unit's processes run in the slice warrant redirects, and their\n\
         # TLS clients trust warrant's local CA (plus the system roots).\n\
         [Service]\n",
    );
    text.push_str(&format!("Slice={AGENTS_SLICE}\n"));
    for variable in TRUST_VARIABLES {
        text.push_str(&format!("Environment={variable}={}\n", bundle.display()));
    }
    text
}

/// Where update-ca-certificates picks up local CAs (must end in .crt). The
/// package's postrm removes this file on purge.
pub const SYSTEM_CA_FILE: &str = "usr/local/share/ca-certificates/warrant-ca.crt";

/// The local CA's file in the system trust store under `root`.
pub fn system_ca_path(root: &Path) -> PathBuf {
    root.join(SYSTEM_CA_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropin_places_the_unit_in_the_agents_slice_and_sets_every_trust_variable() {
        let text = dropin_text(Path::new("/var/lib/warrant/trust-bundle.pem"));
        assert_eq!(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>(),
            [
                "[Service]",
                "Slice=warrant-agents.slice",
                "Environment=SSL_CERT_FILE=/var/lib/warrant/trust-bundle.pem",
                "Environment=REQUESTS_CA_BUNDLE=/var/lib/warrant/trust-bundle.pem",
                "Environment=NODE_EXTRA_CA_CERTS=/var/lib/warrant/trust-bundle.pem",
                "Environment=AWS_CA_BUNDLE=/var/lib/warrant/trust-bundle.pem",
            ]
        );
    }
}
