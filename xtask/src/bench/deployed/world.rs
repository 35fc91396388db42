//! Everything the deployed bench starts and creates, and its removal.
//!
//! - Two nginx instances, each with as many workers as warrant has tokio
//!   worker threads: the provider stand-in on UPSTREAM_ADDR:443 (fast
//!   answers, a static SSE stream, and a check of the Authorization header,
//!   so a 2xx proves the credential was injected) and the peer proxy on
//!   PROXY_ADDR:443 (TLS reverse proxy to the upstream setting the same
//!   header).
//! - warrant, the release binary, with the embedded default config changed
//!   only where a bench must (paths, its own cgroup root, the bench CA for
//!   the upstream; see `warrant_config`).
//! - A cgroup root of our own under the cgroup2 mount, the attach point,
//!   with a tagged cgroup (warrant-agents.slice/bench-client.service) and an
//!   untagged one for the baselines' clients.
//! - Clients, started by `client`: each joins its cgroup, then runs in a
//!   mount namespace of its own whose /etc/hosts maps api.openai.com to the
//!   upstream's address (direct, and warrant, which the redirect reaches) or
//!   to the peer proxy's.
//!
//! `Drop` kills what is left in our cgroups (cgroup.kill: our clients only),
//! stops warrant (which detaches its programs), stops nginx, and removes the
//! cgroups, the pins and the directory; it runs on errors and panics. Every
//! child runs in its own process group, so a Ctrl-C reaches only the bench,
//! which stops between runs and cleans up.

use std::{
    fs,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::{
        fs::{DirBuilderExt as _, PermissionsExt as _},
        net::UnixDatagram,
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use toml_edit::{DocumentMut, value};

use super::procfs::{self, Processes};

pub const HOST: &str = "api.openai.com";
/// Loopback addresses unlikely to be taken by the tests' mocks.
pub const UPSTREAM_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 161);
pub const PROXY_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 162);
/// The chat request every client sends (POST /v1/chat/completions).
pub const REQUEST_BODY: &str = r#"{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"Say hello."}]}"#;
/// What the upstream answers it: a chat completion with its usage, which
/// warrant's meter reads.
const RESPONSE_BODY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#;
/// GET this for the SSE stream (a static file of OpenAI chunks).
pub const STREAM_PATH: &str = "/v1/stream";
/// Size of that stream.
pub const STREAM_BYTES: usize = 32 << 20;
/// Idle keep-alive connections are kept this long by both proxies (the
/// idle figures hold them while 10,000 are opened).
const KEEPALIVE_SECS: u64 = 300;
/// File descriptors wanted for us and our children: 10,000 idle
/// connections are an fd each in the client and in the proxy.
pub const NOFILE: u64 = 65_536;

/// Where a client's requests go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Straight to the upstream: the baseline for added latency.
    Direct,
    /// Through warrant, reached by its eBPF redirect.
    Warrant,
    /// Through nginx as the TLS reverse proxy.
    Nginx,
}

impl Target {
    pub fn label(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Warrant => "warrant",
            Target::Nginx => "nginx",
        }
    }
}

/// The programs the bench runs.
pub struct Binaries {
    pub warrant: PathBuf,
    pub client: PathBuf,
    pub nginx: PathBuf,
}

pub struct World {
    pub dir: PathBuf,
    bins: Binaries,
    /// Tokio's worker threads in warrant = nginx workers in each instance.
    pub workers: usize,
    /// RLIMIT_NOFILE of the bench and its children.
    nofile: u64,
    key: String,
    cgroup_root: PathBuf,
    tagged: PathBuf,
    baseline: PathBuf,
    pin_dir: PathBuf,
    upstream: Option<Nginx>,
    proxy: Option<Nginx>,
    warrant: Option<Warrant>,
}

impl World {
    /// Creates the directory, certificates, cgroups, and starts the two
    /// nginx instances and warrant.
    pub fn start(bins: Binaries, workers: usize, nofile: u64) -> Result<World> {
        let id = std::process::id();
        let cgroup_root = cgroup2_mount()?.join(format!("warrant-bench-deployed-{id}"));
        // Created here, 0700, and never one that exists: we are root in /tmp.
        let dir = std::env::temp_dir().join(format!("warrant-bench-deployed-{id}"));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let mut world = World {
            tagged: cgroup_root.join("warrant-agents.slice/bench-client.service"),
            baseline: cgroup_root.join("bench-baseline"),
            cgroup_root,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/warrant-bench-deployed-{id}")),
            dir,
            bins,
            workers,
            nofile,
            key: format!("sk-bench-{:016x}", random()),
            upstream: None,
            proxy: None,
            warrant: None,
        };
        // From here on, Drop removes whatever exists.
        fs::create_dir_all(&world.tagged).context("creating the bench's cgroups (run as root)")?;
        fs::create_dir_all(&world.baseline)?;
        world.write_files()?;
        world.upstream = Some(Nginx::start(
            &world.bins.nginx,
            &world.dir.join("upstream"),
            &world.upstream_conf(),
            SocketAddr::from((UPSTREAM_ADDR, 443)),
            workers,
        )?);
        world.start_proxy()?;
        world.start_warrant()?;
        Ok(world)
    }

    fn write_files(&self) -> Result<()> {
        let status = Command::new(&self.bins.client)
            .args(["pki", "--host", HOST, "--dir"])
            .arg(&self.dir)
            .status()
            .context("running bench_client pki")?;
        if !status.success() {
            bail!("bench_client pki failed: {status}");
        }
        fs::create_dir_all(self.dir.join("credentials"))?;
        for name in ["openai", "anthropic", "gemini"] {
            let path = self.dir.join("credentials").join(name);
            fs::write(&path, format!("{}\n", self.key))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        }
        for (file, addr) in [
            ("hosts-upstream", UPSTREAM_ADDR),
            ("hosts-proxy", PROXY_ADDR),
        ] {
            fs::write(
                self.dir.join(file),
                format!("127.0.0.1 localhost\n{addr} {HOST}\n"),
            )?;
        }
        fs::write(self.dir.join("body.json"), REQUEST_BODY)?;
        fs::write(self.dir.join("stream.sse"), sse_stream(STREAM_BYTES))?;
        Ok(())
    }

    /// The provider stand-in: the chat answer, the SSE file, and 401 unless
    /// the request carries the real key.
    fn upstream_conf(&self) -> String {
        let auth = format!(
            r#"if ($http_authorization != "Bearer {key}") {{ return 401 '{{"error":"not the bench key"}}'; }}"#,
            key = self.key
        );
        let server = format!(
            r#"  server {{
    listen {UPSTREAM_ADDR}:443 ssl http2;
    ssl_certificate {dir}/server.pem;
    ssl_certificate_key {dir}/server.key;
    location = /v1/chat/completions {{
      {auth}
      default_type application/json;
      return 200 '{RESPONSE_BODY}';
    }}
    location = {STREAM_PATH} {{
      {auth}
      default_type text/event-stream;
      alias {dir}/stream.sse;
    }}
  }}
"#,
            dir = self.dir.display(),
        );
        nginx_conf(
            &self.dir.join("upstream"),
            self.workers,
            self.nofile,
            &server,
        )
    }

    /// nginx as a user would put it in front of an LLM API: a keep-alive
    /// pool to the upstream, the certificate verified, the same header set,
    /// response buffering off (streams).
    fn proxy_conf(&self) -> String {
        let server = format!(
            r#"  upstream provider {{ server {UPSTREAM_ADDR}:443; keepalive 128; }}
  server {{
    listen {PROXY_ADDR}:443 ssl http2;
    ssl_certificate {dir}/server.pem;
    ssl_certificate_key {dir}/server.key;
    location / {{
      proxy_pass https://provider;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host {HOST};
      proxy_set_header Authorization "Bearer {key}";
      proxy_ssl_server_name on;
      proxy_ssl_name {HOST};
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {dir}/ca.pem;
      proxy_ssl_session_reuse on;
      proxy_buffering off;
    }}
  }}
"#,
            dir = self.dir.display(),
            key = self.key,
        );
        nginx_conf(&self.dir.join("proxy"), self.workers, self.nofile, &server)
    }

    /// Starts (or restarts, fresh) the peer proxy.
    pub fn start_proxy(&mut self) -> Result<()> {
        if let Some(proxy) = self.proxy.take() {
            proxy.stop();
        }
        self.proxy = Some(Nginx::start(
            &self.bins.nginx,
            &self.dir.join("proxy"),
            &self.proxy_conf(),
            SocketAddr::from((PROXY_ADDR, 443)),
            self.workers,
        )?);
        Ok(())
    }

    /// Starts (or restarts, fresh) warrant; returns when it says READY=1.
    pub fn start_warrant(&mut self) -> Result<()> {
        if let Some(warrant) = self.warrant.take() {
            warrant.stop();
        }
        let config = self.dir.join("warrant.toml");
        fs::write(&config, self.warrant_config()?)?;
        let warrant = Warrant::start(&self.bins.warrant, &config, &self.dir)?;
        // For a profiler: `perf record -g -p PID` while a figure runs.
        println!(
            "  warrant is pid {} (logs in {})",
            warrant.pid(),
            self.dir.display()
        );
        self.warrant = Some(warrant);
        Ok(())
    }

    /// The embedded default with the bench's overrides: its own paths,
    /// listener and cgroup root, the bench CA for api.openai.com, and two
    /// limits the idle-connection figures need (nginx gets the same).
    fn warrant_config(&self) -> Result<String> {
        let output = Command::new(&self.bins.warrant)
            .arg("default-config")
            .output()
            .context("running warrant default-config")?;
        let mut doc: DocumentMut = String::from_utf8(output.stdout)?.parse()?;
        let dir = &self.dir;
        let path = |p: &str| dir.join(p).display().to_string();
        let daemon = &mut doc["daemon"];
        daemon["listen"] = value(format!("127.0.0.1:{}", free_port()?));
        daemon["listen6"] = value("");
        daemon["state_dir"] = value(path("state"));
        daemon["audit_log"] = value(path("audit.jsonl"));
        daemon["metrics"] = value(format!("127.0.0.1:{}", free_port()?));
        daemon["cgroup_root"] = value(self.cgroup_root.display().to_string());
        daemon["bpf_pin_dir"] = value(self.pin_dir.display().to_string());
        doc["control"]["socket"] = value(path("control.sock"));
        // 10,000 idle connections: above the default 4096.
        doc["proxy"]["max_connections"] = value(30_000);
        // The default closes an idle HTTP/1.1 connection after 10 s; the
        // idle figures hold them while thousands more are opened.
        doc["proxy"]["header_read_timeout_secs"] = value(KEEPALIVE_SECS as i64);
        for upstream in doc["upstream"]
            .as_array_of_tables_mut()
            .context("the default config has no [[upstream]]")?
            .iter_mut()
            .filter(|u| u["host"].as_str() == Some(HOST))
        {
            upstream["ca_file"] = value(path("ca.pem"));
        }
        // The default workload names the system manager's
        // warrant-agents.slice, at the mount's root (attest/scope.rs); the
        // bench's slice is under its own cgroup root, so the workload names
        // that path instead (a `cgroup` glob: root-owned directories, none
        // delegated, as the release binary requires).
        let mount = cgroup2_mount()?;
        let slice = self
            .tagged
            .parent()
            .and_then(|p| p.strip_prefix(&mount).ok())
            .context("the bench's cgroups are not under the cgroup2 mount")?;
        for workload in doc["workload"]
            .as_array_of_tables_mut()
            .context("the default config has no [[workload]]")?
            .iter_mut()
        {
            workload.remove("slice");
            workload["cgroup"] = value(format!("/{}", slice.display()));
        }
        for credential in doc["credential"]
            .as_array_of_tables_mut()
            .context("the default config has no [[credential]]")?
            .iter_mut()
        {
            let name = credential["name"].as_str().unwrap_or_default().to_owned();
            credential["path"] = value(path(&format!("credentials/{name}")));
        }
        Ok(doc.to_string())
    }

    /// A command running `program` as a client of `target`: in the tagged
    /// cgroup (warrant) or the untagged one (baselines), with the private
    /// /etc/hosts that sends api.openai.com where `target` needs. The
    /// caller adds the program's arguments.
    pub fn client(&self, target: Target, program: &Path) -> Command {
        let (cgroup, hosts) = match target {
            Target::Warrant => (&self.tagged, "hosts-upstream"),
            Target::Direct => (&self.baseline, "hosts-upstream"),
            Target::Nginx => (&self.baseline, "hosts-proxy"),
        };
        // Join the cgroup, then exec in a new mount namespace (private
        // propagation: the bind mount never reaches the host) with the
        // hosts file bound over /etc/hosts. The pid stays the same through
        // both execs, so the client is the process in the cgroup.
        const WRAPPER: &str = r#"echo $$ > "$1" && shift && exec unshare --mount --propagation private sh -c 'mount --bind "$1" /etc/hosts && shift && exec "$@"' sh "$@""#;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", WRAPPER, "sh"])
            .arg(cgroup.join("cgroup.procs"))
            .arg(self.dir.join(hosts))
            .arg(program)
            .process_group(0);
        cmd
    }

    /// bench_client `mode` (connect | idle) as a client of `target`.
    pub fn bench_client(&self, target: Target, mode: &str) -> Command {
        let mut cmd = self.client(target, &self.bins.client);
        cmd.arg(mode)
            .arg("--ca")
            .arg(self.ca(target))
            .arg("--auth")
            .arg(self.auth(target))
            .args(["--body", REQUEST_BODY]);
        cmd
    }

    /// The Authorization header a client of `target` sends: the real key
    /// straight to the upstream, a placeholder through either proxy.
    pub fn auth(&self, target: Target) -> String {
        match target {
            Target::Direct => format!("Bearer {}", self.key),
            Target::Warrant | Target::Nginx => "Bearer placeholder".to_owned(),
        }
    }

    /// The CA a client of `target` trusts: warrant's bundle, or the one
    /// that signed both nginx certificates.
    pub fn ca(&self, target: Target) -> PathBuf {
        match target {
            Target::Warrant => self.dir.join("state/trust-bundle.pem"),
            Target::Direct | Target::Nginx => self.dir.join("ca.pem"),
        }
    }

    /// The processes that serve `target`: warrant, or the workers of the
    /// nginx instance (the master holds no connections).
    pub fn server(&self, target: Target) -> Result<Processes> {
        match target {
            Target::Warrant => Ok(Processes(vec![
                self.warrant
                    .as_ref()
                    .context("warrant is not running")?
                    .pid(),
            ])),
            Target::Nginx => self
                .proxy
                .as_ref()
                .context("nginx is not running")?
                .workers(),
            Target::Direct => self
                .upstream
                .as_ref()
                .context("the upstream is not running")?
                .workers(),
        }
    }

    /// The last lines of every log, for a failure report.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for log in ["warrant.log", "upstream/error.log", "proxy/error.log"] {
            let text = fs::read_to_string(self.dir.join(log)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            if !tail.is_empty() {
                out.push_str(&format!("--- {log} (last lines)\n{}\n", tail.join("\n")));
            }
        }
        out
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for cgroup in [&self.tagged, &self.baseline] {
            kill_cgroup(cgroup);
        }
        if let Some(warrant) = self.warrant.take() {
            warrant.stop();
        }
        for nginx in [self.proxy.take(), self.upstream.take()]
            .into_iter()
            .flatten()
        {
            nginx.stop();
        }
        let slice = self.tagged.parent().map(Path::to_owned);
        for cgroup in [
            Some(self.tagged.clone()),
            slice,
            Some(self.baseline.clone()),
        ]
        .into_iter()
        .flatten()
        {
            let _ = fs::remove_dir(cgroup);
        }
        if let Err(err) = fs::remove_dir(&self.cgroup_root)
            && self.cgroup_root.exists()
        {
            eprintln!(
                "bench: could not remove {}: {err}",
                self.cgroup_root.display()
            );
        }
        // warrant unpins on a clean exit (--detach-on-exit); this covers a crash.
        let _ = fs::remove_dir_all(&self.pin_dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Kills the processes left in one of our cgroups (cgroup.kill, Linux 5.14)
/// and waits until it is empty.
fn kill_cgroup(cgroup: &Path) {
    if !cgroup.exists() {
        return;
    }
    let _ = fs::write(cgroup.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let events = fs::read_to_string(cgroup.join("cgroup.events")).unwrap_or_default();
        if !events.lines().any(|l| l == "populated 1") {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The nginx configuration around one `http` block's servers.
fn nginx_conf(prefix: &Path, workers: usize, nofile: u64, servers: &str) -> String {
    format!(
        r#"daemon off;
# Workers as root: they read the SSE file in our 0700 directory.
user root;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections {nofile}; }}
http {{
  access_log off;
  client_body_temp_path {p}/body;
  proxy_temp_path {p}/proxy;
  fastcgi_temp_path {p}/fastcgi;
  uwsgi_temp_path {p}/uwsgi;
  scgi_temp_path {p}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout {KEEPALIVE_SECS}s;
{servers}}}
"#,
        p = prefix.display(),
    )
}

/// An OpenAI chat stream of about `bytes`: small chunks with
/// `"usage":null`, the usage chunk, `[DONE]`; what warrant's meter parses.
fn sse_stream(bytes: usize) -> Vec<u8> {
    let chunk = br#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"token "},"finish_reason":null}],"usage":null}

"#;
    let mut out = Vec::with_capacity(bytes + 512);
    while out.len() + chunk.len() < bytes {
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(br#"data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":180000,"total_tokens":180009}}

data: [DONE]

"#);
    out
}

struct Nginx {
    child: Child,
}

impl Nginx {
    /// Starts nginx with `conf` in `prefix`; ready when `addr` accepts and
    /// all its workers exist.
    fn start(
        binary: &Path,
        prefix: &Path,
        conf: &str,
        addr: SocketAddr,
        workers: usize,
    ) -> Result<Nginx> {
        fs::create_dir_all(prefix)?;
        fs::write(prefix.join("nginx.conf"), conf)?;
        let log = fs::File::create(prefix.join("stderr.log"))?;
        let child = Command::new(binary)
            .arg("-p")
            .arg(prefix)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting nginx")?;
        let mut nginx = Nginx { child };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = nginx.child.try_wait()? {
                bail!(
                    "nginx exited ({status}) on {addr}; is the address free? {}",
                    fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
                );
            }
            if TcpStream::connect(addr).is_ok()
                && procfs::children(nginx.child.id())?.len() == workers
            {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx on {addr} not ready after 20 s; see {}",
                    prefix.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn workers(&self) -> Result<Processes> {
        Ok(Processes(procfs::children(self.child.id())?))
    }

    /// SIGTERM: nginx's fast shutdown of the master and its workers.
    fn stop(mut self) {
        stop(&mut self.child, Signal::SIGTERM);
    }
}

struct Warrant {
    child: Child,
    /// READY=1 arrives here; kept open until warrant is stopped (it says
    /// STOPPING=1 on its way out).
    notify: UnixDatagram,
}

impl Warrant {
    fn start(binary: &Path, config: &Path, dir: &Path) -> Result<Warrant> {
        let notify_path = dir.join("notify.sock");
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)?;
        notify.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("warrant.log"))?;
        writeln!(log, "=== warrant run --config {}", config.display())?;
        let child = Command::new(binary)
            .args(["run", "--detach-on-exit", "--config"])
            .arg(config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WARRANT_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting warrant")?;
        let mut warrant = Warrant { child, notify };
        warrant.wait_ready()?;
        Ok(warrant)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 512];
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("warrant exited before it was ready ({status})");
            }
            match self.notify.recv(&mut buf) {
                Ok(n)
                    if String::from_utf8_lossy(&buf[..n])
                        .lines()
                        .any(|l| l == "READY=1") =>
                {
                    return Ok(());
                }
                Ok(_) => {}
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(err) => return Err(err).context("reading warrant's notify socket"),
            }
            if Instant::now() > deadline {
                bail!("warrant did not report READY=1 within 60 s");
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM: warrant detaches its programs and exits.
    fn stop(mut self) {
        stop(&mut self.child, Signal::SIGTERM);
    }
}

/// Sends `signal` to a child we started and reaps it; SIGKILL after 10 s.
fn stop(child: &mut Child, signal: Signal) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, signal);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn cgroup2_mount() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f.get(1).map(PathBuf::from))?
        })
        .context("no cgroup2 mount in /proc/mounts")
}

/// A loopback port free now (bound, read, released).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random() -> u64 {
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    u64::from_ne_bytes(bytes)
}
