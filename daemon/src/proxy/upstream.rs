//! Connections to the real APIs: TCP to the address the agent dialled (its
//! Origin's original destination, never a DNS lookup of ours), marked so the
//! eBPF programs leave them alone, TLS verified against the system roots plus
//! the upstream's `ca_file`, pooled and reused across agent connections.

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

use hyper_util::{
    client::legacy::{
        Client,
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

pub type UpstreamClient = Client<UpstreamConnector, super::ForwardBody>;

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    host: String,
    dst: SocketAddr,
    tls: bool,
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
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
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
        let connector = UpstreamConnector {
            dst,
            tls,
            mark: self.mark,
            timeout: self.connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        if clients.len() >= MAX_POOLS {
            tracing::warn!("too many upstream pools; dropping idle ones");
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }
}
