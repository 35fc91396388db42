//! The audit trail and metrics through the whole proxy: every request leaves
//! one complete audit line, metrics scrape with a real Prometheus parser,
//! and the canary credential is found nowhere (logs, audit file, metrics,
//! responses, control answers). Loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit_support;

use std::sync::Arc;

use audit_support::*;
use http_body_util::BodyExt;
use serde_json::Value;
use warrant::{
    control::{ControlBackend, ControlRequest, ControlServer, RequestError, client},
    credentials::CredentialStore,
};

/// A control backend with the store's status and the daemon's reload.
struct Backend {
    credentials: Arc<CredentialStore>,
    config: std::path::PathBuf,
}

impl ControlBackend for Backend {
    fn credentials(&self) -> Value {
        serde_json::to_value(self.credentials.status()).unwrap()
    }
    fn reload(&self) -> Result<Value, RequestError> {
        warrant::service::validate_reload(&self.config).map_err(RequestError::daemon)
    }
}

async fn text_of(response: http::Response<hyper::body::Incoming>) -> (u16, String) {
    let status = response.status().as_u16();
    let headers = format!("{:?}", response.headers());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        format!("{headers}\n{}", String::from_utf8_lossy(&body)),
    )
}

fn requests(h: &Monitored) -> Vec<Value> {
    h.audit_lines()
        .into_iter()
        .filter(|l| l["kind"] == "request")
        .collect()
}

#[tokio::test]
async fn every_path_leaves_one_complete_audit_line_and_the_canary_appears_nowhere() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let h = Monitored::start(&pki, None, "").await;
    let mut seen = Vec::new();

    // Success.
    let mut agent = h.h1(mock.addr, OPENAI).await;
    let (status, text) = text_of(
        agent
            .send(request(
                OPENAI,
                "/v1/chat/completions",
                &[("authorization", "Bearer placeholder")],
            ))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    seen.push(text);
    // An upstream error body that echoes the key it was given.
    let (status, text) = text_of(agent.send(request(OPENAI, "/v1/echo", &[])).await).await;
    assert_eq!(status, 401);
    seen.push(text);
    // Denial by policy.
    let (status, text) = text_of(agent.send(request(OPENAI, "/v1/deny/x", &[])).await).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("outside Mon-Fri"), "{text}");
    seen.push(text);
    // Upstream unreachable.
    let mut dead = h.h1(closed_port().await, OPENAI).await;
    let (status, text) = text_of(dead.send(request(OPENAI, "/v1/models", &[])).await).await;
    assert_eq!(status, 502, "{text}");
    seen.push(text);
    // Credential unavailable (its provider fails: the file is missing).
    let mut missing = h.h1(mock.addr, MISSING).await;
    let (status, text) = text_of(missing.send(request(MISSING, "/v1/models", &[])).await).await;
    assert_eq!(status, 503, "{text}");
    seen.push(text);

    // Budget refusal.
    let (status, text) = text_of(agent.send(request(OPENAI, "/v1/budget/x", &[])).await).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("budget"), "{text}");
    seen.push(text);

    eventually("six request records", || requests(&h).len() >= 6).await;
    let records = requests(&h);
    assert_eq!(records.len(), 6, "one line per request: {records:#?}");
    let by_path = |p: &str| records.iter().find(|r| r["path"] == p).unwrap().clone();

    let over = by_path("/v1/budget/x");
    assert_eq!(over["outcome"], "denied", "{over}");
    assert_eq!(over["status"], 429, "{over}");
    let ok = by_path("/v1/chat/completions");
    assert_eq!(ok["outcome"], "forwarded");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["workload"], WORKLOAD);
    assert_eq!(ok["upstream"], OPENAI);
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["model"], "gpt-4o");
    assert_eq!(ok["attestation"]["unit"], "agent-a.service");
    assert_eq!(ok["attestation"]["instance_id"], "i-test");
    assert_eq!(ok["attestation"]["region"], "local");
    assert!(ok["attestation"]["exe_sha256"].as_str().unwrap().len() == 64);
    assert_eq!(ok["credential"]["name"], "openai");
    assert_eq!(
        ok["credential"]["fingerprint"],
        warrant::secret::fingerprint(CANARY.as_bytes())
    );
    assert_eq!(ok["decision"]["allowed"], true);
    assert!(ok["latency_ms"].is_u64());
    assert!(ok["upstream_latency_ms"].is_u64());
    assert_eq!(ok["response_bytes"], 11, "{{\"ok\":true}}");
    assert_eq!(ok["request_bytes"], 18);
    assert!(ok["time"].as_str().unwrap().ends_with('Z'));

    let echo = by_path("/v1/echo");
    assert_eq!(
        (echo["outcome"].clone(), echo["status"].clone()),
        ("forwarded".into(), 401.into())
    );

    let denied = by_path("/v1/deny/x");
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["status"], 403);
    assert!(
        denied.get("credential").is_none(),
        "no credential for a denied request"
    );
    let factors = denied["decision"]["factors"].as_array().unwrap();
    assert!(
        factors
            .iter()
            .any(|f| f["factor"] == "time" && f["passed"] == false)
    );

    let failed = records
        .iter()
        .find(|r| r["outcome"] == "upstream_error")
        .unwrap();
    assert_eq!(failed["status"], 502);
    let unavailable = records
        .iter()
        .find(|r| r["outcome"] == "no_credential")
        .unwrap();
    assert_eq!(
        (
            unavailable["status"].clone(),
            unavailable["upstream"].clone()
        ),
        (503.into(), MISSING.into())
    );

    // Control socket: status and reload.
    let socket = h.dir.path().join("control.sock");
    let server = ControlServer::bind(
        &socket,
        None,
        h.responder.clone(),
        Arc::new(Backend {
            credentials: h.credentials.clone(),
            config: h.config_path.clone(),
        }),
    )
    .unwrap();
    tokio::spawn(server.serve());
    let socket2 = socket.clone();
    let (status, reload) = tokio::task::spawn_blocking(move || {
        (
            client::call(&socket2, &ControlRequest::Status).unwrap(),
            client::call(&socket2, &ControlRequest::Reload).unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(reload["valid"], true);
    let creds = status["credentials"].as_array().unwrap();
    let openai = creds.iter().find(|c| c["name"] == "openai").unwrap();
    assert_eq!(
        openai["fingerprint"],
        warrant::secret::fingerprint(CANARY.as_bytes())
    );
    let missing_cred = creds.iter().find(|c| c["name"] == "missing").unwrap();
    assert!(missing_cred["failures"].as_u64().unwrap() >= 1);
    seen.push(status.to_string());
    seen.push(reload.to_string());

    // Metrics: a real parser, and the counts.
    let exposition = h.responder.audit().metrics().render();
    let scrape =
        prometheus_parse::Scrape::parse(exposition.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(
        value(
            "warrant_requests_total",
            &[("workload", WORKLOAD), ("outcome", "forwarded")]
        ),
        2.0
    );
    assert_eq!(
        value(
            "warrant_denials_total",
            &[("workload", WORKLOAD), ("reason", "time")]
        ),
        1.0
    );
    assert_eq!(
        value("warrant_requests_total", &[("outcome", "no_credential")]),
        1.0
    );
    assert_eq!(
        value("warrant_connections_total", &[("kind", "intercepted")]),
        3.0
    );
    assert_eq!(value("warrant_audit_records_total", &[]), 6.0);
    assert!(
        value(
            "warrant_credential_refreshes_total",
            &[("credential", "openai"), ("result", "ok")]
        ) >= 1.0
    );
    assert!(
        value(
            "warrant_credential_refreshes_total",
            &[("credential", "missing"), ("result", "error")]
        ) >= 1.0
    );
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "warrant_upstream_latency_seconds"
                && matches!(s.value, prometheus_parse::Value::Histogram(_))),
        "{exposition}"
    );
    // The usage module's API lands in the same exposition.
    h.responder
        .audit()
        .metrics()
        .add_tokens(WORKLOAD, "gpt-4o", 12, 34);
    h.responder
        .audit()
        .metrics()
        .add_cost(WORKLOAD, "gpt-4o", 0.25);
    let exposition = h.responder.audit().metrics().render();
    let scrape =
        prometheus_parse::Scrape::parse(exposition.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(scrape.samples.iter().any(|s| s.metric == "warrant_tokens_total"
        && s.labels.get("kind") == Some("output")
        // prometheus-parse types OpenMetrics counters (`# TYPE x counter`
        // over `x_total` samples) as untyped; the value is what matters.
        && matches!(s.value, prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) if v == 34.0)));

    // The canary: nowhere.
    let logs = logs();
    assert!(logs.contains("credential issued"), "the store did fetch it");
    let audit = h.audit_text();
    for (place, text) in [
        ("logs", logs.as_str()),
        ("audit file", audit.as_str()),
        ("metrics", exposition.as_str()),
    ] {
        assert!(
            !text.contains(CANARY),
            "the canary credential appeared in the {place}"
        );
    }
    for text in &seen {
        assert!(
            !text.contains(CANARY),
            "the canary credential appeared in a response"
        );
    }
    // It did reach the upstream.
    assert!(mock.seen().iter().any(|s| {
        s.headers
            .get("authorization")
            .is_some_and(|v| v.to_str().unwrap().contains(CANARY))
    }));
}

#[tokio::test]
async fn the_metrics_endpoint_serves_parseable_text_on_loopback() {
    let metrics = Arc::new(warrant::metrics::Metrics::new());
    metrics.connection("passthrough");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warrant::metrics::serve(metrics, listener));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut sender = Sender::h1(tcp).await;
    let response = sender
        .send(
            http::Request::get("/metrics")
                .header("host", "127.0.0.1")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("openmetrics-text")
    );
    let text = body_text(response).await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "warrant_connections_total"
                && s.labels.get("kind") == Some("passthrough"))
    );
}

#[tokio::test]
async fn fail_closed_refuses_requests_while_the_audit_log_cannot_be_written() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    // /dev/full: every write fails with ENOSPC, as on a full disk.
    let h = Monitored::start(&pki, Some("/dev/full"), "").await;
    let mut agent = h.h1(mock.addr, OPENAI).await;
    // The first failed write (this request's record; the daemon's start
    // record in `warrant run`) turns refusals on.
    let response = agent.send(request(OPENAI, "/v1/first", &[])).await;
    assert_eq!(response.status(), 200);
    body_text(response).await;
    eventually("a dropped record", || {
        h.responder.audit().health().dropped >= 1
    })
    .await;
    let response = agent.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(response.status(), 503);
    let text = body_text(response).await;
    assert!(text.contains("audit log cannot be written"), "{text}");
    assert!(
        mock.seen().iter().all(|s| s.uri.path() != "/v1/models"),
        "nothing forwarded"
    );
    assert!(logs().contains("AUDIT RECORDS ARE BEING LOST"));
    assert!(!h.responder.audit().health().writable);
}

#[tokio::test]
async fn fail_open_keeps_serving_and_counts_dropped_records() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let h = Monitored::start(&pki, Some("/dev/full"), "[audit]\non_failure = \"open\"\n").await;
    let mut agent = h.h1(mock.addr, OPENAI).await;
    for _ in 0..2 {
        let response = agent.send(request(OPENAI, "/v1/models", &[])).await;
        assert_eq!(response.status(), 200);
        body_text(response).await;
    }
    eventually("two dropped records", || {
        h.responder.audit().health().dropped >= 2
    })
    .await;
    let exposition = h.responder.audit().metrics().render();
    assert!(
        exposition.contains("warrant_audit_dropped_total 2"),
        "{exposition}"
    );
}
