//! Fleet-wide budgets against a real redis-server that the test starts on
//! 127.0.0.1 (a free port, no persistence) and stops. Without redis-server
//! on PATH the tests are skipped, visibly, or fail where prerequisites are
//! required (CI; see `warrant_test_support::prereq`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use http::HeaderMap;
use warrant::{
    clock::ManualClock,
    config::{RedisUnreachable, UsageConfig},
    policy::RuleLimits,
    provider::{RequestHead, Scheme, api},
    usage::{AdmitRequest, BudgetRefusal, Budgets, LocalLedger, PriceTable, redis::RedisLedger},
};
use warrant_test_support::redis::RedisServer;

fn budgets(url: &str, on_down: RedisUnreachable, clock: Arc<ManualClock>) -> Budgets {
    let settings = UsageConfig {
        redis_unreachable: on_down,
        redis_timeout_ms: 2000,
        ..UsageConfig::default()
    };
    Budgets::new(
        settings,
        PriceTable::new(&[], true).unwrap(),
        LocalLedger::in_memory(),
        false,
        Some(RedisLedger::new(url, Duration::from_millis(2000)).unwrap()),
        clock,
    )
}

const BODY: &[u8] = br#"{"model":"gpt-4o","max_tokens":96,"messages":[]}"#;
/// 48 bytes -> 12 input tokens + 96 output.
const WORST: u64 = 108;

async fn admit(
    budgets: &Budgets,
    limit: u64,
) -> Result<warrant::usage::UsageObserver, BudgetRefusal> {
    assert_eq!(BODY.len(), 48);
    let uri: http::Uri = "/v1/chat/completions".parse().unwrap();
    let headers = HeaderMap::new();
    let head = RequestHead {
        method: &http::Method::POST,
        uri: &uri,
        headers: &headers,
    };
    let request = api(Scheme::OpenAi).parse(&head, BODY).unwrap();
    budgets
        .admit(AdmitRequest {
            workload: "fleet-agent",
            upstream: "api.openai.com",
            scheme: Scheme::OpenAi,
            request: &request,
            limits: RuleLimits {
                tokens_per_hour: Some(limit),
                ..RuleLimits::default()
            },
        })
        .await
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        jiff::Timestamp::from_second(1_800_000_000).unwrap(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_sharing_one_redis_enforce_one_budget() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let clock = clock();
    let a = budgets(&redis.url, RedisUnreachable::FailClosed, clock.clone());
    let b = budgets(&redis.url, RedisUnreachable::FailClosed, clock.clone());
    let limit = 1000; // 9 worst cases of 108
    let mut tasks = Vec::new();
    for i in 0..20 {
        let host = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { admit(&host, limit).await }));
    }
    let mut held = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(observer) => held.push(observer),
            Err(BudgetRefusal::OverBudget { over, .. }) => {
                assert!(over.retry_after.is_some());
                refused += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(held.len() as u64, limit / WORST);
    assert_eq!(refused, 20 - held.len());
    assert_eq!(a.status().ledger, "redis");
    assert_eq!(a.status().redis_reachable, Some(true));

    // Dropping an observer that saw no response settles it as reserved; the
    // window moves on the clock both hosts share.
    drop(held);
    assert!(admit(&b, limit).await.is_err());
    clock.advance(Duration::from_secs(3661));
    assert!(admit(&a, limit).await.is_ok());
}

#[tokio::test]
async fn unreachable_redis_fails_closed_by_default_or_falls_back_to_local_budgets() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url.clone();
    drop(redis);
    let closed = budgets(&url, RedisUnreachable::FailClosed, clock());
    match admit(&closed, 1000).await {
        Err(refusal @ BudgetRefusal::LedgerUnavailable { .. }) => {
            assert_eq!(refusal.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        }
        other => panic!("expected fail closed, got {:?}", other.map(|_| ())),
    }
    assert_eq!(closed.status().redis_reachable, Some(false));
    assert!(!closed.status().local_fallback_active);

    let local = budgets(&url, RedisUnreachable::Local, clock());
    let mut held = Vec::new();
    for _ in 0..9 {
        held.push(admit(&local, 1000).await.expect("local budget"));
    }
    // The same limit, enforced per host.
    assert!(matches!(
        admit(&local, 1000).await,
        Err(BudgetRefusal::OverBudget { .. })
    ));
    let status = local.status();
    assert!(status.local_fallback_active);
    assert_eq!(status.windows[0].1[1], 9 * WORST);
}
