//! Automated response through the proxy: each rule quarantines (audit
//! record, metric, live connections closed) and is lifted again. The rules'
//! clock is the harness's, moved by the test. Loopback only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http_body_util::BodyExt;
use warrant::response::Target;
use warrant_test_support::{injector::*, monitored::*, pki::*, upstream::*, wait::eventually};

fn triggers(h: &Monitored, rule: &str) -> bool {
    h.responder
        .audit()
        .metrics()
        .render()
        .contains(&format!("warrant_rule_triggers_total{{rule=\"{rule}\"}} 1"))
}

fn quarantine_records(h: &Monitored, actor: &str) -> usize {
    h.audit_lines()
        .iter()
        .filter(|l| l["kind"] == "quarantine" && l["actor"] == actor)
        .count()
}

#[tokio::test]
async fn n_policy_denials_within_the_window_quarantine_the_workload_until_restored() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let h = Monitored::start(
        &pki,
        None,
        "[response]\ndenials = 3\ndenial_window_secs = 60\n",
    )
    .await;
    let mut agent = h.h1(mock.addr, OPENAI).await;
    for _ in 0..2 {
        let r = agent.send(request(OPENAI, "/v1/deny/x", &[])).await;
        assert_eq!(r.status(), 403);
        body_text(r).await;
    }
    // Two denials: not yet.
    let r = agent.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(r.status(), 200);
    body_text(r).await;
    let r = agent.send(request(OPENAI, "/v1/deny/x", &[])).await;
    body_text(r).await;
    eventually("the quarantine", || quarantine_records(&h, "denials") == 1).await;
    assert!(triggers(&h, "denials"));
    // The workload's connection was closed; a new one is refused.
    let mut again = h.h1(mock.addr, OPENAI).await;
    let r = again.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(r.status(), 403);
    assert!(body_text(r).await.contains("3 policy denials within 60 s"));
    // Un-triggered: restored, served again.
    assert!(
        h.responder
            .restore(&Target::Workload(WORKLOAD.into()), "test")
            .is_some()
    );
    let r = again.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_burst_over_the_rate_baseline_quarantines_the_workload_until_restored() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let h = Monitored::start(
        &pki,
        None,
        "[response]\nrate_multiple = 3.0\nrate_window_secs = 60\nrate_baseline_windows = 2\nrate_min_requests = 10\n",
    )
    .await;
    let mut agent = h.h1(mock.addr, OPENAI).await;
    // One request, and its audit line written: the rules have counted it
    // (they run after the line) before the test moves their clock.
    let mut sent = 0;
    let mut ok = async |agent: &mut Sender| {
        let r = agent.send(request(OPENAI, "/v1/models", &[])).await;
        assert_eq!(r.status(), 200);
        body_text(r).await;
        sent += 1;
        let want = sent;
        eventually("the request's audit line", || {
            h.audit_lines()
                .iter()
                .filter(|l| l["kind"] == "request")
                .count()
                >= want
        })
        .await;
    };
    // Two windows of two requests each: the baseline is 2 a window.
    for _ in 0..2 {
        ok(&mut agent).await;
        ok(&mut agent).await;
        h.advance(Duration::from_secs(60));
    }
    // Nine in the third window: over 3 x 2, but under rate_min_requests.
    for _ in 0..9 {
        ok(&mut agent).await;
    }
    assert_eq!(quarantine_records(&h, "rate"), 0);
    // The tenth trips the rule.
    ok(&mut agent).await;
    eventually("the quarantine", || quarantine_records(&h, "rate") == 1).await;
    assert!(triggers(&h, "rate"));
    let mut again = h.h1(mock.addr, OPENAI).await;
    let r = again.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(r.status(), 403);
    let text = body_text(r).await;
    assert!(
        text.contains("10 requests in 60 s, over 3 x its baseline of 2.0"),
        "{text}"
    );
    assert!(
        h.responder
            .restore(&Target::Workload(WORKLOAD.into()), "test")
            .is_some()
    );
    ok(&mut again).await;
}

#[tokio::test]
async fn a_real_key_from_an_agent_quarantines_its_workload_and_the_rule_can_be_off() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let leaked = "sk-proj-LEAKED0123456789abcdefghijklmnopqrstuv";
    let h = Monitored::start(&pki, None, "").await;
    let mut agent = h.h1(mock.addr, OPENAI).await;
    let r = agent
        .send(request(
            OPENAI,
            "/v1/models",
            &[("authorization", &format!("Bearer {leaked}"))],
        ))
        .await;
    assert_eq!(r.status(), 403);
    assert!(body_text(r).await.contains("looks like a real API key"));
    eventually("the quarantine", || {
        quarantine_records(&h, "agent_key") == 1
    })
    .await;
    assert!(triggers(&h, "agent_key"));
    // Refused once identified: the workload is quarantined, so another of
    // its processes (a fork) is refused too.
    let quarantined = h.responder.quarantines().list(jiff::Timestamp::now());
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].target, Target::Workload(WORKLOAD.into()));
    let mut fork = h.h1_as(mock.addr, OPENAI, 4243).await;
    let r = fork.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(r.status(), 403);
    assert!(body_text(r).await.contains("quarantined"));
    assert!(
        h.responder
            .restore(&Target::Workload(WORKLOAD.into()), "test")
            .is_some()
    );
    let mut again = h.h1(mock.addr, OPENAI).await;
    let r = again.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(r.status(), 200);
    body_text(r).await;
    let fingerprint = warrant::secret::fingerprint(leaked.as_bytes());
    eventually("the records", || h.audit_text().contains(&fingerprint)).await;
    let audit = h.audit_text();
    assert!(!audit.contains(leaked), "only the fingerprint is recorded");
    assert!(audit.contains(&warrant::secret::fingerprint(leaked.as_bytes())));

    // Off: the finding is still refused and recorded, nobody is quarantined.
    let off = Monitored::start(&pki, None, "[response]\nagent_key = false\n").await;
    let mut agent = off.h1(mock.addr, OPENAI).await;
    let r = agent
        .send(request(
            OPENAI,
            "/v1/models",
            &[("authorization", &format!("Bearer {leaked}"))],
        ))
        .await;
    assert_eq!(r.status(), 403);
    body_text(r).await;
    let r = agent.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(r.status(), 200);
    assert!(
        off.responder
            .quarantines()
            .list(jiff::Timestamp::now())
            .is_empty()
    );
}

#[tokio::test]
async fn an_executable_changed_on_disk_behind_a_live_workload_is_revoked() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let h = Monitored::start(&pki, None, "").await;
    let mut agent = h.h1(mock.addr, OPENAI).await;
    let response = agent.send(request(OPENAI, "/v1/sse", &[])).await;
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();

    // Unchanged: nothing happens.
    assert!(h.responder.check_executables().await.is_empty());
    let original = std::fs::read(&h.exe).unwrap();
    std::fs::write(&h.exe, b"#!/bin/sh\necho version 2 (tampered)\n").unwrap();
    let applied = h.responder.check_executables().await;
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].0, Target::Workload(WORKLOAD.into()));
    assert!(
        applied[0].1.reason.contains("changed on disk"),
        "{}",
        applied[0].1.reason
    );
    // The live stream is closed.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(
        ended.is_ok(),
        "the stream of the changed workload was not closed"
    );
    assert!(triggers(&h, "exe_changed"));
    eventually("the quarantine record", || {
        quarantine_records(&h, "exe_changed") == 1
    })
    .await;

    // Un-triggered: the file is back, the quarantine lifted; a new
    // connection is served and the check finds nothing.
    std::fs::write(&h.exe, original).unwrap();
    assert!(
        h.responder
            .restore(&Target::Workload(WORKLOAD.into()), "test")
            .is_some()
    );
    let mut again = h.h1(mock.addr, OPENAI).await;
    let response = again.send(request(OPENAI, "/v1/sse", &[])).await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    assert!(h.responder.check_executables().await.is_empty());
    mock.release.notify_waiters();
}

/// The refusal that triggers a quarantine is delivered whole before the
/// quarantine closes the connection it came on: over HTTP/2 the agent gets
/// the 403 and its reason, then the connection goes away (GOAWAY), so its
/// next request fails.
#[tokio::test]
async fn over_http2_the_refusal_that_triggers_a_quarantine_arrives_before_the_close() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"h2", b"http/1.1"]).await;
    let leaked = "sk-proj-LEAKED0123456789abcdefghijklmnopqrstuv";
    let h = Monitored::start(&pki, None, "").await;
    let mut agent = h.h2(mock.addr, OPENAI).await;
    let r = agent
        .try_send(request(
            OPENAI,
            "/v1/models",
            &[("authorization", &format!("Bearer {leaked}"))],
        ))
        .await
        .expect("the refusal's head arrives");
    assert_eq!(r.status(), 403);
    let body = r
        .into_body()
        .collect()
        .await
        .expect("the refusal's body arrives whole")
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("looks like a real API key"), "{body}");
    eventually("the quarantine", || {
        quarantine_records(&h, "agent_key") == 1
    })
    .await;
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        agent.try_send(request(OPENAI, "/v1/models", &[])),
    )
    .await
    .expect("the closed connection answers at once");
    assert!(next.is_err(), "the quarantine closed the connection");
}
