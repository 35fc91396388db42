//! SHA-256 of executables and scripts, cached by file identity.
//!
//! A binary is hashed once: the cache key is (device, inode, size, mtime,
//! ctime) taken with fstat on the open descriptor, so a file replaced by
//! rename (new inode) or rewritten in place (new size, mtime or ctime) is
//! hashed again, and a renamed file keeps its entry. Files over the size limit
//! are not hashed at all (hashing attacker-chosen huge files would be a
//! denial of service); their hash is absent and hash selectors fail closed.

use std::{
    collections::HashMap,
    fs::File,
    io::Read,
    os::unix::fs::{FileTypeExt, MetadataExt},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;

/// Entries kept before the cache is emptied. Far above the number of distinct
/// executables on a host; only reached if something churns files on purpose.
const MAX_ENTRIES: usize = 16_384;

/// What is known of a file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FileHash {
    /// Lower-case hex SHA-256.
    Sha256 { sha256: String },
    /// Not hashed: larger than the configured limit.
    TooLarge { size: u64, limit: u64 },
    /// Not a regular file, unreadable, or changed while being hashed.
    Unavailable { reason: String },
}

impl FileHash {
    pub fn hex(&self) -> Option<&str> {
        match self {
            FileHash::Sha256 { sha256 } => Some(sha256),
            _ => None,
        }
    }

    /// The digest as bytes (what `policy::PolicyInput::exe_sha256` takes).
    pub fn bytes(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(self.hex()?, &mut out).ok()?;
        Some(out)
    }

    /// Why there is no hash, for selector explanations.
    pub fn describe(&self) -> String {
        match self {
            FileHash::Sha256 { sha256 } => sha256.clone(),
            FileHash::TooLarge { size, limit } => {
                format!("not hashed: {size} bytes exceeds the limit of {limit} bytes")
            }
            FileHash::Unavailable { reason } => format!("not hashed: {reason}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> FileKey {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Counters, for tests and the benchmark.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HashStats {
    pub hits: u64,
    pub misses: u64,
}

pub struct HashCache {
    max_bytes: u64,
    entries: Mutex<HashMap<FileKey, String>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl HashCache {
    pub fn new(max_bytes: u64) -> HashCache {
        HashCache {
            max_bytes,
            entries: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn stats(&self) -> HashStats {
        HashStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The hash of an open file. Reads from the descriptor, never by path, so
    /// the content is that of the file the caller opened (for executables:
    /// /proc/PID/exe, the file actually running, even if since renamed or
    /// replaced on disk).
    pub fn hash_file(&self, file: &mut File) -> FileHash {
        let meta = match file.metadata() {
            Ok(meta) => meta,
            Err(err) => return unavailable(format!("fstat: {err}")),
        };
        let kind = meta.file_type();
        if !kind.is_file() {
            let what = if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_dir() {
                "a directory"
            } else {
                "not a regular file"
            };
            return unavailable(what.to_owned());
        }
        if meta.size() > self.max_bytes {
            return FileHash::TooLarge {
                size: meta.size(),
                limit: self.max_bytes,
            };
        }
        let key = FileKey::of(&meta);
        if let Some(hex) = self.entries.lock().ok().and_then(|m| m.get(&key).cloned()) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return FileHash::Sha256 { sha256: hex };
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let digest = match sha256_of(file, self.max_bytes) {
            Ok(digest) => digest,
            Err(reason) => return unavailable(reason.to_string()),
        };
        // A file written to while we read it has no single content: report
        // nothing rather than a hash of a mixture, and cache nothing.
        match file.metadata() {
            Ok(after) if FileKey::of(&after) == key => {}
            _ => return unavailable("changed while being hashed".to_owned()),
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(key, digest.clone());
        }
        FileHash::Sha256 { sha256: digest }
    }
}

fn unavailable(reason: String) -> FileHash {
    FileHash::Unavailable { reason }
}

/// Why a file being hashed has no hash.
#[derive(Debug, thiserror::Error)]
enum HashError {
    #[error("read: {0}")]
    Read(#[source] std::io::Error),
    #[error("grew past the size limit while being hashed")]
    Grew,
}

/// Hashes from the current position to the end, reading at most `limit`
/// bytes (a file that grows past its fstat size is caught by the caller's
/// second fstat; the limit stops a file that grows without end).
fn sha256_of(file: &mut File, limit: u64) -> Result<String, HashError> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(HashError::Read(err)),
        };
        total += n as u64;
        if total > limit {
            return Err(HashError::Grew);
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::DEFAULT_MAX_HASH_BYTES;
    use std::io::Write;

    fn hash_path(cache: &HashCache, path: &std::path::Path) -> FileHash {
        cache.hash_file(&mut File::open(path).unwrap())
    }

    const HELLO_SHA256: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn a_file_is_hashed_once_and_the_hash_is_correct() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"hello").unwrap();
        let cache = HashCache::new(DEFAULT_MAX_HASH_BYTES);
        assert_eq!(hash_path(&cache, &path).hex(), Some(HELLO_SHA256));
        let again = hash_path(&cache, &path);
        assert_eq!(again.hex(), Some(HELLO_SHA256));
        assert_eq!(
            again.bytes().map(hex::encode).as_deref(),
            Some(HELLO_SHA256)
        );
        assert_eq!(cache.stats(), HashStats { hits: 1, misses: 1 });
    }

    #[test]
    fn a_binary_replaced_by_rename_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"hello").unwrap();
        let cache = HashCache::new(DEFAULT_MAX_HASH_BYTES);
        assert_eq!(hash_path(&cache, &path).hex(), Some(HELLO_SHA256));
        // Same size, new inode: what a package manager does.
        let staged = dir.path().join("bin.new");
        std::fs::write(&staged, b"jello").unwrap();
        std::fs::rename(&staged, &path).unwrap();
        let again = hash_path(&cache, &path);
        assert_ne!(again.hex(), Some(HELLO_SHA256));
        assert_eq!(cache.stats().misses, 2);
    }

    #[test]
    fn a_binary_rewritten_in_place_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, b"hello").unwrap();
        let cache = HashCache::new(DEFAULT_MAX_HASH_BYTES);
        let first = hash_path(&cache, &path);
        // Same inode, same size: only mtime/ctime change.
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all(b"jello").unwrap();
        drop(file);
        let second = hash_path(&cache, &path);
        assert_ne!(first, second);
        assert_eq!(cache.stats().misses, 2);
    }

    #[test]
    fn a_file_over_the_size_limit_is_not_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![0u8; 4097]).unwrap();
        let cache = HashCache::new(4096);
        assert_eq!(
            hash_path(&cache, &path),
            FileHash::TooLarge {
                size: 4097,
                limit: 4096
            }
        );
        assert_eq!(cache.stats(), HashStats::default());
    }

    #[test]
    fn a_directory_has_no_hash() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HashCache::new(DEFAULT_MAX_HASH_BYTES);
        assert!(hash_path(&cache, dir.path()).hex().is_none());
    }
}
