//! systemd socket activation (sd_listen_fds): warrant.socket owns the
//! injector's listening sockets, so connections made while the daemon
//! restarts queue in the kernel's backlog instead of being refused; the next
//! daemon accepts them (the pinned eBPF maps still hold their Origins).

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::{FromRawFd, RawFd},
};

use anyhow::{Result, bail};

/// The first descriptor passed by the service manager.
const SD_LISTEN_FDS_START: RawFd = 3;

/// The listeners systemd passed, split by address family.
#[derive(Default)]
pub struct Inherited {
    pub v4: Option<TcpListener>,
    pub v6: Option<TcpListener>,
}

/// Takes the TCP listeners passed through $LISTEN_FDS when $LISTEN_PID is
/// this process, and clears the variables so that children (exec credential
/// sources, posture commands) do not believe the sockets are theirs.
/// `None` when nothing was passed (not socket-activated).
pub fn take_listeners() -> Result<Option<Inherited>> {
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| pid == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<RawFd>().ok())
        .unwrap_or(0);
    // Safety: called by the CLI before the tokio runtime is built, while the
    // process has a single thread, so nothing reads the environment
    // concurrently.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if !pid_matches || count <= 0 {
        return Ok(None);
    }
    let mut inherited = Inherited::default();
    for fd in SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + count {
        check_stream_listener(fd)?;
        // Safety: systemd passed `fd` to this process for it to own (LISTEN_PID
        // is ours), it is a listening stream socket (checked above), and
        // nothing else in the process has taken it.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        set_cloexec(fd)?;
        listener.set_nonblocking(true)?;
        match listener.local_addr()? {
            SocketAddr::V4(_) if inherited.v4.is_none() => inherited.v4 = Some(listener),
            SocketAddr::V6(_) if inherited.v6.is_none() => inherited.v6 = Some(listener),
            addr => bail!(
                "socket activation passed a second listener for {addr}; warrant serves one IPv4 and one IPv6 address"
            ),
        }
    }
    if inherited.v4.is_none() {
        bail!(
            "socket activation passed no IPv4 listener (warrant.socket needs ListenStream=127.0.0.1:PORT)"
        );
    }
    Ok(Some(inherited))
}

/// Refuses descriptors that are not listening TCP sockets (a misconfigured
/// socket unit) before wrapping them.
fn check_stream_listener(fd: RawFd) -> Result<()> {
    use nix::sys::socket::{
        SockType, getsockopt,
        sockopt::{AcceptConn, SockType as SockTypeOpt},
    };
    // Safety: only borrowed for the two getsockopt calls below; `fd` stays
    // open (it was passed to us and is not closed by anyone here).
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let kind = getsockopt(&borrowed, SockTypeOpt)
        .map_err(|e| anyhow::anyhow!("passed descriptor {fd} is not a socket: {e}"))?;
    let listening = getsockopt(&borrowed, AcceptConn).unwrap_or(false);
    if kind != SockType::Stream || !listening {
        bail!("passed descriptor {fd} is not a listening stream socket");
    }
    Ok(())
}

fn set_cloexec(fd: RawFd) -> Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}
