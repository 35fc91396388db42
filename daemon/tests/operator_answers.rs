//! The operator's questions, each answered by one `warrant` command run as
//! the binary against the daemon's real request path (gate, budgets,
//! audit log, control socket; `support::daemon`): "who is spending what?"
//! (`warrant audit --summary`, `warrant status`) and "why was this
//! refused?" (`warrant audit --refused`). Loopback and temp dirs only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use http_body_util::BodyExt;
use serde_json::Value;
use warrant::{control::status::Status, usage::Room};
use warrant_test_support::{
    daemon::{Daemon, WORKLOAD},
    injector::*,
    pki::*,
    prereq::{self, Need},
    upstream::*,
};

/// `warrant ARGS...`: (success, stdout, stderr).
async fn warrant(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warrant"))
            .args(&args)
            .env("WARRANT_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(words: &[&str], path: &Path) -> Vec<String> {
    let mut args: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    args.push(path.display().to_string());
    args
}

fn chat(max_tokens: u64) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = request(OPENAI, "/v1/chat/completions", &[]);
    *req.body_mut() = http_body_util::Full::new(bytes::Bytes::from(format!(
        "{{\"model\":\"gpt-4o\",\"max_tokens\":{max_tokens},\"messages\":[]}}"
    )));
    req
}

async fn status_of(response: http::Response<hyper::body::Incoming>) -> u16 {
    let status = response.status().as_u16();
    response.into_body().collect().await.unwrap();
    status
}

/// One request served, one refused by policy (a path the rule does not
/// list), one refused by the budget (its worst case is over
/// tokens_per_hour); returns the tokens the served one was charged, as its
/// audit line says.
async fn traffic(d: &Daemon, mock: &Mock) -> u64 {
    let mut agent = d.h1(mock.addr, OPENAI).await;
    assert_eq!(status_of(agent.send(chat(16)).await).await, 200);
    assert_eq!(
        status_of(agent.send(request(OPENAI, "/v1/files", &[])).await).await,
        403
    );
    assert_eq!(status_of(agent.send(chat(1_000_000)).await).await, 429);
    // Written when each response ended: all three are there.
    warrant_test_support::wait::eventually("three request records", || {
        d.audit_text().matches("\"kind\":\"request\"").count() == 3
    })
    .await;
    let served: Value = d
        .audit_text()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["outcome"] == "forwarded")
        .unwrap();
    served["usage"]["input_tokens"].as_u64().unwrap_or(0)
        + served["usage"]["output_tokens"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn warrant_audit_answers_who_spent_what_and_why_requests_were_refused() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let d = Daemon::start(&pki, "sk-operator-test-key", "").await;
    let charged = traffic(&d, &mock).await;
    assert!(charged > 16, "the served request was charged its tokens");

    // Who is spending what: one line per workload and day.
    let (ok, out, err) = warrant(args(&["audit", "--summary", "--file"], &d.audit_path)).await;
    assert!(ok, "{err}");
    let row = out.lines().find(|l| l.contains(WORKLOAD)).unwrap_or("");
    let cells: Vec<&str> = row
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    // DAY, WORKLOAD, REQUESTS, FORWARDED, REFUSED, FAILED, INPUT, OUTPUT, COST
    assert_eq!(cells[2..5], ["3", "1", "2 (budget 1, request 1)"], "{out}");
    let (ok, out, _) = warrant(args(
        &["audit", "--summary", "--json", "--file"],
        &d.audit_path,
    ))
    .await;
    assert!(ok);
    let summary: Value = serde_json::from_str(&out).unwrap();
    let day = &summary[0];
    assert_eq!(day["workload"], WORKLOAD);
    assert_eq!(
        day["input_tokens"].as_u64().unwrap() + day["output_tokens"].as_u64().unwrap(),
        charged
    );

    // Why was this refused: the reason and the message the agent got.
    let (ok, out, err) = warrant(args(&["audit", "--refused", "--file"], &d.audit_path)).await;
    assert!(ok, "{err}");
    let refusals: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(refusals.len(), 2, "{out}");
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("request: ") && l.contains("/v1/files")),
        "{out}"
    );
    assert!(
        refusals.iter().any(|l| l.contains(" 429 ")
            && l.contains("budget: ")
            && l.contains("tokens_per_hour")),
        "{out}"
    );
    // As JSON lines of the audit schema, and filtered by outcome.
    let (ok, out, _) = warrant(args(
        &[
            "audit",
            "--json",
            "--outcome",
            "denied",
            "--workload",
            WORKLOAD,
            "--file",
        ],
        &d.audit_path,
    ))
    .await;
    assert!(ok);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|r| r["outcome"] == "denied"));
    // Nothing matches a day before the records.
    let (ok, out, _) = warrant(args(
        &["audit", "--until", "2000-01-01", "--file"],
        &d.audit_path,
    ))
    .await;
    assert!(ok);
    assert_eq!(out, "no matching records\n");
}

#[tokio::test]
async fn warrant_status_shows_each_budget_as_the_ledger_has_it() {
    if !prereq::require(&[Need::Root]) {
        // The control socket serves root (or its admin group) only.
        return;
    }
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let d = Daemon::start(&pki, "sk-operator-test-key", "").await;
    let charged = traffic(&d, &mock).await;

    let (ok, out, err) = warrant(args(&["status", "--json", "--socket"], &d.control_socket)).await;
    assert!(ok, "{err}");
    let status: Status = serde_json::from_str(&out).unwrap();
    let budgets = status.budgets.unwrap();
    assert_eq!(budgets.lines.len(), 1, "{:?}", budgets.lines);
    let line = &budgets.lines[0];
    assert_eq!((line.workload.as_str(), line.limit), (WORKLOAD, 100_000));
    // The ledger's figure is the audit line's: the served request only (the
    // policy refusal never reached admission, the budget one reserved nothing).
    assert_eq!(line.used, Some(charged));
    assert_eq!(line.in_flight, Some(0));
    assert_eq!(line.room, Room::Now);
    assert_eq!(budgets.over_budget, 1);

    let (ok, out, err) = warrant(args(&["status", "--socket"], &d.control_socket)).await;
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.contains("tokens_per_hour"))
        .unwrap_or_default();
    let words: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        words,
        [
            WORKLOAD,
            "#1",
            "tokens_per_hour",
            "100,000",
            &charged.to_string(),
            "0",
            "now"
        ],
        "{out}"
    );
    assert!(out.contains("AUDIT\n  healthy: writing to"), "{out}");
}

/// The metric names a PromQL text queries: each `warrant_...` word.
fn queried_metrics(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("warrant_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Whether `name` is in an OpenMetrics exposition: a sample of that name,
/// or a family declared by `# TYPE` whose samples take that name (a
/// counter's `_total`, a histogram's `_bucket`, `_sum`, `_count`), for
/// label families with no series yet.
fn exported(name: &str, exposition: &str) -> bool {
    exposition.lines().any(|line| {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split_whitespace();
            let (Some(family), Some(kind)) = (words.next(), words.next()) else {
                return false;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            suffixes.iter().any(|s| format!("{family}{s}") == name)
        } else {
            line.split(['{', ' ']).next() == Some(name)
        }
    })
}

/// GET /metrics of `d`'s metrics, served as the daemon serves them.
async fn scrape(d: &Daemon) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warrant::metrics::serve(d.metrics.clone(), listener));
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
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The shipped Grafana dashboard queries only metrics the daemon exports,
/// and the budget gauges it and the alert rules read are the ledger's
/// figures (the same as `warrant status`).
#[tokio::test]
async fn the_dashboard_queries_only_exported_metrics_and_budget_gauges_follow_the_ledger() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let d = Daemon::start(&pki, "sk-operator-test-key", "").await;
    let charged = traffic(&d, &mock).await;
    // The label families that have series only once their event happened:
    // a quarantine placed and lifted through the daemon's responder; a
    // response rule's trigger and an upstream retry recorded on the
    // daemon's own handles (those events are driven for real by
    // audit_rules.rs and injector_goaway.rs).
    let target = warrant::audit::Target::Workload(WORKLOAD.to_owned());
    d.responder
        .quarantine(target.clone(), "dashboard test", "operator", None);
    d.responder.restore(&target, "operator");
    d.metrics.upstream_retried(OPENAI, "stream refused");
    d.metrics
        .rule_triggers
        .get_or_create(&warrant::metrics::RuleLabels {
            rule: "deny_burst".to_owned(),
        })
        .inc();
    let exposition = scrape(&d).await;

    let dashboard: Value =
        serde_json::from_str(include_str!("../../contrib/grafana/warrant-dashboard.json")).unwrap();
    let mut queried = Vec::new();
    let mut panels = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        panels += 1;
        for target in panel["targets"].as_array().unwrap() {
            queried.extend(queried_metrics(target["expr"].as_str().unwrap()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["definition"].as_str() {
            queried.extend(queried_metrics(query));
        }
    }
    assert!(panels >= 10 && queried.len() >= panels, "{queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| !exported(name, &exposition))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not export: {missing:?}\n{exposition}"
    );
    // So do the alert rules.
    let rules = include_str!("../../contrib/prometheus/warrant-alerts.yml");
    let missing: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .flat_map(queried_metrics)
        .filter(|name| !exported(name, &exposition))
        .collect();
    assert!(
        missing.is_empty(),
        "alerts on unexported metrics: {missing:?}"
    );

    // The budget gauges are the ledger's: the served request's tokens.
    let scrape =
        prometheus_parse::Scrape::parse(exposition.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let gauge = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.get("workload") == Some(WORKLOAD)
                    && s.labels.get("budget") == Some("tokens_per_hour")
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name} is not a gauge: {other:?}"),
            })
            .unwrap_or_else(|| panic!("no {name} for {WORKLOAD}:\n{exposition}"))
    };
    assert_eq!(gauge("warrant_budget_limit"), 100_000.0);
    assert_eq!(gauge("warrant_budget_used"), charged as f64);
    assert_eq!(gauge("warrant_budget_in_flight"), 0.0);
}

/// The shipped alert rules pass `promtool check rules`, and `promtool test
/// rules` proves each alert fires on a synthetic series (and stays quiet
/// on a healthy one): the unit tests name every alert of the rules file.
#[test]
fn the_alert_rules_pass_promtool_and_each_alert_fires_in_its_unit_test() {
    if !prereq::require(&[Need::Program("promtool")]) {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/prometheus");
    let rules = std::fs::read_to_string(dir.join("warrant-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("warrant-alerts.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert_eq!(
        alerts,
        [
            "WarrantCredentialRefreshFailing",
            "WarrantAuditWriteFailing",
            "WarrantQuarantineActive",
            "WarrantBudgetNearExhaustion",
            "WarrantTaggerFailing"
        ]
    );
    for alert in &alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - exp_labels:"
            )),
            "no unit test where {alert} fires"
        );
    }
    for args in [
        ["check", "rules", "warrant-alerts.yml"],
        ["test", "rules", "warrant-alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
