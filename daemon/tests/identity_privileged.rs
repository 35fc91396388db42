//! The identity boundary attacked as the threat model's attackers would,
//! through the real `warrant` binary and its eBPF programs: only the cgroups
//! the operator meant get credentials, a process cannot pass for another
//! program, and warrant never relays an agent where its unit could not go.
//! One test per route; each failed on the code before this suite.
//!
//! The daemon runs on a cgroup the test created, treated as the system
//! manager's root (the test-build switch `WARRANT_TEST_MANAGER_ROOT`), so
//! `<test>/warrant.slice/warrant-agents.slice` is the manager's
//! warrant-agents.slice. Agents run as uid 65534 unless said otherwise,
//! with a private /etc/hosts mapping api.openai.com to a mock that accepts
//! only the real key. Network traffic stays on loopback and in network
//! namespaces the tests create. Needs root.
#![cfg(feature = "privileged-tests")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use warrant_test_support::{
    binary::{Files, NOBODY, Warrant, chown_tree, set_xattr, sha256_file},
    cgroups::TestCgroup,
    netns::{EgressFilter, TestNetns},
    prereq::{self, Need},
    wait::wait_until,
};

/// What every test here needs from the host.
const NEEDS: &[Need] = &[
    Need::Root,
    Need::Cgroup2,
    Need::Program("curl"),
    Need::Program("python3"),
    Need::Program("unshare"),
    Need::Program("setpriv"),
    Need::Program("bash"),
    Need::Program("node"),
    Need::Program("ssh-keygen"),
    Need::Program("ip"),
];

/// The binary under test: this build's, or `WARRANT_TEST_BIN` (to run
/// this suite against another build, e.g. the code before a fix).
fn bin() -> PathBuf {
    std::env::var_os("WARRANT_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_warrant")))
}

fn start(cgroups: &[&str], sections: &str) -> Warrant {
    Warrant::start(&bin(), cgroups, |_| {}, sections, &[])
}

fn start_with(cgroups: &[&str], setup: impl FnOnce(&TestCgroup), sections: &str) -> Warrant {
    Warrant::start(&bin(), cgroups, setup, sections, &[])
}

const POLICY_ALL: &str = r#"upstreams = ["api.openai.com"]"#;

fn policy(workloads: &[&str]) -> String {
    workloads
        .iter()
        .map(|w| format!("[[policy]]\nworkload = \"{w}\"\n{POLICY_ALL}\n"))
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Name-alike cgroups

/// Creates `rel` below the test cgroup, owned by `uid` from `owned_from`
/// down (as a user's own mkdir in a subtree delegated to them would).
fn user_tree(cgroups: &TestCgroup, owned_from: &str, rel: &str, uid: u32) {
    cgroups.sub(rel);
    chown_tree(&cgroups.path.join(owned_from), uid);
}

#[test]
fn name_alike_cgroups_get_neither_a_tag_nor_a_credential() {
    if !prereq::require(NEEDS) {
        return;
    }
    let legit = [
        "warrant.slice/warrant-agents.slice/real.service",
        "system.slice/agent.service",
        "system.slice/agent-1.service",
    ];
    let config = format!(
        r#"
[[workload]]
name = "agents"
slice = "warrant-agents.slice"

[[workload]]
name = "unit"
unit = "agent.service"

[[workload]]
name = "glob"
cgroup = "/system.slice/agent-*.service"

{}"#,
        policy(&["agents", "unit", "glob"])
    );
    // What unprivileged users make: the issue's `systemd-run --user
    // --slice=warrant-agents.slice` (a user manager's subtree is the
    // user's, and systemd marks it delegated), a unit name-alike there,
    // mkdirs in subtrees a user owns, and delegated cgroups named like the
    // operator's unit.
    let user_manager = "user.slice/user-65534.slice/user@65534.service";
    let alikes = [
        format!("{user_manager}/warrant.slice/warrant-agents.slice/run-u1.service"),
        format!("{user_manager}/app.slice/agent.service"),
        "evil.slice/agent.service".to_owned(),
        "system.slice/agent-9.service".to_owned(),
        "delegated.slice/agent.service".to_owned(),
        "udelegated.slice/agent.service".to_owned(),
    ];
    // Below the operator's own slice, a cgroup a user owns: redirected
    // (the slice is tagged) but never given a credential.
    let under_tagged = "warrant.slice/warrant-agents.slice/real.service/mine";
    let mut w = start_with(
        &legit,
        |cgroups| {
            user_tree(cgroups, user_manager, &alikes[0], NOBODY);
            user_tree(cgroups, user_manager, &alikes[1], NOBODY);
            set_xattr(&cgroups.path.join(user_manager), "trusted.delegate", b"1");
            user_tree(cgroups, "evil.slice", &alikes[2], NOBODY);
            user_tree(cgroups, &alikes[3], &alikes[3], NOBODY);
            cgroups.sub(&alikes[4]);
            set_xattr(&cgroups.path.join(&alikes[4]), "trusted.delegate", b"1");
            cgroups.sub(&alikes[5]);
            set_xattr(&cgroups.path.join(&alikes[5]), "user.delegate", b"1");
            user_tree(cgroups, under_tagged, under_tagged, NOBODY);
        },
        &config,
    );
    // A slice is tagged as a whole; units by name.
    for rel in [
        "warrant.slice/warrant-agents.slice",
        "system.slice/agent.service",
    ] {
        w.wait_tagged(rel);
    }
    for rel in &alikes {
        let status = w.curl(rel, NOBODY);
        assert_ne!(status, "200", "{rel} got through");
    }
    assert_ne!(w.curl(under_tagged, NOBODY), "200");
    assert!(
        !w.provider_saw_the_key(),
        "the provider received the real key for a name-alike cgroup; daemon log:\n{}",
        w.log()
    );
    for rel in &alikes {
        assert!(!w.tagged(rel), "{rel} was tagged");
    }
    // The operator's own cgroups still work, for a process of any uid.
    w.wait_tagged("system.slice/agent-1.service");
    for rel in legit {
        assert_eq!(w.curl(rel, NOBODY), "200", "{rel}; log:\n{}", w.log());
    }
    assert!(w.provider_saw_the_key());
}

#[test]
fn a_delegated_unit_matches_only_when_its_workload_opts_in() {
    if !prereq::require(NEEDS) {
        return;
    }
    let config = format!(
        r#"
[[workload]]
name = "runtime"
unit = "ctr.service"
delegated = true

[[workload]]
name = "plain"
unit = "other.service"

{}"#,
        policy(&["runtime", "plain"])
    );
    // systemd delegates a unit with Delegate=yes and User=: the unit's
    // cgroup is its user's, and marked.
    let units = ["system.slice/ctr.service", "system.slice/other.service"];
    let mut w = start_with(
        &[],
        |cgroups| {
            for unit in units {
                cgroups.sub(&format!("{unit}/payload"));
                set_xattr(&cgroups.path.join(unit), "trusted.delegate", b"1");
                chown_tree(&cgroups.path.join(unit), NOBODY);
            }
        },
        &config,
    );
    w.wait_tagged("system.slice/ctr.service");
    assert_eq!(
        w.curl("system.slice/ctr.service/payload", NOBODY),
        "200",
        "{}",
        w.log()
    );
    assert_ne!(w.curl("system.slice/other.service/payload", NOBODY), "200");
    assert!(!w.tagged("system.slice/other.service"));
    assert!(!w.provider_saw_the_key() || w.mock.records().len() == 1);
}

/// Makes `count` cgroups named `leaf` below `base`, as uid `uid` or root.
fn many_cgroups(cgroups: &TestCgroup, base: &str, leaf: &str, count: usize, uid: Option<u32>) {
    let dir = cgroups.sub(base);
    let script = format!(
        "cd {} && i=0; while [ $i -lt {count} ]; do mkdir -p d$i/{leaf}; i=$((i+1)); done",
        dir.display()
    );
    let mut cmd = match uid {
        Some(uid) => {
            chown_tree(&dir, uid);
            let mut c = Command::new("/usr/bin/setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "/bin/sh",
            ]);
            c
        }
        None => Command::new("/bin/sh"),
    };
    let status = cmd.args(["-c", &script]).status().unwrap();
    assert!(status.success());
}

#[test]
fn an_unprivileged_user_cannot_fill_the_tagged_map() {
    if !prereq::require(NEEDS) {
        return;
    }
    let config = format!(
        "[[workload]]\nname = \"unit\"\nunit = \"agent.service\"\n\n{}",
        policy(&["unit"])
    );
    // More name-alikes than the map holds, in a subtree uid 65534 owns,
    // there when the daemon starts.
    let mut w = start_with(
        &["system.slice"],
        |cgroups| {
            many_cgroups(
                cgroups,
                "user.slice/nobody.slice",
                "agent.service",
                4100,
                Some(NOBODY),
            )
        },
        &config,
    );
    // An agent unit started afterwards is still tagged and served.
    w.cgroups.sub("system.slice/agent.service");
    w.wait_tagged("system.slice/agent.service");
    assert_eq!(
        w.curl("system.slice/agent.service", NOBODY),
        "200",
        "{}",
        w.log()
    );
    let tagging = &w.status()["tagging"];
    assert_eq!(tagging["healthy"], true, "{tagging}");
    assert_eq!(tagging["tagged"], 1, "{tagging}");
}

#[test]
fn a_failing_tagger_is_reported_and_retried() {
    if !prereq::require(NEEDS) {
        return;
    }
    let config = format!(
        "[[workload]]\nname = \"many\"\ncgroup = \"/many.slice/*/*.service\"\n\n\
         [[workload]]\nname = \"unit\"\nunit = \"agent.service\"\n\n{}",
        policy(&["many", "unit"])
    );
    let mut w = start(&["system.slice"], &config);
    // The operator's own glob names more cgroups than the map holds.
    many_cgroups(&w.cgroups, "many.slice", "x.service", 4100, None);
    wait_until(
        "the tagger to report failure",
        Duration::from_secs(60),
        || w.status()["tagging"]["healthy"] == false,
    );
    let status = w.status();
    let tagging = &status["tagging"];
    assert!(tagging["untagged"].as_u64().unwrap() > 0, "{tagging}");
    assert!(
        tagging["last_error"]
            .as_str()
            .unwrap()
            .contains("not tagged"),
        "{tagging}"
    );
    assert!(
        w.log().contains("ERROR"),
        "failures are logged at error level"
    );
    let metrics = w.metrics();
    assert!(metrics.contains("warrant_tagger_healthy 0"), "{metrics}");
    assert!(
        !metrics.contains("warrant_tagger_errors_total 0\n"),
        "{metrics}"
    );
    // Room again: the tagger recovers by itself, and tags what comes next.
    for i in 0..200 {
        let _ = fs::remove_dir(w.cgroups.path.join(format!("many.slice/d{i}/x.service")));
    }
    w.cgroups.sub("system.slice/agent.service");
    wait_until("the tagger to recover", Duration::from_secs(60), || {
        w.status()["tagging"]["healthy"] == true
    });
    w.wait_tagged("system.slice/agent.service");
    assert_eq!(w.curl("system.slice/agent.service", NOBODY), "200");
    assert!(w.metrics().contains("warrant_tagger_healthy 1"));
}

// ---------------------------------------------------------------------------
// 2. Passing for another program

const AGENT_PY: &str = r#"import http.client, os, ssl
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
c = http.client.HTTPSConnection("api.openai.com", 443, context=ctx, timeout=20)
c.request("GET", "/v1/models", headers={"Authorization": "Bearer placeholder"})
print("status", c.getresponse().status, flush=True)
"#;

const AGENT_JS: &str = r#"const https = require("https");
https.get("https://api.openai.com/v1/models", { headers: { Authorization: "Bearer placeholder" } }, (r) => {
  console.log("status", r.statusCode);
  process.exit(0);
}).on("error", (e) => { console.log("error", e.code); process.exit(0); });
"#;

const PYTHON: &str = "/usr/bin/python3";

/// The real interpreter behind /usr/bin/python3 (the file /proc/PID/exe
/// names).
fn python_exe() -> std::path::PathBuf {
    fs::canonicalize(PYTHON).unwrap()
}

/// A stack whose workloads "strict" (unit strict.service) pins python3 and
/// srv/agent.py, and "node" (unit node.service) pins node and srv/agent.js;
/// `extra` adds sections.
fn pinned_stack(files: &Files, extra: &str) -> Warrant {
    let agent_py = files.root_file("srv/agent.py", AGENT_PY);
    let agent_js = files.root_file("srv/agent.js", AGENT_JS);
    let config = format!(
        r#"
[[workload]]
name = "strict"
unit = "strict.service"
exe_sha256 = ["{py}"]
entrypoint_sha256 = ["{script}"]

[[workload]]
name = "node"
unit = "node.service"
exe_sha256 = ["{node}"]
entrypoint_sha256 = ["{js}"]

{extra}
{}"#,
        policy(&["strict", "node"]),
        py = sha256_file(&python_exe()),
        script = sha256_file(&agent_py),
        node = sha256_file(&fs::canonicalize("/usr/bin/node").unwrap()),
        js = sha256_file(&agent_js),
    );
    let w = start(
        &[
            "system.slice/strict.service",
            "system.slice/lenient.service",
            "system.slice/node.service",
        ],
        &config,
    );
    for unit in ["strict", "node"] {
        w.wait_tagged(&format!("system.slice/{unit}.service"));
    }
    w
}

/// Runs an agent and returns the status line it printed.
fn run(
    w: &mut Warrant,
    unit: &str,
    cwd: Option<&Path>,
    env: &[(&str, &str)],
    argv: &[&str],
) -> String {
    let mut agent = w.agent_in(
        &format!("system.slice/{unit}.service"),
        Some(NOBODY),
        cwd,
        env,
        argv,
    );
    agent.try_line().unwrap_or_default()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn argv_is_parsed_as_the_interpreter_parses_it() {
    if !prereq::require(NEEDS) {
        return;
    }
    let files = Files::new();
    let mut w = pinned_stack(&files, "");
    let agent_py = files.dir.path().join("srv/agent.py");
    let agent_js = files.dir.path().join("srv/agent.js");
    let work = files.writable_dir("w", NOBODY);
    let evil_py = files.writable_file("w/evil.py", &format!("# evil\n{AGENT_PY}"), NOBODY);
    let evil_js = files.writable_file("w/evil.js", &format!("// evil\n{AGENT_JS}"), NOBODY);
    // The pinned program itself gets through.
    assert_eq!(
        run(&mut w, "strict", None, &[], &[PYTHON, "-s", s(&agent_py)]),
        "status 200",
        "{}",
        w.log()
    );
    assert_eq!(
        run(&mut w, "node", None, &[], &["/usr/bin/node", s(&agent_js)]),
        "status 200",
        "{}",
        w.log()
    );
    let before = w.mock.records().len();
    // -W takes the empty argument: evil.py is the script that runs.
    assert_eq!(
        run(
            &mut w,
            "strict",
            None,
            &[],
            &[PYTHON, "-s", "-W", "", s(&evil_py), s(&agent_py)]
        ),
        "status 403"
    );
    // Options that load other code before the script.
    assert_eq!(
        run(
            &mut w,
            "node",
            None,
            &[],
            &["/usr/bin/node", "-r", s(&evil_js), s(&agent_js)]
        ),
        "status 403"
    );
    assert_eq!(
        run(
            &mut w,
            "node",
            None,
            &[],
            &["/usr/bin/node", "--require", s(&evil_js), s(&agent_js)]
        ),
        "status 403"
    );
    let _ = work;
    assert_eq!(
        w.mock.records().len(),
        before,
        "nothing reached the provider"
    );
}

#[test]
fn a_relative_script_is_not_resolved_against_a_later_working_directory() {
    if !prereq::require(NEEDS) {
        return;
    }
    let files = Files::new();
    let mut w = pinned_stack(&files, "");
    let srv = files.dir.path().join("srv");
    let work = files.writable_dir("w", NOBODY);
    // The attacker's agent.py: it leaves for the allowed directory, then
    // connects.
    let evil = format!("# evil\nimport os\nos.chdir({:?})\n{AGENT_PY}", s(&srv));
    files.writable_file("w/agent.py", &evil, NOBODY);
    let before = w.mock.records().len();
    assert_eq!(
        run(
            &mut w,
            "strict",
            Some(&work),
            &[],
            &[PYTHON, "-s", "agent.py"]
        ),
        "status 403"
    );
    // The same through -m, which Python resolves in the working directory.
    assert_eq!(
        run(
            &mut w,
            "strict",
            Some(&work),
            &[],
            &[PYTHON, "-s", "-m", "agent"]
        ),
        "status 403"
    );
    assert_eq!(w.mock.records().len(), before);
    assert!(!w.provider_saw_the_key());
}

#[test]
fn code_injecting_environment_is_refused_unless_allowed_by_name() {
    if !prereq::require(NEEDS) {
        return;
    }
    let files = Files::new();
    let mut w = pinned_stack(&files, "");
    let agent_py = files.dir.path().join("srv/agent.py");
    let agent_js = files.dir.path().join("srv/agent.js");
    let work = files.writable_dir("w", NOBODY);
    // Code that runs before the pinned script and makes the request itself.
    files.writable_file(
        "w/sitecustomize.py",
        &format!("# evil\n{AGENT_PY}\nimport os\nos._exit(0)\n"),
        NOBODY,
    );
    let evil_js = files.writable_file("w/evil.js", &format!("// evil\n{AGENT_JS}"), NOBODY);
    let before = w.mock.records().len();
    assert_eq!(
        run(
            &mut w,
            "strict",
            None,
            &[("PYTHONPATH", s(&work))],
            &[PYTHON, "-s", s(&agent_py)]
        ),
        "status 403"
    );
    let node_options = format!("--require {}", s(&evil_js));
    assert_eq!(
        run(
            &mut w,
            "node",
            None,
            &[("NODE_OPTIONS", &node_options)],
            &["/usr/bin/node", s(&agent_js)]
        ),
        "status 403"
    );
    assert_eq!(
        run(
            &mut w,
            "strict",
            None,
            &[("LD_PRELOAD", "/nonexistent.so")],
            &[PYTHON, "-s", s(&agent_py)]
        ),
        "status 403"
    );
    assert_eq!(w.mock.records().len(), before);
    assert!(!w.provider_saw_the_key());
}

#[test]
fn allow_env_accepts_a_variable_by_name() {
    if !prereq::require(NEEDS) {
        return;
    }
    let files = Files::new();
    let py = sha256_file(&python_exe());
    let script = sha256_file(&files.root_file("srv/agent.py", AGENT_PY));
    let lenient = format!(
        "[[workload]]\nname = \"lenient\"\nunit = \"lenient.service\"\n\
         exe_sha256 = [\"{py}\"]\nentrypoint_sha256 = [\"{script}\"]\n\
         allow_env = [\"PYTHONPATH\"]\n\n{}",
        policy(&["lenient"])
    );
    let mut w = pinned_stack(&files, &lenient);
    w.wait_tagged("system.slice/lenient.service");
    let agent_py = files.dir.path().join("srv/agent.py");
    let empty = files.writable_dir("empty", NOBODY);
    assert_eq!(
        run(
            &mut w,
            "lenient",
            None,
            &[("PYTHONPATH", s(&empty))],
            &[PYTHON, "-s", s(&agent_py)]
        ),
        "status 200",
        "{}",
        w.log()
    );
    // The same variable is still refused where it is not allowed.
    assert_eq!(
        run(
            &mut w,
            "strict",
            None,
            &[("PYTHONPATH", s(&empty))],
            &[PYTHON, "-s", s(&agent_py)]
        ),
        "status 403"
    );
}

#[test]
fn a_script_the_agent_can_rewrite_is_not_pinned() {
    if !prereq::require(NEEDS) {
        return;
    }
    let files = Files::new();
    let mut w = pinned_stack(&files, "");
    // At exec it is the attacker's; before connecting it rewrites itself
    // into the pinned content.
    let path = files.dir.path().join("w/agent.py");
    let evil = format!(
        "# evil\nopen({:?}, 'w').write({AGENT_PY:?})\n{AGENT_PY}",
        s(&path)
    );
    files.writable_file("w/agent.py", &evil, NOBODY);
    let before = w.mock.records().len();
    assert_eq!(
        run(&mut w, "strict", None, &[], &[PYTHON, "-s", s(&path)]),
        "status 403"
    );
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        AGENT_PY,
        "it did rewrite itself"
    );
    assert_eq!(w.mock.records().len(), before);
}

#[test]
fn exe_signers_refuse_a_nested_user_namespace() {
    if !prereq::require(NEEDS) {
        return;
    }
    let files = Files::new();
    let key = files.dir.path().join("signing-key");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let curl = files.dir.path().join("bin/curl");
    fs::create_dir_all(curl.parent().unwrap()).unwrap();
    fs::copy("/usr/bin/curl", &curl).unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", "warrant-exe", "-f"])
        .arg(&key)
        .arg(&curl)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = fs::read_to_string(key.with_extension("pub")).unwrap();
    let config = format!(
        "[[workload]]\nname = \"signed\"\nunit = \"signed.service\"\n\n\
         [[policy]]\nworkload = \"signed\"\n{POLICY_ALL}\nexe_signers = [{:?}]\n",
        public.trim()
    );
    let mut w = start(&["system.slice/signed.service"], &config);
    w.wait_tagged("system.slice/signed.service");
    let request = [
        "-sS",
        "--max-time",
        "20",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
        "-H",
        "Authorization: Bearer placeholder",
        "https://api.openai.com/v1/models",
    ];
    let mut direct = vec![s(&curl)];
    direct.extend(request);
    let mut agent = w.agent("system.slice/signed.service", Some(NOBODY), &[], &direct);
    assert_eq!(agent.try_line().unwrap_or_default(), "200", "{}", w.log());
    let before = w.mock.records().len();
    let mut nested = vec!["/usr/bin/unshare", "--user", "--map-root-user", s(&curl)];
    nested.extend(request);
    let mut agent = w.agent("system.slice/signed.service", Some(NOBODY), &[], &nested);
    assert_eq!(agent.try_line().unwrap_or_default(), "403");
    assert_eq!(w.mock.records().len(), before);
    assert!(w.log().contains("nested user namespace"), "{}", w.log());
}

/// Deletes every entry of the pinned exec-generation map, as 65,536 execs
/// in tagged cgroups would evict them from the LRU.
fn flush_exec_generations(w: &Warrant) {
    let path = w.pins.path.join("maps").join("WARRANT_EXEC_GEN");
    let data = aya::maps::MapData::from_pin(&path).unwrap();
    let mut map: aya::maps::HashMap<_, u32, u64> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).unwrap();
    let keys: Vec<u32> = map.keys().filter_map(Result::ok).collect();
    assert!(!keys.is_empty());
    for key in keys {
        let _ = map.remove(&key);
    }
}

const FLUSH_CLIENT: &str = r#"import socket, ssl, sys
print("execd", flush=True)
sys.stdin.readline()
ctx = ssl.create_default_context()
t = ctx.wrap_socket(socket.socket(fileno=3), server_hostname="api.openai.com")
t.sendall(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer placeholder\r\nConnection: close\r\n\r\n")
print("status", t.recv(64).split(b" ")[1].decode(), flush=True)
"#;

#[test]
fn a_flushed_exec_generation_never_reads_as_the_one_at_connect() {
    if !prereq::require(NEEDS) {
        return;
    }
    let config = format!(
        "[[workload]]\nname = \"python\"\nunit = \"flush.service\"\nexe_sha256 = [\"{}\"]\n\n{}",
        sha256_file(&python_exe()),
        policy(&["python"])
    );
    let mut w = start(&["system.slice/flush.service"], &config);
    w.wait_tagged("system.slice/flush.service");
    // A forked shell (no exec of its own, so no generation before this
    // change) connects, then execs the pinned interpreter, which uses the
    // connection.
    let script = format!(
        "( exec 3<>/dev/tcp/api.openai.com/443 && echo connected && read go && exec {PYTHON} -c '{}' ); echo parent",
        FLUSH_CLIENT.replace('\'', "'\\''")
    );
    let mut agent = w.agent(
        "system.slice/flush.service",
        Some(NOBODY),
        &[],
        &["/bin/bash", "-c", &script],
    );
    assert_eq!(agent.line(), "connected");
    agent.send("go");
    assert_eq!(agent.line(), "execd");
    flush_exec_generations(&w);
    agent.send("go");
    let status = agent.line();
    assert!(
        !w.provider_saw_the_key(),
        "the flushed record read as unchanged"
    );
    assert_ne!(status, "status 200");
    assert!(
        w.log().contains("no longer in the kernel's map"),
        "{}",
        w.log()
    );
}

/// Asks /v1/models twice on one keep-alive connection, doing `between`
/// (Python) in between; prints each status and the connection's local
/// port, so the test can tell that the second request reused the first's
/// connection (an attestation answered from memory is per connection).
const TWICE_ON_ONE_CONNECTION: &str = r#"import ctypes, http.client, os, sys
conn = http.client.HTTPSConnection("api.openai.com", timeout=20)
def ask():
    conn.request("GET", "/v1/models", headers={"Authorization": "Bearer placeholder"})
    r = conn.getresponse()
    r.read()
    return "status %d port %d" % (r.status, conn.sock.getsockname()[1])
print(ask(), flush=True)
BETWEEN
print(ask(), flush=True)
"#;

/// The workload "python": python3 in change.service, pinned by its hash.
fn python_stack() -> Warrant {
    let config = format!(
        "[[workload]]\nname = \"python\"\nunit = \"change.service\"\nexe_sha256 = [\"{}\"]\n\n{}",
        sha256_file(&python_exe()),
        policy(&["python"])
    );
    let w = start(&["system.slice/change.service"], &config);
    w.wait_tagged("system.slice/change.service");
    w
}

/// The two status lines of TWICE_ON_ONE_CONNECTION, with `between`; the
/// second request must have used the first one's connection.
fn twice(w: &mut Warrant, between: &str) -> (String, String) {
    let code = TWICE_ON_ONE_CONNECTION.replace("BETWEEN", between);
    let mut agent = w.agent(
        "system.slice/change.service",
        Some(NOBODY),
        &[],
        &[PYTHON, "-I", "-c", &code],
    );
    let first = agent.try_line().unwrap_or_default();
    let second = agent.try_line().unwrap_or_default();
    let port = |line: &str| line.split(" port ").nth(1).map(str::to_owned);
    assert!(port(&first).is_some(), "{first:?}\n{}", w.log());
    assert_eq!(port(&first), port(&second), "the connection was not reused");
    let status = |line: String| line.split(" port ").next().unwrap_or_default().to_owned();
    (status(first), status(second))
}

/// A process attested on a connection and then moved into a user namespace
/// of its own (where it could repoint /proc/PID/exe) is checked again on
/// its next request over that same connection: its program is no longer
/// believed. The attestation of that request is answered from memory only
/// while the kernel's counters show no change; new credentials move them.
#[test]
fn a_process_that_enters_a_user_namespace_after_connecting_is_refused_on_the_same_connection() {
    if !prereq::require(NEEDS) {
        return;
    }
    let mut w = python_stack();
    let (first, second) = twice(&mut w, "");
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("status 200", "status 200")
    );
    let unshare =
        "assert ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0, ctypes.get_errno()";
    let before = w.mock.records().len();
    let (first, second) = twice(&mut w, unshare);
    assert_eq!(first, "status 200", "{}", w.log());
    assert_eq!(second, "status 403", "{}", w.log());
    assert_eq!(w.mock.records().len(), before + 1);
    assert!(w.log().contains("nested user namespace"), "{}", w.log());
}

/// A connection outlives the process that made it (its child holds it):
/// the child's requests on it are refused, although the process it was
/// attested as was answered from memory a moment before.
#[test]
fn a_connection_left_to_a_child_by_a_process_that_exited_is_refused() {
    if !prereq::require(NEEDS) {
        return;
    }
    let mut w = python_stack();
    // The parent exits; the child waits for that (the pipe's last writer
    // goes with it), then asks on the inherited connection.
    let handover = "r, wr = os.pipe()\n\
                    if os.fork():\n    os._exit(0)\n\
                    os.close(wr)\n\
                    os.read(r, 1)";
    let before = w.mock.records().len();
    let (first, second) = twice(&mut w, handover);
    assert_eq!(first, "status 200", "{}", w.log());
    assert_eq!(second, "status 403", "{}", w.log());
    assert_eq!(w.mock.records().len(), before + 1);
    assert!(
        w.log().contains("no longer exists") || w.log().contains("pid was reused"),
        "{}",
        w.log()
    );
}

// ---------------------------------------------------------------------------
// 3. Egress through warrant

#[test]
fn a_passthrough_relay_obeys_the_agents_cgroup_egress_filter() {
    if !prereq::require(NEEDS) {
        return;
    }
    relay_obeys_the_egress_filter(31, &[]);
}

/// The same where clone3 is refused (as under the shipped unit): the
/// socket's child moves itself into the agent's cgroup through
/// cgroup.procs.
#[test]
fn a_relay_made_without_clone3_obeys_the_egress_filter_too() {
    if !prereq::require(NEEDS) {
        return;
    }
    relay_obeys_the_egress_filter(32, &[("WARRANT_TEST_LEGACY_CLONE", "1")]);
}

fn relay_obeys_the_egress_filter(subnet: u8, daemon_env: &[(&str, &str)]) {
    let ns_ip = format!("198.18.{subnet}.2");
    let (tls_url, direct_url) = (format!("https://{ns_ip}/"), format!("http://{ns_ip}:8080/"));
    let netns = TestNetns::new(&format!("198.18.{subnet}.1/24"), &format!("{ns_ip}/24"));
    let mut server = netns.server(&[443, 8080]);
    let config = format!(
        "[proxy]\nupstream_connect_timeout_secs = 2\n\n\
         [[workload]]\nname = \"agents\"\nslice = \"warrant-agents.slice\"\n\n{}",
        policy(&["agents"])
    );
    let agent = "warrant.slice/warrant-agents.slice/agent.service";
    let mut w = Warrant::start(&bin(), &[agent], |_| {}, &config, daemon_env);
    w.wait_tagged("warrant.slice/warrant-agents.slice");
    let passthrough = [
        "/usr/bin/curl",
        "-sk",
        "--max-time",
        "15",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
        &tls_url,
    ];
    // Without a filter the relay reaches the destination (an IP literal,
    // no SNI: passed through untouched).
    w.agent(agent, Some(NOBODY), &[], &passthrough).try_line();
    assert_eq!(server.connections_so_far(8080), ["tls 443"], "{}", w.log());

    // The unit's egress is now loopback only, as IPAddressDeny=any does.
    let _filter = EgressFilter::loopback_only(&w.cgroups.path.join(agent));
    let mut direct = w.agent(
        agent,
        Some(NOBODY),
        &[],
        &[
            "/usr/bin/curl",
            "-s",
            "--max-time",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
            &direct_url,
        ],
    );
    assert_eq!(
        direct.try_line().unwrap_or_default(),
        "000",
        "the filter drops the agent's own traffic"
    );
    w.agent(agent, Some(NOBODY), &[], &passthrough).try_line();
    assert_eq!(
        server.connections_so_far(8080),
        Vec::<String>::new(),
        "warrant relayed past the agent's egress filter; log:\n{}",
        w.log()
    );
}

#[test]
fn a_relay_to_a_link_local_address_is_refused() {
    if !prereq::require(NEEDS) {
        return;
    }
    let netns = TestNetns::new("169.254.77.1/24", "169.254.77.2/24");
    let mut server = netns.server(&[80, 443, 8080]);
    let config = format!(
        "[intercept]\nports = [443, 80]\n\n[proxy]\nupstream_connect_timeout_secs = 2\n\n\
         [[workload]]\nname = \"agents\"\nslice = \"warrant-agents.slice\"\n\n{}",
        policy(&["agents"])
    );
    let agent = "warrant.slice/warrant-agents.slice/agent.service";
    let mut w = start(&[agent], &config);
    w.wait_tagged("warrant.slice/warrant-agents.slice");
    let mut plain = w.agent(
        agent,
        Some(NOBODY),
        &[],
        &[
            "/usr/bin/curl",
            "-s",
            "--max-time",
            "15",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
            "http://169.254.77.2/latest/meta-data/",
        ],
    );
    let status = plain.try_line().unwrap_or_default();
    let mut tls = w.agent(
        agent,
        Some(NOBODY),
        &[],
        &[
            "/usr/bin/curl",
            "-sk",
            "--max-time",
            "15",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}\n",
            "https://169.254.77.2/",
        ],
    );
    tls.try_line();
    assert_eq!(
        server.connections_so_far(8080),
        Vec::<String>::new(),
        "warrant relayed to a link-local address; log:\n{}",
        w.log()
    );
    assert_eq!(status, "403");
}
