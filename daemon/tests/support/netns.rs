//! Network namespaces the test creates, reached over a veth pair, with a
//! server inside that reports each connection; and an egress filter the
//! test attaches to a cgroup of its own, as systemd's IPAddressDeny does.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with one veth to the host (or to another test
/// namespace: [`TestNetns::linked`]): `host_addr` on the host side,
/// `ns_addr` inside. Both removed on drop.
pub struct TestNetns {
    pub name: String,
    host_if: String,
    /// The namespace the veth's outer end is in; None: the host's.
    outer: Option<String>,
    pub ns_addr: std::net::IpAddr,
}

impl TestNetns {
    /// `host_cidr` and `ns_cidr`, e.g. "198.18.3.1/24" and "198.18.3.2/24".
    pub fn new(host_cidr: &str, ns_cidr: &str) -> TestNetns {
        TestNetns::make(None, host_cidr, ns_cidr)
    }

    /// A new namespace joined to this one (not to the host) by a veth pair:
    /// `outer_cidr` on this namespace's end, `ns_cidr` inside the new one.
    /// Nothing routes between the new namespace and the host.
    pub fn linked(&self, outer_cidr: &str, ns_cidr: &str) -> TestNetns {
        TestNetns::make(Some(&self.name), outer_cidr, ns_cidr)
    }

    fn make(outer: Option<&str>, host_cidr: &str, ns_cidr: &str) -> TestNetns {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{n}", std::process::id() % 100_000);
        let name = format!("warrant-test-{id}");
        let host_if = format!("wth{id}");
        let ns_if = format!("wtn{id}");
        ip(&["netns", "add", &name]);
        let netns = TestNetns {
            name: name.clone(),
            host_if: host_if.clone(),
            outer: outer.map(str::to_owned),
            ns_addr: ns_cidr.split('/').next().unwrap().parse().unwrap(),
        };
        // `ip -n NAME` for the outer end when it is in a namespace.
        let outer_ip = |args: &[&str]| match outer {
            Some(outer) => ip(&[&["-n", outer], args].concat()),
            None => ip(args),
        };
        outer_ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
        ]);
        outer_ip(&["addr", "add", host_cidr, "dev", &host_if]);
        outer_ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &name, "addr", "add", ns_cidr, "dev", &ns_if]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        netns
    }

    /// Starts a server inside listening on `ports`; it prints one line per
    /// connection: what the first byte says (tls, http, marker, other) and
    /// the port. Plain HTTP gets "200 ok".
    pub fn server(&self, ports: &[u16]) -> Server {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "/usr/bin/python3",
                "-u",
                "-c",
                SERVER,
            ])
            .args(ports.iter().map(u16::to_string))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        Server {
            child,
            stdout,
            addr: self.ns_addr,
        }
    }
}

impl TestNetns {
    /// A TCP connection to `addr` made from inside this namespace (the
    /// socket stays in it), or the error connecting gave.
    pub fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        connect_in(&self.name, addr)
    }
}

/// A TCP connection to `addr` made from inside the test namespace `name`
/// (the socket stays in it), or the error connecting gave.
pub fn connect_in(name: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    in_netns(name, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
}

/// A TCP listener on `addr` inside the test namespace `name` (e.g. a mock
/// metadata service on its loopback), served by whatever thread the test
/// hands it to.
pub fn listen_in(name: &str, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    in_netns(name, move || std::net::TcpListener::bind(addr))
}

/// Makes a socket with `make` in the namespace `name`: on a thread of its
/// own that enters it (the test's threads stay where they are), since a
/// socket belongs to the namespace it was made in.
fn in_netns<T: Send + 'static>(
    name: &str,
    make: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        make()
    })
    .join()
    .unwrap()
}

/// `program` to be run inside the test namespace `name`, entering its
/// network only: the mounts, /sys and cgroups stay the test's (unlike
/// `ip netns exec`, which mounts a /sys of its own).
pub fn command_in(name: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("/usr/bin/nsenter");
    command
        .arg(format!("--net=/run/netns/{name}"))
        .arg("--")
        .arg(program);
    command
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let mut del = Command::new("ip");
        if let Some(outer) = &self.outer {
            del.args(["-n", outer]);
        }
        let _ = del.args(["link", "del", &self.host_if]).output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

const SERVER: &str = r#"
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(port)))
    s.listen(16)
    sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        c, _ = key.fileobj.accept()
        c.settimeout(5)
        try:
            first = c.recv(1)
        except OSError:
            first = b""
        kind = {b"\x16": "tls", b"G": "http", b"M": "marker"}.get(first[:1], "other")
        print(kind, key.fileobj.getsockname()[1], flush=True)
        if kind == "http":
            try:
                c.recv(65536)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except OSError:
                pass
        c.close()
"#;

/// A running server in a test namespace; killed on drop.
pub struct Server {
    child: Child,
    stdout: std::io::BufReader<ChildStdout>,
    addr: std::net::IpAddr,
}

impl Server {
    /// Every connection the server accepted until now: connects from the
    /// test itself (outside any filter) with a marker, and returns the
    /// lines before the marker's. The server accepts one connection at a
    /// time, so whatever reached it earlier is listed first.
    pub fn connections_so_far(&mut self, port: u16) -> Vec<String> {
        let mut stream =
            TcpStream::connect_timeout(&SocketAddr::new(self.addr, port), Duration::from_secs(10))
                .unwrap();
        stream.write_all(b"M").unwrap();
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = std::io::BufRead::read_line(&mut self.stdout, &mut line).unwrap();
            assert!(n > 0, "the test server exited");
            let line = line.trim().to_owned();
            if line.starts_with("marker") {
                return lines;
            }
            lines.push(line);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `cgroup_skb/egress` program on a cgroup the test created that passes
/// only packets leaving through the loopback interface: what systemd's
/// `IPAddressDeny=any` with `IPAddressAllow=localhost` does to a unit.
/// Detached on drop.
pub struct EgressFilter {
    program: OwnedFd,
    cgroup: std::fs::File,
}

#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_CGROUP_INET_EGRESS: u32 = 1;
const BPF_F_ALLOW_MULTI: u32 = 2;

impl EgressFilter {
    pub fn loopback_only(cgroup_dir: &Path) -> EgressFilter {
        let lo = std::ffi::CString::new("lo").unwrap();
        // Safety: a NUL-terminated interface name.
        let lo = unsafe { libc::if_nametoindex(lo.as_ptr()) };
        assert_ne!(lo, 0);
        // r2 = skb->ifindex (offset 40 in struct __sk_buff); r0 = 1;
        // if r2 == lo goto exit; r0 = 0; exit.
        let insns = [
            Insn {
                code: 0x61,
                regs: 0x12,
                off: 40,
                imm: 0,
            },
            Insn {
                code: 0xb7,
                regs: 0x00,
                off: 0,
                imm: 1,
            },
            Insn {
                code: 0x15,
                regs: 0x02,
                off: 1,
                imm: lo as i32,
            },
            Insn {
                code: 0xb7,
                regs: 0x00,
                off: 0,
                imm: 0,
            },
            Insn {
                code: 0x95,
                regs: 0x00,
                off: 0,
                imm: 0,
            },
        ];
        let license = c"GPL";
        let attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_SKB,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            expected_attach_type: BPF_CGROUP_INET_EGRESS,
            ..ProgLoadAttr::default()
        };
        // Safety: bpf(BPF_PROG_LOAD) with an attr of the size we pass,
        // pointing at instructions and a license that outlive the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>(),
            )
        };
        assert!(
            fd >= 0,
            "BPF_PROG_LOAD: {}",
            std::io::Error::last_os_error()
        );
        // Safety: a new descriptor the kernel just returned.
        let program = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let cgroup = std::fs::File::open(cgroup_dir).unwrap();
        let attach = AttachAttr {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_bpf_fd: program.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_INET_EGRESS,
            attach_flags: BPF_F_ALLOW_MULTI,
        };
        // Safety: bpf(BPF_PROG_ATTACH) with descriptors we hold.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_ATTACH,
                &attach as *const AttachAttr,
                std::mem::size_of::<AttachAttr>(),
            )
        };
        assert_eq!(
            rc,
            0,
            "BPF_PROG_ATTACH: {}",
            std::io::Error::last_os_error()
        );
        EgressFilter { program, cgroup }
    }
}

impl Drop for EgressFilter {
    fn drop(&mut self) {
        let detach = AttachAttr {
            target_fd: self.cgroup.as_raw_fd() as u32,
            attach_bpf_fd: self.program.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_INET_EGRESS,
            attach_flags: 0,
        };
        // Safety: bpf(BPF_PROG_DETACH) with descriptors we hold.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_DETACH,
                &detach as *const AttachAttr,
                std::mem::size_of::<AttachAttr>(),
            );
        }
    }
}
