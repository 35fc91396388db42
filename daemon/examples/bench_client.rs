//! The TLS client of `cargo xtask bench deployed` for what wrk and h2load do
//! not measure. The bench runs it as a separate process, in the cgroup and
//! mount namespace of the target it measures (tagged for warrant, untagged
//! for nginx and the upstream), so `api.openai.com` resolves through that
//! namespace's /etc/hosts and warrant is reached through its eBPF redirect.
//!
//! It is an HTTP/1.1 client as the provider SDKs are (hyper over rustls,
//! certificates verified against `--ca`, no TLS session resumption: every
//! new connection pays a full handshake, as a new agent process does):
//!
//! - `pki --dir D`: a throwaway CA (`ca.pem`) and a leaf for the host
//!   (`server.pem`, `server.key`), ECDSA P-256 like warrant's own leaves,
//!   for the nginx upstream and the nginx proxy.
//! - `connect --n N`: N new connections one after another, each TCP + TLS +
//!   one request + the whole response; prints their latency percentiles as
//!   one JSON line.
//! - `idle`: holds idle keep-alive connections, each after one request (the
//!   state of an SDK's pool between calls). Commands on stdin, one a line:
//!   `open N` (open connections until N are held; answers `open ALIVE`),
//!   `status` (answers `alive ALIVE`), `close` (closes them all and waits
//!   until they are gone; answers `closed`). ALIVE counts the connections
//!   the server has not closed.
//!
//! Any failure (refused connection, certificate, non-2xx) ends the process
//! with a non-zero status and the reason on stderr.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore, client::Resumption, pki_types::ServerName};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::TlsConnector;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Write a throwaway CA and a leaf for HOST into DIR.
    Pki {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "api.openai.com")]
        host: String,
    },
    /// New connections one after another; latency percentiles as JSON.
    Connect {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 200)]
        n: usize,
        /// Connections made first and not counted.
        #[arg(long, default_value_t = 10)]
        warmup: usize,
    },
    /// Hold idle connections, driven by commands on stdin.
    Idle {
        #[command(flatten)]
        target: TargetArgs,
        /// Connections opened at once while growing the pool.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

#[derive(Args)]
struct TargetArgs {
    /// Resolved through /etc/hosts (the bench's private one).
    #[arg(long, default_value = "api.openai.com")]
    host: String,
    #[arg(long, default_value_t = 443)]
    port: u16,
    /// PEM file of the CA(s) to trust.
    #[arg(long)]
    ca: PathBuf,
    /// The Authorization header to send.
    #[arg(long)]
    auth: String,
    #[arg(long, default_value = "/v1/chat/completions")]
    path: String,
    /// The JSON request body (POST).
    #[arg(long)]
    body: String,
}

/// Where to connect and what to send, resolved once.
struct Target {
    addr: SocketAddr,
    name: ServerName<'static>,
    tls: TlsConnector,
    host: String,
    auth: String,
    path: String,
    body: Bytes,
}

type Sender = SendRequest<Full<Bytes>>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(err) = run(Cli::parse()).await {
        eprintln!("bench_client: {err:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.mode {
        Mode::Pki { dir, host } => pki(&dir, &host),
        Mode::Connect { target, n, warmup } => {
            let target = Target::resolve(target).await?;
            connect(&target, n, warmup).await
        }
        Mode::Idle {
            target,
            concurrency,
        } => {
            let target = Arc::new(Target::resolve(target).await?);
            idle(target, concurrency.max(1)).await
        }
    }
}

fn pki(dir: &Path, host: &str) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A subject distinct from the leaf's: OpenSSL (nginx) takes a leaf whose
    // subject equals its issuer's for self-signed.
    params
        .distinguished_name
        .push(DnType::CommonName, "warrant bench CA");
    let ca = params.self_signed(&ca_key)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![host.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, host);
    let leaf = params.signed_by(&key, &ca, &ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("server.pem"), leaf.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    Ok(())
}

impl Target {
    async fn resolve(args: TargetArgs) -> Result<Target> {
        let addr = tokio::net::lookup_host((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("resolving {}", args.host))?
            .next()
            .with_context(|| format!("{} has no address", args.host))?;
        let pem = std::fs::read(&args.ca).with_context(|| format!("{}", args.ca.display()))?;
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert?)?;
        }
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        Ok(Target {
            addr,
            name: ServerName::try_from(args.host.clone())?,
            tls: TlsConnector::from(Arc::new(config)),
            host: args.host,
            auth: args.auth,
            path: args.path,
            body: Bytes::from(args.body),
        })
    }

    /// TCP + TLS + HTTP/1.1 handshake; the connection's task ends when the
    /// server closes it or the sender is dropped.
    async fn connect(&self) -> Result<(Sender, JoinHandle<()>)> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let tls = self
            .tls
            .connect(self.name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((send, task))
    }

    /// One request; reads the whole response and fails on a non-2xx.
    async fn request(&self, send: &mut Sender) -> Result<usize> {
        let request = Request::post(self.path.as_str())
            .header("host", self.host.as_str())
            .header("authorization", self.auth.as_str())
            .header("content-type", "application/json")
            .body(Full::new(self.body.clone()))?;
        send.ready().await?;
        let response = send.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "{} answered {status}: {}",
                self.host,
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        Ok(body.len())
    }
}

async fn connect(target: &Target, n: usize, warmup: usize) -> Result<()> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let start = Instant::now();
        let (mut send, task) = target.connect().await?;
        target.request(&mut send).await?;
        let elapsed = start.elapsed();
        drop(send);
        let _ = task.await;
        if i >= warmup {
            samples.push(elapsed);
        }
    }
    if samples.is_empty() {
        bail!("--n 0: nothing measured");
    }
    samples.sort();
    let ms = |p: f64| {
        let i = ((samples.len() - 1) as f64 * p).round() as usize;
        samples[i].as_secs_f64() * 1e3
    };
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64;
    println!(
        "{}",
        serde_json::json!({
            "n": samples.len(),
            "p25_ms": ms(0.25),
            "p50_ms": ms(0.5),
            "p75_ms": ms(0.75),
            "p99_ms": ms(0.99),
            "mean_ms": mean * 1e3,
        })
    );
    Ok(())
}

async fn idle(target: Arc<Target>, concurrency: usize) -> Result<()> {
    let mut held: Vec<(Sender, JoinHandle<()>)> = Vec::new();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let reply = match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["open", n] => {
                let want: usize = n.parse().with_context(|| format!("open {n:?}"))?;
                grow(&target, &mut held, want, concurrency).await?;
                format!("open {}", alive(&held))
            }
            ["status"] => format!("alive {}", alive(&held)),
            ["close"] => {
                for (send, task) in held.drain(..) {
                    drop(send);
                    let _ = task.await;
                }
                "closed".to_owned()
            }
            _ => bail!("unknown command {line:?}"),
        };
        out.write_all(format!("{reply}\n").as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}

/// Opens connections, `concurrency` at a time, until `want` are held.
async fn grow(
    target: &Arc<Target>,
    held: &mut Vec<(Sender, JoinHandle<()>)>,
    want: usize,
    concurrency: usize,
) -> Result<()> {
    let mut opening = JoinSet::new();
    let mut started = held.len();
    while held.len() < want {
        while started < want && opening.len() < concurrency {
            let target = target.clone();
            opening.spawn(async move {
                let (mut send, task) = target.connect().await?;
                target.request(&mut send).await?;
                anyhow::Ok((send, task))
            });
            started += 1;
        }
        match opening.join_next().await {
            Some(done) => held.push(done??),
            None => break,
        }
    }
    Ok(())
}

fn alive(held: &[(Sender, JoinHandle<()>)]) -> usize {
    held.iter().filter(|(_, task)| !task.is_finished()).count()
}
