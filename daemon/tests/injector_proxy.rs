//! The injector end to end, in-process and unprivileged: agent-side clients
//! trusting warrant's CA, the injector with `StaticOrigins`, and a mock
//! provider on loopback with its own throwaway CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use http::{StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warrant::{
    provider::Scheme,
    proxy::{GateFuture, GateRequest, Identity, Refusal, RequestGate, Verdict},
};
use warrant_test_support::{
    injector::*,
    logs::Logs,
    pki::*,
    prereq::{self, Need},
    upstream::*,
};

/// Upper bound for anything the tests wait on, so a regression fails
/// instead of hanging. Nothing waits for it to pass.
const DEADLINE: Duration = Duration::from_secs(20);

const H2_H1: [&[u8]; 2] = [b"h2", b"http/1.1"];

fn auth(seen: &Seen) -> Vec<String> {
    seen.headers
        .get_all("authorization")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn http1_agent_gets_the_real_credential_spliced_in_and_the_placeholder_removed() {
    let logs = Logs::capture();
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness = Harness::start(&pki).await;
    let mut agent = harness.h1(mock.addr, OPENAI).await;
    let response = agent
        .send(request(
            OPENAI,
            "/v1/chat/completions",
            &[
                ("authorization", "Bearer placeholder"),
                ("Authorization", "Bearer placeholder"),
                ("accept-encoding", "gzip, br"),
            ],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_11);
    assert_eq!(body_text(response).await, "{\"ok\":true}");
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(auth(&seen[0]), vec![format!("Bearer {OPENAI_KEY}")]);
    assert_eq!(seen[0].uri.path(), "/v1/chat/completions");
    assert!(!format!("{:?}", seen[0].headers).contains(PLACEHOLDER));
    // Identity, so that an echoed credential can be found and redacted.
    assert_eq!(seen[0].headers["accept-encoding"], "identity");
    logs.assert_none_of(&SECRETS);
}

#[tokio::test]
async fn http2_agent_gets_the_real_credential_over_h2() {
    let logs = Logs::capture();
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness = Harness::start(&pki).await;
    let mut agent = harness.h2(mock.addr, OPENAI).await;
    let response = agent
        .send(request(
            OPENAI,
            "/v1/responses",
            &[("authorization", "Bearer placeholder")],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    body_text(response).await;
    let seen = mock.seen();
    assert_eq!(auth(&seen[0]), vec![format!("Bearer {OPENAI_KEY}")]);
    // The upstream spoke h2 too (negotiated by ALPN on the pooled connection).
    assert_eq!(seen[0].version, Version::HTTP_2);
    logs.assert_none_of(&SECRETS);
}

#[tokio::test]
async fn an_h2_agent_reaches_an_http1_only_upstream() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let harness = Harness::start(&pki).await;
    let mut agent = harness.h2(mock.addr, OPENAI).await;
    let response = agent
        .send(request(
            OPENAI,
            "/v1/models",
            &[("authorization", "Bearer placeholder")],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    body_text(response).await;
    let seen = mock.seen();
    assert_eq!(seen[0].version, Version::HTTP_11);
    // Host as the agent dialled it (the mock is not on 443).
    assert_eq!(
        seen[0].headers.get("host").unwrap().to_str().unwrap(),
        format!("{OPENAI}:{}", mock.addr.port())
    );
    assert_eq!(auth(&seen[0]), vec![format!("Bearer {OPENAI_KEY}")]);
}

#[tokio::test]
async fn upstream_connections_are_pooled_across_agent_connections() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let harness = Harness::start(&pki).await;
    for _ in 0..3 {
        let mut agent = harness.h1(mock.addr, OPENAI).await;
        let response = agent.send(request(OPENAI, "/v1/models", &[])).await;
        body_text(response).await;
    }
    assert_eq!(mock.seen().len(), 3);
    assert_eq!(
        mock.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn the_first_sse_event_reaches_the_agent_before_the_upstream_finishes() {
    for h2 in [false, true] {
        let pki = TestPki::new();
        let mock = Mock::start(&pki, &H2_H1).await;
        let harness = Harness::start(&pki).await;
        let mut agent = if h2 {
            harness.h2(mock.addr, OPENAI).await
        } else {
            harness.h1(mock.addr, OPENAI).await
        };
        let response = agent
            .send(request(
                OPENAI,
                "/v1/sse",
                &[("authorization", "Bearer placeholder")],
            ))
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        // The upstream holds the rest until released: if the injector buffered,
        // this frame would never come.
        let first = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .expect("first SSE event was buffered")
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(&first[..], b"data: {\"n\":1}\n\n");
        mock.release.notify_one();
        let rest = tokio::time::timeout(DEADLINE, body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(&rest[..], b"data: {\"n\":2}\n\ndata: [DONE]\n\n");
    }
}

#[tokio::test]
async fn an_unknown_sni_is_spliced_and_the_client_sees_the_real_servers_certificate() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &[b"http/1.1"]).await;
    let harness = Harness::start(&pki).await;
    let tcp = harness.connect(mock.addr).await;
    // Trusting only the mock's CA: this handshake succeeds only if the
    // injector passed the bytes through to the mock untouched.
    let tls = tls_over(tcp, pki.roots(), "other.example", &[b"http/1.1"]).await;
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(presented, mock.cert);
    let mut agent = Sender::h1(tls).await;
    let response = agent
        .send(request(
            "other.example",
            "/anything",
            &[("authorization", "Bearer placeholder")],
        ))
        .await;
    body_text(response).await;
    // Passed through untouched: the placeholder arrived, no credential did.
    assert_eq!(auth(&mock.seen()[0]), vec!["Bearer placeholder".to_owned()]);
}

#[tokio::test]
async fn a_connection_without_an_origin_is_closed_without_a_response() {
    let logs = Logs::capture();
    let pki = TestPki::new();
    let harness = Harness::start(&pki).await;
    let mut tcp = harness.connect_directly().await;
    let _ = tcp
        .write_all(b"GET / HTTP/1.1\r\nhost: api.openai.com\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(DEADLINE, tcp.read(&mut buf))
        .await
        .expect("the injector kept a connection without an Origin open");
    // EOF or a reset: either way, not one byte of response.
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(logs.text().contains("without an Origin"));
}

#[tokio::test]
async fn an_unreachable_upstream_gives_502_in_each_providers_error_shape() {
    let logs = Logs::capture();
    let pki = TestPki::new();
    let harness = Harness::start(&pki).await;
    let down = closed_port().await;

    let mut openai = harness.h1(down, OPENAI).await;
    let response = openai
        .send(request(OPENAI, "/v1/chat/completions", &[]))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("warrant") && message.contains(OPENAI),
        "{message}"
    );
    assert!(body["error"]["type"].is_string());

    let mut anthropic = harness.h2(down, ANTHROPIC).await;
    let response = anthropic
        .send(request(ANTHROPIC, "/v1/messages", &[]))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(body["type"], "error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("warrant")
    );

    let mut gemini = harness.h1(down, GEMINI).await;
    let response = gemini
        .send(request(GEMINI, "/v1beta/models/m:generateContent", &[]))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(body["error"]["code"], 502);
    assert!(body["error"]["status"].is_string());
    logs.assert_none_of(&SECRETS);
}

#[tokio::test]
async fn an_upstream_tls_failure_gives_502_naming_the_cause() {
    let pki = TestPki::new();
    // A mock whose CA the injector does not trust for this upstream.
    let other = TestPki::new();
    let mock = Mock::start(&other, &H2_H1).await;
    let harness = Harness::start(&pki).await;
    let mut agent = harness.h1(mock.addr, OPENAI).await;
    let response = agent.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let text = body_text(response).await;
    assert!(text.contains("TLS"), "{text}");
    assert!(mock.seen().is_empty());
}

#[tokio::test]
async fn a_credential_echoed_by_the_upstream_is_redacted() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness = Harness::start(&pki).await;
    for h2 in [false, true] {
        let mut agent = if h2 {
            harness.h2(mock.addr, ANTHROPIC).await
        } else {
            harness.h1(mock.addr, ANTHROPIC).await
        };
        let response = agent
            .send(request(
                ANTHROPIC,
                "/v1/echo",
                &[("x-api-key", "placeholder")],
            ))
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let header = response.headers()["x-request-key"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(header, "*".repeat(ANTHROPIC_KEY.len()));
        let text = body_text(response).await;
        assert!(
            !text.contains(ANTHROPIC_KEY),
            "echoed key reached the agent"
        );
        assert!(text.contains(&"*".repeat(ANTHROPIC_KEY.len())), "{text}");
    }
    // It did reach the upstream, as x-api-key (the agent's form).
    let seen = mock.seen();
    assert_eq!(seen[0].headers.get("x-api-key").unwrap(), ANTHROPIC_KEY);
}

#[tokio::test]
async fn a_real_looking_agent_key_is_refused_and_nothing_is_forwarded() {
    let logs = Logs::capture();
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness = Harness::start(&pki).await;
    let leaked = "sk-proj-LEAKED0123456789abcdefghijklmnopqrstuv";
    let mut agent = harness.h1(mock.addr, OPENAI).await;
    let response = agent
        .send(request(
            OPENAI,
            "/v1/chat/completions",
            &[("authorization", &format!("Bearer {leaked}"))],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let text = body_text(response).await;
    assert!(!text.contains(leaked));
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("warrant")
    );
    assert!(mock.seen().is_empty());
    assert!(
        !logs.text().contains(leaked),
        "the agent's key appeared in the logs"
    );
    assert!(
        logs.text()
            .contains(&warrant::secret::fingerprint(leaked.as_bytes()))
    );
}

#[tokio::test]
async fn with_agent_keys_warn_a_real_looking_key_is_replaced_and_forwarded() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness = Harness::start_with(&pki, "[proxy]\nagent_keys = \"warn\"", None).await;
    let leaked = "sk-proj-LEAKED0123456789abcdefghijklmnopqrstuv";
    let mut agent = harness.h1(mock.addr, OPENAI).await;
    let response = agent
        .send(request(
            OPENAI,
            "/v1/models",
            &[("authorization", &format!("Bearer {leaked}"))],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    body_text(response).await;
    assert_eq!(auth(&mock.seen()[0]), vec![format!("Bearer {OPENAI_KEY}")]);
}

#[tokio::test]
async fn gemini_gets_x_goog_api_key_and_loses_the_key_query_parameter() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness = Harness::start(&pki).await;
    let mut agent = harness.h2(mock.addr, GEMINI).await;
    let response = agent
        .send(request(
            GEMINI,
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key=placeholder",
            &[("x-goog-api-key", "placeholder")],
        ))
        .await;
    body_text(response).await;
    let seen = &mock.seen()[0];
    assert_eq!(seen.headers.get("x-goog-api-key").unwrap(), GEMINI_KEY);
    assert_eq!(seen.uri.query(), Some("alt=sse"));
}

struct RefuseAll;

/// A gate that allows only model "gpt-4o", as the parse read it from the
/// body prefix, and records the prefixes it saw.
struct ModelGate {
    prefixes: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl RequestGate for ModelGate {
    fn body_prefix_len(&self) -> usize {
        20
    }

    fn authorize<'a>(
        &'a self,
        _: &'a Identity,
        request: GateRequest<'a>,
    ) -> GateFuture<'a, Result<Verdict, Refusal>> {
        self.prefixes
            .lock()
            .unwrap()
            .push(request.body_prefix.to_vec());
        // The gate decides on the one parse, which read the prefix.
        let allowed =
            request.scheme == Scheme::OpenAi && request.request.model.as_deref() == Some("gpt-4o");
        Box::pin(async move {
            if allowed {
                Ok(Verdict::Allow)
            } else {
                Err(Refusal::policy(StatusCode::FORBIDDEN, "model not allowed"))
            }
        })
    }
}

impl RequestGate for RefuseAll {
    fn authorize<'a>(
        &'a self,
        _: &'a Identity,
        request: GateRequest<'a>,
    ) -> GateFuture<'a, Result<Verdict, Refusal>> {
        let message = format!(
            "{} {} is not allowed for uid {}",
            request.request.method, request.request.path, request.origin.uid
        );
        Box::pin(async move { Err(Refusal::policy(StatusCode::FORBIDDEN, message)) })
    }
}

#[tokio::test]
async fn a_gate_refusal_is_answered_in_the_providers_shape_and_nothing_is_forwarded() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness = Harness::start_with(&pki, "", Some(Arc::new(RefuseAll))).await;
    let mut agent = harness.h1(mock.addr, ANTHROPIC).await;
    let response = agent.send(request(ANTHROPIC, "/v1/messages", &[])).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(body["type"], "error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/messages is not allowed for uid 1001")
    );
    assert!(mock.seen().is_empty());
}

#[tokio::test]
async fn a_websocket_upgrade_gets_the_credential_and_is_relayed_both_ways() {
    let pki = TestPki::new();
    // Like the providers, the upstream offers h2 first: the upgrade must
    // still go over HTTP/1.1 (an h2 stream cannot carry Upgrade).
    let mock = Mock::start(&pki, &[b"h2", b"http/1.1"]).await;
    let harness = Harness::start(&pki).await;
    // A pooled h2 connection to the upstream is open already.
    let mut warm = harness.h1(mock.addr, OPENAI).await;
    let response = warm
        .send(request(
            OPENAI,
            "/v1/models",
            &[("authorization", "Bearer placeholder")],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut agent = harness.h1(mock.addr, OPENAI).await;
    let mut req = request(
        OPENAI,
        "/v1/realtime",
        &[
            ("authorization", "Bearer placeholder"),
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
        ],
    );
    *req.method_mut() = http::Method::GET;
    let response = agent.send(req).await;
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = tokio::time::timeout(DEADLINE, hyper::upgrade::on(response))
        .await
        .unwrap()
        .unwrap();
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, protocol::Role};
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    ws.send(Message::text("hello realtime")).await.unwrap();
    let echo = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text("hello realtime"));
    let seen = mock.seen();
    assert_eq!(seen[0].version, http::Version::HTTP_2, "the pool speaks h2");
    let upgrade = seen
        .iter()
        .find(|s| s.uri.path() == "/v1/realtime")
        .unwrap();
    assert_eq!(upgrade.version, http::Version::HTTP_11);
    assert_eq!(auth(upgrade), vec![format!("Bearer {OPENAI_KEY}")]);
}

async fn plain_request(
    harness: &Harness,
    mock: &Mock,
    host: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let tcp = harness.connect(mock.addr).await;
    let mut agent = Sender::h1(tcp).await;
    let mut req = http::Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("host", format!("{host}:{}", mock.addr.port()));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let response = agent.send(req).await;
    let status = response.status();
    (status, body_text(response).await)
}

#[tokio::test]
async fn plain_http_to_an_opted_in_gateway_is_proxied_with_the_credential() {
    let pki = TestPki::new();
    let mock = Mock::start_plain(&pki, "127.0.0.1").await;
    let harness = Harness::start(&pki).await;
    let (status, _) = plain_request(
        &harness,
        &mock,
        "localhost",
        &[("x-gateway-token", "placeholder")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = &mock.seen()[0];
    assert_eq!(seen.headers.get("x-gateway-token").unwrap(), OPENAI_KEY);
    assert_eq!(
        seen.headers.get("host").unwrap().to_str().unwrap(),
        format!("localhost:{}", mock.addr.port())
    );
}

#[tokio::test]
async fn plain_http_to_an_address_the_gateway_does_not_resolve_to_gets_no_credential() {
    let logs = Logs::capture();
    let pki = TestPki::new();
    // localhost is 127.0.0.1 (and ::1), not 127.0.0.2: an agent claiming
    // Host: localhost while dialling elsewhere must not get the credential.
    let mock = Mock::start_plain(&pki, "127.0.0.2").await;
    let harness = Harness::start(&pki).await;
    let (status, body) = plain_request(
        &harness,
        &mock,
        "localhost",
        &[("x-gateway-token", "placeholder")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("warrant"), "{body}");
    assert!(mock.seen().is_empty());
    logs.assert_none_of(&SECRETS);
}

#[tokio::test]
async fn plain_http_to_a_tls_only_upstream_is_passed_through_without_a_credential() {
    let pki = TestPki::new();
    let mock = Mock::start_plain(&pki, "127.0.0.1").await;
    let harness = Harness::start(&pki).await;
    let (status, _) = plain_request(
        &harness,
        &mock,
        OPENAI,
        &[("authorization", "Bearer placeholder")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(auth(&mock.seen()[0]), vec!["Bearer placeholder".to_owned()]);
}

#[tokio::test]
async fn plain_http_to_another_host_is_passed_through_without_a_credential() {
    let pki = TestPki::new();
    let mock = Mock::start_plain(&pki, "127.0.0.1").await;
    let harness = Harness::start(&pki).await;
    let (status, _) = plain_request(
        &harness,
        &mock,
        "example.internal",
        &[("authorization", "Bearer placeholder")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(auth(&mock.seen()[0]), vec!["Bearer placeholder".to_owned()]);
}

#[tokio::test]
async fn an_unavailable_credential_gives_503_in_the_providers_shape() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness = Harness::start(&pki).await;
    let mut agent = harness.h1(mock.addr, MISSING).await;
    let response = agent
        .send(request(MISSING, "/v1/chat/completions", &[]))
        .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("warrant")
    );
    assert!(mock.seen().is_empty());
}

#[tokio::test]
async fn malformed_tls_closes_only_that_connection() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness = Harness::start(&pki).await;
    let mut bad = harness.connect(mock.addr).await;
    // A handshake record header followed by garbage.
    bad.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(DEADLINE, bad.read(&mut buf))
        .await
        .unwrap();
    // The injector still serves others.
    let mut agent = harness.h1(mock.addr, OPENAI).await;
    let response = agent.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(response.status(), StatusCode::OK);
}

/// Reads until EOF or an error; true if no byte of response came.
async fn closed_without_response(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("the connection stayed open"),
    }
}

#[tokio::test]
async fn a_client_that_never_sends_its_hello_is_closed_after_the_header_timeout() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness = Harness::start_with(&pki, "[proxy]\nheader_read_timeout_secs = 1", None).await;
    let mut silent = harness.connect(mock.addr).await;
    assert!(closed_without_response(&mut silent).await);
    // Half a ClientHello, then nothing.
    let mut slow = harness.connect(mock.addr).await;
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    assert!(closed_without_response(&mut slow).await);
    assert!(mock.seen().is_empty());
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let logs = Logs::capture();
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness = Harness::start_with(&pki, "[proxy]\nmax_connections = 1", None).await;
    let mut first = harness.h1(mock.addr, OPENAI).await;
    let response = first.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut second = harness.connect(mock.addr).await;
    assert!(closed_without_response(&mut second).await);
    assert!(logs.text().contains("connection cap reached"));
    // The first connection still works.
    let response = first.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_after_the_idle_timeout() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness = Harness::start_with(
        &pki,
        // The header timeout is beyond DEADLINE: only the idle timer can close.
        "[proxy]\nidle_timeout_secs = 1\nheader_read_timeout_secs = 60",
        None,
    )
    .await;
    let mut tls = harness.tls(mock.addr, OPENAI, &[b"h2"]).await;
    // Without a client connection driving h2, the only bytes the injector
    // sends are its SETTINGS; then it must close.
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection stayed open");
}

#[tokio::test]
async fn request_headers_over_the_limit_are_refused_without_forwarding() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness = Harness::start_with(&pki, "[proxy]\nmax_header_bytes = 8192", None).await;
    let mut tls = harness.tls(mock.addr, OPENAI, &[b"http/1.1"]).await;
    let big = "a".repeat(20_000);
    let head = format!("GET /v1/models HTTP/1.1\r\nhost: {OPENAI}\r\nx-big: {big}\r\n\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut response))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    assert!(mock.seen().is_empty());
}

#[tokio::test]
async fn a_client_trusting_the_written_trust_bundle_verifies_the_injector() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness = Harness::start(&pki).await;
    let bundle = std::fs::read_to_string(&harness.trust_bundle).unwrap();
    let tcp = harness.connect(mock.addr).await;
    // Any letter case of the SNI gets the intercepted host's leaf.
    let tls = tls_over(
        tcp,
        roots_from_pem(&bundle),
        "API.OpenAI.com",
        &[b"http/1.1"],
    )
    .await;
    let mut agent = Sender::h1(tls).await;
    let response = agent.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_in_time_gives_504_in_the_providers_shape() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let harness =
        Harness::start_with(&pki, "[proxy]\nupstream_response_timeout_secs = 1", None).await;
    let mut agent = harness.h1(mock.addr, GEMINI).await;
    let response = tokio::time::timeout(DEADLINE, agent.send(request(GEMINI, "/v1/hang", &[])))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    let body: serde_json::Value = serde_json::from_str(&body_text(response).await).unwrap();
    assert_eq!(body["error"]["code"], 504);
    assert_eq!(body["error"]["status"], "DEADLINE_EXCEEDED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("warrant")
    );
    mock.release.notify_one();
}

#[tokio::test]
async fn the_ipv6_listener_serves_the_same_injector() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    if !prereq::require(&[Need::Ipv6Loopback]) {
        return;
    }
    let harness = Harness::start(&pki).await;
    let tcp = harness
        .connect6(mock.addr)
        .await
        .expect("the injector listens on ::1");
    let tls = tls_over(
        tcp,
        roots_from_pem(&harness.warrant_ca_pem),
        OPENAI,
        &[b"h2"],
    )
    .await;
    let mut agent = Sender::h2(tls).await;
    let response = agent.send(request(OPENAI, "/v1/models", &[])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(auth(&mock.seen()[0]), vec![format!("Bearer {OPENAI_KEY}")]);
}

#[tokio::test]
async fn the_gate_sees_the_body_prefix_it_asks_for_and_the_whole_body_is_forwarded() {
    let pki = TestPki::new();
    let mock = Mock::start(&pki, &H2_H1).await;
    let gate = Arc::new(ModelGate {
        prefixes: std::sync::Mutex::new(Vec::new()),
    });
    let harness = Harness::start_with(&pki, "", Some(gate.clone())).await;
    for h2 in [false, true] {
        let mut agent = if h2 {
            harness.h2(mock.addr, OPENAI).await
        } else {
            harness.h1(mock.addr, OPENAI).await
        };
        // 18 bytes of object and 100 of whitespace: more than the 20
        // asked, and the object ends within them.
        let padded = format!("{{\"model\":\"gpt-4o\"}}{}", " ".repeat(100));
        let mut allowed = request(OPENAI, "/v1/chat/completions", &[]);
        *allowed.body_mut() = http_body_util::Full::new(bytes::Bytes::from(padded));
        let response = agent.send(allowed).await;
        assert_eq!(response.status(), StatusCode::OK);
        body_text(response).await;
        let mut other = request(OPENAI, "/v1/chat/completions", &[]);
        *other.body_mut() =
            http_body_util::Full::new(bytes::Bytes::from_static(b"{\"model\":\"o3-pro\"}"));
        let response = agent.send(other).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        body_text(response).await;
        // An object that does not end within the bytes the gate reads could
        // name its model again after them: refused before the gate decides.
        let mut long = request(OPENAI, "/v1/chat/completions", &[]);
        *long.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(
            b"{\"model\":\"gpt-4o\",\"messages\":[],\"model\":\"o3-pro\"}",
        ));
        let response = agent.send(long).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let text = body_text(response).await;
        assert!(text.contains("first 20 bytes"), "{text}");
    }
    let prefixes = gate.prefixes.lock().unwrap().clone();
    assert_eq!(prefixes.len(), 4);
    assert!(prefixes.iter().all(|p| p.len() <= 20), "{prefixes:?}");
    assert_eq!(mock.seen().len(), 2);
    let padded = format!("{{\"model\":\"gpt-4o\"}}{}", " ".repeat(100));
    assert_eq!(mock.bodies()[0], padded.as_bytes());
    assert_eq!(mock.bodies()[1], padded.as_bytes());
}
