//! Egress on an agent's behalf: the sockets warrant opens to relay a
//! connection it does not inject into (a TLS SNI or a plain-HTTP host that
//! is not an upstream) to the address the agent dialled.
//!
//! The rule is that warrant never gives an agent reach it would not have
//! without it. A relay socket opened by the daemon itself would sit in the
//! daemon's cgroup, outside every egress control on the agent's unit
//! (`IPAddressDeny=`, `RestrictNetworkInterfaces=`, `SocketBindDeny=`, an
//! nftables cgroup match, a `cgroup_skb` program of its own): an agent
//! denied the network would reach any host on an intercepted port through
//! warrant. So relays are opened in two steps:
//!
//! 1. [`Destinations`] refuses what warrant never relays to, whatever the
//!    agent's unit says: by default loopback (the host's own services),
//!    link-local and cloud metadata addresses, with allow and deny lists in
//!    `[intercept]` (`passthrough_deny`, `passthrough_allow`). An address is
//!    checked with every IPv4 address it embeds (v4-mapped, NAT64, 6to4).
//! 2. The socket is created inside the agent's own cgroup by a
//!    [`Connector`]. In production that is [`AgentCgroup`]: a short-lived
//!    child is cloned straight into the cgroup of the connecting task
//!    (`clone3` with `CLONE_INTO_CGROUP`, Linux 5.7; where clone3 is
//!    refused, as systemd's `RestrictNamespaces=` does, a clone(2) child
//!    moves itself there through the cgroup's `cgroup.procs`), creates the
//!    socket there and puts it in a descriptor slot the daemon reserved
//!    (`CLONE_FILES`), then exits. A socket belongs to the cgroup of the
//!    task that created it, and every cgroup socket program and skb filter
//!    of the agent's unit acts on it from then on; the daemon then marks it
//!    with the bypass mark (CAP_NET_ADMIN, which the child never needs) and
//!    connects it. The child runs no Rust beyond a few raw system calls:
//!    it is a copy of a multi-threaded process. The daemon waits for it on
//!    a pidfd with a deadline and kills it past that (a delegated agent
//!    could freeze its own cgroup).
//!
//! The socket is owned by root, not the agent's uid: becoming another uid
//! would need CAP_SETUID in the daemon's unit. Egress rules keyed on the
//! uid (netfilter's owner match, `ip rule uidrange`) therefore do not see a
//! relay as the agent's; the README's known limits say so. Connections to
//! configured upstreams (which carry the credential, and whose destination
//! TLS or DNS authenticates) are made by the daemon itself and pooled, as
//! before; they do not come here.
//!
//! [`DaemonSocket`] opens the socket in the daemon's own cgroup: for the
//! in-process tests, which run without privileges and without agents.

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::Range,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use tokio::{io::unix::AsyncFd, net::TcpStream};

use crate::{attest::cgroup::CgroupResolver, config::InterceptConfig, origin::Origin};

/// How long the child that makes a socket may take before it is killed.
const CHILD_DEADLINE: Duration = Duration::from_secs(5);

/// The addresses each name in the lists stands for.
fn class(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        // 0.0.0.0 and :: reach the host itself, like loopback.
        "loopback" => &["127.0.0.0/8", "::1/128", "0.0.0.0/8", "::/128"],
        "link-local" => &["169.254.0.0/16", "fe80::/10"],
        // Instance metadata and host agents of the cloud providers: AWS
        // (IPv4, ECS task metadata, IPv6), Azure's WireServer, Alibaba.
        // GCP, Oracle and DigitalOcean use 169.254.169.254 too.
        "metadata" => &[
            "169.254.169.254/32",
            "169.254.170.2/32",
            "fd00:ec2::254/128",
            "168.63.129.16/32",
            "100.100.100.200/32",
        ],
        _ => return None,
    })
}

/// A list entry that is neither a CIDR nor a known name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "[intercept] {key}: {entry:?} is neither a CIDR (\"10.0.0.0/8\", \"fd00::/8\", an address) nor one of loopback, link-local, metadata"
)]
pub struct DestinationError {
    pub key: &'static str,
    pub entry: String,
    /// Where in the file, when known.
    pub span: Option<Range<usize>>,
}

/// Where passthrough relays may not go.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
}

impl Destinations {
    pub fn from_config(config: &InterceptConfig) -> Result<Destinations, DestinationError> {
        let parse = |key: &'static str, list: &[toml::Spanned<String>]| {
            let mut nets = Vec::new();
            for entry in list {
                let text = entry.get_ref().trim();
                let error = || DestinationError {
                    key,
                    entry: entry.get_ref().clone(),
                    span: Some(entry.span()),
                };
                match class(text) {
                    Some(members) => {
                        for member in members {
                            nets.push(member.parse().map_err(|_| error())?);
                        }
                    }
                    None => nets.push(parse_net(text).ok_or_else(error)?),
                }
            }
            Ok(nets)
        };
        Ok(Destinations {
            deny: parse("passthrough_deny", &config.passthrough_deny)?,
            allow: parse("passthrough_allow", &config.passthrough_allow)?,
        })
    }

    /// Why a relay to `ip` is refused, if it is.
    pub fn refusal(&self, ip: IpAddr) -> Option<String> {
        for candidate in candidates(ip) {
            let denied = self.deny.iter().find(|net| net.contains(&candidate));
            let allowed = self.allow.iter().any(|net| net.contains(&candidate));
            if let Some(net) = denied
                && !allowed
            {
                return Some(format!(
                    "warrant does not relay to {ip} ({candidate} is in {net}: [intercept] passthrough_deny)"
                ));
            }
        }
        None
    }
}

fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The address itself (IPv4 when v4-mapped) and every IPv4 address it
/// embeds where the network may translate it to that address: IPv4-
/// compatible (::a.b.c.d), NAT64's well-known prefix 64:ff9b::/96, and 6to4
/// (2002:AABB:CCDD::/48).
fn candidates(ip: IpAddr) -> Vec<IpAddr> {
    let v6 = match ip {
        IpAddr::V4(_) => return vec![ip],
        IpAddr::V6(v6) => v6,
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return vec![IpAddr::V4(v4)];
    }
    let mut out = vec![ip];
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let compat = s[..6].iter().all(|&w| w == 0) && v6 != Ipv6Addr::UNSPECIFIED;
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if compat || nat64 {
        out.push(IpAddr::V4(low));
    }
    if s[0] == 0x2002 {
        out.push(IpAddr::V4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        )));
    }
    out
}

/// Why a relay could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// `[intercept] passthrough_deny` forbids the destination.
    #[error("{0}")]
    Refused(String),
    #[error("the cgroup of the connecting process (id {cgroup_id}) no longer exists")]
    CgroupGone { cgroup_id: u64 },
    #[error("cannot open the connecting process's cgroup {path}: {source}")]
    CgroupOpen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create a socket in the agent's cgroup: {0}")]
    Spawn(#[source] io::Error),
    #[error("the socket helper in the agent's cgroup did not finish within {secs} s")]
    HelperTimeout { secs: u64 },
    #[error("cannot set SO_MARK on a relay socket: {0}")]
    Mark(#[source] io::Error),
    #[error("cannot connect to {dst}: {source}")]
    Connect {
        dst: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to {dst} timed out after {secs} s")]
    Timeout { dst: SocketAddr, secs: u64 },
}

pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<OwnedFd, EgressError>> + Send + 'a>>;

/// How a relay's socket is made: the seam the in-process tests swap.
pub trait Connector: Send + Sync {
    /// A new, unconnected TCP socket for `dst`'s family, belonging to the
    /// cgroup `origin` connected from.
    fn socket<'a>(&'a self, origin: &'a Origin, dst: SocketAddr) -> ConnectFuture<'a>;
}

/// Relays on an agent's behalf: the destination check, then a socket from
/// the [`Connector`], marked and connected.
#[derive(Clone)]
pub struct Egress {
    destinations: Destinations,
    connector: Arc<dyn Connector>,
    mark: u32,
    timeout: Duration,
}

impl Egress {
    pub fn new(
        destinations: Destinations,
        connector: Arc<dyn Connector>,
        mark: u32,
        timeout: Duration,
    ) -> Egress {
        Egress {
            destinations,
            connector,
            mark,
            timeout,
        }
    }

    /// The same checks with another way of making sockets.
    pub fn with_connector(self, connector: Arc<dyn Connector>) -> Egress {
        Egress { connector, ..self }
    }

    /// The same sockets (made in the agent's cgroup, marked) without the
    /// destination check, for a relay whose destination another rule of
    /// the operator's has already allowed: the metadata emulator's
    /// passthrough, which reaches only a configured metadata address and
    /// only for the paths `[metadata] passthrough` lists. The default
    /// `passthrough_deny` refuses metadata addresses for every other relay
    /// (a TLS splice to port 443 there included); allowing them there for
    /// this would open the whole address. The agent's own unit still
    /// decides: the socket is the agent's.
    pub fn for_allowed_destination(&self) -> Egress {
        Egress {
            destinations: Destinations::default(),
            ..self.clone()
        }
    }

    /// Connects to `dst` for the agent of `origin`, or says why not.
    pub async fn connect(
        &self,
        origin: &Origin,
        dst: SocketAddr,
    ) -> Result<TcpStream, EgressError> {
        if let Some(why) = self.destinations.refusal(dst.ip()) {
            return Err(EgressError::Refused(why));
        }
        let secs = self.timeout.as_secs();
        tokio::time::timeout(self.timeout, async {
            let fd = self.connector.socket(origin, dst).await?;
            mark(&fd, self.mark)?;
            let std = std::net::TcpStream::from(fd);
            std.set_nonblocking(true).map_err(EgressError::Mark)?;
            let socket = tokio::net::TcpSocket::from_std_stream(std);
            let stream = socket
                .connect(dst)
                .await
                .map_err(|source| EgressError::Connect { dst, source })?;
            let _ = stream.set_nodelay(true);
            Ok(stream)
        })
        .await
        .map_err(|_| EgressError::Timeout { dst, secs })?
    }
}

/// Why a plain-HTTP relay got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Egress(#[from] EgressError),
    #[error("HTTP/1.1 to {dst}: {source}")]
    Http {
        dst: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

impl SendError {
    /// Whether the relay ran out of time (a gateway timeout), by type.
    pub fn timed_out(&self) -> bool {
        match self {
            SendError::Egress(EgressError::Timeout { .. } | EgressError::HelperTimeout { .. }) => {
                true
            }
            SendError::Egress(_) => false,
            SendError::Http { source, .. } => source.is_timeout(),
        }
    }
}

/// Sends one plain-HTTP request to `dst` on a connection of its own,
/// opened through `egress` for the agent of `origin`, in origin form with
/// the Host the agent gave.
pub async fn send_http1<B>(
    egress: &Egress,
    origin: &Origin,
    dst: SocketAddr,
    mut req: http::Request<B>,
) -> Result<http::Response<hyper::body::Incoming>, SendError>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(authority) = req.uri().authority().cloned()
        && !req.headers().contains_key(http::header::HOST)
        && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(http::header::HOST, host);
    }
    if let Some(path) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = http::Uri::from(path);
    }
    let stream = egress.connect(origin, dst).await?;
    let http = |source| SendError::Http { dst, source };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(http)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "plain passthrough connection ended");
        }
    });
    sender.send_request(req).await.map_err(http)
}

/// SO_MARK, so the eBPF programs never redirect the relay back to us.
/// Unprivileged (the in-process tests) no programs are attached to us, and
/// the mark cannot be set: then it is skipped.
fn mark(fd: &OwnedFd, mark: u32) -> Result<(), EgressError> {
    match nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::Mark, &mark) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) if !nix::unistd::geteuid().is_root() => Ok(()),
        Err(e) => Err(EgressError::Mark(e.into())),
    }
}

fn new_socket(dst: SocketAddr) -> io::Result<OwnedFd> {
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // Safety: socket() takes plain integers and returns a new descriptor
    // or -1.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: a descriptor the kernel just returned, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sockets made in the daemon's own cgroup. Only for tests: relays then
/// escape the agent's egress controls.
pub struct DaemonSocket;

impl Connector for DaemonSocket {
    fn socket<'a>(&'a self, _origin: &'a Origin, dst: SocketAddr) -> ConnectFuture<'a> {
        Box::pin(async move { new_socket(dst).map_err(EgressError::Spawn) })
    }
}

/// Sockets made in the connecting task's own cgroup (see the module
/// comment).
pub struct AgentCgroup {
    cgroups: CgroupResolver,
    /// Skip clone3: the test builds' way to exercise the fallback that
    /// runs under systemd's RestrictNamespaces=.
    legacy_only: bool,
}

/// Set (test builds only) to make [`AgentCgroup`] use clone(2) and
/// cgroup.procs, as it must where clone3 is refused.
pub const TEST_LEGACY_CLONE_ENV: &str = "WARRANT_TEST_LEGACY_CLONE";

impl AgentCgroup {
    /// `mount`: the cgroup2 mount, where cgroup ids are resolved to paths.
    pub fn new(mount: Option<PathBuf>) -> AgentCgroup {
        #[cfg(feature = "privileged-tests")]
        let legacy_only = std::env::var_os(TEST_LEGACY_CLONE_ENV).is_some();
        #[cfg(not(feature = "privileged-tests"))]
        let legacy_only = false;
        AgentCgroup {
            cgroups: CgroupResolver::new(mount),
            legacy_only,
        }
    }

    /// The cgroup directory of `origin`, opened O_PATH and checked to be
    /// the cgroup with that id (a path can be reused by a new cgroup).
    fn open_cgroup(&self, origin: &Origin) -> Result<OwnedFd, EgressError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let gone = EgressError::CgroupGone {
            cgroup_id: origin.cgroup_id,
        };
        let (Some(mount), Some(rel)) = (
            self.cgroups.mount(),
            self.cgroups.path_of(origin.cgroup_id, origin.tgid),
        ) else {
            return Err(gone);
        };
        let path = mount.join(rel.trim_start_matches('/'));
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| EgressError::CgroupOpen {
                path: path.clone(),
                source,
            })?;
        let ino = dir
            .metadata()
            .map_err(|source| EgressError::CgroupOpen { path, source })?
            .ino();
        if ino != origin.cgroup_id {
            return Err(gone);
        }
        Ok(dir.into())
    }
}

impl Connector for AgentCgroup {
    fn socket<'a>(&'a self, origin: &'a Origin, dst: SocketAddr) -> ConnectFuture<'a> {
        Box::pin(async move {
            let cgroup = self.open_cgroup(origin)?;
            let domain = if dst.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            // The slot the child fills: a descriptor of ours (a throwaway
            // socket) that the child's dup3 replaces in the shared table.
            let slot = new_socket(dst).map_err(EgressError::Spawn)?;
            let legacy_only = self.legacy_only;
            // Cloning copies the daemon's page tables: off the runtime's
            // workers. The descriptors move along, so that a cancelled
            // relay cannot close them under the clone.
            let child = tokio::task::spawn_blocking(move || {
                let cloned = if legacy_only {
                    Err(io::Error::from_raw_os_error(libc::ENOSYS))
                } else {
                    spawn_into_cgroup(cgroup.as_raw_fd(), slot.as_raw_fd(), domain)
                        .map(|pidfd| (pidfd, None))
                };
                let cloned = match cloned {
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {
                        // clone3 is refused (systemd's RestrictNamespaces=
                        // answers ENOSYS, as it cannot filter its flags): the
                        // child moves itself through cgroup.procs instead,
                        // which must stay open until it has exited (the
                        // table is shared: closing it here closes it there).
                        procs_of(&cgroup).and_then(|procs| {
                            spawn_then_move(procs.as_raw_fd(), slot.as_raw_fd(), domain)
                                .map(|pidfd| (pidfd, Some(procs)))
                        })
                    }
                    other => other,
                };
                drop(cgroup);
                cloned.map(|(pidfd, procs)| SocketChild {
                    pidfd: Some(pidfd),
                    slot: Some(slot),
                    procs,
                })
            })
            .await
            .map_err(|e| EgressError::Spawn(io::Error::other(e)))?
            .map_err(EgressError::Spawn)?;
            child.finish().await
        })
    }
}

/// `cgroup.procs` of the cgroup directory `dir`, opened for writing. Under
/// the shipped unit (ProtectControlGroups=yes) cgroupfs is read-only but
/// for the subtree it names in ReadWritePaths= (warrant.slice): elsewhere
/// this fails with EROFS and the relay is refused.
fn procs_of(dir: &OwnedFd) -> io::Result<OwnedFd> {
    let path = std::path::PathBuf::from(format!("/proc/self/fd/{}/cgroup.procs", dir.as_raw_fd()));
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot open the agent's cgroup.procs for writing ({e}); clone3 was refused too"
                ),
            )
        })?;
    Ok(file.into())
}

/// A running socket child and the descriptor slot it fills. The slot is
/// closed only once the child has exited: the child writes into our
/// descriptor table, and a number closed early could be reused by another
/// open meanwhile. Dropped unfinished (a cancelled relay), the child is
/// killed and reaped, and only then is the slot closed.
struct SocketChild {
    pidfd: Option<OwnedFd>,
    slot: Option<OwnedFd>,
    /// The cgroup.procs the fallback child writes to: held, like the slot,
    /// until it has exited.
    procs: Option<OwnedFd>,
}

impl SocketChild {
    /// Waits for the child to exit (its pidfd becomes readable), reaps it
    /// and returns the socket it made; past [`CHILD_DEADLINE`] the child is
    /// killed (a frozen cgroup holds it) and the relay fails.
    async fn finish(mut self) -> Result<OwnedFd, EgressError> {
        let Some(pidfd) = self.pidfd.take() else {
            return Err(EgressError::Spawn(io::Error::other("no child")));
        };
        // Safety: the AsyncFd owns the OwnedFd, which stays open and names
        // the same pidfd until `into_inner` below.
        let registered =
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) };
        let fd = match registered {
            Ok(fd) => fd,
            Err(error) => {
                let (pidfd, error) = error.into_parts();
                self.pidfd = Some(pidfd);
                return Err(EgressError::Spawn(error));
            }
        };
        let exited = matches!(
            tokio::time::timeout(CHILD_DEADLINE, fd.readable()).await,
            Ok(Ok(_))
        );
        let pidfd = fd.into_inner();
        if !exited {
            // Drop kills and reaps it, then closes the slot.
            self.pidfd = Some(pidfd);
            return Err(EgressError::HelperTimeout {
                secs: CHILD_DEADLINE.as_secs(),
            });
        }
        let status = reap(&pidfd).map_err(EgressError::Spawn)?;
        let slot = self
            .slot
            .take()
            .ok_or_else(|| EgressError::Spawn(io::Error::other("no slot")))?;
        if status != 0 {
            return Err(EgressError::Spawn(io::Error::from_raw_os_error(status)));
        }
        // The child has exited: the slot now holds its socket, made in the
        // agent's cgroup.
        Ok(slot)
    }
}

impl Drop for SocketChild {
    fn drop(&mut self) {
        let (Some(pidfd), slot, procs) = (self.pidfd.take(), self.slot.take(), self.procs.take())
        else {
            return;
        };
        // Safety: pidfd_send_signal on our own pidfd; SIGKILL also ends a
        // task in a frozen cgroup.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0 as libc::c_uint,
            );
        }
        let reap_then_close = move || {
            let _ = reap(&pidfd);
            drop(slot);
            drop(procs);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(reap_then_close);
            }
            Err(_) => reap_then_close(),
        }
    }
}

/// `struct clone_args` (include/uapi/linux/sched.h), up to `cgroup`
/// (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Clones a child into the cgroup `cgroup` (a directory descriptor) that
/// creates a socket of `domain` and moves it into descriptor `slot` of the
/// table it shares with us, then exits with 0 or the errno that stopped
/// it. Returns the child's pidfd.
fn spawn_into_cgroup(cgroup: RawFd, slot: RawFd, domain: libc::c_int) -> io::Result<OwnedFd> {
    let mut pidfd: RawFd = -1;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP | libc::CLONE_FILES as u64 | libc::CLONE_PIDFD as u64,
        pidfd: (&raw mut pidfd) as u64,
        // No signal at exit: the child is reaped through its pidfd, and
        // the runtime's SIGCHLD handling never hears of it.
        exit_signal: 0,
        cgroup: cgroup as u64,
        ..CloneArgs::default()
    };
    with_signals_blocked(|| {
        // Safety: clone3 with a valid clone_args of the size we pass.
        // Without CLONE_VM the child runs on a copy of this thread's stack
        // and memory, as after fork(); it then makes only raw system calls
        // (see `child_makes_socket`): no allocation, no lock, nothing
        // another thread of the parent could have held. CLONE_FILES shares
        // the descriptor table, so the socket it installs in `slot` is ours
        // once it has exited.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if pid == 0 {
            child_makes_socket(-1, slot, domain);
        }
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: CLONE_PIDFD stored a new descriptor for the child in
        // `pidfd`.
        Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
    })
}

/// The same child made with the older clone(2), for where clone3 is
/// refused: it first moves itself into the agent's cgroup by writing "0"
/// to `procs` (that cgroup's cgroup.procs, opened by us), then makes the
/// socket there.
fn spawn_then_move(procs: RawFd, slot: RawFd, domain: libc::c_int) -> io::Result<OwnedFd> {
    let mut pidfd: libc::c_int = -1;
    // clone(2) on x86_64 and aarch64: (flags, stack, parent_tid, child_tid,
    // tls); with CLONE_PIDFD the pidfd is stored through parent_tid. The
    // low byte of flags is the exit signal: none.
    let flags = (libc::CLONE_FILES | libc::CLONE_PIDFD) as libc::c_ulong;
    with_signals_blocked(|| {
        // Safety: clone with a null stack is fork-like (see
        // `spawn_into_cgroup`); `pidfd` outlives the call.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags,
                std::ptr::null_mut::<libc::c_void>(),
                &raw mut pidfd,
                std::ptr::null_mut::<libc::c_int>(),
                0 as libc::c_ulong,
            )
        };
        if pid == 0 {
            child_makes_socket(procs, slot, domain);
        }
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        // Safety: CLONE_PIDFD stored a new descriptor for the child.
        Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
    })
}

/// Runs `f` with every signal blocked on this thread: a child cloned in
/// it inherits the mask, so no handler of ours ever runs in the child.
fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    let mut all: libc::sigset_t = unsafe_zeroed_sigset();
    let mut old: libc::sigset_t = unsafe_zeroed_sigset();
    // Safety: sigfillset and pthread_sigmask write into the two sigsets we
    // own, on this thread only.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let out = f();
    // Safety: restores the mask saved above on this thread.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
    out
}

/// The child's whole life: (move into the cgroup through `procs` when it
/// is not -1,) make the socket, put it in `slot`, exit. Raw system calls
/// only: this runs in a copy of a multi-threaded process.
fn child_makes_socket(procs: RawFd, slot: RawFd, domain: libc::c_int) -> ! {
    // Safety: each call takes integers or a pointer to a static byte
    // string, and touches no memory but this (copied) thread's errno.
    unsafe {
        if procs >= 0 && libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
            libc::_exit(errno_code());
        }
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            libc::_exit(errno_code());
        }
        if libc::dup3(fd, slot, libc::O_CLOEXEC) < 0 {
            libc::_exit(errno_code());
        }
        libc::close(fd);
        libc::_exit(0)
    }
}

fn unsafe_zeroed_sigset() -> libc::sigset_t {
    // Safety: sigset_t is a plain bit array; all zeroes is the empty set.
    unsafe { std::mem::zeroed() }
}

/// The child's errno as its exit code (errno values fit in a byte).
fn errno_code() -> libc::c_int {
    io::Error::last_os_error()
        .raw_os_error()
        .map_or(libc::EIO, |e| e & 0xff)
}

/// `waitid(P_PIDFD, ...)`: the exit status of an exited child.
fn reap(pidfd: &OwnedFd) -> io::Result<i32> {
    const P_PIDFD: libc::idtype_t = 3;
    // Safety: siginfo_t is plain data that waitid fills in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // Safety: waitid on our own pidfd, writing into `info`. __WALL: the
    // child was made with no exit signal.
    let rc = unsafe {
        libc::waitid(
            P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::__WALL,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // Safety: after a successful waitid for an exited child, si_code and
    // si_status are set.
    let (code, status) = unsafe { (info.si_code, info.si_status()) };
    if code == libc::CLD_EXITED {
        Ok(status)
    } else {
        Err(io::Error::other(format!(
            "the socket helper was killed by signal {status}"
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn destinations(deny: &[&str], allow: &[&str]) -> Destinations {
        let list = |l: &[&str]| {
            l.iter()
                .map(|s| toml::Spanned::new(0..0, s.to_string()))
                .collect()
        };
        Destinations::from_config(&InterceptConfig {
            passthrough_deny: list(deny),
            passthrough_allow: list(allow),
            ..InterceptConfig::default()
        })
        .unwrap()
    }

    fn refused(d: &Destinations, ip: &str) -> bool {
        d.refusal(ip.parse().unwrap()).is_some()
    }

    #[test]
    fn the_default_refuses_loopback_link_local_and_metadata_in_every_spelling() {
        let d = Destinations::from_config(&InterceptConfig::default()).unwrap();
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "169.254.169.254",
            "169.254.77.2",
            "::ffff:169.254.169.254",
            "fe80::1",
            "fd00:ec2::254",
            "168.63.129.16",
            "100.100.100.200",
            // NAT64 and 6to4 spellings of the metadata address.
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::a9fe:a9fe",
        ] {
            assert!(refused(&d, ip), "{ip}");
        }
        for ip in ["198.18.0.2", "2001:db8::1", "8.8.8.8", "64:ff9b::808:808"] {
            assert!(!refused(&d, ip), "{ip}");
        }
    }

    #[test]
    fn allow_exempts_from_deny_and_deny_takes_cidrs() {
        let d = destinations(
            &["loopback", "10.0.0.0/8", "2001:db8::/32"],
            &["127.0.0.5/32"],
        );
        assert!(!refused(&d, "127.0.0.5"));
        assert!(!refused(&d, "::ffff:127.0.0.5"));
        assert!(refused(&d, "127.0.0.6"));
        assert!(refused(&d, "10.1.2.3"));
        assert!(refused(&d, "2001:db8::7"));
        assert!(!refused(&d, "169.254.169.254"), "the default was replaced");
        let everything = destinations(&["0.0.0.0/0", "::/0"], &["198.18.0.0/15"]);
        assert!(refused(&everything, "1.1.1.1"));
        assert!(!refused(&everything, "198.19.0.1"));
    }

    #[test]
    fn bad_entries_are_named() {
        let err = Destinations::from_config(&InterceptConfig {
            passthrough_deny: vec![toml::Spanned::new(3..9, "localhost".into())],
            ..InterceptConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.entry, "localhost");
        assert_eq!(err.span, Some(3..9));
        assert!(err.to_string().contains("passthrough_deny"));
        assert!(parse_net("10.0.0.1").is_some());
    }
}
