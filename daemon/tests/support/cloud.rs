//! Stand-ins for the cloud model platforms and their credential services,
//! shared by the unprivileged cloud tests and the privileged end-to-end
//! ones. Loopback (or a test network namespace) only; every server runs on
//! a runtime of its own and stops when dropped.
//!
//! - [`CloudApis`]: Amazon Bedrock runtime, Vertex AI and Azure OpenAI over
//!   TLS (h2 and http/1.1) with a throwaway CA. Each request must carry a
//!   credential the test accepted ([`Accepted`]): Bedrock's SigV4 signature
//!   is verified with the real secret by a signing call of the mock's own
//!   over the request as received (only its signed headers), Vertex's
//!   Bearer token and Azure's `api-key` or Bearer are compared. A refused
//!   credential gets the platform's own 401/403. Responses follow the
//!   platforms' formats: Converse JSON, AWS event streams (ConverseStream,
//!   InvokeModelWithResponseStream with Anthropic's events), Gemini JSON,
//!   SSE and JSON-array streams, Anthropic on Vertex, OpenAI chat with SSE.
//! - [`CredentialServices`]: plain HTTP on loopback, the services warrant
//!   gets real credentials from: IMDSv2 role credentials, STS
//!   AssumeRoleWithWebIdentity (XML), the GCE metadata token, Google's token
//!   endpoint (it verifies the service-account JWT), Google STS and IAM
//!   generateAccessToken, Azure's managed-identity token and an Entra ID
//!   token endpoint. What they issue is accepted by the APIs at once.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, SystemTime},
};

use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign},
    sign::v4,
};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
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
use tokio_rustls::TlsAcceptor;

pub const BEDROCK: &str = "bedrock-runtime.us-east-1.amazonaws.com";
pub const VERTEX: &str = "us-central1-aiplatform.googleapis.com";
pub const AZURE: &str = "warrant-test.openai.azure.com";
pub const HOSTS: [&str; 3] = [BEDROCK, VERTEX, AZURE];

/// The key of the throwaway service account (test-only, see the fixture's
/// README).
pub const SA_KEY_PEM: &str = include_str!("../fixtures/cloud/gcp-service-account.pem");
pub const SA_PUBLIC_PEM: &str = include_str!("../fixtures/cloud/gcp-service-account.pub.pem");
pub const SA_EMAIL: &str = "warrant-test@test-project.iam.gserviceaccount.com";

/// One set of AWS keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl AwsKeys {
    /// The credential_process JSON warrant reads (`format = "aws"`).
    pub fn process_json(&self) -> String {
        let mut doc = json!({
            "Version": 1,
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
        });
        if let Some(token) = &self.session_token {
            doc["SessionToken"] = json!(token);
        }
        doc.to_string()
    }
}

/// The credentials the APIs accept now, and every real value issued (for
/// the scans that prove none leaked).
#[derive(Default)]
pub struct Accepted {
    pub aws: Vec<AwsKeys>,
    /// Vertex: Google access tokens.
    pub google: Vec<String>,
    /// Azure: resource keys (api-key) and Entra tokens (Bearer).
    pub azure: Vec<String>,
    /// Every secret value ever issued or accepted.
    pub secrets: Vec<String>,
}

pub type Shared = Arc<Mutex<Accepted>>;

/// A tag unique to this run, so a canary found in a scan is ours.
pub fn run_tag() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn new_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

type Body = BoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn json_response(status: StatusCode, value: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(value.to_string()))
        .unwrap()
}

/// How a stream is paced: one chunk every `delay`, and, for a request
/// with `x-mock-hold: 1`, nothing after the first chunk until
/// [`CloudApis::release_held`] (so a test proves nothing on the way buffers).
#[derive(Clone)]
struct Pace {
    delay: Duration,
    hold: Option<Arc<tokio::sync::Notify>>,
}

/// A streamed body, paced by `pace`.
fn streamed(content_type: &str, chunks: Vec<Vec<u8>>, pace: &Pace) -> Response<Body> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let pace = pace.clone();
    tokio::spawn(async move {
        for (i, chunk) in chunks.into_iter().enumerate() {
            if tx.send(Ok(Frame::data(Bytes::from(chunk)))).await.is_err() {
                return;
            }
            if i == 0
                && let Some(hold) = &pace.hold
            {
                hold.notified().await;
            }
            tokio::time::sleep(pace.delay).await;
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Response::builder()
        .header("content-type", content_type)
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap()
}

// ------------------------------------------------------------------ APIs

/// What the API mocks saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub host: String,
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether the credential was accepted.
    pub accepted: bool,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The request as JSON, for a check outside Rust (botocore).
    pub fn to_json(&self) -> Value {
        let headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        json!({
            "method": self.method,
            "url": format!("https://{}{}", self.host, self.target),
            "headers": headers,
            "body": base64::engine::general_purpose::STANDARD.encode(&self.body),
        })
    }
}

struct ApiState {
    accepted: Shared,
    seen: Mutex<Vec<Seen>>,
    delay: Duration,
    hold: Arc<tokio::sync::Notify>,
}

/// Bedrock, Vertex and Azure OpenAI on TLS.
pub struct CloudApis {
    pub ca_pem: String,
    /// The addresses bound (a port 0 asked for is resolved here).
    pub addrs: Vec<SocketAddr>,
    pub accepted: Shared,
    state: Arc<ApiState>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for CloudApis {
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
        .push(DnType::CommonName, "warrant cloud mock test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(HOSTS.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "cloud mock");
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

impl CloudApis {
    /// Serves on every address of `listen`.
    pub fn start(listen: &[SocketAddr], accepted: Shared) -> CloudApis {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = new_runtime();
        let (ca_pem, config) = make_pki();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let state = Arc::new(ApiState {
            accepted: accepted.clone(),
            seen: Mutex::new(Vec::new()),
            delay: Duration::from_millis(5),
            hold: Arc::new(tokio::sync::Notify::new()),
        });
        let mut addrs = Vec::new();
        for addr in listen {
            let std_listener = std::net::TcpListener::bind(addr).unwrap();
            std_listener.set_nonblocking(true).unwrap();
            addrs.push(std_listener.local_addr().unwrap());
            let (acceptor, state) = (acceptor.clone(), state.clone());
            runtime.spawn(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, state) = (acceptor.clone(), state.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(api(state, req).await) }
                        });
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        }
        CloudApis {
            ca_pem,
            addrs,
            accepted,
            state,
            runtime: Some(runtime),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Lets held streams (`x-mock-hold: 1`) go on.
    pub fn release_held(&self) {
        self.state.hold.notify_waiters();
        self.state.hold.notify_one();
    }

    pub fn seen_by(&self, host: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.host == host).collect()
    }
}

async fn api(state: Arc<ApiState>, req: Request<Incoming>) -> Response<Body> {
    // The authority as sent (h2's :authority, h1's Host), port included:
    // what a SigV4 signature covers.
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| Some(req.headers().get("host")?.to_str().ok()?.to_owned()))
        .unwrap_or_default();
    let host = authority
        .rsplit_once(':')
        .map_or(authority.as_str(), |(h, _)| h)
        .to_owned();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let verdict = {
        let accepted = state.accepted.lock().unwrap();
        match host.as_str() {
            BEDROCK => verify_sigv4(
                &parts.method,
                &authority,
                &target,
                &parts.headers,
                &body,
                &accepted.aws,
            ),
            VERTEX => bearer(&parts.headers)
                .filter(|t| accepted.google.contains(t))
                .map(|_| ())
                .ok_or_else(|| "no accepted Google access token".to_owned()),
            AZURE => parts
                .headers
                .get("api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .or_else(|| bearer(&parts.headers))
                .filter(|k| accepted.azure.contains(k))
                .map(|_| ())
                .ok_or_else(|| "no accepted api-key or Entra token".to_owned()),
            _ => Err(format!("unknown host {host}")),
        }
    };
    state.seen.lock().unwrap().push(Seen {
        host: host.clone(),
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
        accepted: verdict.is_ok(),
    });
    if let Err(why) = verdict {
        return refused(&host, &why);
    }
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = parts.uri.path();
    // Like an error body that repeats what it was given.
    if path.ends_with("/echo-credentials") {
        let token = parts
            .headers
            .get("x-amz-security-token")
            .or_else(|| parts.headers.get("authorization"))
            .or_else(|| parts.headers.get("api-key"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"message": format!("cannot use {token}")}),
        );
    }
    let held = parts.headers.get("x-mock-hold").is_some_and(|v| v == "1");
    let pace = Pace {
        delay: state.delay,
        hold: held.then(|| state.hold.clone()),
    };
    match host.as_str() {
        BEDROCK => bedrock(path, &request, &pace),
        VERTEX => vertex(path, parts.uri.query().unwrap_or(""), &request, &pace),
        _ => azure(path, &request, &pace),
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

/// The platform's own refusal of a credential.
fn refused(host: &str, why: &str) -> Response<Body> {
    match host {
        BEDROCK => {
            let mut response = json_response(
                StatusCode::FORBIDDEN,
                json!({"message": format!("The security token included in the request is invalid ({why})")}),
            );
            response.headers_mut().insert(
                "x-amzn-errortype",
                "UnrecognizedClientException:http://internal.amazon.com/coral/com.amazon.coral.service/"
                    .parse()
                    .unwrap(),
            );
            response
        }
        VERTEX => json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"code": 401, "message": format!("Request had invalid authentication credentials ({why})"), "status": "UNAUTHENTICATED"}}),
        ),
        _ => json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": {"code": "401", "message": format!("Access denied due to invalid subscription key or wrong API endpoint ({why})")}}),
        ),
    }
}

/// Verifies a SigV4 `Authorization` as AWS does: the key id must be one of
/// `keys`, and the signature must be the one the mock computes, with that
/// key's secret, over the request as received (its signed headers only).
pub fn verify_sigv4(
    method: &http::Method,
    host: &str,
    target: &str,
    headers: &HeaderMap,
    body: &[u8],
    keys: &[AwsKeys],
) -> Result<(), String> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization")?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or("not SigV4")?;
    let mut fields = HashMap::new();
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or("malformed Authorization")?;
        fields.insert(k, v);
    }
    let credential = fields.get("Credential").ok_or("no Credential")?;
    let mut scope = credential.split('/');
    let key_id = scope.next().ok_or("no key id")?;
    let (_date, region, service) = (scope.next(), scope.next(), scope.next());
    if region != Some("us-east-1") || service != Some("bedrock") {
        return Err(format!("scope {credential} is not us-east-1/bedrock"));
    }
    let key = keys
        .iter()
        .find(|k| k.access_key_id == key_id)
        .ok_or_else(|| format!("unknown access key id {key_id}"))?;
    let token = headers
        .get("x-amz-security-token")
        .and_then(|v| v.to_str().ok());
    if token != key.session_token.as_deref() {
        return Err("wrong session token".to_owned());
    }
    let date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or("no X-Amz-Date")?;
    let time = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", date)
        .map_err(|e| e.to_string())?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map_err(|e| e.to_string())?
        .timestamp();
    let time = SystemTime::from(time);
    let signed: Vec<&str> = fields
        .get("SignedHeaders")
        .ok_or("no SignedHeaders")?
        .split(';')
        .collect();
    for required in ["host", "x-amz-date"] {
        if !signed.contains(&required) {
            return Err(format!("{required} is not signed"));
        }
    }
    // The signer adds host, X-Amz-Date and the token itself.
    let mut pairs = Vec::new();
    for name in &signed {
        if matches!(*name, "host" | "x-amz-date" | "x-amz-security-token") {
            continue;
        }
        for value in headers.get_all(*name) {
            pairs.push((*name, value.to_str().map_err(|e| e.to_string())?));
        }
    }
    let identity = aws_credential_types::Credentials::new(
        key.access_key_id.clone(),
        key.secret_access_key.clone(),
        key.session_token.clone(),
        None,
        "mock",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("bedrock")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let url = format!("https://{host}{target}");
    let shown_url = url.clone();
    let signable = SignableRequest::new(
        method.as_str(),
        url,
        pairs.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (_, expected) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let got = fields.get("Signature").ok_or("no Signature")?;
    if *got != expected {
        return Err(format!(
            "signature mismatch (signed {:?} for {shown_url}, headers {headers:?})",
            fields.get("SignedHeaders")
        ));
    }
    Ok(())
}

/// An AWS event-stream frame.
pub fn event_frame(event_type: &str, payload: &Value) -> Vec<u8> {
    let message = Message::new(Bytes::from(payload.to_string()))
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ))
        .add_header(Header::new(
            ":event-type",
            HeaderValue::String(event_type.to_owned().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut out).unwrap();
    out
}

const TEXT: [&str; 2] = ["Hello", " from the cloud mock."];

fn anthropic_events(model: &str) -> Vec<Value> {
    vec![
        json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": TEXT[0]}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": TEXT[1]}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 7}}),
        json!({"type": "message_stop"}),
    ]
}

fn anthropic_message(model: &str) -> Value {
    json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": TEXT.concat()}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 12, "output_tokens": 7}
    })
}

fn bedrock(path: &str, request: &Value, pace: &Pace) -> Response<Body> {
    let segments: Vec<&str> = path.split('/').collect();
    let (model, operation) = match segments.as_slice() {
        ["", "model", model, operation] => (*model, *operation),
        _ => {
            return json_response(
                StatusCode::NOT_FOUND,
                json!({"message": "mock: unknown operation"}),
            );
        }
    };
    let model = percent_decode(model);
    match operation {
        "converse" => json_response(
            StatusCode::OK,
            json!({
                "output": {"message": {"role": "assistant", "content": [{"text": TEXT.concat()}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 12, "outputTokens": 7, "totalTokens": 19},
                "metrics": {"latencyMs": 42}
            }),
        ),
        "converse-stream" => {
            let mut frames = vec![event_frame("messageStart", &json!({"role": "assistant"}))];
            for text in TEXT {
                frames.push(event_frame(
                    "contentBlockDelta",
                    &json!({"contentBlockIndex": 0, "delta": {"text": text}}),
                ));
            }
            frames.push(event_frame(
                "contentBlockStop",
                &json!({"contentBlockIndex": 0}),
            ));
            frames.push(event_frame(
                "messageStop",
                &json!({"stopReason": "end_turn"}),
            ));
            frames.push(event_frame(
                "metadata",
                &json!({"usage": {"inputTokens": 12, "outputTokens": 7, "totalTokens": 19}, "metrics": {"latencyMs": 42}}),
            ));
            streamed("application/vnd.amazon.eventstream", frames, pace)
        }
        "invoke" => {
            let mut response = json_response(StatusCode::OK, anthropic_message(&model));
            let headers = response.headers_mut();
            headers.insert("x-amzn-bedrock-input-token-count", "12".parse().unwrap());
            headers.insert("x-amzn-bedrock-output-token-count", "7".parse().unwrap());
            response
        }
        "invoke-with-response-stream" => {
            let _ = request;
            let events = anthropic_events(&model);
            let last = events.len() - 1;
            let frames = events
                .into_iter()
                .enumerate()
                .map(|(i, mut event)| {
                    if i == last {
                        event["amazon-bedrock-invocationMetrics"] = json!({"inputTokenCount": 12, "outputTokenCount": 7, "invocationLatency": 100, "firstByteLatency": 40});
                    }
                    let bytes =
                        base64::engine::general_purpose::STANDARD.encode(event.to_string());
                    event_frame("chunk", &json!({"bytes": bytes, "p": "abcd"}))
                })
                .collect();
            streamed("application/vnd.amazon.eventstream", frames, pace)
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"message": "mock: unknown operation"}),
        ),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn gemini_chunk(text: &str) -> Value {
    json!({
        "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 7, "totalTokenCount": 19},
        "modelVersion": "gemini-2.5-flash"
    })
}

fn vertex(path: &str, query: &str, request: &Value, pace: &Pace) -> Response<Body> {
    let method = path.rsplit(':').next().unwrap_or_default();
    let model = path
        .split("/models/")
        .nth(1)
        .and_then(|m| m.split(':').next())
        .unwrap_or("mock");
    let sse = query.split('&').any(|p| p == "alt=sse");
    let _ = request;
    match method {
        "generateContent" => json_response(StatusCode::OK, gemini_chunk(&TEXT.concat())),
        "streamGenerateContent" if sse => streamed(
            "text/event-stream",
            TEXT.iter()
                .map(|t| format!("data: {}\r\n\r\n", gemini_chunk(t)).into_bytes())
                .collect(),
            pace,
        ),
        "streamGenerateContent" => {
            let chunks: Vec<Vec<u8>> = TEXT
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let sep = if i == 0 { "[" } else { "," };
                    format!("{sep}{}", gemini_chunk(t)).into_bytes()
                })
                .chain(std::iter::once(b"]".to_vec()))
                .collect();
            streamed("application/json", chunks, pace)
        }
        "rawPredict" => json_response(StatusCode::OK, anthropic_message(model)),
        "streamRawPredict" => streamed(
            "text/event-stream",
            anthropic_events(model)
                .into_iter()
                .map(|e| {
                    format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()).into_bytes()
                })
                .collect(),
            pace,
        ),
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": {"code": 404, "message": "mock: unknown method", "status": "NOT_FOUND"}}),
        ),
    }
}

fn azure(path: &str, request: &Value, pace: &Pace) -> Response<Body> {
    let deployment = path
        .strip_prefix("/openai/deployments/")
        .and_then(|r| r.split('/').next())
        .unwrap_or("mock");
    if !path.ends_with("/chat/completions") {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "404", "message": "mock: unknown path"}}),
        );
    }
    if request["stream"].as_bool() != Some(true) {
        return json_response(
            StatusCode::OK,
            json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": deployment,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT.concat()}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
            }),
        );
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": deployment,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut events = vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": TEXT[0]}), Value::Null),
        chunk(json!({"content": TEXT[1]}), Value::Null),
        chunk(json!({}), json!("stop")),
    ];
    if request["stream_options"]["include_usage"].as_bool() == Some(true) {
        events.push(json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": deployment, "choices": [],
                           "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}));
    }
    let mut lines: Vec<Vec<u8>> = events
        .iter()
        .map(|e| format!("data: {e}\n\n").into_bytes())
        .collect();
    lines.push(b"data: [DONE]\n\n".to_vec());
    streamed("text/event-stream", lines, pace)
}

// ------------------------------------------------------- credential services

/// What the credential services issue and expect.
pub struct Issuing {
    pub tag: String,
    /// The web identity / subject token STS and Google STS accept.
    pub subject_token: String,
    pub role_arn: String,
    pub wif_audience: String,
    pub entra_client_id: String,
    pub entra_secret: String,
}

/// Calls per endpoint, for assertions.
#[derive(Default)]
pub struct Calls(Mutex<HashMap<&'static str, u32>>);

impl Calls {
    fn hit(&self, what: &'static str) -> u32 {
        let mut calls = self.0.lock().unwrap();
        let n = calls.entry(what).or_default();
        *n += 1;
        *n
    }

    pub fn get(&self, what: &str) -> u32 {
        self.0.lock().unwrap().get(what).copied().unwrap_or(0)
    }
}

struct ServiceState {
    accepted: Shared,
    issuing: Issuing,
    calls: Calls,
    base: String,
    /// IMDSv2 session tokens handed out.
    imds_tokens: Mutex<Vec<String>>,
}

/// IMDS, STS, the GCE metadata server, Google's token endpoint, Google STS
/// and IAM, Azure's managed identity, Entra ID: plain HTTP on loopback.
pub struct CredentialServices {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    state: Arc<ServiceState>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for CredentialServices {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl CredentialServices {
    pub fn start(accepted: Shared, issuing: Issuing) -> CredentialServices {
        let runtime = new_runtime();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let state = Arc::new(ServiceState {
            accepted,
            issuing,
            calls: Calls::default(),
            base: base.clone(),
            imds_tokens: Mutex::new(Vec::new()),
        });
        let served = state.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(service(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        CredentialServices {
            addr,
            base,
            state,
            runtime: Some(runtime),
        }
    }

    pub fn calls(&self, what: &str) -> u32 {
        self.state.calls.get(what)
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn oauth_error(status: StatusCode, code: &str) -> Response<Body> {
    json_response(status, json!({"error": code}))
}

impl ServiceState {
    /// A fresh real value, accepted by `list` from now on.
    fn issue(&self, prefix: &str, n: u32, list: fn(&mut Accepted) -> &mut Vec<String>) -> String {
        let value = format!("{prefix}-{}-{n}-REALREALREAL0123456789", self.issuing.tag);
        let mut accepted = self.accepted.lock().unwrap();
        list(&mut accepted).push(value.clone());
        accepted.secrets.push(value.clone());
        value
    }

    fn issue_aws(&self, n: u32) -> AwsKeys {
        let keys = AwsKeys {
            access_key_id: format!("ASIAMOCK{:012}", n),
            secret_access_key: format!("aws-secret-{}-{n}-REALREALREAL", self.issuing.tag),
            session_token: Some(format!("aws-session-{}-{n}-REALREALREAL", self.issuing.tag)),
        };
        let mut accepted = self.accepted.lock().unwrap();
        accepted.secrets.push(keys.secret_access_key.clone());
        accepted.secrets.extend(keys.session_token.iter().cloned());
        accepted.aws.push(keys.clone());
        keys
    }
}

fn expiry_in(secs: i64) -> String {
    (jiff::Timestamp::now() + jiff::SignedDuration::from_secs(secs)).to_string()
}

async fn service(state: Arc<ServiceState>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let query: HashMap<String, String> = form(parts.uri.query().unwrap_or("").as_bytes());
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let calls = &state.calls;
    match (parts.method.as_str(), path.as_str()) {
        // IMDSv2.
        ("PUT", "/latest/api/token") => {
            if header("x-aws-ec2-metadata-token-ttl-seconds").is_none() {
                return Response::builder().status(400).body(full("")).unwrap();
            }
            let token = format!("imds-session-{}", calls.hit("imds-token"));
            state.imds_tokens.lock().unwrap().push(token.clone());
            Response::new(full(token))
        }
        ("GET", p) if p.starts_with("/latest/meta-data/iam/security-credentials/") => {
            let valid = header("x-aws-ec2-metadata-token")
                .is_some_and(|t| state.imds_tokens.lock().unwrap().contains(&t));
            if !valid {
                return Response::builder().status(401).body(full("")).unwrap();
            }
            let role = &p["/latest/meta-data/iam/security-credentials/".len()..];
            if role.is_empty() {
                return Response::new(full("warrant-test-role\n"));
            }
            if role != "warrant-test-role" {
                return Response::builder().status(404).body(full("")).unwrap();
            }
            let keys = state.issue_aws(calls.hit("imds-credentials"));
            json_response(
                StatusCode::OK,
                json!({"Code": "Success", "LastUpdated": jiff::Timestamp::now().to_string(), "Type": "AWS-HMAC",
                       "AccessKeyId": keys.access_key_id, "SecretAccessKey": keys.secret_access_key,
                       "Token": keys.session_token, "Expiration": expiry_in(6 * 3600)}),
            )
        }
        // STS.
        ("POST", "/sts/") => {
            let form = form(&body);
            if form.get("Action").map(String::as_str) != Some("AssumeRoleWithWebIdentity")
                || form.get("Version").map(String::as_str) != Some("2011-06-15")
                || form.get("RoleArn") != Some(&state.issuing.role_arn)
                || form.get("RoleSessionName").is_none_or(String::is_empty)
            {
                return sts_error(StatusCode::BAD_REQUEST, "ValidationError");
            }
            if form.get("WebIdentityToken") != Some(&state.issuing.subject_token) {
                return sts_error(StatusCode::BAD_REQUEST, "InvalidIdentityToken");
            }
            let keys = state.issue_aws(calls.hit("sts"));
            let xml = format!(
                r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>host-1</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser><Arn>{arn}/warrant</Arn><AssumedRoleId>AROA:warrant</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <SessionToken>{token}</SessionToken>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <Expiration>{expiry}</Expiration>
      <AccessKeyId>{id}</AccessKeyId>
    </Credentials>
    <Provider>www.example.com</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>mock</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#,
                arn = state.issuing.role_arn,
                token = keys.session_token.unwrap_or_default(),
                secret = keys.secret_access_key,
                expiry = expiry_in(3600),
                id = keys.access_key_id,
            );
            Response::builder()
                .header("content-type", "text/xml")
                .body(full(xml))
                .unwrap()
        }
        // GCE metadata.
        ("GET", p)
            if p.starts_with("/computeMetadata/v1/instance/service-accounts/")
                && p.ends_with("/token") =>
        {
            if header("metadata-flavor").as_deref() != Some("Google") {
                return Response::builder().status(403).body(full("")).unwrap();
            }
            let token = state.issue("ya29.gce", calls.hit("gce-token"), |a| &mut a.google);
            json_response(
                StatusCode::OK,
                json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}),
            )
        }
        // Google's token endpoint: the service-account JWT grant.
        ("POST", "/google/token") => {
            let form = form(&body);
            if form.get("grant_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
            {
                return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
            }
            let Some(assertion) = form.get("assertion") else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
            };
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            validation.set_audience(&[format!("{}/google/token", state.base)]);
            validation.set_issuer(&[SA_EMAIL]);
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(SA_PUBLIC_PEM.as_bytes()).unwrap();
            let Ok(claims) = jsonwebtoken::decode::<Value>(assertion, &key, &validation) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            if claims.claims["scope"] != "https://www.googleapis.com/auth/cloud-platform"
                || claims.header.kid.as_deref() != Some("test-key-id")
            {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope");
            }
            let token = state.issue("ya29.sa", calls.hit("google-token"), |a| &mut a.google);
            json_response(
                StatusCode::OK,
                json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}),
            )
        }
        // Google STS.
        ("POST", "/google/sts") => {
            let form = form(&body);
            let ok = form.get("grant_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:grant-type:token-exchange")
                && form.get("audience") == Some(&state.issuing.wif_audience)
                && form.get("subject_token") == Some(&state.issuing.subject_token)
                && form.get("requested_token_type").map(String::as_str)
                    == Some("urn:ietf:params:oauth:token-type:access_token");
            if !ok {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            // The federated token itself is not accepted by Vertex here:
            // the test impersonates a service account with it.
            let n = calls.hit("google-sts");
            let token = format!("ya29.federated-{}-{n}", state.issuing.tag);
            state.accepted.lock().unwrap().secrets.push(token.clone());
            json_response(
                StatusCode::OK,
                json!({"access_token": token, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in": 3600}),
            )
        }
        ("POST", p)
            if p.starts_with("/google/iam/v1/projects/-/serviceAccounts/")
                && p.ends_with(":generateAccessToken") =>
        {
            let federated = bearer(&parts.headers).unwrap_or_default();
            if !federated.starts_with("ya29.federated-") {
                return json_response(StatusCode::UNAUTHORIZED, json!({"error": {"code": 401}}));
            }
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if request["scope"][0] != "https://www.googleapis.com/auth/cloud-platform" {
                return json_response(StatusCode::BAD_REQUEST, json!({"error": {"code": 400}}));
            }
            let token = state.issue("ya29.impersonated", calls.hit("google-iam"), |a| {
                &mut a.google
            });
            json_response(
                StatusCode::OK,
                json!({"accessToken": token, "expireTime": expiry_in(3600)}),
            )
        }
        // Azure managed identity (IMDS).
        ("GET", "/metadata/identity/oauth2/token") => {
            if header("metadata").as_deref() != Some("true")
                || query.get("resource").map(String::as_str)
                    != Some("https://cognitiveservices.azure.com")
            {
                return json_response(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"}));
            }
            let token = format!(
                "eyJ0eXAiOiJKV1QifQ.mi-{}-{}.REALREALREAL",
                state.issuing.tag,
                calls.hit("azure-mi")
            );
            {
                let mut accepted = state.accepted.lock().unwrap();
                accepted.azure.push(token.clone());
                accepted.secrets.push(token.clone());
            }
            json_response(
                StatusCode::OK,
                json!({"access_token": token, "expires_in": "3599", "expires_on": (jiff::Timestamp::now().as_second() + 3599).to_string(),
                       "resource": "https://cognitiveservices.azure.com", "token_type": "Bearer"}),
            )
        }
        // Entra ID client credentials.
        ("POST", "/entra/test-tenant/oauth2/v2.0/token") => {
            let form = form(&body);
            let ok = form.get("grant_type").map(String::as_str) == Some("client_credentials")
                && form.get("client_id") == Some(&state.issuing.entra_client_id)
                && form.get("client_secret") == Some(&state.issuing.entra_secret)
                && form.get("scope").map(String::as_str)
                    == Some("https://cognitiveservices.azure.com/.default");
            if !ok {
                return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
            }
            let token = format!(
                "eyJ0eXAiOiJKV1QifQ.entra-{}-{}.REALREALREAL",
                state.issuing.tag,
                calls.hit("entra")
            );
            {
                let mut accepted = state.accepted.lock().unwrap();
                accepted.azure.push(token.clone());
                accepted.secrets.push(token.clone());
            }
            json_response(
                StatusCode::OK,
                json!({"access_token": token, "token_type": "Bearer", "expires_in": 3599}),
            )
        }
        _ => Response::builder()
            .status(404)
            .body(full("mock: no such endpoint"))
            .unwrap(),
    }
}

fn sts_error(status: StatusCode, code: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(full(format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>mock</Message></Error><RequestId>mock</RequestId></ErrorResponse>"
        )))
        .unwrap()
}

/// A service-account key file for `base`'s token endpoint.
pub fn service_account_key(base: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "test-key-id",
        "private_key": SA_KEY_PEM,
        "client_email": SA_EMAIL,
        "client_id": "1234567890",
        "token_uri": format!("{base}/google/token"),
    })
    .to_string()
}

impl Issuing {
    pub fn new(tag: &str) -> Issuing {
        Issuing {
            tag: tag.to_owned(),
            subject_token: format!("eyJhbGciOiJSUzI1NiJ9.subject-{tag}.sig"),
            role_arn: "arn:aws:iam::123456789012:role/warrant-bedrock".to_owned(),
            wif_audience: "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/warrant".to_owned(),
            entra_client_id: "00000000-0000-0000-0000-000000000001".to_owned(),
            entra_secret: format!("entra-client-secret-{tag}-REAL"),
        }
    }
}

// ------------------------------------------------------- the real metadata

/// Stands in for the real metadata service at a test address (port 80):
/// what an agent reading it directly would get. It answers IMDSv2 (token,
/// then anything) and GCE, every answer marked `REAL-METADATA`, and records
/// every request, so a test can prove which ones reached it.
pub struct RealMetadata {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for RealMetadata {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl RealMetadata {
    pub fn start(addr: SocketAddr) -> RealMetadata {
        let runtime = new_runtime();
        let std_listener = std::net::TcpListener::bind(addr).unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let seen = recorded.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let line = format!("{} {}", req.method(), req.uri().path());
                            seen.lock().unwrap().push(line);
                            let token_ok = req
                                .headers()
                                .get("x-aws-ec2-metadata-token")
                                .is_some_and(|t| t == "real-imds-session-token");
                            let response = match (req.method().as_str(), req.uri().path()) {
                                ("PUT", "/latest/api/token") => {
                                    Response::new(full("real-imds-session-token"))
                                }
                                ("GET", path) if path.starts_with("/latest/") && !token_ok => {
                                    Response::builder().status(401).body(full("")).unwrap()
                                }
                                ("GET", "/latest/meta-data/placement/region") => {
                                    Response::new(full("us-east-1"))
                                }
                                (_, path) => Response::new(full(format!("REAL-METADATA {path}"))),
                            };
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        RealMetadata {
            addr,
            seen,
            runtime: Some(runtime),
        }
    }

    /// "METHOD /path" of every request that reached the real service.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}
