//! A scripted mock upstream in-process on loopback (TLS with the test PKI's
//! certificate, or plain HTTP), recording every request it receives:
//! `/v1/sse` streams one event and holds the rest until released,
//! `/v1/echo` answers 401 repeating the key it was given (as providers do),
//! `/v1/hang` never answers until released, `/v1/realtime` upgrades
//! (HTTP/1.1 only, as providers do) to a WebSocket that echoes every
//! message; anything else is `{"ok":true}`.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc},
};
use tokio_rustls::TlsAcceptor;

use crate::pki::TestPki;

/// What the mock received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: Version,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

pub struct Mock {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Lets the SSE response continue after its first event.
    pub release: Arc<Notify>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Bodies of /v1/chat/completions requests, whole.
    pub bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    pub cert: CertificateDer<'static>,
}

impl Mock {
    /// A TLS mock provider speaking `alpn` (e.g. h2 and http/1.1).
    pub async fn start(pki: &TestPki, alpn: &[&[u8]]) -> Mock {
        Self::start_with(
            Some(pki.acceptor(alpn)),
            pki.server_chain[0].clone(),
            "127.0.0.1",
        )
        .await
    }

    /// A plain-HTTP mock (an internal gateway on port 80) on `ip`.
    pub async fn start_plain(pki: &TestPki, ip: &str) -> Mock {
        Self::start_with(None, pki.server_chain[0].clone(), ip).await
    }

    async fn start_with(tls: Option<TlsAcceptor>, cert: CertificateDer<'static>, ip: &str) -> Mock {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let connections = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (s, r, c, b) = (
            seen.clone(),
            release.clone(),
            connections.clone(),
            bodies.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (seen, release, tls, bodies) = (s.clone(), r.clone(), tls.clone(), b.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (seen, release, bodies) =
                            (seen.clone(), release.clone(), bodies.clone());
                        async move {
                            // An upstream that never answers (until released).
                            if req.uri().path() == "/v1/hang" {
                                release.notified().await;
                            }
                            // Chat completions: the whole body is read and kept.
                            if req.uri().path() == "/v1/chat/completions" {
                                let (parts, body) = req.into_parts();
                                let bytes = body.collect().await.unwrap().to_bytes();
                                bodies.lock().unwrap().push(bytes.to_vec());
                                let req = Request::from_parts(parts, ());
                                return Ok(mock_handle(req, seen, release));
                            }
                            Ok::<_, std::convert::Infallible>(mock_handle(req, seen, release))
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        }
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                                .await;
                        }
                    }
                });
            }
        });
        Mock {
            addr,
            seen,
            release,
            connections,
            bodies,
            cert,
        }
    }

    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

type MockBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn full(text: impl Into<Bytes>) -> MockBody {
    Full::new(text.into()).boxed()
}

fn mock_handle<B>(
    mut req: Request<B>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
) -> Response<MockBody> {
    seen.lock().unwrap().push(Seen {
        version: req.version(),
        method: req.method().clone(),
        uri: req.uri().clone(),
        headers: req.headers().clone(),
    });
    match req.uri().path() {
        "/v1/sse" => {
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            tokio::spawn(async move {
                tx.send(Bytes::from_static(b"data: {\"n\":1}\n\n"))
                    .await
                    .unwrap();
                release.notified().await;
                tx.send(Bytes::from_static(b"data: {\"n\":2}\n\n"))
                    .await
                    .unwrap();
                tx.send(Bytes::from_static(b"data: [DONE]\n\n"))
                    .await
                    .unwrap();
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(ChannelBody(rx).boxed())
                .unwrap()
        }
        "/v1/echo" => {
            // Like a provider's 401 that repeats the key it was given.
            let key = ["authorization", "x-api-key", "x-goog-api-key"]
                .iter()
                .find_map(|h| req.headers().get(*h))
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body =
                format!("{{\"error\":{{\"message\":\"Incorrect API key provided: {key}\"}}}}");
            Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("content-type", "application/json")
                .header("content-length", body.len())
                .header("x-request-key", key.clone())
                .body(full(body))
                .unwrap()
        }
        // As providers do: only an HTTP/1.1 request can be upgraded; over
        // HTTP/2 this is a plain GET, and there is no such resource.
        "/v1/realtime" if req.version() != Version::HTTP_11 => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("content-type", "application/json")
            .body(full("{\"error\":{\"message\":\"not found\"}}"))
            .unwrap(),
        "/v1/realtime" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                use futures_util::{SinkExt, StreamExt};
                let upgraded = upgrade.await.unwrap();
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                // Echo every message until the peer closes.
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_close() || ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(full(""))
                .unwrap()
        }
        _ => Response::builder()
            .header("content-type", "application/json")
            .body(full("{\"ok\":true}"))
            .unwrap(),
    }
}

/// A response body fed chunk by chunk through a channel.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}
