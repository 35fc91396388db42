//! Gateway mode with the real binaries, across a network namespace: a node
//! (`warrant run` with `[forward]`, no credential) on the test's host with
//! agents in a tagged cgroup, and `warrant gateway` in a network namespace
//! the test creates, reached over a veth pair, with its own private
//! /etc/hosts mapping the provider to a mock on the veth's host side. The
//! mock sees the real key, which only the gateway holds.
//!
//! Then the test itself acts as nodes, enrolled and not, over mTLS, to try
//! what an attacker would: a statement replayed, one bound to another
//! request (path, body), one too old, a key that is not enrolled, no
//! client certificate, a host that is not a configured upstream. Each is
//! refused in the provider's shape and audited; none reaches the mock.
#![cfg(feature = "privileged-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    fs,
    net::SocketAddr,
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use warrant::gateway::{Binding, NodeKey, STATEMENT_HEADER, node::Unsigned};
use warrant_test_support::{
    binary::{Warrant, strip_ansi},
    cgroups::unique,
    mock_provider::{MockProvider, MockSettings},
    netns::TestNetns,
    prereq::{self, Need},
};

const NEEDS: &[Need] = &[Need::Root, Need::Program("ip"), Need::Program("curl")];

fn bin() -> PathBuf {
    std::env::var_os("WARRANT_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_warrant")))
}

fn sdk_dir() -> PathBuf {
    std::env::var_os("WARRANT_SDK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sdk"))
}

/// `warrant gateway`, in a network namespace or not, with its own
/// /etc/hosts.
struct Gateway {
    child: Option<Child>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    netns: Option<String>,
}

impl Gateway {
    fn audit(&self) -> String {
        fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default()
    }

    fn log(&self) -> String {
        strip_ansi(&fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default())
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Gateway {
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the binary on the config written, and waits for READY=1.
    fn spawn(&mut self) {
        let d = self.dir.path();
        let notify_path = d.join(unique("notify"));
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("gateway.log"))
            .unwrap();
        let mut command = match &self.netns {
            Some(name) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name, "/usr/bin/unshare"]);
                c
            }
            None => Command::new("/usr/bin/unshare"),
        };
        command
            .args(["--mount", "--propagation", "private"])
            .args([
                "/bin/sh",
                "-c",
                "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
            ])
            .arg(d.join("hosts"))
            .arg(bin())
            .args(["gateway", "--config"])
            .arg(d.join("gateway.toml"))
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WARRANT_LOG", "info,warrant::proxy=debug")
            .stdin(Stdio::null())
            .stderr(log);
        self.child = Some(command.spawn().unwrap());
        let mut buf = [0u8; 1024];
        loop {
            let n = notify
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no READY=1 from the gateway ({e}): {}", self.log()));
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return;
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The gateway's CA and its certificate for `ip`, written into `dir`.
fn gateway_pki(dir: &Path, ip: std::net::IpAddr) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "warrant gateway test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![SanType::IpAddress(ip)];
    let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    fs::write(dir.join("gw.pem"), leaf.pem()).unwrap();
    fs::write(dir.join("gw.key"), key.serialize_pem()).unwrap();
    fs::set_permissions(dir.join("gw.key"), fs::Permissions::from_mode(0o600)).unwrap();
}

/// Where a gateway runs and what it adds to the common config.
struct GatewaySpec<'a> {
    netns: Option<&'a TestNetns>,
    listen: SocketAddr,
    /// The address api.openai.com resolves to for the gateway.
    provider_ip: &'a str,
    /// Keys of the [[policy]] of the "tests" workload (budgets).
    tests_policy: &'a str,
    /// More sections ([usage]).
    extra: &'a str,
}

/// The gateway's directory with its CA and certificate for `ip`, made
/// before anything that must trust it starts.
fn gateway_dir(ip: std::net::IpAddr) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    gateway_pki(dir.path(), ip);
    dir
}

fn start_gateway(
    spec: &GatewaySpec<'_>,
    dir: tempfile::TempDir,
    mock: &MockProvider,
    key: &str,
    nodes: &[(&str, String)],
) -> Gateway {
    let d = dir.path();
    let addr = spec.listen;
    fs::write(d.join("provider-ca.pem"), &mock.ca_pem).unwrap();
    fs::write(d.join("openai.key"), key).unwrap();
    fs::set_permissions(d.join("openai.key"), fs::Permissions::from_mode(0o600)).unwrap();
    let provider_ip = spec.provider_ip;
    fs::write(
        d.join("hosts"),
        format!("127.0.0.1 localhost\n{provider_ip} api.openai.com\n"),
    )
    .unwrap();
    let enrolled: String = nodes
        .iter()
        .map(|(name, key)| {
            format!("[[gateway.node]]\nname = \"{name}\"\npublic_key = \"{key}\"\n\n")
        })
        .collect();
    let (tests_policy, extra) = (spec.tests_policy, spec.extra);
    let config = format!(
        r#"
[daemon]
state_dir = "{d}/state"
audit_log = "{d}/audit.jsonl"
metrics = "127.0.0.1:0"

[control]
socket = "{d}/control.sock"

[gateway]
listen = "{addr}"
certificate = "{d}/gw.pem"
key = "{d}/gw.key"
name = "gw-test"

{enrolled}
[[upstream]]
host = "api.openai.com"
scheme = "openai"
credential = "openai"
ca_file = "{d}/provider-ca.pem"

[[credential]]
name = "openai"
source = "file"
path = "{d}/openai.key"

[[workload]]
name = "support"
nodes = ["web-*"]
node_workload = "agents"

[[workload]]
name = "tests"
nodes = ["tester"]

[[policy]]
workload = "support"
upstreams = ["api.openai.com"]

[[policy]]
workload = "tests"
upstreams = ["api.openai.com"]
{tests_policy}

{extra}
"#,
        d = d.display()
    );
    fs::write(d.join("gateway.toml"), config).unwrap();
    let mut gateway = Gateway {
        child: None,
        dir,
        addr,
        netns: spec.netns.map(|n| n.name.clone()),
    };
    gateway.spawn();
    gateway
}

/// The node's host key, as it logged it at start.
fn logged_node_key(node: &Warrant) -> String {
    let log = strip_ansi(&node.log());
    let at = log
        .find("node_key=")
        .unwrap_or_else(|| panic!("no node_key in the log: {log}"));
    log[at + "node_key=".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn new_node_key() -> NodeKey {
    let der =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    NodeKey::from_pkcs8(der.as_ref().to_vec()).unwrap()
}

/// A request as a test node sends it.
struct Sent {
    path: String,
    body: Vec<u8>,
    host: String,
    /// The statement; None: none sent.
    statement: Option<String>,
}

fn statement_for(key: &NodeKey, path: &str, body: &[u8], iat: i64, workload: &str) -> String {
    key.sign(
        Unsigned {
            audience: "gw-test".into(),
            binding: Binding {
                method: "POST".into(),
                authority: "api.openai.com".into(),
                path: path.into(),
                body_sha256: Binding::hash_body(body),
            },
            workload: workload.into(),
            process: Default::default(),
            instance: Default::default(),
        },
        iat,
    )
    .unwrap()
}

/// Sends `sent` to the gateway over TLS, with `key` as the client
/// certificate (None: none); the status and body.
async fn send(gateway: &Gateway, key: Option<&NodeKey>, sent: &Sent) -> (u16, String) {
    let config = match key {
        Some(key) => key.client_config(&[], Some(&gateway.ca())).unwrap(),
        None => warrant::tls::client_config(&[], Some(&gateway.ca())).unwrap(),
    };
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(gateway.addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut request = http::Request::post(sent.path.as_str())
        .header("host", sent.host.as_str())
        .header("authorization", "Bearer placeholder")
        .header("content-type", "application/json");
    if let Some(statement) = &sent.statement {
        request = request.header(STATEMENT_HEADER, statement.as_str());
    }
    let request = request
        .body(Full::new(Bytes::from(sent.body.clone())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

const CHAT: &str = "/v1/chat/completions";
const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

const PY_OPENAI: &str = r#"
import openai
client = openai.OpenAI()
r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
print("sdk ok" if r.choices else "sdk empty", flush=True)
n = 0
for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True):
    n += 1
print(f"sdk stream {n > 0}", flush=True)
"#;

#[test]
fn a_node_without_credentials_is_served_by_the_gateway_and_forgeries_are_refused() {
    if !prereq::require(NEEDS) {
        return;
    }
    let subnet = 60 + (std::process::id() % 100) as u8;
    let host_ip = format!("198.18.{subnet}.1");
    let netns = TestNetns::new(&format!("{host_ip}/24"), &format!("198.18.{subnet}.2/24"));
    let real_key = format!(
        "sk-proj-REAL{}abcdefghijklmnopqrstuvwxyz012345",
        unique("g").replace('-', "")
    );
    let mock = MockProvider::start(
        &[format!("{host_ip}:443").parse().unwrap()],
        MockSettings {
            keys: HashMap::from([("openai".to_owned(), real_key.clone())]),
            record_file: None,
            event_delay: Duration::from_millis(1),
        },
    )
    .unwrap();
    let gw_addr = format!("198.18.{subnet}.2:8443");
    let agent = "system.slice/agent.service";
    // The node: no [[credential]], its upstream names none. It trusts the
    // gateway's CA, made first.
    let gw_dir = gateway_dir(netns.ns_addr);
    let mut node = Warrant::start_node(
        &bin(),
        &[agent],
        r#"
[[workload]]
name = "agents"
unit = "agent.service"

[[policy]]
workload = "agents"
upstreams = ["api.openai.com"]
"#,
        &format!(
            "[forward]\ngateway = \"https://{gw_addr}\"\nca_file = \"{}/ca.pem\"\naudience = \"gw-test\"\n",
            gw_dir.path().display()
        ),
    );
    let node_key = logged_node_key(&node);
    let tester = new_node_key();
    let stranger = new_node_key();
    let spec = GatewaySpec {
        netns: Some(&netns),
        listen: SocketAddr::new(netns.ns_addr, 8443),
        provider_ip: &host_ip,
        tests_policy: "",
        extra: "",
    };
    let gateway = start_gateway(
        &spec,
        gw_dir,
        &mock,
        &real_key,
        &[
            ("web-1", node_key.clone()),
            ("tester", tester.public_text()),
        ],
    );
    node.wait_tagged(agent);

    // 1. An agent on the node, curl and the official SDK: the mock sees the
    // real key, which the node never had.
    assert_eq!(
        node.curl(agent, 65534),
        "200",
        "node: {}\ngateway: {}",
        node.log(),
        gateway.log()
    );
    let mut sdk = node.agent(
        agent,
        Some(65534),
        &[("PYTHONPATH", sdk_dir().join("python").to_str().unwrap())],
        &["python3", "-c", PY_OPENAI],
    );
    assert_eq!(sdk.line(), "sdk ok", "gateway: {}", gateway.log());
    assert_eq!(sdk.line(), "sdk stream True");
    let bearer = format!("Bearer {real_key}");
    let saw_real_key = mock
        .records()
        .iter()
        .filter(|r| r["headers"]["authorization"] == bearer.as_str())
        .count();
    assert!(
        saw_real_key >= 3,
        "the mock saw the real key {saw_real_key} times"
    );
    assert!(
        !mock
            .records()
            .iter()
            .any(|r| r["headers"].get(STATEMENT_HEADER).is_some()),
        "the statement leaked upstream"
    );
    let node_status = node.status();
    let credentials = &node_status["credentials"];
    assert!(
        credentials.as_array().is_some_and(Vec::is_empty)
            || credentials.as_object().is_some_and(|o| o.is_empty()),
        "the node shows credentials: {credentials}"
    );
    let audit = gateway.audit();
    assert!(
        audit.contains(r#""node":"web-1""#) && audit.contains(r#""workload":"support""#),
        "gateway audit: {audit}"
    );
    assert!(!audit.contains(&real_key) && !node.log().contains(&real_key));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let records_before = mock.records().len();
        let now = jiff::Timestamp::now().as_second();
        let good = Sent {
            path: CHAT.into(),
            body: BODY.into(),
            host: "api.openai.com".into(),
            statement: Some(statement_for(&tester, CHAT, BODY.as_bytes(), now, "tests")),
        };
        // 2. An enrolled test node with a good statement is served...
        let (status, body) = send(&gateway, Some(&tester), &good).await;
        assert_eq!(status, 200, "{body}\n{}", gateway.log());
        // 3. ...once: the same statement again is a replay.
        let (status, body) = send(&gateway, Some(&tester), &good).await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("replay") && body.contains("\"error\""),
            "{body}"
        );
        // 4. Bound to another path, or another body: tampered.
        let other_path = Sent {
            path: "/v1/embeddings".into(),
            statement: Some(statement_for(&tester, CHAT, BODY.as_bytes(), now, "tests")),
            ..good_clone(&good)
        };
        let (status, body) = send(&gateway, Some(&tester), &other_path).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("tampered") && body.contains("path"), "{body}");
        let other_body = Sent {
            body: br#"{"model":"o1","messages":[]}"#.to_vec(),
            statement: Some(statement_for(&tester, CHAT, BODY.as_bytes(), now, "tests")),
            ..good_clone(&good)
        };
        let (status, body) = send(&gateway, Some(&tester), &other_body).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("body SHA-256"), "{body}");
        // 5. Too old.
        let stale = Sent {
            statement: Some(statement_for(
                &tester,
                CHAT,
                BODY.as_bytes(),
                now - 120,
                "tests",
            )),
            ..good_clone(&good)
        };
        let (status, body) = send(&gateway, Some(&tester), &stale).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("old"), "{body}");
        // 6. Signed by an enrolled key, sent over another (unenrolled) one;
        // and a key that is not enrolled signing for itself.
        let stolen = Sent {
            statement: Some(statement_for(&tester, CHAT, BODY.as_bytes(), now, "tests")),
            ..good_clone(&good)
        };
        let (status, body) = send(&gateway, Some(&stranger), &stolen).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("unknown node"), "{body}");
        // 7. No client certificate at all.
        let (status, body) = send(&gateway, None, &stolen).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("no client certificate"), "{body}");
        // 8. A statement naming a workload the gateway does not give this
        // node.
        let other_workload = Sent {
            statement: Some(statement_for(&tester, CHAT, BODY.as_bytes(), now, "admins")),
            ..good_clone(&good)
        };
        let (status, body) = send(&gateway, Some(&tester), &other_workload).await;
        assert_eq!(status, 403, "{body}");
        // 9. A host that is not a configured upstream: never relayed.
        let elsewhere = Sent {
            host: "169.254.169.254".into(),
            ..good_clone(&good)
        };
        let (status, body) = send(&gateway, Some(&tester), &elsewhere).await;
        assert_eq!(status, 421, "{body}");
        assert_eq!(
            mock.records().len(),
            records_before + 1,
            "only the good request reached the mock"
        );
    });
    // Audit records are written in batches (audit::FLUSH_INTERVAL): wait
    // for the last refusal's line before reading them all.
    let reasons = [
        "replay",
        "tampered",
        "old",
        "unknown node",
        "no client certificate",
    ];
    warrant_test_support::wait::wait_until(
        "the gateway's audit lines",
        std::time::Duration::from_secs(10),
        || reasons.iter().all(|r| gateway.audit().contains(r)),
    );
    let audit = gateway.audit();
    for reason in reasons {
        assert!(
            audit.contains(reason),
            "no audit line says {reason:?}: {audit}"
        );
    }

    // 10. The gateway gone, the node fails closed in the provider's shape.
    drop(gateway);
    let status = node.curl(agent, 65534);
    assert!(status == "502" || status == "503", "got {status}");
}

fn good_clone(s: &Sent) -> Sent {
    Sent {
        path: s.path.clone(),
        body: s.body.clone(),
        host: s.host.clone(),
        statement: s.statement.clone(),
    }
}

fn good_request(key: &NodeKey) -> Sent {
    let now = jiff::Timestamp::now().as_second();
    Sent {
        path: CHAT.into(),
        body: BODY.into(),
        host: "api.openai.com".into(),
        statement: Some(statement_for(key, CHAT, BODY.as_bytes(), now, "tests")),
    }
}

/// Two gateways behind one Redis (as behind a TCP load balancer): the
/// workload's budget is one across both, a statement accepted by one is a
/// replay at the other, and a restarted gateway has lost nothing.
#[test]
fn two_gateways_share_one_redis_budget_and_replay_cache() {
    if !prereq::require(NEEDS) {
        return;
    }
    let Some(redis) = warrant_test_support::redis::RedisServer::start() else {
        return;
    };
    let ip = format!("127.0.9.{}", 10 + std::process::id() % 200);
    let real_key = format!(
        "sk-proj-REAL{}abcdefghijklmnopqrstuvwxyz012345",
        unique("r").replace('-', "")
    );
    let mock = MockProvider::start(
        &[format!("{ip}:443").parse().unwrap()],
        MockSettings {
            keys: HashMap::from([("openai".to_owned(), real_key.clone())]),
            record_file: None,
            event_delay: Duration::from_millis(1),
        },
    )
    .unwrap();
    let tester = new_node_key();
    let nodes = [("tester", tester.public_text())];
    let extra = format!(
        "[usage]\nledger = \"redis\"\nredis_url = \"{}\"\n",
        redis.url
    );
    let spec = |port: u16| GatewaySpec {
        netns: None,
        listen: format!("{ip}:{port}").parse().unwrap(),
        provider_ip: &ip,
        tests_policy: "requests_per_minute = 4",
        extra: &extra,
    };
    let gateway_ip = ip.parse().unwrap();
    let mut a = start_gateway(
        &spec(8443),
        gateway_dir(gateway_ip),
        &mock,
        &real_key,
        &nodes,
    );
    let b = start_gateway(
        &spec(8444),
        gateway_dir(gateway_ip),
        &mock,
        &real_key,
        &nodes,
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Accepted by a, replayed at b.
        let first = good_request(&tester);
        let (status, body) = send(&a, Some(&tester), &first).await;
        assert_eq!(status, 200, "{body}\n{}", a.log());
        let (status, body) = send(&b, Some(&tester), &first).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("replay"), "{body}");
        // Three more, alternating: the budget of 4 a minute is spent
        // across both gateways.
        for gateway in [&b, &a, &b] {
            let (status, body) = send(gateway, Some(&tester), &good_request(&tester)).await;
            assert_eq!(status, 200, "{body}");
        }
        for gateway in [&a, &b] {
            let (status, body) = send(gateway, Some(&tester), &good_request(&tester)).await;
            assert_eq!(status, 429, "{body}");
        }
    });
    // A restarted gateway refuses as well: the budget was in Redis.
    a.stop();
    a.spawn();
    runtime.block_on(async {
        let (status, body) = send(&a, Some(&tester), &good_request(&tester)).await;
        assert_eq!(status, 429, "{body}");
    });
    let bearer = format!("Bearer {real_key}");
    let served = mock
        .records()
        .iter()
        .filter(|r| r["headers"]["authorization"] == bearer.as_str())
        .count();
    assert_eq!(served, 4, "the mock served {served} requests");
}
