//! `file` and `systemd` credentials: a key read from a file.
//!
//! `file` insists on a root-only file: owned by root, no group or world bits.
//! A key that any other local user can read has already leaked, so the file
//! is refused rather than served. `systemd` reads `$CREDENTIALS_DIRECTORY/<id>`
//! (LoadCredential=, LoadCredentialEncrypted= with a TPM-sealed blob): systemd
//! itself owns that directory's permissions.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use zeroize::Zeroizing;

use super::provider::{IssueContext, IssueFuture, Issued, Provider};
use crate::secret::Secret;

/// Why a key file cannot be served. Names the path and what is wrong with
/// it, never its content.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot stat {}: {source}", path.display())]
    Stat {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "credential file {} has mode {mode:04o}, readable or writable by group or others; \
         it must be 0600 or 0400 (chmod 600 {})",
        path.display(),
        path.display()
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error(
        "credential file {} is owned by uid {owner}, not uid {expected}; it must be owned by root",
        path.display()
    )]
    Owner {
        path: PathBuf,
        owner: u32,
        expected: u32,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("{} is empty", path.display())]
    Empty { path: PathBuf },
    #[error(
        "$CREDENTIALS_DIRECTORY is not set: give warrant.service LoadCredential= or LoadCredentialEncrypted="
    )]
    NoCredentialsDirectory,
}

/// Refuses a file that anyone but `owner_uid` may read.
pub fn check_root_only(path: &Path, owner_uid: u32) -> Result<(), FileError> {
    let meta = std::fs::metadata(path).map_err(|source| FileError::Stat {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(FileError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.uid() != owner_uid {
        return Err(FileError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            expected: owner_uid,
        });
    }
    Ok(())
}

/// Reads a key file: surrounding whitespace (the trailing newline editors
/// add) is not part of the key.
async fn read_key(path: &Path) -> Result<Secret, FileError> {
    let bytes = Zeroizing::new(
        tokio::fs::read(path)
            .await
            .map_err(|source| FileError::Read {
                path: path.to_owned(),
                source,
            })?,
    );
    let text = std::str::from_utf8(&bytes).map_err(|_| FileError::NotUtf8 {
        path: path.to_owned(),
    })?;
    let key = text.trim();
    if key.is_empty() {
        return Err(FileError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(Secret::new(key.to_owned()))
}

pub struct FileProvider {
    path: PathBuf,
    /// root (0) in the daemon; tests pass their own uid.
    owner_uid: u32,
}

impl FileProvider {
    pub fn new(path: PathBuf, owner_uid: u32) -> FileProvider {
        FileProvider { path, owner_uid }
    }
}

impl Provider for FileProvider {
    fn issue<'a>(&'a self, _ctx: &'a IssueContext<'a>) -> IssueFuture<'a> {
        Box::pin(async move {
            check_root_only(&self.path, self.owner_uid)?;
            let value = read_key(&self.path).await?;
            Ok(Issued {
                value,
                expires_at: None,
            })
        })
    }
}

pub struct SystemdProvider {
    path: PathBuf,
}

impl SystemdProvider {
    /// `directory` is `$CREDENTIALS_DIRECTORY`; None when the daemon was not
    /// started with credentials, which fails at issue time with a clear error.
    pub fn new(directory: Option<PathBuf>, id: &str) -> SystemdProvider {
        let path = directory.map_or_else(PathBuf::new, |dir| dir.join(id));
        SystemdProvider { path }
    }
}

impl Provider for SystemdProvider {
    fn issue<'a>(&'a self, _ctx: &'a IssueContext<'a>) -> IssueFuture<'a> {
        Box::pin(async move {
            if self.path.as_os_str().is_empty() {
                return Err(FileError::NoCredentialsDirectory.into());
            }
            let value = read_key(&self.path).await?;
            Ok(Issued {
                value,
                expires_at: None,
            })
        })
    }
}
