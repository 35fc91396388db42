//! `cargo xtask bench usage`: what metering and budgets cost.
//!
//! - Metering: one large OpenAI chat stream (SSE chunks as the API sends
//!   them, cut into 16 KiB frames) through the proxy's response body path
//!   (`Tap` + `Redact`), without an observer (passthrough, the
//!   baseline) and with the usage observer, in the same run; throughput and
//!   ratio. Target: metered at least 95 % of passthrough. This baseline
//!   has no sockets and no TLS, so it is the strictest one: through the
//!   injector the same absolute cost per byte is a smaller share.
//! - Metering end to end: the same stream from a mock provider over TLS,
//!   through the injector (TLS on both sides, h1 client, in-process with
//!   `StaticOrigins`) to a client that reads it, once through an injector
//!   whose gate allows everything (passthrough) and once through one whose
//!   gate admits with the usage observer (budgets in memory, as the daemon
//!   wires them), alternating, in the same run. This is the overhead an
//!   agent sees.
//! - Ledger: one reservation and its settlement, in memory (the baseline),
//!   in the embedded SQLite ledger, and in Redis when a redis-server is on
//!   PATH (started on 127.0.0.1, a free port, no persistence); microseconds
//!   per request and ratio.
//!
//! Run in release (`cargo run --release --example bench_usage`). Counts can
//! be scaled with BENCH_SCALE (default 1.0). Loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader},
    pin::Pin,
    process::{Command, Stdio},
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use warrant::{
    clock::SystemClock,
    config::UsageConfig,
    policy::RuleLimits,
    provider::{RequestHead, Scheme, api},
    proxy::{GateFuture, GateRequest, Identity, Redact, Refusal, RequestGate, Tap, Verdict},
    secret::Secret,
    usage::{
        Admission, AdmitRequest, Budgets, LocalLedger, PriceTable, ResponseObserver,
        redis::RedisLedger,
    },
};

use loopback::{MockBody, MockCa, Target};
use warrant_test_support::loopback;

fn scale() -> f64 {
    std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

struct Frames(VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// A chat completion stream of about `bytes` bytes, in 16 KiB frames.
fn stream(bytes: usize) -> Vec<Bytes> {
    let chunk = "data: {\"id\":\"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT\",\"object\":\"chat.completion.chunk\",\"created\":1741569952,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_50cad350e4\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" streaming tokens\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n";
    let usage = "data: {\"id\":\"chatcmpl-B9M\",\"object\":\"chat.completion.chunk\",\"created\":1741569952,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":50000,\"total_tokens\":50010}}\n\ndata: [DONE]\n\n";
    let mut all = Vec::with_capacity(bytes + 1024);
    while all.len() < bytes {
        all.extend_from_slice(chunk.as_bytes());
    }
    all.extend_from_slice(usage.as_bytes());
    all.chunks(16 * 1024).map(Bytes::copy_from_slice).collect()
}

fn budgets(local: LocalLedger, durable: bool, redis: Option<RedisLedger>) -> Budgets {
    Budgets::new(
        UsageConfig::default(),
        PriceTable::new(&[], true).unwrap(),
        local,
        durable,
        redis,
        Arc::new(SystemClock),
    )
}

fn limits() -> RuleLimits {
    RuleLimits {
        requests_per_minute: Some(u64::MAX / 4),
        tokens_per_hour: Some(u64::MAX / 4),
        cost_per_day_usd: None,
    }
}

async fn observer(budgets: &Budgets) -> Box<dyn ResponseObserver> {
    let headers = HeaderMap::new();
    let uri: http::Uri = "/v1/chat/completions".parse().unwrap();
    let head = RequestHead {
        method: &http::Method::POST,
        uri: &uri,
        headers: &headers,
    };
    let request = api(Scheme::OpenAi)
        .parse(
            &head,
            br#"{"model":"gpt-4o","max_tokens":1000,"stream":true}"#,
        )
        .unwrap();
    let observer = budgets
        .admit(AdmitRequest {
            workload: "bench",
            upstream: "api.openai.com",
            scheme: Scheme::OpenAi,
            request: &request,
            limits: limits(),
        })
        .await
        .unwrap();
    Box::new(observer)
}

/// A gate that admits every request with the usage observer, as the
/// daemon's gate does after attestation and policy (which cost per request,
/// not per byte, so they are left out of a throughput figure).
struct MeteringGate(Budgets);

impl RequestGate for MeteringGate {
    fn authorize<'a>(
        &'a self,
        _: &'a Identity,
        request: GateRequest<'a>,
    ) -> GateFuture<'a, Result<Verdict, Refusal>> {
        Box::pin(async move {
            let observer = self
                .0
                .admit(AdmitRequest {
                    workload: "bench",
                    upstream: request.upstream,
                    scheme: request.scheme,
                    request: request.request,
                    limits: limits(),
                })
                .await
                .unwrap();
            Ok(Verdict::Admit(Admission::new(Box::new(observer))))
        })
    }

    fn body_prefix_len(&self) -> usize {
        4096
    }
}

/// One streamed response through the injector.
async fn end_to_end(target: &Target) -> Sample {
    let mut send = target.connect().await;
    sample(async || loopback::one(&mut send, "/v1/chat/completions").await).await
}

/// One stream through the response body path.
async fn body_path(frames: &[Bytes], observer: Option<Box<dyn ResponseObserver>>) -> Sample {
    let total: usize = frames.iter().map(Bytes::len).sum();
    let secret = Arc::new(Secret::new(
        "sk-bench-0123456789abcdefghijklmnopqrstuv".to_owned(),
    ));
    let mut observer = observer;
    if let Some(o) = observer.as_mut() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        o.head(StatusCode::OK, &headers);
    }
    let body = Tap::new(
        Redact::new(Frames(frames.iter().cloned().collect()), secret),
        observer,
    );
    sample(async || {
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(out.len(), total);
        total
    })
    .await
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One transfer: bytes per second of wall time, and the process's CPU time
/// per byte (client, mock and injector together). On a shared machine the
/// CPU figure is the steadier one: other load slows the wall clock, not the
/// work done.
#[derive(Clone, Copy)]
struct Sample {
    bytes_per_sec: f64,
    cpu_ns_per_byte: f64,
}

fn cpu_now() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID).unwrap();
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// Times `transfer`, which moves and returns a number of bytes.
async fn sample(transfer: impl AsyncFnOnce() -> usize) -> Sample {
    let (wall, cpu) = (Instant::now(), cpu_now());
    let bytes = transfer().await as f64;
    Sample {
        bytes_per_sec: bytes / wall.elapsed().as_secs_f64(),
        cpu_ns_per_byte: (cpu_now() - cpu).as_nanos() as f64 / bytes,
    }
}

/// Passthrough against metered, measured in adjacent pairs (their order
/// alternating) so that drift on a shared machine hits both alike.
struct Paired {
    passthrough: Vec<Sample>,
    metered: Vec<Sample>,
}

async fn paired(
    rounds: usize,
    mut passthrough: impl AsyncFnMut() -> Sample,
    mut metered: impl AsyncFnMut() -> Sample,
) -> Paired {
    let mut pairs = Paired {
        passthrough: Vec::new(),
        metered: Vec::new(),
    };
    for round in 0..rounds {
        if round % 2 == 0 {
            pairs.passthrough.push(passthrough().await);
            pairs.metered.push(metered().await);
        } else {
            pairs.metered.push(metered().await);
            pairs.passthrough.push(passthrough().await);
        }
    }
    pairs
}

impl Paired {
    /// Medians of `figure` without and with metering, the median of the
    /// pairs' ratios (metered over passthrough, inverted when lower is
    /// better) and its quartiles.
    fn row(&self, name: &str, figure: impl Fn(&Sample) -> f64, higher_is_better: bool) {
        let p = median(self.passthrough.iter().map(&figure).collect());
        let m = median(self.metered.iter().map(&figure).collect());
        let mut ratios: Vec<f64> = self
            .passthrough
            .iter()
            .zip(&self.metered)
            .map(|(p, m)| {
                let r = figure(m) / figure(p);
                if higher_is_better { r } else { 1.0 / r }
            })
            .collect();
        ratios.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{name:<30} {p:>12.3} {m:>12.3} {:>8.3}   {:.3}..{:.3}",
            median(ratios.clone()),
            ratios[ratios.len() / 4],
            ratios[ratios.len() * 3 / 4],
        );
    }

    fn print(&self) {
        println!(
            "{:<30} {:>12} {:>12} {:>8}   quartiles (target: ratio >= 0.95)",
            "", "passthrough", "metered", "ratio"
        );
        self.row("throughput (GB/s)", |s| s.bytes_per_sec / 1e9, true);
        self.row("CPU per byte (ns), as speed", |s| s.cpu_ns_per_byte, false);
        let cpu = |v: &[Sample]| median(v.iter().map(|s| s.cpu_ns_per_byte).collect());
        println!(
            "{:<30} {:>12.3}",
            "metering CPU cost (ns/byte)",
            cpu(&self.metered) - cpu(&self.passthrough)
        );
    }
}

async fn per_request(n: usize, mut op: impl AsyncFnMut(usize)) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        op(i).await;
    }
    start.elapsed() / n as u32
}

struct RedisServer(std::process::Child, String);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server() -> Option<RedisServer> {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let mut child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut lines = BufReader::new(child.stdout.take()?).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("Ready to accept connections") => break,
            Some(Ok(_)) => {}
            _ => return None,
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Some(RedisServer(child, format!("redis://127.0.0.1:{port}/")))
}

#[tokio::main]
async fn main() {
    let s = scale();
    // --- metering
    let frames = stream((64.0 * 1024.0 * 1024.0 * s) as usize);
    let mb = frames.iter().map(Bytes::len).sum::<usize>() as f64 / 1e6;
    let meter_budgets = budgets(LocalLedger::in_memory(), false, None);
    const BODY_ROUNDS: usize = 15;
    let body = paired(
        BODY_ROUNDS,
        async || body_path(&frames, None).await,
        async || body_path(&frames, Some(observer(&meter_budgets).await)).await,
    )
    .await;
    println!(
        "bench usage: one {mb:.0} MB OpenAI chat stream through the response body path alone (median of {BODY_ROUNDS} pairs)"
    );
    body.print();
    let status = meter_budgets.status();
    assert_eq!(
        status.counted, BODY_ROUNDS as u64,
        "every metered stream was counted"
    );

    // --- metering end to end
    let dir = tempfile::tempdir().unwrap();
    let mock_ca = MockCa::new(dir.path());
    let served = Arc::new(frames);
    let respond: loopback::Respond = Arc::new(move |_req: Request<()>| -> Response<MockBody> {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(MockBody::new(Frames(served.iter().cloned().collect())))
            .unwrap()
    });
    let mock = loopback::start_mock(mock_ca.acceptor(), respond).await;
    let e2e_budgets = budgets(LocalLedger::in_memory(), false, None);
    let gate: Arc<dyn RequestGate> = Arc::new(MeteringGate(e2e_budgets.clone()));
    let mut targets = Vec::new();
    for (name, gate) in [("plain", None), ("metered", Some(gate))] {
        let state = dir.path().join(name);
        let (addr, origins, local_ca) =
            loopback::start_injector(&state, &mock_ca.pem_file, gate).await;
        targets.push(Target {
            addr,
            roots: loopback::roots(local_ca.ca_pem()),
            origins: Some(origins),
            mock,
        });
    }
    const E2E_ROUNDS: usize = 21;
    let e2e = paired(
        E2E_ROUNDS,
        async || end_to_end(&targets[0]).await,
        async || end_to_end(&targets[1]).await,
    )
    .await;
    println!();
    println!(
        "the same stream end to end: mock -TLS-> injector -TLS-> client, h1 (median of {E2E_ROUNDS} pairs)"
    );
    e2e.print();
    assert_eq!(
        e2e_budgets.status().counted,
        E2E_ROUNDS as u64,
        "every stream through the metering injector was counted"
    );

    // --- ledger
    let n = (20_000.0 * s).max(100.0) as usize;
    let want = [1, 1000, 1000];
    let lim = [Some(u64::MAX / 4), Some(u64::MAX / 4), Some(u64::MAX / 4)];
    let now = jiff::Timestamp::now().as_second();
    let memory = LocalLedger::in_memory();
    let mem = per_request(n, async |_| {
        let placed = memory.reserve("bench", now, want, lim).unwrap();
        memory.settle("bench", placed, want, [1, 500, 500]);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = LocalLedger::open(&dir.path().join("usage.sqlite"), now).unwrap();
    let sql = per_request(n, async |_| {
        let placed = sqlite.reserve("bench", now, want, lim).unwrap();
        sqlite.settle("bench", placed, want, [1, 500, 500]);
    })
    .await;
    println!();
    println!("ledger: one reservation + its settlement ({n} requests, sequential)");
    println!("{:<34} {:>12} {:>8}", "", "us/request", "ratio");
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("{:<34} {:>12.2} {:>8.2}", "memory (baseline)", us(mem), 1.0);
    println!(
        "{:<34} {:>12.2} {:>8.2}",
        "embedded (SQLite WAL)",
        us(sql),
        us(sql) / us(mem)
    );
    match redis_server() {
        Some(server) => {
            let redis = RedisLedger::new(&server.1, Duration::from_secs(2)).unwrap();
            let n = n.min(5000);
            let red = per_request(n, async |_| {
                let placed = redis
                    .reserve("bench", now, want, lim)
                    .await
                    .unwrap()
                    .unwrap();
                redis
                    .settle("bench", placed, [0, -500, -500])
                    .await
                    .unwrap();
            })
            .await;
            println!(
                "{:<34} {:>12.2} {:>8.2}",
                "redis (loopback, script + HINCRBY)",
                us(red),
                us(red) / us(mem)
            );
        }
        None => println!("redis: no redis-server on PATH, skipped"),
    }
}
