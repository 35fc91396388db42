//! The embedded ledger: budget windows in memory, written through to SQLite
//! in the state directory so that a restart or a crash forgets nothing.
//!
//! A reservation adds the request's worst case to the current buckets and
//! records the request as in flight, in one transaction; settling adds the
//! difference between actual and reserved to the same buckets and removes
//! the in-flight row, in another. After a crash the buckets therefore still
//! hold every unsettled reservation in full: those requests are charged as
//! reserved, and the rows left in `inflight` say how many there were.
//!
//! SQLite runs in WAL mode with `synchronous = NORMAL`: a commit is a write
//! to the log without fsync, so a killed daemon loses nothing (the kernel
//! has the pages) and only a power loss may lose the last commits.
//! Memory is the authority for admission; a failed write is logged and
//! counted (`write_errors`) and admission goes on, so a full disk degrades
//! durability, not availability.

use std::{
    collections::HashMap,
    os::unix::fs::OpenOptionsExt,
    path::Path,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rusqlite::{Connection, params};

use super::window::{self, Amounts, Buckets, SERIES, Series};

/// Over a limit: which one, and when a retry may fit (None: never, the
/// request alone is over it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    pub series: Series,
    pub limit: u64,
    pub used: u64,
    pub retry_after: Option<Duration>,
}

/// Where a reservation was put, to settle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub id: i64,
    pub buckets: [i64; 3],
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
}

struct State {
    db: Option<Connection>,
    windows: HashMap<String, [Buckets; 3]>,
    /// Per key, what the reservations not settled yet hold (already in the
    /// buckets; kept apart for `warrant status`).
    in_flight: HashMap<String, Amounts>,
    next_memory_id: i64,
    reservations: u64,
}

/// One key's windows as they are now, for status: the buckets (to compute
/// when room frees) and the reservations still in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyWindows {
    pub buckets: [Buckets; 3],
    pub in_flight: Amounts,
}

pub struct LocalLedger {
    state: Mutex<State>,
    write_errors: AtomicU64,
    /// Requests that were in flight when the previous daemon stopped.
    recovered_in_flight: u64,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS buckets (
    key TEXT NOT NULL, series INTEGER NOT NULL, bucket INTEGER NOT NULL,
    amount INTEGER NOT NULL, PRIMARY KEY (key, series, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inflight (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL, since INTEGER NOT NULL);
";

/// Reservations between sweeps of expired buckets from the file.
const PRUNE_EVERY: u64 = 4096;

impl LocalLedger {
    /// Memory only: for the Redis fallback and for tests.
    pub fn in_memory() -> LocalLedger {
        LocalLedger {
            state: Mutex::new(State {
                db: None,
                windows: HashMap::new(),
                in_flight: HashMap::new(),
                next_memory_id: 1,
                reservations: 0,
            }),
            write_errors: AtomicU64::new(0),
            recovered_in_flight: 0,
        }
    }

    /// Opens (or creates) the ledger file and loads the windows still live
    /// at `now_secs`.
    pub fn open(path: &Path, now_secs: i64) -> Result<LocalLedger, LedgerError> {
        let err = |source| LedgerError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        // Root-only, like the rest of the state directory's private files;
        // SQLite gives its -wal and -shm files the same mode.
        if let Err(error) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
        {
            tracing::warn!(path = %path.display(), %error, "cannot pre-create the usage ledger with mode 0600");
        }
        let db = Connection::open(path).map_err(err)?;
        db.execute_batch(SCHEMA).map_err(err)?;
        let recovered: i64 = db
            .query_row("SELECT count(*) FROM inflight", [], |r| r.get(0))
            .map_err(err)?;
        // Their reservations stay in the buckets: charged as reserved.
        db.execute("DELETE FROM inflight", []).map_err(err)?;
        for series in SERIES {
            db.execute(
                "DELETE FROM buckets WHERE series = ?1 AND bucket < ?2",
                params![
                    series.index() as i64,
                    series.bucket_at(now_secs) - window::BUCKETS
                ],
            )
            .map_err(err)?;
        }
        let mut windows: HashMap<String, [Buckets; 3]> = HashMap::new();
        {
            let mut rows = db
                .prepare("SELECT key, series, bucket, amount FROM buckets")
                .map_err(err)?;
            let mut rows = rows.query([]).map_err(err)?;
            while let Some(row) = rows.next().map_err(err)? {
                let key: String = row.get(0).map_err(err)?;
                let series: i64 = row.get(1).map_err(err)?;
                let bucket: i64 = row.get(2).map_err(err)?;
                let amount: i64 = row.get(3).map_err(err)?;
                if let Some(s) = usize::try_from(series).ok().filter(|s| *s < 3) {
                    windows.entry(key).or_default()[s].insert(bucket, amount);
                }
            }
        }
        if recovered > 0 {
            tracing::warn!(
                requests = recovered,
                "requests were in flight when warrant last stopped; they stay charged as reserved"
            );
        }
        Ok(LocalLedger {
            state: Mutex::new(State {
                db: Some(db),
                windows,
                in_flight: HashMap::new(),
                next_memory_id: 1,
                reservations: 0,
            }),
            write_errors: AtomicU64::new(0),
            recovered_in_flight: recovered.max(0) as u64,
        })
    }

    pub fn recovered_in_flight(&self) -> u64 {
        self.recovered_in_flight
    }

    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }

    /// Checks `want` against every limit and, if all fit, adds it: one
    /// atomic step, so concurrent admissions cannot both take the last room.
    pub fn reserve(
        &self,
        key: &str,
        now_secs: i64,
        want: Amounts,
        limits: [Option<u64>; 3],
    ) -> Result<Placed, OverLimit> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *guard;
        let windows = state.windows.entry(key.to_owned()).or_default();
        let buckets = SERIES.map(|s| s.bucket_at(now_secs));
        for series in SERIES {
            let i = series.index();
            window::prune(&mut windows[i], buckets[i]);
            if let Some(limit) = limits[i]
                && let Err(retry_after) =
                    window::check(series, &windows[i], now_secs, want[i], limit)
            {
                return Err(OverLimit {
                    series,
                    limit,
                    used: window::used(&windows[i], buckets[i]),
                    retry_after,
                });
            }
        }
        for i in 0..3 {
            *windows[i].entry(buckets[i]).or_default() += want[i] as i64;
        }
        let in_flight = state.in_flight.entry(key.to_owned()).or_default();
        for i in 0..3 {
            in_flight[i] = in_flight[i].saturating_add(want[i]);
        }
        state.reservations += 1;
        let id = match &mut state.db {
            Some(db) => match write_reserve(db, key, now_secs, buckets, want) {
                Ok(id) => id,
                Err(error) => {
                    self.write_failed(&error);
                    0
                }
            },
            None => {
                state.next_memory_id += 1;
                state.next_memory_id
            }
        };
        if state.reservations.is_multiple_of(PRUNE_EVERY)
            && let Some(db) = &state.db
            && let Err(error) = prune_file(db, now_secs)
        {
            self.write_failed(&error);
        }
        Ok(Placed { id, buckets })
    }

    /// Replaces a reservation by the actual amounts.
    pub fn settle(&self, key: &str, placed: Placed, reserved: Amounts, actual: Amounts) {
        let delta: [i64; 3] = std::array::from_fn(|i| actual[i] as i64 - reserved[i] as i64);
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let state = &mut *guard;
        if let Some(windows) = state.windows.get_mut(key) {
            for i in 0..3 {
                // A bucket already pruned is out of every window.
                if let Some(v) = windows[i].get_mut(&placed.buckets[i]) {
                    *v += delta[i];
                }
            }
        }
        if let Some(in_flight) = state.in_flight.get_mut(key) {
            for i in 0..3 {
                in_flight[i] = in_flight[i].saturating_sub(reserved[i]);
            }
            if *in_flight == [0; 3] {
                state.in_flight.remove(key);
            }
        }
        if let Some(db) = &mut state.db
            && let Err(error) = write_settle(db, key, placed, delta)
        {
            self.write_failed(&error);
        }
    }

    /// The amounts used in each window now, for status.
    pub fn used(&self, key: &str, now_secs: i64) -> Amounts {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match guard.windows.get(key) {
            Some(w) => SERIES.map(|s| window::used(&w[s.index()], s.bucket_at(now_secs))),
            None => [0; 3],
        }
    }

    /// `key`'s buckets live at `now_secs` and its reservations in flight
    /// (None: nothing recorded for it).
    pub fn key_windows(&self, key: &str, now_secs: i64) -> Option<KeyWindows> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let windows = guard.windows.get(key)?;
        let buckets = SERIES.map(|s| {
            let now = s.bucket_at(now_secs);
            windows[s.index()]
                .range(now - window::BUCKETS..=now)
                .map(|(b, v)| (*b, *v))
                .collect()
        });
        Some(KeyWindows {
            buckets,
            in_flight: guard.in_flight.get(key).copied().unwrap_or_default(),
        })
    }

    /// Every key with something in a window.
    pub fn keys(&self) -> Vec<String> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<String> = guard.windows.keys().cloned().collect();
        keys.sort();
        keys
    }

    fn write_failed(&self, error: &rusqlite::Error) {
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, "usage ledger write failed; budgets are enforced from memory but will not survive a restart");
    }
}

fn write_reserve(
    db: &mut Connection,
    key: &str,
    now_secs: i64,
    buckets: [i64; 3],
    want: Amounts,
) -> Result<i64, rusqlite::Error> {
    let tx = db.transaction()?;
    {
        let mut add = tx.prepare_cached(
            "INSERT INTO buckets (key, series, bucket, amount) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key, series, bucket) DO UPDATE SET amount = amount + excluded.amount",
        )?;
        for i in 0..3 {
            add.execute(params![key, i as i64, buckets[i], want[i] as i64])?;
        }
        tx.prepare_cached("INSERT INTO inflight (key, since) VALUES (?1, ?2)")?
            .execute(params![key, now_secs])?;
    }
    let id = tx.last_insert_rowid();
    tx.commit()?;
    Ok(id)
}

fn write_settle(
    db: &mut Connection,
    key: &str,
    placed: Placed,
    delta: [i64; 3],
) -> Result<(), rusqlite::Error> {
    let tx = db.transaction()?;
    {
        let mut add = tx.prepare_cached(
            "UPDATE buckets SET amount = amount + ?4 WHERE key = ?1 AND series = ?2 AND bucket = ?3",
        )?;
        for (i, (delta, bucket)) in delta.iter().zip(placed.buckets).enumerate() {
            if *delta != 0 {
                add.execute(params![key, i as i64, bucket, delta])?;
            }
        }
        tx.prepare_cached("DELETE FROM inflight WHERE id = ?1")?
            .execute(params![placed.id])?;
    }
    tx.commit()
}

fn prune_file(db: &Connection, now_secs: i64) -> Result<(), rusqlite::Error> {
    for series in SERIES {
        db.prepare_cached("DELETE FROM buckets WHERE series = ?1 AND bucket < ?2")?
            .execute(params![
                series.index() as i64,
                series.bucket_at(now_secs) - window::BUCKETS
            ])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const T: i64 = 1_800_000_000;
    const LIMITS: [Option<u64>; 3] = [Some(100), Some(1000), None];

    #[test]
    fn reservation_is_refused_when_it_would_pass_a_limit_and_settling_frees_room() {
        let ledger = LocalLedger::in_memory();
        let placed = ledger.reserve("w", T, [1, 900, 5], LIMITS).unwrap();
        let over = ledger.reserve("w", T, [1, 200, 5], LIMITS).unwrap_err();
        assert_eq!(over.series, Series::TokensPerHour);
        assert_eq!((over.limit, over.used), (1000, 900));
        assert!(over.retry_after.is_some());
        ledger.settle("w", placed, [1, 900, 5], [1, 150, 2]);
        assert_eq!(ledger.used("w", T), [1, 150, 2]);
        let held = ledger.reserve("w", T, [1, 200, 5], LIMITS).unwrap();
        let windows = ledger.key_windows("w", T).unwrap();
        assert_eq!(windows.in_flight, [1, 200, 5], "only the unsettled one");
        ledger.settle("w", held, [1, 200, 5], [1, 200, 5]);
        assert_eq!(ledger.key_windows("w", T).unwrap().in_flight, [0; 3]);
        // Other keys have their own windows.
        ledger.reserve("other", T, [1, 1000, 0], LIMITS).unwrap();
    }

    #[test]
    fn a_crash_before_settling_leaves_the_reservation_charged_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.sqlite");
        {
            let ledger = LocalLedger::open(&path, T).unwrap();
            let done = ledger.reserve("w", T, [1, 300, 10], LIMITS).unwrap();
            ledger.settle("w", done, [1, 300, 10], [1, 100, 4]);
            // In flight when the daemon dies: never settled.
            ledger.reserve("w", T, [1, 500, 20], LIMITS).unwrap();
            // Dropped without any shutdown step, like kill -9.
        }
        let ledger = LocalLedger::open(&path, T + 5).unwrap();
        assert_eq!(ledger.recovered_in_flight(), 1);
        assert_eq!(ledger.used("w", T + 5), [2, 600, 24]);
        let over = ledger.reserve("w", T + 5, [1, 401, 0], LIMITS).unwrap_err();
        assert_eq!(over.series, Series::TokensPerHour);
        // The window still slides after a restart.
        let later = T + 3700;
        let ledger = LocalLedger::open(&path, later).unwrap();
        assert_eq!(ledger.recovered_in_flight(), 0);
        assert_eq!(ledger.used("w", later)[1], 0);
    }
}
