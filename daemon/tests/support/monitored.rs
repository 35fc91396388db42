//! The injector with what surrounds it in the daemon: its responder (audit
//! log in a temp dir, metrics, quarantines, live connections, the rules on
//! a manual clock), and a real credential store reading a canary key from a
//! root-only file, behind a gate that names a workload. Loopback only.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::net::{TcpSocket, TcpStream};
use warrant::{
    audit::{AttestationSummary, Audit, AuditLog},
    clock::ManualClock,
    config::Config,
    credentials::{self, CredentialStore, StoreOptions},
    metrics::Metrics,
    origin::{Origin, StaticOrigins},
    policy::{Decision, Factor, FactorOutcome},
    proxy::{
        FixedGeneration, GateFuture, GateRequest, Identity, Injector, Refusal, RequestGate, Verdict,
    },
    response::Responder,
    tls::LeafCache,
};

use crate::{
    injector::{MISSING, OPENAI, Sender, local_ca, origin, serve_on_loopback},
    pki::{TestPki, roots_from_pem, tls_over},
};

/// The real credential of these tests: it must never be seen anywhere but
/// at the mock upstream.
pub const CANARY: &str = "sk-CANARY-7f3c9e1a-do-not-leak-0123456789abcdef";
pub const WORKLOAD: &str = "agent-a";
/// The processes of `WORKLOAD` (4242 is the one `Monitored::h1` connects
/// as; the others stand for its forks and children).
pub const WORKLOAD_TGIDS: std::ops::RangeInclusive<u32> = 4242..=4249;

/// Names every caller `WORKLOAD` (tgids 4242 to 4249) or `agent-b` (others),
/// with an attestation whose executable is `exe`; denies paths under
/// /v1/deny with a time-factor reason, as policy would.
pub struct TestGate {
    pub exe: PathBuf,
    pub exe_sha256: String,
}

impl TestGate {
    pub fn new(exe: &Path) -> TestGate {
        use sha2::Digest;
        let bytes = std::fs::read(exe).unwrap();
        TestGate {
            exe: exe.to_path_buf(),
            exe_sha256: hex::encode(sha2::Sha256::digest(&bytes)),
        }
    }
}

impl RequestGate for TestGate {
    /// As the daemon's gate when rules name models: the model is read from
    /// the body.
    fn body_prefix_len(&self) -> usize {
        64 * 1024
    }

    fn identify<'a>(&'a self, origin: &'a Origin) -> GateFuture<'a, Result<Identity, Refusal>> {
        let workload = if WORKLOAD_TGIDS.contains(&origin.tgid) {
            WORKLOAD
        } else {
            "agent-b"
        };
        let identity = Identity {
            workload: Some(workload.to_owned()),
            summary: AttestationSummary {
                tgid: origin.tgid,
                uid: origin.uid,
                unit: Some(format!("{workload}.service")),
                cgroup: Some(format!("/system.slice/{workload}.service")),
                exe: self.exe.display().to_string(),
                exe_sha256: Some(self.exe_sha256.clone()),
                entrypoint: None,
                entrypoint_sha256: None,
                user_namespace: None,
                instance_id: Some("i-test".to_owned()),
                region: Some("local".to_owned()),
                node: None,
                node_workload: None,
                token: None,
            },
            attestation: None,
            program_refusal: None,
            remote: None,
        };
        Box::pin(async move { Ok(identity) })
    }

    fn authorize<'a>(
        &'a self,
        identity: &'a Identity,
        request: GateRequest<'a>,
    ) -> GateFuture<'a, Result<Verdict, Refusal>> {
        Box::pin(async move {
            let workload = identity.workload.clone().unwrap_or_default();
            let path = &request.request.path;
            let denied = path.starts_with("/v1/deny");
            let decision = Decision {
                allowed: !denied,
                workload,
                rule: Some(0),
                factors: vec![
                    FactorOutcome {
                        factor: Factor::Request,
                        passed: true,
                        reason: "upstream allowed".into(),
                    },
                    FactorOutcome {
                        factor: Factor::Time,
                        passed: !denied,
                        reason: if denied {
                            "outside Mon-Fri 08:00-18:00".into()
                        } else {
                            "within hours".into()
                        },
                    },
                ],
            };
            request.audit.decided(&decision);
            if path.starts_with("/v1/budget") {
                // What the budget factor answers when a workload is over.
                return Err(Refusal::throttled(
                    "tokens_per_hour budget of workload agent-a is spent",
                    Duration::from_secs(60),
                ));
            }
            if denied {
                Err(Refusal::policy(
                    http::StatusCode::FORBIDDEN,
                    decision.summary(),
                ))
            } else {
                Ok(Verdict::Allow)
            }
        })
    }
}

pub struct Monitored {
    pub proxy: SocketAddr,
    pub origins: Arc<StaticOrigins>,
    pub warrant_ca_pem: String,
    pub responder: Arc<Responder>,
    pub credentials: Arc<CredentialStore>,
    pub config_path: PathBuf,
    pub audit_path: PathBuf,
    pub exe: PathBuf,
    pub dir: tempfile::TempDir,
    /// The time the automated rules and quarantines see: it moves only
    /// with [`Monitored::advance`].
    pub clock: Arc<ManualClock>,
}

/// The config: the OpenAI upstream (the mock, via ca_file) with the canary
/// credential, and `MISSING` whose credential file does not exist. `audit`
/// is the `[daemon] audit_log` value; `extra` adds sections.
pub fn monitored_config(dir: &Path, ca_file: &Path, audit: &str, extra: &str) -> String {
    let d = dir.display();
    format!(
        r#"
[daemon]
state_dir = "{d}/state"
audit_log = "{audit}"

{extra}

{upstreams}"#,
        upstreams = canary_upstreams(dir, ca_file)
    )
}

/// The upstreams of the canary tests: OpenAI (the mock, through `ca_file`)
/// with the credential in `<dir>/openai.key`, and `MISSING`, whose
/// credential file does not exist.
pub fn canary_upstreams(dir: &Path, ca_file: &Path) -> String {
    let d = dir.display();
    let ca = ca_file.display();
    format!(
        r#"
[[upstream]]
host = "{OPENAI}"
scheme = "openai"
credential = "openai"
ca_file = "{ca}"

[[upstream]]
host = "{MISSING}"
scheme = "openai"
credential = "missing"
ca_file = "{ca}"

[[credential]]
name = "openai"
source = "file"
path = "{d}/openai.key"

[[credential]]
name = "missing"
source = "file"
path = "{d}/missing.key"
"#
    )
}

impl Monitored {
    /// `audit`: None for `<dir>/audit.jsonl`, else the path to use (e.g.
    /// /dev/full).
    pub async fn start(pki: &TestPki, audit: Option<&str>, extra: &str) -> Monitored {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("openai.key");
        std::fs::write(&key, CANARY).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let exe = dir.path().join("agent-exe");
        std::fs::write(&exe, b"#!/bin/sh\necho version 1\n").unwrap();
        let audit_path = match audit {
            Some(path) => PathBuf::from(path),
            None => dir.path().join("audit.jsonl"),
        };
        let text = monitored_config(
            dir.path(),
            &pki.ca_file,
            &audit_path.display().to_string(),
            extra,
        );
        let config_path = dir.path().join("warrant.toml");
        std::fs::write(&config_path, &text).unwrap();
        let config = Config::parse(&text, "test").unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let ca = local_ca(&config, &state);
        let warrant_ca_pem = ca.ca_pem().to_owned();
        let leafs = Arc::new(LeafCache::new(ca));
        let origins = Arc::new(StaticOrigins::default());
        let metrics = Arc::new(Metrics::new());
        let clock = Arc::new(ManualClock::new(jiff::Timestamp::now()));
        let audit = Audit::new(
            AuditLog::open(&config.daemon.audit_log, &config.audit, None),
            metrics.clone(),
        );
        let responder = Responder::new(audit, config.response.clone(), clock.clone());
        let credentials = Arc::new(
            credentials::compile(
                &config.credentials,
                &config.source,
                Arc::new(warrant::clock::SystemClock),
                &StoreOptions::default(),
            )
            .unwrap(),
        );
        {
            let metrics = metrics.clone();
            credentials.observe_refreshes(Arc::new(move |name, ok| {
                metrics.credential_refreshed(name, ok);
            }));
        }
        credentials.prefetch().await;
        let generation = FixedGeneration::serve(Arc::new(TestGate::new(&exe)), credentials.clone());
        let injector = Injector::new(
            &config,
            leafs,
            origins.clone(),
            generation,
            responder.clone(),
            &[],
        )
        .unwrap();
        let proxy = serve_on_loopback(injector).await;
        Monitored {
            proxy,
            origins,
            warrant_ca_pem,
            responder,
            credentials,
            config_path,
            audit_path,
            exe,
            dir,
            clock,
        }
    }

    /// Moves the clock of the rules and quarantines forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// A redirected agent connection from process `tgid` to `dst`.
    pub async fn connect_as(&self, dst: SocketAddr, tgid: u32) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let local = socket.local_addr().unwrap();
        let origin = Origin {
            tgid,
            pid: tgid,
            ..origin(dst)
        };
        self.origins.insert(local, origin);
        socket.connect(self.proxy).await.unwrap()
    }

    pub async fn h1_as(&self, dst: SocketAddr, sni: &str, tgid: u32) -> Sender {
        let tcp = self.connect_as(dst, tgid).await;
        let tls = tls_over(
            tcp,
            roots_from_pem(&self.warrant_ca_pem),
            sni,
            &[b"http/1.1"],
        )
        .await;
        Sender::h1(tls).await
    }

    pub async fn h1(&self, dst: SocketAddr, sni: &str) -> Sender {
        self.h1_as(dst, sni, 4242).await
    }

    pub async fn h2(&self, dst: SocketAddr, sni: &str) -> Sender {
        let tcp = self.connect_as(dst, 4242).await;
        let tls = tls_over(tcp, roots_from_pem(&self.warrant_ca_pem), sni, &[b"h2"]).await;
        Sender::h2(tls).await
    }

    /// The audit lines so far, parsed.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        read_lines(&self.audit_path)
    }

    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit_path).unwrap_or_default()
    }
}

pub fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
