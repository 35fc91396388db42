//! systemd's readiness protocol (sd_notify): datagrams such as "READY=1" or
//! "STATUS=..." to the socket named by $NOTIFY_SOCKET. Without that variable
//! (not started by systemd or a supervisor that speaks it) this does nothing.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. "READY=1\nSTATUS=serving") if a notify socket is set.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(err) = send(&path, state) {
        tracing::warn!(error = %err, "cannot notify the service manager");
    }
}

/// systemd's watchdog: when the unit sets WatchdogSec=, $WATCHDOG_USEC is
/// the deadline and $WATCHDOG_PID names the process that must meet it. Pings
/// every half deadline (as sd_watchdog_enabled(3) advises) from a runtime
/// task, so a wedged runtime stops the pings and systemd restarts the daemon.
/// None when no watchdog is asked for; dropping the handle stops the pings.
pub fn spawn_watchdog() -> Option<WatchdogTask> {
    let interval = watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )?;
    tracing::info!(?interval, "systemd watchdog enabled");
    Some(WatchdogTask(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        loop {
            ticks.tick().await;
            notify("WATCHDOG=1");
        }
    })))
}

/// Aborts the ping task when dropped.
pub struct WatchdogTask(tokio::task::JoinHandle<()>);

impl Drop for WatchdogTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Half the watchdog deadline, if the watchdog is meant for `own_pid`.
fn watchdog_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Option<std::time::Duration> {
    let usec: u64 = usec?.parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid
        && pid.parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    Some(std::time::Duration::from_micros(usec / 2))
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), std::path::Path::new(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        super::send(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn watchdog_pings_at_half_the_deadline_of_its_own_pid() {
        use std::time::Duration;
        assert_eq!(
            super::watchdog_interval(Some("30000000"), Some("42"), 42),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            super::watchdog_interval(Some("30000000"), None, 42),
            Some(Duration::from_secs(15))
        );
        // Meant for another process (inherited environment), or absent.
        assert_eq!(
            super::watchdog_interval(Some("30000000"), Some("7"), 42),
            None
        );
        assert_eq!(super::watchdog_interval(None, None, 42), None);
        assert_eq!(super::watchdog_interval(Some("0"), None, 42), None);
    }
}
