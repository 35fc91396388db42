//! Where audit records go: a JSON-lines file with size-based rotation, and
//! the systemd journal when the daemon runs under systemd.
//!
//! Writes to the file are buffered: a record is appended to an in-memory
//! buffer (under a mutex, no syscall), and a writer thread
//! (`warrant-audit`) writes the whole buffer with one write(2) at most
//! `FLUSH_INTERVAL` after the first record of a batch arrived; a buffer of
//! `FLUSH_BYTES` or more is written at once by the request that filled it.
//! One syscall per batch instead of one per request (a write per record
//! was 4% of the CPU time of a request at c=64).
//!
//! The durability window: a record reaches the file (the page cache) at
//! most `FLUSH_INTERVAL` (plus the time of one write) after its request
//! ended. An orderly shutdown flushes ([`AuditLog::flush`]); a crash or
//! SIGKILL loses at most the records of that window.
//!
//! A failed write is reported loudly (an error log on the first failure and
//! every `REPORT_EVERY` drops after, and a metric); every record of the
//! failed batch is counted as dropped. `on_failure` decides whether the
//! proxy keeps serving (fail-open) or refuses requests until a write
//! succeeds again (fail-closed). In fail-closed mode, requests that ended
//! within the window before a failed write were served; their records are
//! counted as dropped, and every request after the failed write is refused.
//! Records are written in the order they were submitted; lines never
//! interleave (the file is O_APPEND and only the flush writes it).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::unix::{fs::OpenOptionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;

use crate::config::{AuditConfig, AuditFailureMode};

use super::AuditRecord;

/// The journald native protocol socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// After the first failed write is logged, one error line per this many
/// further drops, so a full disk does not also flood the journal.
const REPORT_EVERY: u64 = 1000;

/// The durability window: the longest a record waits in memory before the
/// writer thread writes it.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// A buffer this large is written at once, by the request that filled it,
/// without waiting for the writer thread (bounds the memory of a burst).
const FLUSH_BYTES: usize = 64 * 1024;

pub struct AuditLog {
    file: Option<Arc<Buffered>>,
    journal: Option<Journal>,
    mode: AuditFailureMode,
}

/// The file's side, shared with the writer thread.
struct Buffered {
    /// Records not yet written, newline-terminated, in submission order.
    pending: Mutex<Pending>,
    /// Signals the writer thread: a first record is pending, or stop.
    wake: Condvar,
    /// The file. Taken by each flush before it takes the pending records,
    /// so batches reach the file in the order they were submitted.
    sink: Mutex<FileSink>,
    mode: AuditFailureMode,
    failing: AtomicBool,
    written: AtomicU64,
    dropped: AtomicU64,
    /// The metrics' record counters (`Audit::new` attaches them).
    counters: OnceLock<Counters>,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    count: u64,
    /// The writer thread runs (else every record is written at once).
    writer: bool,
    stop: bool,
}

struct Counters {
    written: Counter,
    dropped: Counter,
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
            let opened = match sink.reopen() {
                Ok(()) => true,
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "cannot open the audit log");
                    false
                }
            };
            let buffered = Arc::new(Buffered {
                pending: Mutex::new(Pending::default()),
                wake: Condvar::new(),
                sink: Mutex::new(sink),
                mode: config.on_failure,
                failing: AtomicBool::new(!opened),
                written: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                counters: OnceLock::new(),
            });
            Buffered::start_writer(&buffered);
            buffered
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
        AuditLog {
            mode: config.on_failure,
            journal,
            file,
        }
    }

    /// The journal socket to use: the native protocol socket when systemd
    /// started us with its journal on stderr (JOURNAL_STREAM) and the
    /// config does not turn it off.
    pub fn journal_socket(config: &AuditConfig) -> Option<PathBuf> {
        (config.journald && std::env::var_os("JOURNAL_STREAM").is_some())
            .then(|| PathBuf::from(JOURNAL_SOCKET))
    }

    /// The metrics' counters of written and dropped records, counted when
    /// a batch is written (or fails). Set once, by `Audit::new`.
    pub fn count_in(&self, written: Counter, dropped: Counter) {
        if let Some(file) = &self.file {
            let _ = file.counters.set(Counters { written, dropped });
        }
    }

    /// Whether requests may be served: always in fail-open mode; in
    /// fail-closed mode, while the last write succeeded.
    pub fn accepting(&self) -> bool {
        self.mode == AuditFailureMode::Open
            || self
                .file
                .as_ref()
                .is_none_or(|f| !f.failing.load(Ordering::Acquire))
    }

    pub fn health(&self) -> AuditHealth {
        let load = |f: fn(&Buffered) -> &AtomicU64| {
            self.file
                .as_ref()
                .map_or(0, |b| f(b).load(Ordering::Acquire))
        };
        AuditHealth {
            writable: self
                .file
                .as_ref()
                .is_none_or(|f| !f.failing.load(Ordering::Acquire)),
            written: load(|b| &b.written),
            dropped: load(|b| &b.dropped),
            fail_closed: self.mode == AuditFailureMode::Closed,
            file: self
                .file
                .as_ref()
                .and_then(|f| f.sink.lock().ok().map(|sink| sink.path.clone())),
            journal: self.journal.is_some(),
        }
    }

    /// Queues one record for the file (written within `FLUSH_INTERVAL`)
    /// and sends it to the journal. Returns whether there is a file to
    /// count it (written or dropped when its batch is written); false when
    /// there is none.
    pub fn write(&self, record: &AuditRecord) -> bool {
        let line = record.to_line();
        if let Some(journal) = &self.journal {
            journal.send(&line);
        }
        let Some(file) = &self.file else {
            return false;
        };
        file.submit(&line);
        true
    }

    /// Writes every queued record now (shutdown, tests).
    pub fn flush(&self) {
        if let Some(file) = &self.file {
            file.flush();
        }
    }
}

impl Drop for AuditLog {
    /// Writes what is queued and stops the writer thread.
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            if let Ok(mut pending) = file.pending.lock() {
                pending.stop = true;
            }
            file.wake.notify_all();
            file.flush();
        }
    }
}

impl Buffered {
    /// Starts the writer thread. Without one (the thread cannot be
    /// created), every record is written as it comes.
    fn start_writer(this: &Arc<Buffered>) {
        let shared = this.clone();
        // The thread logs where its creator logs (the global subscriber in
        // the daemon; a test's own capture in tests).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let started = std::thread::Builder::new()
            .name("warrant-audit".into())
            .spawn(move || tracing::dispatcher::with_default(&dispatch, || shared.writer()));
        match started {
            Ok(_) => {
                if let Ok(mut pending) = this.pending.lock() {
                    pending.writer = true;
                }
            }
            Err(error) => tracing::warn!(
                %error,
                "no audit writer thread: each record is written as it comes"
            ),
        }
    }

    /// The writer thread: waits for a first pending record, lets the batch
    /// gather for `FLUSH_INTERVAL`, writes it; until the log is dropped.
    fn writer(&self) {
        loop {
            {
                let Ok(mut pending) = self.pending.lock() else {
                    return;
                };
                while pending.lines.is_empty() && !pending.stop {
                    pending = match self.wake.wait(pending) {
                        Ok(p) => p,
                        Err(_) => return,
                    };
                }
                if pending.stop {
                    return;
                }
                // Gather: wait out the interval (a stop ends it early).
                let deadline = std::time::Instant::now() + FLUSH_INTERVAL;
                while !pending.stop {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    pending = match self.wake.wait_timeout(pending, left) {
                        Ok((p, _)) => p,
                        Err(_) => return,
                    };
                }
            }
            self.flush();
        }
    }

    fn submit(&self, line: &str) {
        let queued = match self.pending.lock() {
            Ok(mut pending) => {
                let first = pending.lines.is_empty();
                pending.lines.reserve(line.len() + 1);
                pending.lines.extend_from_slice(line.as_bytes());
                pending.lines.push(b'\n');
                pending.count += 1;
                Some((first, pending.lines.len() >= FLUSH_BYTES, pending.writer))
            }
            Err(_) => None,
        };
        // The buffer's lock is released here (a flush takes the file's
        // lock, then the buffer's).
        let Some((first, full, writer)) = queued else {
            if let Ok(_sink) = self.sink.lock() {
                self.count(0, 1, &std::io::Error::other("audit buffer lock poisoned"));
            }
            return;
        };
        if full || !writer {
            self.flush();
        } else if first {
            self.wake.notify_one();
        }
    }

    /// Writes the pending records (in order: the file's lock is taken
    /// before the records are) and counts them written or dropped.
    fn flush(&self) {
        let Ok(mut sink) = self.sink.lock() else {
            return;
        };
        let (lines, count) = match self.pending.lock() {
            Ok(mut pending) => (
                std::mem::take(&mut pending.lines),
                std::mem::take(&mut pending.count),
            ),
            Err(_) => return,
        };
        if count == 0 {
            return;
        }
        match sink.append(&lines, count) {
            Ok(()) => self.count(count, 0, &std::io::Error::other("unused")),
            Err((done, error)) => self.count(done, count - done, &error),
        }
        drop(sink);
    }

    /// Counts a batch: the metrics first, then the log line, then the
    /// health (`failing`, `written`, `dropped`), so that whoever sees the
    /// health move also sees the metrics and the log. Called under the
    /// file's lock (one batch at a time).
    fn count(&self, written: u64, dropped: u64, error: &std::io::Error) {
        if let Some(c) = self.counters.get() {
            c.written.inc_by(written);
            c.dropped.inc_by(dropped);
        }
        if dropped == 0 {
            if written > 0 && self.failing.load(Ordering::Acquire) {
                tracing::warn!("the audit log is writable again");
                self.failing.store(false, Ordering::Release);
            }
            self.written.fetch_add(written, Ordering::Release);
            return;
        }
        let before = self.dropped.load(Ordering::Acquire);
        let total = before + dropped;
        let first = !self.failing.load(Ordering::Acquire);
        // One line per REPORT_EVERY drops: whenever this batch crossed a
        // multiple of it.
        if first || before / REPORT_EVERY != total / REPORT_EVERY {
            tracing::error!(
                %error,
                dropped = total,
                fail_closed = self.mode == AuditFailureMode::Closed,
                "AUDIT RECORDS ARE BEING LOST: the audit log cannot be written{}",
                if self.mode == AuditFailureMode::Closed {
                    "; requests are refused until it can (on_failure = \"closed\")"
                } else {
                    "; requests are still served (on_failure = \"open\")"
                }
            );
        }
        self.failing.store(true, Ordering::Release);
        self.written.fetch_add(written, Ordering::Release);
        self.dropped.fetch_add(dropped, Ordering::Release);
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

    /// Appends `count` newline-terminated lines: one write(2) per run of
    /// lines that fits the current file, rotating between runs. On a
    /// failure, how many lines were written before it.
    fn append(&mut self, lines: &[u8], count: u64) -> Result<(), (u64, std::io::Error)> {
        let mut done = 0u64;
        let mut rest = lines;
        let mut rotated = false;
        while !rest.is_empty() {
            let room = if self.max_bytes == 0 {
                u64::MAX
            } else {
                self.max_bytes.saturating_sub(self.size)
            };
            // The usual case, the rest fits: no need to look for lines.
            let (end, in_run) = if rest.len() as u64 <= room {
                (rest.len(), count.saturating_sub(done))
            } else {
                run_that_fits(rest, room)
            };
            // Rotate when the next line does not fit a file that has
            // something in it (once per run: a line longer than max_bytes
            // gets a file of its own).
            if !rotated
                && self.file.is_some()
                && self.max_bytes > 0
                && self.size > 0
                && end as u64 > room
            {
                self.rotate().map_err(|e| (done, e))?;
                rotated = true;
                continue;
            }
            if self.file.is_none() {
                self.reopen().map_err(|e| (done, e))?;
            }
            let Some(file) = self.file.as_mut() else {
                return Err((done, std::io::Error::other("audit log not open")));
            };
            // One write(2) of whole lines on an O_APPEND file.
            if let Err(error) = file.write_all(&rest[..end]) {
                // Reopened on the next write (the file may have been
                // removed or the disk freed).
                self.file = None;
                return Err((done, error));
            }
            self.size += end as u64;
            done += in_run;
            rest = &rest[end..];
            rotated = false;
        }
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

/// The longest prefix of `lines` made of whole lines that is at most
/// `room` bytes, or the first line alone when even it is longer; with its
/// number of lines.
fn run_that_fits(lines: &[u8], room: u64) -> (usize, u64) {
    if lines.len() as u64 <= room {
        let count = lines.iter().filter(|&&b| b == b'\n').count() as u64;
        return (lines.len(), count.max(1));
    }
    let mut end = 0usize;
    let mut count = 0u64;
    for (i, _) in lines.iter().enumerate().filter(|(_, b)| **b == b'\n') {
        if (i + 1) as u64 > room && count > 0 {
            break;
        }
        end = i + 1;
        count += 1;
        if end as u64 > room {
            break;
        }
    }
    if count == 0 {
        // No newline at all (submit ends every line with one).
        return (lines.len(), 1);
    }
    (end, count)
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
        log.flush();
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
        assert!(!log.write(&record(7)), "no file to count it");
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
        if let Ok(mut sink) = log.file.as_ref().unwrap().sink.lock() {
            sink.file = None;
        }
        std::fs::remove_dir_all(dir.path()).unwrap();
        std::fs::write(dir.path(), b"a file where the directory was").unwrap();
        log.write(&record(1));
        log.write(&record(2));
        assert!(log.accepting(), "nothing written yet");
        log.flush();
        assert!(!log.accepting());
        assert_eq!(log.health().dropped, 2, "every record of the failed batch");
        std::fs::remove_file(dir.path()).unwrap();
        log.write(&record(3));
        log.flush();
        assert!(log.accepting(), "recovers once the path is writable");
        assert_eq!(log.health().written, 1);
        let lines = std::fs::read_to_string(&path).unwrap();
        assert!(lines.contains("record 0003") && !lines.contains("record 0001"));
    }

    /// The writer thread writes a batch within the flush interval, without
    /// a flush from anyone, in submission order, one whole line each.
    #[test]
    fn the_writer_thread_writes_queued_records_within_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, &AuditConfig::default(), None);
        for n in 0..100 {
            log.write(&record(n));
        }
        let start = std::time::Instant::now();
        while log.health().written < 100 {
            assert!(
                start.elapsed() < FLUSH_INTERVAL * 50,
                "not written: {:?}",
                log.health()
            );
            std::thread::yield_now();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let messages: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["message"].to_string())
            .collect();
        let expected: Vec<String> = (0..100).map(|n| format!("\"record {n:04}\"")).collect();
        assert_eq!(messages, expected);
    }

    /// Dropping the log (the daemon's shutdown) writes what is queued.
    #[test]
    fn dropping_the_log_writes_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, &AuditConfig::default(), None);
        log.write(&record(1));
        drop(log);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("record 0001")
        );
    }

    /// A line longer than max_bytes gets a file of its own; lines that fit
    /// share one; no file but an oversized line's exceeds the limit.
    #[test]
    fn runs_of_lines_fit_the_room_left() {
        assert_eq!(run_that_fits(b"ab\ncd\n", 100), (6, 2));
        assert_eq!(run_that_fits(b"ab\ncd\n", 4), (3, 1));
        assert_eq!(run_that_fits(b"abcdef\ncd\n", 4), (7, 1));
        assert_eq!(run_that_fits(b"ab\ncdefgh\n", 4), (3, 1));
    }
}
