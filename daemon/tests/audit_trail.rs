//! The audit trail and metrics through the whole proxy: every request leaves
//! one complete audit line, metrics scrape with a real Prometheus parser,
//! and the canary credential is found nowhere (logs, audit file, metrics,
//! responses, control answers). Loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use http_body_util::BodyExt;
use serde_json::Value;
use warrant::control::{ControlRequest, client};
use warrant_test_support::{
    daemon::Daemon, injector::*, logs::Logs, monitored::*, pki::*, upstream::*, wait::eventually,
};

/// The canary in none of the places that must not hold it: this test's
/// logs, the audit file, the metrics, the answers the agent and the
/// operator got.
fn assert_canary_nowhere(logs: &Logs, audit: &str, metrics: &str, answers: &[String]) {
    let text = logs.text();
    for (place, haystack) in [
        ("logs", text.as_str()),
        ("audit file", audit),
        ("metrics", metrics),
    ] {
        assert!(
            !haystack.contains(CANARY),
            "the canary credential appeared in the {place}"
        );
    }
    for answer in answers {
        assert!(
            !answer.contains(CANARY),
            "the canary credential appeared in a response or control answer"
        );
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
    let logs = Logs::capture();
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

    // Metrics: a real parser, and the counts (records are counted when
    // their batch is written, within the audit's flush interval).
    eventually("six records counted", || {
        h.responder.audit().health().written >= 6
    })
    .await;
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
    assert!(logs.contains("credential issued"), "the store did fetch it");
    assert_canary_nowhere(&logs, &h.audit_text(), &exposition, &seen);
    // It did reach the upstream.
    assert!(mock.seen().iter().any(|s| {
        s.headers
            .get("authorization")
            .is_some_and(|v| v.to_str().unwrap().contains(CANARY))
    }));
}

/// The canary through the daemon's own request path: the real gate
/// (attestation, workload, policy, budgets in the ledger), the real
/// `Reloader` (which fetches the credentials again) and the control
/// socket's real backend. Every way a request can end, then a reload, then
/// a request served with the credential fetched again: the canary is in no
/// log line, audit record, metric, response or control answer.
#[test]
fn the_canary_appears_nowhere_through_the_real_gate_budgets_and_reload() {
    let logs = Logs::capture();
    // The control socket runs the reload on a blocking thread: every
    // thread of the runtime logs into this test's capture.
    logs.runtime(2).block_on(async {
        let pki = TestPki::new();
        let mock = Mock::start(&pki, &[b"http/1.1"]).await;
        let d = Daemon::start(&pki, CANARY, "").await;
        let mut seen = Vec::new();
        let chat = |max_tokens: u64| {
            let mut req = request(OPENAI, "/v1/chat/completions", &[]);
            *req.body_mut() = http_body_util::Full::new(bytes::Bytes::from(format!(
                "{{\"model\":\"gpt-4o\",\"max_tokens\":{max_tokens},\"messages\":[]}}"
            )));
            req
        };

        let mut agent = d.h1(mock.addr, OPENAI).await;
        // Allowed by the policy and within the budget.
        let (status, text) = text_of(agent.send(chat(16)).await).await;
        assert_eq!(status, 200, "{text}");
        seen.push(text);
        // An upstream error that echoes the key it was given.
        let (status, text) = text_of(agent.send(request(OPENAI, "/v1/echo", &[])).await).await;
        assert_eq!(status, 401, "{text}");
        seen.push(text);
        // Denied by the policy: a path it does not list.
        let (status, text) = text_of(agent.send(request(OPENAI, "/v1/files", &[])).await).await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("/v1/files"), "{text}");
        seen.push(text);
        // Refused by the budget: the worst case exceeds tokens_per_hour.
        let (status, text) = text_of(agent.send(chat(1_000_000)).await).await;
        assert_eq!(status, 429, "{text}");
        assert!(text.contains("tokens_per_hour"), "{text}");
        seen.push(text);
        // Upstream unreachable.
        let mut dead = d.h1(closed_port().await, OPENAI).await;
        let (status, text) = text_of(dead.send(chat(16)).await).await;
        assert_eq!(status, 502, "{text}");
        seen.push(text);
        // Credential unavailable.
        let mut missing = d.h1(mock.addr, MISSING).await;
        let (status, text) = text_of(missing.send(request(MISSING, "/v1/models", &[])).await).await;
        assert_eq!(status, 503, "{text}");
        seen.push(text);

        // Reload through the control socket (the daemon's own backend): the
        // generation is rebuilt and the credentials fetched again.
        let issued_before = logs.text().matches("credential issued").count();
        assert!(issued_before >= 1, "the store fetched the canary");
        let socket = d.control_socket.clone();
        let (reload, status) = tokio::task::spawn_blocking(move || {
            (
                client::call(&socket, &ControlRequest::Reload).unwrap(),
                client::call(&socket, &ControlRequest::Status).unwrap(),
            )
        })
        .await
        .unwrap();
        assert_eq!(reload["applied"], true, "{reload}");
        assert!(
            logs.text().matches("credential issued").count() > issued_before,
            "the reload fetched the credentials again"
        );
        assert_eq!(d.intercept.0.lock().unwrap().len(), 1, "the ports were set");
        let creds = status["credentials"].as_array().unwrap();
        let openai = creds.iter().find(|c| c["name"] == "openai").unwrap();
        assert_eq!(
            openai["fingerprint"],
            warrant::secret::fingerprint(CANARY.as_bytes())
        );
        seen.push(reload.to_string());
        seen.push(status.to_string());
        // Served by the new generation, with the credential it fetched.
        let mut agent = d.h1(mock.addr, OPENAI).await;
        let (status, text) = text_of(agent.send(chat(16)).await).await;
        assert_eq!(status, 200, "{text}");
        seen.push(text);

        eventually("seven request records", || {
            d.audit_text().matches("\"kind\":\"request\"").count() >= 7
        })
        .await;
        assert_canary_nowhere(&logs, &d.audit_text(), &d.metrics.render(), &seen);
        let forwarded = mock
            .seen()
            .iter()
            .filter(|s| {
                s.headers
                    .get("authorization")
                    .is_some_and(|v| v.to_str().unwrap() == format!("Bearer {CANARY}"))
            })
            .count();
        assert_eq!(
            forwarded, 3,
            "the canary reached the upstream, before and after the reload"
        );
    });
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
    let logs = Logs::capture();
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
    assert!(logs.text().contains("AUDIT RECORDS ARE BEING LOST"));
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

/// Fail-closed is not fail-forever: once the audit log can be written again
/// (here the path that led to /dev/full leads to a file, as a freed disk
/// would), the record of the next refused request is written, which lifts
/// the refusals, and requests are served and recorded again.
#[tokio::test]
async fn fail_closed_serves_again_once_the_audit_log_can_be_written() {
    let logs = Logs::capture();
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let files = tempfile::tempdir().unwrap();
    let link = files.path().join("audit.jsonl");
    std::os::unix::fs::symlink("/dev/full", &link).unwrap();
    let h = Monitored::start(&pki, Some(link.to_str().unwrap()), "").await;
    let mut agent = h.h1(mock.addr, OPENAI).await;
    let response = agent.send(request(OPENAI, "/v1/first", &[])).await;
    assert_eq!(response.status(), 200);
    body_text(response).await;
    eventually("a dropped record", || {
        h.responder.audit().health().dropped >= 1
    })
    .await;
    let response = agent.send(request(OPENAI, "/v1/refused", &[])).await;
    assert_eq!(response.status(), 503);
    body_text(response).await;
    // Its record is lost too (the audit writes in batches: wait for the
    // one that holds it).
    eventually("the refusal's dropped record", || {
        h.responder.audit().health().dropped >= 2
    })
    .await;

    // The disk is freed.
    let file = files.path().join("audit-file.jsonl");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&file, &link).unwrap();
    // This request is refused (the log was failing when it came), and its
    // record is the first one written.
    let response = agent.send(request(OPENAI, "/v1/probe", &[])).await;
    assert_eq!(response.status(), 503);
    body_text(response).await;
    // Written, then counted (the audit writes in batches).
    eventually("the refusal's record", || {
        !read_lines(&file).is_empty() && h.responder.audit().health().writable
    })
    .await;
    assert!(h.responder.audit().health().writable);
    assert!(logs.contains("the audit log is writable again"));

    let response = agent.send(request(OPENAI, "/v1/after", &[])).await;
    assert_eq!(response.status(), 200, "served again");
    body_text(response).await;
    eventually("the served request's record", || {
        read_lines(&file).len() >= 2
    })
    .await;
    let records = read_lines(&file);
    let paths: Vec<&str> = records
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/v1/probe", "/v1/after"]);
    assert_eq!(records[0]["outcome"], "audit_unavailable", "{}", records[0]);
    assert_eq!(records[1]["outcome"], "forwarded", "{}", records[1]);
    assert!(mock.seen().iter().any(|s| s.uri.path() == "/v1/after"));
    assert!(
        mock.seen()
            .iter()
            .all(|s| s.uri.path() != "/v1/refused" && s.uri.path() != "/v1/probe"),
        "nothing refused was forwarded"
    );
}
