//! Metering and budgets through the real in-process injector: a mock
//! provider on loopback streams responses with usage; the gate admits with
//! `Budgets`. Windows move on a manual clock; waits are on usage records
//! (a sink), never on sleeps. Loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc, watch},
};
use warrant::{
    config::UsageConfig,
    credentials::ManualClock,
    origin::Origin,
    policy::RuleLimits,
    provider::{RequestHead, Scheme, api},
    proxy::{GateFuture, GateRequest, Identity, Refusal, RequestGate, Verdict},
    response::Target,
    usage::{
        Admission, AdmitRequest, Budgets, LocalLedger, Outcome, PriceTable, UsageRecord, UsageSink,
        redis::RedisLedger,
    },
};
use warrant_test_support::{
    injector::*, logs::Logs, pki::*, redis::RedisServer, upstream::ChannelBody,
};

/// Upper bound for anything the tests wait on, so a regression fails
/// instead of hanging. Nothing waits for it to pass.
const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- provider

/// A provider whose streams pause after their first event until released.
struct Provider {
    addr: SocketAddr,
    release: watch::Sender<bool>,
    started: Arc<AtomicUsize>,
    started_changed: Arc<Notify>,
}

type MockBody = BoxBody<Bytes, Infallible>;

const OPENAI_FIRST: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n";
const OPENAI_REST: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\ndata: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":50,\"total_tokens\":60}}\n\ndata: [DONE]\n\n";
const ANTHROPIC_JSON: &str = "{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-20250514\",\"content\":[{\"type\":\"text\",\"text\":\"Hi\"}],\"stop_reason\":\"end_turn\",\"usage\":{\"input_tokens\":10,\"output_tokens\":50}}";

impl Provider {
    async fn start(pki: &TestPki) -> Provider {
        let acceptor = pki.acceptor(&[b"h2", b"http/1.1"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (release, released) = watch::channel(false);
        let started = Arc::new(AtomicUsize::new(0));
        let started_changed = Arc::new(Notify::new());
        let (s, n) = (started.clone(), started_changed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, released, s, n) =
                    (acceptor.clone(), released.clone(), s.clone(), n.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (released, s, n) = (released.clone(), s.clone(), n.clone());
                        async move { Ok::<_, Infallible>(respond(req, released, s, n).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Provider {
            addr,
            release,
            started,
            started_changed,
        }
    }
}

async fn respond(
    req: Request<Incoming>,
    mut released: watch::Receiver<bool>,
    started: Arc<AtomicUsize>,
    started_changed: Arc<Notify>,
) -> Response<MockBody> {
    let path = req.uri().path().to_owned();
    let _ = req.into_body().collect().await;
    if path == "/v1/messages" {
        return Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(ANTHROPIC_JSON.as_bytes())).boxed())
            .unwrap();
    }
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from_static(OPENAI_FIRST.as_bytes())).await;
        started.fetch_add(1, Ordering::SeqCst);
        started_changed.notify_waiters();
        let _ = released.wait_for(|r| *r).await;
        let _ = tx.send(Bytes::from_static(OPENAI_REST.as_bytes())).await;
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(ChannelBody(rx).boxed())
        .unwrap()
}

// ---------------------------------------------------------------- gate

/// Admits every request of workload "agent" against `limits`.
struct BudgetOnly {
    budgets: Budgets,
    limits: RuleLimits,
}

impl RequestGate for BudgetOnly {
    fn body_prefix_len(&self) -> usize {
        64 * 1024
    }

    fn authorize<'a>(
        &'a self,
        _: &'a Identity,
        r: GateRequest<'a>,
    ) -> GateFuture<'a, Result<Verdict, Refusal>> {
        Box::pin(async move {
            let admitted = self
                .budgets
                .admit(AdmitRequest {
                    workload: "agent",
                    upstream: r.upstream,
                    scheme: r.scheme,
                    request: r.request,
                    limits: self.limits,
                })
                .await;
            match admitted {
                Ok(observer) => Ok(Verdict::Admit(Admission::new(Box::new(observer)))),
                Err(refusal) => Err(match refusal.retry_after() {
                    Some(wait) => Refusal::throttled(refusal.message(), wait),
                    None => Refusal::policy(refusal.status(), refusal.message()),
                }),
            }
        })
    }
}

/// Identifies every caller as workload "agent", counts the requests it is
/// asked to authorize, and admits them like [`BudgetOnly`].
struct CountingGate {
    inner: BudgetOnly,
    authorized: AtomicUsize,
}

impl RequestGate for CountingGate {
    fn body_prefix_len(&self) -> usize {
        self.inner.body_prefix_len()
    }

    fn identify<'a>(&'a self, origin: &'a Origin) -> GateFuture<'a, Result<Identity, Refusal>> {
        Box::pin(async move {
            Ok(Identity {
                workload: Some("agent".to_owned()),
                ..Identity::unattested(origin)
            })
        })
    }

    fn authorize<'a>(
        &'a self,
        identity: &'a Identity,
        request: GateRequest<'a>,
    ) -> GateFuture<'a, Result<Verdict, Refusal>> {
        self.authorized.fetch_add(1, Ordering::SeqCst);
        self.inner.authorize(identity, request)
    }
}

struct Records(mpsc::UnboundedSender<UsageRecord>);

impl UsageSink for Records {
    fn record(&self, record: &UsageRecord) {
        let _ = self.0.send(record.clone());
    }
}

fn budgets(
    local: LocalLedger,
    clock: Arc<ManualClock>,
) -> (Budgets, mpsc::UnboundedReceiver<UsageRecord>) {
    budgets_in(local, false, None, clock)
}

fn budgets_in(
    local: LocalLedger,
    durable: bool,
    redis: Option<RedisLedger>,
    clock: Arc<ManualClock>,
) -> (Budgets, mpsc::UnboundedReceiver<UsageRecord>) {
    let budgets = Budgets::new(
        UsageConfig::default(),
        PriceTable::new(&[], true).unwrap(),
        local,
        durable,
        redis,
        clock,
    );
    let (tx, rx) = mpsc::unbounded_channel();
    budgets.add_sink(Arc::new(Records(tx)));
    (budgets, rx)
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        jiff::Timestamp::from_second(1_800_000_000).unwrap(),
    ))
}

/// 132 bytes: reserved as 33 input tokens + 100 output = 133.
const CHAT: &str = r#"{"model":"gpt-4o","max_tokens":100,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#;
const WORST: u64 = 133;

fn chat() -> Request<Full<Bytes>> {
    assert_eq!(CHAT.len(), 132);
    Request::builder()
        .method(Method::POST)
        .uri(format!("https://{OPENAI}/v1/chat/completions"))
        .header("host", OPENAI)
        .header("content-type", "application/json")
        .header("authorization", "Bearer placeholder")
        .body(Full::new(Bytes::from_static(CHAT.as_bytes())))
        .unwrap()
}

async fn next_record(rx: &mut mpsc::UnboundedReceiver<UsageRecord>) -> UsageRecord {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("a usage record")
        .unwrap()
}

fn tokens(limit: u64) -> RuleLimits {
    RuleLimits {
        tokens_per_hour: Some(limit),
        ..RuleLimits::default()
    }
}

// ---------------------------------------------------------------- tests

/// Where a concurrency test keeps its budgets.
enum Ledger {
    Memory,
    /// `<dir>/usage.sqlite`, as the daemon's state dir holds it.
    Sqlite(tempfile::TempDir),
    /// A real redis-server (the embedded ledger is the unused fallback).
    Redis(RedisServer),
}

impl Ledger {
    fn budgets(&self, clock: Arc<ManualClock>) -> (Budgets, mpsc::UnboundedReceiver<UsageRecord>) {
        let now = warrant::clock::Clock::now(clock.as_ref()).as_second();
        let (local, durable, redis) = match self {
            Ledger::Memory => (LocalLedger::in_memory(), false, None),
            Ledger::Sqlite(dir) => (
                LocalLedger::open(&dir.path().join("usage.sqlite"), now).unwrap(),
                true,
                None,
            ),
            Ledger::Redis(server) => (
                LocalLedger::in_memory(),
                false,
                Some(RedisLedger::new(&server.url, Duration::from_secs(2)).unwrap()),
            ),
        };
        budgets_in(local, durable, redis, clock)
    }

    /// Tokens reserved or used in the last hour, where the test can read
    /// them (the embedded ledgers).
    fn tokens_used(&self, budgets: &Budgets) -> Option<u64> {
        match self {
            Ledger::Redis(_) => None,
            _ => Some(budgets.status().windows[0].1[1]),
        }
    }
}

#[test]
fn concurrent_streams_never_overshoot_the_token_budget_in_memory() {
    concurrent_streams_never_overshoot(Ledger::Memory);
}

#[test]
fn concurrent_streams_never_overshoot_the_token_budget_in_sqlite() {
    concurrent_streams_never_overshoot(Ledger::Sqlite(tempfile::tempdir().unwrap()));
}

#[test]
fn concurrent_streams_never_overshoot_the_token_budget_in_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    concurrent_streams_never_overshoot(Ledger::Redis(server));
}

/// N concurrent streams against a budget that fits 7 worst cases: exactly 7
/// are admitted and held open by the provider, the rest refused at once;
/// settling frees the room the responses did not use. An overshoot fails
/// with the counts (never hangs: everything waits under `DEADLINE`).
fn concurrent_streams_never_overshoot(ledger: Ledger) {
    let logs = Logs::capture();
    logs.runtime(2).block_on(async {
        let pki = TestPki::new();
        let provider = Provider::start(&pki).await;
        let (budgets, mut records) = ledger.budgets(clock());
        let limit = 1000;
        let gate = Arc::new(BudgetOnly {
            budgets: budgets.clone(),
            limits: tokens(limit),
        });
        let harness = Harness::start_with(&pki, "", Some(gate)).await;

        // N concurrent streams: each is either admitted (the provider starts
        // it and holds it open) or refused (answered at once).
        let n = 12;
        let mut tasks = Vec::new();
        for _ in 0..n {
            let mut agent = harness.h1(provider.addr, OPENAI).await;
            tasks.push(tokio::spawn(async move {
                let response = agent.send(chat()).await;
                let status = response.status();
                let retry = response.headers().get("retry-after").cloned();
                let body = body_text(response).await;
                (status, retry, body)
            }));
        }
        let admitted = (limit / WORST) as usize; // 7
        let counts = || {
            (
                provider.started.load(Ordering::SeqCst),
                tasks.iter().filter(|t| t.is_finished()).count(),
            )
        };
        let all_decided = async {
            loop {
                let wake = provider.started_changed.notified();
                let (started, answered) = counts();
                if started + answered >= n {
                    return;
                }
                // A refusal is answered without telling the provider: poll.
                let _ = tokio::time::timeout(Duration::from_millis(5), wake).await;
            }
        };
        if tokio::time::timeout(DEADLINE, all_decided).await.is_err() {
            let (started, answered) = counts();
            panic!("of {n} requests, {started} streams started and {answered} were answered");
        }
        let (started, answered) = counts();
        assert_eq!(
            (started, answered),
            (admitted, n - admitted),
            "admitted while the budget was reserved (streams started, requests answered at once)"
        );
        let (mut refused, mut pending) = (Vec::new(), Vec::new());
        for task in tasks {
            if task.is_finished() {
                refused.push(task.await.unwrap());
            } else {
                pending.push(task);
            }
        }
        for (status, retry, body) in &refused {
            assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
            assert!(retry.is_some());
            assert!(body.contains("tokens_per_hour"), "{body}");
        }
        if let Some(reserved) = ledger.tokens_used(&budgets) {
            assert_eq!(reserved, admitted as u64 * WORST);
        }

        provider.release.send(true).unwrap();
        for task in pending {
            let (status, _, body) = tokio::time::timeout(DEADLINE, task)
                .await
                .expect("an admitted stream ends once released")
                .unwrap();
            assert_eq!(status, StatusCode::OK);
            assert!(body.contains("[DONE]"));
        }
        for _ in 0..admitted {
            let record = next_record(&mut records).await;
            assert_eq!(record.outcome, Outcome::Counted);
            assert_eq!(record.usage.total(), 60);
            assert!(!record.cut_off);
            // gpt-4o at 2.50 / 10.00 per million: 10 * 2.5 + 50 * 10 = 525 micro-USD.
            assert_eq!(record.cost_micro_usd, 525);
        }
        // Settled to what was used: 7 * 60 = 420; 580 left fits 4 more worst
        // cases, and not a fifth.
        if let Some(used) = ledger.tokens_used(&budgets) {
            assert_eq!(used, admitted as u64 * 60);
        }
        let uri: http::Uri = "/v1/chat/completions".parse().unwrap();
        let headers = http::HeaderMap::new();
        let head = RequestHead {
            method: &http::Method::POST,
            uri: &uri,
            headers: &headers,
        };
        let chat = api(Scheme::OpenAi).parse(&head, CHAT.as_bytes()).unwrap();
        let admit = || {
            budgets.admit(AdmitRequest {
                workload: "agent",
                upstream: OPENAI,
                scheme: Scheme::OpenAi,
                request: &chat,
                limits: tokens(limit),
            })
        };
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(admit().await.expect("room freed by settling"));
        }
        assert!(admit().await.is_err());
        logs.assert_none_of(&SECRETS);
    });
}

#[tokio::test]
async fn quarantined_requests_are_never_evaluated_reserved_or_charged() {
    let pki = TestPki::new();
    let provider = Provider::start(&pki).await;
    let (budgets, mut records) = budgets(LocalLedger::in_memory(), clock());
    let gate = Arc::new(CountingGate {
        inner: BudgetOnly {
            budgets: budgets.clone(),
            limits: RuleLimits {
                requests_per_minute: Some(100),
                tokens_per_hour: Some(1_000_000),
                ..RuleLimits::default()
            },
        },
        authorized: AtomicUsize::new(0),
    });
    let harness = Harness::start_with(&pki, "", Some(gate.clone())).await;
    let agent_workload = Target::Workload("agent".to_owned());
    harness
        .responder
        .quarantine(agent_workload.clone(), "test", "operator", None);
    let mut agent = harness.h1(provider.addr, ANTHROPIC).await;
    for _ in 0..5 {
        let refused = agent.send(anthropic_messages()).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        let body = body_text(refused).await;
        assert!(body.contains("quarantined"), "{body}");
    }
    // Refused right after identification: policy and budgets never saw
    // them, nothing was reserved and nothing charged.
    assert_eq!(gate.authorized.load(Ordering::SeqCst), 0);
    let status = budgets.status();
    assert!(status.windows.is_empty(), "{:?}", status.windows);
    assert_eq!(status.responses, 0);

    // Restored: the next request is evaluated, reserved and charged once.
    assert!(
        harness
            .responder
            .restore(&agent_workload, "operator")
            .is_some()
    );
    let served = agent.send(anthropic_messages()).await;
    assert_eq!(served.status(), StatusCode::OK);
    body_text(served).await;
    next_record(&mut records).await;
    assert_eq!(gate.authorized.load(Ordering::SeqCst), 1);
    assert_eq!(budgets.status().windows[0].1[0], 1);
}

fn anthropic_messages() -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(format!("https://{ANTHROPIC}/v1/messages"))
        .header("host", ANTHROPIC)
        .header("x-api-key", "placeholder")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[]}"#,
        )))
        .unwrap()
}

#[tokio::test]
async fn over_budget_gets_429_in_the_providers_shape_and_retry_after_is_honest() {
    let pki = TestPki::new();
    let provider = Provider::start(&pki).await;
    let clock = clock();
    let (budgets, mut records) = budgets(LocalLedger::in_memory(), clock.clone());
    let gate = Arc::new(BudgetOnly {
        budgets: budgets.clone(),
        limits: RuleLimits {
            requests_per_minute: Some(1),
            ..RuleLimits::default()
        },
    });
    let harness = Harness::start_with(&pki, "", Some(gate)).await;
    let messages = anthropic_messages;
    let mut agent = harness.h1(provider.addr, ANTHROPIC).await;
    let first = agent.send(messages()).await;
    assert_eq!(first.status(), StatusCode::OK);
    body_text(first).await;
    let record = next_record(&mut records).await;
    assert_eq!(record.usage.output_tokens, 50);
    assert_eq!(record.model.as_deref(), Some("claude-sonnet-4-20250514"));

    let refused = agent.send(messages()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=61).contains(&retry), "{retry}");
    let body: serde_json::Value = serde_json::from_str(&body_text(refused).await).unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("requests_per_minute"), "{message}");

    // One second early it is still refused; at Retry-After it is admitted.
    clock.advance(Duration::from_secs(retry - 1));
    assert_eq!(
        agent.send(messages()).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    clock.advance(Duration::from_secs(1));
    let again = agent.send(messages()).await;
    assert_eq!(again.status(), StatusCode::OK);

    // OpenAI's shape for an OpenAI upstream.
    let mut openai = harness.h1(provider.addr, OPENAI).await;
    let refused = openai.send(chat()).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value = serde_json::from_str(&body_text(refused).await).unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(body["error"]["code"], "warrant_429");
}

#[tokio::test]
async fn a_stream_cut_off_by_the_agent_is_charged_what_was_seen_and_flagged() {
    let pki = TestPki::new();
    let provider = Provider::start(&pki).await;
    let (budgets, mut records) = budgets(LocalLedger::in_memory(), clock());
    let gate = Arc::new(BudgetOnly {
        budgets: budgets.clone(),
        limits: tokens(100_000),
    });
    let harness = Harness::start_with(&pki, "", Some(gate)).await;
    let mut agent = harness.h1(provider.addr, OPENAI).await;
    let mut response = agent.send(chat()).await;
    // The first event arrives, then the agent goes away.
    let first = response.body_mut().frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some());
    drop(response);
    drop(agent);
    provider.release.send(true).unwrap();
    let record = next_record(&mut records).await;
    assert!(record.cut_off);
    // No usage chunk was seen: charged as reserved, and flagged unknown.
    assert!(matches!(record.outcome, Outcome::Unknown { .. }));
    assert_eq!(record.usage.total(), WORST);
    assert_eq!(budgets.status().cut_off, 1);
    assert_eq!(budgets.status().windows[0].1[1], WORST);
}

#[tokio::test]
async fn a_daemon_restarted_mid_stream_remembers_the_reservation() {
    let pki = TestPki::new();
    let provider = Provider::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.sqlite");
    let now = 1_800_000_000;
    let (budgets, _records) = budgets(LocalLedger::open(&path, now).unwrap(), clock());
    let gate = Arc::new(BudgetOnly {
        budgets: budgets.clone(),
        limits: tokens(1000),
    });
    let harness = Harness::start_with(&pki, "", Some(gate)).await;
    let mut agent = harness.h1(provider.addr, OPENAI).await;
    let mut response = agent.send(chat()).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.body_mut().frame().await.unwrap().unwrap();
    // Mid-stream, what a restarted daemon would read from the state dir (the
    // running one never settles: it is as good as killed).
    let reopened = LocalLedger::open(&path, now + 1).unwrap();
    assert_eq!(reopened.recovered_in_flight(), 1);
    // gpt-4o worst case: 33 * 2.50 + 100 * 10.00 micro-USD, rounded up.
    assert_eq!(reopened.used("agent", now + 1), [1, WORST, 1083]);
    let over = reopened
        .reserve(
            "agent",
            now + 1,
            [1, 1000 - WORST + 1, 0],
            [None, Some(1000), None],
        )
        .unwrap_err();
    assert_eq!(over.used, WORST);
}

#[test]
fn every_documented_usage_key_parses_and_bad_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The upstreams' CA file exists: check-config reads it.
    let pki = TestPki::new();
    let ca = pki.ca_file.clone();
    // Parsed and compiled, as `warrant check-config` does.
    let with = |extra: &str| {
        let config =
            warrant::config::Config::parse(&config_text(dir.path(), &ca, extra), "w.toml")?;
        warrant::service::check_config(&config).map(|_| config)
    };
    let config = with(
        r#"
[usage]
ledger = "redis"
redis_url = "redis://10.0.0.5:6379/0"
redis_unreachable = "local"
redis_timeout_ms = 250
per_upstream = true
default_max_output_tokens = 4096
input_bytes_per_token = 4
max_json_bytes = 1048576
body_prefix_bytes = 1048576
default_prices = true

[[price]]
model = "gpt-4o*"
input = 2.50
output = 10.00
cached_input = 1.25
"#,
    )
    .unwrap();
    assert!(config.usage.per_upstream);
    assert_eq!(config.prices.len(), 1);
    // The commented reference in the embedded default names every key.
    for key in [
        "ledger",
        "redis_url",
        "redis_unreachable",
        "redis_timeout_ms",
        "per_upstream",
        "default_max_output_tokens",
        "input_bytes_per_token",
        "max_json_bytes",
        "body_prefix_bytes",
        "default_prices",
        "[[price]]",
        "requests_per_minute",
    ] {
        assert!(warrant::config::DEFAULT_CONFIG.contains(key), "{key}");
    }
    let err = with("[[price]]\nmodel = \"x\"\ninput = -1.0\noutput = 1.0\n").unwrap_err();
    assert!(err.to_string().contains("non-negative"), "{err}");
    let err = with("[usage]\nledger = \"redis\"\n").unwrap_err();
    assert!(err.to_string().contains("redis_url"), "{err}");
    let err = with("[usage]\nledger = \"etcd\"\n").unwrap_err();
    assert!(err.to_string().contains("w.toml:"), "{err}");
}

#[tokio::test]
async fn requests_refused_after_admission_before_reaching_the_upstream_leave_the_budget_untouched()
{
    let pki = TestPki::new();
    let (budgets, _records) = budgets(LocalLedger::in_memory(), clock());
    let gate = Arc::new(BudgetOnly {
        budgets: budgets.clone(),
        limits: RuleLimits {
            requests_per_minute: Some(100),
            tokens_per_hour: Some(1_000_000),
            ..RuleLimits::default()
        },
    });
    let harness = Harness::start_with(&pki, "", Some(gate)).await;
    // An upstream address where nothing listens: the connection is
    // refused, so nothing reached the provider.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    const N: usize = 5;
    for _ in 0..N {
        let mut agent = harness.h1(dead, OPENAI).await;
        let refused = agent.send(chat()).await;
        assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
        body_text(refused).await;
    }
    // An upstream whose credential cannot be had: 503 before forwarding.
    for _ in 0..N {
        let mut agent = harness.h1(dead, MISSING).await;
        let mut request = chat();
        *request.uri_mut() = format!("https://{MISSING}/v1/chat/completions")
            .parse()
            .unwrap();
        request
            .headers_mut()
            .insert("host", http::HeaderValue::from_static(MISSING));
        let refused = agent.send(request).await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        body_text(refused).await;
    }
    // Every reservation was released: no request, no token counted.
    let status = budgets.status();
    assert!(
        status.windows.iter().all(|(_, used)| *used == [0, 0, 0]),
        "{:?}",
        status.windows
    );
    assert_eq!(status.responses, 0);
}
