//! The real `warrant` binary on a cgroup subtree the test created, which it
//! treats as the system manager's root (the test-build switch
//! `WARRANT_TEST_MANAGER_ROOT`), with a mock OpenAI on a loopback address
//! that accepts only the real key, and agents started in the test's cgroups
//! with a private /etc/hosts, a placeholder key and a clean environment.

use std::{
    collections::HashMap,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU8, Ordering},
    time::Duration,
};

use crate::{
    cgroups::{TestCgroup, TestPins, TestProcess, unique},
    mock_provider::{MockProvider, MockSettings},
    netns::{self, TestNetns},
};

static NEXT_IP: AtomicU8 = AtomicU8::new(100);

/// The uid and gid agents run as, unless a test says otherwise.
pub const NOBODY: u32 = 65534;

pub struct Warrant {
    /// The binary under test (the test's `CARGO_BIN_EXE_warrant`).
    bin: PathBuf,
    pub cgroups: TestCgroup,
    pub pins: TestPins,
    pub dir: tempfile::TempDir,
    pub mock: MockProvider,
    daemon: Option<Child>,
    pub listen: SocketAddr,
    /// The real OpenAI key: unique to this run.
    pub key: String,
    /// More environment for the daemon (test-build switches).
    daemon_env: Vec<(String, String)>,
    /// The network namespace the daemon and its agents run in (a "remote
    /// host"); None: the test's.
    netns: Option<String>,
}

impl Warrant {
    /// Lays out `cgroups` (paths relative to the test's cgroup, created
    /// before the daemon starts), writes the config (the test's `sections`
    /// after the daemon, upstream and credential ones) and starts the
    /// daemon.
    /// `bin` is the binary to run (a test's `CARGO_BIN_EXE_warrant`, or
    /// another build to compare with); `setup` runs on the test's cgroups
    /// before the daemon starts (ownership, xattrs: so the daemon never sees
    /// them half made); `daemon_env` adds to the daemon's environment.
    pub fn start(
        bin: &Path,
        cgroups: &[&str],
        setup: impl FnOnce(&TestCgroup),
        sections: &str,
        daemon_env: &[(&str, &str)],
    ) -> Warrant {
        Warrant::start_as(bin, cgroups, setup, sections, daemon_env, None, None)
    }

    /// As `start`, for a node that forwards to a gateway: `forward` is its
    /// `[forward]` section; the node holds no credential (no
    /// `[[credential]]`, its upstream names none). The mock still runs,
    /// for the gateway to use (`mock`, `key`).
    pub fn start_node(bin: &Path, cgroups: &[&str], sections: &str, forward: &str) -> Warrant {
        Warrant::start_as(bin, cgroups, |_| {}, sections, &[], Some(forward), None)
    }

    /// As `start_node`, with the daemon and every agent it starts inside
    /// `netns` (its network only): a remote host of the gateway's. The
    /// cgroups, pins and eBPF programs are the test's as always (cgroup
    /// programs are per cgroup, not per namespace).
    pub fn start_node_in(
        netns: &TestNetns,
        bin: &Path,
        cgroups: &[&str],
        sections: &str,
        forward: &str,
    ) -> Warrant {
        let netns = Some(netns.name.clone());
        Warrant::start_as(bin, cgroups, |_| {}, sections, &[], Some(forward), netns)
    }

    fn start_as(
        bin: &Path,
        cgroups: &[&str],
        setup: impl FnOnce(&TestCgroup),
        sections: &str,
        daemon_env: &[(&str, &str)],
        forward: Option<&str>,
        netns: Option<String>,
    ) -> Warrant {
        let n = NEXT_IP.fetch_add(1, Ordering::SeqCst);
        let provider_ip = format!("127.0.0.{n}");
        let key = format!(
            "sk-proj-REAL{}abcdefghijklmnopqrstuvwxyz012345",
            unique("k").replace('-', "")
        );
        let mock = MockProvider::start(
            &[format!("{provider_ip}:443").parse().unwrap()],
            MockSettings {
                keys: HashMap::from([("openai".to_owned(), key.clone())]),
                record_file: None,
                event_delay: Duration::from_millis(1),
            },
        )
        .expect("mock provider");
        let test_cgroups = TestCgroup::new();
        for cgroup in cgroups {
            test_cgroups.sub(cgroup);
        }
        setup(&test_cgroups);
        let pins = TestPins::new();
        let dir = tempfile::tempdir().unwrap();
        // Agents of other uids read the trust bundle and hosts file here.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path();
        fs::create_dir(d.join("creds")).unwrap();
        fs::write(d.join("creds/openai"), &key).unwrap();
        fs::set_permissions(d.join("creds/openai"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(d.join("provider-ca.pem"), &mock.ca_pem).unwrap();
        fs::write(
            d.join("hosts"),
            format!("127.0.0.1 localhost\n{provider_ip} api.openai.com\n"),
        )
        .unwrap();
        fs::set_permissions(d.join("hosts"), fs::Permissions::from_mode(0o644)).unwrap();
        let injecting = format!(
            r#"
[[upstream]]
host = "api.openai.com"
scheme = "openai"
credential = "openai"
ca_file = "{d}/provider-ca.pem"

[[credential]]
name = "openai"
source = "file"
path = "{d}/creds/openai"
"#,
            d = d.display()
        );
        let upstreams = match forward {
            None => injecting,
            Some(forward) => format!(
                "[[upstream]]\nhost = \"api.openai.com\"\nscheme = \"openai\"\n\n{forward}\n"
            ),
        };
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

{upstreams}

{sections}
"#,
            d = d.display(),
            root = test_cgroups.path.display(),
            pins = pins.path.display(),
        );
        fs::write(d.join("warrant.toml"), config).unwrap();
        let mut warrant = Warrant {
            bin: bin.to_owned(),
            cgroups: test_cgroups,
            pins,
            dir,
            mock,
            daemon: None,
            listen: "127.0.0.1:1".parse().unwrap(),
            key,
            daemon_env: daemon_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            netns,
        };
        warrant.run_daemon();
        warrant
    }

    /// `program`, in the daemon's network namespace if it has one.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match &self.netns {
            Some(name) => netns::command_in(name, program),
            None => Command::new(program),
        }
    }

    fn run_daemon(&mut self) {
        let d = self.dir.path();
        let mut command = self.command(&self.bin);
        command
            .arg("run")
            .arg("--config")
            .arg(d.join("warrant.toml"))
            .arg("--detach-on-exit")
            .env("WARRANT_LOG", "info,warrant::proxy=debug")
            .env("WARRANT_TEST_MANAGER_ROOT", &self.cgroups.path)
            .envs(self.daemon_env.iter().map(|(k, v)| (k, v)));
        let (child, listen) = start_until_ready(&mut command, d);
        self.daemon = Some(child);
        self.listen = listen.expect("warrant run says where it serves");
    }

    /// The daemon's log, without terminal colours.
    pub fn log(&self) -> String {
        strip_ansi(&fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default())
    }

    /// The path of a test cgroup as the daemon logs it (relative to the
    /// cgroup2 mount).
    pub fn logged_path(&self, rel: &str) -> String {
        let mount = warrant::redirect::cgroup::cgroup2_mount().unwrap();
        warrant::redirect::cgroup::relative_path(&mount, &self.cgroups.path.join(rel))
    }

    /// Waits until the daemon logged that it tagged `rel`.
    pub fn wait_tagged(&self, rel: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !self.tagged(rel) {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {} to be tagged; daemon log:\n{}",
                self.logged_path(rel),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the daemon logged that it tagged `rel`.
    pub fn tagged(&self, rel: &str) -> bool {
        let needle = format!("cgroup={} ", self.logged_path(rel));
        self.log()
            .lines()
            .any(|l| l.contains("cgroup tagged") && l.contains(&needle))
    }

    pub fn bundle(&self) -> PathBuf {
        self.dir.path().join("state/trust-bundle.pem")
    }

    /// Starts `argv` in cgroup `rel` as `uid` (and gid the same), with a
    /// private /etc/hosts, the trust bundle, a placeholder key and no other
    /// environment than `env`.
    pub fn agent(
        &mut self,
        rel: &str,
        uid: Option<u32>,
        env: &[(&str, &str)],
        argv: &[&str],
    ) -> TestProcess {
        self.agent_in(rel, uid, None, env, argv)
    }

    /// As `agent`, in working directory `cwd`.
    pub fn agent_in(
        &mut self,
        rel: &str,
        uid: Option<u32>,
        cwd: Option<&Path>,
        env: &[(&str, &str)],
        argv: &[&str],
    ) -> TestProcess {
        let bundle = self.bundle();
        let mut cmd = self.command("/usr/bin/unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
        ])
        .arg(self.dir.path().join("hosts"));
        if let Some(uid) = uid {
            cmd.args([
                "/usr/bin/setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--",
            ]);
        }
        cmd.args(argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("OPENAI_API_KEY", "placeholder")
            .env("SSL_CERT_FILE", &bundle)
            .env("CURL_CA_BUNDLE", &bundle)
            .env("NODE_EXTRA_CA_CERTS", &bundle)
            .stderr(Stdio::inherit());
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let dir = self.cgroups.path.join(rel);
        self.cgroups.spawn(&dir, &mut cmd)
    }

    /// curl to the mock as `uid` in cgroup `rel`: the HTTP status it got
    /// ("000" when it got none).
    pub fn curl(&mut self, rel: &str, uid: u32) -> String {
        let mut agent = self.agent(
            rel,
            Some(uid),
            &[],
            &[
                "/usr/bin/curl",
                "-s",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}\n",
                "-H",
                "Authorization: Bearer placeholder",
                "https://api.openai.com/v1/models",
            ],
        );
        agent.try_line().unwrap_or_default()
    }

    /// Whether the real key reached the mock provider, ever.
    pub fn provider_saw_the_key(&self) -> bool {
        let bearer = format!("Bearer {}", self.key);
        self.mock
            .records()
            .iter()
            .any(|r| r["headers"]["authorization"] == bearer.as_str())
    }

    /// `warrant status --json`.
    pub fn status(&self) -> serde_json::Value {
        let out = Command::new(&self.bin)
            .args(["status", "--json", "--socket"])
            .arg(self.dir.path().join("control.sock"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "warrant status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The metrics exposition.
    pub fn metrics(&self) -> String {
        let log = self.log();
        let addr = log
            .lines()
            .find(|l| l.contains("metrics served"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .expect("the daemon logs where it serves metrics");
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }

    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().unwrap().id()
    }
}

impl Drop for Warrant {
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

/// Removes ANSI escape sequences (tracing colours its fields).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-byte
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Makes `path` and its contents owned by `uid` (and gid the same).
pub fn chown_tree(path: &Path, uid: u32) {
    let status = Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}")])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Sets an extended attribute (trusted.* needs CAP_SYS_ADMIN: root).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    // Safety: NUL-terminated strings and a buffer of the length we pass.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// A directory tree for agents' programs: `root` is root-owned and 0755.
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        Files { dir }
    }

    /// Writes a root-owned file (0644; dirs 0755).
    pub fn root_file(&self, rel: &str, body: &str) -> PathBuf {
        let path = self.dir.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, body).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        path
    }

    /// A directory owned by `uid`: the agent may write in it.
    pub fn writable_dir(&self, rel: &str, uid: u32) -> PathBuf {
        let path = self.dir.path().join(rel);
        fs::create_dir_all(&path).unwrap();
        chown_tree(&path, uid);
        path
    }

    /// A file owned by `uid` in a directory it owns.
    pub fn writable_file(&self, rel: &str, body: &str, uid: u32) -> PathBuf {
        let path = self.dir.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, body).unwrap();
        chown_tree(path.parent().unwrap(), uid);
        path
    }
}

pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

/// Starts the daemon `command` (its arguments and environment set by the
/// caller) with a notify socket in `dir` and its stderr appended to
/// `dir/daemon.log`, and waits for READY=1. Returns the child and the
/// address its STATUS says it serves on, if it says one.
pub fn start_until_ready(command: &mut Command, dir: &Path) -> (Child, Option<SocketAddr>) {
    start_logging_to(command, dir, &dir.join("daemon.log"))
}

/// As [`start_until_ready`], with stderr appended to `log_path`.
pub fn start_logging_to(
    command: &mut Command,
    dir: &Path,
    log_path: &Path,
) -> (Child, Option<SocketAddr>) {
    let notify_path = dir.join(unique("notify"));
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    let mut child = command
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(log)
        .spawn()
        .unwrap();
    let mut buf = [0u8; 1024];
    loop {
        let n = match notify.recv(&mut buf) {
            Ok(n) => n,
            // A signal for another test's thread (a child's SIGCHLD, when
            // a handler is installed) interrupts this one's wait too.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = fs::read_to_string(log_path).unwrap_or_default();
                panic!("no READY=1 from warrant ({e}): {log}")
            }
        };
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if text.lines().any(|l| l == "READY=1") {
            let listen = text
                .lines()
                .find_map(|l| l.strip_prefix("STATUS=serving on "))
                .and_then(|status| status.split(' ').next()?.parse().ok());
            return (child, listen);
        }
    }
}
