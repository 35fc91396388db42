//! `cargo xtask demo`: warrant injecting a credential into a sample agent.
//!
//! Everything stays on this machine: a mock provider on 127.0.0.2:443 with a
//! throwaway CA plays api.openai.com; the agent runs in a cgroup the demo
//! creates, in a private mount namespace whose /etc/hosts maps
//! api.openai.com to 127.0.0.2, with OPENAI_API_KEY=placeholder. The daemon
//! runs with the embedded default config, changed only where a demo must be
//! (its own cgroup, state and pin directories; the mock's CA; demo key files).
//! It prints what the agent sent beside what the provider received.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use toml_edit::{DocumentMut, value};

use crate::{cargo, target_dir};

const PROVIDER_ADDR: &str = "127.0.0.2";

pub fn run() -> Result<()> {
    crate::setup::run()?;
    cargo(&[
        "build",
        "--release",
        "-p",
        "warrant",
        "--bin",
        "warrant",
        "--example",
        "mock_provider",
    ])?;
    let release = target_dir()?.join("release");
    let mut world = World::new()?;
    world.write_files()?;

    // The provider stand-in, expecting the real (demo) key.
    let mut provider = Command::new(release.join("examples/mock_provider"))
        .args(["--listen", &format!("{PROVIDER_ADDR}:443")])
        .arg("--ca-out")
        .arg(world.dir.join("provider-ca.pem"))
        .arg("--record")
        .arg(world.dir.join("provider-saw.jsonl"))
        .arg("--key")
        .arg(format!(
            "openai={}",
            world.dir.join("credentials/openai").display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the mock provider")?;
    let ready = provider
        .stdout
        .take()
        .map(BufReader::new)
        .and_then(|mut r| {
            let mut line = String::new();
            r.read_line(&mut line).ok().map(|_| line)
        });
    world.children.push(provider);
    if ready.as_deref().map(str::trim) != Some("ready") {
        bail!("the mock provider did not start (is {PROVIDER_ADDR}:443 free?)");
    }

    let config = world.config()?;
    println!("== warrant runs with the embedded default config and these demo overrides:");
    for line in &world.overrides {
        println!("   {line}");
    }
    fs::write(world.dir.join("warrant.toml"), config)?;

    // The daemon; ready when it says READY=1 on the notify socket.
    let notify_path = world.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(Duration::from_secs(60)))?;
    // Kept open until the daemon is stopped (it says STOPPING=1 on its way out).
    world.notify = Some(notify.try_clone()?);
    let daemon = Command::new(release.join("warrant"))
        .args(["run", "--detach-on-exit", "--config"])
        .arg(world.dir.join("warrant.toml"))
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WARRANT_LOG", "warn")
        .spawn()
        .context("starting warrant")?;
    world.children.push(daemon);
    wait_ready(&notify)?;

    println!(
        "\n== the agent (tagged cgroup, OPENAI_API_KEY=placeholder) calls https://api.openai.com:"
    );
    let procs = world.agent_cgroup.join("cgroup.procs");
    let agent = format!(
        "echo $$ > {procs} && exec unshare --mount --propagation private sh -c 'mount --bind {hosts} /etc/hosts && exec python3 {agent}'",
        procs = procs.display(),
        hosts = world.dir.join("hosts").display(),
        agent = world.dir.join("agent.py").display(),
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(agent)
        .env("OPENAI_API_KEY", "placeholder")
        .env("SSL_CERT_FILE", world.dir.join("state/trust-bundle.pem"))
        .status()?;
    if !status.success() {
        bail!("the agent failed: {status}");
    }

    let real_key = fs::read_to_string(world.dir.join("credentials/openai"))?
        .trim()
        .to_owned();
    let saw = fs::read_to_string(world.dir.join("provider-saw.jsonl"))?;
    let first: serde_json::Value =
        serde_json::from_str(saw.lines().next().context("the provider saw no request")?)?;
    let received = first["headers"]["authorization"]
        .as_str()
        .unwrap_or("(none)")
        .to_owned();
    println!("\n== side by side");
    let sent = "Authorization: Bearer placeholder";
    let got = format!("Authorization: {}", mask(&received));
    println!("   {:<44} the provider received", "the agent sent");
    println!("   {sent:<44} {got}");
    let verdict = if received == format!("Bearer {real_key}") {
        "the real key, which the agent never held"
    } else {
        "NOT the real key: something is wrong"
    };
    println!(
        "\n   The provider received {verdict} ({}).",
        world.dir.join("credentials/openai").display()
    );
    print_audit_line(&world.dir.join("audit.jsonl"));
    Ok(())
}

/// What warrant recorded about the request (the audit line), in short.
fn print_audit_line(path: &Path) {
    let text = fs::read_to_string(path).unwrap_or_default();
    let Some(record) = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["kind"] == "request")
    else {
        return;
    };
    println!("\n== warrant's audit line for it ({})", path.display());
    println!(
        "   workload {} (unit {}), {} {}{}, outcome {}, status {}",
        record["workload"],
        record["attestation"]["unit"],
        record["method"].as_str().unwrap_or("?"),
        record["upstream"].as_str().unwrap_or("?"),
        record["path"].as_str().unwrap_or("?"),
        record["outcome"],
        record["status"]
    );
    println!(
        "   credential {} {}, usage {}",
        record["credential"]["name"], record["credential"]["fingerprint"], record["usage"]
    );
}

fn wait_ready(notify: &UnixDatagram) -> Result<()> {
    let mut buf = [0u8; 512];
    loop {
        let n = notify
            .recv(&mut buf)
            .context("warrant did not report READY=1 within 60 s")?;
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            return Ok(());
        }
    }
}

/// "Bearer sk-demo-…89ab": enough to recognise, not the whole key.
fn mask(header: &str) -> String {
    let (scheme, key) = header.split_once(' ').unwrap_or(("", header));
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let head: String = key.chars().take(8).collect();
    format!("{scheme} {head}…{tail}")
}

/// The demo's files, cgroups and processes; removed on drop.
struct World {
    dir: PathBuf,
    cgroup_root: PathBuf,
    agent_cgroup: PathBuf,
    pin_dir: PathBuf,
    children: Vec<Child>,
    overrides: Vec<String>,
    notify: Option<UnixDatagram>,
}

impl World {
    fn new() -> Result<World> {
        let id = std::process::id();
        let dir = std::env::temp_dir().join(format!("warrant-demo-{id}"));
        fs::create_dir_all(dir.join("credentials"))?;
        fs::create_dir_all(dir.join("state"))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let mounts = fs::read_to_string("/proc/mounts")?;
        let cgroup2 = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .context("no cgroup2 mount")?;
        let cgroup_root = cgroup2.join(format!("warrant-demo-{id}"));
        // The embedded default tags warrant-agents.slice; the agent runs in a unit below it.
        let agent_cgroup = cgroup_root.join("warrant-agents.slice/demo-agent.service");
        fs::create_dir_all(&agent_cgroup).context("creating the demo cgroup (run as root)")?;
        Ok(World {
            dir,
            cgroup_root,
            agent_cgroup,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/warrant-demo-{id}")),
            children: Vec::new(),
            overrides: Vec::new(),
            notify: None,
        })
    }

    fn write_files(&self) -> Result<()> {
        for (name, key) in [
            ("openai", "sk-demo-openai"),
            ("anthropic", "sk-ant-demo"),
            ("gemini", "AIza-demo"),
        ] {
            let path = self.dir.join("credentials").join(name);
            fs::write(&path, format!("{key}-{:016x}\n", random()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        }
        fs::write(
            self.dir.join("hosts"),
            format!("127.0.0.1 localhost\n{PROVIDER_ADDR} api.openai.com\n"),
        )?;
        fs::write(self.dir.join("agent.py"), AGENT)?;
        Ok(())
    }

    /// The embedded default config with the demo's overrides.
    fn config(&mut self) -> Result<String> {
        let output = Command::new(target_dir()?.join("release/warrant"))
            .arg("default-config")
            .output()?;
        let mut doc: DocumentMut = String::from_utf8(output.stdout)?.parse()?;
        let dir = self.dir.display().to_string();
        let mut overrides = Vec::new();
        let mut set = |item: &mut toml_edit::Item, name: String, new: String| {
            overrides.push(format!("{name} = {new:?}"));
            *item = value(new);
        };
        let daemon = &mut doc["daemon"];
        set(
            &mut daemon["cgroup_root"],
            "daemon.cgroup_root".into(),
            self.cgroup_root.display().to_string(),
        );
        set(
            &mut daemon["state_dir"],
            "daemon.state_dir".into(),
            format!("{dir}/state"),
        );
        set(
            &mut daemon["audit_log"],
            "daemon.audit_log".into(),
            format!("{dir}/audit.jsonl"),
        );
        set(
            &mut daemon["bpf_pin_dir"],
            "daemon.bpf_pin_dir".into(),
            self.pin_dir.display().to_string(),
        );
        set(
            &mut doc["control"]["socket"],
            "control.socket".into(),
            format!("{dir}/control.sock"),
        );
        if let Some(upstreams) = doc["upstream"].as_array_of_tables_mut() {
            for upstream in upstreams
                .iter_mut()
                .filter(|u| u["host"].as_str() == Some("api.openai.com"))
            {
                set(
                    &mut upstream["ca_file"],
                    "upstream[api.openai.com].ca_file".into(),
                    format!("{dir}/provider-ca.pem"),
                );
            }
        }
        if let Some(credentials) = doc["credential"].as_array_of_tables_mut() {
            for credential in credentials.iter_mut() {
                let name = credential["name"].as_str().unwrap_or_default().to_owned();
                set(
                    &mut credential["path"],
                    format!("credential[{name}].path"),
                    format!("{dir}/credentials/{name}"),
                );
            }
        }
        self.overrides = overrides;
        Ok(doc.to_string())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            // SIGTERM first: the daemon detaches its programs on the way out.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::SIGTERM,
            );
            let _ = child.wait();
        }
        let _ = fs::remove_dir(&self.agent_cgroup);
        let _ = fs::remove_dir(
            self.agent_cgroup
                .parent()
                .unwrap_or(Path::new("/nonexistent")),
        );
        let _ = fs::remove_dir(&self.cgroup_root);
        let _ = fs::remove_dir_all(&self.pin_dir);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn random() -> u64 {
    let mut bytes = [0u8; 8];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    u64::from_ne_bytes(bytes)
}

/// The sample agent: plain Python, a placeholder key, a streamed chat completion.
const AGENT: &str = r#"
import http.client, json, os, ssl
key = os.environ["OPENAI_API_KEY"]
body = json.dumps({"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
                   "messages": [{"role": "user", "content": "Say hello."}]})
headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
print(f"   agent: POST https://api.openai.com/v1/chat/completions with Authorization: Bearer {key}")
conn = http.client.HTTPSConnection("api.openai.com", 443, context=ssl.create_default_context())
conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
resp = conn.getresponse()
print(f"   agent: HTTP {resp.status}, streaming:", end=" ", flush=True)
text, usage = "", {}
for line in resp:
    line = line.decode().strip()
    if line.startswith("data: ") and line != "data: [DONE]":
        chunk = json.loads(line[6:])
        if not chunk["choices"]:
            usage = chunk.get("usage") or {}
            continue
        delta = chunk["choices"][0]["delta"].get("content", "")
        text += delta
        print(repr(delta), end=" ", flush=True)
print(f"\n   agent: the model said {text!r} ({usage.get('total_tokens')} tokens)")
if resp.status != 200:
    raise SystemExit(1)
"#;
