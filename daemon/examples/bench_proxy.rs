//! `cargo xtask bench proxy`: what the injector adds to a request.
//!
//! In one process, on loopback, unprivileged: a mock provider (TLS, h1 and
//! h2, certificate from a throwaway CA) and the injector (with
//! `StaticOrigins`, as the tests run it). Each figure is measured directly
//! against the mock (the baseline) and through the injector in the same run,
//! and printed with the ratio:
//! - keep-alive request latency, p50 and p99 (one h1 connection);
//! - new-connection latency (TCP + TLS + one request);
//! - requests/s at concurrency 64 (h1 keep-alive connections);
//! - streaming throughput of one large SSE response.
//!
//! nginx (if installed: `cargo xtask bench proxy` installs nginx-light) runs
//! beside them as the reference: a TLS-terminating reverse proxy to the same
//! mock that sets the same Authorization header, with a keep-alive upstream
//! pool and response buffering off (as streaming needs), one worker per core.
//!
//! Run it in release (`cargo run --release --example bench_proxy`); debug
//! figures mean nothing. Counts can be scaled with BENCH_SCALE (default 1.0).
//! Everything stays on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use warrant::tls::{LeafCache, LocalCa};

use loopback::{CREDENTIAL, HOST, MockBody, MockCa, Target, one, roots};
use warrant_test_support::loopback;

const SSE_CHUNK: usize = 16 * 1024;

fn scale(n: usize) -> usize {
    let factor: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64 * factor) as usize).max(1)
}

#[tokio::main]
async fn main() {
    // WARRANT_LOG=warn shows why a request failed.
    if let Ok(filter) = std::env::var("WARRANT_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let dir = tempfile::tempdir().unwrap();
    let mock_ca = MockCa::new(dir.path());
    let mock = loopback::start_mock(mock_ca.acceptor(), Arc::new(mock_response)).await;

    // The injector.
    let state = dir.path().join("state");
    leaf_cache(&Arc::new(
        LocalCa::load_or_create(&state, &[HOST.to_owned()]).unwrap(),
    ));
    let (proxy, origins, local_ca) =
        loopback::start_injector(&state, &mock_ca.pem_file, None).await;
    let warrant_roots = roots(local_ca.ca_pem());
    let ca = &mock_ca.cert;

    let direct = Target {
        addr: mock,
        roots: roots(&ca.pem()),
        origins: None,
        mock,
    };
    let nginx_server = Nginx::start(dir.path(), &mock_ca, mock);
    let via_nginx = nginx_server.as_ref().map(|n| Target {
        addr: n.addr,
        roots: roots(&ca.pem()),
        origins: None,
        mock,
    });
    let through = Target {
        addr: proxy,
        roots: warrant_roots,
        origins: Some(origins),
        mock,
    };

    println!(
        "bench proxy: direct = client -> mock upstream; warrant = client -> injector -> mock;"
    );
    println!("             nginx = client -> nginx (TLS reverse proxy, same header) -> mock");
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "", "direct", "warrant", "nginx", "w/direct", "w/nginx"
    );
    let nginx = via_nginx.as_ref();

    let n = scale(3000);
    let (d50, d99) = keep_alive(&direct, n).await;
    let (w50, w99) = keep_alive(&through, n).await;
    let (n50, n99) = match nginx {
        Some(t) => keep_alive(t, n).await,
        None => (f64::NAN, f64::NAN),
    };
    row("keep-alive p50 (ms)", d50, w50, n50);
    row("keep-alive p99 (ms)", d99, w99, n99);
    println!(
        "{:<30} {:>10.3}   (target <= 0.2 ms)",
        "added keep-alive p50 (ms)",
        w50 - d50
    );

    let n = scale(300);
    let d = new_connections(&direct, n).await;
    let w = new_connections(&through, n).await;
    let x = match nginx {
        Some(t) => new_connections(t, n).await,
        None => f64::NAN,
    };
    row("new-connection p50 (ms)", d, w, x);

    let n = scale(200);
    let d = throughput(&direct, 64, n).await;
    let w = throughput(&through, 64, n).await;
    let x = match nginx {
        Some(t) => throughput(t, 64, n).await,
        None => f64::NAN,
    };
    row("requests/s, concurrency 64", d, w, x);
    println!(
        "{:<30} {:>10}   (target >= 1.00)",
        "requests/s warrant/nginx",
        format!("{:.2}", w / x)
    );

    let chunks = scale(4096); // 64 MiB at scale 1
    let d = streaming(&direct, chunks).await;
    let w = streaming(&through, chunks).await;
    let x = match nginx {
        Some(t) => streaming(t, chunks).await,
        None => f64::NAN,
    };
    row("SSE streaming (MiB/s)", d, w, x);
    println!(
        "{:<34} {:>12}",
        "process RSS (MiB, mock + injector)",
        rss_mib()
    );
}

/// A handshake's certificate cost: minting a leaf (cache miss) vs a
/// cache hit.
fn leaf_cache(ca: &Arc<LocalCa>) {
    let n = scale(200);
    let uncached = LeafCache::with_ttl(ca.clone(), Duration::ZERO);
    let start = Instant::now();
    for _ in 0..n {
        uncached.server_config(HOST).unwrap();
    }
    let mint = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    let cached = LeafCache::new(ca.clone());
    cached.server_config(HOST).unwrap();
    let m = n * 100;
    let start = Instant::now();
    for _ in 0..m {
        cached.server_config(HOST).unwrap();
    }
    let hit = start.elapsed().as_secs_f64() * 1e6 / m as f64;
    println!(
        "leaf certificate: minted {mint:.1} µs, cached {hit:.3} µs ({:.0}x)",
        mint / hit
    );
}

fn row(name: &str, direct: f64, warrant: f64, nginx: f64) {
    println!(
        "{name:<30} {direct:>10.3} {warrant:>10.3} {nginx:>10.3} {:>9.2} {:>9.2}",
        warrant / direct,
        warrant / nginx
    );
}

/// nginx as a TLS-terminating reverse proxy in front of the mock, stopped on drop.
struct Nginx {
    addr: SocketAddr,
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl Nginx {
    fn start(dir: &std::path::Path, mock_ca: &MockCa, mock: SocketAddr) -> Option<Nginx> {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(binary) = binary else {
            println!(
                "nginx not found: the nginx column is empty (cargo xtask bench proxy installs it)"
            );
            return None;
        };
        let (cert, key) = mock_ca.leaf();
        let ngx = dir.join("nginx");
        std::fs::create_dir_all(ngx.join("logs")).unwrap();
        std::fs::write(ngx.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(ngx.join("key.pem"), key.serialize_pem()).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = format!(
            r#"daemon off;
worker_processes auto;
pid {ngx}/nginx.pid;
error_log {ngx}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {ngx}/body; proxy_temp_path {ngx}/proxy;
  fastcgi_temp_path {ngx}/fcgi; uwsgi_temp_path {ngx}/uwsgi; scgi_temp_path {ngx}/scgi;
  upstream mock {{ server {mock}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    ssl_certificate {ngx}/cert.pem;
    ssl_certificate_key {ngx}/key.pem;
    keepalive_requests 100000;
    location / {{
      proxy_pass https://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host {HOST};
      proxy_set_header Authorization "Bearer {CREDENTIAL}";
      proxy_ssl_server_name on;
      proxy_ssl_name {HOST};
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {mock_ca};
      proxy_ssl_session_reuse on;
      proxy_buffering off;
    }}
  }}
}}
"#,
            ngx = ngx.display(),
            mock_ca = mock_ca.pem_file.display(),
        );
        std::fs::write(ngx.join("nginx.conf"), conf).unwrap();
        let child = std::process::Command::new(binary)
            .arg("-p")
            .arg(&ngx)
            .arg("-c")
            .arg(ngx.join("nginx.conf"))
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Ready when it accepts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start; see {}/logs/error.log",
                ngx.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Nginx {
            addr,
            dir: ngx,
            child,
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.dir.join("logs/error.log");
            eprintln!(
                "nginx error log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        // SIGQUIT: graceful shutdown of the master and its workers.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::SIGQUIT,
        );
        let _ = self.child.wait();
    }
}

fn rss_mib() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or("?".to_owned(), |kb| format!("{:.1}", kb as f64 / 1024.0))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn keep_alive(target: &Target, n: usize) -> (f64, f64) {
    let mut send = target.connect().await;
    for _ in 0..50 {
        one(&mut send, "/v1/chat/completions").await; // warm the pool
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        one(&mut send, "/v1/chat/completions").await;
        samples.push(start.elapsed());
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

async fn new_connections(target: &Target, n: usize) -> f64 {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let mut send = target.connect().await;
        one(&mut send, "/v1/chat/completions").await;
        samples.push(start.elapsed());
    }
    samples.sort();
    percentile(&samples, 0.5)
}

async fn throughput(target: &Target, concurrency: usize, per_connection: usize) -> f64 {
    let mut senders = Vec::new();
    for _ in 0..concurrency {
        senders.push(target.connect().await);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut send in senders {
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_connection {
                one(&mut send, "/v1/chat/completions").await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (concurrency * per_connection) as f64 / start.elapsed().as_secs_f64()
}

async fn streaming(target: &Target, chunks: usize) -> f64 {
    let mut send = target.connect().await;
    let start = Instant::now();
    let bytes = one(&mut send, &format!("/v1/sse?chunks={chunks}")).await;
    assert_eq!(bytes, chunks * SSE_CHUNK);
    bytes as f64 / (1024.0 * 1024.0) / start.elapsed().as_secs_f64()
}

fn mock_response(req: Request<()>) -> Response<MockBody> {
    if req.uri().path() == "/v1/sse" {
        let chunks = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("chunks="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(SseBody { left: chunks }.boxed())
            .unwrap();
    }
    Response::builder()
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from_static(
                b"{\"id\":\"chatcmpl-1\",\"choices\":[{\"message\":{\"content\":\"hi\"}}]}",
            ))
            .boxed(),
        )
        .unwrap()
}

/// `left` SSE events of SSE_CHUNK bytes each.
struct SseBody {
    left: usize,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        this.left -= 1;
        static EVENT: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
        let event = EVENT.get_or_init(|| {
            let mut event = b"data: ".to_vec();
            event.resize(SSE_CHUNK - 2, b'x');
            event.extend_from_slice(b"\n\n");
            Bytes::from(event)
        });
        Poll::Ready(Some(Ok(Frame::data(event.clone()))))
    }
}
