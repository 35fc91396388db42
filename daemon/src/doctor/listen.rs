//! The running daemon: its listeners accept (redirected connections land
//! there), it answers on the control socket, and what it reports of its
//! audit log and credentials.

use std::net::SocketAddr;

use super::{Check, Facts, facts::Unreadable};
use crate::control::status::Status;

pub fn checks(facts: &Facts) -> Vec<Check> {
    let Some(config) = &facts.config else {
        return Vec::new();
    };
    let up = if facts.systemd_booted {
        "systemctl start warrant.socket warrant (journalctl -u warrant says why it is not running)"
            .to_owned()
    } else {
        format!(
            "start the daemon: warrant run --config {}",
            facts.config_path.display()
        )
    };
    let up = up.as_str();
    let mut checks = vec![listener(
        "listener (IPv4)",
        config.daemon.listen,
        &facts.listening,
        true,
        up,
    )];
    if let Some(v6) = config.listen6() {
        checks.push(listener("listener (IPv6)", v6, &facts.listening, false, up));
    }
    if let Some(metrics) = config.daemon.metrics {
        checks.push(listener("metrics", metrics, &facts.listening, false, up));
    }
    checks.extend(daemon(&facts.daemon, up));
    checks
}

/// Whether something listens on `addr` (the address itself, or the
/// wildcard of its family, on its port). Read from the kernel's table of
/// listening sockets rather than by connecting: doctor runs outside every
/// tagged cgroup, so the daemon would close its connection unanswered and
/// count and audit it as a refused connection.
pub fn listens(addr: SocketAddr, listening: &[SocketAddr]) -> bool {
    listening.iter().any(|l| {
        l.port() == addr.port()
            && (l.ip() == addr.ip() || (l.ip().is_unspecified() && l.is_ipv4() == addr.is_ipv4()))
    })
}

/// `required`: agents fail without it (else a warning).
pub fn listener(
    name: &str,
    addr: SocketAddr,
    listening: &[SocketAddr],
    required: bool,
    fix: &str,
) -> Check {
    if listens(addr, listening) {
        return Check::pass(name, format!("{addr} accepts connections"));
    }
    let detail = match name {
        "metrics" => format!("nothing listens on {addr}: Prometheus cannot scrape warrant"),
        _ => format!(
            "nothing listens on {addr}: redirected agent connections are refused (fail closed)"
        ),
    };
    if required {
        Check::fail(name, detail, fix)
    } else {
        Check::warn(name, detail, fix)
    }
}

/// The daemon answers `status`; its audit log is writable and no
/// credential is failing.
pub fn daemon(answer: &Result<Box<Status>, Unreadable>, start: &str) -> Vec<Check> {
    let status = match answer {
        Ok(status) => status,
        Err(error) => return vec![Check::fail("daemon", error.to_string(), start)],
    };
    let mut checks = vec![Check::pass(
        "daemon",
        format!("warrant {} answers on the control socket", status.version),
    )];
    let audit = status.audit.in_words();
    checks.push(if !status.audit.writable {
        Check::fail(
            "audit log",
            audit,
            "free space or fix permissions where the audit log lives (df -h /var/log/warrant; ls -l /var/log/warrant)",
        )
    } else if status.audit.dropped > 0 {
        Check::warn(
            "audit log",
            audit,
            "find what stopped the writes in: journalctl -u warrant | grep 'AUDIT RECORDS'",
        )
    } else {
        Check::pass("audit log", audit)
    });
    for credential in status.credentials.iter().filter(|c| c.failures > 0) {
        checks.push(Check::warn(
            format!("credential {}", credential.name),
            format!(
                "{} failed fetch(es): {}",
                credential.failures,
                credential.last_error.as_deref().unwrap_or("?")
            ),
            "fix the source the error names; warrant retries on its own (warrant status shows the next try)",
        ));
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Verdict;

    #[test]
    fn a_listener_counts_as_there_on_its_address_or_its_familys_wildcard() {
        let addr: SocketAddr = "127.0.0.1:15443"
            .parse()
            .unwrap_or(([0, 0, 0, 0], 0).into());
        let at = |s: &str| s.parse().unwrap_or(([0, 0, 0, 0], 0).into());
        assert!(listens(addr, &[at("127.0.0.1:15443")]));
        assert!(listens(addr, &[at("0.0.0.0:15443")]));
        assert!(!listens(addr, &[at("[::]:15443"), at("127.0.0.1:15444")]));
        let down = listener(
            "listener (IPv4)",
            addr,
            &[],
            true,
            "systemctl start warrant",
        );
        assert_eq!(down.verdict, Verdict::Fail);
        assert!(down.detail.contains("refused (fail closed)"));
        let metrics = listener("metrics", addr, &[], false, "x");
        assert_eq!(metrics.verdict, Verdict::Warn);
    }

    #[test]
    fn a_daemon_that_does_not_answer_fails_and_its_audit_health_is_reported() {
        let down = daemon(
            &Err(Unreadable::Control(
                "cannot reach the control socket".into(),
            )),
            "systemctl start warrant",
        );
        assert_eq!(down[0].verdict, Verdict::Fail);
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap_or_default();
        let mut status = crate::control::status::sample(now);
        let checks = daemon(&Ok(Box::new(status.clone())), "");
        assert_eq!(checks[0].verdict, Verdict::Pass);
        assert_eq!(checks[1].verdict, Verdict::Pass, "{checks:#?}");
        assert_eq!(checks[2].name, "credential openai-prod");
        assert_eq!(checks[2].verdict, Verdict::Warn);
        status.audit.writable = false;
        let checks = daemon(&Ok(Box::new(status)), "");
        assert_eq!(checks[1].verdict, Verdict::Fail);
        assert!(checks[1].detail.contains("NOT WRITABLE"));
    }
}
