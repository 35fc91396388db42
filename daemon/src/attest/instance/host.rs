//! The `host` provider: no network. The machine id identifies the host; a
//! key pair generated at first start (root-only, in the state dir) lets the
//! host prove that identity later (e.g. to a token-exchange service), and
//! its public half is a claim. Region and environment come from config.

use std::{
    collections::BTreeMap,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::PathBuf,
};

use ring::signature::{Ed25519KeyPair, KeyPair};

use super::{Identity, InstanceError, add_config_claims};

pub const MACHINE_ID_PATH: &str = "/etc/machine-id";
/// The host key in the state dir: Ed25519, PKCS#8 DER, mode 0600.
pub const HOST_KEY_FILE: &str = "host-ed25519.pk8";

pub struct HostProvider {
    machine_id: PathBuf,
    key_path: PathBuf,
    region: Option<String>,
    environment: Option<String>,
}

impl HostProvider {
    pub fn new(
        machine_id: PathBuf,
        key_path: PathBuf,
        region: Option<String>,
        environment: Option<String>,
    ) -> HostProvider {
        HostProvider {
            machine_id,
            key_path,
            region,
            environment,
        }
    }

    pub fn fetch(&self) -> Result<Identity, InstanceError> {
        let machine_id = std::fs::read_to_string(&self.machine_id)
            .map_err(|e| InstanceError::Host(format!("{}: {e}", self.machine_id.display())))?
            .trim()
            .to_owned();
        if machine_id.is_empty() {
            return Err(InstanceError::Host(format!(
                "{} is empty",
                self.machine_id.display()
            )));
        }
        let key = self.load_or_create_key()?;
        let mut claims = BTreeMap::from([
            ("machine_id".to_owned(), machine_id),
            (
                "host_key_ed25519".to_owned(),
                hex::encode(key.public_key().as_ref()),
            ),
        ]);
        add_config_claims(&mut claims, self.region.as_ref(), self.environment.as_ref());
        // The host's own files are its trust: nothing to verify remotely.
        Ok(Identity {
            verified: true,
            claims,
            evidence: None,
            issued_at: None,
        })
    }

    /// Loads the host key, generating it on first start. A key readable by
    /// anyone but its owner is refused rather than used.
    pub fn load_or_create_key(&self) -> Result<Ed25519KeyPair, InstanceError> {
        let host_err = |what: &str, e: &dyn std::fmt::Display| {
            InstanceError::Host(format!("{what} {}: {e}", self.key_path.display()))
        };
        match std::fs::read(&self.key_path) {
            Ok(der) => {
                let mode = std::fs::metadata(&self.key_path)
                    .map_err(|e| host_err("stat", &e))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(InstanceError::Host(format!(
                        "{} has mode {:o}; the host key must be readable by its owner only (0600)",
                        self.key_path.display(),
                        mode & 0o777
                    )));
                }
                Ed25519KeyPair::from_pkcs8(&der).map_err(|e| host_err("bad key in", &e))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let rng = ring::rand::SystemRandom::new();
                let der =
                    Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| host_err("generate", &e))?;
                if let Some(dir) = self.key_path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| host_err("create dir for", &e))?;
                }
                // create_new: never overwrite a key another start just wrote.
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&self.key_path)
                    .map_err(|e| host_err("create", &e))?;
                file.write_all(der.as_ref())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| host_err("write", &e))?;
                Ed25519KeyPair::from_pkcs8(der.as_ref()).map_err(|e| host_err("bad key in", &e))
            }
            Err(err) => Err(host_err("read", &err)),
        }
    }
}
