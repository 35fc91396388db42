//! Connections to the real APIs: TCP to the address the agent dialled (its
//! Origin's original destination, never a DNS lookup of ours), marked so the
//! eBPF programs leave them alone, TLS verified against the system roots plus
//! the upstream's `ca_file`, pooled and reused across agent connections.
//!
//! A request the upstream certainly did not process (an HTTP/2 stream
//! refused, or left out by a GOAWAY; RFC 9113 §8.7) is sent once more, on a
//! new connection, when its body could be kept (see `replay`).

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{
        self, Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{
    ForwardBody,
    replay::{KEEP_LIMIT, ReplayBody, Rewind},
};

/// How long an idle pooled upstream connection is kept. Provider load
/// balancers close idle connections after about a minute or more; reusing
/// one saves a TCP and TLS handshake per request.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pools (one per upstream host and destination address) kept at most; the
/// set of provider addresses is small, this only bounds a pathological case.
const MAX_POOLS: usize = 1024;

/// Why an upstream connection failed. Names the cause, never a credential.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {dst}: {source}")]
    Tcp {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake with {host} at {dst} failed: {source}")]
    Tls {
        host: String,
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {dst} timed out after {secs} s")]
    Timeout { dst: SocketAddr, secs: u64 },
    #[error("cannot set SO_MARK on the upstream socket: {0}")]
    Mark(nix::Error),
}

/// Why a request to an upstream got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Request(#[from] legacy::Error),
    /// On the HTTP/1.1 connection of a protocol upgrade.
    #[error(transparent)]
    Upgrade(#[from] hyper::Error),
}

/// Opens TCP to `dst` with SO_MARK = `mark`, so the daemon's own sockets are
/// never redirected back to itself.
pub async fn connect_marked(dst: SocketAddr, mark: u32) -> Result<TcpStream, ConnectError> {
    let socket = if dst.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| ConnectError::Tcp { dst, source })?;
    match nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Mark, &mark) {
        Ok(()) => {}
        // SO_MARK needs CAP_NET_ADMIN. Unprivileged (tests, a dry run) no
        // redirect is attached to us either, so the mark is not needed.
        Err(nix::errno::Errno::EPERM) if !nix::unistd::geteuid().is_root() => {
            tracing::debug!("not root: upstream sockets are not marked");
        }
        Err(e) => return Err(ConnectError::Mark(e)),
    }
    let stream = socket
        .connect(dst)
        .await
        .map_err(|source| ConnectError::Tcp { dst, source })?;
    // Requests and SSE events are small writes that must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The connector of one pool: always the same destination and TLS identity.
#[derive(Clone)]
pub struct UpstreamConnector {
    dst: SocketAddr,
    /// None for plain HTTP upstreams.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    mark: u32,
    timeout: Duration,
}

impl tower_service::Service<http::Uri> for UpstreamConnector {
    type Response = UpstreamIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let secs = this.timeout.as_secs();
            let dst = this.dst;
            tokio::time::timeout(this.timeout, this.connect())
                .await
                .map_err(|_| ConnectError::Timeout { dst, secs })?
        })
    }
}

impl UpstreamConnector {
    async fn connect(self) -> Result<UpstreamIo, ConnectError> {
        let tcp = connect_marked(self.dst, self.mark).await?;
        let Some((config, name)) = self.tls else {
            return Ok(UpstreamIo {
                io: TokioIo::new(Stream::Plain(tcp)),
                h2: false,
            });
        };
        let host = name.to_str().into_owned();
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|source| ConnectError::Tls {
                host,
                dst: self.dst,
                source,
            })?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(UpstreamIo {
            io: TokioIo::new(Stream::Tls(Box::new(tls))),
            h2,
        })
    }
}

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An upstream connection as hyper-util's pool sees it.
pub struct UpstreamIo {
    io: TokioIo<Stream>,
    h2: bool,
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        // The pool multiplexes h2 connections and reuses h1 ones serially.
        if self.h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

pub type UpstreamClient = Client<UpstreamConnector, ReplayBody<ForwardBody>>;

/// What a caller needs to send a request again after its first answer.
pub struct Sent {
    /// What was kept of the body.
    pub rewind: Rewind<ForwardBody>,
    /// The head as sent (credential spliced in).
    pub head: http::request::Parts,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    host: String,
    dst: SocketAddr,
    tls: bool,
    /// The lane (see `lanes`) the pool serves: its connections' tasks run
    /// on the lane's runtime, so that a request and the upstream connection
    /// it uses share one thread. None on a multi-threaded runtime.
    lane: Option<std::thread::ThreadId>,
}

/// The lane the caller runs on: a current-thread runtime's thread.
fn current_lane() -> Option<std::thread::ThreadId> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    (handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
        .then(|| std::thread::current().id())
}

/// One hyper-util pooled client per (upstream host, destination address):
/// hyper-util keys its pool by URI authority only, and two agents may have
/// dialled different addresses of the same host.
pub struct UpstreamClients {
    mark: u32,
    connect_timeout: Duration,
    clients: Mutex<HashMap<PoolKey, UpstreamClient>>,
}

impl UpstreamClients {
    pub fn new(mark: u32, connect_timeout: Duration) -> UpstreamClients {
        UpstreamClients {
            mark,
            connect_timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The pooled client for `host` at `dst`; TLS with `tls`, or plain HTTP.
    pub fn get(
        &self,
        host: &str,
        dst: SocketAddr,
        tls: Option<&Arc<ClientConfig>>,
    ) -> Result<UpstreamClient, ConnectError> {
        let key = PoolKey {
            host: host.to_owned(),
            dst,
            tls: tls.is_some(),
            lane: current_lane(),
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = builder()
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(self.connector(host, dst, tls)?);
        if clients.len() >= MAX_POOLS {
            tracing::warn!("too many upstream pools; dropping idle ones");
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// A client for one request on a connection of its own, so that a
    /// retry cannot land on the connection that just refused it.
    fn unpooled(
        &self,
        host: &str,
        dst: SocketAddr,
        tls: Option<&Arc<ClientConfig>>,
    ) -> Result<UpstreamClient, ConnectError> {
        Ok(builder()
            .pool_max_idle_per_host(0)
            .build(self.connector(host, dst, tls)?))
    }

    fn connector(
        &self,
        host: &str,
        dst: SocketAddr,
        tls: Option<&Arc<ClientConfig>>,
    ) -> Result<UpstreamConnector, ConnectError> {
        let tls = match tls {
            Some(config) => {
                let name =
                    ServerName::try_from(host.to_owned()).map_err(|e| ConnectError::Tls {
                        host: host.to_owned(),
                        dst,
                        source: io::Error::new(io::ErrorKind::InvalidInput, e),
                    })?;
                Some((config.clone(), name))
            }
            None => None,
        };
        Ok(UpstreamConnector {
            dst,
            tls,
            mark: self.mark,
            timeout: self.connect_timeout,
        })
    }

    /// Sends `request` to `host` at `dst` on a pooled connection. When the
    /// upstream did not process it and its body could be kept, it is sent
    /// once more on a new connection, after telling `retried` why; the
    /// second answer, or error, stands. The first attempt's answer comes
    /// with the [`Rewind`] of its body and its head as sent, for a caller
    /// that may send it again (an upstream that refused the credential).
    pub async fn send(
        &self,
        host: &str,
        dst: SocketAddr,
        tls: Option<&Arc<ClientConfig>>,
        request: Request<ForwardBody>,
        retried: impl FnOnce(&'static str),
    ) -> Result<(Response<Incoming>, Option<Sent>), SendError> {
        let client = self.get(host, dst, tls)?;
        let (head, body) = request.into_parts();
        let (body, rewind) = ReplayBody::new(body, KEEP_LIMIT);
        // The head as rewritten, credential included, for a second attempt.
        let again = head.clone();
        let error = match client.request(Request::from_parts(head, body)).await {
            Ok(response) => {
                let sent = Sent {
                    rewind,
                    head: again,
                };
                return Ok((response, Some(sent)));
            }
            Err(error) => error,
        };
        let Some(why) = unprocessed(&error) else {
            return Err(error.into());
        };
        let Some(body) = rewind.rewind() else {
            tracing::info!(
                upstream = %host,
                %dst,
                why,
                "the upstream did not process the request, but its body was too large to keep: not retried"
            );
            return Err(error.into());
        };
        tracing::info!(
            upstream = %host,
            %dst,
            why,
            "the upstream did not process the request: sending it again on a new connection"
        );
        retried(why);
        let client = self.unpooled(host, dst, tls)?;
        Ok((
            client.request(Request::from_parts(again, body)).await?,
            None,
        ))
    }

    /// Sends `request`, a second attempt whose body was given again, once,
    /// on a pooled connection.
    pub async fn send_again(
        &self,
        host: &str,
        dst: SocketAddr,
        tls: Option<&Arc<ClientConfig>>,
        request: Request<ReplayBody<ForwardBody>>,
    ) -> Result<Response<Incoming>, SendError> {
        let client = self.get(host, dst, tls)?;
        Ok(client.request(request).await?)
    }
}

impl UpstreamClients {
    /// Sends a protocol upgrade (WebSocket) on a new HTTP/1.1 connection of
    /// its own, which the upgraded stream then owns. `tls` must offer only
    /// http/1.1 by ALPN: an upstream that also speaks h2 (as providers do)
    /// would otherwise pick it, and an h2 stream cannot be upgraded with
    /// Upgrade/Connection headers. Never pooled or retried.
    pub async fn send_upgrade(
        &self,
        host: &str,
        dst: SocketAddr,
        tls: Option<&Arc<ClientConfig>>,
        request: Request<ForwardBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let connector = self.connector(host, dst, tls)?;
        let secs = self.connect_timeout.as_secs();
        let io = tokio::time::timeout(self.connect_timeout, connector.connect())
            .await
            .map_err(|_| ConnectError::Timeout { dst, secs })??;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upgrade connection ended with an error");
            }
        });
        // On a connection of its own the request goes in origin form, with
        // the Host the URI names (the pooled client does this itself).
        let (mut head, body) = request.into_parts();
        if let Some(authority) = head.uri.authority()
            && let Ok(value) = http::HeaderValue::from_str(authority.as_str())
        {
            head.headers.insert(http::header::HOST, value);
        }
        if let Some(path) = head.uri.path_and_query().cloned() {
            head.uri = http::Uri::from(path);
        }
        Ok(sender.send_request(Request::from_parts(head, body)).await?)
    }
}

fn builder() -> legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    builder
}

/// Whether `error` (or any of its sources) is a timeout, by type: a connect
/// timeout of ours, hyper's own timeouts, or an I/O timeout.
pub fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if matches!(
            error.downcast_ref::<ConnectError>(),
            Some(ConnectError::Timeout { .. })
        ) || error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
            || error
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Why `error` proves the upstream did not process the request, if it
/// does: then sending it again is safe (RFC 9113 §8.7).
/// - REFUSED_STREAM from the upstream: refused before any processing.
/// - A GOAWAY from the upstream: h2 gives it to the streams above the
///   GOAWAY's last-stream-id, and to requests that could not open a stream
///   after it; a stream at or below it goes on or fails otherwise.
/// - hyper's Canceled: the request was given back unsent (the connection
///   closed before taking it). hyper-util resends those itself only on a
///   reused connection.
///
/// Anything else (a reset with another code, a broken connection, a
/// timeout) may come after the upstream acted on the request.
fn unprocessed(error: &legacy::Error) -> Option<&'static str> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(frame) = error.downcast_ref::<h2::Error>() {
            return if !frame.is_remote() {
                None
            } else if frame.is_reset() && frame.reason() == Some(h2::Reason::REFUSED_STREAM) {
                Some("stream refused")
            } else if frame.is_go_away() {
                Some("left out by GOAWAY")
            } else {
                None
            };
        }
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return Some("not sent");
        }
        cause = error.source();
    }
    None
}
