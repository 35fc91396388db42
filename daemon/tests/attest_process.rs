//! Process attestation against real processes this test spawns (and only
//! those): entrypoints, hashes through /proc/PID/exe, exec and pid-reuse
//! races. Interpreters are stood in for by a copy of /bin/sh under the
//! interpreter's name, running a shell script in the place of the program:
//! argv, cwd and the executable's name are what attestation reads, and the
//! child blocks reading stdin until the guard kills it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
};

use warrant::{
    attest::{
        AttestError, Attestor, ExecGenerations, InstanceHandle, MemoryExecGenerations, Target,
        UserNamespace, process,
    },
    config::AttestConfig,
    origin::Origin,
};
use warrant_test_support::prereq::{self, Need};

/// A spawned child, killed and reaped on drop (also on panic).
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Spawned {
    fn tgid(&self) -> u32 {
        self.0.id()
    }
}

/// A temp dir with `bin/<name>`: a copy of /bin/sh under an interpreter's
/// name.
fn interpreter(dir: &Path, name: &str) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let path = bin.join(name);
    std::fs::copy("/bin/dash", &path)
        .or_else(|_| std::fs::copy("/bin/sh", &path))
        .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Writes a script that says it runs, then blocks until its stdin closes.
fn blocking_script(path: &Path) -> Vec<u8> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let body = format!("# {}\necho ready\nread line\n", path.display()).into_bytes();
    std::fs::write(path, &body).unwrap();
    body
}

/// Spawns and waits until the child prints "ready": spawn() may return
/// while the kernel is still setting up the new program (argv is empty then),
/// so the child's own word is the readiness signal.
fn spawn(program: &Path, args: &[&str], cwd: &Path) -> Spawned {
    spawn_with(program, args, cwd, |_| {})
}

/// [`spawn`], with `configure` applied to the command first.
fn spawn_with(
    program: &Path,
    args: &[&str],
    cwd: &Path,
    configure: impl FnOnce(&mut Command),
) -> Spawned {
    let mut cmd = Command::new(program);
    configure(&mut cmd);
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Spawned(spawn_fresh(&mut cmd));
    wait_ready(&mut child);
    child
}

/// Spawns a program this test process has just written. Another test thread
/// may fork while our write descriptor is still open; the forked child holds
/// it until it execs, and exec of the file then fails with ETXTBSY for a
/// moment. Retry that case alone, a bounded number of times.
fn spawn_fresh(cmd: &mut Command) -> std::process::Child {
    for _ in 0..200 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(2))
            }
            other => return other.unwrap(),
        }
    }
    panic!("{cmd:?} stayed busy (ETXTBSY)");
}

fn wait_ready(child: &mut Spawned) {
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn attestor(generations: Arc<dyn ExecGenerations>) -> Attestor {
    Attestor::new(
        &AttestConfig::default(),
        generations,
        InstanceHandle::default(),
    )
}

/// The Origin the connect program would record for `tgid` connecting now.
fn origin_now(attestor: &Attestor, tgid: u32) -> Origin {
    let cgroup = process::cgroup_v2_path(tgid).unwrap();
    Origin {
        original_dst: "127.0.0.1:443".parse().unwrap(),
        pid: tgid,
        tgid,
        uid: 0,
        gid: 0,
        cgroup_id: attestor.cgroups().id_of(&cgroup).unwrap_or(0),
        exec_gen: attestor.generations().current(tgid).unwrap_or(0),
        connect_boot_ns: process::boot_time_ns(),
    }
}

#[test]
fn python_script_entrypoint_is_resolved_against_the_cwd_and_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let python = interpreter(dir.path(), "python3");
    let work = dir.path().join("srv");
    let body = blocking_script(&work.join("agent.py"));
    let child = spawn(&python, &["-u", "agent.py"], &work);
    let attestor = attestor(Arc::new(MemoryExecGenerations::default()));

    let att = attestor
        .attest(&origin_now(&attestor, child.tgid()))
        .unwrap();

    assert_eq!(att.exe, python);
    assert_eq!(
        att.exe_hash.hex(),
        Some(sha256(&std::fs::read(&python).unwrap()).as_str())
    );
    let ep = att.entrypoint.unwrap();
    assert_eq!(ep.target, Target::Script("agent.py".into()));
    assert_eq!(ep.path.as_deref(), Some(work.join("agent.py").as_path()));
    assert_eq!(ep.hash.hex(), Some(sha256(&body).as_str()));
    assert_eq!(
        att.cgroup,
        Some(process::cgroup_v2_path(child.tgid()).unwrap())
    );
}

#[test]
fn python_dash_m_resolves_packages_and_modules_in_the_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let python = interpreter(dir.path(), "python3.12");
    let work = dir.path().join("srv");
    // The stand-in shell runs the file named like the module; the resolver
    // must find the Python files instead.
    blocking_script(&work.join("app.agent"));
    let package_main = blocking_script(&work.join("app/agent/__main__.py"));
    blocking_script(&work.join("tool"));
    let module = blocking_script(&work.join("tool.py"));
    let attestor = attestor(Arc::new(MemoryExecGenerations::default()));

    let child = spawn(&python, &["-m", "app.agent"], &work);
    let ep = attestor
        .attest(&origin_now(&attestor, child.tgid()))
        .unwrap()
        .entrypoint
        .unwrap();
    assert_eq!(ep.target, Target::Module("app.agent".into()));
    assert_eq!(ep.path, Some(work.join("app/agent/__main__.py")));
    assert_eq!(ep.hash.hex(), Some(sha256(&package_main).as_str()));

    let child = spawn(&python, &["-m", "tool"], &work);
    let ep = attestor
        .attest(&origin_now(&attestor, child.tgid()))
        .unwrap()
        .entrypoint
        .unwrap();
    assert_eq!(ep.path, Some(work.join("tool.py")), "{ep:?}");
    assert_eq!(ep.hash.hex(), Some(sha256(&module).as_str()));
}

#[test]
fn node_entrypoint_is_the_script_under_dist() {
    let dir = tempfile::tempdir().unwrap();
    let node = interpreter(dir.path(), "node");
    let work = dir.path().join("app");
    let body = blocking_script(&work.join("dist/index.js"));
    let child = spawn(&node, &["dist/index.js", "30"], &work);
    let attestor = attestor(Arc::new(MemoryExecGenerations::default()));

    let ep = attestor
        .attest(&origin_now(&attestor, child.tgid()))
        .unwrap()
        .entrypoint
        .unwrap();
    assert_eq!(ep.target, Target::Script("dist/index.js".into()));
    assert_eq!(ep.path, Some(work.join("dist/index.js")));
    assert_eq!(ep.hash.hex(), Some(sha256(&body).as_str()));
}

#[test]
fn shebang_script_run_directly_is_the_entrypoint() {
    let dir = tempfile::tempdir().unwrap();
    let python = interpreter(dir.path(), "python3");
    let work = dir.path().join("srv");
    std::fs::create_dir_all(&work).unwrap();
    let script = work.join("agent");
    let body = format!("#!{} -u\necho ready\nread line\n", python.display());
    std::fs::write(&script, &body).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The kernel runs `python3 -u ./agent`.
    let child = spawn(Path::new("./agent"), &[], &work);
    let attestor = attestor(Arc::new(MemoryExecGenerations::default()));

    let att = attestor
        .attest(&origin_now(&attestor, child.tgid()))
        .unwrap();
    assert_eq!(att.exe, python);
    let ep = att.entrypoint.unwrap();
    assert_eq!(ep.path, Some(script));
    assert_eq!(ep.hash.hex(), Some(sha256(body.as_bytes()).as_str()));
}

#[test]
fn a_non_interpreter_has_no_entrypoint_and_later_connections_reuse_the_process_image() {
    let dir = tempfile::tempdir().unwrap();
    let agent = interpreter(dir.path(), "agent-bin");
    blocking_script(&dir.path().join("x"));
    let child = spawn(&agent, &["x"], dir.path());
    let attestor = attestor(Arc::new(MemoryExecGenerations::default()));
    let origin = origin_now(&attestor, child.tgid());

    let first = attestor.attest(&origin).unwrap();
    assert!(first.entrypoint.is_none());
    let second = attestor.attest(&origin).unwrap();
    assert_eq!(second.exe_hash, first.exe_hash);
    assert_eq!(attestor.image_stats().hits, 1);

    // A new process image of the same binary hashes nothing again.
    attestor.forget_processes();
    let misses = attestor.hashes().stats().misses;
    let third = attestor.attest(&origin).unwrap();
    assert_eq!(third.exe_hash, first.exe_hash);
    assert_eq!(attestor.hashes().stats().misses, misses);
    assert!(attestor.hashes().stats().hits >= 1);
}

#[test]
fn a_binary_replaced_on_disk_is_attested_as_the_program_running() {
    let dir = tempfile::tempdir().unwrap();
    let agent = interpreter(dir.path(), "agent-bin");
    let original = std::fs::read(&agent).unwrap();
    blocking_script(&dir.path().join("x"));
    let child = spawn(&agent, &["x"], dir.path());
    // An upgrade renames a new file over the old one.
    let staged = dir.path().join("bin/agent-bin.new");
    std::fs::write(&staged, b"#!/bin/sh\necho new\n").unwrap();
    std::fs::rename(&staged, &agent).unwrap();
    let attestor = attestor(Arc::new(MemoryExecGenerations::default()));

    let att = attestor
        .attest(&origin_now(&attestor, child.tgid()))
        .unwrap();
    assert_eq!(att.exe_hash.hex(), Some(sha256(&original).as_str()));
    assert!(att.exe.to_string_lossy().ends_with(" (deleted)"));
}

#[test]
fn the_size_limit_leaves_the_hash_absent() {
    let dir = tempfile::tempdir().unwrap();
    let agent = interpreter(dir.path(), "agent-bin");
    blocking_script(&dir.path().join("x"));
    let child = spawn(&agent, &["x"], dir.path());
    let config = AttestConfig {
        max_hash_bytes: 1024,
    };
    let attestor = Attestor::new(
        &config,
        Arc::new(MemoryExecGenerations::default()),
        InstanceHandle::default(),
    );
    let att = attestor
        .attest(&origin_now(&attestor, child.tgid()))
        .unwrap();
    assert!(att.exe_hash.hex().is_none());
    assert!(
        att.exe_hash
            .describe()
            .contains("exceeds the limit of 1024 bytes")
    );
}

#[test]
fn connect_then_exec_is_refused_when_the_generation_moves() {
    let dir = tempfile::tempdir().unwrap();
    let agent = interpreter(dir.path(), "agent-bin");
    blocking_script(&dir.path().join("x"));
    let child = spawn(&agent, &["x"], dir.path());
    let generations = Arc::new(MemoryExecGenerations::default());
    let attestor = attestor(generations.clone());
    let origin = origin_now(&attestor, child.tgid());
    attestor.attest(&origin).unwrap();

    // What the eBPF exec programs record on an exec.
    generations.set(child.tgid(), process::boot_time_ns());

    match attestor.attest(&origin) {
        Err(AttestError::ExecedSinceConnect { at_connect: 0, .. }) => {}
        other => panic!("expected ExecedSinceConnect, got {other:?}"),
    }
}

#[test]
fn a_prctl_set_mm_in_the_cgroup_refuses_its_processes_cached_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let agent = interpreter(dir.path(), "agent-bin");
    blocking_script(&dir.path().join("x"));
    let child = spawn(&agent, &["x"], dir.path());
    let generations = Arc::new(MemoryExecGenerations::default());
    let attestor = attestor(generations.clone());
    let origin = origin_now(&attestor, child.tgid());
    attestor.attest(&origin).unwrap();

    // What the eBPF prctl watch records when a task of that cgroup (the
    // agent, or a CLONE_VM child acting for it) calls prctl(PR_SET_MM).
    generations.set_mm_tampered(origin.cgroup_id, process::boot_time_ns());

    // The image is cached, and still refused; so is a fresh attestation.
    for _ in 0..2 {
        match attestor.attest(&origin) {
            Err(AttestError::MmTampered { cgroup_id, .. }) if cgroup_id == origin.cgroup_id => {}
            other => panic!("expected MmTampered, got {other:?}"),
        }
        attestor.forget_processes();
    }
    // Another cgroup is not affected.
    let elsewhere = Arc::new(MemoryExecGenerations::default());
    elsewhere.set_mm_tampered(origin.cgroup_id.wrapping_add(1), 1);
    let unaffected = self::attestor(elsewhere);
    unaffected
        .attest(&origin_now(&unaffected, child.tgid()))
        .unwrap();
}

/// Exec generations derived from the identity of /proc/PID/exe: generation
/// 1 once the process runs another file than at the start. Stands in for
/// the eBPF exec programs so that a real exec can be observed without
/// privileges.
struct ExeIdentityGenerations {
    tgid: u32,
    at_start: (u64, u64),
}

fn exe_identity(tgid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!("/proc/{tgid}/exe")).ok()?;
    Some((meta.dev(), meta.ino()))
}

impl ExecGenerations for ExeIdentityGenerations {
    fn current(&self, tgid: u32) -> Option<u64> {
        if tgid != self.tgid {
            return None;
        }
        Some(u64::from(exe_identity(tgid) != Some(self.at_start)))
    }
}

/// Generations whose records were all evicted, as 65,536 execs in tagged
/// cgroups would leave the eBPF LRU map.
struct Evicted;

impl ExecGenerations for Evicted {
    fn current(&self, _tgid: u32) -> Option<u64> {
        None
    }
}

#[test]
fn a_lost_generation_record_is_refused_never_read_as_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let agent = interpreter(dir.path(), "agent-bin");
    blocking_script(&dir.path().join("x"));
    let child = spawn(&agent, &["x"], dir.path());
    let attestor = attestor(Arc::new(Evicted));
    for exec_gen in [0, 12345] {
        let mut origin = origin_now(&attestor, child.tgid());
        origin.exec_gen = exec_gen;
        match attestor.attest(&origin) {
            Err(AttestError::GenerationLost { at_connect, .. }) => assert_eq!(at_connect, exec_gen),
            other => panic!("expected GenerationLost, got {other:?}"),
        }
    }
    // `warrant explain` reads a live process, which may never have had a
    // record: none there is generation 0.
    let origin = origin_now(&attestor, child.tgid());
    assert_eq!(attestor.attest_live(&origin).unwrap().exe, agent);
}

#[test]
fn a_child_that_really_execs_after_connect_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = interpreter(dir.path(), "agent-bin");
    let second = interpreter(dir.path(), "other-bin");
    let mut child = Spawned(spawn_fresh(
        Command::new(&first)
            .args([
                "-c",
                &format!(
                    "echo ready; read line; exec {} -c 'echo ready; read line'",
                    second.display()
                ),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    ));
    wait_ready(&mut child);
    let tgid = child.tgid();
    let generations = Arc::new(ExeIdentityGenerations {
        tgid,
        at_start: exe_identity(tgid).unwrap(),
    });
    let attestor = attestor(generations);
    let origin = origin_now(&attestor, tgid);
    assert_eq!(attestor.attest(&origin).unwrap().exe, first);

    // Let it exec, and wait until the new program says it runs.
    child.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    wait_ready(&mut child);

    match attestor.attest(&origin) {
        Err(AttestError::ExecedSinceConnect { tgid: t, .. }) if t == tgid => {}
        other => panic!("expected ExecedSinceConnect, got {other:?}"),
    }
}

#[test]
fn a_process_started_after_the_connect_is_a_reused_pid() {
    let dir = tempfile::tempdir().unwrap();
    let agent = interpreter(dir.path(), "agent-bin");
    blocking_script(&dir.path().join("x"));
    let child = spawn(&agent, &["x"], dir.path());
    let attestor = attestor(Arc::new(MemoryExecGenerations::default()));
    let start_ns =
        process::start_ticks(child.tgid()).unwrap() * 1_000_000_000 / process::ticks_per_second();
    let mut origin = origin_now(&attestor, child.tgid());
    // The connect happened a second before this process existed.
    origin.connect_boot_ns = start_ns - 1_000_000_000;

    match attestor.attest(&origin) {
        Err(AttestError::PidReused { started_ns, .. }) => assert_eq!(started_ns, start_ns),
        other => panic!("expected PidReused, got {other:?}"),
    }
}

#[test]
fn a_process_that_is_gone_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let agent = interpreter(dir.path(), "agent-bin");
    blocking_script(&dir.path().join("x"));
    let mut child = spawn(&agent, &["x"], dir.path());
    let attestor = attestor(Arc::new(MemoryExecGenerations::default()));
    let origin = origin_now(&attestor, child.tgid());
    child.0.kill().unwrap();
    child.0.wait().unwrap();

    match attestor.attest(&origin) {
        Err(AttestError::ProcessGone { .. }) => {}
        // The pid may have been reused already by an unrelated process: then
        // its start time gives it away.
        Err(AttestError::PidReused { .. }) => {}
        other => panic!("expected ProcessGone, got {other:?}"),
    }
}

#[test]
fn explain_attests_a_live_process_and_matches_its_workload() {
    let dir = tempfile::tempdir().unwrap();
    let node = interpreter(dir.path(), "node");
    let work = dir.path().join("app");
    let body = blocking_script(&work.join("dist/index.js"));
    let child = spawn(&node, &["dist/index.js"], &work);
    let attestor = attestor(Arc::new(MemoryExecGenerations::default()));
    let config = format!(
        "[[workload]]\nname = \"node-agent\"\nexe = \"{}\"\nentrypoint_sha256 = [\"{}\"]\n\n\
         [[workload]]\nname = \"other\"\nuid = 4294967294\n",
        node.display(),
        sha256(&body)
    );
    let config = warrant::config::Config::parse(&config, "test").unwrap();
    let matcher =
        warrant::attest::WorkloadMatcher::compile(&config.workloads, &config.source).unwrap();

    let text = warrant::attest::explain::explain_pid(child.tgid(), &attestor, &matcher).unwrap();

    assert!(
        text.contains(&format!("process {}", child.tgid())),
        "{text}"
    );
    assert!(
        text.contains(&work.join("dist/index.js").display().to_string()),
        "{text}"
    );
    // The hashes match, but this test wrote both files as the user the
    // child runs as (or as root): it could have rewritten them, so nothing
    // is pinned, and explain says why (first among the reasons, under
    // cargo, comes the LD_LIBRARY_PATH it sets for test binaries).
    assert!(text.contains("no match"), "{text}");
    assert!(text.contains("FAIL exe "), "{text}");
    assert!(text.contains("         refused: "), "{text}");
    assert!(text.contains("  exe writer  "), "{text}");
    assert!(text.contains("FAIL uid"), "{text}");
}

#[test]
fn a_cached_process_that_exited_is_not_served_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let agent = interpreter(dir.path(), "agent-bin");
    blocking_script(&dir.path().join("x"));
    let mut child = spawn(&agent, &["x"], dir.path());
    let attestor = attestor(Arc::new(MemoryExecGenerations::default()));
    let origin = origin_now(&attestor, child.tgid());
    attestor.attest(&origin).unwrap();
    child.0.kill().unwrap();
    child.0.wait().unwrap();

    match attestor.attest(&origin) {
        Err(AttestError::ProcessGone { .. }) | Err(AttestError::PidReused { .. }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(attestor.image_stats().hits, 0);
}

#[test]
fn a_cached_process_still_refuses_a_connect_from_before_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let agent = interpreter(dir.path(), "agent-bin");
    blocking_script(&dir.path().join("x"));
    let child = spawn(&agent, &["x"], dir.path());
    let attestor = attestor(Arc::new(MemoryExecGenerations::default()));
    let mut origin = origin_now(&attestor, child.tgid());
    attestor.attest(&origin).unwrap();
    // A late Origin from the previous holder of this pid.
    origin.connect_boot_ns = 1;
    assert!(matches!(
        attestor.attest(&origin),
        Err(AttestError::PidReused { .. })
    ));
}

#[test]
fn scripts_named_in_argv_must_be_regular_files_the_process_can_read() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let agent = interpreter(dir.path(), "agent-bin");
    blocking_script(&dir.path().join("x"));
    let child = spawn(&agent, &["x"], dir.path());
    let creds = process::FsCreds::of(child.tgid()).unwrap();

    // A FIFO would block a reader, a device could act on being opened:
    // neither is opened for reading, and the call returns at once.
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    for path in [Path::new("fifo"), Path::new("/dev/null")] {
        let err = process::open_script_in_process(child.tgid(), path, &creds).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
    assert!(process::open_script_in_process(child.tgid(), Path::new("x"), &creds).is_ok());

    // Permission bits are checked against the process's credentials.
    let secret = dir.path().join("secret.py");
    std::fs::write(&secret, "x").unwrap();
    let meta = |mode| {
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::metadata(&secret).unwrap()
    };
    let owner = std::fs::metadata(&secret).unwrap().uid();
    let group = std::fs::metadata(&secret).unwrap().gid();
    let stranger = process::FsCreds {
        uid: owner.wrapping_add(1).max(1),
        gid: group.wrapping_add(1),
        groups: vec![],
    };
    assert!(!stranger.can_read(&meta(0o600)));
    assert!(stranger.can_read(&meta(0o604)));
    let member = process::FsCreds {
        groups: vec![group],
        ..stranger.clone()
    };
    assert!(member.can_read(&meta(0o640)));
    assert!(!member.can_read(&meta(0o600)));
}

#[tokio::test]
async fn async_attestation_answers_known_processes_inline() {
    let dir = tempfile::tempdir().unwrap();
    let agent = interpreter(dir.path(), "agent-bin");
    blocking_script(&dir.path().join("x"));
    let child = spawn(&agent, &["x"], dir.path());
    let attestor = Arc::new(attestor(Arc::new(MemoryExecGenerations::default())));
    let origin = origin_now(&attestor, child.tgid());

    let first = attestor.attest_async(origin).await.unwrap();
    let second = attestor.attest_async(origin).await.unwrap();
    assert_eq!(first.exe, agent);
    assert_eq!(second.exe_hash, first.exe_hash);
    assert_eq!(second.cgroup, first.cgroup);
    assert_eq!(attestor.image_stats().misses, 1);
    assert_eq!(attestor.image_stats().hits, 1);
}

/// The inode of the user namespace of `tgid`, as /proc/PID/ns/user names it.
fn user_ns_inode(tgid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{tgid}/ns/user"))
        .unwrap()
        .ino()
}

#[test]
fn a_process_in_a_new_user_namespace_is_attested_as_nested_and_others_as_host() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let agent = interpreter(dir.path(), "agent-bin");
    blocking_script(&dir.path().join("x"));
    let attestor = attestor(Arc::new(MemoryExecGenerations::default()));

    let plain = spawn(&agent, &["x"], dir.path());
    let att = attestor
        .attest(&origin_now(&attestor, plain.tgid()))
        .unwrap();
    assert_eq!(att.user_namespace, UserNamespace::Host);

    // unshare(CLONE_NEWUSER) in the forked child before it execs the agent:
    // "ready" then comes from inside the new namespace. Root, or any user
    // where unprivileged user namespaces are enabled, may do this.
    let nested = spawn_with(&agent, &["x"], dir.path(), |cmd| {
        // Safety: the closure runs between fork and exec and makes one
        // system call; it allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
                    .map_err(std::io::Error::from)
            });
        }
    });
    let inode = user_ns_inode(nested.tgid());
    assert_ne!(inode, user_ns_inode(std::process::id()));
    let origin = origin_now(&attestor, nested.tgid());
    let att = attestor.attest(&origin).unwrap();
    assert_eq!(att.user_namespace, UserNamespace::Nested { inode });
    assert_eq!(att.exe, agent);
    // The cached image does not carry the namespace: it is read again.
    let again = attestor.attest(&origin).unwrap();
    assert_eq!(again.user_namespace, UserNamespace::Nested { inode });
    assert_eq!(attestor.image_stats().hits, 1);
}

/// A forked child of this test, killed and reaped on drop.
struct Forked(nix::unistd::Pid);

impl Drop for Forked {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.0, None);
    }
}

#[test]
fn a_process_that_enters_a_user_namespace_after_its_first_attestation_is_then_nested() {
    use std::os::fd::AsRawFd;
    let (go_read, go_write) = nix::unistd::pipe().unwrap();
    let (done_read, done_write) = nix::unistd::pipe().unwrap();
    // Safety: the child makes only raw system calls (read, unshare, write,
    // _exit) before it exits: a child forked from this multi-threaded test
    // must not allocate or take locks.
    let child = match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => unsafe {
            // Close every inherited descriptor but our two pipe ends at once:
            // a write descriptor of another test's freshly written program
            // held here would make its exec fail with ETXTBSY.
            let (go, done) = (go_read.as_raw_fd(), done_write.as_raw_fd());
            let (low, high) = (go.min(done) as libc::c_uint, go.max(done) as libc::c_uint);
            for (first, last) in [
                (3, low - 1),
                (low + 1, high - 1),
                (high + 1, libc::c_uint::MAX),
            ] {
                if first <= last {
                    libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint);
                }
            }
            let mut byte = 0u8;
            libc::read(go_read.as_raw_fd(), (&raw mut byte).cast(), 1);
            let answer: u8 = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                b'1'
            } else {
                b'0'
            };
            libc::write(done_write.as_raw_fd(), (&raw const answer).cast(), 1);
            // Block until the test kills us.
            libc::read(go_read.as_raw_fd(), (&raw mut byte).cast(), 1);
            libc::_exit(0)
        },
        nix::unistd::ForkResult::Parent { child } => Forked(child),
    };
    drop(done_write);
    let tgid = child.0.as_raw() as u32;
    // The child is this test binary, which is large in a debug build: skip
    // hashing it, which is beside the point here.
    let attestor = Attestor::new(
        &AttestConfig { max_hash_bytes: 1 },
        Arc::new(MemoryExecGenerations::default()),
        InstanceHandle::default(),
    );
    let origin = origin_now(&attestor, tgid);
    assert_eq!(
        attestor.attest(&origin).unwrap().user_namespace,
        UserNamespace::Host
    );

    nix::unistd::write(&go_write, b"g").unwrap();
    let mut answer = [0u8; 1];
    assert_eq!(
        nix::unistd::read(done_read.as_raw_fd(), &mut answer).unwrap(),
        1
    );
    assert_eq!(&answer, b"1", "unshare(CLONE_NEWUSER) failed in the child");

    let att = attestor.attest(&origin).unwrap();
    assert_eq!(
        att.user_namespace,
        UserNamespace::Nested {
            inode: user_ns_inode(tgid)
        }
    );
    // Served from the image cache, yet the namespace is the current one.
    assert_eq!(attestor.image_stats().hits, 1);
}

#[test]
fn our_own_cgroup_resolves_from_its_id_and_by_walking_the_tree() {
    use warrant::attest::{cgroup::CgroupResolver, process::cgroup_v2_path};
    if !prereq::require(&[Need::Cgroup2]) {
        return;
    }
    let mount = warrant::mounts::cgroup2().unwrap();
    let resolver = CgroupResolver::new(Some(mount.clone()));
    let me = std::process::id();
    let path = cgroup_v2_path(me).unwrap();
    let id = resolver.id_of(&path).unwrap();
    assert_eq!(resolver.path_of(id, me), Some(path.clone()));
    // A hint that names no process: the resolver walks the tree.
    let walker = CgroupResolver::new(Some(mount));
    assert_eq!(walker.path_of(id, u32::MAX), Some(path));
}

/// Runs `program args` as uid/gid 65534 (root only: the test sets the
/// uid), with PYTHONNOUSERSITE=1 when `no_user_site` (the stand-in shell
/// would take python's -s for "read stdin").
fn spawn_as_nobody(program: &Path, args: &[&str], cwd: &Path, no_user_site: bool) -> Spawned {
    use std::os::unix::process::CommandExt;
    spawn_with(program, args, cwd, |cmd| {
        cmd.uid(65534).gid(65534).env_clear();
        if no_user_site {
            cmd.env("PYTHONNOUSERSITE", "1");
        }
    })
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

#[test]
fn an_entrypoint_the_process_could_rewrite_pins_nothing() {
    // Root: the test runs the child as another uid.
    if !prereq::require(&[Need::Root]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let python = interpreter(dir.path(), "python3");
    let attestor = attestor(Arc::new(MemoryExecGenerations::default()));
    let refused = |script: &Path, no_user_site: bool| {
        let child = spawn_as_nobody(
            &python,
            &[script.to_str().unwrap()],
            dir.path(),
            no_user_site,
        );
        let att = attestor
            .attest(&origin_now(&attestor, child.tgid()))
            .unwrap();
        assert_eq!(att.exe_writable, None, "the interpreter is root's");
        att.entrypoint.unwrap().refused
    };
    // Root's file in root's directories: pinned (with the user site off).
    let srv = dir.path().join("srv/agent.py");
    blocking_script(&srv);
    assert_eq!(refused(&srv, true), None);
    // With it on, Python's user site could run code first.
    assert!(refused(&srv, false).unwrap().contains("-s or -I"));
    // The agent owns the file.
    let own = dir.path().join("own/agent.py");
    blocking_script(&own);
    chown(&own, 65534);
    let why = refused(&own, true).unwrap();
    assert!(why.contains("agent.py is writable by the process"), "{why}");
    // The agent owns a directory on the way: it can replace the entry.
    let in_writable = dir.path().join("w/sub/agent.py");
    blocking_script(&in_writable);
    chown(&dir.path().join("w"), 65534);
    let why = refused(&in_writable, true).unwrap();
    assert!(
        why.contains("directory") && why.contains("/w is writable"),
        "{why}"
    );
    // A root-owned symlink into a directory the agent owns.
    let link = dir.path().join("srv/link.py");
    std::os::unix::fs::symlink(&in_writable, &link).unwrap();
    let why = refused(&link, true).unwrap();
    assert!(why.contains("/w is writable"), "{why}");
    // A relative path is refused whatever the file.
    let child = spawn_as_nobody(&python, &["srv/agent.py"], dir.path(), true);
    let att = attestor
        .attest(&origin_now(&attestor, child.tgid()))
        .unwrap();
    let ep = att.entrypoint.unwrap();
    assert!(ep.refused.unwrap().contains("relative path"));
    assert!(ep.hash.hex().is_some(), "still hashed, for the record");
}

#[test]
fn code_injecting_variables_are_attested_by_name_only() {
    let dir = tempfile::tempdir().unwrap();
    let agent = interpreter(dir.path(), "agent-bin");
    blocking_script(&dir.path().join("x"));
    let child = spawn_with(&agent, &["x"], dir.path(), |cmd| {
        cmd.env_clear()
            .env("LD_PRELOAD", "/secret/path.so")
            .env("PYTHONPATH", "/w")
            .env("OPENAI_API_KEY", "sk-not-to-be-kept");
    });
    let attestor = attestor(Arc::new(MemoryExecGenerations::default()));
    let att = attestor
        .attest(&origin_now(&attestor, child.tgid()))
        .unwrap();
    let mut names = att.injected_env.clone();
    names.sort();
    assert_eq!(names, ["LD_PRELOAD", "PYTHONPATH"]);
    let text = serde_json::to_string(&att).unwrap();
    assert!(!text.contains("/secret/path.so") && !text.contains("sk-not-to-be-kept"));
}

// ---------------------------------------------------------------------------
// The change counters (`redirect::changes`): a process the counters show
// unchanged since its last full check is answered from memory; every kind
// of change the kernel counts brings the full check back.

/// An attestor whose generations keep change counters, and a blocking
/// child attested once (fully checked, so later requests can be answered
/// from memory).
fn counted(dir: &Path) -> (Spawned, Arc<MemoryExecGenerations>, Attestor, Origin) {
    let agent = interpreter(dir, "agent-bin");
    blocking_script(&dir.join("x"));
    let child = spawn(&agent, &["x"], dir);
    let generations = Arc::new(MemoryExecGenerations::with_change_counters());
    let attestor = attestor(generations.clone());
    let origin = origin_now(&attestor, child.tgid());
    attestor.attest(&origin).unwrap();
    (child, generations, attestor, origin)
}

#[test]
fn unchanged_counters_answer_from_memory_and_an_exit_brings_the_full_check_back() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, generations, attestor, origin) = counted(dir.path());
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    // Uncounted, the exit goes unseen: the answer came from memory, not
    // /proc (this is what the kernel's exit program is there for).
    attestor.attest(&origin).unwrap();
    // What the sched_process_exit program does.
    generations.count_change(origin.tgid);
    match attestor.attest(&origin) {
        Err(AttestError::ProcessGone { .. }) | Err(AttestError::PidReused { .. }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_counted_exec_or_prctl_mark_is_seen_by_a_process_answered_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, generations, attestor, origin) = counted(dir.path());
    attestor.attest(&origin).unwrap();
    generations.set(origin.tgid, process::boot_time_ns());
    match attestor.attest(&origin) {
        Err(AttestError::ExecedSinceConnect { at_connect: 0, .. }) => {}
        other => panic!("expected ExecedSinceConnect, got {other:?}"),
    }

    let dir = tempfile::tempdir().unwrap();
    let (_child, generations, attestor, origin) = counted(dir.path());
    attestor.attest(&origin).unwrap();
    generations.set_mm_tampered(origin.cgroup_id, process::boot_time_ns());
    match attestor.attest(&origin) {
        Err(AttestError::MmTampered { .. }) => {}
        other => panic!("expected MmTampered, got {other:?}"),
    }
}

#[test]
fn what_differs_between_connections_is_checked_even_when_the_counters_are_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (_child, generations, attestor, origin) = counted(dir.path());
    // A connection of the previous holder of this pid.
    let mut early = origin;
    early.connect_boot_ns = 1;
    assert!(matches!(
        attestor.attest(&early),
        Err(AttestError::PidReused { .. })
    ));
    // A connection recorded in another cgroup, marked by prctl before the
    // process's last full check: that check was for the first cgroup only.
    let mut moved = origin;
    moved.cgroup_id = origin.cgroup_id.wrapping_add(1);
    generations.set_mm_tampered(moved.cgroup_id, 1);
    attestor.attest(&origin).unwrap();
    match attestor.attest(&moved) {
        Err(AttestError::MmTampered { cgroup_id, .. }) => assert_eq!(cgroup_id, moved.cgroup_id),
        other => panic!("expected MmTampered, got {other:?}"),
    }
}
