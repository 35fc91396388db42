//! Where audit records go: a JSON-lines file with size-based rotation, and
//! the systemd journal when the daemon runs under systemd.
//!
//! Writes are synchronous and small (one line under a mutex) so that a record
//! is on disk (in the page cache) before the request it describes has ended.
//! A failed write is reported loudly (an error log on the first failure and
//! every `REPORT_EVERY` drops after, and a metric); `on_failure` decides
//! whether the proxy keeps serving (fail-open: records are counted as
//! dropped) or refuses requests until a write succeeds again (fail-closed).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::{fs::OpenOptionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use crate::config::{AuditConfig, AuditFailureMode};

use super::AuditRecord;

/// The journald native protocol socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// After the first failed write is logged, one error line per this many
/// further drops, so a full disk does not also flood the journal.
const REPORT_EVERY: u64 = 1000;

pub struct AuditLog {
    file: Option<Mutex<FileSink>>,
    journal: Option<Journal>,
    mode: AuditFailureMode,
    failing: AtomicBool,
    written: AtomicU64,
    dropped: AtomicU64,
}

/// The audit trail's state for `warrant status` (documented field by
/// field in the README's status section).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditHealth {
    /// Whether the last write to the file succeeded (true without a file).
    pub writable: bool,
    /// Records written since the daemon started.
    pub written: u64,
    /// Records that could not be written since the daemon started.
    pub dropped: u64,
    /// `[audit] on_failure = "closed"`: requests are refused while the
    /// file cannot be written.
    pub fail_closed: bool,
    /// The JSON-lines file (None: no file).
    pub file: Option<PathBuf>,
    /// Records also go to the systemd journal.
    pub journal: bool,
}

struct FileSink {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

struct Journal {
    socket: UnixDatagram,
    path: PathBuf,
}

impl AuditLog {
    /// No file, no journal: records are dropped silently (tests of other
    /// parts, and `audit_log = ""` with journald off).
    pub fn disabled() -> AuditLog {
        AuditLog {
            file: None,
            journal: None,
            mode: AuditFailureMode::Open,
            failing: AtomicBool::new(false),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// The file at `path` (none when empty) and, when `journal` names a
    /// socket, the journal. The file is opened now, so a bad path is
    /// reported at start; a failure is not fatal in fail-open mode.
    pub fn open(path: &Path, config: &AuditConfig, journal: Option<&Path>) -> AuditLog {
        let file = (!path.as_os_str().is_empty()).then(|| {
            let mut sink = FileSink {
                path: path.to_path_buf(),
                file: None,
                size: 0,
                max_bytes: config.max_bytes,
                keep: config.keep,
            };
            if let Err(error) = sink.reopen() {
                tracing::error!(path = %path.display(), %error, "cannot open the audit log");
            }
            Mutex::new(sink)
        });
        let journal = journal.and_then(|p| match UnixDatagram::unbound() {
            Ok(socket) => Some(Journal {
                socket,
                path: p.to_path_buf(),
            }),
            Err(error) => {
                tracing::error!(%error, "cannot create a socket for the journal");
                None
            }
        });
        let log = AuditLog {
            failing: AtomicBool::new(false),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            mode: config.on_failure,
            journal,
            file,
        };
        let opened = log
            .file
            .as_ref()
            .is_none_or(|f| f.lock().is_ok_and(|f| f.file.is_some()));
        log.failing.store(!opened, Ordering::Relaxed);
        log
    }

    /// The journal socket to use: the native protocol socket when systemd
    /// started us with its journal on stderr (JOURNAL_STREAM) and the
    /// config does not turn it off.
    pub fn journal_socket(config: &AuditConfig) -> Option<PathBuf> {
        (config.journald && std::env::var_os("JOURNAL_STREAM").is_some())
            .then(|| PathBuf::from(JOURNAL_SOCKET))
    }

    /// Whether requests may be served: always in fail-open mode; in
    /// fail-closed mode, while the last write succeeded.
    pub fn accepting(&self) -> bool {
        self.mode == AuditFailureMode::Open || !self.failing.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> AuditHealth {
        AuditHealth {
            writable: !self.failing.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            fail_closed: self.mode == AuditFailureMode::Closed,
            file: self
                .file
                .as_ref()
                .and_then(|f| f.lock().ok().map(|f| f.path.clone())),
            journal: self.journal.is_some(),
        }
    }

    /// Writes one record; returns whether the file took it (true when there
    /// is no file).
    pub fn write(&self, record: &AuditRecord) -> bool {
        let line = record.to_line();
        if let Some(journal) = &self.journal {
            journal.send(&line);
        }
        let Some(file) = &self.file else {
            return true;
        };
        let result = match file.lock() {
            Ok(mut sink) => sink.append(&line),
            Err(_) => Err(std::io::Error::other("audit log lock poisoned")),
        };
        match result {
            Ok(()) => {
                self.written.fetch_add(1, Ordering::Relaxed);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!("the audit log is writable again");
                }
                true
            }
            Err(error) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                let first = !self.failing.swap(true, Ordering::Relaxed);
                if first || dropped.is_multiple_of(REPORT_EVERY) {
                    tracing::error!(
                        %error,
                        dropped,
                        fail_closed = self.mode == AuditFailureMode::Closed,
                        "AUDIT RECORDS ARE BEING LOST: the audit log cannot be written{}",
                        if self.mode == AuditFailureMode::Closed {
                            "; requests are refused until it can (on_failure = \"closed\")"
                        } else {
                            "; requests are still served (on_failure = \"open\")"
                        }
                    );
                }
                false
            }
        }
    }
}

impl FileSink {
    fn reopen(&mut self) -> std::io::Result<()> {
        self.file = None;
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o750,
            )
            .create(dir)?;
        }
        // 0600: records name programs, paths and credential fingerprints;
        // they are for the operator only.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn append(&mut self, line: &str) -> std::io::Result<()> {
        let needed = line.len() as u64 + 1;
        if self.file.is_some()
            && self.max_bytes > 0
            && self.size > 0
            && self.size + needed > self.max_bytes
        {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.reopen()?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("audit log not open"));
        };
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        // One write(2) per line on an O_APPEND file: lines never interleave.
        if let Err(error) = file.write_all(&buf) {
            // Reopened on the next write (the file may have been removed or
            // the disk freed).
            self.file = None;
            return Err(error);
        }
        self.size += needed;
        Ok(())
    }

    /// audit.jsonl -> audit.jsonl.1 -> ... -> audit.jsonl.<keep>; the oldest
    /// is removed. `keep = 0` truncates instead.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let numbered = |n: u32| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let from = numbered(n);
                if from.exists() {
                    std::fs::rename(&from, numbered(n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.reopen()
    }
}

impl Journal {
    /// The native protocol: KEY=value lines in one datagram. The JSON line
    /// has no newline, so the simple form suffices. Journal loss is logged
    /// at debug only: the file is the record of reference.
    fn send(&self, line: &str) {
        let mut datagram = Vec::with_capacity(line.len() + 96);
        datagram.extend_from_slice(
            b"SYSLOG_IDENTIFIER=warrant-audit\nPRIORITY=6\nWARRANT_AUDIT=1\nMESSAGE=",
        );
        datagram.extend_from_slice(line.as_bytes());
        datagram.push(b'\n');
        if let Err(error) = self.socket.send_to(&datagram, &self.path) {
            tracing::debug!(%error, "audit record not sent to the journal");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::audit::RecordKind;

    fn record(n: usize) -> AuditRecord {
        let mut record = AuditRecord::new(RecordKind::Request);
        record.message = Some(format!("record {n:04}"));
        record
    }

    #[test]
    fn the_log_rotates_by_size_and_keeps_the_configured_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.jsonl");
        let config = AuditConfig {
            max_bytes: 400,
            keep: 2,
            ..AuditConfig::default()
        };
        let log = AuditLog::open(&path, &config, None);
        for n in 0..40 {
            assert!(log.write(&record(n)));
        }
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        let rotated = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        assert!(size(&path) <= 400);
        assert!(size(&rotated(1)) <= 400 && size(&rotated(2)) <= 400);
        assert!(!rotated(3).exists(), "only `keep` rotated files");
        // The newest record is in the live file, every line whole.
        let live = std::fs::read_to_string(&path).unwrap();
        assert!(live.contains("record 0039"));
        for file in [path.clone(), rotated(1), rotated(2)] {
            for line in std::fs::read_to_string(file).unwrap().lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
            }
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(log.health().written, 40);
    }

    #[test]
    fn records_reach_the_journal_socket_with_the_native_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("journal.sock");
        let journal = UnixDatagram::bind(&socket).unwrap();
        let log = AuditLog::open(Path::new(""), &AuditConfig::default(), Some(&socket));
        assert!(log.write(&record(7)));
        let mut buf = vec![0u8; 4096];
        let n = journal.recv(&mut buf).unwrap();
        let datagram = String::from_utf8_lossy(&buf[..n]);
        assert!(
            datagram.contains("SYSLOG_IDENTIFIER=warrant-audit\n"),
            "{datagram}"
        );
        let message = datagram
            .lines()
            .find_map(|l| l.strip_prefix("MESSAGE="))
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(message).unwrap();
        assert_eq!(parsed["message"], "record 0007");
    }

    #[test]
    fn a_failed_write_is_counted_and_fail_closed_stops_accepting_until_a_write_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, &AuditConfig::default(), None);
        assert!(log.accepting());
        // The directory goes away: the next reopen fails.
        if let Ok(mut sink) = log.file.as_ref().unwrap().lock() {
            sink.file = None;
        }
        std::fs::remove_dir_all(dir.path()).unwrap();
        std::fs::write(dir.path(), b"a file where the directory was").unwrap();
        assert!(!log.write(&record(1)));
        assert!(!log.accepting());
        assert_eq!(log.health().dropped, 1);
        std::fs::remove_file(dir.path()).unwrap();
        assert!(log.write(&record(2)), "recovers once the path is writable");
        assert!(log.accepting());
    }
}
