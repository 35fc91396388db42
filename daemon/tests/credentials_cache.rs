//! The credential cache with a controllable clock and a scripted provider:
//! expiry, refresh-ahead, backoff, serve-stale, independence.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;
use warrant::{
    clock::ManualClock,
    credentials::{
        CredentialError, CredentialSource, CredentialStore,
        provider::{IssueContext, IssueError, IssueFuture, Issued, Provider},
    },
    secret::Secret,
};
use warrant_test_support::credentials::refresh_settings;

/// A value and its lifetime in seconds, or an issuer error.
type Answer = Result<(String, Option<u64>), String>;

/// Answers from a script; counts calls.
#[derive(Clone, Default)]
struct Scripted {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    calls: Arc<Mutex<usize>>,
}

impl Scripted {
    /// A value valid for `lifetime` seconds (None: no expiry).
    fn then_value(&self, value: &str, lifetime: Option<u64>) -> &Self {
        self.answers
            .lock()
            .unwrap()
            .push_back(Ok((value.to_owned(), lifetime)));
        self
    }
    fn then_error(&self, error: &str) -> &Self {
        self.answers
            .lock()
            .unwrap()
            .push_back(Err(error.to_owned()));
        self
    }
    fn calls(&self) -> usize {
        *self.calls.lock().unwrap()
    }
}

impl Provider for Scripted {
    fn issue<'a>(&'a self, ctx: &'a IssueContext<'a>) -> IssueFuture<'a> {
        *self.calls.lock().unwrap() += 1;
        let answer = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Err("script exhausted".into()));
        let now = ctx.now;
        Box::pin(async move {
            let (value, lifetime) = answer.map_err(|e| IssueError::Other(e.into()))?;
            Ok(Issued {
                value: Secret::new(value),
                expires_at: lifetime.map(|s| {
                    now.checked_add(jiff::SignedDuration::from_secs(s as i64))
                        .unwrap()
                }),
            })
        })
    }
}

fn start() -> Timestamp {
    "2026-01-14T15:00:00Z".parse().unwrap()
}

fn store_with(providers: &[(&str, &Scripted)]) -> (CredentialStore, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(start()));
    let mut store = CredentialStore::new(clock.clone());
    for (name, provider) in providers {
        store = store.with(name, Box::new((*provider).clone()), refresh_settings());
    }
    (store, clock)
}

async fn value(store: &CredentialStore, name: &str) -> Result<String, CredentialError> {
    store.current(name).await.map(|s| s.expose().to_owned())
}

#[tokio::test]
async fn cached_until_refresh_ahead_then_refreshed() {
    let p = Scripted::default();
    p.then_value("tok-1", Some(3600))
        .then_value("tok-2", Some(3600));
    let (store, clock) = store_with(&[("a", &p)]);
    assert_eq!(value(&store, "a").await.unwrap(), "tok-1");
    // 5m ahead plus at most 10% jitter: not due before 54m30s.
    clock.advance(Duration::from_secs(54 * 60 + 29));
    assert_eq!(store.refresh_due().await, 0);
    assert_eq!(value(&store, "a").await.unwrap(), "tok-1");
    assert_eq!(p.calls(), 1);
    // Due at the latest 5m before expiry.
    clock.advance(Duration::from_secs(31));
    assert_eq!(store.refresh_due().await, 1);
    assert_eq!(value(&store, "a").await.unwrap(), "tok-2");
    assert_eq!(p.calls(), 2);
}

#[tokio::test]
async fn failing_issuer_serves_stale_with_backoff_until_expiry() {
    let p = Scripted::default();
    p.then_value("tok-1", Some(3600))
        .then_error("issuer down")
        .then_error("issuer down")
        .then_error("issuer down");
    let (store, clock) = store_with(&[("a", &p)]);
    value(&store, "a").await.unwrap();
    clock.advance(Duration::from_secs(55 * 60));
    assert_eq!(store.refresh_due().await, 1); // fails
    assert_eq!(value(&store, "a").await.unwrap(), "tok-1");
    // Backoff 10-11s: nothing before, a retry after.
    clock.advance(Duration::from_secs(9));
    assert_eq!(store.refresh_due().await, 0);
    clock.advance(Duration::from_secs(3));
    assert_eq!(store.refresh_due().await, 1); // fails again, backoff 20-22s
    clock.advance(Duration::from_secs(19));
    assert_eq!(store.refresh_due().await, 0);
    assert_eq!(p.calls(), 3);
    assert_eq!(store.status()[0].failures, 2);
    assert_eq!(store.status()[0].last_error.as_deref(), Some("issuer down"));
    // Still served up to its expiry...
    clock.set("2026-01-14T15:59:59Z".parse().unwrap());
    assert_eq!(value(&store, "a").await.unwrap(), "tok-1");
    // ...and not after: the inline retry fails too.
    clock.set("2026-01-14T16:00:00Z".parse().unwrap());
    match store.current("a").await {
        Err(CredentialError::Unavailable { name, reason }) => {
            assert_eq!(name, "a");
            assert_eq!(reason.to_string(), "issuer down");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.calls(), 4);
    // Backing off: a request does not hammer the issuer.
    assert!(store.current("a").await.is_err());
    assert_eq!(p.calls(), 4);
}

#[tokio::test]
async fn backoff_is_capped() {
    let p = Scripted::default();
    for _ in 0..6 {
        p.then_error("down");
    }
    let (store, clock) = store_with(&[("a", &p)]);
    for _ in 0..6 {
        let _ = store.current("a").await;
        clock.advance(Duration::from_secs(67)); // > 60s max + 10% jitter
    }
    assert_eq!(p.calls(), 6);
    let status = &store.status()[0];
    let wait = status.retry_at.unwrap().as_second() - (start().as_second() + 5 * 67);
    assert!((60..=66).contains(&wait), "{wait}");
}

#[tokio::test]
async fn credentials_refresh_independently() {
    let a = Scripted::default();
    let b = Scripted::default();
    a.then_value("a-1", Some(600)).then_error("a issuer down");
    b.then_value("b-1", Some(3600))
        .then_value("b-2", Some(3600));
    let (store, clock) = store_with(&[("a", &a), ("b", &b)]);
    value(&store, "a").await.unwrap();
    value(&store, "b").await.unwrap();
    // a (600s, refreshed at ≤ half life) is due, b is not.
    clock.advance(Duration::from_secs(300));
    assert_eq!(store.refresh_due().await, 1);
    assert_eq!((a.calls(), b.calls()), (2, 1));
    assert_eq!(value(&store, "b").await.unwrap(), "b-1");
    // a's failure does not affect b's refresh.
    clock.advance(Duration::from_secs(3600 - 300 - 300));
    store.refresh_due().await;
    assert_eq!(b.calls(), 2);
    assert_eq!(value(&store, "b").await.unwrap(), "b-2");
    assert!(value(&store, "a").await.is_err());
}

#[tokio::test]
async fn values_without_expiry_are_reread_and_kept_when_rereading_fails() {
    let p = Scripted::default();
    p.then_value("static-1", None)
        .then_error("file gone")
        .then_value("static-2", None);
    let (store, clock) = store_with(&[("a", &p)]);
    value(&store, "a").await.unwrap();
    clock.advance(Duration::from_secs(600));
    assert_eq!(store.refresh_due().await, 1);
    assert_eq!(value(&store, "a").await.unwrap(), "static-1");
    clock.advance(Duration::from_secs(11));
    assert_eq!(store.refresh_due().await, 1);
    assert_eq!(value(&store, "a").await.unwrap(), "static-2");
}

#[tokio::test]
async fn concurrent_requests_share_one_fetch() {
    let p = Scripted::default();
    p.then_value("tok-1", Some(3600));
    let (store, _) = store_with(&[("a", &p)]);
    let (x, y, z) = tokio::join!(value(&store, "a"), value(&store, "a"), value(&store, "a"));
    assert_eq!(
        (x.unwrap(), y.unwrap(), z.unwrap()),
        ("tok-1".into(), "tok-1".into(), "tok-1".into())
    );
    assert_eq!(p.calls(), 1);
}
