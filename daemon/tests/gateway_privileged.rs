//! Gateway mode with the real binaries, across network namespaces: a
//! "remote host" namespace runs the node (`warrant run` with `[forward]`,
//! no credential) and its agents in a tagged cgroup, with the official
//! SDKs; `warrant gateway` runs in a second namespace, joined to the first
//! by a veth pair, with its own private /etc/hosts mapping the provider to
//! a mock on the host's end of another veth, which only the gateway's
//! namespace can reach. The mock sees the real key, which only the gateway
//! holds.
//!
//! Then the test itself acts as nodes, enrolled and not, over mTLS from
//! the remote host's namespace, to try what an attacker would: a statement
//! replayed, one bound to another request (path, body), one too old, a key
//! that is not enrolled, no client certificate, a host that is not a
//! configured upstream. Each is refused in the provider's shape and
//! audited; none reaches the mock.
#![cfg(feature = "privileged-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    fs,
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use warrant::{
    attest::instance::{Evidence, node_audience},
    gateway::{Binding, InstanceFacts, NodeKey, STATEMENT_HEADER, node::Unsigned},
};
use warrant_test_support::{
    binary::{self, Warrant, strip_ansi},
    cgroups::unique,
    mock_provider::{MockProvider, MockSettings},
    netns::{self, TestNetns},
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
    /// The namespace the test's own nodes connect from; None: the test's.
    clients_in: Option<String>,
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
            .env("WARRANT_LOG", "info,warrant::proxy=debug")
            .stdin(Stdio::null());
        let (child, _) = binary::start_logging_to(&mut command, d, &d.join("gateway.log"));
        self.child = Some(child);
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
    keys: (&str, &str),
    nodes: &[(&str, String)],
) -> Gateway {
    let d = dir.path();
    let addr = spec.listen;
    fs::write(d.join("provider-ca.pem"), &mock.ca_pem).unwrap();
    for (name, key) in [("openai", keys.0), ("anthropic", keys.1)] {
        let path = d.join(format!("{name}.key"));
        fs::write(&path, key).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let provider_ip = spec.provider_ip;
    fs::write(
        d.join("hosts"),
        format!("127.0.0.1 localhost\n{provider_ip} api.openai.com api.anthropic.com\n"),
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

[[upstream]]
host = "api.anthropic.com"
scheme = "anthropic"
credential = "anthropic"
ca_file = "{d}/provider-ca.pem"

[[credential]]
name = "openai"
source = "file"
path = "{d}/openai.key"

[[credential]]
name = "anthropic"
source = "file"
path = "{d}/anthropic.key"

[[workload]]
name = "support"
nodes = ["web-*"]
node_workload = "agents"

[[workload]]
name = "tests"
nodes = ["tester"]

[[policy]]
workload = "support"
upstreams = ["api.openai.com", "api.anthropic.com"]

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
        clients_in: None,
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
    statement_with(key, path, body, iat, workload, Default::default())
}

/// As [`statement_for`], with the node's instance facts (and evidence).
fn statement_with(
    key: &NodeKey,
    path: &str,
    body: &[u8],
    iat: i64,
    workload: &str,
    instance: InstanceFacts,
) -> String {
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
            instance,
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
    let tcp = match &gateway.clients_in {
        Some(netns) => {
            let tcp = netns::connect_in(netns, gateway.addr).unwrap();
            tcp.set_nonblocking(true).unwrap();
            tokio::net::TcpStream::from_std(tcp).unwrap()
        }
        None => tokio::net::TcpStream::connect(gateway.addr).await.unwrap(),
    };
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

const PY_ANTHROPIC: &str = r#"
import anthropic
c = anthropic.Anthropic()
m = c.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
print("json", m.content[0].text, flush=True)
with c.messages.stream(model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
    print("stream", "".join(s.text_stream), flush=True)
"#;

/// With the gateway gone: the status the SDK got, and whether the error
/// body was in OpenAI's shape (the SDK hands over its "error" object).
const PY_OPENAI_DOWN: &str = r#"
import openai
c = openai.OpenAI(max_retries=0)
try:
    c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    print("served", flush=True)
except openai.APIStatusError as e:
    print("status", e.status_code, flush=True)
    print("shape", "ok" if isinstance(e.body, dict) and e.body.get("message") else e.body, flush=True)
"#;

const PY_ANTHROPIC_DOWN: &str = r#"
import anthropic
c = anthropic.Anthropic(max_retries=0)
try:
    c.messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    print("served", flush=True)
except anthropic.APIStatusError as e:
    print("status", e.status_code, flush=True)
    ok = e.body.get("type") == "error" and e.body["error"].get("message")
    print("shape", "ok" if ok else e.body, flush=True)
"#;

#[test]
fn a_node_without_credentials_is_served_by_the_gateway_and_forgeries_are_refused() {
    if !prereq::require(NEEDS) {
        return;
    }
    // The gateway's namespace, reached from the host (where the mock
    // provider is) by one veth; the remote host's, reached from the
    // gateway's by another and from nowhere else.
    let subnet = 60 + (std::process::id() % 100) as u8;
    let host_ip = format!("198.18.{subnet}.1");
    let gw_netns = TestNetns::new(&format!("{host_ip}/24"), &format!("198.18.{subnet}.2/24"));
    let gw_ip = format!("10.218.{subnet}.1");
    let node_netns = gw_netns.linked(&format!("{gw_ip}/24"), &format!("10.218.{subnet}.2/24"));
    let real_key = format!(
        "sk-proj-REAL{}abcdefghijklmnopqrstuvwxyz012345",
        unique("g").replace('-', "")
    );
    let anthropic_key = format!(
        "sk-ant-api03-REAL{}abcdefghijklmnopqrstuvwxyz012345",
        unique("a").replace('-', "")
    );
    let mock_addr: SocketAddr = format!("{host_ip}:443").parse().unwrap();
    let mock = MockProvider::start(
        &[mock_addr],
        MockSettings {
            keys: HashMap::from([
                ("openai".to_owned(), real_key.clone()),
                ("anthropic".to_owned(), anthropic_key.clone()),
            ]),
            record_file: None,
            event_delay: Duration::from_millis(1),
        },
    )
    .unwrap();
    // Only the gateway's namespace reaches the provider.
    assert!(
        gw_netns.connect(mock_addr).is_ok(),
        "the gateway's namespace cannot reach the mock"
    );
    assert!(
        node_netns.connect(mock_addr).is_err(),
        "the remote host reaches the provider without the gateway"
    );
    let gw_addr: SocketAddr = format!("{gw_ip}:8443").parse().unwrap();
    let agent = "system.slice/agent.service";
    // The node, in the remote host's namespace: no [[credential]], its
    // upstream names none. It trusts the gateway's CA, made first.
    let gw_dir = gateway_dir(gw_addr.ip());
    let mut node = Warrant::start_node_in(
        &node_netns,
        &bin(),
        &[agent],
        r#"
[[upstream]]
host = "api.anthropic.com"
scheme = "anthropic"

[[workload]]
name = "agents"
unit = "agent.service"

[[policy]]
workload = "agents"
upstreams = ["api.openai.com", "api.anthropic.com"]
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
        netns: Some(&gw_netns),
        listen: gw_addr,
        provider_ip: &host_ip,
        tests_policy: "",
        extra: "",
    };
    let mut gateway = start_gateway(
        &spec,
        gw_dir,
        &mock,
        (&real_key, &anthropic_key),
        &[
            ("web-1", node_key.clone()),
            ("tester", tester.public_text()),
        ],
    );
    // The test's own nodes connect from the remote host too.
    gateway.clients_in = Some(node_netns.name.clone());
    node.wait_tagged(agent);
    assert!(
        in_netns(node.pid(), &node_netns),
        "the node runs outside the remote host's namespace"
    );
    // The node's agents resolve the Anthropic API as they do OpenAI's.
    let hosts = node.dir.path().join("hosts");
    let mut names = fs::read_to_string(&hosts).unwrap();
    names = names.replace(" api.openai.com", " api.openai.com api.anthropic.com");
    fs::write(&hosts, names).unwrap();

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
    // Checked once it answered (before, it may still be entering it); it
    // is alive until its second line.
    assert!(
        in_netns(sdk.pid, &node_netns),
        "the agent runs outside the remote host's namespace"
    );
    assert_eq!(sdk.line(), "sdk stream True");
    let mut sdk = node.agent(
        agent,
        Some(65534),
        &[
            ("PYTHONPATH", sdk_dir().join("python").to_str().unwrap()),
            ("ANTHROPIC_API_KEY", "placeholder"),
        ],
        &["python3", "-c", PY_ANTHROPIC],
    );
    let line = sdk.line();
    assert!(
        line.starts_with("json Hello"),
        "{line}\ngateway: {}",
        gateway.log()
    );
    let line = sdk.line();
    assert!(line.starts_with("stream Hello"), "{line}");
    // The SDK's own form (x-api-key, or a bearer in current versions).
    let anthropic_bearer = format!("Bearer {anthropic_key}");
    assert!(
        mock.records().iter().any(|r| {
            r["host"] == "api.anthropic.com"
                && (r["headers"]["x-api-key"] == anthropic_key.as_str()
                    || r["headers"]["authorization"] == anthropic_bearer.as_str())
        }),
        "the mock never saw the real Anthropic key"
    );
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
    for key in [&real_key, &anthropic_key] {
        assert!(!audit.contains(key.as_str()) && !node.log().contains(key.as_str()));
    }

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
        // 9. A host that is not a configured upstream: never relayed. (A
        // loopback address: were it relayed, nothing leaves the machine.)
        let elsewhere = Sent {
            host: "127.0.0.1".into(),
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

    // 10. The gateway gone, the node fails closed in the provider's shape,
    // as the official SDKs read it.
    drop(gateway);
    let status = node.curl(agent, 65534);
    assert!(status == "502" || status == "503", "got {status}");
    for script in [PY_OPENAI_DOWN, PY_ANTHROPIC_DOWN] {
        let mut sdk = node.agent(
            agent,
            Some(65534),
            &[
                ("PYTHONPATH", sdk_dir().join("python").to_str().unwrap()),
                ("ANTHROPIC_API_KEY", "placeholder"),
            ],
            &["python3", "-c", script],
        );
        let status = sdk.line();
        assert!(
            status == "status 502" || status == "status 503",
            "{script}: {status}"
        );
        assert_eq!(sdk.line(), "shape ok", "{script}");
    }
}

/// Whether process `pid` is in the test namespace `netns`.
fn in_netns(pid: u32, netns: &TestNetns) -> bool {
    use std::os::unix::fs::MetadataExt;
    let of_pid = fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
    let named = fs::metadata(format!("/run/netns/{}", netns.name)).unwrap();
    (of_pid.dev(), of_pid.ino()) == (named.dev(), named.ino())
}

// A node enrolled by its cloud instance identity (GCE): the gateway knows
// no key of it, only which project's instances to enroll.

const GCE_PROJECT: &str = "example-project";
const GCE_INSTANCE_ID: &str = "5566778899001122334";

/// Google's stand-in: the fixture's RSA key signs GCE identity tokens
/// (RS256, kid "k1"); its JWKS is what a gateway and a node trust.
struct Google {
    encoding: jsonwebtoken::EncodingKey,
    jwks: String,
}

impl Google {
    fn fixture() -> Google {
        let pem = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/cloud/gcp-service-account.pem"),
        )
        .unwrap();
        Google::from_pem(&pem)
    }

    /// Another RSA key (made by openssl): a signer nobody trusts.
    fn stranger() -> Google {
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        Google::from_pem(&String::from_utf8(out.stdout).unwrap())
    }

    fn from_pem(pem: &str) -> Google {
        use base64::Engine;
        let der = rustls_pemfile::private_key(&mut pem.as_bytes())
            .unwrap()
            .unwrap();
        let pair = ring::rsa::KeyPair::from_pkcs8(der.secret_der()).unwrap();
        let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig",
            "kid": "k1", "n": b64(&public.n), "e": b64(&public.e)}]})
        .to_string();
        Google {
            encoding: jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            jwks,
        }
    }

    /// An identity token as the metadata server issues it with
    /// format=full, for `audience`, issued at `iat`.
    fn token(&self, audience: &str, project: &str, iat: i64) -> String {
        let claims = serde_json::json!({
            "aud": audience, "azp": "112233445566778899000",
            "exp": iat + 3600, "iat": iat, "iss": "https://accounts.google.com",
            "sub": "112233445566778899000",
            "google": {"compute_engine": {
                "instance_creation_timestamp": 1_764_000_000u64,
                "instance_id": GCE_INSTANCE_ID, "instance_name": "agent-vm-1",
                "project_id": project, "project_number": 123456789012u64,
                "zone": "europe-west4-b"
            }}
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }

    /// A GCE metadata server on `addr` inside the namespace `netns`: an
    /// identity token for whatever audience it is asked.
    fn serve_metadata(self: &Arc<Self>, netns: &TestNetns, addr: SocketAddr) {
        let listener = netns::listen_in(&netns.name, addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let google = self.clone();
        let answer: Answer = Arc::new(move |uri: &http::Uri| {
            let query = uri.query().unwrap_or_default();
            let audience = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("audience="))
                .map(|a| a.replace("%3A", ":"));
            match (uri.path(), audience) {
                ("/computeMetadata/v1/instance/service-accounts/default/identity", Some(aud)) => {
                    let now = jiff::Timestamp::now().as_second();
                    (200, google.token(&aud, GCE_PROJECT, now))
                }
                _ => (404, String::new()),
            }
        });
        std::thread::spawn(move || serve_answers(listener, answer));
    }
}

/// Instance facts carrying a GCE token as evidence.
fn gce_facts(token: String) -> InstanceFacts {
    InstanceFacts {
        provider: Some("gcp".into()),
        verified: true,
        claims: Default::default(),
        evidence: Some(Evidence::GcpToken { token }),
    }
}

#[test]
fn a_node_enrolled_by_its_gce_identity_is_served_and_lifted_or_foreign_evidence_is_refused() {
    if !prereq::require(&[
        Need::Root,
        Need::Program("ip"),
        Need::Program("curl"),
        Need::Program("openssl"),
    ]) {
        return;
    }
    let subnet = 60 + (std::process::id() % 100) as u8;
    let host_ip = format!("198.19.{subnet}.1");
    let gw_netns = TestNetns::new(&format!("{host_ip}/24"), &format!("198.19.{subnet}.2/24"));
    let gw_ip = format!("10.219.{subnet}.1");
    let node_netns = gw_netns.linked(&format!("{gw_ip}/24"), &format!("10.219.{subnet}.2/24"));
    let real_key = format!(
        "sk-proj-REAL{}abcdefghijklmnopqrstuvwxyz012345",
        unique("e").replace('-', "")
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
    // Google's keys; its metadata server on the remote host's loopback.
    let google = Arc::new(Google::fixture());
    let metadata: SocketAddr = "127.0.0.1:8780".parse().unwrap();
    google.serve_metadata(&node_netns, metadata);
    let gw_addr: SocketAddr = format!("{gw_ip}:8443").parse().unwrap();
    let gw_dir = gateway_dir(gw_addr.ip());
    let jwks = gw_dir.path().join("google-jwks.json");
    fs::write(&jwks, &google.jwks).unwrap();
    let agent = "system.slice/agent.service";
    let mut node = Warrant::start_node_in(
        &node_netns,
        &bin(),
        &[agent],
        &format!(
            r#"
[instance]
provider = "gcp"
endpoint = "http://{metadata}"
jwks_file = "{jwks}"

[[workload]]
name = "agents"
unit = "agent.service"

[[policy]]
workload = "agents"
upstreams = ["api.openai.com"]
"#,
            jwks = jwks.display()
        ),
        &format!(
            "[forward]\ngateway = \"https://{gw_addr}\"\nca_file = \"{}/ca.pem\"\naudience = \"gw-test\"\n",
            gw_dir.path().display()
        ),
    );
    // The gateway enrolls no key of the node: only the project's instances.
    let enroll = format!(
        r#"
[[gateway.enroll]]
provider = "gcp"
jwks_file = "{}"
projects = ["{GCE_PROJECT}"]

[[workload]]
name = "gce"
nodes = ["gcp:{GCE_PROJECT}/*"]
node_workload = "agents"
node_instance = {{ region = "europe-west4", zone = "europe-west4-?" }}

[[policy]]
workload = "gce"
upstreams = ["api.openai.com"]
"#,
        jwks.display()
    );
    let spec = GatewaySpec {
        netns: Some(&gw_netns),
        listen: gw_addr,
        provider_ip: &host_ip,
        tests_policy: "",
        extra: &enroll,
    };
    let mut gateway = start_gateway(&spec, gw_dir, &mock, (&real_key, "sk-ant-unused"), &[]);
    gateway.clients_in = Some(node_netns.name.clone());
    node.wait_tagged(agent);

    // 1. The node's agent is served: the node is named by its instance.
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
    assert!(
        mock.records()
            .iter()
            .any(|r| r["headers"]["authorization"] == bearer.as_str())
    );
    let node_name = format!("gcp:{GCE_PROJECT}/{GCE_INSTANCE_ID}");
    warrant_test_support::wait::wait_until(
        "the gateway's audit line of the node",
        Duration::from_secs(10),
        || {
            gateway
                .audit()
                .contains(&format!(r#""node":"{node_name}""#))
        },
    );
    assert!(gateway.audit().contains(r#""workload":"gce""#));
    // The node's instance state shows no token (it is evidence, not a claim).
    let status = node.status().to_string();
    assert!(!status.contains("eyJ"), "{status}");

    // 2. The test as nodes with keys the gateway never enrolled, each
    // bringing GCE evidence.
    let node_key = logged_node_key(&node);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let stranger = Google::stranger();
    runtime.block_on(async {
        let records_before = mock.records().len();
        let now = jiff::Timestamp::now().as_second();
        let send_as = |key: &NodeKey, token: String| {
            let statement =
                statement_with(key, CHAT, BODY.as_bytes(), now, "agents", gce_facts(token));
            Sent {
                path: CHAT.into(),
                body: BODY.into(),
                host: "api.openai.com".into(),
                statement: Some(statement),
            }
        };
        let audience_of = |key: &NodeKey| node_audience(key.public());
        // A token for its own key, signed by Google, of the project: served.
        let other = new_node_key();
        let good = send_as(&other, google.token(&audience_of(&other), GCE_PROJECT, now));
        let (status, body) = send(&gateway, Some(&other), &good).await;
        assert_eq!(status, 200, "{body}\n{}", gateway.log());
        // The real node's token lifted onto another key.
        assert!(node_key.starts_with("ed25519:"));
        let node_public: [u8; 32] = hex::decode(&node_key["ed25519:".len()..])
            .unwrap()
            .try_into()
            .unwrap();
        let lifted_token = google.token(&node_audience(&node_public), GCE_PROJECT, now);
        let thief = new_node_key();
        let (status, body) = send(&gateway, Some(&thief), &send_as(&thief, lifted_token)).await;
        assert_eq!(status, 403, "{body}");
        assert!(
            body.contains("unknown node") && body.contains("audience"),
            "{body}"
        );
        // Signed by a key Google never had.
        let forged = stranger.token(&audience_of(&thief), GCE_PROJECT, now);
        let (status, body) = send(&gateway, Some(&thief), &send_as(&thief, forged)).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("not signed by any key"), "{body}");
        // Another project's instance.
        let foreign = google.token(&audience_of(&thief), "someone-elses-project", now);
        let (status, body) = send(&gateway, Some(&thief), &send_as(&thief, foreign)).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("does not enroll"), "{body}");
        // A token held back 20 minutes (still within Google's hour).
        let stale = google.token(&audience_of(&thief), GCE_PROJECT, now - 1_200);
        let (status, body) = send(&gateway, Some(&thief), &send_as(&thief, stale)).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("s old"), "{body}");
        // No evidence at all.
        let bare = Sent {
            statement: Some(statement_for(&thief, CHAT, BODY.as_bytes(), now, "agents")),
            ..good_clone(&good)
        };
        let (status, body) = send(&gateway, Some(&thief), &bare).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("no instance evidence"), "{body}");
        assert_eq!(
            mock.records().len(),
            records_before + 1,
            "only the good request reached the mock"
        );
    });
    let reasons = [
        "audience",
        "not signed by any key",
        "does not enroll",
        "s old",
        "no instance evidence",
    ];
    warrant_test_support::wait::wait_until(
        "the gateway's audit lines",
        Duration::from_secs(10),
        || reasons.iter().all(|r| gateway.audit().contains(r)),
    );
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
        (&real_key, "sk-ant-unused"),
        &nodes,
    );
    let b = start_gateway(
        &spec(8444),
        gateway_dir(gateway_ip),
        &mock,
        (&real_key, "sk-ant-unused"),
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

// Agents without a node: Kubernetes-style tokens, base URLs and HTTP
// CONNECT.

const K8S_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The test's token issuer: an ES256 key, its JWKS served over HTTP on
/// loopback (as a cluster's issuer would over HTTPS), kid "k8s-1".
struct Issuer {
    key: KeyPair,
    encoding: jsonwebtoken::EncodingKey,
    jwks_url: String,
}

impl Issuer {
    fn start() -> Issuer {
        use base64::Engine;
        let key = KeyPair::generate().unwrap();
        let encoding =
            jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        let point = key.public_key_raw().to_vec();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k8s-1",
            "use": "sig", "alg": "ES256", "x": b64(&point[1..33]), "y": b64(&point[33..])}]})
        .to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve_jwks(listener, jwks));
        Issuer {
            key,
            encoding,
            jwks_url: format!("http://{addr}/openid/v1/jwks"),
        }
    }

    /// A projected service-account token of `namespace`/`account`, with
    /// `change` applied to its claims.
    fn token(&self, namespace: &str, account: &str, change: serde_json::Value) -> String {
        let now = jiff::Timestamp::now().as_second();
        let mut claims = serde_json::json!({
            "iss": K8S_ISSUER,
            "aud": ["gw-test"],
            "sub": format!("system:serviceaccount:{namespace}:{account}"),
            "iat": now, "nbf": now, "exp": now + 3600,
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": "agent-7d9f", "uid": "0b6f5c1e"},
                "serviceaccount": {"name": account, "uid": "5d0c8a21"}
            }
        });
        for (k, v) in change.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("k8s-1".into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

/// Serves `jwks` to every request until the test process ends.
fn serve_jwks(listener: std::net::TcpListener, jwks: String) {
    serve_answers(listener, Arc::new(move |_: &http::Uri| (200, jwks.clone())));
}

/// What a test server answers to a request for a URI: status and body.
type Answer = Arc<dyn Fn(&http::Uri) -> (u16, String) + Send + Sync>;

/// Serves `answer` over HTTP/1.1 until the test process ends.
fn serve_answers(listener: std::net::TcpListener, answer: Answer) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let (status, body) = answer(req.uri());
                    let mut response = http::Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// A SPIFFE trust domain's CA, as SPIRE would hold it: it issues
/// X.509-SVIDs with one spiffe:// URI SAN, for client authentication.
struct SpiffeCa {
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl SpiffeCa {
    fn new(name: &str) -> SpiffeCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        SpiffeCa { key, cert }
    }

    /// An SVID for `id` written as `<stem>.pem` and `<stem>.key` in `dir`.
    fn svid(&self, dir: &Path, stem: &str, id: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (pem, key_path) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        fs::write(&pem, cert.pem()).unwrap();
        fs::write(&key_path, key.serialize_pem()).unwrap();
        (pem, key_path)
    }
}

fn start_token_gateway(
    ip: &str,
    dir: tempfile::TempDir,
    mock: &MockProvider,
    keys: (&str, &str),
    jwks_url: &str,
) -> Gateway {
    let d = dir.path();
    fs::write(d.join("provider-ca.pem"), &mock.ca_pem).unwrap();
    for (name, key) in [("openai", keys.0), ("anthropic", keys.1)] {
        fs::write(d.join(format!("{name}.key")), key).unwrap();
        fs::set_permissions(
            d.join(format!("{name}.key")),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    fs::write(
        d.join("hosts"),
        format!("127.0.0.1 localhost\n{ip} api.openai.com api.anthropic.com\n"),
    )
    .unwrap();
    let config = format!(
        r#"
[daemon]
state_dir = "{d}/state"
audit_log = "{d}/audit.jsonl"
metrics = "127.0.0.1:0"

[control]
socket = "{d}/control.sock"

[gateway]
listen = "{ip}:8443"
certificate = "{d}/gw.pem"
key = "{d}/gw.key"
name = "gw-test"
routes = {{ openai = "api.openai.com", anthropic = "api.anthropic.com" }}
svid_bundle = "{d}/svid-bundle.pem"
svid_trust_domain = "example.org"

[[gateway.issuer]]
issuer = "{K8S_ISSUER}"
jwks_url = "{jwks_url}"

[[upstream]]
host = "api.openai.com"
scheme = "openai"
credential = "openai"
ca_file = "{d}/provider-ca.pem"

[[upstream]]
host = "api.anthropic.com"
scheme = "anthropic"
credential = "anthropic"
ca_file = "{d}/provider-ca.pem"

[[credential]]
name = "openai"
source = "file"
path = "{d}/openai.key"

[[credential]]
name = "anthropic"
source = "file"
path = "{d}/anthropic.key"

[[workload]]
name = "support"
issuer = "{K8S_ISSUER}"
claims = {{ "kubernetes.io.namespace" = "agents", "kubernetes.io.serviceaccount.name" = "support" }}

[[workload]]
name = "batch"
issuer = "{K8S_ISSUER}"
subject = "system:serviceaccount:batch:*"

[[workload]]
name = "svid-support"
spiffe_id = "spiffe://example.org/agents/*"

[[policy]]
workload = "support"
upstreams = ["api.openai.com"]

[[policy]]
workload = "batch"
upstreams = ["api.anthropic.com"]

[[policy]]
workload = "svid-support"
upstreams = ["api.openai.com"]
"#,
        d = d.display()
    );
    fs::write(d.join("gateway.toml"), config).unwrap();
    let mut gateway = Gateway {
        child: None,
        dir,
        addr: format!("{ip}:8443").parse().unwrap(),
        netns: None,
        clients_in: None,
    };
    gateway.spawn();
    gateway
}

const PY_BASE_URL: &str = r#"
import os, openai
client = openai.OpenAI(default_headers={"x-warrant-token": os.environ["WARRANT_TOKEN"]})
r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
print("sdk ok" if r.choices else "sdk empty", flush=True)
n = 0
for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True):
    n += 1
print(f"sdk stream {n > 0}", flush=True)
"#;

/// Runs the openai SDK with `env` (and nothing of the test's proxies);
/// its output, or its error.
fn python_sdk(script: &str, env: &[(&str, &str)]) -> String {
    let mut command = Command::new("python3");
    command
        .args(["-c", script])
        .env("PYTHONPATH", sdk_dir().join("python"))
        .env("OPENAI_API_KEY", "placeholder")
        .env_remove("OPENAI_BASE_URL");
    for name in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let output = command.output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// One request to the gateway as an agent (no client certificate), with
/// `headers`; the status and body.
async fn agent_send(
    gateway: &Gateway,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    agent_send_as(gateway, None, method, uri, headers).await
}

/// As [`agent_send`], presenting `client` (a certificate and key, PEM) if
/// set.
async fn agent_send_as(
    gateway: &Gateway,
    client: Option<&(PathBuf, PathBuf)>,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let auth = client.map(|(cert, key)| {
        let certs = rustls_pemfile::certs(&mut fs::read(cert).unwrap().as_slice())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut fs::read(key).unwrap().as_slice())
            .unwrap()
            .unwrap();
        (certs, key)
    });
    let config = warrant::tls::client_config_with_auth(&[], Some(&gateway.ca()), auth).unwrap();
    let mut config = (*config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = match &gateway.clients_in {
        Some(netns) => {
            let tcp = netns::connect_in(netns, gateway.addr).unwrap();
            tcp.set_nonblocking(true).unwrap();
            tokio::net::TcpStream::from_std(tcp).unwrap()
        }
        None => tokio::net::TcpStream::connect(gateway.addr).await.unwrap(),
    };
    let name = rustls::pki_types::ServerName::IpAddress(gateway.addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let host = headers
        .iter()
        .find(|(name, _)| *name == "host")
        .map_or_else(
            || gateway.addr.to_string(),
            |(_, value)| (*value).to_owned(),
        );
    let mut request = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host)
        .header("authorization", "Bearer placeholder")
        .header("content-type", "application/json");
    for (name, value) in headers.iter().filter(|(name, _)| *name != "host") {
        request = request.header(*name, *value);
    }
    let body = if method == "CONNECT" {
        Bytes::new()
    } else {
        Bytes::from(BODY)
    };
    let response = sender
        .send_request(request.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    if method == "CONNECT" {
        return (status, String::new());
    }
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn agents_without_a_node_are_served_by_their_tokens_or_svids_and_abuse_is_refused() {
    if !prereq::require(NEEDS) {
        return;
    }
    let ip = format!("127.0.11.{}", 10 + std::process::id() % 200);
    let real = |tag: &str| {
        format!(
            "sk-{tag}-REAL{}abcdefghijklmnopqrstuvwxyz012345",
            unique("t").replace('-', "")
        )
    };
    let (openai_key, anthropic_key) = (real("proj"), real("ant"));
    let mock = MockProvider::start(
        &[format!("{ip}:443").parse().unwrap()],
        MockSettings {
            keys: HashMap::from([
                ("openai".to_owned(), openai_key.clone()),
                ("anthropic".to_owned(), anthropic_key.clone()),
            ]),
            record_file: None,
            event_delay: Duration::from_millis(1),
        },
    )
    .unwrap();
    let issuer = Issuer::start();
    let spiffe = SpiffeCa::new("example.org SPIFFE CA");
    let dir = gateway_dir(ip.parse().unwrap());
    fs::write(dir.path().join("svid-bundle.pem"), spiffe.cert.pem()).unwrap();
    let gateway = start_token_gateway(
        &ip,
        dir,
        &mock,
        (&openai_key, &anthropic_key),
        &issuer.jwks_url,
    );
    // What agents trust: the gateway's certificate's CA, and the CA it
    // terminates tunnels with.
    let bundle = gateway.dir.path().join("bundle.pem");
    fs::write(
        &bundle,
        format!(
            "{}{}",
            fs::read_to_string(gateway.ca()).unwrap(),
            fs::read_to_string(gateway.dir.path().join("state/ca.pem")).unwrap()
        ),
    )
    .unwrap();
    let bundle = bundle.to_str().unwrap();
    let support = issuer.token("agents", "support", serde_json::json!({}));

    // 1. The official SDK through HTTPS_PROXY, the token as the proxy
    // password; then through the base URL, the token in a header.
    let proxy = format!("https://agent:{support}@{ip}:8443");
    let out = python_sdk(
        PY_OPENAI,
        &[("HTTPS_PROXY", &proxy), ("SSL_CERT_FILE", bundle)],
    );
    assert!(
        out.contains("sdk ok") && out.contains("sdk stream True"),
        "{out}\n{}",
        gateway.log()
    );
    let base_url = format!("https://{ip}:8443/openai/v1");
    let out = python_sdk(
        PY_BASE_URL,
        &[
            ("OPENAI_BASE_URL", &base_url),
            ("SSL_CERT_FILE", bundle),
            ("WARRANT_TOKEN", &support),
        ],
    );
    assert!(
        out.contains("sdk ok") && out.contains("sdk stream True"),
        "{out}\n{}",
        gateway.log()
    );
    let records = mock.records();
    let bearer = format!("Bearer {openai_key}");
    assert_eq!(records.len(), 4, "{records:?}");
    for record in &records {
        let headers = &record["headers"];
        assert_eq!(headers["authorization"], bearer.as_str(), "{record}");
        assert!(
            headers.get("x-warrant-token").is_none()
                && headers.get("proxy-authorization").is_none(),
            "the token leaked upstream: {record}"
        );
    }
    let fingerprint = warrant::secret::fingerprint(support.as_bytes());
    warrant_test_support::wait::wait_until(
        "the agents' audit lines",
        Duration::from_secs(10),
        || gateway.audit().matches(&fingerprint).count() >= 4,
    );
    let audit = gateway.audit();
    assert!(
        audit.contains(r#""workload":"support""#)
            && audit.contains(r#""subject":"system:serviceaccount:agents:support""#)
            && audit.contains(K8S_ISSUER),
        "{audit}"
    );
    assert!(
        !audit.contains(&support) && !gateway.log().contains(&support),
        "the token was logged"
    );

    // 2. Abuse, each refused in the provider's shape before the mock.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let now = jiff::Timestamp::now().as_second();
    let header_b64 = |v: serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims_of = |token: &str| token.split('.').nth(1).unwrap().to_owned();
    let alg_none = format!(
        "{}.{}.",
        header_b64(serde_json::json!({"alg": "none", "typ": "JWT"})),
        claims_of(&support)
    );
    let hs256 = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k8s-1".into());
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                claims_of(&support),
            )
            .unwrap(),
        )
        .unwrap();
        let public = issuer.key.public_key_pem();
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap()
    };
    let unknown_kid = {
        let mut parts: Vec<String> = support.split('.').map(str::to_owned).collect();
        parts[0] = header_b64(
            serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "../../etc/passwd"}),
        );
        parts.join(".")
    };
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        (
            "expired",
            issuer.token(
                "agents",
                "support",
                serde_json::json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}),
            ),
            "/openai/v1/chat/completions",
            403,
            "expired",
        ),
        (
            "wrong audience",
            issuer.token(
                "agents",
                "support",
                serde_json::json!({"aud": ["another-gateway"]}),
            ),
            "/openai/v1/chat/completions",
            403,
            "audience",
        ),
        (
            "wrong issuer",
            issuer.token(
                "agents",
                "support",
                serde_json::json!({"iss": "https://evil.example"}),
            ),
            "/openai/v1/chat/completions",
            403,
            "not a configured",
        ),
        (
            "alg none",
            alg_none,
            "/openai/v1/chat/completions",
            403,
            "algorithm",
        ),
        (
            "HS256 with the public key",
            hs256,
            "/openai/v1/chat/completions",
            403,
            "HS256",
        ),
        (
            "unknown kid",
            unknown_kid,
            "/openai/v1/chat/completions",
            403,
            "no key",
        ),
        (
            "workload A where only B is allowed",
            support.clone(),
            "/anthropic/v1/messages",
            403,
            "\"error\"",
        ),
        (
            "another account",
            issuer.token("agents", "intruder", serde_json::json!({})),
            "/openai/v1/chat/completions",
            403,
            "selects no gateway",
        ),
    ];
    let before = mock.records().len();
    runtime.block_on(async {
        for (what, token, path, status, says) in &cases {
            let (got, body) =
                agent_send(&gateway, "POST", path, &[("x-warrant-token", token)]).await;
            assert_eq!(got, *status, "{what}: {body}");
            assert!(
                body.contains(says) && body.contains("\"error\""),
                "{what}: {body}"
            );
        }
        let (got, body) = agent_send(&gateway, "POST", "/openai/v1/chat/completions", &[]).await;
        assert_eq!(got, 401, "no token: {body}");
        // CONNECT elsewhere than a configured upstream on 443: never a
        // tunnel, whatever the token.
        let auth = format!("Bearer {support}");
        // (Loopback targets: were one tunnelled, nothing leaves the machine.)
        for target in ["127.0.0.1:80", "api.openai.com:22", "localhost:443"] {
            let (got, _) = agent_send(
                &gateway,
                "CONNECT",
                target,
                &[("proxy-authorization", &auth)],
            )
            .await;
            assert_eq!(got, 403, "CONNECT {target}");
        }
        let expired = format!("Bearer {}", cases[0].1);
        let (got, _) = agent_send(
            &gateway,
            "CONNECT",
            "api.openai.com:443",
            &[("proxy-authorization", &expired)],
        )
        .await;
        assert_eq!(got, 403, "CONNECT with an expired token");
    });
    assert_eq!(
        mock.records().len(),
        before,
        "a refused request reached the mock"
    );
    let reasons = [
        "expired",
        "audience",
        "not a configured",
        "HS256",
        "no key",
        "selects no gateway",
        "not an open proxy",
        "no token",
    ];
    warrant_test_support::wait::wait_until(
        "the refusals' audit lines",
        Duration::from_secs(10),
        || {
            let audit = gateway.audit();
            reasons.iter().all(|r| audit.contains(r))
        },
    );
    let audit = gateway.audit();
    assert!(audit.contains(r#""outcome":"denied""#), "{audit}");

    // 3. An X.509-SVID as the client certificate, no token: the official
    // SDK with its http client given the SVID, through the base URL.
    let d = gateway.dir.path();
    let (cert, key) = spiffe.svid(d, "svid-support", "spiffe://example.org/agents/support");
    let out = python_sdk(
        PY_SVID,
        &[
            ("OPENAI_BASE_URL", &base_url),
            ("SSL_CERT_FILE", bundle),
            ("SVID_CERT", cert.to_str().unwrap()),
            ("SVID_KEY", key.to_str().unwrap()),
        ],
    );
    assert!(
        out.contains("sdk ok") && out.contains("sdk stream True"),
        "{out}\n{}",
        gateway.log()
    );
    assert_eq!(mock.records().len(), before + 2);
    warrant_test_support::wait::wait_until(
        "the SVID's audit lines",
        Duration::from_secs(10),
        || {
            gateway
                .audit()
                .matches(r#""workload":"svid-support""#)
                .count()
                >= 2
        },
    );
    assert!(
        gateway
            .audit()
            .contains(r#""spiffe_id":"spiffe://example.org/agents/support""#)
    );
    // A CA outside the bundle; the bundle's CA vouching for another trust
    // domain; an ID no workload selects; an SVID on a node's way in.
    let foreign = SpiffeCa::new("another SPIFFE CA").svid(
        d,
        "foreign",
        "spiffe://example.org/agents/support",
    );
    let other_domain = spiffe.svid(d, "other-domain", "spiffe://evil.example/agents/support");
    let admins = spiffe.svid(d, "admins", "spiffe://example.org/admins/root");
    let svid = (cert, key);
    let before = mock.records().len();
    runtime.block_on(async {
        let chat = "/openai/v1/chat/completions";
        for (what, client, says) in [
            ("a foreign CA", &foreign, "does not chain"),
            ("another trust domain", &other_domain, "trust domain"),
            ("an unselected ID", &admins, "selects no gateway"),
        ] {
            let (got, body) = agent_send_as(&gateway, Some(client), "POST", chat, &[]).await;
            assert_eq!(got, 403, "{what}: {body}");
            assert!(
                body.contains(says) && body.contains("\"error\""),
                "{what}: {body}"
            );
        }
        let (got, body) = agent_send_as(
            &gateway,
            Some(&svid),
            "POST",
            CHAT,
            &[("host", "api.openai.com")],
        )
        .await;
        assert_eq!(got, 403, "an SVID as a node: {body}");
        assert!(body.contains("identifies an agent"), "{body}");
    });
    assert_eq!(
        mock.records().len(),
        before,
        "a refused SVID reached the mock"
    );
}

const PY_SVID: &str = r#"
import os, ssl, openai
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
ctx.load_cert_chain(os.environ["SVID_CERT"], os.environ["SVID_KEY"])
client = openai.OpenAI(http_client=openai.DefaultHttpxClient(verify=ctx))
r = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
print("sdk ok" if r.choices else "sdk empty", flush=True)
n = 0
for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True):
    n += 1
print(f"sdk stream {n > 0}", flush=True)
"#;
