//! For the privileged tests: cgroups, bpffs pins and processes that the
//! test creates itself and removes on drop (also when a test panics).

use std::{
    ffi::CString,
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
};

use warrant::redirect::cgroup;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A cgroup subtree the test created under the cgroup2 mount. Dropping it
/// kills the processes the test started in it and removes the directories.
pub struct TestCgroup {
    pub path: PathBuf,
    children: Vec<Child>,
}

impl TestCgroup {
    pub fn new() -> TestCgroup {
        let mount = cgroup::cgroup2_mount().expect("cgroup2 mount");
        let path = mount.join(unique("warrant-test"));
        fs::create_dir(&path).expect("create test cgroup");
        TestCgroup {
            path,
            children: Vec::new(),
        }
    }

    /// Creates (if needed) and returns a sub-cgroup, e.g. "agent/sub".
    pub fn sub(&self, rel: &str) -> PathBuf {
        let path = self.path.join(rel);
        fs::create_dir_all(&path).expect("create sub-cgroup");
        path
    }

    /// Starts `cmd` inside `cgroup_dir` (which must be in this tree); the
    /// child is killed and reaped when the TestCgroup drops.
    pub fn spawn(&mut self, cgroup_dir: &Path, cmd: &mut Command) -> TestProcess {
        let procs = CString::new(cgroup_dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
        // Safety: the closure runs in the forked child before exec and only
        // calls async-signal-safe functions (open, write, close) on memory
        // prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn test process");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        let pid = child.id();
        self.children.push(child);
        TestProcess { pid, stdout, stdin }
    }

    /// Kills and reaps everything started so far.
    pub fn kill_all(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        self.kill_all();
        let mut dirs = Vec::new();
        collect_dirs(&self.path, &mut dirs);
        // Deepest first: a cgroup can only be removed once it has no children.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            let _ = fs::remove_dir(&dir);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

/// A process started by a test, talking line by line over stdin/stdout.
pub struct TestProcess {
    pub pid: u32,
    stdout: BufReader<ChildStdout>,
    stdin: Option<ChildStdin>,
}

impl TestProcess {
    /// The next line the process prints (blocks until it does).
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("read test process output");
        assert!(
            !line.is_empty(),
            "test process {} exited without printing",
            self.pid
        );
        line.trim_end().to_owned()
    }

    /// The next line, or None once the process closed its output.
    pub fn try_line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end().to_owned()),
        }
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write to test process");
        stdin.flush().expect("flush");
    }
}

/// A bpffs pin directory for one test, removed on drop.
pub struct TestPins {
    pub path: PathBuf,
}

impl TestPins {
    pub fn new() -> TestPins {
        TestPins {
            path: PathBuf::from("/sys/fs/bpf").join(unique("warrant-test")),
        }
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        let _ = warrant::redirect::remove_pins(&self.path);
    }
}

/// A Python client script run with `python3 -c`.
pub fn python(script: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg("-u").arg("-c").arg(script);
    cmd
}
