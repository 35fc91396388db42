//! The cloud model platforms through the whole product: the real `warrant`
//! binary with its eBPF programs on a cgroup the test created, agents in a
//! tagged sub-cgroup using the official SDKs (boto3, the anthropic SDK's
//! `AnthropicBedrock` and `AnthropicVertex`, google-genai with
//! `vertexai=True`, openai's `AzureOpenAI`) with placeholder credentials and
//! their default credential chains, the platforms' hosts mapped to a mock on
//! a loopback address by a private /etc/hosts, and warrant's own real
//! credentials issued by loopback stand-ins of IMDSv2 and Google's token
//! endpoint. The mock verifies each SigV4 signature with the real secret;
//! one is also checked by botocore itself. The agents' metadata service is
//! a loopback address the test owns (with the SDKs' endpoint overrides): the
//! real 169.254.169.254 is never contacted. Needs root and the SDKs
//! (`cargo xtask setup`).
#![cfg(feature = "privileged-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use warrant_test_support::{
    cgroups::{TestCgroup, TestPins, TestProcess},
    cloud::{
        AZURE, Accepted, BEDROCK, CloudApis, CredentialServices, HOSTS, Issuing, RealMetadata,
        Shared, VERTEX, run_tag, service_account_key,
    },
    netns::{EgressFilter, TestNetns},
    prereq::{self, Need},
    wait::wait_until,
};

/// What every test here needs from the host (the SDKs come from `cargo
/// xtask setup`).
const NEEDS: &[Need] = &[
    Need::Root,
    Need::Cgroup2,
    Need::Program("python3"),
    Need::Program("unshare"),
    Need::Program("ip"),
];

/// Addresses 127.0.0.200 and up: the mock APIs and the agents' metadata
/// service, two per stack.
static NEXT_IP: AtomicU8 = AtomicU8::new(200);

/// The tagged agents' unit, relative to the test's cgroup.
const AGENT_UNIT: &str = "warrant.slice/warrant-agents.slice/agent.service";

fn sdk_dir() -> PathBuf {
    std::env::var_os("WARRANT_SDK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sdk"))
}

struct Stack {
    cgroups: TestCgroup,
    _pins: TestPins,
    dir: tempfile::TempDir,
    apis: CloudApis,
    services: CredentialServices,
    real_metadata: RealMetadata,
    accepted: Shared,
    metadata_ip: String,
    daemon: Option<Child>,
}

impl Stack {
    /// `policy` is the `[[policy]]` body after its workload line.
    fn start(policy: &str) -> Stack {
        Stack::start_with(policy, None)
    }

    /// As `start`, with the agents' metadata service at `metadata_ip`
    /// instead of the loopback stand-in's address.
    fn start_with(policy: &str, metadata_ip: Option<&str>) -> Stack {
        let n = NEXT_IP.fetch_add(2, Ordering::SeqCst);
        let (api_ip, loopback_metadata) = (format!("127.0.0.{n}"), format!("127.0.0.{}", n + 1));
        let real_metadata = RealMetadata::start(format!("{loopback_metadata}:80").parse().unwrap());
        let metadata_ip = metadata_ip.map_or(loopback_metadata, str::to_owned);
        let accepted: Shared = Arc::new(Mutex::new(Accepted::default()));
        let tag = run_tag();
        let services = CredentialServices::start(accepted.clone(), Issuing::new(&tag));
        let apis = CloudApis::start(
            &[format!("{api_ip}:443").parse().unwrap()],
            accepted.clone(),
        );
        let cgroups = TestCgroup::new();
        cgroups.sub(AGENT_UNIT);
        cgroups.sub("other.service");
        let pins = TestPins::new();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("apis-ca.pem"), &apis.ca_pem).unwrap();
        write_private(&d.join("sa.json"), &service_account_key(&services.base));
        let azure_key = format!("azure-key-{tag}-REALREALREAL0123");
        write_private(&d.join("azure-key"), &azure_key);
        {
            let mut a = accepted.lock().unwrap();
            a.azure.push(azure_key.clone());
            a.secrets.push(azure_key);
        }
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for host in HOSTS {
            hosts.push_str(&format!("{api_ip} {host}\n"));
        }
        fs::write(d.join("hosts"), hosts).unwrap();
        fs::create_dir(d.join("home")).unwrap();
        let config = format!(
            r#"
[daemon]
listen = "127.0.0.1:0"
state_dir = "{d}/state"
audit_log = "{d}/audit.jsonl"
metrics = "127.0.0.1:0"
cgroup_root = "{root}"
bpf_pin_dir = "{pins}"

[control]
socket = "{d}/control.sock"

[proxy]
upstream_connect_timeout_secs = 2

# The agents' metadata service: a loopback address this test owns.
[metadata]
addresses = ["{metadata_ip}"]
passthrough = ["/latest/meta-data/placement/region", "/computeMetadata/v1/instance/zone"]
gcp_project = "test-project"

[[workload]]
name = "agents"
slice = "warrant-agents.slice"

[[upstream]]
host = "{BEDROCK}"
scheme = "bedrock"
credential = "bedrock"
ca_file = "{d}/apis-ca.pem"

[[upstream]]
host = "{VERTEX}"
scheme = "vertex"
credential = "vertex"
ca_file = "{d}/apis-ca.pem"

[[upstream]]
host = "{AZURE}"
scheme = "azure"
credential = "azure"
ca_file = "{d}/apis-ca.pem"

# warrant's own credentials: the instance role (IMDSv2) and a service
# account key, from loopback stand-ins.
[[credential]]
name = "bedrock"
source = "aws-imds"
endpoint = "{base}"

[[credential]]
name = "vertex"
source = "gcp-service-account"
path = "{d}/sa.json"

[[credential]]
name = "azure"
source = "file"
path = "{d}/azure-key"

[[policy]]
workload = "agents"
upstreams = ["{BEDROCK}", "{VERTEX}", "{AZURE}"]
{policy}
"#,
            d = d.display(),
            root = cgroups.path.display(),
            pins = pins.path.display(),
            base = services.base,
        );
        fs::write(d.join("warrant.toml"), config).unwrap();
        let mut stack = Stack {
            cgroups,
            _pins: pins,
            dir,
            apis,
            services,
            real_metadata,
            accepted,
            metadata_ip,
            daemon: None,
        };
        stack.run_daemon();
        stack
    }

    fn run_daemon(&mut self) {
        let d = self.dir.path();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warrant"));
        cmd.arg("run")
            .arg("--config")
            .arg(d.join("warrant.toml"))
            .arg("--detach-on-exit")
            .env("WARRANT_LOG", "debug")
            // The test's cgroup is the system manager's root: its
            // warrant.slice/warrant-agents.slice is the slice selected.
            .env("WARRANT_TEST_MANAGER_ROOT", &self.cgroups.path);
        let (child, _) = warrant_test_support::binary::start_until_ready(&mut cmd, d);
        self.daemon = Some(child);
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The audit lines of `n` requests to `upstream`, once written: a line
    /// is written when the response body ends in the daemon, which may be
    /// just after the agent has read all it needed.
    fn wait_requests(&self, upstream: &str, n: usize) -> Vec<serde_json::Value> {
        wait_until(
            &format!("{n} audit lines for {upstream}"),
            Duration::from_secs(10),
            || self.requests_to(upstream).len() >= n,
        );
        self.requests_to(upstream)
    }

    /// Audit lines of requests to `upstream`.
    fn requests_to(&self, upstream: &str) -> Vec<serde_json::Value> {
        self.audit()
            .into_iter()
            .filter(|l| l["kind"] == "request" && l["upstream"] == upstream)
            .collect()
    }

    /// A Python agent in the tagged unit: a clean environment with
    /// placeholder keys (unless `env` removes them), the trust bundle, the
    /// private /etc/hosts, the SDKs' metadata endpoints pointed at the
    /// agents' metadata address.
    fn agent(&mut self, script: &str, env: &[(&str, Option<&str>)]) -> TestProcess {
        self.agent_in(AGENT_UNIT, script, env)
    }

    /// As `agent`, in `unit` (relative to the test's cgroup).
    fn agent_in(&mut self, unit: &str, script: &str, env: &[(&str, Option<&str>)]) -> TestProcess {
        let bundle = self.dir.path().join("state/trust-bundle.pem");
        let metadata = &self.metadata_ip;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
        ])
        .arg(self.dir.path().join("hosts"))
        .args(["python3", "-u", "-c", script])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", self.dir.path().join("home"))
        .env("PYTHONPATH", sdk_dir().join("python"))
        .env("SSL_CERT_FILE", &bundle)
        .env("REQUESTS_CA_BUNDLE", &bundle)
        .env("AWS_CA_BUNDLE", &bundle)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "placeholder")
        .env("AWS_SECRET_ACCESS_KEY", "placeholder")
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://{metadata}/"),
        )
        .env("GCE_METADATA_HOST", metadata)
        .env("GCE_METADATA_IP", metadata)
        .env("GOOGLE_CLOUD_PROJECT", "test-project")
        .env("GOOGLE_CLOUD_LOCATION", "us-central1")
        .env("AZURE_OPENAI_API_KEY", "placeholder")
        .stderr(Stdio::inherit());
        for (name, value) in env {
            match value {
                Some(value) => cmd.env(name, value),
                None => cmd.env_remove(name),
            };
        }
        let unit = self.cgroups.path.join(unit);
        self.cgroups.spawn(&unit, &mut cmd)
    }

    /// No real credential in the daemon's log, the audit log or anything
    /// an agent printed (its environment included); no placeholder reached
    /// a platform; the real metadata service saw no credential request.
    fn assert_nothing_leaked(&self, outputs: &[String]) {
        let mut haystacks = vec![("daemon log".to_owned(), self.log())];
        haystacks.push((
            "audit log".to_owned(),
            fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default(),
        ));
        for (i, out) in outputs.iter().enumerate() {
            haystacks.push((format!("agent output {i}"), out.clone()));
        }
        let secrets = self.accepted.lock().unwrap().secrets.clone();
        assert!(!secrets.is_empty());
        for (what, text) in haystacks {
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "a real credential appears in the {what}"
                );
            }
        }
        for request in self.apis.seen() {
            assert!(request.accepted, "a platform refused {}", request.target);
            let headers = format!("{:?}", request.headers);
            assert!(
                !headers.contains("placeholder") && !headers.contains("WARRANTPLACEHOLDER"),
                "a placeholder reached {}: {headers}",
                request.host
            );
        }
        for seen in self.real_metadata.seen() {
            assert!(
                !seen.contains("security-credentials") && !seen.contains("service-accounts"),
                "the real metadata service saw {seen}"
            );
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.cgroups.kill_all();
        if let Some(mut child) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

fn write_private(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Lines until `done`; panics with them if the agent exits first.
fn run_to_end(process: &mut TestProcess) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        match process.try_line() {
            Some(line) if line == "done" => return lines,
            Some(line) => lines.push(line),
            None => panic!("the agent exited before finishing; it printed {lines:#?}"),
        }
    }
}

/// Every request to `upstream` was metered with the mock's counts.
fn assert_metered(lines: &[serde_json::Value], expected: usize) {
    assert_eq!(lines.len(), expected, "{lines:#?}");
    for line in lines {
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["usage"]["input_tokens"], 12, "{line}");
        assert_eq!(line["usage"]["output_tokens"], 7, "{line}");
    }
}

const BOTO3: &str = r#"
import os, boto3
print("env", " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())), flush=True)
c = boto3.client("bedrock-runtime")
model = "anthropic.claude-3-haiku-20240307-v1:0"
messages = [{"role": "user", "content": [{"text": "hi"}]}]
r = c.converse(modelId=model, messages=messages, inferenceConfig={"maxTokens": 64})
print("converse", r["output"]["message"]["content"][0]["text"], r["usage"]["totalTokens"], flush=True)
s = c.converse_stream(modelId=model, messages=messages, inferenceConfig={"maxTokens": 64})
text, usage = "", None
for event in s["stream"]:
    if "contentBlockDelta" in event:
        text += event["contentBlockDelta"]["delta"]["text"]
    if "metadata" in event:
        usage = event["metadata"]["usage"]["totalTokens"]
print("stream", text, usage, flush=True)
print("done", flush=True)
"#;

/// Checks Bedrock requests' SigV4 signatures with botocore, the real secret
/// and the request as the mock received it: a signer independent of
/// warrant's (the mock's own check uses the same crate as warrant).
const BOTOCORE_CHECK: &str = r#"
import base64, json, sys
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
job = json.load(sys.stdin)
keys = {k["id"]: k for k in job["keys"]}
for r in job["requests"]:
    headers = dict(r["headers"])
    fields = dict(p.strip().split("=", 1) for p in headers["authorization"][len("AWS4-HMAC-SHA256 "):].split(","))
    key = keys[fields["Credential"].split("/")[0]]
    signed = fields["SignedHeaders"].split(";")
    request = AWSRequest(method=r["method"], url=r["url"], data=base64.b64decode(r["body"]),
                         headers={k: v for k, v in headers.items() if k in signed and k != "host"})
    request.context["timestamp"] = headers["x-amz-date"]
    signer = SigV4Auth(Credentials(key["id"], key["secret"], key["token"]), "bedrock", "us-east-1")
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    print("ok" if signature == fields["Signature"] else "mismatch", flush=True)
"#;

fn botocore_agrees(stack: &Stack) {
    let keys: Vec<serde_json::Value> = stack
        .accepted
        .lock()
        .unwrap()
        .aws
        .iter()
        .map(|k| {
            serde_json::json!({"id": k.access_key_id, "secret": k.secret_access_key, "token": k.session_token})
        })
        .collect();
    let requests: Vec<serde_json::Value> = stack
        .apis
        .seen_by(BEDROCK)
        .iter()
        .map(|s| s.to_json())
        .collect();
    assert!(!requests.is_empty());
    let mut child = Command::new("python3")
        .args(["-c", BOTOCORE_CHECK])
        .env("PYTHONPATH", sdk_dir().join("python"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(
        child.stdin.take().unwrap(),
        &serde_json::json!({"keys": keys, "requests": requests}),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let verdicts = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        verdicts.lines().collect::<Vec<_>>(),
        vec!["ok"; requests.len()],
        "botocore disagrees with a signature"
    );
}

#[test]
fn boto3_converse_and_converse_stream_are_signed_again_with_the_instance_roles_keys() {
    if !prereq::require(NEEDS) {
        return;
    }
    let mut stack = Stack::start("");
    let mut agent = stack.agent(BOTO3, &[]);
    let lines = run_to_end(&mut agent);
    assert!(lines[0].contains("AWS_ACCESS_KEY_ID=placeholder"));
    assert_eq!(
        lines[1..],
        [
            "converse Hello from the cloud mock. 19",
            "stream Hello from the cloud mock. 19"
        ]
    );
    assert_metered(&stack.wait_requests(BEDROCK, 2), 2);
    for line in stack.requests_to(BEDROCK) {
        assert_eq!(line["model"], "anthropic.claude-3-haiku-20240307-v1:0");
        assert_eq!(line["credential"]["name"], "bedrock");
    }
    botocore_agrees(&stack);
    stack.assert_nothing_leaked(&lines);
}

const BOTO3_METADATA: &str = r#"
import json, urllib.request, boto3
# The SDK's default chain: no keys in the environment, so the instance
# metadata service (IMDSv2) is asked; the tagged agent gets placeholders.
session = boto3.Session()
creds = session.get_credentials().get_frozen_credentials()
print("keys", creds.access_key, creds.token, flush=True)
c = session.client("bedrock-runtime")
r = c.converse(modelId="anthropic.claude-3-haiku-20240307-v1:0",
               messages=[{"role": "user", "content": [{"text": "hi"}]}])
print("converse", r["output"]["message"]["content"][0]["text"], flush=True)
# What a prompt-injected agent would try: read the role's keys itself.
base = "http://METADATA"
def call(method, path, headers):
    req = urllib.request.Request(base + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
status, token = call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
session_header = {"X-aws-ec2-metadata-token": token}
_, role = call("GET", "/latest/meta-data/iam/security-credentials/", session_header)
_, doc = call("GET", "/latest/meta-data/iam/security-credentials/" + role, session_header)
print("direct", json.loads(doc)["AccessKeyId"], flush=True)
print("no token", call("GET", "/latest/meta-data/iam/security-credentials/", {})[0], flush=True)
print("user-data", call("GET", "/latest/user-data", session_header)[0], flush=True)
print("region", call("GET", "/latest/meta-data/placement/region", session_header), flush=True)
print("gce", json.loads(call("GET", "/computeMetadata/v1/instance/service-accounts/default/token", {"Metadata-Flavor": "Google"})[1])["access_token"], flush=True)
print("done", flush=True)
"#;

#[test]
fn the_default_chain_gets_placeholders_from_the_metadata_service_and_the_real_one_stays_out_of_reach()
 {
    if !prereq::require(NEEDS) {
        return;
    }
    let mut stack = Stack::start("");
    let script = BOTO3_METADATA.replace("METADATA", &stack.metadata_ip);
    let mut agent = stack.agent(
        &script,
        &[("AWS_ACCESS_KEY_ID", None), ("AWS_SECRET_ACCESS_KEY", None)],
    );
    let lines = run_to_end(&mut agent);
    assert_eq!(
        lines,
        [
            "keys WARRANTPLACEHOLDER warrant-placeholder-session-token",
            "converse Hello from the cloud mock.",
            "direct WARRANTPLACEHOLDER",
            "no token 401",
            "user-data 403",
            "region (200, 'us-east-1')",
            "gce warrant-placeholder-google-access-token",
        ]
    );
    // The real service saw warrant's own session token request and the one
    // path passed through, nothing else: no agent request reached it.
    assert_eq!(
        stack.real_metadata.seen(),
        [
            "PUT /latest/api/token",
            "GET /latest/meta-data/placement/region"
        ]
    );
    let outcomes: Vec<String> = stack
        .wait_requests("metadata", 9)
        .iter()
        .map(|l| l["outcome"].as_str().unwrap().to_owned())
        .collect();
    // boto3's chain (token, role, keys), the direct reads, the GCE token.
    assert_eq!(
        outcomes.iter().filter(|o| *o == "emulated").count(),
        7,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| *o == "refused").count(),
        2,
        "{outcomes:?}"
    );
    // The passthrough's line names the address it went to.
    let passed = stack.wait_requests(&stack.metadata_ip.clone(), 1);
    assert_eq!(passed.len(), 1);
    assert_eq!(passed[0]["outcome"], "passed_through");
    assert_eq!(passed[0]["path"], "/latest/meta-data/placement/region");
    botocore_agrees(&stack);
    stack.assert_nothing_leaked(&lines);

    // Only tagged agents are redirected: another unit reaches the service
    // the host has (here the stand-in) as before.
    let untagged = format!(
        "import urllib.request\nprint(urllib.request.urlopen('http://{}/computeMetadata/v1/x', timeout=10).read().decode(), flush=True)\nprint('done', flush=True)",
        stack.metadata_ip
    );
    let mut other = stack.agent_in("other.service", &untagged, &[]);
    assert_eq!(
        run_to_end(&mut other),
        ["REAL-METADATA /computeMetadata/v1/x"]
    );
}

const GCE_ZONE: &str = r#"
import urllib.request, urllib.error
def get(path):
    req = urllib.request.Request("http://METADATA" + path, headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
print("zone", get("/computeMetadata/v1/instance/zone"), flush=True)
print("token", get("/computeMetadata/v1/instance/service-accounts/default/token"), flush=True)
print("done", flush=True)
"#;

/// A path `[metadata] passthrough` lists is relayed like any passthrough:
/// from a socket made in the agent's own cgroup. An agent whose unit may
/// not reach the metadata address (systemd's IPAddressDeny=) reaches
/// nothing there through warrant either, while the placeholders, which
/// warrant answers itself, still work. The metadata address is in a
/// network namespace the test made (reached over a veth, so the egress
/// filter can tell it from loopback).
#[test]
fn a_metadata_passthrough_obeys_the_agents_cgroup_egress_filter() {
    if !prereq::require(NEEDS) {
        return;
    }
    let netns = TestNetns::new("198.18.41.1/24", "198.18.41.2/24");
    let mut server = netns.server(&[80]);
    let metadata = netns.ns_addr.to_string();
    let mut stack = Stack::start_with("", Some(&metadata));
    let script = GCE_ZONE.replace("METADATA", &metadata);
    let lines = run_to_end(&mut stack.agent(&script, &[]));
    assert_eq!(lines, ["zone 200", "token 200"], "{}", stack.log());
    assert_eq!(server.connections_so_far(80), ["http 80"]);

    // The unit's egress is now loopback only.
    let _filter = EgressFilter::loopback_only(&stack.cgroups.path.join(AGENT_UNIT));
    let lines = run_to_end(&mut stack.agent(&script, &[]));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0] == "zone 502" || lines[0] == "zone 504",
        "{lines:?}\n{}",
        stack.log()
    );
    assert_eq!(lines[1], "token 200");
    assert_eq!(
        server.connections_so_far(80),
        Vec::<String>::new(),
        "warrant relayed past the agent's egress filter; log:\n{}",
        stack.log()
    );
}

/// `warrant explain` names the credential each upstream would use (its
/// source, its kind, its state; never its value) and reads a planned
/// request as the upstream's provider does: Vertex's project, location and
/// model from the path, Bedrock's decoded model id; an ambiguous path is
/// the 400 it would get. Nothing is sent.
#[test]
fn explain_names_each_upstreams_credential_and_reads_cloud_paths() {
    if !prereq::require(NEEDS) {
        return;
    }
    let mut stack = Stack::start("");
    let socket = stack.dir.path().join("control.sock");
    let mut agent = stack.agent(
        "import sys\nprint('ready', flush=True)\nsys.stdin.readline()",
        &[],
    );
    assert_eq!(agent.line(), "ready");
    let explain = |request: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_warrant"))
            .args([
                "explain",
                "--pid",
                &agent.pid.to_string(),
                "--request",
                request,
                "--socket",
            ])
            .arg(&socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = explain(&format!(
        "POST https://{VERTEX}/v1/projects/p1/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent"
    ));
    assert!(
        text.contains("credential: \"vertex\" (source gcp-service-account, a token;"),
        "{text}"
    );
    assert!(
        text.contains("model=gemini-2.5-flash project=p1 location=us-central1"),
        "{text}"
    );
    assert!(
        text.contains("decision: allowed for workload \"agents\""),
        "{text}"
    );
    let text = explain(&format!(
        "POST https://{BEDROCK}/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    ));
    assert!(
        text.contains("credential: \"bedrock\" (source aws-imds, AWS keys, signing with SigV4;"),
        "{text}"
    );
    assert!(
        text.contains("model=anthropic.claude-3-haiku-20240307-v1:0"),
        "{text}"
    );
    let text = explain(&format!(
        "POST https://{AZURE}/openai/deployments/gpt-4o-prod/..%2F..%2Fdeployments/o1/chat/completions"
    ));
    assert!(
        text.contains("credential: \"azure\" (source file, a token;"),
        "{text}"
    );
    assert!(text.contains("decision: refused (400)"), "{text}");
    agent.send("");
    assert!(stack.apis.seen().is_empty(), "explain sent a request");
    stack.assert_nothing_leaked(&[text]);
}

const ANTHROPIC_PLATFORMS: &str = r#"
from anthropic import AnthropicBedrock, AnthropicVertex
messages = [{"role": "user", "content": "hi"}]
b = AnthropicBedrock(aws_region="us-east-1", max_retries=0)
m = b.messages.create(model="anthropic.claude-3-haiku-20240307-v1:0", max_tokens=64, messages=messages)
print("bedrock", m.content[0].text, m.usage.output_tokens, flush=True)
with b.messages.stream(model="anthropic.claude-3-haiku-20240307-v1:0", max_tokens=64, messages=messages) as s:
    print("bedrock stream", "".join(s.text_stream), flush=True)
# No access token given: google-auth's default chain asks the metadata
# service, and gets a placeholder.
v = AnthropicVertex(region="us-central1", project_id="test-project", max_retries=0)
m = v.messages.create(model="claude-sonnet-4@20250514", max_tokens=64, messages=messages)
print("vertex", m.content[0].text, m.usage.output_tokens, flush=True)
with v.messages.stream(model="claude-sonnet-4@20250514", max_tokens=64, messages=messages) as s:
    print("vertex stream", "".join(s.text_stream), flush=True)
print("done", flush=True)
"#;

#[test]
fn anthropic_bedrock_and_anthropic_vertex_work_unchanged_with_placeholders() {
    if !prereq::require(NEEDS) {
        return;
    }
    let mut stack = Stack::start("");
    let mut agent = stack.agent(ANTHROPIC_PLATFORMS, &[]);
    let lines = run_to_end(&mut agent);
    assert_eq!(
        lines,
        [
            "bedrock Hello from the cloud mock. 7",
            "bedrock stream Hello from the cloud mock.",
            "vertex Hello from the cloud mock. 7",
            "vertex stream Hello from the cloud mock.",
        ]
    );
    assert_metered(&stack.wait_requests(BEDROCK, 2), 2);
    assert_metered(&stack.wait_requests(VERTEX, 2), 2);
    for line in stack.requests_to(VERTEX) {
        assert_eq!(line["model"], "claude-sonnet-4@20250514");
    }
    let vertex = stack.apis.seen_by(VERTEX);
    assert!(vertex.iter().all(|r| {
        r.header("authorization")
            .is_some_and(|a| a.starts_with("Bearer ya29.sa-"))
    }));
    assert_eq!(
        stack.services.calls("google-token"),
        1,
        "the token is cached"
    );
    botocore_agrees(&stack);
    stack.assert_nothing_leaked(&lines);
}

const GENAI_AND_AZURE: &str = r#"
from google import genai
from openai import AzureOpenAI
c = genai.Client(vertexai=True, project="test-project", location="us-central1")
r = c.models.generate_content(model="gemini-2.5-flash", contents="hi")
print("gemini", r.text, r.usage_metadata.total_token_count, flush=True)
text = "".join(chunk.text or "" for chunk in c.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
print("gemini stream", text, flush=True)
a = AzureOpenAI(api_version="2024-10-21", azure_endpoint="https://warrant-test.openai.azure.com", max_retries=0)
r = a.chat.completions.create(model="gpt-4o-prod", messages=[{"role": "user", "content": "hi"}])
print("azure", r.choices[0].message.content, r.usage.total_tokens, flush=True)
s = a.chat.completions.create(model="gpt-4o-prod", messages=[{"role": "user", "content": "hi"}],
                              stream=True, stream_options={"include_usage": True})
print("azure stream", "".join((ch.choices[0].delta.content or "") for ch in s if ch.choices), flush=True)
print("done", flush=True)
"#;

#[test]
fn google_genai_on_vertex_and_azure_openai_work_unchanged_with_placeholders() {
    if !prereq::require(NEEDS) {
        return;
    }
    let mut stack = Stack::start("");
    let mut agent = stack.agent(GENAI_AND_AZURE, &[]);
    let lines = run_to_end(&mut agent);
    assert_eq!(
        lines,
        [
            "gemini Hello from the cloud mock. 19",
            "gemini stream Hello from the cloud mock.",
            "azure Hello from the cloud mock. 19",
            "azure stream Hello from the cloud mock.",
        ]
    );
    assert_metered(&stack.wait_requests(VERTEX, 2), 2);
    assert_metered(&stack.wait_requests(AZURE, 2), 2);
    for line in stack.requests_to(AZURE) {
        assert_eq!(line["model"], "gpt-4o-prod");
    }
    let azure = stack.apis.seen_by(AZURE);
    assert!(
        azure
            .iter()
            .all(|r| r.target.ends_with("?api-version=2024-10-21"))
    );
    stack.assert_nothing_leaked(&lines);
}

const BOTO3_BUDGET: &str = r#"
import boto3
from botocore.config import Config
c = boto3.client("bedrock-runtime", config=Config(retries={"mode": "standard", "total_max_attempts": 1}))
messages = [{"role": "user", "content": [{"text": "hi"}]}]
for i in range(2):
    try:
        s = c.converse_stream(modelId="anthropic.claude-3-haiku-20240307-v1:0", messages=messages,
                              inferenceConfig={"maxTokens": 64})
        print("ok", sum(1 for _ in s["stream"]), flush=True)
    except c.exceptions.ThrottlingException as e:
        print("throttled", e.response["ResponseMetadata"]["HTTPStatusCode"], "tokens_per_hour" in str(e), flush=True)
print("done", flush=True)
"#;

#[test]
fn bedrock_streams_are_charged_against_the_workloads_token_budget() {
    // Each request reserves its cap (64) plus its input estimate; the first
    // settles at the 19 tokens metered from the stream, the second no
    // longer fits.
    if !prereq::require(NEEDS) {
        return;
    }
    let mut stack = Stack::start("tokens_per_hour = 100");
    let mut agent = stack.agent(BOTO3_BUDGET, &[]);
    let lines = run_to_end(&mut agent);
    assert_eq!(lines, ["ok 6", "throttled 429 True"]);
    let bedrock = stack.wait_requests(BEDROCK, 2);
    assert_eq!(bedrock.len(), 2, "{bedrock:#?}");
    assert_eq!(bedrock[0]["usage"]["input_tokens"], 12);
    assert_eq!(bedrock[0]["usage"]["output_tokens"], 7);
    assert_eq!(bedrock[1]["status"], 429);
    assert_eq!(stack.apis.seen_by(BEDROCK).len(), 1);
    stack.assert_nothing_leaked(&lines);
}
