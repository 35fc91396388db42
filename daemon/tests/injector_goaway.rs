//! Requests an HTTP/2 upstream did not process (RST_STREAM with
//! REFUSED_STREAM, or left out by a GOAWAY) are sent once more on a new
//! upstream connection, with the credential, and the agent sees only the
//! second answer. A failure after processing may have begun, or a body too
//! large to keep, still gives the agent a 502.
//!
//! The upstream is an h2 server built on the `h2` crate, scripted per
//! connection, over TLS on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use h2::{Reason, RecvStream};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::server::TlsStream;
use warrant_test_support::{injector::*, logs::Logs, pki::*};

/// Upper bound for anything the tests wait on, so a regression fails
/// instead of hanging. Nothing waits for it to pass.
const DEADLINE: Duration = Duration::from_secs(20);

/// How the upstream treats its first connection; later ones answer 200.
#[derive(Clone, Copy, PartialEq, Eq)]
enum First {
    /// RST_STREAM(REFUSED_STREAM) as soon as the request head came.
    Refuse,
    /// Reads the whole body, then RST_STREAM(REFUSED_STREAM).
    RefuseAfterReading,
    /// GOAWAY(NO_ERROR) with last-stream-id 0 before reading any request:
    /// every request on the connection is left out.
    GoAway,
    /// Reads the whole body, then RST_STREAM(INTERNAL_ERROR): processing
    /// may have begun.
    FailAfterReading,
}

/// A request as the upstream received it.
#[derive(Debug, Clone)]
struct Attempt {
    /// 1 for the first connection the upstream accepted, and so on.
    connection: usize,
    authorization: Option<String>,
    body: Vec<u8>,
}

struct Upstream {
    addr: SocketAddr,
    /// Connections that completed the TLS handshake.
    connections: Arc<AtomicUsize>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
}

impl Upstream {
    async fn start(pki: &TestPki, first: First) -> Upstream {
        let acceptor = pki.acceptor(&[b"h2"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (connections.clone(), attempts.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, count, seen) = (acceptor.clone(), count.clone(), seen.clone());
                tokio::spawn(async move {
                    // Counted once TLS is up: a socket closed before that
                    // could not carry a request.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let connection = count.fetch_add(1, Ordering::SeqCst) + 1;
                    let script = (connection == 1).then_some(first);
                    serve(tls, connection, script, seen).await;
                });
            }
        });
        Upstream {
            addr,
            connections,
            attempts,
        }
    }

    fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }
}

async fn serve(
    tls: TlsStream<TcpStream>,
    connection: usize,
    script: Option<First>,
    seen: Arc<Mutex<Vec<Attempt>>>,
) {
    let io = KeepOpen(Arc::new(Mutex::new(tls)));
    let mut conn = h2::server::handshake(io.clone()).await.unwrap();
    if script == Some(First::GoAway) {
        // Right after the preface, before any HEADERS is read: the
        // last-stream-id is 0 whenever the request arrives.
        conn.abrupt_shutdown(Reason::NO_ERROR);
        while let Some(Ok(_)) = conn.accept().await {}
        // Read on until the client closes, so the close is a FIN, never a
        // reset that could overtake the GOAWAY.
        drain(io).await;
        return;
    }
    while let Some(Ok((request, respond))) = conn.accept().await {
        let seen = seen.clone();
        tokio::spawn(async move {
            let (parts, body) = request.into_parts();
            let authorization = parts
                .headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            let mut respond = respond;
            let record = |body: Vec<u8>| {
                seen.lock().unwrap().push(Attempt {
                    connection,
                    authorization: authorization.clone(),
                    body,
                });
            };
            match script {
                Some(First::Refuse) => {
                    record(Vec::new());
                    respond.send_reset(Reason::REFUSED_STREAM);
                }
                Some(First::RefuseAfterReading) => {
                    record(read_all(body).await);
                    respond.send_reset(Reason::REFUSED_STREAM);
                }
                Some(First::FailAfterReading) => {
                    record(read_all(body).await);
                    respond.send_reset(Reason::INTERNAL_ERROR);
                }
                Some(First::GoAway) => unreachable!("handled per connection"),
                None => {
                    record(read_all(body).await);
                    let response = Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", "application/json")
                        .body(())
                        .unwrap();
                    let mut send = respond.send_response(response, false).unwrap();
                    send.send_data(Bytes::from_static(b"{\"ok\":true}"), true)
                        .unwrap();
                }
            }
        });
    }
}

async fn read_all(mut body: RecvStream) -> Vec<u8> {
    let mut all = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        // Lets the client send on past the first window.
        body.flow_control().release_capacity(chunk.len()).unwrap();
        all.extend_from_slice(&chunk);
    }
    all
}

async fn drain(mut io: KeepOpen) {
    let mut buf = [0u8; 4096];
    while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// The upstream's TLS stream, shared so that it outlives the h2 connection
/// (which closes its transport as soon as it has sent an abrupt GOAWAY).
#[derive(Clone)]
struct KeepOpen(Arc<Mutex<TlsStream<TcpStream>>>);

impl AsyncRead for KeepOpen {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.lock().unwrap()).poll_read(cx, buf)
    }
}

impl AsyncWrite for KeepOpen {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.lock().unwrap()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.lock().unwrap()).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Flushed, not closed: `drain` reads on.
        Pin::new(&mut *self.0.lock().unwrap()).poll_flush(cx)
    }
}

/// A chat completion request with a placeholder key and `body`.
fn chat(body: Vec<u8>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(format!("https://{OPENAI}/v1/chat/completions"))
        .header("host", OPENAI)
        .header("content-type", "application/json")
        .header("authorization", "Bearer placeholder")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// A JSON body of `len` bytes.
fn json_of_len(len: usize) -> Vec<u8> {
    let head = b"{\"model\":\"gpt-4o\",\"input\":\"";
    let tail = b"\"}";
    let mut body = head.to_vec();
    body.resize(len - tail.len(), b'a');
    body.extend_from_slice(tail);
    body
}

async fn send(agent: &mut Sender, req: Request<Full<Bytes>>) -> (StatusCode, String) {
    tokio::time::timeout(DEADLINE, async {
        let response = agent.send(req).await;
        let status = response.status();
        (status, body_text(response).await)
    })
    .await
    .expect("the injector answered")
}

/// `warrant_upstream_retries_total` for reasons containing `reason`.
fn retries(harness: &Harness, reason: &str) -> u64 {
    harness
        .responder
        .audit()
        .metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with("warrant_upstream_retries_total{"))
        .filter(|l| l.contains(&format!("reason=\"{reason}")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn real_key() -> Option<String> {
    Some(format!("Bearer {OPENAI_KEY}"))
}

#[tokio::test]
async fn a_refused_stream_is_sent_again_on_a_new_connection_with_the_credential() {
    let logs = Logs::capture();
    let pki = TestPki::new();
    let upstream = Upstream::start(&pki, First::Refuse).await;
    let harness = Harness::start(&pki).await;
    let mut agent = harness.h2(upstream.addr, OPENAI).await;

    let body = json_of_len(200);
    let (status, text) = send(&mut agent, chat(body.clone())).await;

    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(text, "{\"ok\":true}");
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    let attempts = upstream.attempts();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0].connection, 1);
    assert_eq!(attempts[0].authorization, real_key());
    // The second attempt came on the second connection, not the pooled one.
    assert_eq!(attempts[1].connection, 2);
    assert_eq!(attempts[1].authorization, real_key());
    assert_eq!(attempts[1].body, body);
    assert!(logs.text().contains("sending it again on a new connection"));
    assert_eq!(retries(&harness, "stream refused"), 1);
    logs.assert_none_of(&SECRETS);
}

#[tokio::test]
async fn a_body_already_sent_in_part_is_replayed_whole_after_a_refusal() {
    let logs = Logs::capture();
    let pki = TestPki::new();
    let upstream = Upstream::start(&pki, First::RefuseAfterReading).await;
    let harness = Harness::start(&pki).await;
    // An HTTP/1.1 agent: the body comes with a Content-Length, which the
    // replayed body must still match.
    let mut agent = harness.h1(upstream.addr, OPENAI).await;

    // Several DATA frames (16 KiB each), all under the 64 KiB kept.
    let body = json_of_len(40 * 1024);
    let (status, text) = send(&mut agent, chat(body.clone())).await;

    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(text, "{\"ok\":true}");
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    let attempts = upstream.attempts();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    // The first attempt took the whole body from the agent before the
    // refusal; the retry gave all of it again.
    assert_eq!(attempts[0].body, body);
    assert_eq!(attempts[1].body, body);
    assert_eq!(attempts[1].connection, 2);
    assert_eq!(attempts[1].authorization, real_key());
    assert_eq!(retries(&harness, "stream refused"), 1);
    logs.assert_none_of(&SECRETS);
}

#[tokio::test]
async fn a_request_left_out_by_a_goaway_is_sent_again_on_a_new_connection() {
    let logs = Logs::capture();
    let pki = TestPki::new();
    let upstream = Upstream::start(&pki, First::GoAway).await;
    let harness = Harness::start(&pki).await;
    let mut agent = harness.h2(upstream.addr, OPENAI).await;

    let body = json_of_len(300);
    let (status, text) = send(&mut agent, chat(body.clone())).await;

    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(text, "{\"ok\":true}");
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
    // The first connection processed nothing; the second got the request.
    let attempts = upstream.attempts();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].connection, 2);
    assert_eq!(attempts[0].authorization, real_key());
    assert_eq!(attempts[0].body, body);
    // Left out by the GOAWAY, or (if it came before dispatch) not sent.
    assert_eq!(retries(&harness, ""), 1);
    logs.assert_none_of(&SECRETS);
}

#[tokio::test]
async fn a_refused_request_whose_body_was_too_large_to_keep_is_not_sent_again() {
    let logs = Logs::capture();
    let pki = TestPki::new();
    // The upstream reads all of the body before refusing, so more than the
    // 64 KiB kept has left the agent and cannot be given again.
    let upstream = Upstream::start(&pki, First::RefuseAfterReading).await;
    let harness = Harness::start(&pki).await;
    let mut agent = harness.h2(upstream.addr, OPENAI).await;

    let body = json_of_len(100 * 1024);
    let (status, text) = send(&mut agent, chat(body.clone())).await;

    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    let error: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["code"], "warrant_502");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains(OPENAI), "{message}");
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    let attempts = upstream.attempts();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].body, body);
    assert!(logs.text().contains("too large to keep"));
    assert_eq!(retries(&harness, ""), 0);
    logs.assert_none_of(&SECRETS);
}

#[tokio::test]
async fn a_reset_after_the_upstream_read_the_request_is_not_sent_again() {
    let logs = Logs::capture();
    let pki = TestPki::new();
    let upstream = Upstream::start(&pki, First::FailAfterReading).await;
    let harness = Harness::start(&pki).await;
    let mut agent = harness.h2(upstream.addr, OPENAI).await;

    let body = json_of_len(200);
    let (status, text) = send(&mut agent, chat(body.clone())).await;

    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    let error: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["code"], "warrant_502");
    assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
    let attempts = upstream.attempts();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].body, body);
    assert_eq!(retries(&harness, ""), 0);
    logs.assert_none_of(&SECRETS);
}
