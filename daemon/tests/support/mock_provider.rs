//! A stand-in for the OpenAI, Anthropic and Gemini APIs, shared by the
//! `mock_provider` example (demo, VM tests) and the privileged end-to-end
//! tests. Loopback (or a test network namespace) only.
//!
//! It makes a throwaway CA and serves TLS (h2 and http/1.1) with a
//! certificate for the three provider hostnames. Each request is checked
//! against the expected key of its provider: a wrong key gets a 401 in the
//! provider's error shape, so a client succeeds only if the real credential
//! arrived. Every request is recorded (host, method, path, query, version,
//! headers). Responses follow the providers' published formats, streaming
//! (SSE) when the request asks for it. A request with `x-mock-hold: 1` gets its
//! first streamed event and then waits until `release_held` is called, so a
//! test can prove that events are not buffered on the way.
//!
//! It reads requests as the providers' servers do, so that a request warrant
//! allowed but a provider would read otherwise shows in the records: the
//! JSON body's last duplicate key wins (serde_json's Map, like Python's
//! json), and the path is normalised its own way ([`normalise`]: percent-
//! decoding, `\` as `/`, merged slashes, `;` parameters cut, dot segments
//! resolved) before routing. Each record has the raw `path`, the
//! `normalised_path` it routed, and the `model` it would run.
//!
//! `/v1/realtime` (OpenAI) and Gemini Live's path accept a WebSocket
//! upgrade over HTTP/1.1 only, as the providers do: the same request over
//! HTTP/2 is a plain GET and gets a 404. Each text message is answered with
//! an echo and, for `{"type":"response.create"}`, a `response.done` event
//! carrying usage.

use std::{
    collections::HashMap,
    convert::Infallible,
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::Notify};
use tokio_rustls::TlsAcceptor;

pub const HOSTS: [&str; 3] = [
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
];

/// What the mock is told to expect and how to behave.
#[derive(Default, Clone)]
pub struct MockSettings {
    /// provider ("openai" | "anthropic" | "gemini") -> the key it accepts.
    /// A provider without an entry accepts any key.
    pub keys: HashMap<String, String>,
    /// Also append each record as a JSON line here.
    pub record_file: Option<PathBuf>,
    pub event_delay: Duration,
}

struct State {
    settings: MockSettings,
    records: Mutex<Vec<Value>>,
    hold: Notify,
    /// TCP connections accepted, counted before TLS: a connection that
    /// escaped redirection shows here even if its handshake then fails.
    connects: AtomicUsize,
}

/// A running mock provider; stops when dropped.
pub struct MockProvider {
    pub ca_pem: String,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

type Body = BoxBody<Bytes, Infallible>;

impl MockProvider {
    /// Binds every address and serves on a runtime of its own.
    pub fn start(listen: &[SocketAddr], settings: MockSettings) -> std::io::Result<MockProvider> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (ca_pem, server_config) = make_pki();
        let state = Arc::new(State {
            settings,
            records: Mutex::new(Vec::new()),
            hold: Notify::new(),
            connects: AtomicUsize::new(0),
        });
        let acceptor = TlsAcceptor::from(Arc::new(server_config));
        for addr in listen {
            let listener = runtime.block_on(TcpListener::bind(addr))?;
            let (acceptor, state) = (acceptor.clone(), state.clone());
            runtime.spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    state.connects.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, state) = (acceptor.clone(), state.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service =
                            hyper::service::service_fn(move |req| handle(state.clone(), req));
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        }
        Ok(MockProvider {
            ca_pem,
            state,
            runtime: Some(runtime),
        })
    }

    /// Every request seen so far, oldest first.
    pub fn records(&self) -> Vec<Value> {
        self.state.records.lock().unwrap().clone()
    }

    /// TCP connections accepted so far (before TLS, so every connect).
    pub fn tcp_connects(&self) -> usize {
        self.state.connects.load(Ordering::SeqCst)
    }

    /// Lets a held stream (`x-mock-hold: 1`) continue.
    pub fn release_held(&self) {
        self.state.hold.notify_waiters();
        self.state.hold.notify_one();
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn make_pki() -> (String, ServerConfig) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "warrant mock provider test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(HOSTS.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "mock provider");
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let chain = vec![CertificateDer::from(leaf.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (ca.pem(), config)
}

fn provider_of(host: &str) -> &'static str {
    match host {
        "api.anthropic.com" => "anthropic",
        "generativelanguage.googleapis.com" => "gemini",
        _ => "openai",
    }
}

/// The key the client presented, as each provider reads it.
fn presented_key(provider: &str, req: &Request<Incoming>) -> Option<String> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
    match provider {
        "anthropic" => header("x-api-key").or(bearer),
        "gemini" => header("x-goog-api-key").or_else(|| {
            req.uri()
                .query()?
                .split('&')
                .find_map(|kv| kv.strip_prefix("key=").map(str::to_owned))
        }),
        _ => bearer,
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let host = req
        .uri()
        .host()
        .map(str::to_owned)
        .or_else(|| {
            req.headers()
                .get("host")
                .and_then(|h| h.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or(h).to_owned())
        })
        .unwrap_or_default();
    let provider = provider_of(&host);
    let key = presented_key(provider, &req);
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                json!(value.to_str().unwrap_or("<binary>")),
            )
        })
        .collect();
    let (method, path, query) = (
        req.method().to_string(),
        req.uri().path().to_owned(),
        req.uri().query().unwrap_or("").to_owned(),
    );
    let normalised_path = normalise(&path);
    let version = format!("{:?}", req.version());
    if is_websocket_path(&normalised_path) {
        // A Realtime session runs the query's model; of a parameter given
        // twice, the last (as Starlette and most frameworks read a query).
        let run_model = form_urlencoded::parse(query.as_bytes())
            .filter(|(name, _)| name == "model")
            .last()
            .map(|(_, value)| Value::from(value.into_owned()))
            .unwrap_or(Value::Null);
        let line = json!({"host": host, "method": method, "path": path, "normalised_path": normalised_path, "query": query, "version": version, "headers": headers, "model": run_model, "websocket": true});
        state.records.lock().unwrap().push(line);
        let expected = state.settings.keys.get(provider);
        if expected.is_some() && key.as_ref() != expected {
            return Ok(error(
                provider,
                StatusCode::UNAUTHORIZED,
                "mock provider: invalid API key",
            ));
        }
        return Ok(websocket(req, provider));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let hold = headers.get("x-mock-hold").and_then(Value::as_str) == Some("1");
    // As a provider reads the body: the last of duplicate keys wins.
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let run_model = if provider == "gemini" {
        gemini_path_model(&normalised_path)
            .map(Value::from)
            .unwrap_or(Value::Null)
    } else {
        request["model"].clone()
    };
    let line = json!({"host": host, "method": method, "path": path, "normalised_path": normalised_path, "query": query, "version": version, "headers": headers, "model": run_model, "body": request});
    if let Some(path) = &state.settings.record_file {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        writeln!(file, "{line}").unwrap();
    }
    state.records.lock().unwrap().push(line);
    let expected = state.settings.keys.get(provider);
    if expected.is_some() && key.as_ref() != expected {
        return Ok(error(
            provider,
            StatusCode::UNAUTHORIZED,
            "mock provider: invalid API key",
        ));
    }
    let stream = request["stream"].as_bool().unwrap_or(false)
        || normalised_path.contains(":streamGenerateContent");
    let model = request["model"].as_str().unwrap_or("mock-model").to_owned();
    Ok(match (provider, stream) {
        ("openai", false) => json_response(json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock provider."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
        })),
        ("openai", true) => {
            let chunk = |delta: Value, finish: Value| {
                json!({
                    "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
                })
            };
            let mut events = vec![
                chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                chunk(json!({"content": "Hello"}), Value::Null),
                chunk(json!({"content": " from the mock provider."}), Value::Null),
                chunk(json!({}), json!("stop")),
            ];
            if request["stream_options"]["include_usage"].as_bool() == Some(true) {
                events.push(json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}));
            }
            let mut lines: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
            lines.push("data: [DONE]\n\n".to_owned());
            sse(lines, &state, hold)
        }
        ("anthropic", false) => json_response(json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Hello from the mock provider."}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 7}
        })),
        ("anthropic", true) => {
            let events = [
                (
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " from the mock provider."}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 7}}),
                ),
                ("message_stop", json!({"type": "message_stop"})),
            ];
            sse(
                events
                    .iter()
                    .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
                    .collect(),
                &state,
                hold,
            )
        }
        ("gemini", stream) => {
            let response = |text: &str| {
                json!({
                    "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 7, "totalTokenCount": 19},
                    "modelVersion": "mock-model"
                })
            };
            if stream {
                sse(
                    ["Hello", " from the mock provider."]
                        .iter()
                        .map(|t| format!("data: {}\r\n\r\n", response(t)))
                        .collect(),
                    &state,
                    hold,
                )
            } else {
                json_response(response("Hello from the mock provider."))
            }
        }
        _ => error(
            provider,
            StatusCode::NOT_FOUND,
            "mock provider: unknown path",
        ),
    })
}

fn json_response(value: Value) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap()
}

/// A streamed text/event-stream body, one event every `event_delay`; when
/// `hold`, the rest waits after the first event until `release_held`.
fn sse(events: Vec<String>, state: &Arc<State>, hold: bool) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let state = state.clone();
    tokio::spawn(async move {
        for (i, event) in events.into_iter().enumerate() {
            if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                return;
            }
            if i == 0 && hold {
                state.hold.notified().await;
            }
            tokio::time::sleep(state.settings.event_delay).await;
        }
    });
    let stream = tokio_stream_from(rx);
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn error(provider: &str, status: StatusCode, message: &str) -> Response<Body> {
    let body = match provider {
        "anthropic" => {
            json!({"type": "error", "error": {"type": "authentication_error", "message": message}})
        }
        "gemini" => {
            json!({"error": {"code": status.as_u16(), "message": message, "status": "UNAUTHENTICATED"}})
        }
        _ => {
            json!({"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}})
        }
    };
    let mut response = json_response(body);
    *response.status_mut() = status;
    response
}

/// The path as a lenient provider front end normalises it before routing:
/// percent-decoded, `\` read as `/`, `;` parameters cut from each segment,
/// empty segments merged, dot segments resolved. warrant refuses every path
/// this changes (other than decoding), so a record whose normalised path
/// differs from its decoded one is a request policy did not see.
pub fn normalise(raw: &str) -> String {
    let mut decoded = Vec::new();
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = raw.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            decoded.push(byte);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        let segment = segment.split(';').next().unwrap_or("");
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut path = format!("/{}", out.join("/"));
    if text.ends_with('/') && path != "/" {
        path.push('/');
    }
    path
}

/// The model of a Gemini path, `.../models/{model}:method`.
fn gemini_path_model(path: &str) -> Option<String> {
    let (_, rest) = path.split_once("/models/")?;
    Some(rest.split([':', '/']).next()?.to_owned())
}

fn is_websocket_path(path: &str) -> bool {
    path == "/v1/realtime" || path.ends_with("GenerativeService.BidiGenerateContent")
}

/// Accepts a WebSocket upgrade (HTTP/1.1 only) and serves the session; an
/// HTTP/2 request, or one without the upgrade, is a plain GET: 404.
fn websocket(mut req: Request<Incoming>, provider: &str) -> Response<Body> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key, protocol::Role};
    let accept = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()));
    let upgrade = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let (Some(accept), true, http::Version::HTTP_11) = (accept, upgrade, req.version()) else {
        return error(
            provider,
            StatusCode::NOT_FOUND,
            "mock provider: not a WebSocket upgrade",
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let gemini = provider == "gemini";
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = ws.next().await {
            let text = match message {
                Message::Text(text) => text,
                Message::Close(_) => return,
                _ => continue,
            };
            let event: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
            // A response held open (metadata {"mock": "hold"}): started,
            // never done, as a long response the agent hangs up on.
            let hold = event["response"]["metadata"]["mock"] == "hold";
            let replies = if event["type"] == "response.create" && hold {
                vec![
                    json!({"type": "response.created", "response": {"id": "resp_held", "status": "in_progress"}}),
                ]
            } else if event["type"] == "response.create" {
                vec![
                    json!({"type": "response.created", "response": {"id": "resp_mock", "status": "in_progress"}}),
                    json!({"type": "response.done", "response": {"id": "resp_mock", "status": "completed",
                        "usage": {"total_tokens": 19, "input_tokens": 12, "output_tokens": 7}}}),
                ]
            } else if gemini {
                vec![json!({"serverContent": {"turnComplete": true},
                    "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 7, "totalTokenCount": 19}})]
            } else {
                vec![json!({"type": "echo", "text": text.as_str()})]
            };
            for reply in replies {
                if ws.send(Message::text(reply.to_string())).await.is_err() {
                    return;
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}
