//! The daemon's request path in-process, built as `warrant run` builds it:
//! the configuration compiled once, the real gate (attestation, workloads,
//! policy, budgets in the state dir's ledger), credentials from root-only
//! files, the real `Reloader` (which rebuilds the generation and fetches the
//! credentials again), the responder with its audit log and metrics, and the
//! control socket's real backend. Only the eBPF half is replaced:
//! `StaticOrigins` for the Origins and a recording stand-in for the
//! intercepted ports. Agent connections are attested as this test process
//! (its pid, uid and cgroup), which the configured workload selects by uid.
//! Loopback only.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use tokio::{
    net::{TcpSocket, TcpStream},
    sync::mpsc,
};
use warrant::{
    attest::{Attestor, InstanceHandle, MemoryExecGenerations, process},
    audit::{Audit, AuditLog},
    clock::SystemClock,
    config::Config,
    control::ControlServer,
    metrics::Metrics,
    origin::{Origin, StaticOrigins},
    proxy::Injector,
    redirect::{Intercept, RedirectError, tagging},
    response::Responder,
    service::{self, Compiled, DaemonBackend, reload::Reloader},
    tls::LeafCache,
};

use crate::{
    credentials::write_private,
    injector::{MISSING, OPENAI, Sender, local_ca, serve_on_loopback},
    monitored::canary_upstreams,
    pki::{TestPki, roots_from_pem, tls_over},
};

pub const WORKLOAD: &str = "agent-a";

/// The intercepted ports as the reload last set them (no eBPF here).
#[derive(Default)]
pub struct RecordedIntercept(pub Mutex<Vec<(Vec<u16>, bool)>>);

impl Intercept for RecordedIntercept {
    fn set_intercept(&self, ports: &[u16], block_quic: bool) -> Result<(), RedirectError> {
        self.0.lock().unwrap().push((ports.to_vec(), block_quic));
        Ok(())
    }
}

pub struct Daemon {
    pub proxy: SocketAddr,
    pub origins: Arc<StaticOrigins>,
    pub warrant_ca_pem: String,
    pub responder: Arc<Responder>,
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    pub intercept: Arc<RecordedIntercept>,
    pub config_path: PathBuf,
    pub audit_path: PathBuf,
    pub control_socket: PathBuf,
    pub dir: tempfile::TempDir,
    _tagging: mpsc::UnboundedReceiver<Vec<tagging::CgroupSelector>>,
}

/// The configuration: workload `WORKLOAD` (this process's uid), the OpenAI
/// upstream (the mock, through `ca_file`) with the credential in
/// `<dir>/openai.key`, `MISSING` whose credential file does not exist, and
/// a policy that allows three paths under a token budget. `extra` adds
/// sections.
pub fn daemon_config(dir: &Path, ca_file: &Path, extra: &str) -> String {
    let d = dir.display();
    let uid = nix::unistd::getuid();
    format!(
        r#"
[daemon]
state_dir = "{d}/state"
audit_log = "{d}/audit.jsonl"

[control]
socket = "{d}/control.sock"

# Attestation reads this test process; hashing its (large) executable is
# beside the point.
[attest]
max_hash_bytes = 1

{extra}

[[workload]]
name = "{WORKLOAD}"
uid = {uid}

{upstreams}

[[policy]]
workload = "{WORKLOAD}"
upstreams = ["{OPENAI}", "{MISSING}"]
paths = ["/v1/chat/completions", "/v1/echo", "/v1/models"]
tokens_per_hour = 100000
"#,
        upstreams = canary_upstreams(dir, ca_file)
    )
}

impl Daemon {
    /// Starts it with `key` as the OpenAI credential.
    pub async fn start(pki: &TestPki, key: &str, extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        write_private(&dir.path().join("openai.key"), key);
        let text = daemon_config(dir.path(), &pki.ca_file, extra);
        let config_path = dir.path().join("warrant.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = Config::load(&config_path).unwrap();
        let mut compiled = Compiled::new(&config).unwrap();
        let state = &config.daemon.state_dir;
        std::fs::create_dir_all(state).unwrap();
        let ca = local_ca(&config, state);
        let warrant_ca_pem = ca.ca_pem().to_owned();
        let metrics = Arc::new(Metrics::new());
        let audit = Audit::new(
            AuditLog::open(&config.daemon.audit_log, &config.audit, None),
            metrics.clone(),
        );
        let responder = Responder::new(audit, config.response.clone(), Arc::new(SystemClock));
        let instance = InstanceHandle::default();
        let attestor = Arc::new(Attestor::new(
            &config.attest,
            Arc::new(MemoryExecGenerations::default()),
            instance.clone(),
        ));
        let budgets = service::usage_budgets(&config, &mut compiled.usage).unwrap();
        let build = service::generation_builder(&metrics, &attestor, &budgets);
        let intercept = Arc::new(RecordedIntercept::default());
        let (tagging, tagging_rx) = mpsc::unbounded_channel();
        let config = Arc::new(config);
        let reloader = Arc::new(
            Reloader::start(
                Some(config_path.clone()),
                config.clone(),
                compiled,
                build,
                intercept.clone(),
                tagging,
            )
            .await,
        );
        service::meter_budgets(&metrics, &reloader);
        let origins = Arc::new(StaticOrigins::default());
        let injector = Injector::new(
            &config,
            Arc::new(LeafCache::new(ca)),
            origins.clone(),
            reloader.generation.clone(),
            responder.clone(),
            &[],
        )
        .unwrap()
        // In-process, without agents: relays are the daemon's own sockets.
        .with_connector(Arc::new(warrant::proxy::egress::DaemonSocket));
        let proxy = serve_on_loopback(injector).await;
        let control = ControlServer::bind(
            &config.control.socket,
            None,
            responder.clone(),
            Arc::new(DaemonBackend {
                reloader: reloader.clone(),
                instance,
                attestor,
                tagging: Arc::new(warrant::redirect::tagging::TaggerHealth::new(None)),
                // No redirector in process: no kernel probe to report.
                kernel: serde_json::Value::Null,
                pins: None,
            }),
        )
        .unwrap();
        tokio::spawn(control.serve());
        Daemon {
            proxy,
            origins,
            warrant_ca_pem,
            responder,
            metrics,
            reloader,
            intercept,
            control_socket: config.control.socket.clone(),
            audit_path: config.daemon.audit_log.clone(),
            config_path,
            dir,
            _tagging: tagging_rx,
        }
    }

    /// A redirected connection to `dst` as the kernel would record one made
    /// by this test process just now.
    pub async fn connect(&self, dst: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let me = std::process::id();
        let cgroup = process::cgroup_v2_path(me).unwrap();
        let mount = warrant::mounts::cgroup2().unwrap();
        let cgroup_id = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(mount.join(cgroup.trim_start_matches('/'))).unwrap(),
        );
        self.origins.insert(
            socket.local_addr().unwrap(),
            Origin {
                original_dst: dst,
                pid: me,
                tgid: me,
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                cgroup_id,
                exec_gen: 0,
                connect_boot_ns: process::boot_time_ns(),
            },
        );
        socket.connect(self.proxy).await.unwrap()
    }

    pub async fn h1(&self, dst: SocketAddr, sni: &str) -> Sender {
        let tcp = self.connect(dst).await;
        let tls = tls_over(
            tcp,
            roots_from_pem(&self.warrant_ca_pem),
            sni,
            &[b"http/1.1"],
        )
        .await;
        Sender::h1(tls).await
    }

    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit_path).unwrap_or_default()
    }
}
