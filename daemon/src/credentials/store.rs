//! The credential cache: one entry per `[[credential]]`, each refreshed
//! ahead of its expiry, independently of the others.
//!
//! - A value is served from the cache until its refresh time, which is
//!   `refresh_ahead` before expiry (at most half its lifetime) minus a random
//!   jitter, so that many daemons sharing an issuer do not all call at once.
//! - From the refresh time on, the refresher (`spawn_refresher`, or
//!   `refresh_due` when driven by hand) fetches a new value; requests keep
//!   getting the cached one meanwhile.
//! - A failing issuer is retried with exponential backoff (with jitter)
//!   while the cached value is served until it expires; after that requests
//!   get `CredentialError::Unavailable`.
//! - A request finding no usable value fetches inline, one fetch per entry
//!   at a time (the others wait for it), unless the entry is backing off.
//! - An upstream that refuses a value (401, 403) may ask for a fetch
//!   outside the schedule ([`CredentialSource::refresh`]): made at most once
//!   per [`FORCED_REFRESH_INTERVAL`] per credential, and not at all when
//!   another request has already replaced the refused value.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;

use super::{
    CredentialError, CredentialFuture, CredentialKind, CredentialSource,
    provider::{IssueContext, IssueError, Provider},
};
use crate::{
    clock::{self, Clock},
    secret::Secret,
};

/// How one entry is refreshed; see `settings` for the defaults and why.
#[derive(Debug, Clone, Copy)]
pub struct RefreshSettings {
    pub refresh_ahead: Duration,
    /// For values without an expiry: how often they are re-read.
    pub refresh_interval: Duration,
    /// Up to this fraction of `refresh_ahead` (or of a backoff delay) is
    /// added at random.
    pub jitter: f64,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

struct Cached {
    value: Arc<Secret>,
    expires_at: Option<Timestamp>,
    refresh_at: Timestamp,
}

/// At most one fetch outside the schedule per credential this often: an
/// agent that makes an upstream answer 403 on purpose (a model its role may
/// not use) must not turn each of its requests into a call to the issuer.
pub const FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    failures: u32,
    retry_at: Option<Timestamp>,
    last_error: Option<Arc<IssueError>>,
    /// When the last fetch outside the schedule was made.
    last_forced: Option<Timestamp>,
}

/// What a credential is, for `warrant status`, `warrant explain` and the
/// check that each upstream names a credential it can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Described {
    /// The `source` as the config spells it.
    pub source: &'static str,
    pub kind: CredentialKind,
}

impl Default for Described {
    fn default() -> Self {
        Described {
            source: "custom",
            kind: CredentialKind::Token,
        }
    }
}

struct Entry {
    name: String,
    provider: Box<dyn Provider>,
    settings: RefreshSettings,
    described: Described,
    state: Mutex<State>,
    /// Single flight: one fetch per entry at a time.
    fetching: tokio::sync::Mutex<()>,
}

struct Inner {
    entries: HashMap<String, Entry>,
    clock: Arc<dyn Clock>,
    /// Told of every provider call and whether it worked (the metrics).
    observer: std::sync::OnceLock<RefreshObserver>,
}

/// Called with a credential's name and whether its refresh worked.
pub type RefreshObserver = Arc<dyn Fn(&str, bool) + Send + Sync>;

/// What `warrant status` shows of a credential: never its value.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CredentialStatus {
    pub name: String,
    /// The `[[credential]] source` (borrowed when the daemon writes it,
    /// owned when `warrant status` reads it back).
    pub source: std::borrow::Cow<'static, str>,
    pub kind: CredentialKind,
    pub fingerprint: Option<String>,
    pub expires_at: Option<Timestamp>,
    pub refresh_at: Option<Timestamp>,
    pub failures: u32,
    pub retry_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

/// The cache in front of every provider; cheap to clone (shared).
#[derive(Clone)]
pub struct CredentialStore {
    inner: Arc<Inner>,
}

/// Whether `refresh_entry` called the provider.
enum Refresh {
    Done,
    /// Not due any more (another caller refreshed it) or backing off.
    Skipped,
}

impl CredentialStore {
    pub fn new(clock: Arc<dyn Clock>) -> CredentialStore {
        CredentialStore {
            inner: Arc::new(Inner {
                entries: HashMap::new(),
                clock,
                observer: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Sets what is told of every refresh (once; later calls are ignored).
    pub fn observe_refreshes(&self, observer: RefreshObserver) {
        let _ = self.inner.observer.set(observer);
    }

    /// Adds a credential. Only before the store is shared (clones taken).
    pub fn with(
        self,
        name: &str,
        provider: Box<dyn Provider>,
        settings: RefreshSettings,
    ) -> CredentialStore {
        self.with_described(name, provider, settings, Described::default())
    }

    /// Adds a credential with what it is (see [`Described`]).
    pub fn with_described(
        mut self,
        name: &str,
        provider: Box<dyn Provider>,
        settings: RefreshSettings,
        described: Described,
    ) -> CredentialStore {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.entries.insert(
                name.to_owned(),
                Entry {
                    name: name.to_owned(),
                    provider,
                    settings,
                    described,
                    state: Mutex::new(State::default()),
                    fetching: tokio::sync::Mutex::new(()),
                },
            );
        }
        self
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inner.entries.keys().map(String::as_str)
    }

    /// What the credential `name` is, if it is configured.
    pub fn described(&self, name: &str) -> Option<Described> {
        self.inner.entries.get(name).map(|e| e.described)
    }

    pub fn status(&self) -> Vec<CredentialStatus> {
        let mut all: Vec<CredentialStatus> = self
            .inner
            .entries
            .values()
            .map(|entry| {
                let state = entry.state.lock();
                let state = state.as_deref().ok();
                let cached = state.and_then(|s| s.cached.as_ref());
                CredentialStatus {
                    name: entry.name.clone(),
                    source: entry.described.source.into(),
                    kind: entry.described.kind,
                    fingerprint: cached.map(|c| c.value.fingerprint()),
                    expires_at: cached.and_then(|c| c.expires_at),
                    refresh_at: cached.map(|c| c.refresh_at),
                    failures: state.map_or(0, |s| s.failures),
                    retry_at: state.and_then(|s| s.retry_at),
                    last_error: state.and_then(|s| s.last_error.as_ref().map(|e| e.to_string())),
                }
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The cached value if it may be served at `now`: fresh, or due for
    /// refresh but not expired.
    fn usable(entry: &Entry, now: Timestamp) -> Option<Arc<Secret>> {
        let state = entry.state.lock().ok()?;
        let cached = state.cached.as_ref()?;
        match cached.expires_at {
            Some(expiry) if now >= expiry => None,
            _ => Some(Arc::clone(&cached.value)),
        }
    }

    fn is_due(entry: &Entry, now: Timestamp) -> bool {
        let Ok(state) = entry.state.lock() else {
            return false;
        };
        let due = state.cached.as_ref().is_none_or(|c| now >= c.refresh_at);
        due && state.retry_at.is_none_or(|at| now >= at)
    }

    async fn get(&self, name: &str) -> Result<Arc<Secret>, CredentialError> {
        let entry = self
            .inner
            .entries
            .get(name)
            .ok_or_else(|| CredentialError::NotConfigured(name.to_owned()))?;
        if let Some(value) = Self::usable(entry, self.inner.clock.now()) {
            return Ok(value);
        }
        // Nothing servable: fetch now (or wait for the fetch under way).
        self.refresh_entry(entry).await;
        Self::usable(entry, self.inner.clock.now()).ok_or_else(|| CredentialError::Unavailable {
            name: name.to_owned(),
            reason: entry
                .state
                .lock()
                .ok()
                .and_then(|s| s.last_error.clone())
                .unwrap_or_else(|| Arc::new(IssueError::NoValue)),
        })
    }

    async fn refresh_entry(&self, entry: &Entry) -> Refresh {
        let _one_at_a_time = entry.fetching.lock().await;
        // Whoever held the lock before may have refreshed already.
        if !Self::is_due(entry, self.inner.clock.now()) {
            return Refresh::Skipped;
        }
        self.issue(entry).await;
        Refresh::Done
    }

    /// Calls the provider and records what it gave; true when it issued a
    /// value. The caller holds the entry's `fetching` lock.
    async fn issue(&self, entry: &Entry) -> bool {
        let ctx = IssueContext {
            now: self.inner.clock.now(),
            others: self,
        };
        let result = entry.provider.issue(&ctx).await;
        let now = self.inner.clock.now();
        let Ok(mut state) = entry.state.lock() else {
            return false;
        };
        let result = result.and_then(|issued| match issued.expires_at {
            Some(expiry) if expiry <= now => Err(IssueError::Expired(expiry)),
            _ => Ok(issued),
        });
        if let Some(observer) = self.inner.observer.get() {
            observer(&entry.name, result.is_ok());
        }
        match result {
            Ok(issued) => {
                let refresh_at = refresh_time(now, issued.expires_at, &entry.settings);
                tracing::info!(
                    credential = %entry.name,
                    fingerprint = %issued.value.fingerprint(),
                    expires_at = ?issued.expires_at,
                    %refresh_at,
                    "credential issued"
                );
                state.cached = Some(Cached {
                    value: Arc::new(issued.value),
                    expires_at: issued.expires_at,
                    refresh_at,
                });
                state.failures = 0;
                state.retry_at = None;
                state.last_error = None;
                true
            }
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                let delay = backoff(state.failures, &entry.settings);
                state.retry_at = Some(clock::add(now, delay));
                let serving_until = state.cached.as_ref().and_then(|c| c.expires_at);
                tracing::warn!(
                    credential = %entry.name,
                    %error,
                    failures = state.failures,
                    retry_in = ?delay,
                    serving_cached = state.cached.is_some(),
                    serving_until = ?serving_until,
                    "credential issuer failed"
                );
                state.last_error = Some(Arc::new(error));
                false
            }
        }
    }

    /// A fetch outside the schedule, after an upstream refused `refused`
    /// (see [`CredentialSource::refresh`]).
    async fn force(&self, name: &str, refused: &Secret) -> Result<Arc<Secret>, CredentialError> {
        let entry = self
            .inner
            .entries
            .get(name)
            .ok_or_else(|| CredentialError::NotConfigured(name.to_owned()))?;
        let not_refreshed = |why| CredentialError::NotRefreshed {
            name: name.to_owned(),
            why,
        };
        let _one_at_a_time = entry.fetching.lock().await;
        let now = self.inner.clock.now();
        {
            let mut state = entry.state.lock().map_err(|_| not_refreshed("poisoned"))?;
            // Another request saw the same refusal and replaced the value.
            if let Some(cached) = &state.cached
                && cached.value.expose() != refused.expose()
                && cached.expires_at.is_none_or(|expiry| now < expiry)
            {
                return Ok(Arc::clone(&cached.value));
            }
            if let Some(last) = state.last_forced
                && now < clock::add(last, FORCED_REFRESH_INTERVAL)
            {
                return Err(not_refreshed(
                    "it was fetched again less than 30 s ago after a refusal",
                ));
            }
            state.last_forced = Some(now);
        }
        tracing::info!(credential = %name, fingerprint = %refused.fingerprint(), "the upstream refused the credential: fetching it again");
        if !self.issue(entry).await {
            return Err(CredentialError::Unavailable {
                name: name.to_owned(),
                reason: entry
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.last_error.clone())
                    .unwrap_or_else(|| Arc::new(IssueError::NoValue)),
            });
        }
        Self::usable(entry, self.inner.clock.now()).ok_or_else(|| not_refreshed("no usable value"))
    }

    /// Refreshes every entry that is due and not backing off; returns how
    /// many were attempted. Tests drive refresh with this and a ManualClock.
    pub async fn refresh_due(&self) -> usize {
        let now = self.inner.clock.now();
        let mut attempted = 0;
        for entry in self.inner.entries.values() {
            if Self::is_due(entry, now)
                && let Refresh::Done = self.refresh_entry(entry).await
            {
                attempted += 1;
            }
        }
        attempted
    }

    /// Fetches every credential once, e.g. at startup so that the first
    /// request does not wait; failures are logged and retried later.
    pub async fn prefetch(&self) {
        self.refresh_due().await;
    }

    /// One task per credential, each checking once a second (real time)
    /// whether its entry is due: a slow issuer delays only its own entry.
    pub fn spawn_refresher(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.inner
            .entries
            .keys()
            .map(|name| {
                let store = self.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let mut ticks = tokio::time::interval(Duration::from_secs(1));
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        ticks.tick().await;
                        if let Some(entry) = store.inner.entries.get(&name)
                            && Self::is_due(entry, store.inner.clock.now())
                        {
                            store.refresh_entry(entry).await;
                        }
                    }
                })
            })
            .collect()
    }
}

impl CredentialSource for CredentialStore {
    fn current(&self, name: &str) -> CredentialFuture<'_> {
        let name = name.to_owned();
        Box::pin(async move { self.get(&name).await })
    }

    fn refresh(&self, name: &str, refused: &Secret) -> CredentialFuture<'_> {
        let name = name.to_owned();
        let refused = refused.clone();
        Box::pin(async move { self.force(&name, &refused).await })
    }
}

fn jitter(max: Duration, fraction: f64) -> Duration {
    max.mul_f64(fraction.clamp(0.0, 1.0) * fastrand::f64())
}

/// When a value issued at `now` should be replaced.
fn refresh_time(
    now: Timestamp,
    expires_at: Option<Timestamp>,
    settings: &RefreshSettings,
) -> Timestamp {
    match expires_at {
        None => clock::add(now, settings.refresh_interval),
        Some(expiry) => {
            let lifetime = Duration::from_secs(
                u64::try_from(expiry.as_second() - now.as_second()).unwrap_or(0),
            );
            // Short-lived values are refreshed halfway, not immediately.
            let ahead = settings.refresh_ahead.min(lifetime / 2);
            let ahead = ahead + jitter(ahead, settings.jitter);
            clock::sub(expiry, ahead)
        }
    }
}

/// The wait after the `failures`-th consecutive failure.
fn backoff(failures: u32, settings: &RefreshSettings) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let base = settings
        .backoff_initial
        .saturating_mul(1u32 << exponent)
        .min(settings.backoff_max);
    base + jitter(base, settings.jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RefreshSettings {
        RefreshSettings {
            refresh_ahead: Duration::from_secs(300),
            refresh_interval: Duration::from_secs(60),
            jitter: 0.1,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_bounded_jitter() {
        let s = settings();
        for (failures, base) in [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (40, 300)] {
            let d = backoff(failures, &s);
            let base = Duration::from_secs(base);
            assert!(d >= base && d <= base.mul_f64(1.1), "{failures}: {d:?}");
        }
    }

    #[test]
    fn refresh_time_is_ahead_of_expiry_with_jitter_and_at_most_halfway() {
        let s = settings();
        let now = Timestamp::from_second(1_000_000).unwrap_or(Timestamp::UNIX_EPOCH);
        let hour = clock::add(now, Duration::from_secs(3600));
        let at = refresh_time(now, Some(hour), &s);
        assert!(at <= clock::sub(hour, Duration::from_secs(300)));
        assert!(at >= clock::sub(hour, Duration::from_secs(330)));
        // A 60 s token is refreshed after 30 s (minus jitter), not at once.
        let short = clock::add(now, Duration::from_secs(60));
        let at = refresh_time(now, Some(short), &s);
        assert!(
            at >= clock::add(now, Duration::from_secs(27))
                && at <= clock::add(now, Duration::from_secs(30))
        );
        assert_eq!(
            refresh_time(now, None, &s),
            clock::add(now, Duration::from_secs(60))
        );
    }
}
