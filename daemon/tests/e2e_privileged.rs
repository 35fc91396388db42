//! The whole product on the host's kernel: the real `warrant` binary with its
//! eBPF programs attached to a cgroup the test creates, agents in a tagged
//! sub-cgroup using the official SDKs with a placeholder key, a mock provider
//! on a loopback address, and the provider hostnames mapped to it by a private
//! /etc/hosts in the agent's own mount namespace. Needs root and the SDKs
//! (`cargo xtask setup` installs them into target/sdk).
#![cfg(feature = "privileged-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    fs,
    io::Read,
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU8, Ordering},
    time::Duration,
};

use warrant_test_support::{
    self as support,
    cgroups::{TestCgroup, TestPins, TestProcess},
    mock_provider::{MockProvider, MockSettings},
};

const PLACEHOLDER: &str = "placeholder";
const ALL_UPSTREAMS_POLICY: &str = r#"
[[policy]]
workload = "agents"
upstreams = ["api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com"]
"#;
static NEXT_IP: AtomicU8 = AtomicU8::new(20);

fn sdk_dir() -> PathBuf {
    std::env::var_os("WARRANT_SDK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sdk"))
}

/// The real credentials of one test run: unique, so a hit in a scan is ours.
fn real_keys() -> HashMap<&'static str, String> {
    let tag = support::cgroups::unique("k").replace('-', "");
    HashMap::from([
        (
            "openai",
            format!("sk-proj-REALopenai{tag}abcdefghijklmnopqrstuvwxyz012345"),
        ),
        (
            "anthropic",
            format!("sk-ant-api03-REALanthropic{tag}abcdefghijklmnopqrstuvwxyz"),
        ),
        (
            "gemini",
            format!("AIzaSyREALgemini{tag}abcdefghijklmnopqrstu"),
        ),
    ])
}

/// One running stack: daemon, mock provider, cgroups, pins, files.
struct Stack {
    cgroups: TestCgroup,
    pins: TestPins,
    dir: tempfile::TempDir,
    mock: MockProvider,
    daemon: Option<Child>,
    listen: SocketAddr,
    keys: HashMap<&'static str, String>,
}

impl Stack {
    fn start() -> Stack {
        Self::start_with(&[])
    }

    /// `unreachable` lists hostnames mapped to an address where nothing listens.
    fn start_with(unreachable: &[&str]) -> Stack {
        Self::start_full(unreachable, ALL_UPSTREAMS_POLICY)
    }

    /// A stack whose `[[policy]]` rules for workload "agents" are `policy`.
    fn with_policy(policy: &str) -> Stack {
        Self::start_full(&[], policy)
    }

    fn start_full(unreachable: &[&str], policy: &str) -> Stack {
        let n = NEXT_IP.fetch_add(2, Ordering::SeqCst);
        let provider_ip = format!("127.0.0.{n}");
        let dead_ip = format!("127.0.0.{}", n + 1);
        let keys = real_keys();
        let mock = MockProvider::start(
            &[format!("{provider_ip}:443").parse().unwrap()],
            MockSettings {
                keys: keys
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
                record_file: None,
                event_delay: Duration::from_millis(5),
            },
        )
        .expect("mock provider");
        let cgroups = TestCgroup::new();
        cgroups.sub("warrant.slice/warrant-agents.slice/agent.service");
        cgroups.sub("other.service");
        let pins = TestPins::new();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("creds")).unwrap();
        for (name, key) in &keys {
            let path = d.join("creds").join(name);
            fs::write(&path, key).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::write(d.join("provider-ca.pem"), &mock.ca_pem).unwrap();
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for host in support::mock_provider::HOSTS {
            let ip = if unreachable.contains(&host) {
                &dead_ip
            } else {
                &provider_ip
            };
            hosts.push_str(&format!("{ip} {host}\n"));
        }
        hosts.push_str(&format!("{provider_ip} other.example\n"));
        fs::write(d.join("hosts"), hosts).unwrap();
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

[intercept]
# The "other" site the pass-through test reaches is on loopback.
passthrough_allow = ["127.0.0.0/8"]

[[workload]]
name = "agents"
slice = "warrant-agents.slice"

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

[[upstream]]
host = "generativelanguage.googleapis.com"
scheme = "gemini"
credential = "gemini"
ca_file = "{d}/provider-ca.pem"

[[credential]]
name = "openai"
source = "file"
path = "{d}/creds/openai"

[[credential]]
name = "anthropic"
source = "file"
path = "{d}/creds/anthropic"

[[credential]]
name = "gemini"
source = "file"
path = "{d}/creds/gemini"

{policy}
"#,
            d = d.display(),
            root = cgroups.path.display(),
            pins = pins.path.display(),
        );
        fs::write(d.join("warrant.toml"), config).unwrap();
        let mut stack = Stack {
            cgroups,
            pins,
            dir,
            mock,
            daemon: None,
            listen: "127.0.0.1:1".parse().unwrap(),
            keys,
        };
        stack.run_daemon(true);
        stack
    }

    /// Starts `warrant run` and waits for READY=1.
    fn run_daemon(&mut self, detach_on_exit: bool) {
        let d = self.dir.path();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warrant"));
        cmd.arg("run").arg("--config").arg(d.join("warrant.toml"));
        if detach_on_exit {
            cmd.arg("--detach-on-exit");
        }
        cmd.env("WARRANT_LOG", "debug")
            // The test's cgroup is the system manager's root: its
            // warrant.slice/warrant-agents.slice is the slice selected.
            .env("WARRANT_TEST_MANAGER_ROOT", &self.cgroups.path);
        let (child, listen) = support::binary::start_until_ready(&mut cmd, d);
        self.daemon = Some(child);
        self.listen = listen.expect("warrant run says where it serves");
    }

    fn stop_daemon(&mut self, signal: nix::sys::signal::Signal) {
        if let Some(mut child) = self.daemon.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("state/trust-bundle.pem")
    }

    /// Runs `argv` as an agent in `unit` (relative to the test cgroup), with
    /// placeholder keys, the trust bundle and the private /etc/hosts.
    fn agent(&mut self, unit: &str, argv: &[&str]) -> TestProcess {
        let bundle = self.bundle();
        self.agent_trusting(unit, &bundle, argv)
    }

    /// As `agent`, trusting the CA bundle `trust` instead of warrant's.
    fn agent_trusting(&mut self, unit: &str, trust: &Path, argv: &[&str]) -> TestProcess {
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
        .args(argv)
        .env("OPENAI_API_KEY", PLACEHOLDER)
        .env("ANTHROPIC_API_KEY", PLACEHOLDER)
        .env("GEMINI_API_KEY", PLACEHOLDER)
        .env_remove("GOOGLE_API_KEY")
        .env("SSL_CERT_FILE", trust)
        .env("REQUESTS_CA_BUNDLE", trust)
        .env("CURL_CA_BUNDLE", trust)
        .env("NODE_EXTRA_CA_CERTS", trust)
        .env("PYTHONPATH", sdk_dir().join("python"))
        .env("NODE_PATH", sdk_dir().join("node/node_modules"))
        .stderr(Stdio::inherit());
        let dir = self.cgroups.path.join(unit);
        self.cgroups.spawn(&dir, &mut cmd)
    }

    fn tagged(&mut self, argv: &[&str]) -> TestProcess {
        self.agent("warrant.slice/warrant-agents.slice/agent.service", argv)
    }

    /// Requests the mock saw for `host`.
    fn seen(&self, host: &str) -> Vec<serde_json::Value> {
        self.mock
            .records()
            .into_iter()
            .filter(|r| r["host"] == host)
            .collect()
    }

    /// Nothing that holds a real key may contain one: the daemon's log, the
    /// audit file, the agent's outputs passed in.
    fn assert_no_real_key_in(&self, outputs: &[String]) {
        let mut haystacks = vec![("daemon log".to_owned(), self.log())];
        if let Ok(audit) = fs::read_to_string(self.dir.path().join("audit.jsonl")) {
            haystacks.push(("audit log".to_owned(), audit));
        }
        for (i, out) in outputs.iter().enumerate() {
            haystacks.push((format!("agent output {i}"), out.clone()));
        }
        for (what, text) in haystacks {
            for key in self.keys.values() {
                assert!(
                    !text.contains(key.as_str()),
                    "a real credential appears in the {what}"
                );
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.cgroups.kill_all();
        self.stop_daemon(nix::sys::signal::Signal::SIGTERM);
    }
}

/// Reads lines until the process exits; panics with them if it did not print `done`.
fn run_to_end(process: &mut TestProcess) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = process.try_line();
        match line {
            Some(line) if line == "done" => return lines,
            Some(line) => lines.push(line),
            None => panic!("the agent exited before finishing; it printed {lines:#?}"),
        }
    }
}

fn assert_real_key_arrived(records: &[serde_json::Value], header: &str, expected: &str) {
    assert!(!records.is_empty(), "the provider saw no request");
    for record in records {
        let got = record["headers"][header].as_str().unwrap_or_default();
        assert_eq!(got, expected, "the provider received {header}: {got:?}");
        assert!(
            !record.to_string().contains(PLACEHOLDER),
            "the placeholder reached the provider: {record}"
        );
    }
}

const PY_OPENAI: &str = r#"
import openai, os
# What a prompt-injected agent could print: its whole environment.
print("env", " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())), flush=True)
c = openai.OpenAI()
r = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
print("json", r.choices[0].message.content, r.usage.total_tokens, flush=True)
s = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                              stream=True, stream_options={"include_usage": True})
text = "".join((ch.choices[0].delta.content or "") for ch in s if ch.choices)
print("stream", text, flush=True)
print("done", flush=True)
"#;

#[test]
fn python_openai_sdk_gets_the_real_key_streaming_and_not() {
    let mut stack = Stack::start();
    let mut agent = stack.tagged(&["python3", "-c", PY_OPENAI]);
    let lines = run_to_end(&mut agent);
    assert!(lines[0].starts_with("env ") && lines[0].contains("OPENAI_API_KEY=placeholder"));
    assert_eq!(
        lines[1..],
        [
            "json Hello from the mock provider. 19",
            "stream Hello from the mock provider."
        ]
    );
    // Neither the agent's environment nor anything it printed holds the key
    // (checked below with the daemon's log).
    let records = stack.seen("api.openai.com");
    assert_eq!(records.len(), 2);
    assert_real_key_arrived(
        &records,
        "authorization",
        &format!("Bearer {}", stack.keys["openai"]),
    );
    stack.assert_no_real_key_in(&lines);
}

const PY_ANTHROPIC: &str = r#"
import anthropic
c = anthropic.Anthropic()
m = c.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
print("json", m.content[0].text, m.usage.output_tokens, flush=True)
with c.messages.stream(model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
    print("stream", "".join(s.text_stream), flush=True)
print("done", flush=True)
"#;

#[test]
fn python_anthropic_sdk_gets_the_real_key_streaming_and_not() {
    let mut stack = Stack::start();
    let mut agent = stack.tagged(&["python3", "-c", PY_ANTHROPIC]);
    let lines = run_to_end(&mut agent);
    assert_eq!(
        lines,
        [
            "json Hello from the mock provider. 7",
            "stream Hello from the mock provider."
        ]
    );
    let records = stack.seen("api.anthropic.com");
    assert_eq!(records.len(), 2);
    // Current SDKs send `Authorization: Bearer`, older ones `x-api-key`:
    // warrant keeps the form the agent used.
    let header = if records[0]["headers"]["x-api-key"].is_string() {
        "x-api-key"
    } else {
        "authorization"
    };
    let expected = match header {
        "x-api-key" => stack.keys["anthropic"].clone(),
        _ => format!("Bearer {}", stack.keys["anthropic"]),
    };
    assert_real_key_arrived(&records, header, &expected);
    stack.assert_no_real_key_in(&lines);
}

const PY_GENAI: &str = r#"
import os
from google import genai
c = genai.Client(api_key=os.environ["GEMINI_API_KEY"])
r = c.models.generate_content(model="gemini-2.5-flash", contents="hi")
print("json", r.text, flush=True)
text = "".join(chunk.text or "" for chunk in c.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
print("stream", text, flush=True)
print("done", flush=True)
"#;

#[test]
fn python_google_genai_sdk_gets_the_real_key_streaming_and_not() {
    let mut stack = Stack::start();
    let mut agent = stack.tagged(&["python3", "-c", PY_GENAI]);
    let lines = run_to_end(&mut agent);
    assert_eq!(
        lines,
        [
            "json Hello from the mock provider.",
            "stream Hello from the mock provider."
        ]
    );
    let records = stack.seen("generativelanguage.googleapis.com");
    assert_eq!(records.len(), 2);
    assert_real_key_arrived(&records, "x-goog-api-key", &stack.keys["gemini"]);
    for record in &records {
        assert!(
            !record["query"]
                .as_str()
                .unwrap_or_default()
                .contains("key="),
            "no key= query reaches Gemini"
        );
    }
    stack.assert_no_real_key_in(&lines);
}

const NODE_OPENAI: &str = r#"
const OpenAI = require("openai");
(async () => {
  const c = new OpenAI();
  const r = await c.chat.completions.create({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] });
  console.log("json", r.choices[0].message.content, r.usage.total_tokens);
  const s = await c.chat.completions.create({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }], stream: true });
  let text = "";
  for await (const ch of s) text += (ch.choices[0] && ch.choices[0].delta.content) || "";
  console.log("stream", text);
  console.log("done");
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[test]
fn node_openai_sdk_gets_the_real_key_streaming_and_not() {
    let mut stack = Stack::start();
    let mut agent = stack.tagged(&["node", "-e", NODE_OPENAI]);
    let lines = run_to_end(&mut agent);
    assert_eq!(
        lines,
        [
            "json Hello from the mock provider. 19",
            "stream Hello from the mock provider."
        ]
    );
    let records = stack.seen("api.openai.com");
    assert_eq!(records.len(), 2);
    assert_real_key_arrived(
        &records,
        "authorization",
        &format!("Bearer {}", stack.keys["openai"]),
    );
}

#[test]
fn curl_speaks_http2_and_http1_through_the_injector() {
    let mut stack = Stack::start();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let script = format!(
            "curl -sS {flag} -o /dev/null -w '%{{http_code}} %{{http_version}}\\n' https://api.openai.com/v1/chat/completions \
             -H 'Authorization: Bearer placeholder' -H 'content-type: application/json' -d '{{\"model\":\"gpt-4o\"}}'; echo done"
        );
        let mut agent = stack.tagged(&["sh", "-c", &script]);
        let lines = run_to_end(&mut agent);
        assert_eq!(lines, [format!("200 {version}")], "curl {flag}");
    }
    assert_real_key_arrived(
        &stack.seen("api.openai.com"),
        "authorization",
        &format!("Bearer {}", stack.keys["openai"]),
    );
}

const PY_HELD_STREAM: &str = r#"
import http.client, json, ssl
conn = http.client.HTTPSConnection("api.openai.com", 443, context=ssl.create_default_context())
conn.request("POST", "/v1/chat/completions", body=json.dumps({"model": "gpt-4o", "stream": True}),
             headers={"Authorization": "Bearer placeholder", "x-mock-hold": "1", "content-type": "application/json"})
resp = conn.getresponse()
for line in resp:
    if line.startswith(b"data: "):
        print("first event", flush=True)
        break
rest = resp.read()
print("rest", rest.count(b"data: "), flush=True)
print("done", flush=True)
"#;

#[test]
fn the_first_sse_event_reaches_the_agent_while_the_provider_still_holds_the_rest() {
    let mut stack = Stack::start();
    let mut agent = stack.tagged(&["python3", "-c", PY_HELD_STREAM]);
    // The provider sends one event and then waits for us: if anything on the
    // way buffered the response, this line would never come.
    assert_eq!(agent.line(), "first event");
    stack.mock.release_held();
    assert_eq!(run_to_end(&mut agent), ["rest 4"]);
}

const PY_OTHER_SITE: &str = r#"
import socket, ssl, sys
# Trust only the provider's own CA (not warrant's), and do not check the name:
# the handshake succeeds only if the real server's certificate comes through.
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.check_hostname = False
with socket.create_connection(("other.example", 443)) as raw:
    with ctx.wrap_socket(raw, server_hostname="other.example") as tls:
        issuer = dict(x[0] for x in tls.getpeercert()["issuer"])
        print("issuer", issuer["commonName"], flush=True)
print("done", flush=True)
"#;

#[test]
fn a_host_that_is_not_an_upstream_is_spliced_with_the_real_servers_certificate() {
    let mut stack = Stack::start();
    let ca = stack.dir.path().join("provider-ca.pem");
    let mut agent = stack.tagged(&["python3", "-c", PY_OTHER_SITE, ca.to_str().unwrap()]);
    assert_eq!(
        run_to_end(&mut agent),
        ["issuer warrant mock provider test CA"]
    );
    assert!(
        stack.log().contains("not an intercepted host: splicing"),
        "the connection was redirected and spliced"
    );
}

#[test]
fn an_untagged_agent_is_not_intercepted() {
    let mut stack = Stack::start();
    // It trusts the provider's certificate, as a host trusts the real one.
    let provider_ca = stack.dir.path().join("provider-ca.pem");
    let mut agent =
        stack.agent_trusting("other.service", &provider_ca, &["python3", "-c", PY_OPENAI]);
    let printed: Vec<String> = std::iter::from_fn(|| agent.try_line()).collect();
    assert!(
        printed.iter().all(|l| !l.starts_with("json")),
        "the placeholder must not work without warrant: {printed:?}"
    );
    let records = stack.seen("api.openai.com");
    assert_eq!(
        records.len(),
        1,
        "the SDK reached the provider directly; daemon log:\n{}",
        stack.log()
    );
    assert_eq!(records[0]["headers"]["authorization"], "Bearer placeholder");
}

#[test]
fn a_direct_connection_to_the_listener_is_refused_and_logged() {
    let stack = Stack::start();
    let mut stream = TcpStream::connect(stack.listen).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = stream.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the listener closes a connection that has no Origin");
    support::wait::wait_until("the refusal to be logged", Duration::from_secs(10), || {
        stack.log().contains("without an Origin")
    });
}

const PY_ERRORS: &str = r#"
import anthropic
c = anthropic.Anthropic(max_retries=0)
try:
    c.messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
except anthropic.APIStatusError as e:
    print("status", e.status_code, flush=True)
    print("type", e.body["type"], e.body["error"]["type"], flush=True)
    print("names warrant", "warrant" in e.body["error"]["message"], flush=True)
print("done", flush=True)
"#;

#[test]
fn an_unreachable_provider_gives_an_error_in_the_providers_shape() {
    let mut stack = Stack::start_with(&["api.anthropic.com"]);
    let mut agent = stack.tagged(&["python3", "-c", PY_ERRORS]);
    let lines = run_to_end(&mut agent);
    assert_eq!(
        lines,
        ["status 502", "type error api_error", "names warrant True"]
    );
    stack.assert_no_real_key_in(&lines);
}

/// The SDK's view of a connection attempt: `refused` only when the error
/// is ECONNREFUSED somewhere in its chain (not a TLS or timeout error, which
/// an escape to the provider could also produce), then a bare connect.
const PY_REFUSED: &str = r#"
import errno, socket, openai
def refused(e):
    while e is not None:
        if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return True
        e = e.__cause__ or e.__context__
    return False
try:
    openai.OpenAI(max_retries=0).models.list()
    print("sdk reached a server", flush=True)
except openai.APIConnectionError as e:
    print("sdk refused" if refused(e) else f"sdk other error: {e!r} caused by {e.__cause__!r}", flush=True)
try:
    socket.create_connection(("api.openai.com", 443), timeout=10).close()
    print("socket connected", flush=True)
except OSError as e:
    print("socket", errno.errorcode.get(e.errno, e), flush=True)
print("done", flush=True)
"#;

/// Connects to api.openai.com:443 in a loop (and closes at once) until the
/// file argv[1] exists, then reads a window "START END" (CLOCK_MONOTONIC ns)
/// from stdin and reports how many attempts began within it, and the count
/// of each result.
const PY_CONNECT_LOOP: &str = r#"
import errno, os, socket, sys, time
stop = sys.argv[1]
print("looping", flush=True)
counts, starts = {}, []
while not os.path.exists(stop) and len(starts) < 200000:
    starts.append(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    s = socket.socket()
    try:
        s.connect(("api.openai.com", 443))
        result = "connected"
    except OSError as e:
        result = errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
    counts[result] = counts.get(result, 0) + 1
print("stopped", flush=True)
start, end = map(int, sys.stdin.readline().split())
print("in_window", sum(1 for t in starts if start <= t <= end), flush=True)
for result, n in sorted(counts.items()):
    print("result", result, n, flush=True)
print("done", flush=True)
"#;

fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

#[test]
fn a_killed_daemon_fails_closed_and_its_successor_adopts_the_programs() {
    let mut stack = Stack::start();
    stack.stop_daemon(nix::sys::signal::Signal::SIGTERM);
    // Detached on exit (the default for tests): start one that keeps its pins.
    stack.run_daemon(false);
    stack.stop_daemon(nix::sys::signal::Signal::SIGKILL);

    // With no daemon, a tagged connect is redirected to a closed port:
    // ECONNREFUSED, and nothing reaches the provider, not even a TCP
    // connect (the mock counts them below TLS).
    let mut agent = stack.tagged(&["python3", "-c", PY_REFUSED]);
    assert_eq!(
        run_to_end(&mut agent),
        ["sdk refused", "socket ECONNREFUSED"],
        "with no daemon, tagged connections are refused"
    );
    assert_eq!(stack.mock.tcp_connects(), 0, "a connection escaped");

    // A successor starts while a tagged agent connects in a loop: its
    // programs replace the pinned links, and no connect may lapse to the
    // provider while they do.
    let stop = stack.dir.path().join("stop-loop");
    let mut looping = stack.tagged(&["python3", "-c", PY_CONNECT_LOOP, stop.to_str().unwrap()]);
    assert_eq!(looping.line(), "looping");
    let window_start = monotonic_ns();
    stack.run_daemon(true);
    let window_end = monotonic_ns();
    // A few more once it serves, then stop.
    fs::write(&stop, "").unwrap();
    assert_eq!(looping.line(), "stopped");
    looping.send(&format!("{window_start} {window_end}"));
    let report = run_to_end(&mut looping);
    let in_window: usize = report[0]
        .strip_prefix("in_window ")
        .unwrap_or_else(|| panic!("{report:?}"))
        .parse()
        .unwrap();
    assert!(
        in_window > 0,
        "no connect overlapped the successor's start: {report:?}"
    );
    assert!(
        report[1..]
            .iter()
            .all(|l| l.starts_with("result connected ") || l.starts_with("result ECONNREFUSED ")),
        "every attempt was refused (no daemon yet) or reached the injector: {report:?}"
    );
    assert_eq!(
        stack.mock.tcp_connects(),
        0,
        "a connect escaped to the provider while the successor adopted the programs: {report:?}"
    );

    // The successor serves.
    let mut agent = stack.tagged(&["python3", "-c", PY_OPENAI]);
    assert_eq!(run_to_end(&mut agent).len(), 3);
    assert_real_key_arrived(
        &stack.seen("api.openai.com"),
        "authorization",
        &format!("Bearer {}", stack.keys["openai"]),
    );
    let links = fs::read_dir(&stack.pins.path)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("links-"))
        .count();
    assert_eq!(links, 1);
}

#[test]
fn reload_applies_a_new_policy_without_dropping_a_live_stream_and_refuses_a_bad_file() {
    let mut stack = Stack::start();
    let config_path = stack.dir.path().join("warrant.toml");
    let socket = stack.dir.path().join("control.sock");
    let reload = || {
        let out = Command::new(env!("CARGO_BIN_EXE_warrant"))
            .args(["reload", "--socket"])
            .arg(&socket)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // A stream is in flight, held by the provider after its first event.
    let mut streaming = stack.tagged(&["python3", "-c", PY_HELD_STREAM]);
    assert_eq!(streaming.line(), "first event");

    // New policy: this workload may only list models.
    let original = fs::read_to_string(&config_path).unwrap();
    let restricted = original.replace(
        "upstreams = [\"api.openai.com\", \"api.anthropic.com\", \"generativelanguage.googleapis.com\"]",
        "upstreams = [\"api.openai.com\"]\npaths = [\"/v1/models\"]",
    );
    assert_ne!(restricted, original);
    fs::write(&config_path, &restricted).unwrap();
    let (ok, answer) = reload();
    // `warrant reload` says in words what it applied (status's commit).
    assert!(
        ok && answer.starts_with("applied ") && answer.contains("without dropping connections"),
        "{answer}"
    );
    let mut outputs = vec![answer];

    // The live stream finishes normally.
    stack.mock.release_held();
    assert_eq!(run_to_end(&mut streaming), ["rest 4"]);

    // New requests follow the new policy.
    let denied = "import openai\ntry:\n  openai.OpenAI(max_retries=0).chat.completions.create(model='gpt-4o', messages=[])\nexcept openai.PermissionDeniedError as e:\n  print('denied', e.status_code, 'is not allowed' in str(e), flush=True)\nprint('done', flush=True)";
    let mut agent = stack.tagged(&["python3", "-c", denied]);
    assert_eq!(run_to_end(&mut agent), ["denied 403 True"]);

    // A broken file is refused and the running configuration stays.
    fs::write(
        &config_path,
        format!("{restricted}\n[[policy]]\nworkload = \"nobody\"\n"),
    )
    .unwrap();
    let (ok, answer) = reload();
    assert!(!ok && answer.contains("nobody"), "{answer}");
    outputs.push(answer);
    let mut agent = stack.tagged(&["python3", "-c", denied]);
    assert_eq!(run_to_end(&mut agent), ["denied 403 True"]);

    // And SIGHUP (systemd's ExecReload) applies a good one.
    fs::write(&config_path, &original).unwrap();
    let pid = stack.daemon.as_ref().unwrap().id() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGHUP).unwrap();
    support::wait::wait_until("the SIGHUP reload", Duration::from_secs(20), || {
        stack.log().matches("configuration reloaded").count() >= 2
    });
    let mut agent = stack.tagged(&["python3", "-c", PY_OPENAI]);
    let lines = run_to_end(&mut agent);
    assert_eq!(lines.len(), 3);
    outputs.extend(lines);
    // Each reload fetched the credentials again: the key is still nowhere
    // but at the provider (daemon log, audit log, answers, agent output).
    assert_eq!(
        stack.log().matches("configuration reloaded").count(),
        2,
        "{}",
        stack.log()
    );
    stack.assert_no_real_key_in(&outputs);
}

#[test]
fn explain_shows_the_attestation_and_the_decision_for_a_planned_request() {
    let mut stack = Stack::start();
    let socket = stack.dir.path().join("control.sock");
    let wait = "import sys\nprint('ready', flush=True)\nsys.stdin.readline()";
    let explain = |pid: u32, request: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_warrant"))
            .args([
                "explain",
                "--pid",
                &pid.to_string(),
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
    let mut tagged = stack.tagged(&["python3", "-c", wait]);
    assert_eq!(tagged.line(), "ready");
    let text = explain(
        tagged.pid,
        "POST https://api.openai.com/v1/chat/completions model=gpt-4o",
    );
    assert!(text.contains("warrant-agents.slice"), "{text}");
    assert!(
        text.contains("decision: allowed for workload \"agents\""),
        "{text}"
    );

    let mut other = stack.agent("other.service", &["python3", "-c", wait]);
    assert_eq!(other.line(), "ready");
    let text = explain(other.pid, "POST https://api.openai.com/v1/chat/completions");
    assert!(
        text.contains("decision: denied (no workload matches this process)"),
        "{text}"
    );
    // Nothing was sent.
    assert!(stack.mock.records().is_empty());
}

/// What a prompt-injected agent does with a key it found: sends it. The
/// key is refused with a 403 that says why, over HTTP/1.1 and HTTP/2 alike
/// (the quarantine's close waits for the answer: GOAWAY after it), and the
/// whole workload is quarantined, so another process of it (a fork, a
/// child) is refused too. Nothing reaches the provider.
#[test]
fn an_agent_sending_a_real_key_gets_a_403_and_its_whole_workload_is_quarantined() {
    let mut stack = Stack::start();
    let socket = stack.dir.path().join("control.sock");
    let leaked = "sk-proj-LEAKED9f8e7d6c5b4a39281706f5e4d3c2b1a0";
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        // The key, then a second curl: a new process (its own pid) of the
        // same workload, with a placeholder.
        let script = format!(
            "for key in {leaked} placeholder; do \
               curl -sS {flag} -w '\\nstatus %{{http_code}} %{{http_version}}\\n' https://api.openai.com/v1/chat/completions \
                 -H \"Authorization: Bearer $key\" -H 'content-type: application/json' -d '{{\"model\":\"gpt-4o\"}}'; \
               echo \"exit $?\"; \
             done; echo done"
        );
        let mut agent = stack.tagged(&["sh", "-c", &script]);
        let lines = run_to_end(&mut agent);
        let text = lines.join("\n");
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("status ") || l.starts_with("exit "))
                .collect::<Vec<_>>(),
            [
                &format!("status 403 {version}"),
                &"exit 0".to_owned(),
                &format!("status 403 {version}"),
                &"exit 0".to_owned(),
            ],
            "curl {flag} must receive both refusals whole: {text}"
        );
        assert!(
            lines[0].contains("looks like a real API key"),
            "the first refusal says why (curl {flag}): {text}"
        );
        assert!(
            text.contains("workload \\\"agents\\\" is quarantined"),
            "the other process of the workload is refused by the quarantine (curl {flag}): {text}"
        );
        assert!(!text.contains(leaked), "the key is not echoed: {text}");
        let restore = Command::new(env!("CARGO_BIN_EXE_warrant"))
            .args(["restore", "--workload", "agents", "--socket"])
            .arg(&socket)
            .output()
            .unwrap();
        assert!(
            restore.status.success(),
            "{}",
            String::from_utf8_lossy(&restore.stderr)
        );
    }
    assert!(
        stack.seen("api.openai.com").is_empty(),
        "nothing was forwarded"
    );
    // Records reach the file within the audit's flush interval.
    let audit_path = stack.dir.path().join("audit.jsonl");
    let quarantines_in = |audit: &str| -> Vec<serde_json::Value> {
        audit
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["kind"] == "quarantine" && r["actor"] == "agent_key")
            .collect()
    };
    support::wait::wait_until("both quarantine records", Duration::from_secs(10), || {
        quarantines_in(&fs::read_to_string(&audit_path).unwrap_or_default()).len() >= 2
    });
    let audit = fs::read_to_string(&audit_path).unwrap();
    let quarantines = quarantines_in(&audit);
    assert_eq!(quarantines.len(), 2, "one per protocol: {quarantines:#?}");
    for record in &quarantines {
        assert_eq!(record["workload"], "agents", "{record}");
    }
    stack.assert_no_real_key_in(&[audit]);
}

// ------------------------------------------------ one canonical request

/// Sends raw requests (exact paths and bodies, as an attacker would) to the
/// provider hosts through warrant; prints one JSON line per request with
/// the status and the start of the body. argv[1]: a JSON list of
/// {host, method?, path, body?, headers?, pad?}; `pad` bytes of filler go
/// in a "pad" field at the start of the body (a large body).
const PY_RAW: &str = r#"
import http.client, json, ssl, sys
for r in json.loads(sys.argv[1]):
    body = r.get("body")
    if body is not None and r.get("pad"):
        body = '{"pad":"' + "x" * r["pad"] + '",' + body[1:]
    headers = {"Authorization": "Bearer placeholder", "content-type": "application/json"}
    headers.update(r.get("headers", {}))
    conn = http.client.HTTPSConnection(r["host"], 443, context=ssl.create_default_context(), timeout=30)
    try:
        conn.request(r.get("method", "POST"), r["path"], body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        print(json.dumps({"status": resp.status, "body": text[:400]}), flush=True)
    except Exception as e:
        print(json.dumps({"status": 0, "body": repr(e)}), flush=True)
    conn.close()
print("done", flush=True)
"#;

#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Stack {
    /// Runs PY_RAW in the tagged unit with `requests`.
    fn raw(&mut self, requests: &serde_json::Value) -> Vec<Answer> {
        let argv = requests.to_string();
        let mut agent = self.tagged(&["python3", "-c", PY_RAW, &argv]);
        run_to_end(&mut agent)
            .iter()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                Answer {
                    status: v["status"].as_u64().unwrap() as u16,
                    body: v["body"].as_str().unwrap().to_owned(),
                }
            })
            .collect()
    }

    /// `warrant status --json`'s budgets.
    fn budgets(&self) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_warrant"))
            .args(["status", "--json", "--socket"])
            .arg(self.dir.path().join("control.sock"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        status["budgets"].clone()
    }

    fn audit_lines(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The audit line of the request to `path`, once written (records
    /// reach the file in batches, within the audit's flush interval).
    fn audit_line_for(&self, path: &str) -> serde_json::Value {
        let find = || self.audit_lines().into_iter().find(|l| l["path"] == path);
        support::wait::wait_until(
            &format!("the audit line of {path}"),
            Duration::from_secs(10),
            || find().is_some(),
        );
        find().unwrap()
    }
}

/// What the mock ran must be what policy allowed: its own normalisation of
/// the path is the decoded path warrant decided on, and its last-key-wins
/// model is an allowed one.
fn assert_provider_ran_what_policy_saw(records: &[serde_json::Value], allowed_models: &[&str]) {
    for record in records {
        let raw = record["path"].as_str().unwrap();
        let decided = warrant::provider::canonical_path(raw).expect("a path policy accepted");
        assert_eq!(
            record["normalised_path"].as_str().unwrap(),
            decided.trim_end_matches('/'),
            "the provider routed another path than policy saw: {record}"
        );
        if let Some(model) = record["model"].as_str() {
            assert!(
                allowed_models.contains(&model),
                "the provider ran model {model}: {record}"
            );
        }
    }
}

const MODEL_AND_PATH_POLICY: &str = r#"
[[policy]]
workload = "agents"
upstreams = ["api.openai.com", "generativelanguage.googleapis.com"]
paths = ["/v1/chat/*", "/v1beta/models/*"]
models = ["gpt-4o-mini", "gemini-1.5-flash"]
"#;

#[test]
fn policy_decides_on_the_request_the_provider_runs() {
    let mut stack = Stack::with_policy(MODEL_AND_PATH_POLICY);
    let chat = |path: &str, body: &str| serde_json::json!({"host": "api.openai.com", "path": path, "body": body});
    let gemini = |path: &str| {
        serde_json::json!({"host": "generativelanguage.googleapis.com", "path": path,
            "body": "{\"contents\":[]}", "headers": {"x-goog-api-key": "placeholder"}})
    };
    let ok_body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let requests = serde_json::json!([
        // Allowed: the baseline.
        chat("/v1/chat/completions", ok_body),
        gemini("/v1beta/models/gemini-1.5-flash:generateContent"),
        // Duplicate keys: providers keep the last.
        chat(
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","messages":[],"model":"o1-pro"}"#
        ),
        chat(
            "/v1/chat/completions",
            r#"{"model":"gpt-4o-mini","mod\u0065l":"o1-pro"}"#
        ),
        // The second key past the 1 MiB warrant reads (by a little: the
        // client's unread rest must fit the socket buffers).
        serde_json::json!({"host": "api.openai.com", "path": "/v1/chat/completions",
            "body": r#"{"model":"gpt-4o-mini","messages":[],"model":"o1-pro"}"#, "pad": 1_060_000}),
        // Dot segments, encoded or not, and the other normalisations.
        chat("/v1/chat/../embeddings", ok_body),
        chat("/v1/chat/%2e%2e/embeddings", ok_body),
        chat("/v1/chat/.%2E/embeddings", ok_body),
        chat("/v1/chat%2F..%2Fembeddings", ok_body),
        chat("/v1/chat/..%5Cembeddings", ok_body),
        chat("/v1/chat/..\\embeddings", ok_body),
        chat("/v1/chat//../embeddings", ok_body),
        chat("/v1/chat/;x/../../embeddings", ok_body),
        chat("/v1/chat/%00/completions", ok_body),
        // Gemini's model from a path that normalises elsewhere.
        gemini("/v1beta/models/gemini-1.5-flash/../gemini-ultra:generateContent"),
        gemini("/v1beta/models/gemini-1.5-flash%2F..%2Fgemini-ultra:generateContent"),
        // `*` stops at `/`.
        chat("/v1/chat/x/embeddings", ok_body),
        // Not JSON: names no model warrant can read.
        serde_json::json!({"host": "api.openai.com", "path": "/v1/chat/completions",
            "body": "model=o1-pro", "headers": {"content-type": "application/x-www-form-urlencoded"}}),
        // JSON whatever the content type says: read, and denied.
        serde_json::json!({"host": "api.openai.com", "path": "/v1/chat/completions",
            "body": r#"{"model":"o1-pro"}"#, "headers": {"content-type": "text/plain"}}),
    ]);
    let answers = stack.raw(&requests);
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [
            200, 200, 400, 400, 413, 400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 403,
            403, 403
        ],
        "{answers:#?}"
    );
    assert!(
        answers[2].body.contains("more than once"),
        "{}",
        answers[2].body
    );
    assert!(
        answers[4].body.contains("does not end within"),
        "{}",
        answers[4].body
    );
    assert!(
        answers[5].body.contains("dot segment"),
        "{}",
        answers[5].body
    );
    assert!(
        answers[16].body.contains("is not allowed"),
        "{}",
        answers[16].body
    );
    assert!(
        answers[17].body.contains("not JSON"),
        "{}",
        answers[17].body
    );
    // Refusals come in each provider's error shape.
    let openai: serde_json::Value = serde_json::from_str(&answers[2].body).unwrap();
    assert_eq!(openai["error"]["type"], "invalid_request_error");
    let google: serde_json::Value = serde_json::from_str(&answers[14].body).unwrap();
    assert_eq!(google["error"]["status"], "INVALID_ARGUMENT");
    // Only the two allowed requests reached the provider, and it ran what
    // policy allowed.
    let records = stack.mock.records();
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_provider_ran_what_policy_saw(&records, &["gpt-4o-mini", "gemini-1.5-flash"]);
    stack.assert_no_real_key_in(&[]);
}

#[test]
fn a_request_the_provider_could_read_otherwise_than_policy_is_refused() {
    let mut stack = Stack::with_policy(
        r#"
[[policy]]
workload = "agents"
upstreams = ["api.openai.com", "generativelanguage.googleapis.com"]
models = ["gpt-4o-mini", "gpt-realtime-mini", "gemini-1.5-flash"]
"#,
    );
    let flash = "/v1beta/models/gemini-1.5-flash:generateContent";
    let gemini = |method: &str, body: Option<&str>, headers: serde_json::Value| {
        let mut h = serde_json::json!({"x-goog-api-key": "placeholder"});
        h.as_object_mut()
            .unwrap()
            .extend(headers.as_object().unwrap().clone());
        serde_json::json!({"host": "generativelanguage.googleapis.com", "method": method,
            "path": flash, "body": body, "headers": h})
    };
    let chat = r#"{"model":"gpt-4o-mini","messages":[]}"#;
    let requests = serde_json::json!([
        // The baseline: allowed.
        gemini("POST", Some(r#"{"contents":[]}"#), serde_json::json!({})),
        // A body naming another model than the path.
        gemini("POST", Some(r#"{"model":"models/gemini-ultra","contents":[]}"#), serde_json::json!({})),
        // A method override: Google runs the method it names.
        gemini("GET", None, serde_json::json!({"x-http-method-override": "POST"})),
        // A compressed body warrant would read as something else.
        {"host": "api.openai.com", "path": "/v1/chat/completions", "body": chat,
            "headers": {"content-encoding": "gzip"}},
    ]);
    let answers = stack.raw(&requests);
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 400, 400, 400], "{answers:#?}");
    assert!(
        answers[1].body.contains("in its body"),
        "{}",
        answers[1].body
    );
    assert!(
        answers[2].body.contains("X-HTTP-Method-Override")
            || answers[2].body.contains("x-http-method-override"),
        "{}",
        answers[2].body
    );
    assert!(
        answers[3].body.contains("Content-Encoding"),
        "{}",
        answers[3].body
    );
    // A Realtime session names its model once: the allowed model, then the
    // same with a second model parameter (the provider would run the last).
    let url = "wss://api.openai.com/v1/realtime?model=gpt-realtime-mini";
    let mut agent = stack.tagged(&["python3", "-c", PY_WEBSOCKET, url]);
    assert_eq!(
        run_to_end(&mut agent),
        ["event response.created", "event response.done"]
    );
    for url in [
        "wss://api.openai.com/v1/realtime?model=gpt-realtime-mini&model=gpt-realtime",
        "wss://api.openai.com/v1/realtime?model=gpt-realtime-mini;model=gpt-realtime",
    ] {
        let mut agent = stack.tagged(&["python3", "-c", PY_WEBSOCKET, url]);
        assert_eq!(run_to_end(&mut agent), ["refused 400"], "{url}");
    }
    let records = stack.mock.records();
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_provider_ran_what_policy_saw(&records, &["gpt-realtime-mini", "gemini-1.5-flash"]);
}

const PY_WEBSOCKET: &str = r#"
import asyncio, json, ssl, sys
import websockets
async def main():
    try:
        async with websockets.connect(sys.argv[1], ssl=ssl.create_default_context(),
                additional_headers={"Authorization": "Bearer placeholder"}, open_timeout=30) as ws:
            await ws.send(json.dumps({"type": "response.create"}))
            for _ in range(2):
                print("event", json.loads(await ws.recv())["type"], flush=True)
    except websockets.exceptions.InvalidStatus as e:
        print("refused", e.response.status_code, flush=True)
asyncio.run(main())
print("done", flush=True)
"#;

#[test]
fn a_websocket_session_works_against_a_provider_that_offers_h2() {
    let mut stack = Stack::start();
    // The official client, through warrant, to a provider offering h2 and
    // http/1.1: the upgrade reaches it over HTTP/1.1 with the real key.
    let url = "wss://api.openai.com/v1/realtime?model=gpt-realtime";
    let mut agent = stack.tagged(&["python3", "-c", PY_WEBSOCKET, url]);
    assert_eq!(
        run_to_end(&mut agent),
        ["event response.created", "event response.done"]
    );
    let records = stack.seen("api.openai.com");
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["version"], "HTTP/1.1");
    assert_real_key_arrived(
        &records,
        "authorization",
        &format!("Bearer {}", stack.keys["openai"]),
    );
    assert!(
        records[0]["headers"]["sec-websocket-extensions"].is_null(),
        "no compression is negotiated: messages stay readable to the meter"
    );
}

const PY_WEBSOCKET_SPENDING: &str = r#"
import asyncio, json, ssl, sys
import websockets
async def main():
    async with websockets.connect(sys.argv[1], ssl=ssl.create_default_context(),
            additional_headers={"Authorization": "Bearer placeholder"}, open_timeout=30) as ws:
        try:
            for i in range(10):
                await ws.send(json.dumps({"type": "response.create"}))
                while json.loads(await ws.recv())["type"] != "response.done":
                    pass
                print("response", i, flush=True)
            print("never closed", flush=True)
        except websockets.exceptions.ConnectionClosed as e:
            print("closed", e.rcvd.code, "budget" in e.rcvd.reason, flush=True)
asyncio.run(main())
print("done", flush=True)
"#;

#[test]
fn a_websocket_session_is_metered_as_it_runs_and_closed_when_its_budget_runs_out() {
    let mut stack = Stack::with_policy(
        r#"
[[policy]]
workload = "agents"
upstreams = ["api.openai.com"]
tokens_per_hour = 50
"#,
    );
    // Each response costs 19 tokens: the third passes 50, and warrant ends
    // the session (1008, policy violation) after delivering it.
    let url = "wss://api.openai.com/v1/realtime?model=gpt-realtime";
    let mut agent = stack.tagged(&["python3", "-c", PY_WEBSOCKET_SPENDING, url]);
    assert_eq!(
        run_to_end(&mut agent),
        ["response 0", "response 1", "response 2", "closed 1008 True"]
    );
    let budgets = stack.budgets();
    let windows = budgets["windows"].as_array().unwrap();
    assert_eq!(windows[0][1], serde_json::json!([1, 57, 0]), "{budgets}");
    // Spent: the next session is refused at admission.
    let mut agent = stack.tagged(&["python3", "-c", PY_WEBSOCKET, url]);
    assert_eq!(run_to_end(&mut agent), ["refused 429"]);

    // An upgrade whose messages warrant cannot meter is refused under the
    // budget, and the audit line says why.
    let other = "wss://api.openai.com/v1/other-socket";
    let mut agent = stack.tagged(&["python3", "-c", PY_WEBSOCKET, other]);
    assert_eq!(run_to_end(&mut agent), ["refused 403"]);
    let denied = stack.audit_line_for("/v1/other-socket");
    assert!(
        denied.to_string().contains("WebSocket session"),
        "the audit line says why: {denied}"
    );
}

const PY_WEBSOCKET_HANG_UP: &str = r#"
import asyncio, json, ssl, sys
import websockets
async def main():
    async with websockets.connect(sys.argv[1], ssl=ssl.create_default_context(),
            additional_headers={"Authorization": "Bearer placeholder"}, open_timeout=30) as ws:
        await ws.send(json.dumps({"type": "response.create", "response": {"metadata": {"mock": "hold"}}}))
        print("event", json.loads(await ws.recv())["type"], flush=True)
asyncio.run(main())
print("done", flush=True)
"#;

#[test]
fn a_websocket_session_that_hangs_up_during_a_response_is_charged_for_it() {
    let mut stack = Stack::with_policy(
        r#"
[[policy]]
workload = "agents"
upstreams = ["api.openai.com"]
tokens_per_hour = 100000
"#,
    );
    // The provider started a response and the agent closed the session
    // before its response.done: no message reports its usage, so the
    // session is charged what a request without a cap reserves (4096).
    let url = "wss://api.openai.com/v1/realtime?model=gpt-realtime";
    let mut agent = stack.tagged(&["python3", "-c", PY_WEBSOCKET_HANG_UP, url]);
    assert_eq!(run_to_end(&mut agent), ["event response.created"]);
    support::wait::wait_until("the session's charge", Duration::from_secs(20), || {
        stack.budgets()["windows"][0][1] == serde_json::json!([1, 4096, 0])
    });
}

const BUDGET_POLICY: &str = r#"
[[policy]]
workload = "agents"
upstreams = ["api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com"]
tokens_per_hour = 20000
allow_unmetered = ["fine-tuning"]
"#;

#[test]
fn work_a_budget_cannot_meter_is_refused_unless_the_policy_names_it() {
    let mut stack = Stack::with_policy(BUDGET_POLICY);
    let openai = |path: &str, body: &str| serde_json::json!({"host": "api.openai.com", "path": path, "body": body});
    let requests = serde_json::json!([
        openai("/v1/batches", r#"{"input_file_id":"file-1","endpoint":"/v1/chat/completions","completion_window":"24h"}"#),
        {"host": "api.anthropic.com", "path": "/v1/messages/batches", "body": r#"{"requests":[]}"#},
        openai("/v1/responses", r#"{"model":"o3","input":"x","max_output_tokens":100,"background":true}"#),
        openai("/v1/threads/thread_1/runs", r#"{"assistant_id":"asst_1"}"#),
        openai("/v1/realtime/client_secrets", r#"{"session":{"type":"realtime"}}"#),
        {"host": "generativelanguage.googleapis.com", "path": "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
            "body": r#"{"batch":{"input_config":{"requests":{"requests":[]}}}}"#, "headers": {"x-goog-api-key": "placeholder"}},
        // Named by the policy: allowed, outside the budget.
        openai("/v1/fine_tuning/jobs", r#"{"model":"gpt-4o-mini","training_file":"file-1"}"#),
        // Metered work is allowed.
        openai("/v1/responses", r#"{"model":"o3","input":"x","max_output_tokens":100}"#),
    ]);
    let answers = stack.raw(&requests);
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [403, 403, 403, 403, 403, 403, 200, 200],
        "{answers:#?}"
    );
    let google: serde_json::Value = serde_json::from_str(&answers[5].body).unwrap();
    assert_eq!(google["error"]["status"], "PERMISSION_DENIED");
    assert!(answers[0].body.contains("batch job"), "{}", answers[0].body);
    assert!(
        answers[0].body.contains("allow_unmetered"),
        "{}",
        answers[0].body
    );
    assert!(
        answers[2].body.contains("background"),
        "{}",
        answers[2].body
    );
    // The audit lines say why.
    let batch = stack.audit_line_for("/v1/batches");
    assert!(batch.to_string().contains("batch job"), "{batch}");
    let records = stack.mock.records();
    let paths: Vec<&str> = records
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/v1/fine_tuning/jobs", "/v1/responses"]);
}

#[test]
fn refused_requests_leave_the_budget_untouched_and_the_reservation_covers_thinking() {
    let mut stack = Stack::with_policy(BUDGET_POLICY);
    let chat = serde_json::json!({"host": "api.anthropic.com", "path": "/v1/messages",
        "body": r#"{"model":"claude-sonnet-4-6","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#});
    // Quarantined: N requests refused before anything is reserved.
    let socket = stack.dir.path().join("control.sock");
    let revoke = Command::new(env!("CARGO_BIN_EXE_warrant"))
        .args(["revoke", "--workload", "agents", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    let answers = stack.raw(&serde_json::json!([chat, chat, chat]));
    assert!(answers.iter().all(|a| a.status == 403), "{answers:#?}");
    let restore = Command::new(env!("CARGO_BIN_EXE_warrant"))
        .args(["restore", "--workload", "agents", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let untouched = |budgets: &serde_json::Value| {
        budgets["windows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w[1] == serde_json::json!([0, 0, 0]))
    };
    assert!(untouched(&stack.budgets()), "{}", stack.budgets());
    // A thinking budget past the token budget: the reservation covers it,
    // so the request is refused rather than admitted at max_tokens.
    // So do the responses API's max_output_tokens, n choices, and
    // reasoning without a cap (default 4096 + 32768 reasoning allowance).
    let openai = |path: &str, body: &str| serde_json::json!({"host": "api.openai.com", "path": path, "body": body});
    let thinking = serde_json::json!([{"host": "api.anthropic.com", "path": "/v1/messages",
        "body": r#"{"model":"claude-sonnet-4-6","max_tokens":1024,"thinking":{"type":"enabled","budget_tokens":30000},"messages":[]}"#},
        openai("/v1/responses", r#"{"model":"o3","input":"x","max_output_tokens":30000}"#),
        openai("/v1/chat/completions", r#"{"model":"gpt-4o-mini","max_tokens":2048,"n":10,"messages":[]}"#),
        openai("/v1/chat/completions", r#"{"model":"o3","reasoning_effort":"high","messages":[]}"#),
    ]);
    let answers = stack.raw(&thinking);
    for answer in &answers {
        assert_eq!(answer.status, 429, "{answers:#?}");
        assert!(
            answer.body.contains("larger than the budget"),
            "{}",
            answer.body
        );
    }
    assert!(stack.mock.records().is_empty());
    assert!(untouched(&stack.budgets()), "{}", stack.budgets());
    // A credential that cannot go in a header: the rewrite fails after
    // admission, and each reservation is given back.
    fs::write(stack.dir.path().join("creds/anthropic"), "sk-ant-\u{1}bad").unwrap();
    let reload = Command::new(env!("CARGO_BIN_EXE_warrant"))
        .args(["reload", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(
        reload.status.success(),
        "{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    let answers = stack.raw(&serde_json::json!([chat, chat, chat]));
    assert!(answers.iter().all(|a| a.status == 500), "{answers:#?}");
    assert!(
        answers[0].body.contains("not a valid header value"),
        "{}",
        answers[0].body
    );
    assert!(stack.mock.records().is_empty());
    assert!(untouched(&stack.budgets()), "{}", stack.budgets());
}

#[test]
fn requests_to_an_unreachable_provider_leave_the_budget_untouched() {
    let mut stack = Stack::start_full(&["api.anthropic.com"], BUDGET_POLICY);
    let chat = serde_json::json!({"host": "api.anthropic.com", "path": "/v1/messages",
        "body": r#"{"model":"claude-sonnet-4-6","max_tokens":64,"messages":[]}"#});
    let answers = stack.raw(&serde_json::json!([chat, chat, chat, chat, chat]));
    assert!(answers.iter().all(|a| a.status == 502), "{answers:#?}");
    let budgets = stack.budgets();
    assert!(
        budgets["windows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w[1] == serde_json::json!([0, 0, 0])),
        "{budgets}"
    );
}

const PY_STREAM_WITHOUT_USAGE: &str = r#"
import http.client, json, ssl
conn = http.client.HTTPSConnection("api.openai.com", 443, context=ssl.create_default_context())
conn.request("POST", "/v1/chat/completions",
             body=json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
             headers={"Authorization": "Bearer placeholder", "content-type": "application/json"})
resp = conn.getresponse()
events = [e for e in resp.read().decode().split("\n\n") if e.startswith("data: ")]
print("events", len(events), flush=True)
print("usage chunks", sum(1 for e in events if '"choices":[]' in e.replace(" ", "")), flush=True)
print("done", flush=True)
"#;

#[test]
fn a_stream_without_include_usage_is_metered_exactly_and_the_agent_sees_the_stream_it_asked_for() {
    let mut stack = Stack::with_policy(BUDGET_POLICY);
    let mut agent = stack.tagged(&["python3", "-c", PY_STREAM_WITHOUT_USAGE]);
    // The mock's four chunks and [DONE]: no usage chunk reaches the agent.
    assert_eq!(run_to_end(&mut agent), ["events 5", "usage chunks 0"]);
    // The provider was asked for usage...
    let records = stack.seen("api.openai.com");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["body"]["stream_options"]["include_usage"], true);
    assert_eq!(records[0]["body"]["model"], "gpt-4o-mini");
    // ...and the budget was charged what it said (12 + 7), not the
    // reservation.
    let budgets = stack.budgets();
    let windows = budgets["windows"].as_array().unwrap();
    assert_eq!(windows[0][1][1], 19, "{budgets}");
    // The official SDK, streaming without the option, still works.
    let mut agent = stack.tagged(&["node", "-e", NODE_OPENAI]);
    assert_eq!(
        run_to_end(&mut agent),
        [
            "json Hello from the mock provider. 19",
            "stream Hello from the mock provider."
        ]
    );
}

const PY_GEMINI_LIVE: &str = r#"
import asyncio, json, ssl, sys
import websockets
URL = "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
# The answer to the setup message carries usage too, so each turn reads the
# answer to the one before: the close may come while answers are still
# unread. A send after the close is ignored, so that they are read (the
# client keeps received messages past the close) before recv raises.
async def send(ws, message):
    try:
        await ws.send(json.dumps(message))
    except websockets.exceptions.ConnectionClosed:
        pass
async def main():
    async with websockets.connect(URL, ssl=ssl.create_default_context(),
            additional_headers={"x-goog-api-key": "placeholder"}, open_timeout=30) as ws:
        await ws.send(json.dumps({"setup": {"model": "models/gemini-2.0-flash-live-001"}}))
        try:
            for i in range(10):
                await send(ws, {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "hi"}]}], "turnComplete": True}})
                while "usageMetadata" not in json.loads(await ws.recv()):
                    pass
                print("turn", i, flush=True)
            print("never closed", flush=True)
        except websockets.exceptions.ConnectionClosed as e:
            print("closed", e.rcvd.code, flush=True)
asyncio.run(main())
print("done", flush=True)
"#;

#[test]
fn a_gemini_live_session_is_metered_from_its_usage_metadata() {
    let mut stack = Stack::with_policy(
        r#"
[[policy]]
workload = "agents"
upstreams = ["generativelanguage.googleapis.com"]
tokens_per_hour = 50
"#,
    );
    // Every server message carries 19 tokens of usage (the answer to the
    // setup message too): the third passes 50, is delivered, and the
    // session is closed.
    let mut agent = stack.tagged(&["python3", "-c", PY_GEMINI_LIVE]);
    assert_eq!(
        run_to_end(&mut agent),
        ["turn 0", "turn 1", "turn 2", "closed 1008"]
    );
    let budgets = stack.budgets();
    let windows = budgets["windows"].as_array().unwrap();
    assert_eq!(windows[0][1], serde_json::json!([1, 57, 0]), "{budgets}");
    let records = stack.seen("generativelanguage.googleapis.com");
    assert_eq!(records.len(), 1);
    assert_real_key_arrived(&records, "x-goog-api-key", &stack.keys["gemini"]);
}
